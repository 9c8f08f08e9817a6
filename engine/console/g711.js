// G.711 μ-law and a band-limited resampler to 8 kHz: what a phone line carries.
// Pure functions and one small class, no DOM: imported by the capture worklet
// (audio thread) and by the player (main thread).

const BIAS = 0x84;
const CLIP = 32635;

/** One float sample (-1..1) as a μ-law byte (ITU-T G.711, as Twilio sends it). */
export function encodeMulaw(x) {
  let s = Math.round(x * 32767);
  let sign = 0;
  if (s < 0) { s = -s; sign = 0x80; }
  if (s > CLIP) s = CLIP;
  s += BIAS;
  let exp = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exp > 0; mask >>= 1) exp--;
  const mantissa = (s >> (exp + 3)) & 0x0f;
  return ~(sign | (exp << 4) | mantissa) & 0xff;
}

/** The 256 μ-law codes decoded to floats (-1..1). */
export const MULAW_DECODE = (() => {
  const table = new Float32Array(256);
  for (let code = 0; code < 256; code++) {
    const u = ~code & 0xff;
    const exp = (u >> 4) & 7;
    let s = (((u & 0x0f) << 3) + BIAS) << exp;
    s -= BIAS;
    table[code] = ((u & 0x80) ? -s : s) / 32768;
  }
  return table;
})();

/**
 * Streaming resampler from `inRate` to 8 kHz: a windowed-sinc low-pass at
 * 3.6 kHz (below the new Nyquist, so nothing folds back into the band) read at
 * fractional positions. The kernel is tabulated once. Feed it blocks of any
 * length; it calls `emit(sample)` for each output sample.
 */
export class Resampler {
  constructor(inRate, outRate = 8000, cutoffHz = 3600, half = 16) {
    this.step = inRate / outRate;
    this.half = Math.max(4, Math.ceil(half * this.step / 2));
    this.fc = cutoffHz / inRate; // cycles per input sample
    this.res = 128; // table entries per input sample
    const n = this.half * this.res;
    this.kernel = new Float32Array(n + 2);
    for (let i = 0; i <= n + 1; i++) {
      const d = i / this.res;
      const x = 2 * Math.PI * this.fc * d;
      const sinc = d === 0 ? 1 : Math.sin(x) / x;
      const w = d >= this.half ? 0 : 0.42 + 0.5 * Math.cos(Math.PI * d / this.half) + 0.08 * Math.cos(2 * Math.PI * d / this.half);
      this.kernel[i] = 2 * this.fc * sinc * w;
    }
    this.buf = new Float32Array(8192);
    this.len = 0;
    this.pos = this.half; // input index of the next output sample
  }

  _tap(d) {
    const a = Math.abs(d) * this.res;
    const i = a | 0;
    if (i >= this.kernel.length - 1) return 0;
    const f = a - i;
    return this.kernel[i] * (1 - f) + this.kernel[i + 1] * f;
  }

  push(block, emit) {
    if (this.len + block.length > this.buf.length) {
      const bigger = new Float32Array((this.len + block.length) * 2);
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(block, this.len);
    this.len += block.length;
    const h = this.half;
    while (this.pos + h < this.len) {
      const c = Math.floor(this.pos);
      let acc = 0;
      for (let j = c - h + 1; j <= c + h; j++) acc += this.buf[j] * this._tap(this.pos - j);
      emit(acc);
      this.pos += this.step;
    }
    const drop = Math.floor(this.pos) - h;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
  }
}

/** Base64 of a byte array (for a `media` payload). */
export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

/** Bytes of a base64 string (an agent `media` payload). */
export function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
