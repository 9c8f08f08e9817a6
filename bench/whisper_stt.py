"""The embedded recognizer on its own: accuracy and end-of-speech latency, per model.

    python -m bench.whisper_stt [--model base] [--model tiny.en] [-n 30] [--live 10]

Speech: Debian's asterisk-core-sounds-en-wav prompts (one speaker, recorded at
8 kHz; transcripts from asterisk-core-sounds-en), 4-20 words each, a fixed
selection, each after a G.711 μ-law round trip. Two measurements per model:

- offline: each prompt decoded once, as a final (WER with a small normaliser:
  case, punctuation, digits as words, a few contractions), and the decode time;
- live: prompts fed to a session as the STT actor feeds it (a 300 ms pre-roll,
  100 ms batches in real time, then two quiet batches for the VAD's hangover), with
  partials on and off: the time from ``end_utterance`` to the final, how many
  finals reused a partial pass, partials per utterance, and the WER of the finals.

Run it niced on a quiet machine; on a shared box the numbers are upper bounds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import statistics
import sys
import time
import wave
from pathlib import Path

import numpy as np

from engine.audio import ulaw_decode, ulaw_encode
from engine.providers.whisper_stt import WhisperStt

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
BATCH = 1600  # 100 ms of 8 kHz PCM16
_NUM = dict(enumerate("zero one two three four five six seven eight nine ten".split()))
_CONTRACTIONS = {"you're": "you are", "i'm": "i am", "it's": "it is", "we're": "we are", "that's": "that is"}


def normalise(text: str) -> list[str]:
    s = text.lower().replace("-", " ")
    for short, long in _CONTRACTIONS.items():
        s = s.replace(short, long)
    s = re.sub(r"[^\w' ]", " ", s).replace("'", "")
    return [_NUM.get(int(w), w) if w.isdigit() and int(w) <= 10 else w for w in s.split()]


def edits(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def prompts(n: int) -> list[tuple[str, str, bytes]]:
    """(name, transcript, 8 kHz PCM16 after μ-law) for a fixed selection of prompts."""
    if not TRANSCRIPTS.is_file():
        sys.exit("bench.whisper_stt: install asterisk-core-sounds-en and asterisk-core-sounds-en-wav")
    refs = {}
    for line in gzip.open(TRANSCRIPTS, "rt", encoding="utf-8"):
        name, sep, text = line.partition(":")
        text = text.strip()
        if sep and not line.startswith(";") and text and not re.search(r"[\[(]", text):
            refs[name.strip()] = text
    names = sorted(k for k in refs if 4 <= len(refs[k].split()) <= 20 and (SOUNDS / f"{k}.wav").is_file())
    rng = np.random.default_rng(11)
    picked = sorted(rng.choice(names, size=min(n, len(names)), replace=False))
    out = []
    for name in picked:
        with wave.open(str(SOUNDS / f"{name}.wav")) as w:
            pcm = w.readframes(w.getnframes())
        out.append((name, refs[name], ulaw_decode(ulaw_encode(pcm))))
    return out


def offline(stt: WhisperStt, data: list[tuple[str, str, bytes]]) -> dict:
    errs = words = 0
    times = []
    cpu = []
    for _name, ref, pcm in data:
        t0, c0 = time.perf_counter(), _cpu()
        hyp = stt.transcribe_pcm16(pcm, 8000, "en")
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu() - c0)
        errs += edits(normalise(ref), normalise(hyp))
        words += len(normalise(ref))
    return {"wer": errs / words, "decode_p50": statistics.median(times), "cpu_p50": statistics.median(cpu)}


def _cpu() -> float:
    """CPU seconds this process has used (all threads: CTranslate2's too); unlike wall time,
    a busy machine inflates it only a little."""
    t = os.times()
    return t.user + t.system


def live(stt: WhisperStt, data: list[tuple[str, str, bytes]]) -> dict:
    errs = words = reused = partials = 0
    waits = []
    for _name, ref, pcm in data:
        got: list = []
        session = stt.open_session(
            language="en-US", sample_rate=8000, phrase_hints=(), on_transcript=got.append, on_error=print
        )
        audio = bytes(2400) + pcm + bytes(2 * BATCH)  # pre-roll, speech, hangover
        start = time.monotonic()
        for i, off in enumerate(range(0, len(audio), BATCH)):
            time.sleep(max(0.0, start + i * 0.1 - time.monotonic()))
            session.push_audio(audio[off : off + BATCH])
        time.sleep(max(0.0, start + len(audio) / 16000 - time.monotonic()))
        t0 = time.monotonic()
        session.end_utterance()
        waits.append(time.monotonic() - t0)
        reused += session.finals_reused
        partials += session.partials_sent
        session.close()
        final = " ".join(t.text for t in got if t.is_final)
        errs += edits(normalise(ref), normalise(final))
        words += len(normalise(ref))
    waits.sort()
    return {
        "wer": errs / words,
        "final_p50": statistics.median(waits),
        "final_p90": waits[int(0.9 * (len(waits) - 1))],
        "reused": reused / len(data),
        "partials": partials / len(data),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.whisper_stt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="base, tiny.en or a model directory (repeatable; default both)")
    parser.add_argument("-n", type=int, default=30, help="prompts for the offline pass, 0 to skip (default 30)")
    parser.add_argument("--live", type=int, default=10, help="prompts for the live passes, 0 to skip (default 10)")
    parser.add_argument("--cpu-threads", type=int, default=2, help="CTranslate2 threads per decode (default 2)")
    args = parser.parse_args(argv)
    data = prompts(max(args.n, args.live))
    for model in args.model or ["base", "tiny.en"]:
        on = WhisperStt(model, cpu_threads=args.cpu_threads)
        on.warm_up()
        if args.n:
            r = offline(on, data[: args.n])
            print(
                f"{model:8} offline  n={args.n:3}  WER {100 * r['wer']:5.1f} %  decode p50 {r['decode_p50']:.2f} s"
                f"  CPU p50 {r['cpu_p50']:.2f} s",
                flush=True,
            )
        if not args.live:
            continue
        for label, interval in (("partials", on.partial_interval_s), ("no-partials", 0.0)):
            on.partial_interval_s, on.partials = interval, interval > 0
            r = live(on, data[: args.live])
            print(
                f"{model:8} live {label:11} n={args.live:3}  WER {100 * r['wer']:5.1f} %  end->final p50 "
                f"{r['final_p50']:.2f} s  p90 {r['final_p90']:.2f} s  reused {100 * r['reused']:.0f} %"
                f"  partials/utt {r['partials']:.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
