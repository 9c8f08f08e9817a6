"""Google Cloud Speech-to-Text (v1) streaming recognition for phone calls.

One :class:`GoogleStt` per process owns one ``speech_v1.SpeechClient`` (one gRPC channel);
each call opens a :class:`GoogleSttSession` on it. The session is a blocking object in the
sense of ``engine.providers.base``: its owner (the STT pykka actor) calls ``push_audio`` /
``end_utterance`` / ``close`` from its own thread; results come back through the callbacks on
the session's reader threads.

Threads (per session):

* the caller's thread: ``push_audio`` appends to the replay buffer and to the current
  stream's ``queue.Queue`` (never blocks on the network);
* one gRPC-internal thread per stream reads the request iterator (the queue);
* one reader thread per stream (``google-stt-<session>-<n>``) starts the RPC, iterates the
  responses and invokes ``on_transcript`` / ``on_error``.

Every callback runs while holding the session lock, so after a stream is retired (rotation)
or the session is closed no result from the old stream can slip through, and ``close()``
returning means no callback will follow. Callbacks must therefore be cheap and must not
block waiting on another thread that needs this session (an actor ``tell`` is right).

Why the transport's raw stream-stream callable (``client.transport.streaming_recognize``)
rather than ``client.streaming_recognize``: the GAPIC wrapper prefetches the first response
inside the call (so the call blocks until the service answers and nothing can cancel it
meanwhile) and applies a default retry that would re-send a half-consumed request iterator.
The raw callable returns a cancellable ``grpc.Call`` at once; errors are converted with
``google.api_core.exceptions.from_grpc_error`` so owners see the usual exception types.

Stream rotation: Google ends a stream at 305 s (``OUT_OF_RANGE``). After ``rotate_after_s``
(240 s) the session switches to a new stream at the next utterance boundary (an
``end_utterance()`` call or a final result, whichever comes first), and at
``force_rotate_after_s`` (290 s) regardless. The audio not yet covered by a final (tracked
with the finals' ``result_end_time``) is replayed into the new stream; the old stream is
cancelled and anything it still says is dropped, so every utterance is finalized exactly
once. The same replay serves the model downgrade: when the service rejects the model for the
language (``INVALID_ARGUMENT`` naming the model and the language), the session reopens with
``latest_long`` and then with no model, and the provider remembers, per language and for the
whole process, the model that works, so later sessions start with it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import grpc
from google.api_core import exceptions as gexc
from google.cloud import speech_v1
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcTransport

from engine.messages import Transcript
from engine.providers.base import ProviderError
from engine.providers.google_client import build_client

__all__ = ["GoogleStt", "GoogleSttSession", "SttStats"]

log = logging.getLogger(__name__)

GOOGLE_STREAM_LIMIT_S = 305.0  # Google Speech v1 streaming limit
MAX_REQUEST_BYTES = 25_000  # "audio_content ... limited to 25 KB" per streaming request
FALLBACK_MODELS = ("latest_long", "")  # tried in order when the service rejects a model
_ENHANCED_MODELS = {"phone_call", "video"}  # the models that have an enhanced variant
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_MODEL_REJECTED_RE = re.compile(r"model.*(language|not supported)|(language).*model", re.IGNORECASE | re.DOTALL)
_session_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class SttStats:
    """Provider-wide counters (a snapshot)."""

    streams_opened: int
    downgrades: int
    working_models: dict[str, str]


class GoogleStt:
    """The process-wide Google STT provider (implements ``SpeechToText``).

    ``endpoint`` with ``insecure=True`` talks plaintext gRPC to that address (a local peer;
    no credentials are looked up). Otherwise Application Default Credentials (or
    ``credentials``) and ``endpoint`` or the regional endpoint ``{region}-speech.googleapis.com``.
    Construction is cheap and does no I/O; thread-safe afterwards.
    """

    name = "google"
    streaming = True

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        insecure: bool = False,
        region: str | None = None,
        credentials: object | None = None,
        model: str = "phone_call",
        use_enhanced: bool = True,
        automatic_punctuation: bool = True,
        rotate_after_s: float = 240.0,
        force_rotate_after_s: float = 290.0,
        max_request_ms: int = 100,
        max_replay_s: float = 30.0,
        close_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rotate_after_s <= 0 or force_rotate_after_s < rotate_after_s:
            raise ValueError("need 0 < rotate_after_s <= force_rotate_after_s")
        if force_rotate_after_s >= GOOGLE_STREAM_LIMIT_S:
            raise ValueError(f"force_rotate_after_s must be below Google's {GOOGLE_STREAM_LIMIT_S:g} s limit")
        if not 10 <= max_request_ms <= 100:
            raise ValueError("max_request_ms must be within 10..100")
        self.model = model
        self.use_enhanced = use_enhanced
        self.automatic_punctuation = automatic_punctuation
        self.rotate_after_s = rotate_after_s
        self.force_rotate_after_s = force_rotate_after_s
        self.max_request_ms = max_request_ms
        self.max_replay_s = max_replay_s
        self.close_timeout_s = close_timeout_s
        self.clock = clock
        self._channel: grpc.Channel | None
        self._client, self._channel = build_client(
            speech_v1.SpeechClient, SpeechGrpcTransport, "speech",
            endpoint=endpoint, insecure=insecure, region=region, credentials=credentials,
        )
        self._lock = threading.Lock()
        self._working_model: dict[str, str] = {}  # language -> model that the service accepted
        self._streams_opened = 0
        self._downgrades = 0

    # ---------------------------------------------------------------- provider API

    def open_session(
        self,
        *,
        language: str,
        sample_rate: int,
        phrase_hints: Sequence[str],
        on_transcript: Callable[[Transcript], None],
        on_error: Callable[[BaseException], None],
    ) -> "GoogleSttSession":
        """Open a streaming session; returns at once (the RPC starts on the reader thread).

        ``language`` defaults to ``he-IL`` when empty (``iw-IL`` is passed through, Google
        accepts both). Raises ``ValueError`` for a malformed language or sample rate.
        """
        language = language or "he-IL"
        if not isinstance(language, str) or not _LANG_RE.match(language):
            raise ValueError(f"language must be a BCP-47 tag such as 'he-IL', got {language!r}")
        if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 48000:
            raise ValueError(f"sample_rate must be an int within 8000..48000, got {sample_rate!r}")
        hints = [h for h in phrase_hints if isinstance(h, str) and h.strip()]
        return GoogleSttSession(self, language, sample_rate, hints, on_transcript, on_error)

    def stats(self) -> SttStats:
        with self._lock:
            return SttStats(self._streams_opened, self._downgrades, dict(self._working_model))

    @property
    def streams_opened(self) -> int:
        with self._lock:
            return self._streams_opened

    @property
    def downgrades(self) -> int:
        with self._lock:
            return self._downgrades

    def close(self) -> None:
        """Close the shared channel (at process shutdown, after every session). Never raises."""
        try:
            if self._channel is not None:
                self._channel.close()
            else:
                self._client.transport.close()
        except Exception:  # noqa: BLE001 - shutdown must not fail
            log.warning("google stt: channel close failed", exc_info=True)

    # ---------------------------------------------------------------- internals (any thread)

    def _model_for(self, language: str) -> str:
        with self._lock:
            return self._working_model.get(language, self.model)

    def _downgrade(self, language: str, rejected: str) -> str | None:
        """The next model to try after ``rejected`` failed for ``language`` (None: no more)."""
        chain = [self.model, *[m for m in FALLBACK_MODELS if m != self.model]]
        try:
            nxt = chain[chain.index(rejected) + 1]
        except (ValueError, IndexError):
            return None
        with self._lock:
            current = self._working_model.get(language, self.model)
            if chain.index(current) < chain.index(nxt):
                # First session to learn this: record and log once per language and step.
                self._working_model[language] = nxt
                self._downgrades += 1
                log.warning(
                    "google stt: model rejected for language, downgrading",
                    extra={"language": language, "rejected_model": rejected, "model": nxt or "(default)"},
                )
            else:
                nxt = current  # another session already went at least this far
        return nxt

    def _count_stream(self) -> None:
        with self._lock:
            self._streams_opened += 1

    def _start_rpc(self, requests: Iterator[speech_v1.StreamingRecognizeRequest]) -> grpc.Call:
        return self._client.transport.streaming_recognize(requests)  # type: ignore[return-value]


class _Stream:
    """One gRPC stream of a session. Mutable fields are guarded by the session lock."""

    __slots__ = ("n", "model", "base", "q", "call", "thread", "opened", "retired")

    def __init__(self, n: int, model: str, base: int) -> None:
        self.n = n
        self.model = model
        self.base = base  # session byte offset of this stream's first audio byte
        self.q: queue.Queue[bytes | None] = queue.Queue()
        self.call: grpc.Call | None = None
        self.thread: threading.Thread | None = None
        self.opened = time.monotonic()
        self.retired = False


class GoogleSttSession:
    """One call's recognition (implements ``SttSession``). See the module docstring for threads.

    Guarantees: ``on_transcript`` is never called for an utterance twice with
    ``is_final=True`` across rotations; ``on_error`` is called at most once and nothing is
    delivered after it; ``close()`` is idempotent, bounded by ``close_timeout_s`` and never
    raises; no callback runs after ``close()`` returns.
    """

    def __init__(
        self,
        provider: GoogleStt,
        language: str,
        sample_rate: int,
        phrase_hints: Sequence[str],
        on_transcript: Callable[[Transcript], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._p = provider
        self.id = next(_session_ids)
        self.language = language
        self.sample_rate = sample_rate
        self.phrase_hints = tuple(phrase_hints)
        self._on_transcript = on_transcript
        self._on_error = on_error
        self._bytes_per_s = 2 * sample_rate
        self._max_request = min(MAX_REQUEST_BYTES, self._bytes_per_s * provider.max_request_ms // 1000 // 2 * 2)
        self._max_retained = int(self._bytes_per_s * provider.max_replay_s) // 2 * 2
        self._lock = threading.RLock()
        self._retained = bytearray()  # audio since the last final (replayed on a new stream)
        self._retained_start = 0  # session byte offset of _retained[0]
        self._total = 0  # session bytes pushed
        self._utterance = 0
        self._closed = False
        self._dead = False
        self._streams: list[_Stream] = []
        self._stream_no = itertools.count()
        self.rotations = 0
        self.downgrades = 0
        self.model = provider._model_for(language)
        with self._lock:
            self._current = self._open_stream(self.model)

    # ------------------------------------------------------------ owner's thread

    def push_audio(self, pcm16: bytes) -> None:
        """Queue 8 kHz PCM16 audio (any size; sent in requests of at most 100 ms / 25 KB).

        Non-blocking. Dropped silently once the session is closed or dead. Raises
        ``ValueError`` for something that is not bytes or has an odd length.
        """
        if not isinstance(pcm16, (bytes, bytearray, memoryview)):
            raise ValueError(f"push_audio takes PCM16 bytes, got {type(pcm16).__name__}")
        if len(pcm16) % 2:
            raise ValueError(f"PCM16 audio must have an even number of bytes, got {len(pcm16)}")
        if not pcm16:
            return
        with self._lock:
            if self._closed or self._dead:
                return
            data = bytes(pcm16)
            self._retained += data
            self._total += len(data)
            overflow = len(self._retained) - self._max_retained
            if overflow > 0:  # no final for max_replay_s: keep the newest audio only
                del self._retained[:overflow]
                self._retained_start += overflow
            self._enqueue(self._current, data)
            if time.monotonic() - self._current.opened >= self._p.force_rotate_after_s:
                self._rotate("forced")

    def end_utterance(self) -> None:
        """The VAD heard the caller stop: a rotation that is due happens here."""
        with self._lock:
            if self._rotation_due():
                self._rotate("utterance-end")

    def close(self) -> None:
        """End the request stream, cancel the RPCs and join the threads (bounded). Never raises."""
        try:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                streams = list(self._streams)
                for st in streams:
                    self._retire(st)
            deadline = time.monotonic() + self._p.close_timeout_s
            for st in streams:
                th = st.thread
                if th is not None and th is not threading.current_thread():
                    th.join(max(0.0, deadline - time.monotonic()))
            if any(st.thread is not None and st.thread.is_alive() for st in streams):
                log.warning("google stt: reader thread did not stop in time", extra={"session": self.id})
        except Exception:  # noqa: BLE001 - close never raises
            log.warning("google stt: close failed", exc_info=True, extra={"session": self.id})

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dead(self) -> bool:
        return self._dead

    # ------------------------------------------------------------ stream management (lock held)

    def _enqueue(self, st: _Stream, data: bytes) -> None:
        step = self._max_request
        for i in range(0, len(data), step):
            st.q.put(data[i : i + step])

    def _open_stream(self, model: str) -> _Stream:
        st = _Stream(next(self._stream_no), model, self._retained_start)
        self._streams = [s for s in self._streams if s.thread is None or s.thread.is_alive()]
        self._streams.append(st)
        if self._retained:
            self._enqueue(st, bytes(self._retained))
        st.thread = threading.Thread(
            target=self._run_stream, args=(st,), name=f"google-stt-{self.id}-{st.n}", daemon=True
        )
        self._p._count_stream()
        st.thread.start()
        return st

    def _retire(self, st: _Stream) -> None:
        st.retired = True
        st.q.put(None)
        if st.call is not None:
            st.call.cancel()

    def _rotation_due(self) -> bool:
        return not (self._closed or self._dead) and time.monotonic() - self._current.opened >= self._p.rotate_after_s

    def _rotate(self, reason: str) -> None:
        old = self._current
        self._current = self._open_stream(self.model)
        self._retire(old)
        if reason != "downgrade":
            self.rotations += 1
        log.info(
            "google stt: stream rotated",
            extra={"session": self.id, "reason": reason, "replay_bytes": len(self._retained)},
        )

    def _config_request(self, model: str) -> speech_v1.StreamingRecognizeRequest:
        config = speech_v1.RecognitionConfig(
            encoding=speech_v1.RecognitionConfig.AudioEncoding.LINEAR16,
            sample_rate_hertz=self.sample_rate,
            language_code=self.language,
            enable_automatic_punctuation=self._p.automatic_punctuation,
            model=model,
            use_enhanced=self._p.use_enhanced and model in _ENHANCED_MODELS,
            speech_contexts=[speech_v1.SpeechContext(phrases=list(self.phrase_hints))] if self.phrase_hints else [],
        )
        return speech_v1.StreamingRecognizeRequest(
            streaming_config=speech_v1.StreamingRecognitionConfig(
                config=config, interim_results=True, single_utterance=False
            )
        )

    # ------------------------------------------------------------ gRPC threads

    def _requests(self, st: _Stream) -> Iterator[speech_v1.StreamingRecognizeRequest]:
        """Run by gRPC's request-consumer thread: config, then coalesced audio until retired."""
        yield self._config_request(st.model)
        carry: bytes | None = None
        while True:
            chunk = carry if carry is not None else st.q.get()
            carry = None
            if chunk is None or st.retired:
                return
            parts, size = [chunk], len(chunk)
            while True:  # coalesce what is already queued, up to the request limit
                try:
                    nxt = st.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or size + len(nxt) > self._max_request:
                    carry = nxt
                    break
                parts.append(nxt)
                size += len(nxt)
            yield speech_v1.StreamingRecognizeRequest(audio_content=b"".join(parts))
            if carry is None and st.retired:
                return

    def _run_stream(self, st: _Stream) -> None:
        """The reader thread of one stream."""
        try:
            call = self._p._start_rpc(self._requests(st))
            with self._lock:
                st.call = call
                if st.retired:
                    call.cancel()
            for response in call:  # type: ignore[attr-defined]
                self._on_response(st, response)
        except grpc.RpcError as exc:
            err = gexc.from_grpc_error(exc) if isinstance(exc, grpc.Call) else exc
            self._on_stream_error(st, err)
        except Exception as exc:  # noqa: BLE001 - reported to the owner, never swallowed
            self._on_stream_error(st, exc)
        else:
            self._on_stream_error(st, ProviderError("the service ended the recognition stream"))

    def _on_response(self, st: _Stream, response: speech_v1.StreamingRecognizeResponse) -> None:
        with self._lock:
            if st.retired or self._closed or self._dead:
                return
            now = self._p.clock()
            interim: list[str] = []
            stability = 0.0
            for result in response.results:
                if not result.alternatives:
                    continue
                alt = result.alternatives[0]
                if result.is_final:
                    self._trim_finalized(st, result)
                    self._deliver(Transcript(alt.transcript.strip(), True, now, 1.0, alt.confidence, self._utterance))
                    self._utterance += 1
                else:
                    if not interim:
                        stability = result.stability
                    interim.append(alt.transcript.strip())
            if interim:
                self._deliver(Transcript(" ".join(t for t in interim if t), False, now, stability, 0.0, self._utterance))
            if any(r.is_final for r in response.results) and self._rotation_due():
                self._rotate("final")

    def _trim_finalized(self, st: _Stream, result: speech_v1.StreamingRecognitionResult) -> None:
        end_s = result.result_end_time.total_seconds() if result.result_end_time else 0.0
        if end_s > 0:
            end = st.base + int(end_s * self.sample_rate) * 2
        else:
            end = self._total  # no end time: treat everything heard so far as covered
        cut = min(end, self._total) - self._retained_start
        if cut > 0:
            del self._retained[:cut]
            self._retained_start += cut

    def _deliver(self, transcript: Transcript) -> None:
        try:
            self._on_transcript(transcript)
        except Exception:  # noqa: BLE001 - a broken callback must not kill the stream
            log.exception("google stt: on_transcript raised", extra={"session": self.id})

    def _on_stream_error(self, st: _Stream, exc: BaseException) -> None:
        with self._lock:
            if st.retired or self._closed or self._dead:
                return
            if isinstance(exc, gexc.InvalidArgument) and _MODEL_REJECTED_RE.search(str(exc.message)):
                nxt = self._p._downgrade(self.language, st.model)
                if nxt is not None:
                    self.model = nxt
                    self.downgrades += 1
                    self._rotate("downgrade")
                    return
            self._dead = True
            self._retire(st)
            try:
                self._on_error(exc)
            except Exception:  # noqa: BLE001
                log.exception("google stt: on_error raised", extra={"session": self.id})
