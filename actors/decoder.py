"""Decoder: caller μ-law -> PCM16, voice activity, and batches for the recognizer.

Runs on the trio thread (``TrioActor``), one frame at a time, as plain function
calls: a lookup-table decode (``engine.audio``) and the VAD (silero ONNX on the
process's shared session, about 92 µs per 32 ms window that may hold speech).
No logging, no I/O, no thread handoff per frame. (Measured and rejected: scoring
every call's windows in batches, on a worker thread or on the trio thread. The
thread handoff waits on the GIL behind the busy trio thread, which delayed VAD
events by tens of ms at 30 calls; on the trio thread, the two extra task
switches per window cost about what batching saved.)

Inline (``TrioActor`` inline delivery): handling a frame never waits, so the
decoder handles it in ``receive_inline``, called directly in the sender's task
(the transport's read loop) rather than through a mailbox and a task of its
own: no task switch per frame, a large share of the per-frame cost at 50
calls. The actor contract is unchanged: frames are handled one at a time in
arrival order, a failure here fails the decoder (its supervisor restarts it)
and never the transport, and frames that arrive through the mailbox (before
the decoder is running, or while the sender has turned ``inline`` off) go
through the same ``receive_inline``.

Out:
- ``AudioChunk`` every ``batch_ms`` (40-100 ms) to the STT slot, numbered
  (``seq``) and also appended to the call's ``AudioHistory`` so a restarted
  recognizer can replay the audio since the last final;
- ``SpeechStarted`` to the planner, the pacer (barge-in) and the STT;
- ``UtteranceEnded`` to the STT and ``SpeechEnded`` to the planner once the VAD
  hangover has elapsed.

End of turn on time: the VAD's end of speech is due at ``silence_start +
hangover`` (``vad.end_due``); the VAD checks it at every frame end, not only at
the end of a 32 ms silero window, so at real-time arrival the decision comes 0 ms
after it is due (it was 0-40 ms late on windows). A timer deciding between
frames was built and measured: it ended turns at comma pauses (it must take the
frame not yet arrived to be silent, which shortens the hangover by a frame plus
jitter: 4-9 split turns in 80 offline runs where frames alone split 0-2), so the
decision waits for the frame that covers the hangover.
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
    """Decode, VAD and batch caller frames (see module docstring). Trio thread."""

    inline = True

    def __init__(self, vad: Any, history: AudioHistory, *, batch_ms: int = 100) -> None:
        """``vad``: a ``VoiceActivityDetector`` (``feed``, ``in_speech``, ``close``),
        owned from here on."""
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

    def receive_inline(self, msg: Any) -> None:
        """Handle one frame, synchronously: inline or from ``receive``. Other messages are ignored."""
        if not isinstance(msg, CallerFrame):
            return
        pcm = ulaw_decode(msg.mulaw)
        vad = self._vad
        t = msg.t
        events = vad.feed(pcm, t)
        self._batch.append(pcm)
        if vad.in_speech:
            self._batch_speech = True
        if events:
            self._dispatch(events, t)
        if len(self._batch) >= self._batch_frames:
            self._flush(t)

    def _dispatch(self, events: list[Any], t: float) -> None:
        """Send VAD events out (``t``: the end of the audio fed so far)."""
        send = self.ctx.send
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self._flush(t)
                send("planner", ev)
                send("pacer", ev)
                send("stt", ev)
            elif isinstance(ev, SpeechEnded):
                self._flush(t)
                end = UtteranceEnded(t=ev.t, seq=self._history.next_seq())
                self._history.append(end)
                send("stt", end)
                send("planner", ev)

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
