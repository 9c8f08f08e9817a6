"""``callengine eval``: recorded human speech through the real host, scored against references.

What it does, in order:

1. **Live.** The utterances of :mod:`bench.eval_data` are dealt out round-robin to
   ``--calls`` simulated Twilio calls placed at once (:class:`callsim.SimulatedCaller`:
   real-time 20 ms μ-law frames over the real WebSocket protocol). Each call waits
   for the greeting, then behaves as a caller does: says one utterance, waits for
   the agent's reply and hears it out, leaves a short pause, says the next. The
   stored transcripts are read back from ``GET /admin/calls/{sid}`` and aligned
   with the references (:func:`bench.eval_score.attribute_turns`).
2. **Offline.** The same recognizer the host is configured with (``make_stt`` with
   the same settings) transcribes each played clip after the same μ-law round
   trip, with no engine in between; the ratio live WER / offline WER is the
   engine's own loss.
3. **Noise.** Noise clips (music, running water, broadband noise, babble) at a
   fixed level are played into two more calls: one while the agent is silent
   (any reply or stored transcript is a false turn) and one over the agent's
   speech (any ``clear`` is a false barge-in).

The host is either one already running (``--url``; ``CALLENGINE_ADMIN_TOKEN`` must
be its admin token) or, by default, one this command starts on a free loopback
port with a throw-away data folder and stops at the end (``--stt``/``--model``
choose its recognizer). Latency figures come from the caller's clock: end of the
utterance's last voiced frame → first frame of the reply.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import trio

from bench.eval_host import HostProcess, fetch_record, http_base, http_json, start_host, transcripts_of
from bench.eval_data import SMOKE, DataError, LoadedClip, check_data, default_data_dir, load_clips, load_noise
from bench.eval_score import Counts, attribute_turns, score_pair
from callsim import BargeIn, CallResult, Pause, Say, SimulatedCaller, WaitForReply

__all__ = ["EvalOptions", "run_eval", "rescore", "render_markdown", "main", "HostProcess", "start_host"]

CALL_START_S = 120.0  # greeting and set-up, within a call's time limit
STEP_S = 90.0  # per line: the line, a reply timeout, a long reply; a bound, never a wait


@dataclass
class EvalOptions:
    """Everything one evaluation needs; the CLI flags map onto these one to one."""

    url: str = ""  # ws://host:port/twilio/media; "" starts a host
    calls: int = 3
    clips: tuple[str, ...] = ()  # clip ids; () for all
    data_dir: Path | None = None
    reply_timeout: float = 20.0
    gap_s: float = 0.6
    offline: bool = True
    noise: bool = True
    noise_dbfs: float = -30.0
    gain_db: float = 0.0  # applied to every speech clip (quiet callers)
    stt: str = ""
    model: str = ""
    admin_token: str = ""
    auth_token: str = ""


# ------------------------------------------------------------------ the calls


def _speech_script(clips: Sequence[LoadedClip], opts: EvalOptions) -> list[Any]:
    steps: list[Any] = []
    for c in clips:
        steps += [Say(audio=c.mulaw), WaitForReply(timeout=opts.reply_timeout, max_reply_s=60.0), Pause(opts.gap_s)]
    # Before hanging up, a moment for a transcript still on its way (a call that
    # ends while its last utterance is being recognised loses it, as a real one would).
    steps.append(Pause(2.0))
    return steps


async def _run_calls(url: str, scripts: Sequence[list[Any]], opts: EvalOptions, **kw: Any) -> list[CallResult]:
    results: list[CallResult | None] = [None] * len(scripts)

    async def one(i: int) -> None:
        await trio.sleep(0.25 * i)  # not all greetings on the same tick
        caller = SimulatedCaller(
            url, scripts[i], custom_parameters={"from": f"+1555000{i:04d}"}, auth_token=opts.auth_token or None,
            call_timeout=CALL_START_S + STEP_S * len(scripts[i]), keep_audio=False, **kw,
        )
        results[i] = await caller.run()

    async with trio.open_nursery() as nursery:
        for i in range(len(scripts)):
            nursery.start_soon(one, i)
    return [r for r in results if r is not None]


def _percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return round(v[lo] + (v[hi] - v[lo]) * (k - lo), 1)


@dataclass
class _Live:
    counts: Counts = field(default_factory=Counts)
    by_kind: dict[str, Counts] = field(default_factory=dict)
    utterances: int = 0
    not_played: int = 0
    dropped: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    merged: int = 0
    onsets_lost: list[str] = field(default_factory=list)
    words_lost_start: int = 0
    words_lost_end: int = 0
    ends_lost: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    no_reply: int = 0
    errors: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def _score_text(live: _Live, played: Sequence[LoadedClip], turns: Sequence[str]) -> None:
    """Add one call's text figures to ``live``: its played clips against its stored turns."""
    att = attribute_turns([c.reference for c in played], turns)
    live.counts.add(att.counts)
    live.utterances += len(played)
    live.merged += len(att.merged)
    for u, c in enumerate(played):
        cid = c.clip.id
        live.by_kind.setdefault(c.clip.kind, Counts()).add(att.per_utterance[u])
        if u in att.dropped:
            live.dropped.append(cid)
        elif att.lost_start[u]:
            live.onsets_lost.append(cid)
        if u in att.split:
            live.split.append(cid)
        if att.lost_end[u]:
            live.ends_lost.append(cid)
        live.words_lost_start += att.lost_start[u] if u not in att.dropped else 0
        live.words_lost_end += att.lost_end[u]
        live.rows.append(
            {
                "clip": cid, "speaker": c.clip.speaker, "kind": c.clip.kind, "reference": c.reference,
                "turns": [turns[t] for t in att.turns_of[u]], **att.per_utterance[u].as_dict(),
                "lost_start": att.lost_start[u], "lost_end": att.lost_end[u],
            }
        )


def _score_live(groups: Sequence[Sequence[LoadedClip]], results: Sequence[CallResult], records: Sequence[Any]) -> _Live:
    live = _Live()
    for clips, result, record in zip(groups, results, records):
        live.errors += [f"{result.call_sid}: {e}" for e in result.errors]
        played = [c for c, t in zip(clips, result.turns) if t.speech_end_ms is not None]
        live.not_played += len(clips) - len(played)
        for t in result.turns:
            if t.reply_latency_ms is not None:
                live.latencies.append(t.reply_latency_ms)
            elif t.speech_end_ms is not None:
                live.no_reply += 1
        _score_text(live, played, transcripts_of(record))
    return live


def _live_text_json(live: _Live) -> dict[str, Any]:
    return {
        "utterances": live.utterances,
        "counts": live.counts.as_dict(),
        "by_kind": {k: v.as_dict() for k, v in sorted(live.by_kind.items())},
        "dropped": live.dropped,
        "split": live.split,
        "merged_turns": live.merged,
        "onsets_lost": live.onsets_lost,
        "words_lost_start": live.words_lost_start,
        "ends_lost": live.ends_lost,
        "words_lost_end": live.words_lost_end,
        "rows": live.rows,
    }


def rescore(report: dict[str, Any], data_dir: Path | None = None) -> dict[str, Any]:
    """Score a saved report again (after a change to the normaliser or the references)
    from the transcripts it stored, without placing a call: the live text figures from
    each call's stored transcripts and played clips, the offline ones from the stored
    hypotheses. Timing figures are kept as measured."""
    live = _Live()
    calls = report["live"]["calls"]
    rows = report["live"]["rows"]
    if all("clips" in c for c in calls):
        id_groups = [c["clips"] for c in calls]
    else:  # reports that predate "clips": the calls were dealt round-robin, all played
        ids = [r["clip"] for r in rows]
        n = len(calls)
        sizes = [len(range(i, len(ids), n)) for i in range(n)]
        id_groups, k = [], 0
        for size in sizes:
            id_groups.append(ids[k : k + size])
            k += size
    by_id = {c.clip.id: c for c in load_clips(data_dir, tuple(i for g in id_groups for i in g))}
    for ids, call in zip(id_groups, calls):
        _score_text(live, [by_id[i] for i in ids], call["transcripts"])
    out = dict(report)
    out["live"] = {**report["live"], **_live_text_json(live)}
    off = report.get("offline")
    if off and "rows" in off:
        total, by_kind, orows = Counts(), {}, []
        for row in off["rows"]:
            c = by_id.get(row["clip"]) or load_clips(data_dir, (row["clip"],))[0]
            counts = score_pair(c.reference, row["hypothesis"])
            total.add(counts)
            by_kind.setdefault(c.clip.kind, Counts()).add(counts)
            orows.append({"clip": row["clip"], "hypothesis": row["hypothesis"], **counts.as_dict()})
        out["offline"] = {**off, "counts": total.as_dict(), "by_kind": {k: v.as_dict() for k, v in sorted(by_kind.items())}, "rows": orows}
        if total.wer > 0:
            out["engine_loss"] = round(live.counts.wer / total.wer, 2)
    return out


def _offline(clips: Sequence[LoadedClip], opts: EvalOptions) -> dict[str, Any]:
    """The host's recognizer on each clip after the μ-law round trip, no engine."""
    from engine.config import load_settings
    from engine.providers import make_stt

    env = dict(os.environ)
    if opts.stt:
        env["CALLENGINE_STT"] = opts.stt
    if opts.model:
        env["CALLENGINE_WHISPER_MODEL"] = opts.model
    settings = load_settings(environ=env)
    if settings.stt != "whisper":
        return {"skipped": f"the offline pass needs the embedded recognizer (stt is {settings.stt!r})"}
    stt = make_stt("whisper", settings)
    stt.transcribe_pcm16(clips[0].pcm16(), 8000, "en")  # warm up
    total, by_kind, rows, secs = Counts(), {}, [], []
    for c in clips:
        t0 = time.perf_counter()
        text = stt.transcribe_pcm16(c.pcm16(), 8000, "en")
        secs.append(time.perf_counter() - t0)
        counts = score_pair(c.reference, text)
        total.add(counts)
        by_kind.setdefault(c.clip.kind, Counts()).add(counts)
        rows.append({"clip": c.clip.id, "hypothesis": text, **counts.as_dict()})
    return {
        "model": str(getattr(stt, "model_path", "")),
        "counts": total.as_dict(),
        "by_kind": {k: v.as_dict() for k, v in sorted(by_kind.items())},
        "seconds_per_utterance_p50": round(statistics.median(secs), 3),
        "rows": rows,
    }


async def _noise_calls(url: str, opts: EvalOptions, triggers: Sequence[LoadedClip]) -> dict[str, Any]:
    """Two calls: noise while the agent is silent, noise over the agent's speech."""
    # One frame shorter each: the caller labels a turn by its audio's length, which
    # ties every turn to its noise even when a step found no agent audio to play over.
    noises = [(n, a[: len(a) - 160 * i]) for i, (n, a) in enumerate(load_noise(opts.data_dir, dbfs=opts.noise_dbfs))]
    silent: list[Any] = []
    for _noise, audio in noises:
        silent += [Pause(1.0), Say(audio=audio), Pause(3.0)]
    speaking: list[Any] = []
    for i, (_noise, audio) in enumerate(noises):
        speaking += [
            Say(audio=triggers[i % len(triggers)].mulaw),
            BargeIn(after_ms=300, audio=audio, timeout=opts.reply_timeout),
            WaitForReply(timeout=opts.reply_timeout, max_reply_s=60.0),
            Pause(opts.gap_s),
        ]
    r_silent, r_speaking = await _run_calls(url, [silent, speaking], opts)
    return {"noises": noises, "silent": r_silent, "speaking": r_speaking}


def _score_noise(noise: dict[str, Any], records: dict[str, Any], opts: EvalOptions) -> dict[str, Any]:
    noises = noise["noises"]
    r_silent: CallResult = noise["silent"]
    r_speaking: CallResult = noise["speaking"]
    per: list[dict[str, Any]] = []
    silent_by_label = {t.label: t for t in r_silent.turns}
    barge_by_label = {t.label: t for t in r_speaking.turns if t.barge_in}
    for clip, audio in noises:
        label = f"<audio {len(audio) / 8000:.2f} s>"  # as callsim's caller labels an audio line
        t_silent = silent_by_label.get(label)
        t_barge = barge_by_label.get(label)
        per.append(
            {
                "noise": clip.id, "kind": clip.kind,
                "false_turn": bool(t_silent and t_silent.reply_first_frame_ms is not None),
                "false_barge_in": bool(t_barge and t_barge.clear_ms is not None),
                "played_over_agent": t_barge is not None and t_barge.speech_end_ms is not None,
            }
        )
    silent_turns = transcripts_of(records.get(r_silent.call_sid))
    n = len(noises)
    over = sum(1 for p in per if p["played_over_agent"])
    return {
        "level_dbfs": opts.noise_dbfs,
        "clips": n,
        "false_turns": sum(p["false_turn"] for p in per),
        "false_turn_rate": round(sum(p["false_turn"] for p in per) / n, 3) if n else None,
        "stored_transcripts_from_noise": silent_turns,
        "false_barge_ins": sum(p["false_barge_in"] for p in per),
        "played_over_agent": over,
        "false_barge_in_rate": round(sum(p["false_barge_in"] for p in per) / over, 3) if over else None,
        "per_clip": per,
        "errors": r_silent.errors + r_speaking.errors,
    }


def _source() -> dict[str, str]:
    """Which tree measured: the engine package's folder and its git commit."""
    import engine

    folder = Path(engine.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"tree": str(folder), "commit": commit}


async def run_eval(opts: EvalOptions) -> dict[str, Any]:
    """Run the evaluation against ``opts.url`` (a host must be up); return the report."""
    if opts.calls < 1:
        raise ValueError(f"--calls must be >= 1, got {opts.calls}")
    if not opts.admin_token:
        raise ValueError("the admin token is needed to read the stored transcripts: set CALLENGINE_ADMIN_TOKEN")
    clips = await trio.to_thread.run_sync(partial(load_clips, opts.data_dir, opts.clips or None, gain_db=opts.gain_db))
    base = http_base(opts.url)
    health = await trio.to_thread.run_sync(http_json, f"{base}/healthz")
    n = min(opts.calls, len(clips))
    groups = [clips[i::n] for i in range(n)]
    t0 = time.monotonic()
    results = await _run_calls(opts.url, [_speech_script(g, opts) for g in groups], opts)
    live_s = time.monotonic() - t0
    records = [await trio.to_thread.run_sync(fetch_record, base, r.call_sid, opts.admin_token) for r in results]
    live = _score_live(groups, results, records)
    stored = [
        {
            "call_sid": r.call_sid, "state": (rec or {}).get("state"), "clips": [c.clip.id for c, t in zip(g, r.turns) if t.speech_end_ms is not None],
            "transcripts": transcripts_of(rec), "errors": r.errors,
        }
        for g, r, rec in zip(groups, results, records)
    ]
    report: dict[str, Any] = {
        "source": _source(),
        "host": {k: health.get(k) for k in ("stt", "tts", "llm", "store")},
        "url": opts.url,
        "calls": n,
        "clips": len(clips),
        "speakers": len({c.clip.speaker for c in clips}),
        "audio_s": round(sum(c.seconds for c in clips), 1),
        "gain_db": opts.gain_db,
        "live_s": round(live_s, 1),
        "loadavg": os.getloadavg(),
        "live": {
            **_live_text_json(live),
            "not_played": live.not_played,
            "latency_ms": {
                "n": len(live.latencies),
                "p50": _percentile(live.latencies, 0.5),
                "p95": _percentile(live.latencies, 0.95),
            },
            "no_reply": live.no_reply,
            "errors": live.errors,
            "calls": stored,
        },
    }
    if opts.noise:
        triggers = [c for c in clips if c.clip.kind in ("sentence", "read")] or clips
        noise = await _noise_calls(opts.url, opts, triggers)
        recs = {
            r.call_sid: await trio.to_thread.run_sync(fetch_record, base, r.call_sid, opts.admin_token)
            for r in (noise["silent"], noise["speaking"])
        }
        report["noise"] = _score_noise(noise, recs, opts)
    if opts.offline:
        played = {row["clip"] for row in live.rows}
        report["offline"] = await trio.to_thread.run_sync(
            _offline, [c for c in clips if c.clip.id in played] or clips, opts
        )
        off = report["offline"].get("counts")
        if off and off["wer"] > 0:
            report["engine_loss"] = round(live.counts.wer / off["wer"], 2)
    return report


# ------------------------------------------------------------------ output


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as the table ``callengine eval`` prints (and writes as eval.md)."""
    live = report["live"]
    lc = live["counts"]
    off = report.get("offline", {})
    oc = off.get("counts")
    lines = [
        f"recorded speech: {report['clips']} utterances, {report['speakers']} speakers, {report['audio_s']} s; "
        f"{report['calls']} concurrent calls"
        + (f", speech at {report['gain_db']:+.0f} dB" if report.get("gain_db") else "")
        + f"; host stt={report['host'].get('stt')} "
        f"(offline model: {off.get('model') or off.get('skipped') or '-'})",
        "",
        "| | live (through the host) | offline (same model, μ-law, no engine) |",
        "|---|---|---|",
        f"| WER | {_pct(lc['wer'])} | {_pct(oc['wer']) if oc else '-'} |",
        f"| substitutions / deletions / insertions | {lc['sub']} / {lc['del']} / {lc['ins']} of {lc['ref_words']} words"
        f" | {(str(oc['sub']) + ' / ' + str(oc['del']) + ' / ' + str(oc['ins'])) if oc else '-'} |",
        f"| engine loss (live WER / offline WER) | {report.get('engine_loss', '-')} | |",
        f"| utterances dropped | {len(live['dropped'])} of {live['utterances']} | |",
        f"| utterances split into several turns | {len(live['split'])} | |",
        f"| turns merging several utterances | {live['merged_turns']} | |",
        f"| onsets lost (utterances / words) | {len(live['onsets_lost'])} / {live['words_lost_start']} | |",
        f"| ends lost (utterances / words) | {len(live['ends_lost'])} / {live['words_lost_end']} | |",
        f"| end of speech → first reply frame p50 / p95 | {live['latency_ms']['p50']} / {live['latency_ms']['p95']} ms"
        f" (n={live['latency_ms']['n']}; no reply: {live['no_reply']}) | "
        f"{off.get('seconds_per_utterance_p50', '-')} s per utterance (p50) |",
    ]
    kinds = sorted(set(live["by_kind"]) | set(off.get("by_kind", {})))
    if kinds:
        lines += ["", "| kind | live WER | offline WER | words |", "|---|---|---|---|"]
        for k in kinds:
            lk = live["by_kind"].get(k, {})
            ok = off.get("by_kind", {}).get(k, {})
            lines.append(f"| {k} | {_pct(lk.get('wer'))} | {_pct(ok.get('wer'))} | {lk.get('ref_words', ok.get('ref_words', 0))} |")
    noise = report.get("noise")
    if noise:
        lines += [
            "",
            f"noise at {noise['level_dbfs']} dBFS RMS ({noise['clips']} clips: "
            + ", ".join(p["noise"] for p in noise["per_clip"]) + ")",
            f"- while the agent is silent: {noise['false_turns']} false turns of {noise['clips']} "
            f"(rate {noise['false_turn_rate']}); transcripts stored from noise: {len(noise['stored_transcripts_from_noise'])}",
            f"- over the agent's speech: {noise['false_barge_ins']} false barge-ins of {noise['played_over_agent']} "
            f"(rate {noise['false_barge_in_rate']})",
        ]
    if live["dropped"] or live["onsets_lost"]:
        lines += ["", "dropped: " + (", ".join(live["dropped"]) or "none"), "onsets lost: " + (", ".join(live["onsets_lost"]) or "none")]
    if live["not_played"]:
        lines.append(f"not played (the call ended early): {live['not_played']}")
    for e in live["errors"][:10]:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    pj, pm = out / "eval.json", out / "eval.md"
    pj.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    pm.write_text(render_markdown(report) + "\n")
    return [pj, pm]


def main(args: argparse.Namespace) -> int:
    """Entry point of ``callengine eval``: 0 when it ran, 2 for bad arguments or missing data."""
    opts = EvalOptions(
        url=args.url,
        calls=args.calls,
        clips=tuple(args.clip) or (SMOKE if args.smoke else ()),
        data_dir=Path(args.data) if args.data else default_data_dir(),
        reply_timeout=args.reply_timeout,
        gap_s=args.gap,
        offline=not args.no_offline,
        noise=not args.no_noise,
        noise_dbfs=args.noise_dbfs,
        gain_db=getattr(args, "gain_db", 0.0) or 0.0,
        stt=args.stt,
        model=args.model,
        admin_token=os.environ.get("CALLENGINE_ADMIN_TOKEN", ""),
        auth_token=os.environ.get("TWILIO_AUTH_TOKEN", ""),
    )
    if getattr(args, "rescore", None):
        try:
            report = rescore(json.loads(Path(args.rescore).read_text()), opts.data_dir)
        except (OSError, ValueError, KeyError, DataError) as exc:
            sys.stderr.write(f"callengine eval: cannot rescore {args.rescore}: {exc!r}\n")
            return 2
        return _emit(report, args)
    host: HostProcess | None = None
    try:
        check_data(opts.data_dir)  # before a host is started for nothing
        if not opts.url:
            opts.admin_token = secrets.token_hex(16)
            opts.auth_token = ""
            sys.stderr.write("callengine eval: starting a host (loading the models)...\n")
            host = start_host(opts.admin_token, opts.stt, opts.model)
            opts.url = host.url
        report = trio.run(run_eval, opts)
    except (DataError, ValueError, RuntimeError) as exc:
        sys.stderr.write(f"callengine eval: {exc}\n")
        return 2
    finally:
        if host is not None:
            host.stop()
    return _emit(report, args)


def _emit(report: dict[str, Any], args: argparse.Namespace) -> int:
    if args.out:
        write_outputs(report, Path(args.out))
    sys.stdout.write((json.dumps(report, indent=2, ensure_ascii=False) if args.json else render_markdown(report)) + "\n")
    return 0
