"""Turn-taking for one call, as a pure object: when the caller's turn ends, and
what happens to the agent's reply when the caller speaks.

``TurnTaker.feed(event, now) -> decisions`` is the whole interface. It does no
I/O, keeps no clock and starts nothing: the planner actor feeds it the decoder's
voice events, the recognizer's transcripts and the reply's playback events, plus
a ``Tick`` every 50 ms while a turn is open, with the time they are handled, and
turns each decision into messages. Every rule below is tested with a fake clock
in tests/test_turn_taking.py.

Events: ``SpeechStarted`` / ``SpeechConfirmed`` / ``SpeechEnded`` (voice activity;
``echo`` marks speech that may be the agent's own voice coming back),
``Transcript`` (partials and finals), ``ReplyStamp`` (``first_frame``: a reply's
first audio frame went out), ``PlaybackMarked`` (heard to the end),
``PlaybackCleared``, ``ReplyDone``, ``DtmfPressed``, ``Tick``.

Rules (the numbers are ``TurnSettings``, from ``[turn]`` in config/default.toml):

- The caller's turn opens at speech that is the caller's (``SpeechStarted``
  without ``echo``, or ``SpeechConfirmed``). Speech the echo gate never confirmed
  is not the caller's: it opens nothing, interrupts nothing, and transcripts that
  arrive for it (no turn open, agent audio playing or echo just heard) are dropped.
- It ends once speech has ended (the VAD's hangover) and either a final
  transcript covers the latest stretch of speech, or the latest partial is strong
  (early finalize: >= ``early_punct_min_chars`` ending in .?!…, or
  >= ``early_stable_min_chars`` unchanged for ``stable_ms``), or
  ``final_timeout_ms`` passed (for batch recognizers ``batch_final_timeout_ms``, or
  three times their recent speech-end-to-final time if longer) with words to use; with no words by then it was noise and is dropped.
  It never ends while the caller is speaking. A final covers the latest stretch
  when it arrived after that stretch began (streaming recognizers, which hear all
  audio); a batch recognizer's final (which transcribes a stretch once it has
  ended) names the stretch it transcribes (``Transcript.upto_seq`` =
  ``SpeechEnded.seq``), so one for the previous stretch, arriving while the caller
  has already gone on, ends nothing (without the name: when it arrived after the
  stretch ended). A batch recognizer's partial never ends a turn (it is a pass
  over the audio as it was when the pass began; the final reuses the pass that
  heard everything), and a partial for an utterance it has already finalized is
  ignored.
- A turn whose words look unfinished (ending in a digit or number word, a filler
  such as "uh"/"um", a conjunction or article, or a comma) waits until
  ``unfinished_hold_ms`` of silence after the speech before it ends: digits read
  in groups and hesitations stay one turn. Only such turns wait; the others end
  as soon as they can.
- The caller going on: speech that starts before the reply was heard (its first
  frame not yet out, or less than ``resume_window_ms`` of it played; plus
  ``unfinished_hold_ms`` when the turn's words looked unfinished) means the turn
  was not over. The reply is cancelled (``CancelReply``; and its audio
  stopped if any went out) and the same turn continues: its transcript keeps
  every word from both stretches, and it gets one reply and one record.
- A final that arrives after the turn ended (a slow recognizer, or one that
  finalizes after an early finalize) is added to the turn's words (replacing the
  partial it finalizes). If the reply has not been heard yet and the words
  changed, the reply is cancelled and the turn answered again with all of them;
  once heard, the record is amended (``AmendTranscript``).
- Barge-in: the caller's speech while agent audio is playing (after the resume
  window) stops it (``StopPlayback``); the pacer reports each cleared reply, which
  the planner records as interrupted.
- Speculation: a partial of >= ``speculative_min_chars`` unchanged for
  ``stable_ms`` starts a reply whose output is held back (``Speculate``). When the
  turn ends with the same words it is released (``KeepSpeculation``); when the
  words change or the turn ends otherwise it is dropped (``DropSpeculation``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.messages import (
    DtmfPressed,
    PlaybackCleared,
    PlaybackMarked,
    ReplyDone,
    ReplyStamp,
    SpeechConfirmed,
    SpeechEnded,
    SpeechStarted,
    Transcript,
)
from engine.turn_decisions import (
    AmendTranscript,
    CallerTurn,
    CancelReply,
    Decision,
    DropSpeculation,
    KeepSpeculation,
    Speculate,
    StartReply,
    StopPlayback,
    Tick,
    TurnSettings,
)
from engine.turn_words import looks_unfinished, normalize

# The vocabulary (``engine.turn_decisions``) and the word rules
# (``engine.turn_words``) are part of this module's documented API.
__all__ = [
    "TurnSettings",
    "CallerTurn",
    "TurnTaker",
    "Tick",
    "StartReply",
    "Speculate",
    "KeepSpeculation",
    "DropSpeculation",
    "CancelReply",
    "StopPlayback",
    "AmendTranscript",
    "normalize",
    "looks_unfinished",
]


@dataclasses.dataclass
class _Reply:
    turn_id: int
    turn: CallerTurn
    text: str
    first_frame: float | None = None


class TurnTaker:
    """One call's turn-taking state (see the module docstring). Not thread-safe:
    one owner (the planner, on the trio thread)."""

    def __init__(self, settings: TurnSettings, *, streaming_stt: bool, turns_so_far: int = 0) -> None:
        self.cfg = settings
        self.streaming_stt = streaming_stt
        self.turn: CallerTurn | None = None  # the caller's open turn
        self._reply: _Reply | None = None  # the reply to the last ended turn, until heard to the end
        self._playing: set[int] = set()  # turns whose audio went out and is not yet heard or cleared
        self._speaking = False  # the caller's speech is going on
        self._suspect = False  # speech that may be echo is going on
        self._echo_until = 0.0  # transcripts with no turn open before this are echo
        self._deadline: float | None = None
        self._spec: tuple[int, str] | None = None
        self._spec_keys = 0
        self._pending_dtmf = ""
        self._final_utterance: int | None = None  # the recognizer's utterance number of the latest final
        self._final_lag = 0.0  # a batch recognizer's recent time from speech end to final (seconds, smoothed)
        self.turns = turns_so_far

    # ---- state ------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def needs_ticks(self) -> bool:
        """Whether time alone can produce a decision (the planner ticks only then)."""
        return self.turn is not None

    @property
    def agent_playing(self) -> bool:
        return bool(self._playing)

    # ---- events -----------------------------------------------------------------------

    def feed(self, event: Any, now: float) -> list[Decision]:
        if isinstance(event, Tick):
            return self._tick(now)
        if isinstance(event, Transcript):
            return self._transcript(event, now)
        if isinstance(event, SpeechStarted):
            if event.echo:
                self._suspect = True
                return []
            return self._caller_speaks(event.t, now)
        if isinstance(event, SpeechConfirmed):
            self._suspect = False
            return self._caller_speaks(event.t, now)
        if isinstance(event, SpeechEnded):
            return self._speech_ended(event, now)
        if isinstance(event, ReplyStamp):
            if event.name == "first_frame":
                self._playing.add(event.turn_id)
                reply = self._reply
                if reply is not None and reply.turn_id == event.turn_id and reply.first_frame is None:
                    reply.first_frame = event.t
            return []
        if isinstance(event, (PlaybackMarked, PlaybackCleared)):
            self._playing.discard(event.turn_id)
            if self._reply is not None and self._reply.turn_id == event.turn_id:
                self._reply = None
            return []
        if isinstance(event, ReplyDone):
            if self._reply is not None and self._reply.turn_id == event.turn_id and not event.text:
                self._reply = None  # nothing to say: no audio will come
            return []
        if isinstance(event, DtmfPressed):
            if self.turn is not None:
                self.turn.dtmf += event.digit
            elif self._reply is not None:
                self._reply.turn.dtmf += event.digit
            else:
                self._pending_dtmf += event.digit
            return []
        return []

    # ---- voice ------------------------------------------------------------------------

    def _caller_speaks(self, t: float, now: float) -> list[Decision]:
        out: list[Decision] = []
        self._speaking = True
        self._deadline = None
        reply = self._reply
        if self.turn is None and reply is not None and (
            reply.first_frame is None or t < reply.first_frame + self._resume_window(reply)
        ):
            # The caller went on before hearing the reply: the turn was not over.
            out.append(CancelReply(reply.turn_id, "caller resumed"))
            if reply.turn_id in self._playing:
                out.append(StopPlayback(now, "caller resumed"))
            self._reply = None
            self.turn = reply.turn
            self.turn.resumed += 1
        elif self._playing:
            out.append(StopPlayback(now, "barge-in"))
        turn = self.turn
        if turn is None:
            turn = self.turn = CallerTurn(speech_start=t, dtmf=self._pending_dtmf)
            self._pending_dtmf = ""
        turn.stretches += 1
        turn.last_start_seen = now
        turn.speech_end = None
        return out

    def _resume_window(self, reply: _Reply) -> float:
        """How long after a reply's first frame the caller's speech still continues
        the turn (seconds): ``resume_window_ms``, plus ``unfinished_hold_ms`` when the
        words it answers look unfinished (the caller paused longer than the hold, and
        goes on)."""
        ms = self.cfg.resume_window_ms
        if looks_unfinished(reply.text):
            ms += self.cfg.unfinished_hold_ms
        return ms / 1000.0

    def _speech_ended(self, ev: SpeechEnded, now: float) -> list[Decision]:
        if ev.echo:
            self._suspect = False
            self._echo_until = now + 2.0
            return []
        self._speaking = False
        turn = self.turn
        if turn is not None:
            turn.speech_end = ev.t
            turn.speech_end_seen = now
            turn.last_end_seq = ev.seq
            if self.streaming_stt:
                timeout = self.cfg.final_timeout_ms / 1000.0
            else:
                # A batch recognizer that has been slow (an overloaded machine) gets
                # longer: ending without a final splits the turn it is still decoding.
                timeout = max(self.cfg.batch_final_timeout_ms / 1000.0, 3.0 * self._final_lag)
            self._deadline = now + timeout
        return self._try_end(now)

    # ---- transcripts ------------------------------------------------------------------

    def _transcript(self, tr: Transcript, now: float) -> list[Decision]:
        turn = self.turn
        text = tr.text.strip()
        if turn is None:
            if not tr.is_final or not text:
                return []
            echo = self._suspect or now < self._echo_until
            reply = self._reply
            if reply is not None and (reply.first_frame is None or not echo):
                return self._late_final(reply, text, now)
            if reply is not None or self._playing or echo:
                return []  # the agent's own voice, transcribed
            # Speech the VAD missed entirely: open and close a turn on it.
            turn = self.turn = CallerTurn(speech_start=tr.t, speech_end=tr.t, speech_end_seen=now)
            turn.dtmf, self._pending_dtmf = self._pending_dtmf, ""
            turn.stretches = 1
            turn.last_start_seen = now
        if tr.is_final:
            self._final_utterance = tr.utterance
            if text:
                turn.finals.append(text)
            turn.partial = ""
            turn.last_final = tr.t
            turn.last_final_seen = now
            turn.final_upto = max(turn.final_upto, tr.upto_seq)
            if tr.upto_seq and tr.upto_seq == turn.last_end_seq and turn.speech_end_seen is not None:
                lag = now - turn.speech_end_seen  # how long this recognizer takes to finalize
                self._final_lag = lag if self._final_lag == 0.0 else 0.7 * self._final_lag + 0.3 * lag
            return self._try_end(now)
        if not self.streaming_stt and tr.utterance == self._final_utterance:
            return []  # a batch recognizer's partial for the utterance it has already finalized
        out: list[Decision] = []
        if turn.first_partial is None:
            turn.first_partial = tr.t
        if tr.text != turn.partial:
            turn.partial = tr.text
            turn.partial_changed_at = now
            if self._spec is not None and normalize(self._spec[1]) != normalize(turn.text(True)):
                out.append(DropSpeculation(self._spec[0]))
                self._spec = None
        return out + self._try_end(now)

    def _late_final(self, reply: _Reply, text: str, now: float) -> list[Decision]:
        """A final for the turn that already ended (see the module docstring)."""
        turn = reply.turn
        turn.finals.append(text)
        turn.partial = ""  # a final replaces the partial it finalizes
        turn.last_final_seen = now
        whole = turn.text(False)
        if normalize(whole) == normalize(reply.text):
            return []
        if reply.first_frame is None:
            self._reply = None
            self.turn = turn
            return [CancelReply(reply.turn_id, "final differs")] + self._end_turn(whole, now)
        reply.text = whole
        return [AmendTranscript(reply.turn_id, whole)]

    # ---- ending the turn --------------------------------------------------------------

    def _final_is_current(self, turn: CallerTurn) -> bool:
        if self.streaming_stt:
            return turn.last_final_seen >= turn.last_start_seen
        if turn.final_upto and turn.last_end_seq:
            return turn.final_upto >= turn.last_end_seq  # the final says which stretch it is
        return turn.speech_end_seen is not None and turn.last_final_seen >= turn.speech_end_seen

    def _partial_is_strong(self, turn: CallerTurn, now: float) -> bool:
        p = turn.partial.strip()
        if not p or not self.cfg.early_finalize:
            return False
        if not self.streaming_stt:
            # A batch recognizer's partial is a pass over the audio as it was when the
            # pass began, with its own final punctuation: under load a pass cut
            # mid-speech ("I am a leak.") comes back after the caller stopped, and a
            # pass at the pause can read the utterance differently from the final.
            # The final costs nothing more when that pass heard everything (whisper
            # reuses it), so a batch turn ends on its final.
            return False
        if len(p) >= self.cfg.early_punct_min_chars and p[-1] in ".?!…":
            return True
        stable = (now - turn.partial_changed_at) * 1000.0 >= self.cfg.stable_ms
        return len(p) >= self.cfg.early_stable_min_chars and stable

    def _try_end(self, now: float) -> list[Decision]:
        turn = self.turn
        if turn is None or self._speaking or turn.speech_end is None:
            return []
        timed_out = self._deadline is not None and now >= self._deadline
        if turn.finals and not turn.partial and self._final_is_current(turn):
            text = turn.text(False)
        elif turn.partial and self._partial_is_strong(turn, now):
            text = turn.text(True)
        elif timed_out:
            text = turn.text(True)
            if not text:
                self.turn = None  # noise: no words came of it
                self._deadline = None
                return []
        else:
            return []
        if not timed_out and looks_unfinished(text) and now < turn.speech_end + self.cfg.unfinished_hold_ms / 1000.0:
            return []  # the caller probably goes on: the ticker looks again
        return self._end_turn(text, now)

    def _end_turn(self, text: str, now: float) -> list[Decision]:
        turn = self.turn
        assert turn is not None
        self.turn = None
        self._deadline = None
        self.turns += 1
        turn_id = self.turns
        self._reply = _Reply(turn_id=turn_id, turn=turn, text=text)
        spec, self._spec = self._spec, None
        if spec is not None and normalize(spec[1]) == normalize(text):
            return [KeepSpeculation(spec[0], turn_id, text, turn)]
        out: list[Decision] = [DropSpeculation(spec[0])] if spec is not None else []
        out.append(StartReply(turn_id, text, turn))
        return out

    def _tick(self, now: float) -> list[Decision]:
        turn = self.turn
        if turn is None:
            return []
        if not self._speaking and turn.speech_end is not None:
            return self._try_end(now)
        if (
            self.cfg.speculative
            and self._spec is None
            and turn.partial
            and len(turn.text(True)) >= self.cfg.speculative_min_chars
            and (now - turn.partial_changed_at) * 1000.0 >= self.cfg.stable_ms
        ):
            self._spec_keys += 1
            self._spec = (self._spec_keys, turn.text(True))
            return [Speculate(self._spec_keys, self._spec[1])]
        return []
