"""Hebrew: numbers and the like as a person says them.

``heb-tts-normalizer`` (MIT) reads numbers with gender agreement, currency
(``₪``, ``$``, agorot), clock times (12-hour, "בבוקר" / "בערב"), percentages and
abbreviations. A pre-pass here handles what it would misread:

- phone numbers: it reads them as one run of digits; here they are grouped as
  people say them (``054-123-4567`` -> "אפס חמש ארבע, אחת שתיים שלוש, ארבע חמש
  שש שבע"; a run of ten digits is cut 3-3-4, nine 2-3-4);
- ``3.12`` after a date cue (the prefix ב, "עד", "מ", "יום", "תאריך", a weekday) is
  a date, not the decimal it would read ("בשלושה בדצמבר", ``hebrew-num2words``'
  date words, Apache-2.0); elsewhere it stays a decimal;
- ranges: ``א'-ה'`` is "ראשון עד חמישי", and a dash between two times is "עד".
"""

from __future__ import annotations

import re

import hebrew_num2words
from heb_tts_normalizer import normalize

__all__ = ["speakable_he"]

_DIGITS = ["אפס", "אחת", "שתיים", "שלוש", "ארבע", "חמש", "שש", "שבע", "שמונה", "תשע"]
_DAYS = {"א": "ראשון", "ב": "שני", "ג": "שלישי", "ד": "רביעי", "ה": "חמישי", "ו": "שישי"}
_PREFIX = "[בלמהוכש]"
_DATE_CUE_WORDS = ("עד", "מ", "יום", "תאריך", "בתאריך", "ראשון", "שני", "שלישי", "רביעי", "חמישי", "שישי", "שבת")
_GERESH = "['׳]"


def _digits(group: str) -> str:
    return " ".join(_DIGITS[int(d)] for d in group)


def _phone(m: re.Match[str]) -> str | None:
    prefix, raw = m["prefix"] or "", m["num"]
    plus = raw.startswith("+")
    groups = [g for g in re.split(r"[\s\-.()+]+", raw) if g]
    if sum(len(g) for g in groups) < 7 or not all(g.isdigit() for g in groups):
        return None
    if len(groups) == 1:
        run = groups[0]
        sizes = {7: [3, 4], 9: [2, 3, 4], 10: [3, 3, 4]}.get(len(run))
        if sizes is None:
            sizes = [3] * ((len(run) - 4) // 3) + [len(run) - 3 * ((len(run) - 4) // 3)]
        groups, pos = [], 0
        for size in sizes:
            groups.append(run[pos : pos + size])
            pos += size
    spoken = ", ".join(_digits(g) for g in groups)
    return prefix.rstrip("-־") + ("פלוס " if plus else "") + spoken


def _date(m: re.Match[str]) -> str | None:
    day, month = int(m["day"]), int(m["month"])
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return None
    prefix = (m["prefix"] or "").rstrip("-־")
    return prefix + hebrew_num2words.expand_date(day, month, None)


def speakable_he(text: str) -> str:
    """Hebrew ``text`` with numbers, phone numbers, times, prices and dates in words."""
    t = text
    t = re.sub(
        rf"(?<![\w])([א-ו]){_GERESH}\s*[-–]\s*([א-ו]){_GERESH}",
        lambda m: f"{_DAYS[m[1]]} עד {_DAYS[m[2]]}",
        t,
    )
    t = re.sub(
        rf"(?P<prefix>(?<![\w]){_PREFIX}[-־]?)?(?P<num>(?<![\w])\+?\d[\d\s\-.()]{{5,}}\d)(?![\w])",
        lambda m: _phone(m) or m[0],
        t,
    )
    cue = "|".join(_DATE_CUE_WORDS)
    t = re.sub(
        r"(?<![\w.])(?P<prefix>[במל][-־]?)?(?P<day>\d{1,2})[./](?P<month>\d{1,2})(?![\d./])",
        lambda m: (_date(m) or m[0]) if (m["prefix"] or _after_cue(t, m.start(), cue)) else m[0],
        t,
    )
    t = re.sub(r"(\d{1,2}:\d{2})\s*[-–]\s*(\d{1,2}:\d{2})", r"\1 עד \2", t)
    return normalize(t)


def _after_cue(text: str, start: int, cue: str) -> bool:
    before = text[:start].rstrip().rsplit(maxsplit=1)
    return bool(before) and re.fullmatch(rf"(?:{cue})", before[-1]) is not None
