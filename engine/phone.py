"""Phone numbers as callers say them: finding, checking, reading back, correcting.

Pure functions, no state. A number is *valid* only when libphonenumber (the
``phonenumbers`` port) says it is a valid number for the business's country
(``region``, ISO 3166 alpha-2, e.g. ``IL``), or for the country it names when
said with a ``+``. Why libphonenumber rather than a digit count: a recognizer
that drops one digit of a ten-digit mobile number leaves nine digits that a
7-15 digit rule accepts; the country's numbering plan does not.

Spoken forms understood by :func:`find_runs`: digits with any separators
("054-987 65 43", "(054) 987..."), English digit words ("zero"/"oh" five four),
"double five", "triple seven", teens and tens ("sixty five" = 65, "nineteen"),
"hundred" ("eight hundred" = 800), Hebrew digit words (with a glued "ו":
"ושתיים"), and a leading "plus"/"פלוס". "to"/"for" are never digits.

Reading back (:func:`read_back`): digit by digit, grouped as the country writes
the number (``054-987-6543`` -> "0 5 4, 9 8 7, 6 5 4 3"), so a TTS says each
digit and pauses where a person would.

Corrections (:func:`correct`): a whole new number replaces the old one; fewer
digits replace the part they name ("the last digits are 4 5 6 8": the end;
"it starts with 0 5 2": the start) or, with no position named, the stretch of
the old number they differ from least ("no, it's five four" after "0 5 9, ..."
turns the "5 9" into "5 4"), preferring stretches that line up with the read-back
groups; a correction that gives no valid number is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

__all__ = [
    "Run", "PhoneCheck", "find_runs", "extract_phone", "check", "read_back", "correct", "typical_length",
    "is_digit_word", "problem_prompt", "MIN_DIGITS", "PHONE_PROMPTS",
]

#: What an agent says about a number, when the business profile's prompts do not
#: say it: ``{phone}`` is the read-back, ``{count}`` the digits heard.
PHONE_PROMPTS = {
    "en": {
        "confirm_phone": "I have {phone}. Is that right?",
        "phone_short": "I got {count} digits; could you say the whole number again, digit by digit?",
        "phone_invalid": "I heard {phone}, which is not a phone number I can use. Could you say the whole number again?",
        "phone_again": "Sorry about that. Could you say the number again, digit by digit?",
    },
    "he": {
        "confirm_phone": "רשמתי {phone}. זה נכון?",
        "phone_short": "קיבלתי רק {count} ספרות. אפשר לומר את כל המספר שוב, ספרה אחרי ספרה?",
        "phone_invalid": "שמעתי {phone}, וזה לא מספר טלפון תקין. אפשר לומר את כל המספר שוב?",
        "phone_again": "סליחה. אפשר לומר את המספר שוב, ספרה אחרי ספרה?",
    },
}

MIN_DIGITS, MAX_DIGITS = 7, 15  # a number-like run for extract_phone (E.164 has at most 15)

_EN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}
_EN_TEENS = {
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
    "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
}
_EN_TENS = {
    "twenty": "2", "thirty": "3", "forty": "4", "fourty": "4", "fifty": "5", "sixty": "6", "seventy": "7",
    "eighty": "8", "ninety": "9",
}
_HE_DIGITS = {
    "אפס": "0", "אחת": "1", "אחד": "1", "שתיים": "2", "שתים": "2", "שניים": "2", "שנים": "2",
    "שלוש": "3", "שלושה": "3", "ארבע": "4", "ארבעה": "4", "חמש": "5", "חמישה": "5", "שש": "6",
    "שישה": "6", "שבע": "7", "שבעה": "7", "שמונה": "8", "תשע": "9", "תשעה": "9",
}
_REPEAT = {"double": 2, "triple": 3}
_TOKEN = re.compile(r"\+?\d[\d\-.()/]*|[^\s,;:.!?()\-]+")
_SEPARATORS = " ,-.;:()/\t"


def _digit_word(tok: str) -> str | None:
    tok = tok.lower()
    if tok in _EN_DIGITS:
        return _EN_DIGITS[tok]
    if tok in _HE_DIGITS:
        return _HE_DIGITS[tok]
    if len(tok) > 2 and tok[0] == "ו" and tok[1:] in _HE_DIGITS:  # "ושתיים" = "and two"
        return _HE_DIGITS[tok[1:]]
    return None


def is_digit_word(tok: str) -> bool:
    """A word that reads as a digit or a number ("five", "oh", "sixty", "שבע")."""
    low = tok.lower()
    return _digit_word(low) is not None or low in _EN_TEENS or low in _EN_TENS


@dataclass(frozen=True, slots=True)
class Run:
    """A stretch of ``text`` that reads as digits: ``digits`` (a leading ``+`` kept)
    and the character span; ``strong`` is False for a run of "oh"s alone."""

    digits: str
    span: tuple[int, int]
    strong: bool

    @property
    def count(self) -> int:
        return len(self.digits.lstrip("+"))


def find_runs(text: str) -> list[Run]:
    """Every stretch of ``text`` that reads as digits, in order (see the module docstring)."""
    runs: list[Run] = []
    run, start, end, pending, strong = "", -1, -1, 1, False
    tens: str | None = None  # "sixty" waiting for a unit

    def close() -> None:
        nonlocal run, start, strong, tens
        if tens is not None:
            run += tens + "0"
            tens = None
        if run.lstrip("+"):
            runs.append(Run(run, (start, end), strong))
        run, start, strong = "", -1, False

    def add(digits: str, s: int, e: int, is_strong: bool = True) -> None:
        nonlocal run, start, end, pending, strong, tens
        if tens is not None:
            if len(digits) == 1 and digits != "0" and is_strong and pending == 1:
                digits, tens = tens + digits, None  # "sixty five"
            else:
                run += tens + "0"
                tens = None
        if start < 0:
            start = s
        run += digits * pending
        pending, end = 1, e
        strong = strong or is_strong

    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if start >= 0 and any(c not in _SEPARATORS for c in text[end : m.start()]):
            close()
            pending = 1
        if tok[0].isdigit() or (tok[0] == "+" and len(tok) > 1):
            digits = re.sub(r"\D", "", tok)
            if tok.startswith("+") and not run:
                digits = "+" + digits
            add(digits, m.start(), m.end())
            continue
        low = tok.lower()
        if low in _REPEAT:
            if start < 0:
                start = m.start()
            pending, end = _REPEAT[low], m.end()
            continue
        d = _digit_word(low)
        if d is not None:
            add(d, m.start(), m.end(), low not in ("oh", "o"))
            continue
        if low in _EN_TEENS:
            add(_EN_TEENS[low], m.start(), m.end())
            continue
        if low in _EN_TENS:
            add("", m.start(), m.end())
            tens = _EN_TENS[low]
            continue
        if low in ("hundred", "thousand") and run.lstrip("+"):
            add("00" if low == "hundred" else "000", m.start(), m.end())
            continue
        if low in ("dash", "hyphen", "plus", "פלוס", "מקף"):
            if low in ("plus", "פלוס") and not run:
                run, start, end = "+", m.start(), m.end()
            elif start >= 0:
                end = m.end()
            continue
        if start >= 0:
            close()
        pending = 1
    if start >= 0:
        close()
    return runs


def extract_phone(text: str, *, min_digits: int = MIN_DIGITS) -> tuple[str, tuple[int, int]] | None:
    """The longest run of ``min_digits``-15 digits: ``(digits, (start, end))``, or ``None``.

    "oh"/"o" alone never make a number; ``digits`` keeps a leading ``+``."""
    best: Run | None = None
    for r in find_runs(text):
        if r.strong and min_digits <= r.count <= MAX_DIGITS and (best is None or r.count > best.count):
            best = r
    return (best.digits, best.span) if best else None


# ----------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class PhoneCheck:
    """What a run of digits is as a phone number of ``region``.

    ``problem``: ``""`` (valid), ``"short"`` / ``"long"`` (fewer / more digits than
    the country's numbers have as dialled at home, see :func:`typical_length`) or
    ``"invalid"`` (that length, but not a number the country's plan allows).
    ``e164`` only when valid."""

    digits: str
    problem: str
    e164: str = ""
    groups: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problem

    @property
    def count(self) -> int:
        return len(self.digits.lstrip("+"))


def check(digits: str, region: str) -> PhoneCheck:
    """Check ``digits`` (as said, a leading ``+`` for an international number; other
    characters than digits are ignored)."""
    digits = _plain(digits)
    try:
        num = phonenumbers.parse(digits, region.upper() if region else None)
    except NumberParseException as exc:
        short = exc.error_type in (NumberParseException.TOO_SHORT_NSN, NumberParseException.TOO_SHORT_AFTER_IDD)
        return PhoneCheck(digits, "short" if short else "invalid")
    if phonenumbers.is_valid_number(num):
        international = digits.startswith("+")
        fmt = PhoneNumberFormat.INTERNATIONAL if international else PhoneNumberFormat.NATIONAL
        groups = tuple(re.findall(r"\d+", phonenumbers.format_number(num, fmt)))
        if "".join(groups) != digits.lstrip("+"):
            groups = _chunks(digits.lstrip("+"))  # said differently from how the plan writes it
        return PhoneCheck(digits, "", phonenumbers.format_number(num, PhoneNumberFormat.E164), groups)
    reason = phonenumbers.is_possible_number_with_reason(num)
    count = len(digits.lstrip("+"))
    if reason == ValidationResult.TOO_SHORT or (not digits.startswith("+") and count < typical_length(region)):
        return PhoneCheck(digits, "short")
    if reason == ValidationResult.TOO_LONG or (not digits.startswith("+") and count > typical_length(region)):
        return PhoneCheck(digits, "long")
    return PhoneCheck(digits, "invalid")


def typical_length(region: str) -> int:
    """Digits in a mobile number of ``region`` as dialled at home (IL: 10, US: 10);
    10 when the region is unknown. Fewer heard means the caller was cut short."""
    example = phonenumbers.example_number_for_type(region.upper(), phonenumbers.PhoneNumberType.MOBILE) if region else None
    if example is None:
        return 10
    return len(re.sub(r"\D", "", phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL)))


def problem_prompt(result: PhoneCheck, region: str) -> tuple[str, dict[str, str]]:
    """The prompt key and values that tell a caller what was wrong with ``result``."""
    values = {"count": str(result.count), "phone": read_back(result.digits, region)}
    return ("phone_short" if result.problem == "short" else "phone_invalid"), values


def _plain(digits: str) -> str:
    return ("+" if digits.strip().startswith("+") else "") + re.sub(r"\D", "", digits)


def _chunks(digits: str) -> tuple[str, ...]:
    """Threes, with a last group of four (as numbers are often said) when it fits."""
    out: list[str] = []
    rest = digits
    while len(rest) > 4:
        out.append(rest[:3])
        rest = rest[3:]
    return (*out, rest) if rest else tuple(out)


def read_back(digits: str, region: str, *, plus_word: str = "plus") -> str:
    """``digits`` to be spoken digit by digit, grouped: "0 5 4, 9 8 7, 6 5 4 3"."""
    digits = _plain(digits)
    result = check(digits, region)
    groups = result.groups or _chunks(digits.lstrip("+"))
    spoken = ", ".join(" ".join(g) for g in groups)
    return f"{plus_word} {spoken}" if digits.startswith("+") else spoken


# ----------------------------------------------------------------- corrections

_SUFFIX_CUE = re.compile(r"\b(?:last|end|ends|ending|final)\b|אחרונ|בסוף|נגמר", re.I)
_PREFIX_CUE = re.compile(r"\b(?:first|start|starts|starting|begins|beginning)\b|ראשונ|מתחיל|בהתחלה", re.I)


def correct(old: str, text: str, region: str) -> str | None:
    """The number ``text`` corrects ``old`` to (valid for ``region``), or ``None``."""
    runs = [r for r in find_runs(text) if r.strong]
    if not runs:
        return None
    said = max(runs, key=lambda r: r.count).digits
    if check(said, region).valid:
        return said  # a whole new number
    plain_old, part = old.lstrip("+"), said.lstrip("+")
    prefix = "+" if old.startswith("+") else ""
    if len(part) >= len(plain_old) or not part:
        return None
    groups = check(old, region).groups or _chunks(plain_old)
    if _SUFFIX_CUE.search(text):
        candidates = [len(plain_old) - len(part)]
    elif _PREFIX_CUE.search(text):
        candidates = [0]
    elif part in groups:
        return None  # the caller repeated a group as it was read: nothing to change
    else:
        candidates = _closest_windows(plain_old, part, groups)
    for i in candidates:
        fixed = prefix + plain_old[:i] + part + plain_old[i + len(part) :]
        if fixed != old and check(fixed, region).valid:
            return fixed
    return None


def _closest_windows(old: str, part: str, groups: tuple[str, ...]) -> list[int]:
    """Start positions where ``part`` could replace digits of ``old``, best first:
    fewest differing digits (never none, at most half of them), then lined up with
    a read-back group."""
    bounds = {0}
    at = 0
    for g in groups:
        at += len(g)
        bounds.add(at)
    scored = []
    for i in range(len(old) - len(part) + 1):
        diff = sum(a != b for a, b in zip(old[i : i + len(part)], part))
        if diff == 0 or diff > (len(part) + 1) // 2:
            continue
        aligned = i in bounds or i + len(part) in bounds
        scored.append((diff, not aligned, i))
    return [i for _, _, i in sorted(scored)]
