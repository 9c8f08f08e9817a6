// Plays the agent's audio as Twilio would: μ-law 8 kHz frames queued back to
// back on the Web Audio clock; marks echoed when playback reaches them; `clear`
// drops everything queued and echoes every pending mark at once.

import { MULAW_DECODE } from "./g711.js";

const CUSHION_S = 0.06; // start a burst this far ahead, so jitter does not cut it up

export class Player {
  constructor(ctx) {
    this.ctx = ctx;
    this.out = ctx.createGain();
    this.out.connect(ctx.destination);
    this.playhead = 0;
    this.sources = new Set();
    this.marks = []; // {name, at} in AudioContext time, in order
    this.received = 0; // samples received
  }

  /** Queue one frame of μ-law bytes. */
  push(bytes) {
    if (!bytes.length) return;
    const buffer = this.ctx.createBuffer(1, bytes.length, 8000);
    const data = buffer.getChannelData(0);
    for (let i = 0; i < bytes.length; i++) data[i] = MULAW_DECODE[bytes[i]];
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.out);
    const now = this.ctx.currentTime;
    if (this.playhead < now) this.playhead = now + CUSHION_S;
    src.start(this.playhead);
    this.playhead += bytes.length / 8000;
    this.received += bytes.length;
    this.sources.add(src);
    src.onended = () => this.sources.delete(src);
  }

  /** A mark: it is reached when everything queued before it has played. */
  mark(name) {
    this.marks.push({ name, at: Math.max(this.playhead, this.ctx.currentTime) });
  }

  /** Names of the marks playback has reached since the last call. */
  due() {
    const now = this.ctx.currentTime;
    const out = [];
    while (this.marks.length && this.marks[0].at <= now) out.push(this.marks.shift().name);
    return out;
  }

  /** Drop queued audio; the names of all pending marks (to echo at once). */
  clear() {
    for (const src of this.sources) {
      try { src.stop(); } catch (_) { /* already ended */ }
    }
    this.sources.clear();
    this.playhead = this.ctx.currentTime;
    const names = this.marks.map((m) => m.name);
    this.marks = [];
    return names;
  }

  get speaking() {
    return this.playhead > this.ctx.currentTime;
  }
}
