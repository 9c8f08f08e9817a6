// A call's conversation: each turn's caller line and agent reply (interrupted
// replies and barge-ins marked), with its latency as a waterfall of bars from
// the turn's stamps: speech end -> STT final -> LLM first token -> TTS first
// audio -> first reply frame. The slowest stage is red and labelled, so where a
// slow turn lost its time shows at a glance. Every turn of a call is drawn on
// one time scale, so turns compare by eye too.

import { badge, h, ms, said } from "./dom.js";

export const STAGES = [
  { key: "stt", label: "STT final", from: "speech_end", to: "stt_final", hint: "end of speech → final transcript (includes the end-of-speech decision)" },
  { key: "llm", label: "LLM first token", from: "stt_final", to: "llm_first_token", hint: "final transcript → the planner's first token" },
  { key: "tts", label: "TTS first audio", from: "llm_first_token", to: "tts_first_audio", hint: "first token → first synthesized audio" },
  { key: "send", label: "First reply frame", from: "tts_first_audio", to: "reply_first_frame", hint: "first audio → first frame on the wire" },
];

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/**
 * The stages present in `stamps`, in ms after the end of speech: `start`, and
 * `dur`, the part of the stage that the caller waited for (after the end of
 * speech; a stage that ran earlier, such as a speculative reply begun before
 * the caller finished, counts only from there). `full` is the stage's own time.
 */
export function stages(stamps) {
  const s = stamps || {};
  const t0 = num(s.speech_end);
  if (t0 === null) return [];
  const out = [];
  for (const st of STAGES) {
    const a = num(s[st.from]), b = num(s[st.to]);
    if (a === null || b === null) continue;
    const start = Math.max(0, a - t0);
    out.push({ ...st, start, dur: Math.max(0, b - t0 - start), full: Math.max(0, b - a), early: a < t0 });
  }
  return out;
}

export function totalMs(stamps) {
  const s = stamps || {};
  const a = num(s.speech_end), b = num(s.reply_first_frame);
  return a === null || b === null ? null : b - a;
}

function niceStep(span) {
  for (const step of [50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000]) if (span / step <= 4) return step;
  return 20000;
}

function axisLabel(t) {
  return t === 0 ? "0" : t % 1000 === 0 ? `${t / 1000} s` : t > 1000 ? `${(t / 1000).toFixed(1)} s` : `${t} ms`;
}

/** The scale (ms) shared by a call's turns: the longest waterfall, rounded up. */
export function scaleFor(turns) {
  let longest = 400;
  for (const t of turns) {
    for (const st of stages(t.stamps)) longest = Math.max(longest, st.start + st.dur);
  }
  const step = niceStep(longest);
  return Math.ceil(longest / step) * step;
}

export function renderWaterfall(stamps, scale) {
  const parts = stages(stamps);
  if (!parts.length) return h("div", { class: "waterfall none" }, "No latency stamps for this turn.");
  const slowest = parts.reduce((a, b) => (b.dur > a.dur ? b : a));
  const pct = (v) => `${Math.max(0, Math.min(100, (v / scale) * 100))}%`;
  const step = niceStep(scale);
  const wf = h("div", { class: "waterfall", role: "img", "aria-label": "turn latency waterfall", style: { "--grid": pct(step) } });
  const seen = num((stamps || {}).speech_end_seen), t0 = num((stamps || {}).speech_end);
  for (const st of parts) {
    const slow = st === slowest && parts.length > 1;
    const track = h(
      "div",
      { class: "track" },
      h("div", { class: `bar stage-${st.key}${slow ? " slow" : ""}`, style: { left: pct(st.start), width: pct(st.dur) }, title: st.hint }),
    );
    if (slow) track.append(slowTag(st, scale, pct));
    if (st.key === "stt" && seen !== null && t0 !== null) {
      track.append(h("div", { class: "tickmark", style: { left: pct(seen - t0) }, title: `end of speech decided after ${ms(seen - t0)}` }));
    }
    wf.append(
      h("div", { class: `wf-row${slow ? " slow" : ""}`, dataset: { stage: st.key } },
        h("span", { class: "wf-label", title: st.hint }, `→ ${st.label}`),
        track,
        h("span", { class: "wf-ms", title: st.early ? `began before the end of speech; the whole stage took ${ms(st.full)}` : null }, ms(st.dur), st.early ? "*" : null),
      ),
    );
  }
  const axis = h("div", { class: "wf-axis" });
  for (let t = 0; t <= scale + 1e-6; t += step) axis.append(h("span", { style: { left: pct(t) } }, axisLabel(t)));
  wf.append(h("div", { class: "wf-row axis-row" }, h("span", { class: "wf-label" }), axis, h("span", { class: "wf-ms" })));
  return wf;
}

/** The "slowest" label: inside a wide bar, else after it, else (near the end) before it. */
function slowTag(st, scale, pct) {
  const a = st.start / scale, b = (st.start + st.dur) / scale;
  const [cls, style] = b - a > 0.28 ? ["inside", { right: pct(scale - st.start - st.dur) }]
    : b < 0.72 ? ["after", { left: pct(st.start + st.dur) }]
    : ["before", { right: pct(scale - st.start) }];
  return h("span", { class: `slow-tag ${cls}`, style }, "slowest");
}

/**
 * The turns of one call, newest last. A turn's `barge_in` says its caller
 * spoke over the agent; where a host does not report it, the turn after an
 * interrupted reply is the barge-in that interrupted it.
 */
export function renderTurns(turns, { greeting } = {}) {
  const box = h("div", { class: "turns" });
  if (greeting) box.append(h("div", { class: "bubble agent greeting" }, h("span", { class: "who" }, "Agent"), said(greeting)));
  if (!turns.length) {
    box.append(h("div", { class: "empty" }, "No turns yet: they appear here as the caller speaks."));
    return box;
  }
  const scale = scaleFor(turns);
  turns.forEach((turn, i) => {
    const prev = i > 0 ? turns[i - 1] : null;
    const bargeIn = turn.barge_in ?? Boolean(prev && prev.interrupted);
    const total = totalMs(turn.stamps);
    const index = turn.turn_index ?? turn.turn_id ?? i + 1;
    const article = h("article", { class: "turn", dataset: { turn: String(index) } },
      h("div", { class: "turn-head" },
        h("span", { class: "turn-no" }, `Turn ${index}`),
        total !== null ? h("span", { class: "turn-total", title: "end of speech → first reply frame" }, "first reply after ", h("b", {}, ms(total))) : null,
        bargeIn ? badge("barge-in", "warn", "the caller spoke over the agent") : null,
        turn.interrupted ? badge("interrupted", "bad", "the reply was cut off by the caller") : null,
      ),
      h("div", { class: `bubble caller${bargeIn ? " barged" : ""}` },
        h("span", { class: "who" }, "Caller"),
        turn.transcript ? said(turn.transcript) : h("em", { class: "muted" }, "(no words recognized)"),
        turn.dtmf ? h("span", { class: "dtmf" }, "keys ", h("bdi", { dir: "ltr" }, turn.dtmf)) : null,
      ),
      turn.reply
        ? h("div", { class: `bubble agent${turn.interrupted ? " interrupted" : ""}` },
            h("span", { class: "who" }, "Agent"),
            said(turn.reply),
            turn.interrupted ? h("span", { class: "cut" }, "✂ cut off") : null)
        : null,
      renderWaterfall(turn.stamps, scale),
    );
    box.append(article);
  });
  return box;
}
