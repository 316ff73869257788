// The hosted sign-in page, live: status updates over server-sent events replace the status
// line in place (a polite live region, so screen readers announce them); when the
// verification is decided or its method changes, the page reloads and the server takes over
// (the result page redirects to the auth server). Without JavaScript the page refreshes itself
// while a call is in progress (<noscript> meta refresh), and the forms work as plain forms.
"use strict";
(function () {
  var url = document.body.getAttribute("data-events");
  if (!url || !window.EventSource) {
    return;
  }
  var status = document.getElementById("status");
  var source = new EventSource(url);
  source.addEventListener("status", function (event) {
    var update;
    try {
      update = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (typeof update.text === "string" && status.textContent !== update.text) {
      status.textContent = update.text;
    }
    if (update.reload) {
      source.close();
      window.location.reload();
    }
  });
  source.addEventListener("error", function () {
    // The server ends the stream when the session ends; a reload shows why.
    if (source.readyState === EventSource.CLOSED) {
      window.location.reload();
    }
  });
})();
