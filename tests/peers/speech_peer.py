"""A local, deterministic, fault-injecting Google Cloud Speech v1 streaming peer.

It speaks the real wire protocol (gRPC ``google.cloud.speech.v1.Speech/StreamingRecognize``
with the proto-plus message types of ``google-cloud-speech``), so the real client library,
pointed at it over an insecure loopback channel, exercises exactly the code a production
call runs. Nothing about the client is mocked.

How it "recognizes" (deterministic, no model):

* The audio is decoded per the stream's config (LINEAR16 or MULAW) and cut into 20 ms
  windows. A window is speech when its RMS is above ``threshold_rms``. An utterance starts
  at the first speech window and ends after ``end_silence_ms`` (300 ms) of silence;
  utterances with less than ``min_speech_ms`` of speech are ignored as clicks.
* Every utterance of a *call* is assigned a scripted text: the k-th distinct utterance gets
  ``script[k % len(script)]`` (``"utterance k"`` with an empty script). A script entry may
  also be a pair ``(interim, final)``: the interim results then show the words of
  ``interim`` while the final says ``final`` (a recognizer changing its mind at the end).
  A call is keyed by a phrase hint of the form ``call-id:XYZ`` (all streams without one
  share the key ``"default"``), so the counter runs across streams; :meth:`SpeechPeer.reset`
  forgets every call (and may install a new script), for a client that sends no such hint.
* Utterances are identified by an audio fingerprint: 40 ms of samples taken 40-80 ms into
  the utterance, searched byte-exactly in the audio of the call's earlier utterances. Audio
  replayed into a new stream (what a client does when it rotates its stream and resends the
  audio since the last final) is sample-identical, so it is recognized as the *same*
  utterance and gets the same text. The window grid of a new stream may be shifted by up to
  one window, hence the probe starts 40 ms in. Rejected: hashing the whole utterance (the
  edges move with the window grid) and counting by order (a replayed utterance would get
  the next script line). Test audio must therefore not repeat sample-for-sample between
  utterances: :func:`utterance_pcm` makes seeded noise-modulated tones that never do.
* Interim results (``is_final=False``, growing word prefixes, stability rising from 0.4 to
  0.9) are emitted about every ``interim_every_ms`` of speech; the final (``is_final=True``,
  confidence 0.9, ``result_end_time`` = end of the last speech window, relative to the
  stream's first audio byte, as Google does) is emitted ``final_delay_s`` of wall time after
  the end is detected, or at once when the next utterance starts or the client half-closes.

Faults (:class:`SpeechFaults`; change them any time with :meth:`SpeechPeer.set_faults`,
thread-safe): abort a stream with a status after N audio requests, fail the next K opens
with ``UNAVAILABLE``, delay the first response of each stream, a maximum stream duration
(Google's is 305 s; aborts with ``OUT_OF_RANGE``), reject a model for a language with
``INVALID_ARGUMENT``, kill every stream once it is ``kill_every_s`` old, or once it has
received ``kill_after_audio_s`` of audio (``UNAVAILABLE``; replayed audio counts: a client
that replays more than that into each new stream never gets past its replay).

Records (read under :attr:`SpeechPeer.lock` or via the snapshot helpers): one
:class:`RecordedStream` per stream with its config, per-request audio and serialized
sizes, the results sent and how it ended.

Threads: a ``grpc.server`` thread pool runs one handler per stream; each handler borrows
one extra thread that reads the request iterator into a queue, so that timed results
(finals, faults) fire while the client is not sending. ``start()``/``stop()`` may be called
from any thread. Standalone: ``python -m tests.peers.speech_peer --port 50051``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import grpc
import numpy as np
from google.cloud.speech_v1 import (
    RecognitionConfig,
    SpeechRecognitionAlternative,
    StreamingRecognitionResult,
    StreamingRecognizeRequest,
    StreamingRecognizeResponse,
)

from engine.audio import ulaw_decode
from tests.peers.grpc_peer import GrpcPeer

__all__ = [
    "SpeechPeer",
    "SpeechFaults",
    "RecordedConfig",
    "RecordedStream",
    "utterance_pcm",
    "call_audio",
]

log = logging.getLogger(__name__)

SERVICE = "google.cloud.speech.v1.Speech"
MAX_STREAM_S_GOOGLE = 305.0  # Google's documented streaming limit ("about 5 minutes")
_END = object()


@dataclass
class SpeechFaults:
    """What the peer does wrong. Fields are read once per decision, under the peer lock."""

    abort_after_requests: int | None = None  # abort each stream after this many audio requests
    abort_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    fail_open: int = 0  # the next K streams fail at once with UNAVAILABLE
    first_result_delay_s: float = 0.0  # nothing is sent before the stream is this old
    max_stream_s: float = MAX_STREAM_S_GOOGLE  # OUT_OF_RANGE past it
    reject_models: dict[str, set[str]] = field(default_factory=dict)  # language -> models
    kill_every_s: float | None = None  # UNAVAILABLE once a stream is this old
    kill_after_audio_s: float | None = None  # UNAVAILABLE once a stream has received this much audio


@dataclass(frozen=True)
class RecordedConfig:
    language: str
    model: str
    use_enhanced: bool
    sample_rate: int
    encoding: str
    phrase_hints: tuple[str, ...]
    interim_results: bool
    single_utterance: bool
    automatic_punctuation: bool


@dataclass
class RecordedStream:
    index: int
    config: RecordedConfig | None = None
    audio_sizes: list[int] = field(default_factory=list)  # audio bytes per request
    request_sizes: list[int] = field(default_factory=list)  # serialized bytes per request
    finals: list[tuple[int, str]] = field(default_factory=list)  # (utterance index, text)
    interims: int = 0
    ended: str = ""  # "half-close", "cancelled", or the status code name it was aborted with


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass
class _Utterance:
    start: int  # sample offset in the stream where it started
    pcm: bytearray = field(default_factory=bytearray)
    speech_ms: int = 0
    silence_run_ms: int = 0
    last_speech_end: int = 0  # sample offset (exclusive) of the last speech window
    index: int | None = None  # the call-wide utterance index, once fingerprinted
    interims_sent: int = 0


class SpeechPeer(GrpcPeer):
    """The peer server. ``with SpeechPeer(script=[...]) as peer: peer.address``.

    ``script``: the texts given to the call's utterances in order. ``port=0`` picks a free
    loopback port (see :attr:`port` after :meth:`start`).
    """

    SERVICE = SERVICE

    def __init__(
        self,
        script: Sequence[str | tuple[str, str]] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        threshold_rms: float = 500.0,
        end_silence_ms: int = 300,
        min_speech_ms: int = 100,
        interim_every_ms: int = 200,
        final_delay_s: float = 0.1,
        max_workers: int = 64,
    ) -> None:
        self.script = list(script)
        self.host = host
        self.port = port
        self.threshold_rms = threshold_rms
        self.end_silence_ms = end_silence_ms
        self.min_speech_ms = min_speech_ms
        self.interim_every_ms = interim_every_ms
        self.final_delay_s = final_delay_s
        self.max_workers = max_workers
        self.lock = threading.RLock()
        self.faults = SpeechFaults()
        self.streams: list[RecordedStream] = []
        # call key -> list of (utterance index, utterance pcm) and the next index
        self._calls: dict[str, list[tuple[int, bytearray]]] = {}
        self._next_index: dict[str, int] = {}
        self._server: grpc.Server | None = None

    # ------------------------------------------------------------------ lifecycle

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                self._streaming_recognize,
                request_deserializer=StreamingRecognizeRequest.deserialize,
                response_serializer=StreamingRecognizeResponse.serialize,
            )
        }

    # ------------------------------------------------------------------ control & records

    def set_faults(self, **changes: object) -> None:
        """Change fault fields by name, e.g. ``set_faults(fail_open=2)``. Thread-safe."""
        with self.lock:
            for key, value in changes.items():
                if not hasattr(self.faults, key):
                    raise AttributeError(f"SpeechFaults has no field {key!r}")
                setattr(self.faults, key, value)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults = SpeechFaults()

    def reset(self, script: Sequence[str | tuple[str, str]] | None = None) -> None:
        """Forget every call's utterances (the next utterance is index 0 again), clear the
        faults, and install ``script`` when given. Records (:attr:`streams`) are kept.
        Thread-safe; streams still open go on with the new state."""
        with self.lock:
            self._calls.clear()
            self._next_index.clear()
            self.faults = SpeechFaults()
            if script is not None:
                self.script = list(script)

    @property
    def stream_count(self) -> int:
        with self.lock:
            return len(self.streams)

    def configs(self) -> list[RecordedConfig]:
        with self.lock:
            return [s.config for s in self.streams if s.config is not None]

    def request_sizes(self) -> list[int]:
        with self.lock:
            return [n for s in self.streams for n in s.request_sizes]

    def finals(self) -> list[tuple[int, int, str]]:
        """(stream index, utterance index, text) of every final the peer sent."""
        with self.lock:
            return [(s.index, u, t) for s in self.streams for (u, t) in s.finals]

    # ------------------------------------------------------------------ the RPC

    def _streaming_recognize(
        self, request_iterator: Iterator[StreamingRecognizeRequest], context: grpc.ServicerContext
    ) -> Iterator[StreamingRecognizeResponse]:
        with self.lock:
            rec = RecordedStream(index=len(self.streams))
            self.streams.append(rec)
            fail = self.faults.fail_open > 0
            if fail:
                self.faults.fail_open -= 1
        if fail:
            rec.ended = grpc.StatusCode.UNAVAILABLE.name
            context.abort(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable (injected).")
        inbox: queue.Queue = queue.Queue()

        def pump() -> None:
            try:
                for req in request_iterator:
                    inbox.put(req)
            except Exception:  # the client cancelled, or the RPC ended under us
                pass
            inbox.put(_END)

        threading.Thread(target=pump, name=f"speech-peer-read-{rec.index}", daemon=True).start()
        try:
            yield from _StreamRun(self, rec, inbox, context).run()
        except _Abort as exc:
            with self.lock:
                rec.ended = exc.code.name
            context.abort(exc.code, exc.details)

    # -------------------------------------------------------------- utterance identity

    def _identify(self, call_key: str, utt: _Utterance, rate: int) -> int:
        """The call-wide index of ``utt`` (same audio -> same index, across streams)."""
        a, b = 2 * rate * 40 // 1000, 2 * rate * 80 // 1000
        probe = bytes(utt.pcm[a:b]) if len(utt.pcm) >= b else bytes(utt.pcm)
        with self.lock:
            known = self._calls.setdefault(call_key, [])
            for index, pcm in known:
                if probe and pcm.find(probe) >= 0:
                    if len(utt.pcm) > len(pcm):
                        pcm[:] = utt.pcm
                    return index
            index = self._next_index.get(call_key, 0)
            self._next_index[call_key] = index + 1
            known.append((index, bytearray(utt.pcm)))
            del known[:-200]
            return index

    def _remember(self, call_key: str, index: int, pcm: bytearray) -> None:
        with self.lock:
            for i, stored in self._calls.get(call_key, []):
                if i == index and len(pcm) > len(stored):
                    stored[:] = pcm

    def text_for(self, index: int) -> str:
        """The final transcript of utterance ``index``."""
        entry = self._entry(index)
        return entry[1] if isinstance(entry, tuple) else entry

    def interim_text_for(self, index: int) -> str:
        """The text whose words the interim results of utterance ``index`` show."""
        entry = self._entry(index)
        return entry[0] if isinstance(entry, tuple) else entry

    def _entry(self, index: int) -> str | tuple[str, str]:
        with self.lock:
            script = self.script
            return script[index % len(script)] if script else f"utterance {index}"


class _StreamRun:
    """The state of one stream; runs on the gRPC handler thread."""

    def __init__(self, peer: SpeechPeer, rec: RecordedStream, inbox: queue.Queue, context: grpc.ServicerContext) -> None:
        self.peer = peer
        self.rec = rec
        self.inbox = inbox
        self.context = context
        self.opened = time.monotonic()
        self.held: list[StreamingRecognizeResponse] = []  # held back by first_result_delay_s
        self.pending_final: tuple[float, _Utterance] | None = None
        self.utt: _Utterance | None = None
        self.samples = 0  # samples of audio seen by this stream
        self.buf = bytearray()  # PCM not yet a whole window
        self.audio_requests = 0
        self.call_key = "default"
        self.rate = 8000
        self.encoding = RecognitionConfig.AudioEncoding.LINEAR16

    # -- helpers

    def _faults(self) -> SpeechFaults:
        with self.peer.lock:
            return dataclasses.replace(self.peer.faults)

    def _check_timers(self, faults: SpeechFaults) -> None:
        age = time.monotonic() - self.opened
        if age >= faults.max_stream_s:
            raise _Abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"Exceeded maximum allowed stream duration of {faults.max_stream_s:g} seconds.",
            )
        if faults.kill_every_s is not None and age >= faults.kill_every_s:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "Stream killed (injected).")

    def _release(self, faults: SpeechFaults) -> Iterator[StreamingRecognizeResponse]:
        if self.held and time.monotonic() - self.opened >= faults.first_result_delay_s:
            held, self.held = self.held, []
            yield from held

    def _result(self, utt: _Utterance, text: str, is_final: bool, stability: float) -> StreamingRecognizeResponse:
        end_s = (utt.last_speech_end if is_final else self.samples) / self.rate
        result = StreamingRecognitionResult(
            alternatives=[SpeechRecognitionAlternative(transcript=text, confidence=0.9 if is_final else 0.0)],
            is_final=is_final,
            stability=0.0 if is_final else stability,
            result_end_time=datetime.timedelta(seconds=end_s),
            language_code=self.rec.config.language.lower() if self.rec.config else "",
        )
        return StreamingRecognizeResponse(results=[result])

    def _emit(self, response: StreamingRecognizeResponse, faults: SpeechFaults) -> Iterator[StreamingRecognizeResponse]:
        self.held.append(response)
        yield from self._release(faults)

    def _final(self, utt: _Utterance, faults: SpeechFaults) -> Iterator[StreamingRecognizeResponse]:
        assert utt.index is not None
        text = self.peer.text_for(utt.index)
        self.peer._remember(self.call_key, utt.index, utt.pcm)
        with self.peer.lock:
            self.rec.finals.append((utt.index, text))
        yield from self._emit(self._result(utt, text, True, 0.0), faults)

    def _flush_pending(self, faults: SpeechFaults) -> Iterator[StreamingRecognizeResponse]:
        if self.pending_final is not None:
            _, utt = self.pending_final
            self.pending_final = None
            yield from self._final(utt, faults)

    # -- config

    def _configure(self, req: StreamingRecognizeRequest, faults: SpeechFaults) -> None:
        if "streaming_config" not in req:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "The first request must carry streaming_config.")
        sc = req.streaming_config
        c = sc.config
        hints = tuple(p for ctx in c.speech_contexts for p in ctx.phrases)
        cfg = RecordedConfig(
            language=c.language_code,
            model=c.model,
            use_enhanced=c.use_enhanced,
            sample_rate=c.sample_rate_hertz,
            encoding=RecognitionConfig.AudioEncoding(c.encoding).name,
            phrase_hints=hints,
            interim_results=sc.interim_results,
            single_utterance=sc.single_utterance,
            automatic_punctuation=c.enable_automatic_punctuation,
        )
        with self.peer.lock:
            self.rec.config = cfg
        if c.encoding not in (RecognitionConfig.AudioEncoding.LINEAR16, RecognitionConfig.AudioEncoding.MULAW):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Unsupported encoding {cfg.encoding} (peer: LINEAR16/MULAW).")
        if not 8000 <= c.sample_rate_hertz <= 48000:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"sample_rate_hertz {c.sample_rate_hertz} out of range.")
        if not c.language_code:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid recognition 'config': missing language_code.")
        rejected = faults.reject_models.get(c.language_code, set())
        if c.model and c.model in rejected:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Invalid recognition 'config': The requested model is currently not supported for language : {c.language_code}.",
            )
        self.rate = c.sample_rate_hertz
        self.encoding = c.encoding
        self.call_key = next((h[len("call-id:"):] for h in hints if h.startswith("call-id:")), "default")

    # -- audio

    def _audio(self, data: bytes, faults: SpeechFaults) -> Iterator[StreamingRecognizeResponse]:
        if self.encoding == RecognitionConfig.AudioEncoding.MULAW:
            pcm = ulaw_decode(data)
        else:
            pcm = data[: len(data) // 2 * 2]
        self.buf += pcm
        win = 2 * self.rate // 50  # bytes in 20 ms
        while len(self.buf) >= win:
            window = bytes(self.buf[:win])
            del self.buf[:win]
            yield from self._window(window, faults)

    def _window(self, window: bytes, faults: SpeechFaults) -> Iterator[StreamingRecognizeResponse]:
        peer = self.peer
        x = np.frombuffer(window, dtype="<i2").astype(np.float64)
        speech = float(np.sqrt(np.mean(x * x))) > peer.threshold_rms
        n = len(window) // 2
        start = self.samples
        self.samples += n
        utt = self.utt
        if speech:
            if utt is None:
                yield from self._flush_pending(faults)  # Google finishes one result before the next
                utt = self.utt = _Utterance(start=start)
            utt.pcm += window
            utt.speech_ms += 20
            utt.silence_run_ms = 0
            utt.last_speech_end = self.samples
            if utt.index is None and utt.speech_ms >= 100:
                utt.index = peer._identify(self.call_key, utt, self.rate)
            due = utt.speech_ms // peer.interim_every_ms
            if utt.index is not None and due > utt.interims_sent and self.rec.config and self.rec.config.interim_results:
                utt.interims_sent = due
                words = peer.interim_text_for(utt.index).split()
                shown = " ".join(words[: max(1, min(due, len(words)))])
                with peer.lock:
                    self.rec.interims += 1
                yield from self._emit(self._result(utt, shown, False, min(0.9, 0.3 + 0.1 * due)), faults)
        elif utt is not None:
            utt.pcm += window
            utt.silence_run_ms += 20
            if utt.silence_run_ms >= peer.end_silence_ms:
                self.utt = None
                if utt.speech_ms >= peer.min_speech_ms:
                    if utt.index is None:
                        utt.index = peer._identify(self.call_key, utt, self.rate)
                    self.pending_final = (time.monotonic() + peer.final_delay_s, utt)

    # -- main loop

    def run(self) -> Iterator[StreamingRecognizeResponse]:
        configured = False
        while True:
            faults = self._faults()
            self._check_timers(faults)
            yield from self._release(faults)
            if self.pending_final is not None and time.monotonic() >= self.pending_final[0]:
                yield from self._flush_pending(faults)
            try:
                item = self.inbox.get(timeout=0.02)
            except queue.Empty:
                continue
            if item is _END:
                if not self.context.is_active():
                    with self.peer.lock:
                        self.rec.ended = "cancelled"
                    return
                # Half-close: finish what was heard, then end the stream (as Google does).
                utt = self.utt
                if utt is not None and utt.speech_ms >= self.peer.min_speech_ms:
                    self.utt = None
                    if utt.index is None:
                        utt.index = self.peer._identify(self.call_key, utt, self.rate)
                    yield from self._flush_pending(faults)
                    self.pending_final = (0.0, utt)
                yield from self._flush_pending(faults)
                remaining = faults.first_result_delay_s - (time.monotonic() - self.opened)
                if self.held and remaining > 0:
                    time.sleep(remaining)
                yield from self.held
                self.held = []
                with self.peer.lock:
                    self.rec.ended = "half-close"
                return
            req: StreamingRecognizeRequest = item
            with self.peer.lock:
                self.rec.request_sizes.append(StreamingRecognizeRequest.pb(req).ByteSize())
            if not configured:
                self._configure(req, faults)
                configured = True
                continue
            if "streaming_config" in req:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "streaming_config may only be sent once.")
            data = req.audio_content
            with self.peer.lock:
                self.rec.audio_sizes.append(len(data))
            self.audio_requests += 1
            if len(data) > 25600:  # Google: "audio_content ... limited to 25 KB"
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"Request audio_content too large: {len(data)} bytes.")
            yield from self._audio(data, faults)
            if faults.kill_after_audio_s is not None and self.samples >= faults.kill_after_audio_s * self.rate:
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"Stream killed after {self.samples / self.rate:.2f} s of audio (injected).",
                )
            if faults.abort_after_requests is not None and self.audio_requests >= faults.abort_after_requests:
                raise _Abort(faults.abort_code, f"Stream aborted after {self.audio_requests} requests (injected).")


# ---------------------------------------------------------------------- test audio


def utterance_pcm(index: int, duration_ms: int, *, rate: int = 8000, amplitude: float = 6000.0) -> bytes:
    """A synthetic "utterance": a tone with seeded noise, unique per ``index``.

    Deterministic; two different indexes never share a 40 ms stretch of samples, so the
    peer's fingerprint tells them apart (and recognizes a replay of the same one).
    """
    n = rate * duration_ms // 1000
    rng = np.random.default_rng(1000 + index)
    t = np.arange(n) / rate
    tone = np.sin(2 * np.pi * (220.0 + 37.0 * (index % 20)) * t)
    x = amplitude * (0.7 * tone + 0.3 * rng.uniform(-1.0, 1.0, n))
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def call_audio(
    n_utterances: int, *, speech_ms: int = 800, gap_ms: int = 600, lead_ms: int = 200, rate: int = 8000
) -> bytes:
    """``lead_ms`` silence, then ``n_utterances`` utterances each followed by ``gap_ms`` silence."""
    silence = lambda ms: b"\x00\x00" * (rate * ms // 1000)  # noqa: E731
    parts = [silence(lead_ms)]
    for k in range(n_utterances):
        parts += [utterance_pcm(k, speech_ms, rate=rate), silence(gap_ms)]
    return b"".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Google Speech v1 streaming peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--script", default="", help="utterance texts separated by '|'")
    parser.add_argument("--final-delay", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    peer = SpeechPeer([s for s in args.script.split("|") if s], host=args.host, port=args.port, final_delay_s=args.final_delay)
    peer.start()
    log.info("speech peer listening on %s", peer.address)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        peer.stop()


if __name__ == "__main__":
    main()
