"""The turn-taker's decisions, event by event, on a fake clock (times are plain
seconds passed as ``now``; no trio, no threads)."""

from __future__ import annotations

from typing import Any

import pytest

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
from engine.turn_taking import (
    AmendTranscript,
    CancelReply,
    DropSpeculation,
    KeepSpeculation,
    Speculate,
    StartReply,
    StopPlayback,
    Tick,
    TurnSettings,
    TurnTaker,
    looks_unfinished,
)


class Line:
    """A turn-taker and a fake clock: ``at(now, event)`` feeds one event."""

    def __init__(self, *, streaming: bool = False, **settings: Any) -> None:
        self.tt = TurnTaker(TurnSettings(**settings), streaming_stt=streaming)
        self.now = 0.0

    def at(self, now: float, event: Any) -> list[Any]:
        assert now >= self.now, "the fake clock only goes forward"
        self.now = now
        return self.tt.feed(event, now)

    def tick_until(self, until: float, step: float = 0.05) -> list[Any]:
        out: list[Any] = []
        t = self.now
        while t + step <= until + 1e-9:
            t += step
            out += self.at(t, Tick())
        return out

    def started(self, t: float, *, echo: bool = False, seen: float | None = None) -> list[Any]:
        return self.at(seen if seen is not None else t + 0.13, SpeechStarted(t=t, echo=echo))

    def ended(self, t: float, *, echo: bool = False, seen: float | None = None) -> list[Any]:
        return self.at(seen if seen is not None else t + 0.2, SpeechEnded(t=t, echo=echo))

    def final(self, now: float, text: str) -> list[Any]:
        return self.at(now, Transcript(text=text, is_final=True, t=now))

    def partial(self, now: float, text: str) -> list[Any]:
        return self.at(now, Transcript(text=text, is_final=False, t=now))


def kinds(decisions: list[Any]) -> list[type]:
    return [type(d) for d in decisions]


def reply_of(decisions: list[Any]) -> StartReply:
    (start,) = [d for d in decisions if isinstance(d, StartReply)]
    return start


# ---------------------------------------------------------------- ending a turn


def test_a_batch_final_after_the_speech_ended_ends_the_turn_at_once() -> None:
    line = Line()
    assert line.started(1.0) == []
    assert line.ended(2.5) == []  # no words yet
    start = reply_of(line.final(3.1, "I need a plumber."))
    assert (start.turn_id, start.text) == (1, "I need a plumber.")
    assert start.turn.speech_start == 1.0 and start.turn.speech_end == 2.5


def test_the_previous_stretch_s_final_does_not_end_a_turn_the_caller_went_on_with() -> None:
    """"uh, i i still think it's a very good team though": a batch recognizer's final
    for "Uh," arrives while the caller is already saying the rest. The turn ends only
    with the final of the second stretch, and holds both."""
    line = Line()
    line.started(0.0)
    line.ended(0.4)  # "uh," then a pause the VAD ends
    assert line.started(1.0) == []  # the caller goes on
    assert line.final(1.3, "Uh,") == []  # the first stretch's final, while speaking
    assert line.ended(3.0) == []  # the second stretch ended: its final is still to come
    assert line.tick_until(3.6) == []
    start = reply_of(line.final(3.7, "I still think it's a very good team though."))
    assert start.text == "Uh, I still think it's a very good team though."
    assert start.turn.stretches == 2


def test_a_streaming_final_that_covers_the_latest_stretch_ends_the_turn() -> None:
    line = Line(streaming=True, early_finalize=False)
    line.started(0.0)
    line.partial(0.5, "when do you")
    assert line.final(1.25, "when do you open") == []  # the caller is still speaking
    assert kinds(line.ended(1.1, seen=1.3)) == [StartReply]


def test_early_finalize_on_a_strong_partial_and_the_final_timeout() -> None:
    line = Line(streaming=True)
    line.started(0.0)
    line.partial(0.6, "When do you open?")
    start = reply_of(line.ended(1.0))
    assert start.text == "When do you open?"
    # No final and a weak partial: the final timeout ends the turn with the partial.
    line = Line(streaming=True)
    line.started(5.0)
    line.partial(5.4, "hmm okay")
    assert line.ended(5.6) == []
    assert line.tick_until(5.8 + 1.45) == []
    start = reply_of(line.tick_until(5.8 + 1.55))
    assert start.text == "hmm okay"


def test_noise_without_words_is_dropped_after_the_timeout() -> None:
    line = Line()
    line.started(0.0)
    line.ended(0.3)
    assert line.tick_until(0.5 + 6.1) == []
    assert line.tt.turn is None


# ---------------------------------------------------------------- unfinished turns


@pytest.mark.parametrize(
    "text, unfinished",
    [
        ("My number is 0 5 4.", True),
        ("054", True),
        ("five five", True),
        ("um", True),
        ("I was thinking and", True),
        ("My name is,", True),
        ("I need a plumber.", False),
        ("Is it 5?", False),
        ("Thanks!", False),
        ("", False),
    ],
)
def test_looks_unfinished(text: str, unfinished: bool) -> None:
    assert looks_unfinished(text) is unfinished


def test_digits_read_in_groups_stay_one_turn() -> None:
    """"0 5 4 ... 1 2 3 ... 4 5 6 7" with pauses: a turn ending in a digit waits for
    ``unfinished_hold_ms`` of silence, and the next group continues it."""
    line = Line()
    line.started(0.0)
    line.ended(1.5)
    assert line.final(1.9, "My phone number is 0 5 4.") == []  # ends in a digit: wait
    assert line.tick_until(2.15) == []
    assert line.started(2.1, seen=2.2) == []  # the next group, 600 ms after the first
    line.ended(3.0)
    assert line.final(3.4, "1 2 3") == []
    assert line.tick_until(3.65) == []
    line.started(3.65, seen=3.7)
    line.ended(4.6)
    assert line.final(5.0, "4 5 6 7.") == []
    assert line.tick_until(5.25) == []
    start = reply_of(line.tick_until(5.35))  # 700 ms after the last group
    assert start.text == "My phone number is 0 5 4. 1 2 3 4 5 6 7."
    assert start.turn.stretches == 3


def test_a_finished_sentence_does_not_wait() -> None:
    line = Line()
    line.started(0.0)
    line.ended(1.0)
    assert kinds(line.final(1.25, "I need a plumber.")) == [StartReply]


# ---------------------------------------------------------------- the caller going on


def test_caller_resuming_before_the_reply_is_heard_continues_the_turn() -> None:
    line = Line()
    line.started(0.0)
    line.ended(0.8)
    first = reply_of(line.final(1.3, "Uh, I still think"))
    # The caller goes on before any of the reply went out.
    assert line.started(1.35, seen=1.5) == [CancelReply(first.turn_id, "caller resumed")]
    # The cancelled reply's own end changes nothing.
    assert line.at(1.55, ReplyDone(turn_id=first.turn_id, text="", cancelled=True)) == []
    line.ended(2.6)
    start = reply_of(line.final(3.1, "it's a very good team though."))
    assert start.text == "Uh, I still think it's a very good team though."
    assert start.turn is first.turn and start.turn.resumed == 1
    assert start.turn_id != first.turn_id


def test_caller_resuming_within_the_window_after_the_first_frame_stops_the_audio() -> None:
    line = Line(resume_window_ms=500)
    line.started(0.0)
    line.ended(0.8)
    assert line.final(1.2, "Five five") == []  # ends in a number word: waits...
    first = reply_of(line.tick_until(1.55))  # ...until 700 ms after the speech
    assert line.at(1.9, ReplyStamp(turn_id=first.turn_id, name="first_frame", t=1.9)) == []
    out = line.started(2.2, seen=2.33)  # 300 ms into the reply
    assert out == [CancelReply(first.turn_id, "caller resumed"), StopPlayback(2.33, "caller resumed")]
    assert line.at(2.34, PlaybackCleared(turn_id=first.turn_id, t=2.33)) == []
    line.ended(2.9)
    line.final(3.2, "five one two three.")
    start = reply_of(line.tick_until(3.7))
    assert start.text == "Five five five one two three."


def test_speech_after_the_window_is_a_barge_in() -> None:
    line = Line(resume_window_ms=500)
    line.started(0.0)
    line.ended(0.8)
    first = reply_of(line.final(1.2, "When do you open?"))
    line.at(1.6, ReplyStamp(turn_id=first.turn_id, name="first_frame", t=1.6))
    assert line.started(2.4, seen=2.53) == [StopPlayback(2.53, "barge-in")]
    assert line.at(2.54, PlaybackCleared(turn_id=first.turn_id, t=2.53)) == []
    line.ended(3.0)
    second = reply_of(line.final(3.4, "What is the price?"))
    assert second.text == "What is the price?" and second.turn is not first.turn


def test_a_reply_heard_to_the_end_is_not_resumed() -> None:
    line = Line()
    line.started(0.0)
    line.ended(0.8)
    first = reply_of(line.final(1.2, "Hello."))
    line.at(1.3, ReplyStamp(turn_id=first.turn_id, name="first_frame", t=1.3))
    line.at(1.7, PlaybackMarked(turn_id=first.turn_id, t=1.7))
    assert line.started(1.75, seen=1.9) == []  # nothing playing: simply a new turn
    assert line.tt.turn is not None and line.tt.turn is not first.turn


def test_the_greeting_is_barged_in_on() -> None:
    line = Line()
    line.at(0.05, ReplyStamp(turn_id=0, name="first_frame", t=0.05))
    assert line.started(1.0) == [StopPlayback(1.13, "barge-in")]


# ---------------------------------------------------------------- late finals


def test_a_late_final_is_added_and_the_unheard_reply_answered_again() -> None:
    line = Line()
    line.started(0.0)
    line.ended(0.6)
    first = reply_of(line.final(1.0, "I still think"))
    out = line.final(1.2, "it's a very good team.")  # a later final: the reply is not heard yet
    assert out[0] == CancelReply(first.turn_id, "final differs")
    assert reply_of(out[1:]).text == "I still think it's a very good team."


def test_a_final_that_confirms_an_early_finalized_partial_changes_nothing() -> None:
    line = Line(streaming=True)
    line.started(0.0)
    line.partial(0.6, "When do you open?")
    first = reply_of(line.ended(1.0))
    assert line.final(1.3, "when do you open") == []
    # A final that differs, once the reply is heard: the record is amended.
    line.at(1.4, ReplyStamp(turn_id=first.turn_id, name="first_frame", t=1.4))
    assert line.final(1.6, "and on Fridays?") == [
        AmendTranscript(first.turn_id, "when do you open and on Fridays?")
    ]


# ---------------------------------------------------------------- echo


def test_echo_opens_nothing_interrupts_nothing_and_its_words_are_dropped() -> None:
    line = Line()
    line.started(0.0)
    line.ended(0.8)
    first = reply_of(line.final(1.2, "When do you open?"))
    line.at(1.5, ReplyStamp(turn_id=first.turn_id, name="first_frame", t=1.5))
    assert line.started(2.3, echo=True) == []  # the agent's voice coming back
    assert line.tt.turn is None
    assert line.final(2.9, "We open at eight.") == []
    assert line.ended(3.4, echo=True) == []
    assert line.final(3.8, "from Sunday to Thursday") == []
    assert line.tt.turn is None
    # Speech that the decoder confirms as the caller's interrupts.
    line.started(4.0, echo=True)
    assert line.at(4.3, SpeechConfirmed(t=4.0)) == [StopPlayback(4.3, "barge-in")]
    assert line.tt.turn is not None and line.tt.turn.speech_start == 4.0


# ---------------------------------------------------------------- speculation


def test_speculation_is_kept_when_the_turn_ends_with_the_same_words() -> None:
    line = Line(streaming=True)
    line.started(0.0)
    line.partial(0.5, "I need a plumber")
    out = line.tick_until(0.8)
    (spec,) = [d for d in out if isinstance(d, Speculate)]
    assert spec.text == "I need a plumber"
    line.final(1.0, "I need a plumber")
    (keep,) = line.ended(0.9, seen=1.1)
    assert isinstance(keep, KeepSpeculation) and keep.key == spec.key and keep.turn_id == 1


def test_speculation_is_dropped_when_the_words_change() -> None:
    line = Line(streaming=True)
    line.started(0.0)
    line.partial(0.5, "I need a plumber")
    (spec,) = [d for d in line.tick_until(0.8) if isinstance(d, Speculate)]
    assert line.partial(0.9, "I need a plumber tomorrow") == [DropSpeculation(spec.key)]


def test_dtmf_goes_with_the_turn() -> None:
    line = Line()
    line.at(0.1, DtmfPressed(digit="1", t=0.1))
    line.started(0.5)
    line.at(0.7, DtmfPressed(digit="2", t=0.7))
    line.ended(1.0)
    start = reply_of(line.final(1.3, "Yes please."))
    assert start.turn.dtmf == "12"


# ---------------------------------------------------------------- batch recognizers


def test_a_batch_final_names_its_stretch_so_a_late_one_ends_nothing() -> None:
    """Under load the recognizer's final for "Yes," arrives after "that's right"
    has ended too; it names the stretch it transcribes, so the turn waits."""
    line = Line()
    line.started(0.0)
    line.at(0.6, SpeechEnded(t=0.4, seq=7))
    line.started(0.7, seen=0.8)
    line.at(1.6, SpeechEnded(t=1.4, seq=12))
    assert line.at(2.5, Transcript("Yes,", True, 2.5, upto_seq=7)) == []
    start = reply_of(line.at(3.1, Transcript("that's right.", True, 3.1, upto_seq=12)))
    assert start.text == "Yes, that's right."


def test_a_batch_partial_never_ends_the_turn_however_late_it_arrives() -> None:
    """On a loaded machine whisper's pass over the first second ("I am a leak.") came
    back after the caller had stopped, and ended the turn on half a sentence; a batch
    turn ends on its final."""
    line = Line()
    line.started(0.0)
    line.partial(0.9, "I need a plumber for my")  # made while the caller spoke
    assert line.ended(2.4, seen=2.6) == []
    assert line.partial(2.9, "I am a leak.") == []  # a pass cut mid-speech, back late
    assert line.partial(3.0, "I need a plumber for my kitchen.") == []  # even a complete-looking one
    assert line.tick_until(3.5) == []
    start = reply_of(line.final(3.6, "I need a plumber for my kitchen."))
    assert start.text == "I need a plumber for my kitchen."


def test_a_batch_partial_for_an_already_finalized_utterance_is_ignored() -> None:
    line = Line()
    line.started(0.0)
    line.ended(1.0)
    line.at(1.2, Transcript("Hello", False, 1.2, utterance=3))
    line.at(1.5, Transcript("Hello, I am David.", True, 1.5, utterance=3))
    assert line.tt.turn is None  # the final ended the turn
    line2 = Line()
    line2.started(0.0)
    line2.ended(1.0)
    line2.started(1.3, seen=1.4)  # the caller goes on; the first stretch's final arrives
    line2.at(1.5, Transcript("Hello,", True, 1.5, utterance=3))
    assert line2.at(1.6, Transcript("Hello", False, 1.6, utterance=3)) == []  # stale: ignored
    assert line2.tt.turn is not None and line2.tt.turn.partial == ""


def test_an_unfinished_turn_is_resumed_later_into_its_reply() -> None:
    """"And so my fellow Americans, [long pause] ask not...": the turn ended on a comma
    after the hold; the caller goes on 800 ms into the reply. A finished sentence's
    reply would be barged in on at that point; an unfinished one is continued."""
    line = Line(resume_window_ms=300, unfinished_hold_ms=700)
    line.started(0.0)
    line.ended(2.0)
    line.final(2.4, "And so my fellow Americans,")
    first = reply_of(line.tick_until(2.75))
    line.at(2.9, ReplyStamp(turn_id=first.turn_id, name="first_frame", t=2.9))
    out = line.started(3.7, seen=3.83)
    assert out == [CancelReply(first.turn_id, "caller resumed"), StopPlayback(3.83, "caller resumed")]
    line.ended(5.0)
    start = reply_of(line.final(5.4, "ask not what your country can do for you."))
    assert start.text == "And so my fellow Americans, ask not what your country can do for you."


def test_a_slow_batch_recognizer_gets_a_longer_final_timeout() -> None:
    """On an overloaded machine whisper took 4-5 s per final: the 6 s timeout ended
    turns while the second stretch was still being decoded. The timeout follows the
    recognizer's recent speed."""
    line = Line(batch_final_timeout_ms=6000)
    line.started(0.0)
    line.at(1.2, SpeechEnded(t=1.0, seq=3))
    first = reply_of(line.at(6.2, Transcript("When do you open?", True, 6.2, upto_seq=3)))  # 5 s to finalize
    line.at(6.5, ReplyStamp(turn_id=first.turn_id, name="first_frame", t=6.5))
    line.at(9.0, PlaybackMarked(turn_id=first.turn_id, t=9.0))
    line.started(20.0)
    line.at(21.2, SpeechEnded(t=21.0, seq=5))
    assert line.tick_until(21.2 + 6.5) == []  # 6 s passed: still waiting (3 x 5 s)
    start = reply_of(line.at(28.0, Transcript("And on Fridays?", True, 28.0, upto_seq=5)))
    assert start.text == "And on Fridays?"
