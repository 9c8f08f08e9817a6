"""English: numbers and the like as a person says them (``num2words`` for the words).

Rules run in this order, each on what the previous ones left as digits:
ISO dates, slashed dates (M/D/Y for US English, D/M/Y elsewhere), month-name dates,
times (``14:30``, ``8 am``; ``am``/``pm`` said as "in the morning/afternoon/evening"),
ranges of times (``8:00-18:00`` -> "... to ..."), prices (``$12.50``, ``₪200``,
``200 NIS``, ``€``, ``£``), phone numbers (digit by digit, in the groups they were
written in, or the usual 3-3-4 / 2-3-4 groups when written as one run), percentages,
ordinals (``3rd``), house numbers before a street (``1234 Main St`` -> "twelve
thirty-four Main Street"), years after a year cue (``in 2026``), decimals, and
plain numbers. Street-type abbreviations are spelled out after a capitalised name.
"""

from __future__ import annotations

import re

from num2words import num2words

__all__ = ["speakable_en", "cardinal", "digits"]

_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
]
_MONTH_ABBR = {m[:3].lower(): i + 1 for i, m in enumerate(_MONTHS)}
_MONTH_RE = (
    r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_STREET = {
    "st": "Street", "ave": "Avenue", "av": "Avenue", "rd": "Road", "blvd": "Boulevard", "ln": "Lane",
    "dr": "Drive", "ct": "Court", "hwy": "Highway", "sq": "Square", "pl": "Place",
}
_TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence"), "₪": ("shekel", "shekels", "agora", "agorot")}
_CURRENCY_WORDS = {"nis": "₪", "ils": "₪", "shekels": "₪", "shekel": "₪", "usd": "$", "dollars": "$", "eur": "€"}


def cardinal(n: int) -> str:
    """``1250`` -> "one thousand two hundred fifty" (US style: no commas, no "and")."""
    words = num2words(n).replace(",", "")
    return re.sub(r"\s+and\s+", " ", words)


def digits(s: str) -> str:
    return " ".join(_DIGIT_WORDS[int(d)] for d in s if d.isdigit())


def _ordinal(n: int) -> str:
    return num2words(n, to="ordinal").replace(",", "")


def _year(n: int) -> str:
    if 2000 <= n <= 2009:
        return cardinal(n)
    return num2words(n, to="year").replace(",", "")


def _date(month: int, day: int, year: int | None) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    out = f"{_MONTHS[month - 1]} {_ordinal(day)}"
    return f"{out}, {_year(year)}" if year else out


def _sub(pattern: str, fn, text: str, flags: int = re.IGNORECASE) -> str:  # type: ignore[no-untyped-def]
    def repl(m: re.Match[str]) -> str:
        out = fn(m)
        return m.group(0) if out is None else out

    return re.sub(pattern, repl, text, flags=flags)


def _clock(h: int, mi: int, suffix: str | None) -> str | None:
    if not (0 <= h <= 23 and 0 <= mi <= 59):
        return None
    suffix = (suffix or "").replace(".", "").lower()
    if suffix == "pm" and h < 12:
        h += 12
    elif suffix == "am" and h == 12:
        h = 0
    if mi == 0 and h == 12:
        return "noon"
    if mi == 0 and h == 0:
        return "midnight"
    h12 = h % 12 or 12
    if mi == 0:
        spoken = cardinal(h12) if (suffix or h >= 13) else f"{cardinal(h12)} o'clock"
    elif mi < 10:
        spoken = f"{cardinal(h12)} oh {cardinal(mi)}"
    else:
        spoken = f"{cardinal(h12)} {cardinal(mi)}"
    if suffix == "am" or (not suffix and h < 12 and h != h12):
        return f"{spoken} in the morning"
    if suffix == "pm" or h >= 12:
        part = "in the afternoon" if h < 18 else "in the evening"
        return f"{spoken} {part}"
    return spoken


def _money(symbol: str, whole: str, cents: str | None) -> str:
    one, many, minor_one, minor_many = _CURRENCY[symbol]
    n = int(whole.replace(",", ""))
    out = f"{cardinal(n)} {one if n == 1 else many}"
    if cents and int(cents.ljust(2, "0")[:2]):
        c = int(cents.ljust(2, "0")[:2])
        out += f" and {cardinal(c)} {minor_one if c == 1 else minor_many}"
    return out


def _phone(m: re.Match[str]) -> str | None:
    raw = m.group(0)
    plus = raw.lstrip().startswith("+")
    groups = [g for g in re.split(r"[\s\-.()]+", raw.replace("+", " ")) if g]
    total = sum(len(g) for g in groups)
    if total < 7 or not all(g.isdigit() for g in groups):
        return None
    if len(groups) == 1:
        run = groups[0]
        sizes = {7: [3, 4], 9: [2, 3, 4], 10: [3, 3, 4], 11: [1, 3, 3, 4] if run[0] == "1" else [3, 4, 4]}.get(len(run))
        if sizes is None:
            sizes = [3] * ((len(run) - 4) // 3) + [len(run) - 3 * ((len(run) - 4) // 3)]
        groups, pos = [], 0
        for size in sizes:
            groups.append(run[pos : pos + size])
            pos += size
    spoken = ", ".join(digits(g) for g in groups)
    return ("plus " if plus else "") + spoken


def speakable_en(text: str, region: str = "US") -> str:
    """English ``text`` with numbers, phone numbers, times, prices and dates in words."""
    t = text
    # Dates first: their digits would otherwise look like phone numbers or times.
    t = _sub(r"\b(\d{4})-(\d{2})-(\d{2})\b", lambda m: _date(int(m[2]), int(m[3]), int(m[1])), t)

    def slashed(m: re.Match[str]) -> str | None:
        a, b = int(m[1]), int(m[2])
        year = int(m[3]) if m[3] else None
        if year is not None and year < 100:
            year += 2000
        month, day = (a, b) if region == "US" else (b, a)
        return _date(month, day, year)

    t = _sub(r"(?<![\d/])(\d{1,2})/(\d{1,2})(?:/(\d{4}|\d{2}))?(?![\d/])", slashed, t)

    def month_day(m: re.Match[str]) -> str | None:
        month = _MONTH_ABBR[m["month"][:3].lower()]
        year = int(m["year"]) if m["year"] else None
        return _date(month, int(m["day"]), year)

    t = _sub(_MONTH_RE + r"\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?\b(?:,?\s+(?P<year>\d{4})\b)?", month_day, t)
    t = _sub(
        r"\b(?P<day>\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?" + _MONTH_RE + r"(?:,?\s+(?P<year>\d{4})\b)?",
        month_day,
        t,
    )
    # Times and ranges of them.
    time_re = r"(?:(\d{1,2})(?::(\d{2}))?\s*([ap]\.?m\.?)(?![a-z])|(\d{1,2}):(\d{2})(?!\d))"

    def parts(m: re.Match[str], at: int) -> tuple[int, int, str | None]:
        if m[at + 2]:
            return int(m[at]), int(m[at + 1] or 0), m[at + 2]
        return int(m[at + 3]), int(m[at + 4]), None

    def time(m: re.Match[str]) -> str | None:
        h, mi, suffix = parts(m, 1)
        out = _clock(h, mi, suffix)
        return out + "." if out and suffix and suffix.endswith(".") else out

    def time_range(m: re.Match[str]) -> str | None:
        (h1, m1, s1), (h2, m2, s2) = parts(m, 1), parts(m, 6)
        if s1 is None and h1 < 12 and (h2 >= 13 or (s2 or "").lower().startswith("p")):
            s1 = "am"  # 8:00-18:00: the morning is said, as the evening is
        first, second = _clock(h1, m1, s1), _clock(h2, m2, s2)
        if first is None or second is None:
            return None
        return f"{first} to {second}" + ("." if s2 and s2.endswith(".") else "")

    t = _sub(rf"(?<![\d:]){time_re}\s*[-–]\s*{time_re}", time_range, t)
    t = _sub(rf"(?<![\d:]){time_re}", time, t)
    # Money.
    t = _sub(
        r"([$€£₪])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?\b", lambda m: _money(m[1], m[2], m[3]), t
    )
    t = _sub(
        r"\b(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?\s?(₪|NIS\b|ILS\b|USD\b|EUR\b|€)",
        lambda m: _money(_CURRENCY_WORDS.get(m[3].lower(), m[3]), m[1], m[2]),
        t,
    )
    # Phone numbers: seven or more digits in digit groups.
    t = _sub(r"(?<![\w])\+?\(?\d[\d\s\-.()]{5,}\d(?![\w])", _phone, t)
    t = _sub(r"\b(\d+(?:\.\d+)?)\s?%", lambda m: f"{_number(m[1])} percent", t)
    t = _sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: _ordinal(int(m[1])), t)
    t = _sub(r"\b24/7\b", lambda m: "twenty-four seven", t)
    # Street addresses: a house number before a capitalised name and a street type.
    street_types = "|".join(list(_STREET) + [v.lower() for v in _STREET.values()])

    def house(m: re.Match[str]) -> str:
        n = m[1]
        if len(n) == 4 and n[2] != "0":
            spoken = f"{cardinal(int(n[:2]))} {cardinal(int(n[2:]))}"
        elif len(n) == 3 and n[1] != "0":
            spoken = f"{cardinal(int(n[0]))} {cardinal(int(n[1:]))}"
        else:
            spoken = cardinal(int(n))
        return f"{spoken} {m[2]}"

    t = re.sub(rf"\b(\d{{1,5}})\s+((?:[A-Z][\w']*\s+){{1,3}}(?i:{street_types})\b\.?)", house, t)
    t = re.sub(r"\b(Dr|Mr|Mrs|Ms)\.?(?= [A-Z])", lambda m: _TITLES[m[1]], t)
    t = re.sub(
        rf"(?<=[A-Za-z] )({'|'.join(_STREET)})\.?(?=[\s,;]|$)",
        lambda m: _STREET[m[1].lower()] if m[1][0].isupper() else m[0],
        t,
        flags=re.IGNORECASE,
    )
    t = _sub(r"\b(?:Apt|apt)\.?\s*(?=\d)", lambda m: "apartment ", t)
    t = _sub(r"(?<![\w])#\s?(?=\d)", lambda m: "number ", t)
    t = _sub(
        r"\b(in|since|by|until|of|year|from|to)\s+(1[1-9]\d\d|20\d\d)\b(?!\s*(?:%|percent))",
        lambda m: f"{m[1]} {_year(int(m[2]))}",
        t,
    )
    t = _sub(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\d])", lambda m: _number(m[0]), t)
    t = t.replace("&", " and ")
    return " ".join(t.split())


def _number(s: str) -> str:
    whole, _, frac = s.replace(",", "").partition(".")
    out = cardinal(int(whole)) if whole else "zero"
    return f"{out} point {digits(frac)}" if frac else out
