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
- ``SpeechStarted`` to the planner and the STT;
- ``UtteranceEnded`` to the STT and ``SpeechEnded`` to the planner once the VAD
  hangover has elapsed.

The agent's own voice coming back (echo; engine/echo.py): with an
``EchoReference`` (the pacer notes each frame it sends) every caller frame is
also judged by an ``EchoGate``: louder than the agent's recent audio could come
back, or not. Speech that starts while agent audio may be coming back is the
caller's only once ``barge_in_min_ms`` of its frames were louder than echo
explains: until then the planner gets ``SpeechStarted(echo=True)`` (it interrupts
nothing), the STT gets nothing as speech, and the audio is held here (bounded);
once confirmed the planner gets ``SpeechConfirmed`` and the STT ``SpeechStarted``
and the held audio as speech, so the recognizer still hears the onset. Speech
never confirmed ends with ``SpeechEnded(echo=True)``; its audio goes to the STT
as non-speech (a batch recognizer keeps it only as pre-roll) and no utterance
end is sent. Speech that starts with no agent audio within the gate's window is
the caller's at once, exactly as without a gate.

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

from collections import deque
from typing import Any

from engine.actor import TrioActor
from engine.audio import ulaw_decode
from engine.audio_history import AudioHistory
from engine.echo import EchoGate, EchoReference
from engine.messages import (
    AudioChunk,
    CallerFrame,
    SpeechConfirmed,
    SpeechEnded,
    SpeechStarted,
    UtteranceEnded,
)


#: A frame counts as the caller's voice only above -60 dBFS and 3x the line's noise floor.
_VOICE_MIN = 0.001
_FLOOR_RATIO = 3.0


class Decoder(TrioActor):
    """Decode, VAD and batch caller frames (see module docstring). Trio thread."""

    inline = True

    #: Held audio of unconfirmed speech (frames) beyond which the oldest goes on as non-speech.
    MAX_HELD_FRAMES = 100

    @property
    def in_speech(self) -> bool:
        """Whether the caller is speaking now (the VAD is between a start and its end)."""
        return bool(self._vad.in_speech)

    def __init__(
        self,
        vad: Any,
        history: AudioHistory,
        *,
        batch_ms: int = 100,
        echo: EchoReference | None = None,
        gate: EchoGate | None = None,
        barge_in_min_ms: int = 96,
    ) -> None:
        """``vad``: a ``VoiceActivityDetector`` (``feed``, ``in_speech``, ``close``,
        ``last_rms``), owned from here on. ``echo``: the call's outbound levels
        (no echo gate without it); ``gate``: the gate to judge frames with (a new
        ``EchoGate`` by default)."""
        super().__init__()
        self._vad = vad
        self._history = history
        self._batch_frames = max(2, batch_ms // 20)
        self._batch: list[bytes] = []
        self._batch_speech = False
        self._echo = echo
        self._gate = (gate or EchoGate()) if echo is not None else None
        self._barge_in_min_ms = barge_in_min_ms
        # Caller voice: barge_in_min_ms of frames louder than echo explains, within
        # twice that (a caller over echo has quieter frames between).
        self._need = max(1, -(-barge_in_min_ms // 20))
        self._within = max(2 * self._need, self._need + 5)
        self._recent: deque[tuple[float, bool]] = deque(maxlen=64)  # (frame end, the caller's voice)
        self._confirmed = False  # in speech that is the caller's
        self._suspect: float | None = None  # start of speech not yet known to be the caller's
        self._held: list[tuple[bytes, float]] = []  # batches held while speech is suspect
        self._held_frames = 0

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
        gate = self._gate
        if gate is not None:
            verdict = gate.frame(self._echo.take(), vad.last_rms, self._confirmed)  # type: ignore[union-attr]
            # A frame of the caller's voice: not explained by echo, and a voice at all
            # (a silent frame in the VAD's hangover is not one).
            rms = vad.last_rms
            voice = verdict is not False and rms > _VOICE_MIN and rms > _FLOOR_RATIO * vad.noise_floor
            self._recent.append((t, voice))
        self._batch.append(pcm)
        if vad.in_speech:
            self._batch_speech = True
        if events:
            self._dispatch(events, t)
        if self._suspect is not None and vad.in_speech:
            start = self._caller_voice(self._suspect)
            if start is not None:
                self._confirm(start, t)
        if len(self._batch) >= self._batch_frames:
            self._flush(t)

    def _dispatch(self, events: list[Any], t: float) -> None:
        """Send VAD events out (``t``: the end of the audio fed so far)."""
        send = self.ctx.send
        for ev in events:
            if isinstance(ev, SpeechStarted):
                if self._gate is not None and self._gate.active and self._caller_voice(ev.t) is None:
                    self._suspect = ev.t
                    self._flush(t)  # held, with the onset
                    send("planner", SpeechStarted(t=ev.t, echo=True))
                    continue
                self._flush(t)
                self._confirmed = True
                send("planner", ev)
                send("stt", ev)
            elif isinstance(ev, SpeechEnded):
                if self._suspect is not None:
                    self._flush(t)  # held with the rest
                    self._suspect = None
                    self._release(in_speech=False)
                    send("planner", SpeechEnded(t=ev.t, echo=True))
                    continue
                self._confirmed = False
                self._flush(t)
                end = UtteranceEnded(t=ev.t, seq=self._history.next_seq())
                self._history.append(end)
                send("stt", end)
                send("planner", SpeechEnded(t=ev.t, seq=end.seq))

    def _caller_voice(self, since: float) -> float | None:
        """When the caller's own voice began, if the latest frames (those after
        ``since`` among the last ``_within``) hold ``_need`` louder than echo
        explains (or with no agent audio around); else None."""
        frames = [(t, v) for t, v in list(self._recent)[-self._within :] if t > since + 1e-9]
        voiced = [t for t, v in frames if v]
        if len(voiced) < self._need:
            return None
        return max(since, voiced[0] - 0.02)

    def _confirm(self, start: float, t: float) -> None:
        """Suspect speech turned out to be the caller's, from ``start``: tell the
        planner, start the recognizer's utterance and give it the held audio from
        ``start`` on as speech (what came before as non-speech: the pre-roll)."""
        self._flush(t)  # held with the rest, to go out in order
        self._suspect = None
        self._confirmed = True
        send = self.ctx.send
        send("planner", SpeechConfirmed(t=start))
        held, self._held = self._held, []
        self._held_frames = 0
        for pcm, end in held:
            if end <= start:
                self._send_chunk(pcm, end, False)
        send("stt", SpeechStarted(t=start))
        for pcm, end in held:
            if end > start:
                self._send_chunk(pcm, end, True)

    def _release(self, *, in_speech: bool) -> None:
        held, self._held = self._held, []
        self._held_frames = 0
        for pcm, t in held:
            self._send_chunk(pcm, t, in_speech)

    def _flush(self, t: float) -> None:
        if not self._batch:
            return
        pcm = b"".join(self._batch)
        in_speech = self._batch_speech or self._vad.in_speech
        frames = len(self._batch)
        self._batch.clear()
        self._batch_speech = False
        if self._suspect is not None:
            self._held.append((pcm, t))
            self._held_frames += frames
            while self._held_frames > self.MAX_HELD_FRAMES and len(self._held) > 1:
                old, old_t = self._held.pop(0)
                self._held_frames -= len(old) // 320
                self._send_chunk(old, old_t, False)
            return
        self._send_chunk(pcm, t, in_speech)

    def _send_chunk(self, pcm: bytes, t: float, in_speech: bool) -> None:
        chunk = AudioChunk(pcm16=pcm, t=t, in_speech=in_speech, seq=self._history.next_seq())
        self._history.append(chunk)
        self.ctx.send("stt", chunk)
