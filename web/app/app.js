// callverify authenticator: enrols this device (a P-256 key pair made by WebCrypto, the
// private half non-extractable and kept in IndexedDB), listens for sign-in requests over a
// device-signed event stream (and Web Push through sw.js), and answers each with a signature
// over the server's nonce, the verification, the answer and the chosen number.

const DB_NAME = "callverify-authenticator";
const DB_STORE = "device";
const ECDSA = { name: "ECDSA", namedCurve: "P-256" };
const SIGN = { name: "ECDSA", hash: "SHA-256" };

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

function db() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(DB_STORE);
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function idb(mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(DB_STORE, mode);
    const req = fn(tx.objectStore(DB_STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

const loadDevice = () => idb("readonly", (s) => s.get("device"));
const saveDevice = (device) => idb("readwrite", (s) => s.put(device, "device"));

function b64url(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromB64url(s) {
  const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

async function sign(privateKey, message) {
  const sig = await crypto.subtle.sign(SIGN, privateKey, new TextEncoder().encode(message));
  return b64url(sig);
}

async function postJson(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    credentials: "omit",
  });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((json.error && json.error.message) || `HTTP ${r.status}`);
  return json;
}

// How long enrolment waits for the browser's push service before going on without it.
const SUBSCRIBE_TIMEOUT_MS = 10000;

function subscribe() {
  const timeout = new Promise((resolve) => setTimeout(() => resolve(null), SUBSCRIBE_TIMEOUT_MS));
  return Promise.race([trySubscribe(), timeout]);
}

async function trySubscribe() {
  // Without a push service (some browsers, headless ones) the app still gets requests over
  // the event stream while it is open.
  try {
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) return null;
    const registration = await navigator.serviceWorker.ready;
    const r = await fetch("/v1/vapid", { credentials: "omit" });
    if (!r.ok) return null;
    const { public_key } = await r.json();
    const sub = await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: fromB64url(public_key),
    });
    return sub.toJSON();
  } catch (e) {
    console.warn("push subscription unavailable:", e);
    return null;
  }
}

async function enrol(token) {
  status("Creating this device's key…");
  const pair = await crypto.subtle.generateKey(ECDSA, false, ["sign", "verify"]);
  const jwk = await crypto.subtle.exportKey("jwk", pair.publicKey);
  const public_key = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
  const subscription = await subscribe();
  const signature = await sign(pair.privateKey, `callverify-enrol\n${token}`);
  const registered = await postJson("/app/v1/register", { token, public_key, subscription, signature });
  await saveDevice({ methodId: registered.method_id, privateKey: pair.privateKey });
  return { methodId: registered.method_id, privateKey: pair.privateKey, pushed: !!subscription };
}

let current = null;
let device = null;
let source = null;

function render(request) {
  current = request;
  const section = $("request");
  if (!request) {
    section.hidden = true;
    return;
  }
  $("client").textContent = request.client;
  const dl = $("metadata");
  dl.replaceChildren();
  const meta = request.metadata && typeof request.metadata === "object" ? request.metadata : {};
  for (const [k, v] of Object.entries(meta).slice(0, 10)) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = typeof v === "string" ? v : JSON.stringify(v);
    dl.append(dt, dd);
  }
  const choices = $("choices");
  choices.replaceChildren();
  for (const n of request.choices) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "choice";
    b.dataset.number = String(n);
    b.textContent = String(n);
    b.addEventListener("click", () => answer("approve", n));
    choices.append(b);
  }
  $("result").textContent = "";
  section.hidden = false;
  choices.querySelector("button").focus();
}

async function answer(kind, number) {
  const r = current;
  if (!r || !device) return;
  const n = kind === "approve" ? String(number) : "";
  const message = `callverify-answer\n${r.verification_id}\n${r.method_id}\n${r.nonce}\n${kind}\n${n}`;
  const body = {
    verification_id: r.verification_id,
    method_id: r.method_id,
    nonce: r.nonce,
    answer: kind,
    signature: await sign(device.privateKey, message),
  };
  if (kind === "approve") body.number = number;
  render(null);
  try {
    const done = await postJson("/app/v1/answer", body);
    $("result").textContent = `Answered: ${done.result}`;
    $("result").dataset.result = done.result;
  } catch (e) {
    $("result").textContent = `Not accepted: ${e.message}`;
  }
}

async function listen() {
  if (source) source.close();
  const ts = Date.now();
  const sig = await sign(device.privateKey, `callverify-events\n${device.methodId}\n${ts}`);
  const q = new URLSearchParams({ method: device.methodId, ts: String(ts), sig });
  source = new EventSource(`/app/v1/events?${q}`);
  source.addEventListener("open", () => status("Ready. Waiting for sign-in requests."));
  source.addEventListener("requests", (e) => {
    const { requests } = JSON.parse(e.data);
    const open = requests.filter((r) => r.expires_at > Date.now());
    if (!current || !open.some((r) => r.nonce === current.nonce)) render(open[0] || null);
  });
  // The signed URL is good for a minute: reconnect with a fresh signature.
  source.addEventListener("error", () => {
    source.close();
    status("Reconnecting…");
    setTimeout(listen, 2000);
  });
}

async function main() {
  $("deny").addEventListener("click", () => answer("deny"));
  $("fraud").addEventListener("click", () => answer("fraud"));
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("sw.js", { scope: "/app/" }).catch((e) => console.warn(e));
    navigator.serviceWorker.addEventListener("message", (e) => {
      if (e.data && e.data.type === "sign_in_request" && !current) render(e.data.request);
    });
  }
  const token = new URLSearchParams(location.hash.slice(1)).get("enrol");
  if (token) history.replaceState(null, "", location.pathname);
  device = await loadDevice();
  if (token) {
    try {
      device = await enrol(token);
      status(device.pushed ? "This device is enrolled." : "This device is enrolled (keep this app open to receive requests).");
      $("status").dataset.enrolled = "true";
    } catch (e) {
      status(`Enrolment failed: ${e.message}`);
      return;
    }
  }
  if (!device) {
    status("Not enrolled. Open the enrolment link from your sign-in settings.");
    return;
  }
  $("status").dataset.enrolled = "true";
  await listen();
}

main().catch((e) => status(`Error: ${e.message}`));
