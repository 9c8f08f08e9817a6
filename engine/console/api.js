// The admin API as the console reads it: every request carries the operator's
// token as a Bearer header; a 401 anywhere signs the console out. Live updates
// come from GET /admin/events (server-sent events), read with fetch() so that
// the request can carry the header (EventSource cannot).

const KEY = "callengine.adminToken";

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let token = sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
const signOutHandlers = [];

export function hasToken() {
  return token !== "";
}

export function setToken(value, remember) {
  token = value;
  sessionStorage.setItem(KEY, value);
  if (remember) localStorage.setItem(KEY, value);
}

export function clearToken() {
  token = "";
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

/** Called (once per 401) with the reason, after the token has been forgotten. */
export function onSignOut(fn) {
  signOutHandlers.push(fn);
}

function headers(extra) {
  return { Authorization: `Bearer ${token}`, ...(extra || {}) };
}

async function check(resp) {
  if (resp.status === 401) {
    const had = hasToken();
    clearToken();
    if (had) for (const fn of signOutHandlers) fn("The server refused the admin token.");
    throw new Unauthorized("unauthorized");
  }
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body && body.error) message = body.error;
    } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, message);
  }
  return resp;
}

/** GET an admin route as JSON. Throws Unauthorized or ApiError. */
export async function get(path, { signal } = {}) {
  if (!hasToken()) throw new Unauthorized("no token");
  const resp = await fetch(path, { headers: headers(), signal, cache: "no-store" });
  return (await check(resp)).json();
}

/** POST JSON to an admin route; the parsed answer (or null when empty). */
export async function post(path, body) {
  if (!hasToken()) throw new Unauthorized("no token");
  const resp = await check(
    await fetch(path, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body ?? {}),
    }),
  );
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

/** Fetch a file with the token and hand it to the browser as a download. */
export async function download(path, filename) {
  const resp = await check(await fetch(path, { headers: headers(), cache: "no-store" }));
  saveBlob(await resp.blob(), filename);
}

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * Read GET /admin/events until `signal` aborts or the stream ends; calls
 * onEvent(name, data) per event (data parsed as JSON when it is JSON).
 * Resolves when the stream ends; rejects with ApiError (404 where the host has
 * no event stream) or a network error.
 */
export async function streamEvents(onEvent, { signal, onOpen } = {}) {
  if (!hasToken()) throw new Unauthorized("no token");
  const resp = await check(
    await fetch("/admin/events", { headers: headers({ Accept: "text/event-stream" }), signal, cache: "no-store" }),
  );
  if (onOpen) onOpen();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      dispatch(block, onEvent);
    }
  }
}

function dispatch(block, onEvent) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  const raw = data.join("\n");
  let parsed = raw;
  try { parsed = JSON.parse(raw); } catch (_) { /* plain text */ }
  onEvent(name, parsed);
}
