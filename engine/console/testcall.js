// The test call: the browser is the phone. Microphone -> 8 kHz μ-law frames
// (capture-worklet.js) -> the same /twilio/media protocol Twilio speaks
// (connected, start with customParameters, media every 20 ms, mark echoes,
// stop) -> the agent's media played back (player.js), honouring `clear`; the
// live transcript comes from the admin API beside it. The WebSocket URL carries
// a short-lived single-use ticket from POST /admin/testcall in place of a Twilio
// signature.

import * as api from "./api.js";
import { badge, clock, empty, h, liveClock } from "./dom.js";
import { toBase64, fromBase64 } from "./g711.js";
import { normDetail } from "./calls.js";
import { Player } from "./player.js";
import { renderTurns } from "./turns.js";

function hex(bytes) {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** One call from the browser (protocol and audio; no UI). */
export class BrowserCall {
  constructor(business, onChange) {
    this.business = business;
    this.onChange = onChange;
    this.callSid = `CA${hex(16)}`;
    this.streamSid = `MZ${hex(16)}`;
    this.state = "idle"; // idle -> mic -> connecting -> live -> ended | failed
    this.error = "";
    this.seq = 0;
    this.chunk = 0;
    this.level = 0;
    this.stats = { sent: 0, marks: 0, clears: 0 };
  }

  set(state, error = "") {
    this.state = state;
    this.error = error;
    this.onChange(this);
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  async start() {
    try {
      this.set("mic");
      if (!navigator.mediaDevices || !window.isSecureContext) throw new Error("The microphone needs a secure page: open the console over https:// or on localhost.");
      this.mic = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      await this.ctx.resume();
      await this.ctx.audioWorklet.addModule("/console/capture-worklet.js");
      this.set("connecting");
      const ticket = await api.post("/admin/testcall", this.business ? { business: this.business } : {});
      this.business = ticket.business;
      await this.open(ticket.url);
      this.startedAt = Date.now() / 1000;
      this.set("live");
    } catch (err) {
      this.teardown();
      this.set("failed", err instanceof api.Unauthorized ? "Signed out." : String(err.message || err));
    }
  }

  open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.ws = ws;
      ws.onopen = () => {
        this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
        this.send({
          event: "start",
          sequenceNumber: String(++this.seq),
          start: {
            accountSid: "ACbrowser", streamSid: this.streamSid, callSid: this.callSid, tracks: ["inbound"],
            customParameters: { business: this.business, from: "browser", to: "", testcall: "1" },
            mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
          },
          streamSid: this.streamSid,
        });
        this.startAudio();
        resolve();
      };
      ws.onerror = () => reject(new Error("The media WebSocket could not connect."));
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onclose = (ev) => {
        if (this.state === "live") {
          this.teardown();
          this.set("ended", ev.code === 1000 ? "" : `closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`);
        }
      };
    });
  }

  startAudio() {
    this.player = new Player(this.ctx);
    this.source = this.ctx.createMediaStreamSource(this.mic);
    this.node = new AudioWorkletNode(this.ctx, "mulaw-capture");
    this.source.connect(this.node);
    this.node.connect(this.ctx.destination); // outputs silence; keeps the node pulled
    this.node.port.onmessage = ({ data }) => {
      this.level = data.level;
      this.chunk += 1;
      this.send({
        event: "media", sequenceNumber: String(++this.seq),
        media: { track: "inbound", chunk: String(this.chunk), timestamp: String(this.chunk * 20), payload: toBase64(data.frame) },
        streamSid: this.streamSid,
      });
      this.stats.sent += 1;
      for (const name of this.player.due()) this.echoMark(name);
    };
  }

  echoMark(name) {
    this.send({ event: "mark", sequenceNumber: String(++this.seq), streamSid: this.streamSid, mark: { name } });
    this.stats.marks += 1;
  }

  receive(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (_) { return; }
    if (msg.event === "media" && msg.media && msg.media.payload) this.player.push(fromBase64(msg.media.payload));
    else if (msg.event === "mark" && msg.mark) this.player.mark(String(msg.mark.name));
    else if (msg.event === "clear") {
      this.stats.clears += 1;
      for (const name of this.player.clear()) this.echoMark(name);
    }
  }

  get receivedSeconds() {
    return this.player ? this.player.received / 8000 : 0;
  }

  hangup() {
    if (this.state !== "live") return;
    this.send({ event: "stop", sequenceNumber: String(++this.seq), streamSid: this.streamSid, stop: { accountSid: "ACbrowser", callSid: this.callSid } });
    this.teardown();
    this.set("ended");
  }

  teardown() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "hangup");
    if (this.node) this.node.port.onmessage = null;
    if (this.mic) for (const track of this.mic.getTracks()) track.stop();
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
  }
}

const STATUS_TEXT = {
  idle: "Ready", mic: "Asking for the microphone…", connecting: "Connecting to the agent…",
  live: "On the call: speak to your agent", ended: "Call ended", failed: "Could not start the call",
};

let current = null; // the call survives switching tabs

export class TestCallView {
  constructor(app) {
    this.app = app;
    this.lastTurns = "";
  }

  async mount(root) {
    this.root = root;
    const opts = await api.get("/admin/testcall").catch((err) => {
      if (err instanceof api.ApiError) return { businesses: [], default: null };
      throw err;
    });
    this.select = h("select", { id: "testcall-business", "aria-label": "business" },
      (opts.businesses || []).map((b) => h("option", { value: b.id, selected: b.id === (current ? current.business : opts.default) }, `${b.name} (${b.language})`)));
    this.status = h("div", { class: "tc-status", id: "testcall-status", role: "status" });
    this.controls = h("div", { class: "tc-controls" });
    this.meter = h("div", { class: "level" }, h("span", {}));
    this.facts = h("div", { class: "tc-facts muted" });
    this.transcript = h("div", { id: "testcall-transcript" });
    root.replaceChildren(
      h("div", { class: "tc-grid" },
        h("section", { class: "card tc-phone" },
          h("h2", {}, "Test call"),
          h("p", { class: "muted" }, "Talk to your agent from this browser, before you buy a number. It is a real call: the same protocol as Twilio, the same actor tree, recorded like any other. Headphones avoid the agent hearing itself."),
          h("label", { class: "field" }, "Business", this.select),
          this.controls, this.status, this.meter, this.facts),
        h("section", { class: "card tc-transcript" }, h("h3", {}, "Live transcript"), this.transcript)),
    );
    this.lastTurns = "";
    this.render();
    return this.refresh();
  }

  render() {
    const c = current;
    const state = c ? c.state : "idle";
    const busy = state === "mic" || state === "connecting" || state === "live";
    this.select.disabled = busy;
    const start = h("button", { class: "primary big", id: "testcall-start", disabled: busy,
      onclick: () => { current = new BrowserCall(this.select.value, () => this.render()); this.lastTurns = ""; current.start(); } }, "Start test call");
    const stop = h("button", { class: "danger big", id: "testcall-hangup", onclick: () => current && current.hangup() }, "Hang up");
    this.controls.replaceChildren(state === "live" ? stop : start);
    this.status.replaceChildren(...h("div", {},
      h("span", { class: `dot ${state === "live" ? "ok pulse" : state === "failed" ? "bad" : "idle"}` }),
      STATUS_TEXT[state], state === "live" ? h("span", { class: "muted" }, " · ", liveClock(c.startedAt)) : null,
      c && c.error ? h("div", { class: "error" }, c.error) : null).childNodes);
    this.status.dataset.state = state;
    this.meter.hidden = state !== "live";
  }

  async refresh() {
    const c = current;
    if (c && c.state === "live") {
      this.meter.firstChild.style.width = `${Math.min(100, Math.sqrt(c.level) * 140)}%`;
      Object.assign(this.facts.dataset, { sent: c.stats.sent, heard: c.receivedSeconds.toFixed(2), marks: c.stats.marks, clears: c.stats.clears });
      this.facts.replaceChildren(
        c.player && c.player.speaking ? badge("agent speaking", "live") : badge("listening", "idle"), " ",
        `sent ${clock(c.stats.sent * 0.02)} · heard ${clock(c.receivedSeconds)} · marks ${c.stats.marks} · clears ${c.stats.clears}`);
    }
    if (c && c.state === "live" && Date.now() - (this.polled || 0) < 900) return;
    this.polled = Date.now();
    if (!c || c.state === "idle" || c.state === "mic" || c.state === "connecting") {
      if (!this.lastTurns) this.transcript.replaceChildren(empty("Start a call and speak: what you say and what the agent answers appears here, with each turn's latency."));
      return;
    }
    let detail;
    try {
      detail = normDetail(await api.get(`/admin/calls/${encodeURIComponent(c.callSid)}`));
    } catch (err) {
      if (err instanceof api.ApiError && err.status === 404) return; // not recorded yet
      throw err;
    }
    const key = JSON.stringify(detail.turns);
    if (key === this.lastTurns) return;
    this.lastTurns = key;
    this.transcript.replaceChildren(
      renderTurns(detail.turns),
      h("p", {}, h("a", { href: `#/calls/${encodeURIComponent(c.callSid)}` }, "Open this call with its actor tree →")));
  }

  get events() {
    return ["calls"];
  }

  /** How often the app should call refresh() while this view is shown (ms). */
  get interval() {
    return current && current.state === "live" ? 250 : 1500;
  }
}
