"""The voice benchmarks: intelligibility, first audio under load, and 50 calls with the real voice.

    .venv/bin/python -m bench.voice_bench            # everything, then docs/benchmarks.md (section "voice")
    .venv/bin/python -m bench.voice_bench --skip-load --repeat 1    # a quick look

1. Intelligibility: every line of the demo businesses (``callengine voice-check``'s lines)
   spoken by each voice, through 8 kHz μ-law, transcribed by the embedded recognizer
   (whisper base, multilingual: an independent listener for both voices); WER for
   ``demo`` (espeak-ng vs Piper), CER for ``demo-he`` (raw espeak-ng vs Nakdimon +
   espeak-ng phonemes). ``--repeat`` rounds each (Piper's sampling noise varies).
2. First audio with N calls speaking at once, the demo's FAQ answers and prompts as
   replies: ``together``, N threads ask the voice for a reply at the same instant,
   ``--rounds`` times (the worst case); ``conversation``, N calls for
   ``--conversation-s`` seconds, each speaking a reply, letting it play out and
   listening 0.1-0.5 s before the next (replies start whenever turns end; eight to nine
   of the ten speak at any moment, the table's "speaking"). The time to
   each first 8 kHz μ-law chunk, p50/p95/max, and how many replies had a chunk come
   more than 20 ms after the audio before it would have finished playing; for
   espeak-ng and Piper (window by window, and each piece whole as before).
3. 50 calls: ``callengine serve`` with ``CALLENGINE_TTS=piper`` (the real embedded voice),
   the stub STT and LLM, and ``callengine loadtest --calls 50``: underruns, errors, CPU
   per call, greeting p95; then the same with the stub TTS, the engine alone on the same
   machine at the same time, for comparison (``--load-tts``).

Timings on a shared machine are contended: run it on a quiet one (``nice`` only lowers
this process's priority against others, it does not remove them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[k]


def _voices(settings: Any) -> dict[str, Any]:
    from engine.providers import make_tts

    return {"espeak": make_tts("espeak", settings), "piper": make_tts("piper", settings)}


def intelligibility(settings: Any, repeat: int) -> list[dict[str, Any]]:
    from engine.business import load_businesses
    from engine.providers.espeak_tts import EspeakTts
    from engine.providers.whisper_stt import WhisperStt
    from engine.speakable import SpeakableTts
    from engine.voice_check import business_lines, check_lines, totals

    businesses = load_businesses(settings.businesses_path)
    stt = WhisperStt(cpu_threads=settings.whisper.cpu_threads, partial_interval_s=0)  # one-shot: no partials
    rows = []
    cases = [
        ("demo", "espeak-ng", SpeakableTts(EspeakTts(rate_wpm=settings.espeak.rate_wpm))),
        ("demo", "piper (joe, medium)", _voices(settings)["piper"]),
        ("demo-he", "espeak-ng, raw Hebrew", SpeakableTts(EspeakTts(rate_wpm=settings.espeak.rate_wpm, hebrew_diacritize=False))),
        ("demo-he", "Nakdimon + espeak-ng phonemes", SpeakableTts(EspeakTts(rate_wpm=settings.espeak.rate_wpm))),
    ]
    for bid, voice, tts in cases:
        biz = businesses[bid]
        errors = length = 0
        worst: dict[str, float] = {}
        for _ in range(repeat):
            results = check_lines(business_lines(biz), tts=tts, stt=stt, language=biz.language, voice=biz.voice)
            e, n = totals(results)
            errors, length = errors + e, length + n
            for r in results:
                worst[r.kind] = max(worst.get(r.kind, 0.0), r.rate)
        metric = "CER" if biz.lang == "he" else "WER"
        rows.append({"business": bid, "voice": voice, "metric": metric, "rate": errors / max(length, 1),
                     "lines": len(worst), "repeat": repeat, "worst_line": max(worst.items(), key=lambda kv: kv[1])})
        _say(f"{bid} {voice}: {metric} {100 * errors / max(length, 1):.1f} %")
    return rows


def _reply(tts: Any, text: str) -> tuple[float, float, float]:
    """Speak one reply as the TTS actor does (pulling chunks as fast as they come):
    (ms to the first chunk, seconds of audio, ms of the worst gap: how late a chunk came
    after the audio before it had finished playing, had playback begun at the first)."""
    t0 = time.perf_counter()
    it = tts.synthesize(text, language="en-US")
    first_chunk = next(it)
    t_first = time.perf_counter()
    sent, worst = len(first_chunk), 0.0
    for chunk in it:
        late = time.perf_counter() - (t_first + sent / 8000.0)
        worst = max(worst, late)
        sent += len(chunk)
    return (t_first - t0) * 1000.0, sent / 8000.0, worst * 1000.0


def _row(name: str, mode: str, concurrency: int, samples: list[float], gaps: list[float],
         speaking: float | None = None) -> dict[str, Any]:
    row = {"voice": name, "mode": mode, "concurrency": concurrency, "n": len(samples),
           "speaking": round(speaking, 1) if speaking is not None else concurrency,
           "p50_ms": round(statistics.median(samples), 1), "p95_ms": round(_pct(samples, 95), 1),
           "max_ms": round(max(samples), 1), "late_replies": sum(1 for g in gaps if g > 20.0)}
    _say(f"first audio {name}, {mode}, {concurrency} calls: p50 {row['p50_ms']} p95 {row['p95_ms']} ms, "
         f"{row['late_replies']} replies with a chunk > 20 ms late")
    return row


def first_audio(settings: Any, concurrency: int, rounds: int, seconds: float) -> list[dict[str, Any]]:
    """Two loads: ``together`` (``concurrency`` replies asked for at the same instant,
    ``rounds`` times: the worst case) and ``conversation`` (``concurrency`` calls for
    ``seconds``, each speaking a reply, letting it play out, then listening 0.1-0.5 s to
    its caller before the next: replies start whenever turns end, and on average eight
    to nine of the ten are speaking at any moment, reported as ``speaking``)."""
    import random

    from engine.business import load_businesses
    from engine.voice_check import business_lines

    biz = load_businesses(settings.businesses_path)["demo"]
    lines = [text for kind, text in business_lines(biz) if kind != "greeting"]  # greetings are cached
    from engine.providers.piper_tts import PiperTts
    from engine.speakable import SpeakableTts

    voices = _voices(settings)
    cold = SpeakableTts(PiperTts(threads=settings.piper.threads, slots=settings.piper.slots, cache_bytes=0))
    whole = SpeakableTts(PiperTts(threads=settings.piper.threads, slots=settings.piper.slots, cache_bytes=0,
                                  stream=False))
    rows = []
    # "piper, cold": every reply computed (an LLM's new sentences), window by window;
    # "whole pieces": the same, each piece computed whole before it is heard (the voice
    # before streaming); "lines cached": the default, whose cache has heard the
    # business's lines once (a rule planner's replies).
    cases = (("espeak", voices["espeak"]), ("piper, cold", cold), ("piper, cold, whole pieces", whole),
             ("piper, lines cached", voices["piper"]))
    for name, tts in cases:
        b"".join(tts.synthesize("Warm up.", language="en-US"))
        if name == "piper, lines cached":
            for text in lines:
                b"".join(tts.synthesize(text, language="en-US"))
        samples: list[float] = []
        gaps: list[float] = []
        lock = threading.Lock()
        for r in range(rounds):
            barrier = threading.Barrier(concurrency)

            def speak(i: int) -> None:
                text = lines[(r * concurrency + i) % len(lines)]
                barrier.wait()
                ms, _, gap = _reply(tts, text)
                with lock:
                    samples.append(ms)
                    gaps.append(gap)

            threads = [threading.Thread(target=speak, args=(i,)) for i in range(concurrency)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        rows.append(_row(name, "together", concurrency, samples, gaps))
        if name == "piper, lines cached" or seconds <= 0:
            continue
        samples, gaps = [], []
        spoken: list[float] = []
        start = time.perf_counter()
        end = start + seconds

        def converse(i: int) -> None:
            rng = random.Random(i)
            time.sleep(rng.uniform(0.0, 1.0))
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                ms, audio_s, gap = _reply(tts, rng.choice(lines))
                playback_end = t0 + ms / 1000.0 + audio_s + max(0.0, gap) / 1000.0
                with lock:
                    samples.append(ms)
                    gaps.append(gap)
                    spoken.append(audio_s)
                time.sleep(max(0.0, playback_end - time.perf_counter()) + rng.uniform(0.1, 0.5))

        threads = [threading.Thread(target=converse, args=(i,)) for i in range(concurrency)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        rows.append(_row(name, "conversation", concurrency, samples, gaps, sum(spoken) / (time.perf_counter() - start)))
    return rows


def load(calls: int, duration: float, out: Path, tts: str = "piper") -> dict[str, Any] | None:
    from bench import run_bench as rb

    port = rb._free_port()
    env = rb._env(CALLENGINE_TTS=tts, CALLENGINE_DATA_DIR=str(out / f"var-{tts}"))
    server = [str(rb.VENV_BIN / "callengine"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    args = argparse.Namespace(ramp_rate=10.0, duration=duration, script=None)
    with rb._server(server, port, env, out / f"serve-{tts}.log"):
        report = rb._loadtest(f"ws://127.0.0.1:{port}/twilio/media", calls, out / f"{tts}-n{calls}",
                              {"peer": f"callengine-{tts}", "workers": 1, "calls": calls}, args, env)
    if report is not None:
        report["tts"] = tts
    return report


def markdown(result: dict[str, Any]) -> str:
    out = [f"Measured {result['when']} on {result['cpus']} CPUs (load average before: {result['loadavg']}).", ""]
    if result.get("intelligibility"):
        out += ["| business | voice | error rate (whisper base, after 8 kHz μ-law) | worst line |", "|---|---|---|---|"]
        for r in result["intelligibility"]:
            kind, rate = r["worst_line"]
            out.append(f"| {r['business']} | {r['voice']} | {r['metric']} **{100 * r['rate']:.1f} %** "
                       f"({r['lines']} lines × {r['repeat']}) | {kind}: {100 * rate:.0f} % |")
        out.append("")
    if result.get("first_audio"):
        out += ["| voice | calls (mean speaking) | replies start | first audio p50 | p95 | max | replies with a chunk > 20 ms late |",
                "|---|---|---|---|---|---|---|"]
        for r in result["first_audio"]:
            out.append(f"| {r['voice']} | {r['concurrency']} ({r.get('speaking', r['concurrency'])}), {r['n']} replies | "
                       f"{r.get('mode', 'together')} | "
                       f"{r['p50_ms']} ms | **{r['p95_ms']} ms** | {r['max_ms']} ms | {r.get('late_replies', '-')} |")
        out.append("")
    reports = [r for r in result.get("load") or [] if r]
    if reports:
        out += ["| voice (stub STT and LLM, 1 worker) | calls | errors | underruns | CPU per call | greeting p95 |",
                "|---|---|---|---|---|---|"]
        for rep in reports:
            out.append(f"| {rep.get('tts')} | {rep.get('concurrency')} | {rep.get('errors')} | **{rep.get('underruns')}** | "
                       f"{rep.get('cpu_pct_per_call')} % of a core | {rep.get('greeting_ms', {}).get('p95')} ms |")
        out.append("")
    return "\n".join(out)


def _say(msg: str) -> None:
    sys.stderr.write(f"[voice-bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.voice_bench", description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="rounds of every line per voice (intelligibility)")
    p.add_argument("--concurrency", type=int, default=10, help="calls speaking at once (first audio)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of simultaneous replies (first audio)")
    p.add_argument("--conversation-s", type=float, default=60.0,
                   help="seconds of the conversation load (first audio; 0 leaves it out)")
    p.add_argument("--calls", type=int, default=50, help="calls in the load test with the real voice")
    p.add_argument("--duration", type=float, default=30.0, help="seconds the load test keeps placing calls")
    p.add_argument("--load-tts", default="piper,stub",
                   help="voices of the load test, comma-separated (stub: the engine alone, for comparison)")
    p.add_argument("--skip-intelligibility", action="store_true", help="leave out the intelligibility runs")
    p.add_argument("--skip-first-audio", action="store_true", help="leave out the first-audio runs")
    p.add_argument("--skip-load", action="store_true", help="leave out the load test")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "voice"), help="where voice.json goes")
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"), help="the doc whose 'voice' section is rewritten")
    p.add_argument("--no-doc", action="store_true", help="do not touch the doc")
    args = p.parse_args(argv)

    import os

    from engine.config import load_settings

    settings = load_settings(None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                              "loadavg": " / ".join(f"{x:.1f}" for x in os.getloadavg())}
    if not args.skip_intelligibility:
        result["intelligibility"] = intelligibility(settings, args.repeat)
    if not args.skip_first_audio:
        result["first_audio"] = first_audio(settings, args.concurrency, args.rounds, args.conversation_s)
    if not args.skip_load:
        result["load"] = [load(args.calls, args.duration, out, tts) for tts in args.load_tts.split(",") if tts]
    (out / "voice.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown(result)
    sys.stdout.write(md + "\n")
    if not args.no_doc:
        from bench.report import replace_section

        doc = Path(args.doc)
        doc.write_text(replace_section(doc.read_text(encoding="utf-8"), "voice", md), encoding="utf-8")
        _say(f"updated the 'voice' section of {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
