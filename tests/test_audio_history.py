"""What a new recognizer session replays: the unfinalized speech from its pre-roll on,
never the silence before it (``engine.audio_history``)."""

from __future__ import annotations

import itertools

import pytest

from engine.audio_history import AudioHistory
from engine.messages import AudioChunk, UtteranceEnded

CHUNK_MS = 100
CHUNK = CHUNK_MS * 16  # bytes of 8 kHz PCM16 per chunk
PREROLL = 300 * 16
SETTLE = 1000 * 16


class Feed:
    """Appends numbered items as the decoder does."""

    def __init__(self, history: AudioHistory) -> None:
        self.h = history
        self._fill = itertools.count(1)

    def silence(self, ms: int) -> list[int]:
        return [self._chunk(False) for _ in range(ms // CHUNK_MS)]

    def speech(self, ms: int) -> list[int]:
        return [self._chunk(True) for _ in range(ms // CHUNK_MS)]

    def end(self) -> int:
        seq = self.h.next_seq()
        self.h.append(UtteranceEnded(t=0.0, seq=seq))
        return seq

    def _chunk(self, in_speech: bool) -> int:
        seq = self.h.next_seq()
        self.h.append(AudioChunk(pcm16=bytes([next(self._fill) % 256]) * CHUNK, t=0.0, in_speech=in_speech, seq=seq))
        return seq


def seqs(h: AudioHistory) -> list[int]:
    return [i.seq for i in h.pending()]


def audio_ms(h: AudioHistory) -> int:
    return sum(len(i.pcm16) for i in h.pending() if isinstance(i, AudioChunk)) // 16


@pytest.fixture
def feed() -> Feed:
    return Feed(AudioHistory(preroll_bytes=PREROLL, settle_bytes=SETTLE))


def test_silence_alone_keeps_only_a_pre_roll(feed: Feed) -> None:
    """A caller silent through a 4 s greeting: a new stream must not get 4 s of silence
    (the old history kept all of it, and each new stream replayed it)."""
    quiet = feed.silence(4000)
    assert seqs(feed.h) == quiet[-3:]
    assert audio_ms(feed.h) == 300
    assert feed.h.skipped == len(quiet) - 3 and feed.h.dropped == 0


def test_an_unfinalized_utterance_is_replayed_from_its_pre_roll(feed: Feed) -> None:
    quiet = feed.silence(2000)
    words = feed.speech(800)
    assert seqs(feed.h) == quiet[-3:] + words


def test_after_the_end_a_settle_head_and_the_next_pre_roll_are_kept(feed: Feed) -> None:
    """No final yet: the utterance, its end, 1 s of silence after it (a recognizer ends
    its result on it), and the newest pre-roll; the rest of a long silence is left out."""
    feed.silence(500)
    words = feed.speech(800)
    end = feed.end()
    after = feed.silence(5000)
    assert seqs(feed.h) == [words[0] - 3, words[0] - 2, words[0] - 1, *words, end, *after[:10], *after[-3:]]


def test_a_short_pause_between_utterances_is_kept_whole(feed: Feed) -> None:
    feed.silence(300)
    first = feed.speech(500)
    end = feed.end()
    pause = feed.silence(1200)
    second = feed.speech(400)
    assert seqs(feed.h)[3:] == [*first, end, *pause, *second]


def test_a_final_leaves_only_the_pre_roll_of_what_follows(feed: Feed) -> None:
    feed.silence(300)
    feed.speech(600)
    end = feed.end()
    feed.silence(700)  # inside the settle head
    feed.h.trim_through(end)
    assert audio_ms(feed.h) == 300  # idle again
    more = feed.silence(2000)
    assert seqs(feed.h) == more[-3:]


def test_a_final_for_the_first_of_two_utterances_keeps_the_second_from_its_pre_roll(feed: Feed) -> None:
    feed.silence(300)
    feed.speech(600)
    end = feed.end()
    pause = feed.silence(900)  # within the settle head: kept until the final
    second = feed.speech(500)
    feed.h.trim_through(end)
    assert seqs(feed.h) == [*pause[-3:], *second]


def test_items_stay_in_order_and_bounded(feed: Feed) -> None:
    h = AudioHistory(max_items=20, preroll_bytes=PREROLL, settle_bytes=SETTLE)
    f = Feed(h)
    f.silence(1000)
    f.speech(3000)  # 30 chunks of speech with no final: the oldest are dropped and counted
    got = seqs(h)
    assert got == sorted(got) and len(got) == 20 and h.dropped == 33 - 20


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        AudioHistory(preroll_bytes=-1)
