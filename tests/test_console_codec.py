"""The console's test-call codec (engine/console/g711.js) agrees with the engine's.

The browser encodes the microphone as μ-law and decodes the agent's μ-law; if
its G.711 differed from the engine's (engine.audio), every test call would be
distorted without any test noticing. Node runs the very module the browser
loads. Also: the resampler to 8 kHz keeps the speech band and removes what
would fold back into it (a tone above 4 kHz), from 48 kHz and from 44.1 kHz.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.audio import ulaw_decode, ulaw_encode

G711 = Path(__file__).resolve().parent.parent / "engine" / "console" / "g711.js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is installed by `make test` (scripts/ensure-system.sh test)")

SCRIPT = """
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
import(%s).then((m) => {
  const out = {};
  out.encoded = input.samples.map((x) => m.encodeMulaw(x));
  out.decoded = Array.from(m.MULAW_DECODE);
  out.resampled = {};
  for (const [rate, block] of Object.entries(input.tones)) {
    const r = new m.Resampler(Number(rate));
    const got = [];
    for (let i = 0; i < block.length; i += 128) r.push(Float32Array.from(block.slice(i, i + 128)), (x) => got.push(x));
    out.resampled[rate] = got;
  }
  process.stdout.write(JSON.stringify(out));
});
"""


def _run(payload: dict, tmp: Path) -> dict:
    module = tmp / "g711.mjs"  # the same file, named so that any Node loads it as an ES module
    shutil.copyfile(G711, module)
    proc = subprocess.run(
        [NODE, "-e", SCRIPT % json.dumps(module.as_uri())], input=json.dumps(payload), capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _tone(rate: int, hz: float, seconds: float = 0.5) -> list[float]:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * math.pi * hz * t)).tolist()


@pytest.fixture(scope="module")
def node_out(tmp_path_factory: pytest.TempPathFactory) -> dict:
    samples = list(range(-32768, 32768, 7)) + [32767]
    tones = {"48000": _tone(48000, 1000) + _tone(48000, 6000), "44100": _tone(44100, 1000) + _tone(44100, 6000)}
    out = _run({"samples": [s / 32767 for s in samples], "tones": tones}, tmp_path_factory.mktemp("node"))
    out["pcm"] = samples
    return out


def test_mulaw_encoding_matches_the_engine(node_out: dict) -> None:
    pcm = np.array(node_out["pcm"], dtype=np.int16)
    mine = bytes(node_out["encoded"])
    engine = ulaw_encode(pcm.tobytes())
    differ = sum(a != b for a, b in zip(mine, engine))
    assert len(mine) == len(engine) and differ == 0, f"{differ} of {len(mine)} codes differ"


def test_mulaw_decoding_matches_the_engine(node_out: dict) -> None:
    engine = np.frombuffer(ulaw_decode(bytes(range(256))), dtype=np.int16).astype(np.float64)
    mine = np.array(node_out["decoded"]) * 32768
    assert np.array_equal(np.round(mine), engine)


@pytest.mark.parametrize("rate", ["48000", "44100"])
def test_resampler_keeps_speech_and_removes_what_would_alias(node_out: dict, rate: str) -> None:
    out = np.array(node_out["resampled"][rate])
    n = len(out) // 2
    assert 8000 - 20 <= len(out) <= 8000  # one second in, one second out at 8 kHz (less the kernel's 2 ms held back)
    keep, drop = out[200 : n - 200], out[n + 200 : -200]  # steady parts of each tone
    rms_keep = float(np.sqrt(np.mean(keep**2)))
    rms_drop = float(np.sqrt(np.mean(drop**2)))
    assert abs(rms_keep - 0.5 / math.sqrt(2)) < 0.02, rms_keep  # 1 kHz passes at unity gain
    assert 20 * math.log10(rms_drop / rms_keep) < -40, rms_drop  # 6 kHz (would fold to 2 kHz) is gone
    spectrum = np.abs(np.fft.rfft(keep * np.hanning(len(keep))))
    assert abs(np.argmax(spectrum) * 8000 / len(keep) - 1000) < 10  # and it is still 1 kHz
