// The authenticator's service worker: shows a notification for each sign-in request that
// arrives by Web Push (the browser has decrypted it, RFC 8291) and opens the app on a tap.
// Answers are made in the app, where the device key signs them.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let request = null;
  try {
    request = event.data ? event.data.json() : null;
  } catch (_) {
    request = null;
  }
  if (!request || request.type !== "sign_in_request") return;
  const client = String(request.client || "").slice(0, 100);
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const w of windows) w.postMessage({ type: "sign_in_request", request });
    await self.registration.showNotification(`Sign-in request from ${client}`, {
      body: "Open to choose the number on your sign-in screen.",
      tag: String(request.verification_id || ""),
      requireInteraction: true,
      data: { verification_id: request.verification_id },
    });
  })());
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const w of windows) {
      if (new URL(w.url).pathname.startsWith("/app/")) return w.focus();
    }
    return self.clients.openWindow("/app/");
  })());
});
