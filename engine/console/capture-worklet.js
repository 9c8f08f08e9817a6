// The test call's microphone path, on the audio thread: capture -> 8 kHz -> μ-law
// -> one 160-byte frame (20 ms) posted to the page as soon as its audio has been
// captured, which is when Twilio sends a frame too. Also posts the frame's peak
// level for the meter.

import { Resampler, encodeMulaw } from "./g711.js";

const FRAME = 160;

class MulawCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, 8000);
    this.frame = new Uint8Array(FRAME);
    this.n = 0;
    this.peak = 0;
    this.emit = (x) => {
      const a = x < 0 ? -x : x;
      if (a > this.peak) this.peak = a;
      this.frame[this.n++] = encodeMulaw(x);
      if (this.n === FRAME) {
        this.port.postMessage({ frame: this.frame, level: this.peak }, [this.frame.buffer]);
        this.frame = new Uint8Array(FRAME);
        this.n = 0;
        this.peak = 0;
      }
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.resampler.push(channel, this.emit);
    return true;
  }
}

registerProcessor("mulaw-capture", MulawCapture);
