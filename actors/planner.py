"""Planner actor: turn-taking, replies, barge-in, and the call's turn records.

Runs on the trio thread (``TrioActor``); it does no blocking work itself. The
language planner (rules, OpenAI, ...) is blocking, so each reply is generated
on a worker thread borrowed through the process's own ``CapacityLimiter``
(never trio's default 40-thread limiter), and streams back as messages.

Turn-taking (DESIGN.md defaults, all configurable):
- A caller turn begins at ``SpeechStarted`` and ends when speech has ended (VAD
  hangover) and either a final transcript has arrived, or the latest partial is
  strong (early finalize: >= 12 chars ending in .?!…, or >= 18 chars unchanged
  for 250 ms), or ``final_timeout_ms`` passed with a partial to use. It never
  ends while the caller is speaking.
- Speculative start: a partial >= 14 chars stable for 250 ms starts a reply
  whose output is held back; when the turn ends with a transcript that agrees
  (same words) the held output is released at once, otherwise it is cancelled
  and counted as discarded.
- If the caller resumes speaking before any of the reply was heard, the reply
  is cancelled and the caller's turn continues (their words are joined).
- Barge-in: caller speech over agent audio makes the pacer clear it; on
  ``PlaybackCleared`` the reply is cancelled (TTS stops via its token) and the
  turn is recorded as interrupted.

Each completed turn is recorded (transcript, reply, interrupted, DTMF, stamps in
ms since ``ws_connected``) through the process recorder, off the hot path.
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
    SpeechEnded,
    SpeechStarted,
    TextDelta,
    Transcript,
)

_PUNCT = ".!?…"
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_WORDS = re.compile(r"[\w']+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


@dataclasses.dataclass
class TurnSettings:
    early_finalize: bool = True
    early_punct_min_chars: int = 12
    early_stable_min_chars: int = 18
    stable_ms: int = 250
    speculative: bool = True
    speculative_min_chars: int = 14
    final_timeout_ms: int = 1500
    batch_final_timeout_ms: int = 6000  # recognizers without partials (whisper)


@dataclasses.dataclass
class _CallerTurn:
    speech_start: float
    speech_end: float | None = None
    speech_end_seen: float | None = None  # when SpeechEnded reached the planner (VAD decision + hop)
    finals: list[str] = dataclasses.field(default_factory=list)
    partial: str = ""
    partial_changed_at: float = 0.0
    first_partial: float | None = None
    last_final: float | None = None
    last_speech_start: float = 0.0  # the latest SpeechStarted within this turn
    dtmf: str = ""

    def text(self, with_partial: bool) -> str:
        parts = list(self.finals)
        if with_partial and self.partial:
            parts.append(self.partial)
        return " ".join(p.strip() for p in parts if p.strip())


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
    dtmf: str = ""
    text: str = ""
    done: bool = False
    cancelled: bool = False
    heard_start: bool = False  # its first frame went out
    committed: bool = False
    recorded: bool = False
    ends_call: bool = False
    speculative_partial: str = ""  # for a held-back speculative reply


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
        self._cfg = settings
        self._streaming_stt = streaming_stt
        self._call_stamps = call_stamps  # shared with the tree; survives restarts
        self._metrics = metrics
        self._turn_opened = trio.Event()  # wakes the ticker; it sleeps while no turn is open
        self._turn = None
        self._user_speaking = False
        self._replies: dict[int, _Reply] = {}
        self._current: _Reply | None = None
        self._spec: _Reply | None = None
        self._turn_counter = call_stamps.get("_turns", 0)
        self._final_deadline: float | None = None
        self._pending_dtmf = ""
        self.speculative_kept = 0
        self.speculative_discarded = 0

    @property
    def _turn(self) -> _CallerTurn | None:
        return self._open_turn

    @_turn.setter
    def _turn(self, turn: _CallerTurn | None) -> None:
        self._open_turn = turn
        if turn is not None:
            self._turn_opened.set()

    # ---- lifecycle -------------------------------------------------------------------

    async def on_start(self) -> None:
        self.nursery.start_soon(self._ticker)

    async def on_stop(self) -> None:
        # The call is ending: record what was said but not yet recorded.
        for reply in list(self._replies.values()):
            if not reply.recorded:
                reply.token.cancel("call ended")
                self._finish(reply, interrupted=not reply.done)
        if self._turn is not None and self._turn.text(True):
            self._turn_counter += 1
            stamps = self._stamps_for(self._turn)
            self._record(
                RecordTurn(
                    call_sid=self._call_sid,
                    turn_index=self._turn_counter,
                    transcript=self._turn.text(True),
                    reply="",
                    interrupted=False,
                    stamps=stamps,
                    dtmf=self._turn.dtmf,
                )
            )

    # ---- messages (trio thread) --------------------------------------------------------

    def receive_inline(self, msg: Any) -> None:
        now = time.monotonic()
        if isinstance(msg, Transcript):
            self._on_transcript(msg, now)
        elif isinstance(msg, SpeechStarted):
            self._on_speech_started(msg.t)
        elif isinstance(msg, SpeechEnded):
            self._user_speaking = False
            if self._turn is not None:
                self._turn.speech_end = msg.t
                self._turn.speech_end_seen = now
                self._final_deadline = now + (
                    self._cfg.final_timeout_ms if self._streaming_stt else self._cfg.batch_final_timeout_ms
                ) / 1000.0
            self._try_end_turn(now)
        elif isinstance(msg, ReplyStamp):
            self._on_stamp(msg)
        elif isinstance(msg, ReplyDone):
            self._on_reply_done(msg)
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
        elif isinstance(msg, PlaybackCleared):
            reply = self._replies.get(msg.turn_id)
            if reply is not None and not reply.recorded:
                reply.token.cancel("barge-in")
                reply.cancelled = True
                self._finish(reply, interrupted=True)
                if self._current is reply:
                    self._current = None
        elif isinstance(msg, DtmfPressed):
            if self._turn is not None:
                self._turn.dtmf += msg.digit
            elif self._current is not None:
                self._current.dtmf += msg.digit
            else:
                self._pending_dtmf += msg.digit

    # ---- turn-taking ------------------------------------------------------------------

    def _on_speech_started(self, t: float) -> None:
        self._user_speaking = True
        self._final_deadline = None
        cur = self._current
        if cur is not None and not cur.heard_start and not cur.recorded:
            # The caller went on talking before hearing any of the reply: it was
            # premature. Cancel it and continue the same caller turn.
            cur.token.cancel("caller resumed")
            cur.cancelled = True
            self._replies.pop(cur.turn_id, None)
            self._current = None
            resumed = _CallerTurn(speech_start=cur.stamps.get("_speech_start_abs", t))
            resumed.finals = [cur.user_text] if cur.user_text else []
            resumed.dtmf = cur.dtmf
            resumed.last_speech_start = t
            self._turn = resumed
            return
        if self._turn is None:
            self._turn = _CallerTurn(speech_start=t, dtmf=self._pending_dtmf)
            self._pending_dtmf = ""
        self._turn.last_speech_start = t

    def _on_transcript(self, tr: Transcript, now: float) -> None:
        turn = self._turn
        if turn is None:
            # A transcript for speech whose turn already ended (e.g. a final that
            # arrived after an early finalize): keep the record accurate.
            cur = self._current
            if tr.is_final and cur is not None and not cur.recorded:
                if tr.text.strip() and normalize(tr.text) != normalize(cur.user_text):
                    if not cur.heard_start:
                        # The early-finalized partial was wrong and nothing was heard
                        # yet: answer what the caller really said instead.
                        cur.token.cancel("final differs")
                        cur.cancelled = True
                        self._replies.pop(cur.turn_id, None)
                        self._current = None
                        redo = _CallerTurn(speech_start=cur.stamps.get("_speech_start_abs", tr.t))
                        redo.speech_end = redo.speech_start
                        redo.finals = [tr.text.strip()]
                        redo.last_final = tr.t
                        redo.dtmf = cur.dtmf
                        self._turn = redo
                        self._end_turn(redo.text(False), now)
                    else:
                        cur.user_text = tr.text.strip()  # the record keeps what was said
                return
            elif tr.is_final and tr.text.strip():
                # Speech the VAD missed entirely: open and close a turn on it.
                self._turn = turn = _CallerTurn(speech_start=tr.t, speech_end=tr.t)
            else:
                return
        if tr.is_final:
            if tr.text.strip():
                turn.finals.append(tr.text.strip())
            turn.partial = ""
            turn.last_final = tr.t
            # A running speculation is kept or discarded at the turn's end, by
            # comparing it with the whole transcript.
        else:
            if turn.first_partial is None:
                turn.first_partial = tr.t
            if tr.text != turn.partial:
                turn.partial = tr.text
                turn.partial_changed_at = now
                if self._spec is not None and normalize(self._spec.speculative_partial) != normalize(
                    turn.text(True)
                ):
                    self._cancel_spec()
        self._try_end_turn(now)

    def _partial_is_strong(self, turn: _CallerTurn, now: float) -> bool:
        p = turn.partial.strip()
        if not p or not self._cfg.early_finalize:
            return False
        if len(p) >= self._cfg.early_punct_min_chars and p[-1] in ".?!…":
            return True
        stable = (now - turn.partial_changed_at) * 1000.0 >= self._cfg.stable_ms
        return len(p) >= self._cfg.early_stable_min_chars and stable

    def _try_end_turn(self, now: float) -> None:
        turn = self._turn
        if turn is None or self._user_speaking or turn.speech_end is None:
            return
        final_is_current = turn.last_final is not None and turn.last_final >= turn.last_speech_start
        if turn.finals and not turn.partial and final_is_current:
            # A final that covers the latest stretch of speech (an earlier
            # utterance's final does not: the caller paused and went on).
            self._end_turn(turn.text(False), now)
        elif turn.partial and self._partial_is_strong(turn, now):
            self._end_turn(turn.text(True), now)
        elif self._final_deadline is not None and now >= self._final_deadline:
            text = turn.text(True)
            if text:
                self._end_turn(text, now)
            else:
                self._turn = None  # noise: no words came of it
                self._final_deadline = None

    async def _ticker(self) -> None:
        """Time-based decisions: stability windows, final timeouts, speculation."""
        while True:
            if self._turn is None:
                # No caller turn open (the agent is talking or the line is quiet):
                # no timer to keep, so no wake-ups 20 times a second per call.
                self._turn_opened = trio.Event()
                await self._turn_opened.wait()
            await trio.sleep(0.05)
            now = time.monotonic()
            turn = self._turn
            if turn is None:
                continue
            if not self._user_speaking and turn.speech_end is not None:
                self._try_end_turn(now)
                continue
            if (
                self._cfg.speculative
                and self._spec is None
                and turn.partial
                and len(turn.text(True)) >= self._cfg.speculative_min_chars
                and (now - turn.partial_changed_at) * 1000.0 >= self._cfg.stable_ms
            ):
                self._start_speculative(turn, now)

    def _end_turn(self, text: str, now: float) -> None:
        turn = self._turn
        assert turn is not None
        self._turn = None
        self._final_deadline = None
        self._turn_counter += 1
        self._call_stamps["_turns"] = self._turn_counter
        turn_id = self._turn_counter
        stamps = self._stamps_for(turn)
        stamps["_speech_start_abs"] = turn.speech_start
        spec = self._spec
        self._spec = None
        if spec is not None and normalize(spec.speculative_partial) == normalize(text):
            self.speculative_kept += 1
            if self._metrics is not None:
                self._metrics.speculative("kept")
            spec.turn_id = turn_id
            spec.user_text = text
            spec.dtmf = turn.dtmf
            spec.stamps.update(stamps)
            spec.stamps["llm_start"] = spec.stamps.get("llm_start", self._ms(now))
            self._replies[turn_id] = spec
            self._current = spec
            spec.sink.release(turn_id)
            return
        if spec is not None:
            self._discard_spec(spec)
        stamps["llm_start"] = self._ms(now)
        reply = self._new_reply(turn_id, text, stamps, speculative=False)
        reply.dtmf = turn.dtmf
        self._replies[turn_id] = reply
        self._current = reply
        self.nursery.start_soon(self._generate, reply)

    def _start_speculative(self, turn: _CallerTurn, now: float) -> None:
        text = turn.text(True)
        reply = self._new_reply(-1, text, {"llm_start": self._ms(now)}, speculative=True)
        reply.speculative_partial = text
        self._spec = reply
        self.nursery.start_soon(self._generate, reply)

    def _cancel_spec(self) -> None:
        if self._spec is not None:
            self._discard_spec(self._spec)
            self._spec = None

    def _discard_spec(self, spec: _Reply) -> None:
        spec.token.cancel("speculation discarded")
        self.speculative_discarded += 1
        if self._metrics is not None:
            self._metrics.speculative("discarded")

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
            return
        reply.text = msg.text
        reply.done = True
        if not reply.committed:
            reply.committed = True
            self._conv.commit(reply.user_text, msg.text, interrupted=msg.cancelled)
        if msg.cancelled and not reply.recorded and reply.cancelled:
            self._finish(reply, interrupted=True)
        if not msg.text and not msg.cancelled:
            # Nothing to say (no audio will come, so no mark): the turn is done.
            self._finish(reply, interrupted=False)

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
        if self._current is reply:
            self._current = None
        if interrupted and self._metrics is not None:
            self._metrics.count("interrupted_turns")
        stamps = {k: v for k, v in reply.stamps.items() if not k.startswith("_")}
        stamps.update({k: v for k, v in self._call_stamps.items() if not k.startswith("_")})
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

    def _stamps_for(self, turn: _CallerTurn) -> dict[str, float]:
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

