"""Planner actor: the glue between turn-taking, reply generation and the call's records.

Runs on the trio thread (``TrioActor``); it does no blocking work itself. Every
turn-taking decision (when the caller's turn ends, early finalize, speculation,
the caller going on before the reply was heard, barge-in) is made by the call's
``TurnTaker`` (engine/turn_taking.py, a pure object; its docstring has the
rules): the planner feeds it events and carries out its decisions as messages.

The language planner (rules, OpenAI, ...) is blocking, so each reply is
generated on a worker thread borrowed through the process's own
``CapacityLimiter`` (never trio's default 40-thread limiter), and streams back as
messages. A speculative reply's output is held in its ``_Sink`` until released.

Each completed turn is recorded (transcript, reply, interrupted, DTMF, stamps in
ms since ``ws_connected``) through the process recorder, off the hot path. A
reply cancelled because the caller went on is not recorded: its turn continues
and is recorded once, with everything the caller said.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable

import trio

from engine.actor import TrioActor
from engine.messages import (
    CancelToken,
    ClearPlayback,
    DtmfPressed,
    EndCall,
    EndCallAfter,
    Hangup,
    LeadCaptured,
    PlaybackCleared,
    PlaybackMarked,
    RecordLead,
    RecordTurn,
    ReplyDone,
    ReplyStamp,
    Speak,
    SpeechConfirmed,
    SpeechEnded,
    SpeechStarted,
    TextDelta,
    Transcript,
)
from engine.turn_taking import (
    AmendTranscript,
    CallerTurn,
    CancelReply,
    DropSpeculation,
    KeepSpeculation,
    Speculate,
    StartReply,
    StopPlayback,
    Tick,
    TurnSettings,
    TurnTaker,
    normalize,
)

__all__ = ["Planner", "TurnSettings", "normalize"]

_PUNCT = ".!?…"
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_TURN_EVENTS = (Transcript, SpeechStarted, SpeechConfirmed, SpeechEnded, DtmfPressed)


class _Sink:
    """Where a generation thread's output goes: held back while speculative.

    Thread-safe by construction: ``emit`` runs on the generation thread and
    ``release``/``cancel`` on the trio thread; both take the lock.
    """

    def __init__(self, send: Callable[[str, Any], None], speculative: bool) -> None:
        import threading

        self._send = send
        self._held: list[tuple[str, Any]] = []
        self._live = not speculative
        self._lock = threading.Lock()
        self.turn_id = -1

    def emit(self, role: str, msg: Any) -> None:
        with self._lock:
            if self._live:
                self._send(role, self._stamp(msg))
            else:
                self._held.append((role, msg))

    def release(self, turn_id: int) -> None:
        with self._lock:
            self.turn_id = turn_id
            self._live = True
            held, self._held = self._held, []
            for role, msg in held:
                self._send(role, self._stamp(msg))

    def _stamp(self, msg: Any) -> Any:
        if self.turn_id >= 0 and hasattr(msg, "turn_id") and msg.turn_id != self.turn_id:
            return dataclasses.replace(msg, turn_id=self.turn_id)
        return msg


@dataclasses.dataclass
class _Reply:
    turn_id: int
    user_text: str
    token: CancelToken
    sink: _Sink
    stamps: dict[str, float]
    turn: CallerTurn | None = None
    text: str = ""
    done: bool = False
    cancelled: bool = False
    heard_start: bool = False  # its first frame went out
    committed: bool = False
    recorded: bool = False
    ends_call: bool = False

    @property
    def dtmf(self) -> str:
        return self.turn.dtmf if self.turn is not None else ""


class Planner(TrioActor):
    #: Inline (``TrioActor``): handling a message never waits (generation runs in
    #: its own task), so it is handled in the sender's task: the end of a turn
    #: starts the reply without a task switch to this actor first.
    inline = True

    def __init__(
        self,
        *,
        conversation: Any,
        call_sid: str,
        business_id: str,
        language: str,
        voice: str,
        connected_at: float,
        record: Callable[[Any], None],
        limiter: trio.CapacityLimiter,
        settings: TurnSettings,
        streaming_stt: bool,
        call_stamps: dict[str, float],
        metrics: Any = None,
    ) -> None:
        super().__init__()
        self._conv = conversation
        self._call_sid = call_sid
        self._business_id = business_id
        self._language = language
        self._voice = voice
        self._t0 = connected_at
        self._record = record
        self._limiter = limiter
        self._call_stamps = call_stamps  # shared with the tree; survives restarts
        self._metrics = metrics
        self.turns = TurnTaker(settings, streaming_stt=streaming_stt, turns_so_far=int(call_stamps.get("_turns", 0)))
        self._turn_opened = trio.Event()  # wakes the ticker; it sleeps while no turn is open
        self._replies: dict[int, _Reply] = {}
        self._specs: dict[int, _Reply] = {}
        self.speculative_kept = 0
        self.speculative_discarded = 0

    # ---- lifecycle -------------------------------------------------------------------

    async def on_start(self) -> None:
        self.nursery.start_soon(self._ticker)

    async def on_stop(self) -> None:
        # The call is ending: record what was said but not yet recorded.
        for reply in list(self._replies.values()):
            if not reply.recorded:
                reply.token.cancel("call ended")
                self._finish(reply, interrupted=not reply.done)
        for spec in self._specs.values():
            spec.token.cancel("call ended")
        turn = self.turns.turn
        if turn is not None and turn.text(True):
            self.turns.turns += 1
            self._call_stamps["_turns"] = self.turns.turns
            self._record(
                RecordTurn(
                    call_sid=self._call_sid,
                    turn_index=self.turns.turns,
                    transcript=turn.text(True),
                    reply="",
                    interrupted=False,
                    stamps=self._stamps_for(turn),
                    dtmf=turn.dtmf,
                )
            )

    # ---- messages (trio thread) --------------------------------------------------------

    def receive_inline(self, msg: Any) -> None:
        now = time.monotonic()
        if isinstance(msg, _TURN_EVENTS):
            self._apply(self.turns.feed(msg, now), now)
        elif isinstance(msg, ReplyStamp):
            self._on_stamp(msg)
            self._apply(self.turns.feed(msg, now), now)
        elif isinstance(msg, ReplyDone):
            self._on_reply_done(msg)
            self._apply(self.turns.feed(msg, now), now)
        elif isinstance(msg, LeadCaptured):
            self._record(
                RecordLead(
                    business_id=self._business_id,
                    source="call",
                    ref=self._call_sid,
                    fields=dict(msg.fields),
                    complete=msg.complete,
                )
            )
        elif isinstance(msg, EndCallAfter):
            reply = self._replies.get(msg.turn_id)
            if reply is not None:
                reply.ends_call = True
        elif isinstance(msg, PlaybackMarked):
            reply = self._replies.get(msg.turn_id)
            if reply is not None:
                self._finish(reply, interrupted=False)
                if reply.ends_call:
                    self.ctx.send("transport", Hangup(reason="goodbye"))
            self._apply(self.turns.feed(msg, now), now)
        elif isinstance(msg, PlaybackCleared):
            reply = self._replies.get(msg.turn_id)
            if reply is not None and not reply.recorded:
                reply.token.cancel("barge-in")
                reply.cancelled = True
                self._finish(reply, interrupted=True)
            self._apply(self.turns.feed(msg, now), now)

    # ---- the turn-taker's decisions ----------------------------------------------------

    def _apply(self, decisions: list[Any], now: float) -> None:
        for d in decisions:
            if isinstance(d, StartReply):
                self._settle()
                stamps = self._stamps_for(d.turn)
                stamps["llm_start"] = self._ms(now)
                reply = self._new_reply(d.turn_id, d.text, stamps, speculative=False)
                reply.turn = d.turn
                self._replies[d.turn_id] = reply
                self._call_stamps["_turns"] = self.turns.turns
                self.nursery.start_soon(self._generate, reply)
            elif isinstance(d, KeepSpeculation):
                self._keep_spec(d, now)
            elif isinstance(d, Speculate):
                self._settle()
                spec = self._new_reply(-1, d.text, {"llm_start": self._ms(now)}, speculative=True)
                self._specs[d.key] = spec
                self.nursery.start_soon(self._generate, spec)
            elif isinstance(d, DropSpeculation):
                spec = self._specs.pop(d.key, None)
                if spec is not None:
                    spec.token.cancel("speculation discarded")
                    self.speculative_discarded += 1
                    if self._metrics is not None:
                        self._metrics.speculative("discarded")
            elif isinstance(d, CancelReply):
                # Audio of it the TTS already sent must not be heard either.
                self.ctx.send("pacer", ClearPlayback(t=now, turn_id=d.turn_id))
                reply = self._replies.pop(d.turn_id, None)
                if reply is not None:
                    reply.token.cancel(d.reason)
                    reply.cancelled = reply.recorded = True
                    if self._metrics is not None:
                        self._metrics.count("resumed_turns" if d.reason == "caller resumed" else "redone_turns")
            elif isinstance(d, StopPlayback):
                self.ctx.send("pacer", ClearPlayback(t=d.t))
            elif isinstance(d, AmendTranscript):
                reply = self._replies.get(d.turn_id)
                if reply is not None:
                    reply.user_text = d.text  # the record keeps what was said
        if self.turns.needs_ticks:
            self._turn_opened.set()

    def _keep_spec(self, d: KeepSpeculation, now: float) -> None:
        spec = self._specs.pop(d.key)
        self.speculative_kept += 1
        if self._metrics is not None:
            self._metrics.speculative("kept")
        spec.turn_id = d.turn_id
        spec.user_text = d.text
        spec.turn = d.turn
        llm_start = spec.stamps.get("llm_start", self._ms(now))
        spec.stamps.update(self._stamps_for(d.turn))
        spec.stamps["llm_start"] = llm_start
        self._replies[d.turn_id] = spec
        self._call_stamps["_turns"] = self.turns.turns
        spec.sink.release(d.turn_id)

    async def _ticker(self) -> None:
        """Time-based decisions (stability windows, final timeouts, the wait of an
        unfinished-looking turn, speculation): a ``Tick`` every 50 ms while a turn is open."""
        while True:
            if not self.turns.needs_ticks:
                # No caller turn open (the agent is talking or the line is quiet):
                # no timer to keep, so no wake-ups 20 times a second per call.
                self._turn_opened = trio.Event()
                await self._turn_opened.wait()
            await trio.sleep(0.05)
            now = time.monotonic()
            self._apply(self.turns.feed(Tick(), now), now)

    def _new_reply(self, turn_id: int, text: str, stamps: dict[str, float], *, speculative: bool) -> _Reply:
        sink = _Sink(self.ctx.send, speculative=speculative)
        sink.turn_id = turn_id
        return _Reply(turn_id=turn_id, user_text=text, token=CancelToken(), sink=sink, stamps=stamps)

    # ---- generation (worker thread) ----------------------------------------------------

    async def _generate(self, reply: _Reply) -> None:
        await trio.to_thread.run_sync(self._generate_blocking, reply, limiter=self._limiter, abandon_on_cancel=True)

    def _generate_blocking(self, reply: _Reply) -> None:
        """Runs on a worker thread. Streams sentences to TTS through the sink."""
        sink = reply.sink
        token = reply.token
        language = self._language
        voice = self._voice
        pending = ""
        full: list[str] = []
        seq = 0
        first = True
        ended = False
        try:
            for ev in self._conv.reply(reply.user_text, cancel=token):
                if token.cancelled:
                    break
                if isinstance(ev, TextDelta):
                    if first:
                        first = False
                        sink.emit("planner", ReplyStamp(turn_id=reply.turn_id, name="llm_first_token", t=time.monotonic()))
                    piece = ev.text
                    if full and piece and not piece[0].isspace() and full[-1][-1:] in _PUNCT:
                        piece = " " + piece  # planners that yield whole sentences omit the space
                    full.append(piece)
                    pending += piece
                    parts = _SENTENCE_END.split(pending)
                    if pending.rstrip()[-1:] in _PUNCT:
                        parts.append("")  # the piece closed a sentence: send it now
                    for sentence in parts[:-1]:
                        if sentence.strip():
                            sink.emit("tts", Speak(reply.turn_id, seq, sentence.strip(), False, token, language, voice))
                            seq += 1
                    pending = parts[-1]
                elif isinstance(ev, LeadCaptured):
                    sink.emit("planner", ev)
                elif isinstance(ev, EndCall):
                    ended = True
        finally:
            if not token.cancelled:
                sink.emit("tts", Speak(reply.turn_id, seq, pending.strip(), True, token, language, voice))
                if ended:
                    sink.emit("planner", EndCallAfter(turn_id=reply.turn_id))
            sink.emit("planner", ReplyDone(turn_id=reply.turn_id, text="".join(full).strip(), cancelled=token.cancelled))

    # ---- bookkeeping -------------------------------------------------------------------

    def _on_reply_done(self, msg: ReplyDone) -> None:
        reply = self._replies.get(msg.turn_id)
        if reply is None:
            return  # unknown, or cancelled because the caller went on: never committed
        reply.text = msg.text
        reply.done = True
        reply.cancelled = reply.cancelled or msg.cancelled
        if reply.recorded:
            self._commit(reply)  # cut off before its generation ended
        elif not msg.text and not msg.cancelled:
            # Nothing to say (no audio will come, so no mark): the turn is done.
            self._finish(reply, interrupted=False)

    def _commit(self, reply: _Reply) -> None:
        """Tell the conversation about a finished turn, once. Deferred until the turn
        is settled (heard, cut off, or followed by another turn), because a reply
        the caller talks on over is cancelled and its turn answered again."""
        if reply.committed or not reply.done:
            return
        reply.committed = True
        self._conv.commit(reply.user_text, reply.text, interrupted=reply.cancelled)

    def _settle(self) -> None:
        """A new reply is about to be generated: earlier finished turns go into the
        conversation first, so it knows them."""
        for reply in list(self._replies.values()):
            self._commit(reply)

    def _on_stamp(self, msg: ReplyStamp) -> None:
        if msg.turn_id == 0 and msg.name == "first_frame":
            self._call_stamps.setdefault("greeting_first_frame", self._ms(msg.t))
            if self._metrics is not None:
                self._metrics.observe("greeting_first_frame", self._ms(msg.t))
            return
        reply = self._replies.get(msg.turn_id)
        if reply is None:
            return
        name = "reply_first_frame" if msg.name == "first_frame" else msg.name
        if name not in reply.stamps:
            reply.stamps[name] = self._ms(msg.t)
        if name == "reply_first_frame":
            reply.heard_start = True
            end = reply.stamps.get("speech_end")
            if end is not None and self._metrics is not None:
                self._metrics.observe("turn", reply.stamps[name] - end)

    def _finish(self, reply: _Reply, *, interrupted: bool) -> None:
        if reply.recorded:
            return
        reply.recorded = True
        if interrupted and self._metrics is not None:
            self._metrics.count("interrupted_turns")
        stamps = {k: v for k, v in reply.stamps.items() if not k.startswith("_")}
        stamps.update({k: v for k, v in self._call_stamps.items() if not k.startswith("_")})
        self._commit(reply)
        self._record(
            RecordTurn(
                call_sid=self._call_sid,
                turn_index=reply.turn_id,
                transcript=reply.user_text,
                reply=reply.text,
                interrupted=interrupted,
                stamps=stamps,
                dtmf=reply.dtmf,
            )
        )
        self._replies.pop(reply.turn_id, None)

    def _stamps_for(self, turn: CallerTurn) -> dict[str, float]:
        stamps = {"ws_connected": 0.0, "speech_start": self._ms(turn.speech_start)}
        if turn.speech_end is not None:
            stamps["speech_end"] = self._ms(turn.speech_end)
        if turn.speech_end_seen is not None:
            stamps["speech_end_seen"] = self._ms(turn.speech_end_seen)
        if turn.first_partial is not None:
            stamps["stt_first_partial"] = self._ms(turn.first_partial)
        if turn.last_final is not None:
            stamps["stt_final"] = self._ms(turn.last_final)
        return stamps

    def _ms(self, t: float) -> float:
        return round((t - self._t0) * 1000.0, 1)

