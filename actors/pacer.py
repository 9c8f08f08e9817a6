"""TX pacer: agent audio out in 20 ms frames on absolute deadlines.

Runs on the trio thread (``TrioActor``). Why pace at all: Twilio plays what it
receives, in order, and buffers the rest; sending a whole reply at once would
make ``clear`` (barge-in) slow to take effect and hide underruns. Sending frames
``lead_ms`` (60-100 ms) ahead of real time (topped up ``FRAMES_PER_WAKE``
frames at a time) keeps Twilio's buffer short, so a
``clear`` silences the caller's earpiece within one lead, while a scheduling
hiccup of up to ``lead_ms`` never starves playback.

Deadlines are absolute (``next_deadline += 20 ms``), so timer jitter never
accumulates into drift; after an idle gap or an underrun the schedule restarts
from "now".

Guarantees:
- Frames are exactly 160 bytes of μ-law; a partial last frame is padded with
  μ-law silence.
- After the last frame of each agent utterance a mark named ``turn-<id>`` is
  sent; its echo (the caller heard it all) becomes ``PlaybackMarked``.
- On ``ClearPlayback`` (the planner's turn-taker decided the caller spoke over
  the agent) while agent audio is queued or unheard, the queue is dropped,
  ``clear`` is sent, and the planner gets ``PlaybackCleared``. With a ``turn_id``
  (that reply was cancelled), its audio is never played, even audio the TTS had
  already sent: a cancelled reply's first chunk, followed by the next reply, was
  heard as a fragment and a gap.
- With an ``EchoReference`` (engine/echo.py), the level of every frame sent is
  noted there, so the decoder can tell the agent's voice coming back from the
  caller's.
- The queue is bounded (``queue_frames``); beyond it the oldest frames are
  dropped and counted in ``dropped_frames``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

from engine.actor import TrioActor
from engine.audio import MULAW_SILENCE
from engine.messages import (
    AgentAudio,
    MarkEchoed,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    PlaybackCleared,
    PlaybackMarked,
    ClearPlayback,
    ReplyStamp,
)

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law (Twilio's frame size)
FRAME_S = 0.020

_END = object()  # queue marker: end of an utterance

#: Frames sent per wake-up while audio plays. The audio queued ahead of real time
#: then moves between ``lead_ms`` - 20 ms and ``lead_ms`` (60-80 ms by default):
#: still ahead of any scheduling hiccup the lead is sized for.
FRAMES_PER_WAKE = 2
_TOP_UP_S = (FRAMES_PER_WAKE - 1) * FRAME_S


class Pacer(TrioActor):
    #: Inline (``TrioActor``): a message is handled in its sender's task, and new
    #: audio that is due goes out at once from there (``_pump``), instead of one
    #: task switch to this actor and another to its send loop: the first frame of
    #: a reply and a barge-in's ``clear`` leave as soon as their cause arrives.
    inline = True

    def __init__(
        self,
        *,
        greeting: bytes = b"",
        lead_ms: int = 80,
        queue_frames: int = 3000,
        metrics: Any = None,
        echo: Any = None,
    ) -> None:
        """``echo``: the call's ``EchoReference`` (each frame sent is noted there), or None."""
        super().__init__()
        self._echo = echo
        self._greeting = greeting
        self._lead = lead_ms / 1000.0
        self._max_frames = queue_frames
        self._queue: deque[tuple[int, Any]] = deque()  # (turn_id, frame bytes | _END)
        self._frames_queued = 0
        self._partial = b""
        self._partial_turn = -1
        self._wakeup = trio.Event()
        self._next_deadline = 0.0  # trio time at which the next queued frame is due
        self._drained = True  # the queue ran empty since the last frame: restart the schedule
        self._pending_marks: dict[str, int] = {}
        self._first_frame_sent: set[int] = set()
        self._current_turn = -1  # the turn whose audio is playing or queued
        self._cleared_turns: set[int] = set()
        self.dropped_frames = 0
        self.frames_sent = 0
        self.clears = 0
        self._metrics = metrics

    # ---- lifecycle -----------------------------------------------------------------

    async def on_start(self) -> None:
        if self._greeting:
            self._enqueue(0, self._greeting)
            self._enqueue_end(0)
        self.nursery.start_soon(self._send_loop)

    def receive_inline(self, msg: Any) -> None:
        if isinstance(msg, AgentAudio):
            if msg.turn_id in self._cleared_turns:
                return  # audio of an interrupted reply still in flight
            if msg.mulaw:
                self._enqueue(msg.turn_id, msg.mulaw)
            if msg.last:
                self._enqueue_end(msg.turn_id)
            self._pump()
        elif isinstance(msg, ClearPlayback):
            if msg.turn_id >= 0:
                self._drop_turn(msg.turn_id, msg.t)
            elif self.agent_audio_outstanding:
                self._clear(msg.t)
        elif isinstance(msg, MarkEchoed):
            turn = self._pending_marks.pop(msg.name, None)
            if turn is not None:
                self.ctx.send("planner", PlaybackMarked(turn_id=turn, t=msg.t))

    # ---- state -----------------------------------------------------------------------

    @property
    def agent_audio_outstanding(self) -> bool:
        """True while agent audio is queued or sent but not yet heard (mark pending)."""
        return bool(self._queue) or bool(self._partial) or bool(self._pending_marks)

    # ---- internals -------------------------------------------------------------------

    def _enqueue(self, turn_id: int, mulaw: bytes) -> None:
        if self._partial and self._partial_turn == turn_id:
            mulaw = self._partial + mulaw
            self._partial = b""
        n_full = len(mulaw) // FRAME_BYTES
        for i in range(n_full):
            self._queue.append((turn_id, mulaw[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]))
        self._frames_queued += n_full
        rest = mulaw[n_full * FRAME_BYTES :]
        if rest:
            self._partial = rest
            self._partial_turn = turn_id
        dropped = self.dropped_frames
        while self._frames_queued > self._max_frames:
            turn, item = self._queue.popleft()
            if item is not _END:
                self._frames_queued -= 1
                self.dropped_frames += 1
        if self.dropped_frames != dropped and self._metrics is not None:
            self._metrics.pacer_drops(self.dropped_frames - dropped)
        self._wakeup.set()

    def _enqueue_end(self, turn_id: int) -> None:
        if self._partial and self._partial_turn == turn_id:
            pad = FRAME_BYTES - len(self._partial)
            self._queue.append((turn_id, self._partial + MULAW_SILENCE * pad))
            self._frames_queued += 1
            self._partial = b""
        self._queue.append((turn_id, _END))
        self._wakeup.set()

    def _drop_turn(self, turn_id: int, t: float) -> None:
        """A reply was cancelled before it was heard: audio of it that arrives later
        is ignored, and if some is queued or out, the line is cleared."""
        self._cleared_turns.add(turn_id)
        outstanding = (
            any(turn == turn_id for turn, _ in self._queue)
            or (bool(self._partial) and self._partial_turn == turn_id)
            or turn_id in self._pending_marks.values()
        )
        if outstanding:
            self._clear(t)

    def _clear(self, t: float) -> None:
        turns = {turn for turn, _ in self._queue}
        turns.update(self._pending_marks.values())
        if self._partial:
            turns.add(self._partial_turn)
        self._queue.clear()
        self._frames_queued = 0
        self._drained = True
        self._partial = b""
        self._pending_marks.clear()
        self.clears += 1
        self.ctx.send("transport", OutboundClear())
        for turn in sorted(turns):
            self._cleared_turns.add(turn)
            self.ctx.send("planner", PlaybackCleared(turn_id=turn, t=t))

    def _pump(self) -> None:
        """Send every queued item due within the lead (synchronous; trio thread).

        Deadlines are absolute: each frame's is the previous one's + 20 ms. When
        the queue had run empty (an idle gap) the schedule restarts from now; when
        it fell behind by more than the lead (an underrun) too; a smaller lag is
        made up by sending the frames due at once."""
        queue = self._queue
        if not queue:
            return
        now = trio.current_time()
        next_deadline = self._next_deadline
        if (self._drained and next_deadline < now) or next_deadline < now - self._lead:
            if not self._drained and self._metrics is not None:
                self._metrics.pacer_underrun()  # fell behind mid-reply: the caller heard a gap
            next_deadline = now
        self._drained = False
        horizon = now + self._lead
        send = self.ctx.send
        while queue and next_deadline <= horizon:
            turn, item = queue.popleft()
            if item is _END:
                name = f"turn-{turn}"
                self._pending_marks[name] = turn
                send("transport", OutboundMark(name=name))
                continue
            self._frames_queued -= 1
            send("transport", OutboundMedia(mulaw=item))
            if self._echo is not None:
                self._echo.note(item)
            self.frames_sent += 1
            if turn not in self._first_frame_sent:
                self._first_frame_sent.add(turn)
                send("planner", ReplyStamp(turn_id=turn, name="first_frame", t=time.monotonic()))
            next_deadline += FRAME_S
        self._next_deadline = next_deadline
        if not queue:
            self._drained = True

    async def _send_loop(self) -> None:
        """Owns the send schedule between arrivals: wakes when queued frames fall
        due (``lead`` ahead of real time) and sends them (``_pump``)."""
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            self._pump()
            if self._queue:
                # Wake when the audio ahead of real time has fallen to one lead less
                # (FRAMES_PER_WAKE - 1) frames, then top it up: FRAMES_PER_WAKE frames
                # per wake-up instead of one (a wake-up costs more than a frame).
                await trio.sleep_until(self._next_deadline - self._lead + _TOP_UP_S)
