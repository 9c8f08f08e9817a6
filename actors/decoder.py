"""Decoder: caller μ-law -> PCM16, voice activity, and batches for the recognizer.

Runs on the trio thread (``TrioActor``), one frame at a time, as plain function
calls: a lookup-table decode (``engine.audio``) and the VAD (silero ONNX on the
process's shared session, about 92 µs per 32 ms window that may hold speech).
No logging, no I/O, no thread handoff per frame. (Measured and rejected: scoring
every call's windows in batches, on a worker thread or on the trio thread. The
thread handoff waits on the GIL behind the busy trio thread, which delayed VAD
events by tens of ms at 30 calls; on the trio thread, the two extra task
switches per window cost about what batching saved.)

Out:
- ``AudioChunk`` every ``batch_ms`` (40-100 ms) to the STT slot, numbered
  (``seq``) and also appended to the call's ``AudioHistory`` so a restarted
  recognizer can replay the audio since the last final;
- ``SpeechStarted`` to the planner, the pacer (barge-in) and the STT;
- ``UtteranceEnded`` to the STT and ``SpeechEnded`` to the planner once the VAD
  hangover has elapsed.
"""

from __future__ import annotations

from typing import Any

from engine.actor import TrioActor
from engine.audio import ulaw_decode
from engine.audio_history import AudioHistory
from engine.messages import (
    AudioChunk,
    CallerFrame,
    SpeechEnded,
    SpeechStarted,
    UtteranceEnded,
)


class Decoder(TrioActor):
    def __init__(self, vad: Any, history: AudioHistory, *, batch_ms: int = 60) -> None:
        super().__init__()
        self._vad = vad
        self._history = history
        self._batch_frames = max(2, batch_ms // 20)
        self._batch: list[bytes] = []
        self._batch_speech = False

    async def on_stop(self) -> None:
        close = getattr(self._vad, "close", None)
        if close is not None:
            close()

    async def receive(self, msg: Any) -> None:
        if not isinstance(msg, CallerFrame):
            return
        pcm = ulaw_decode(msg.mulaw)
        events = self._vad.feed(pcm, msg.t)
        send = self.ctx.send
        self._batch.append(pcm)
        if self._vad.in_speech:
            self._batch_speech = True
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self._flush(msg.t)
                send("planner", ev)
                send("pacer", ev)
                send("stt", ev)
            elif isinstance(ev, SpeechEnded):
                self._flush(msg.t)
                end = UtteranceEnded(t=ev.t, seq=self._history.next_seq())
                self._history.append(end)
                send("stt", end)
                send("planner", ev)
        if len(self._batch) >= self._batch_frames:
            self._flush(msg.t)

    def _flush(self, t: float) -> None:
        if not self._batch:
            return
        chunk = AudioChunk(
            pcm16=b"".join(self._batch),
            t=t,
            in_speech=self._batch_speech or self._vad.in_speech,
            seq=self._history.next_seq(),
        )
        self._batch.clear()
        self._batch_speech = False
        self._history.append(chunk)
        self.ctx.send("stt", chunk)
