// Small DOM and formatting helpers. Every piece of data reaches the page as a
// text node (never as HTML), so a transcript or a chat message cannot inject
// markup; user text is wrapped with dir="auto" so Hebrew reads right to left.

/** Create an element: h("div", {class: "x", onclick: fn}, child, "text", [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style") for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), v);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Text written by a person or the agent: its own direction (Hebrew right to left). */
export function said(text, cls = "said") {
  return h("bdi", { class: cls, dir: "auto" }, text ?? "");
}

/** A phone number or id: always left to right, even inside Hebrew text. */
export function ltr(text, cls = "mono") {
  return h("bdi", { class: cls, dir: "ltr" }, text ?? "");
}

export function badge(text, kind = "", title = null) {
  return h("span", { class: `badge ${kind}`.trim(), title }, text);
}

/** Epoch seconds from seconds, milliseconds or an ISO string; null if unknown. */
export function epochS(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return value > 1e12 ? value / 1000 : value;
  const n = Number(value);
  if (!Number.isNaN(n)) return epochS(n);
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t / 1000;
}

/** 75 -> "1:15"; 3725 -> "1:02:05". */
export function clock(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${mm}:${pad(ss)}`;
}

/** A wall time, short: "14:05:09" today, else "5 Dec 14:05". */
export function when(value) {
  const t = epochS(value);
  if (t === null) return "–";
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : d.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
}

export function ms(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value >= 10000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}

/** An element whose text is the time since `sinceEpoch`, kept current by tick(). */
export function liveClock(sinceEpoch) {
  return h("span", { class: "clock", dataset: { since: String(sinceEpoch) } }, clock(Date.now() / 1000 - sinceEpoch));
}

/** Advance every liveClock on the page (called once a second). */
export function tick() {
  const now = Date.now() / 1000;
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = clock(now - Number(el.dataset.since));
  }
}

export function empty(text) {
  return h("div", { class: "empty" }, text);
}
