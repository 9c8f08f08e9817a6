"""Text made speakable before TTS: English and Hebrew numbers, phones, prices, times, dates."""

from __future__ import annotations

import pytest

from engine.speakable import SpeakableTts, speakable


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("Call 054-123-4567.", "Call zero five four, one two three, four five six seven."),
        ("My number is 0541234567", "My number is zero five four, one two three, four five six seven"),
        ("(555) 123-4567", "five five five, one two three, four five six seven"),
        ("+1 555 123 4567", "plus one, five five five, one two three, four five six seven"),
        ("It costs $12.50.", "It costs twelve dollars and fifty cents."),
        ("A visit is ₪200.", "A visit is two hundred shekels."),
        ("A visit is 200 NIS.", "A visit is two hundred shekels."),
        ("Only 1 ₪", "Only one shekel"),
        ("Open 8:00-18:00.", "Open eight in the morning to six in the evening."),
        ("Come at 9am or 2:30 pm.", "Come at nine in the morning or two thirty in the afternoon."),
        ("We open at 8:05.", "We open at eight oh five."),
        ("At 12:00 pm", "At noon"),
        ("See you 2026-12-03.", "See you December third, twenty twenty-six."),
        ("See you on Dec 3rd, 2026.", "See you on December third, twenty twenty-six."),
        ("Since 1998, 1,250 jobs and 15% off.", "Since nineteen ninety-eight, one thousand two hundred fifty jobs and fifteen percent off."),
        ("1234 Main St., Apt 3", "twelve thirty-four Main Street, apartment three"),
        ("the 3rd floor, 2.5 hours", "the third floor, two point five hours"),
        ("Hi, you've reached Demo Plumbing.", "Hi, you've reached Demo Plumbing."),
    ],
)
def test_english(text: str, spoken: str) -> None:
    assert speakable(text, "en-US") == spoken


def test_english_slashed_dates_follow_the_region() -> None:
    assert speakable("on 3/12/2026", "en-US") == "on March twelfth, twenty twenty-six"
    assert speakable("on 3/12/2026", "en-IL") == "on December third, twenty twenty-six"


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("התקשרו ל-054-123-4567", "התקשרו לאפס חמש ארבע, אחת שתיים שלוש, ארבע חמש שש שבע"),
        ("מספר הטלפון 0541234567", "מספר הטלפון אפס חמש ארבע, אחת שתיים שלוש, ארבע חמש שש שבע"),
        ("ביקור עולה 200 ₪", "ביקור עולה מאתיים שקלים"),
        ("25.50 ₪", "עשרים וחמישה שקלים וחמישים אגורות"),
        ("המחיר $50", "המחיר חמישים דולרים"),
        ("פתוחים א'-ה' 8:00-18:00", "פתוחים ראשון עד חמישי שמונה בבוקר עד שש בערב"),
        ("נפגש ב-14:30", "נפגש בשתיים וחצי אחר הצהריים"),
        # a date after a date cue, never the decimal the normaliser alone would read
        ("הפגישה ב-3.12", "הפגישה בשלושה בדצמבר"),
        ("עד 3.12", "עד שלושה בדצמבר"),
        ("ב-03/04/2026", "בשלושה באפריל אלפיים עשרים ושש"),
        ("רחוב הרצל 12, תל אביב", "רחוב הרצל שתים עשרה, תל אביב"),
    ],
)
def test_hebrew(text: str, spoken: str) -> None:
    assert speakable(text, "he-IL") == spoken


def test_hebrew_decimal_without_a_date_cue_stays_a_number() -> None:
    assert "דצמבר" not in speakable("המחיר 3.12 שקלים", "he-IL")


def test_other_languages_and_empty_text_pass_through() -> None:
    assert speakable("Llame al 555 123 4567", "es-ES") == "Llame al 555 123 4567"
    assert speakable("", "en-US") == ""


class _Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def synthesize(self, text, *, language, voice="", cancel=None):  # type: ignore[no-untyped-def]
        self.texts.append(text)
        yield b"\xff" * 8

    def voice_for(self, language: str) -> str:
        return "v-" + language


def test_speakable_tts_speaks_normalised_text_and_delegates_the_rest() -> None:
    inner = _Recorder()
    tts = SpeakableTts(inner)
    assert tts.name == "recorder"
    assert b"".join(tts.synthesize("Call 054-123-4567", language="en-US")) == b"\xff" * 8
    assert inner.texts == ["Call zero five four, one two three, four five six seven"]
    assert tts.voice_for("he") == "v-he"
