"""How late the VAD decides that speech started, on real recorded speech.

Plays Debian's Asterisk prompts (``asterisk-core-sounds-en-wav``: 8 kHz recordings
of a human speaker, installed by scripts/ensure-system.sh) through the μ-law round
trip, 20 ms frame by frame, into ``VoiceActivityDetector`` at several levels (the
clip as recorded, then 20, 30 and 36 dB quieter, on a faint line hiss), and
reports per level: clips where no speech was found, the delay from the true onset
(the first 10 ms block above 1/30 of the clip's loudest and -50 dBFS) to the frame
whose ``feed`` returned ``SpeechStarted``, and the share of clips whose delay
exceeds a pre-roll of 300 and 600 ms (audio a batch recognizer would lose, in the
worst case of the batch boundary). It also counts utterances per clip (a clip is
one prompt; more than one means the VAD split it at a pause).

Not a test: the figures describe the model on this material. Run:
``python -m bench.vad_onsets [--clips N] [--sounds DIR]``.
"""

from __future__ import annotations

import argparse
import glob
import os
import wave

import numpy as np

from engine.audio import frames, ulaw_decode, ulaw_encode
from engine.messages import SpeechEnded, SpeechStarted
from engine.vad import VoiceActivityDetector

SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
LEVELS_DB = (0, -20, -30, -36)


def load(path: str) -> np.ndarray:
    with wave.open(path) as w:
        if w.getframerate() != 8000 or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 8 kHz 16-bit mono")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def true_onset(x: np.ndarray) -> float | None:
    blocks = x[: x.size // 80 * 80].reshape(-1, 80)
    e = np.sqrt((blocks**2).mean(axis=1))
    if not e.size:
        return None
    loud = np.flatnonzero(e > max(32768 * 10 ** (-50 / 20), e.max() / 30))
    return float(loud[0]) * 0.01 if loud.size else None


def run(paths: list[str], gain_db: float, seed: int = 1, **vad_kw: float) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    delays: list[float] = []
    missed = split = 0
    lead = 1.0
    for path in paths:
        x = load(path)
        onset = true_onset(x)
        if onset is None or x.size < 4000:
            continue
        y = np.concatenate([np.zeros(int(lead * 8000)), x * 10 ** (gain_db / 20), np.zeros(8000)])
        y += rng.normal(0, 3, y.size)  # line hiss, about -80 dBFS
        pcm = np.clip(y, -32768, 32767).astype("<i2").tobytes()
        vad = VoiceActivityDetector(**vad_kw)  # type: ignore[arg-type]
        started = None
        ends = 0
        for i, f in enumerate(frames(ulaw_encode(pcm), 160)):
            t = (i + 1) * 0.02
            for ev in vad.feed(ulaw_decode(f), t):
                if isinstance(ev, SpeechStarted) and started is None:
                    started = t
                ends += isinstance(ev, SpeechEnded)
        vad.close()
        if started is None:
            missed += 1
            continue
        split += ends > 1
        delays.append(started - (lead + onset))
    d = np.array(delays) * 1000.0 if delays else np.array([np.nan])
    return {
        "clips": len(delays) + missed,
        "missed": missed,
        "split": split,
        "p50_ms": float(np.median(d)),
        "p95_ms": float(np.percentile(d, 95)),
        "max_ms": float(d.max()),
        "over_300_pct": float((d > 300).mean() * 100),
        "over_600_pct": float((d > 600).mean() * 100),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="VAD onset decision delay on real recorded speech")
    parser.add_argument("--sounds", default=SOUNDS, help="folder of 8 kHz 16-bit mono WAV prompts")
    parser.add_argument("--clips", type=int, default=120, help="how many prompts (every other one, sorted)")
    parser.add_argument("--no-lift", action="store_true", help="score quiet audio as is (quiet_gain_max=1)")
    args = parser.parse_args()
    if not os.path.isdir(args.sounds):
        raise SystemExit(f"no prompts at {args.sounds} (apt-get install asterisk-core-sounds-en-wav)")
    paths = sorted(glob.glob(os.path.join(args.sounds, "*.wav")))[::2][: args.clips]
    kw = {"quiet_gain_max": 1.0} if args.no_lift else {}
    print(f"{len(paths)} prompts from {args.sounds}")
    print("level dB | clips | no speech | split | onset->SpeechStarted p50 / p95 / max ms | >300 ms | >600 ms")
    for gain in LEVELS_DB:
        r = run(paths, gain, **kw)
        print(
            f"{gain:8d} | {r['clips']:5d} | {r['missed']:9d} | {r['split']:5d} | "
            f"{r['p50_ms']:5.0f} / {r['p95_ms']:5.0f} / {r['max_ms']:5.0f}"
            f"{'':17s} | {r['over_300_pct']:6.1f}% | {r['over_600_pct']:6.1f}%",
            flush=True,
        )


if __name__ == "__main__":
    main()
