// The WhatsApp view: the connection state of the Baileys sidecar and, while it
// waits to be paired, its QR drawn here from the raw QR string (scan it from
// the phone: WhatsApp -> Linked devices -> Link a device).

import * as api from "./api.js";
import { badge, empty, h, ltr, when } from "./dom.js";
import qrcodegen from "./vendor/qrcodegen/qrcodegen.js";

const SVG = "http://www.w3.org/2000/svg";

/** An SVG drawing of `text` as a QR code (medium error correction, 4-module quiet zone). */
export function qrSvg(text) {
  const qr = qrcodegen.QrCode.encodeText(text, qrcodegen.QrCode.Ecc.MEDIUM);
  const border = 4, size = qr.size + border * 2;
  let path = "";
  for (let y = 0; y < qr.size; y++) {
    for (let x = 0; x < qr.size; x++) if (qr.getModule(x, y)) path += `M${x + border},${y + border}h1v1h-1z`;
  }
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("class", "qr");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "WhatsApp pairing QR code");
  svg.setAttribute("shape-rendering", "crispEdges");
  const bg = document.createElementNS(SVG, "rect");
  bg.setAttribute("width", size);
  bg.setAttribute("height", size);
  bg.setAttribute("fill", "#fff");
  const fg = document.createElementNS(SVG, "path");
  fg.setAttribute("d", path);
  fg.setAttribute("fill", "#111");
  svg.append(bg, fg);
  return svg;
}

const STATE_CLASS = {
  connected: "ok", open: "ok", qr: "warn", starting: "warn", connecting: "warn",
  standby: "idle", disabled: "idle", unknown: "idle", unavailable: "bad", closed: "bad", logged_out: "bad",
};
const STATE_TEXT = {
  connected: "connected", qr: "waiting to be paired", starting: "starting the sidecar", connecting: "connecting",
  standby: "standby (another process runs the sidecar)", disabled: "off", unavailable: "sidecar unavailable", unknown: "unknown",
};

export class WhatsAppView {
  constructor(app) {
    this.app = app;
    this.last = "";
  }

  mount(root) {
    this.body = h("div", { id: "whatsapp" });
    root.replaceChildren(h("section", { class: "card narrow" }, h("h2", {}, "WhatsApp"), this.body));
    this.last = "";
    return this.refresh();
  }

  async refresh() {
    let info;
    try {
      info = await api.get("/admin/whatsapp");
    } catch (err) {
      if (!(err instanceof api.ApiError && err.status === 404)) throw err;
      info = { enabled: null, state: "unknown", qr: null };
      try { info.qr = await api.get("/admin/whatsapp/qr"); } catch (e) { if (!(e instanceof api.ApiError)) throw e; }
    }
    const key = JSON.stringify(info);
    if (key === this.last) return;
    this.last = key;
    const qrText = typeof info.qr === "string" ? info.qr : info.qr && info.qr.qr;
    const qrAt = info.qr_at ?? (info.qr && info.qr.at);
    const state = String(info.state || (info.enabled === false ? "disabled" : "unknown")).toLowerCase();
    const me = info.sidecar && info.sidecar.me;
    const parts = [
      h("p", { class: "wa-state", dataset: { state } }, "Connection ",
        badge(STATE_TEXT[state] || state.replaceAll("_", " "), STATE_CLASS[state] || "idle"),
        me ? h("span", { class: "muted" }, " as ", ltr(String(me), "phone")) : null),
    ];
    if (info.enabled === false) {
      parts.push(h("p", { class: "muted" }, "WhatsApp through Baileys is off. Turn it on in the settings ([whatsapp] in config/default.toml) and restart `callengine serve`: it starts the sidecar and shows its pairing QR here."));
    } else if (qrText) {
      parts.push(
        h("div", { class: "qr-box" }, qrSvg(qrText)),
        h("ol", { class: "steps" },
          h("li", {}, "Open WhatsApp on the business phone."),
          h("li", {}, "Settings → Linked devices → Link a device."),
          h("li", {}, "Point the phone at this code. It refreshes on its own.")),
        qrAt ? h("p", { class: "muted" }, `QR received ${when(qrAt)}`) : null,
      );
    } else if (state === "connected" || state === "open") {
      parts.push(h("p", {}, "Paired: messages to the business number are answered by the agent."));
    } else {
      parts.push(empty("No pairing QR yet: the sidecar shows one here as soon as it asks to be paired."));
    }
    this.body.replaceChildren(...parts);
  }
}
