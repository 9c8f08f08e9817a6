"""``callengine eval``: its scoring, and a small subset of recorded speech through the real host.

The scoring tests are pure (strings in, counts out). The live test plays four real
recordings (four speakers: a command, card names with digits, an audiobook
sentence, a telephony prompt) into the shared test host over the real Twilio
protocol, reads the stored transcripts back and asserts what the engine must
never do, whatever recognizer is the default: drop an utterance, or lose its
first words. Accuracy itself is a benchmark (``make eval``), not a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.eval_data import SMOKE, DataError, check_data, default_data_dir, load_clips
from bench.eval_score import align, attribute_turns, normalise, score_pair
from tests.conftest_host import ADMIN_TOKEN, TWILIO_TOKEN, HostProcess

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the normaliser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Go forward 10 meters.", "go forward ten meters"),
        ("8 of spades, 4 of clubs", "eight of spades four of clubs"),
        ("My number is 0541234567", "my number is zero five four one two three four five six seven"),
        ("Press 1 to accept this call, or 2 to reject it", "press one to accept this call or two to reject it"),
        ("It's 1,234 dollars", "its one thousand two hundred thirty four dollars"),
        ("Mr. John Dashwood", "mister john dashwood"),
        ("rather cold-hearted", "rather cold hearted"),
        ("uh, I I still think", "i i still think"),
        ("three oh five", "three zero five"),
        ("the 22nd at 9:30", "the twenty second at nine thirty"),
        ("$5", "five dollars"),
    ],
)
def test_normaliser_spells_numbers_and_drops_punctuation_case_and_fillers(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_digits_and_words_score_alike_and_a_merged_digit_is_an_error() -> None:
    assert score_pair("eight of spades four of clubs", "8 of spades, 4 of clubs.").errors == 0
    five = score_pair("five five", "5")
    assert (five.hits, five.dels, five.sub, five.ins) == (1, 1, 0, 0)
    assert five.wer == 0.5


def test_alignment_is_minimal_and_splits_errors_by_type() -> None:
    ops = align("a b c d".split(), "a x c d e".split())
    assert [o.kind for o in ops] == ["ok", "sub", "ok", "ok", "ins"]
    c = score_pair("he began a confused complaint against the wizard", "would vanish behind the wizard")
    assert (c.ref_words, c.hits, c.sub, c.dels, c.ins) == (8, 2, 3, 3, 0)  # "the wizard" kept


# ------------------------------------------------------------------ turns against utterances


def test_a_lost_onset_and_a_split_utterance_are_read_off_the_alignment() -> None:
    refs = ["uh i i still think its a very good team though", "go forward ten meters"]
    att = attribute_turns(refs, ["I still think", "it's a very good team though.", "Forward 10 meters."])
    assert att.counts.dels == 2  # "i" of the stutter, and "go"
    assert att.split == [0]
    assert att.merged == []
    assert att.dropped == []
    assert att.lost_start == [1, 1]
    assert att.lost_end == [0, 0]


def test_a_dropped_utterance_and_a_merged_turn() -> None:
    refs = ["ten of clubs", "seven of hearts", "please try again"]
    att = attribute_turns(refs, ["Ten of clubs, seven of hearts."])
    assert att.merged == [0]
    assert att.dropped == [2]
    assert att.lost_start == [0, 0, 3]
    assert att.turns_of == [[0], [0], []]
    assert att.counts.dels == 3 and att.counts.hits == 6


def test_words_heard_during_nothing_are_insertions_of_the_nearest_utterance() -> None:
    att = attribute_turns(["front left"], ["Thank you.", "Front left."])
    assert att.counts.ins == 2 and att.counts.hits == 2
    assert att.per_utterance[0].ins == 2


def test_an_inserted_word_counts_to_the_utterance_its_own_turn_heard() -> None:
    att = attribute_turns(["rear left", "rear right"], ["Rear. Left.", "We are... Right."])
    assert [(c.hits, c.sub, c.ins) for c in att.per_utterance] == [(2, 0, 0), (1, 1, 1)]


# ------------------------------------------------------------------ the data


def _data_dir() -> Path:
    data = default_data_dir()
    if not data.is_absolute():
        data = ROOT / data
    return data


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fetch-eval-data.sh"):
        check_data(tmp_path)


def test_unknown_clip_id_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="unknown clip"):
        load_clips(_data_dir(), ("no/such/clip",))


def test_every_clip_decodes_to_telephone_audio_with_a_reference() -> None:
    clips = load_clips(_data_dir())
    assert len(clips) >= 60
    assert len({c.clip.speaker for c in clips}) >= 8
    for c in clips:
        assert c.reference.strip(), c.clip.id
        assert 0.5 < c.seconds < 15.0, c.clip.id


# ------------------------------------------------------------------ through the real host


async def test_recorded_speech_through_the_host_loses_no_utterance_and_no_onset(host: HostProcess) -> None:
    from bench.eval import EvalOptions, run_eval

    opts = EvalOptions(
        url=host.ws,
        calls=2,
        clips=SMOKE,
        data_dir=_data_dir(),
        offline=False,
        noise=False,
        admin_token=ADMIN_TOKEN,
        auth_token=TWILIO_TOKEN,
    )
    report = await run_eval(opts)
    live = report["live"]
    detail = [(r["clip"], r["reference"], r["turns"]) for r in live["rows"]]
    assert live["utterances"] == len(SMOKE), live["errors"]
    assert live["dropped"] == [], (detail, live["calls"])
    assert live["onsets_lost"] == [], detail
    assert live["counts"]["hits"] > 0
