"""Text understanding for the rule planner: normalising, FAQ token matching,
goodbyes, and the caller's name and need as they said them.

Pure functions over one user turn; ``engine.providers.rules_planner`` decides what
to do with what they find. Hebrew and English. Phone numbers are ``engine.phone``.
Names keep the caller's casing and punctuation ("McDonald", "O'Brien", "Bat-Sheva");
a need keeps the caller's words from the first to the last clause that names a
problem, without the lead-in ("I have", "יש לי").
"""

from __future__ import annotations

import difflib
import re
import unicodedata

from engine.phone import is_digit_word

# ----------------------------------------------------------------- text helpers

_HEBREW = re.compile(r"[\u0590-\u05FF]")
_NIQQUD = re.compile(r"[\u0591-\u05C7]")
_WORD = re.compile(r"[\w'\u05F3\u05F4\"]+", re.UNICODE)
SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])\s+")
_HE_PREFIXES = "והבלמשכ"  # conjunction/preposition/article letters glued to a word


def _norm(text: str) -> str:
    """Lower-case, NFC, niqqud and smart quotes removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = _NIQQUD.sub("", text)
    text = text.replace("’", "'").replace("‘", "'").replace("`", "'")
    return " ".join(text.lower().split())


def tokens(text: str) -> list[str]:
    return [t.strip("'\"") for t in _WORD.findall(_norm(text)) if t.strip("'\"")]


def is_hebrew(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    return sum(1 for c in letters if _HEBREW.match(c)) * 2 >= len(letters)


def _stem(tok: str) -> str:
    """A deliberately small stemmer: enough to make 'opening' meet 'open'."""
    if _HEBREW.match(tok):
        return tok
    for suffix in ("ing", "ed", "es", "s"):
        if len(tok) > len(suffix) + 2 and tok.endswith(suffix):
            return tok[: -len(suffix)]
    return tok


def variants(tok: str) -> set[str]:
    """The token, its stem, and for Hebrew the word without up to two glued prefixes."""
    out = {tok, _stem(tok)}
    if _HEBREW.match(tok):
        rest = tok
        for _ in range(2):
            if len(rest) > 2 and rest[0] in _HE_PREFIXES:
                rest = rest[1:]
                out.add(rest)
            else:
                break
    return out


def _token_matches(phrase_tok: str, text_variants: list[set[str]]) -> bool:
    targets = variants(phrase_tok)
    for vs in text_variants:
        if targets & vs:
            return True
    if len(phrase_tok) >= 5:  # tolerate ASR/typing slips on longer words only
        for vs in text_variants:
            for v in vs:
                if len(v) >= 4 and difflib.SequenceMatcher(None, phrase_tok, v).ratio() >= 0.85:
                    return True
    return False


# Function words weigh little in FAQ matching; question words weigh a bit more.
_EN_STOP = frozenset(
    "a an the is are am be do does did you your yours i me my we our us it its to of in on at for "
    "and or with can could would will please there this that".split()
)
_EN_QUESTION = frozenset("what when where which who how why".split())
_HE_STOP = frozenset("אני אתה את אתם אתן הוא היא אנחנו של זה זו יש לי לך לכם עם על אם גם רק".split())
_HE_QUESTION = frozenset("מה מתי איפה איזה איזו באיזה באיזו כמה למה מי".split())

FAQ_THRESHOLD = 0.8


def _weight(tok: str) -> float:
    if tok in _EN_STOP or tok in _HE_STOP:
        return 0.3
    if tok in _EN_QUESTION or tok in _HE_QUESTION:
        return 0.6
    return 1.0


def phrase_score(phrase: str, text_variants: list[set[str]]) -> float:
    """Weighted share of the phrase's tokens present in the text (0..1)."""
    ptoks = tokens(phrase)
    if not ptoks:
        return 0.0
    total = sum(_weight(t) for t in ptoks)
    got = sum(_weight(t) for t in ptoks if _token_matches(t, text_variants))
    # A phrase made only of function words ("how much") must match as a whole.
    if all(_weight(t) < 1.0 for t in ptoks):
        return 1.0 if got == total else 0.0
    return got / total


# ----------------------------------------------------------------- goodbye

_EN_GOODBYE = (
    "bye", "goodbye", "bye bye", "good bye", "that's all", "that is all", "that's it", "no thanks",
    "no thank you", "no that's it", "no that's all", "nothing else", "see you", "have a nice day",
)
_HE_GOODBYE = ("ביי", "להתראות", "זהו", "לא תודה", "זה הכל", "זה הכול", "שלום ותודה", "יום טוב", "תודה זהו")
_BARE_NO = frozenset(("no", "nope", "nah", "no no", "לא", "לא לא"))
_MAX_GOODBYE_WORDS = 7  # a longer utterance is a request that happens to contain "that's all"


def is_goodbye(text: str, after_confirm: bool) -> bool:
    norm = " ".join(tokens(text))
    if not norm:
        return False
    words = norm.split()
    if after_confirm and norm in _BARE_NO:
        return True
    if words[-1] in ("bye", "goodbye", "ביי", "להתראות"):
        return True
    if len(words) > _MAX_GOODBYE_WORDS:
        return False
    padded = f" {norm} "
    return any(f" {p} " in padded for p in _EN_GOODBYE + _HE_GOODBYE)


# ----------------------------------------------------------------- name

# Words that follow "I'm" / "this is" / "it's" but are not names.
_EN_NOT_NAME = frozenset(
    """
    a an the and or but so just very not no yes yeah yep sure ok okay hi hello hey well um uh er
    calling looking having trying wondering interested here there fine good great sorry new
    back home free busy available ready sure afraid glad happy still also from in at on with
    about for to of my your his her our their this that it is was be been i me you we they
    need want would like have has had got get call calling phone number name leak leaking
    broken fix repair pipe pipes boiler sink toilet plumber plumbing problem urgent emergency
    thanks thank please bye goodbye what when where why how who which tomorrow today tonight
    morning evening afternoon now later asking wanted going gonna hmm hm mm mhm ah oh huh erm
    what's whats pardon again repeat
    """.split()
)
_HE_NOT_NAME = frozenset(
    """
    צריך צריכה רוצה רוצים מחפש מחפשת מתקשר מתקשרת גר גרה פה כאן בבית לא כן בסדר טוב
    שמח שמחה רק גם יש לי תקלה בעיה נזילה סתימה מעוניין מעוניינת חושב חושבת יודע יודעת
    זה זו הוא היא מה איך למה מתי איפה תודה שלום ביי להתראות מספר טלפון השם שלי
    """.split()
)
_EN_NAME_STRONG = re.compile(r"\b(?:my name is|my name's|name is|the name is|name's)\s+(.+)", re.I)
_EN_NAME_WEAK = re.compile(r"\b(?:i'm|i am|im|this is|it's|it is|call me|here is|speaking is)\s+(.+)", re.I)
_HE_NAME_STRONG = re.compile(r"(?:קוראים לי|השם שלי(?: הוא| היא)?|שמי(?: הוא| היא)?)\s+(.+)")
_HE_NAME_WEAK = re.compile(r"(?:^|\s)(?:אני|זה|זאת|מדבר|מדברת)\s+(.+)")
_NAME_STOP = re.compile(r"[,.;:!?]|\s(?:and|from|calling|i|i'm|ו?אני|ואני|מ)\s", re.I)
_NAME_WORD = re.compile(r"^[^\W\d_]+(?:['\-][^\W\d_]+)*$", re.UNICODE)  # O'Brien, Bat-Sheva


def _clean_name(candidate: str, strict: bool) -> tuple[str, int] | None:
    """Take 1-3 name words from the start of ``candidate``; ``None`` if they are not a name.

    Returns ``(name, consumed)`` where ``consumed`` is how many characters of
    ``candidate`` the name words span. ``strict`` (weak patterns, unprompted): the
    first word must be capitalised in Latin script (Hebrew has no case).
    """
    stop = _NAME_STOP.search(" " + candidate + " ")
    if stop:
        candidate = candidate[: max(0, stop.start() - 1)]
    names: list[str] = []
    consumed = 0
    for m in re.finditer(r"\S+", candidate):
        if len(names) == 3:
            break
        w = m.group(0).strip("\"'")
        low = w.lower()
        if not _NAME_WORD.match(w) or low in _EN_NOT_NAME or w in _HE_NOT_NAME:
            break
        if is_digit_word(low) and low not in ("o", "oh"):
            break
        names.append(w)
        consumed = m.end()
    if not names:
        return None
    if strict and not _HEBREW.match(names[0]) and not names[0][0].isupper():
        return None
    return " ".join(names), consumed  # as said: no re-casing ("McDonald", "de la Cruz")


_YES = ("yes", "yeah", "sure", "ok", "okay", "כן", "בטח", "בסדר")


def extract_name(text: str, *, asked: bool) -> tuple[str, tuple[int, int]] | None:
    """Find the caller's name; ``asked`` means we just asked for it (bare replies count).

    Returns ``(name, (start, end))``: the span covers the introducing phrase and the
    name words, so the caller can look for other slots in what is left.
    """
    patterns = [(_EN_NAME_STRONG, False), (_HE_NAME_STRONG, False), (_EN_NAME_WEAK, not asked)]
    if asked:  # Hebrew has no capitals to tell "אני דוד" from "אני צריך": only when asked
        patterns.append((_HE_NAME_WEAK, False))
    for pattern, strict in patterns:
        for m in pattern.finditer(text):
            found = _clean_name(m.group(1), strict)
            if found:
                return found[0], (m.start(), m.start(1) + found[1])
    if asked:
        words = [w for w in tokens(text) if w not in _YES]
        if 1 <= len(words) <= 3 and not re.search(r"\d", text):
            bare = " ".join(w for w in re.split(r"[\s,.!?]+", text) if w and w.lower() not in _YES)
            found = _clean_name(bare, strict=False)
            if found and len(found[0].split()) == len(words):
                return found[0], (0, len(text))
    return None


# ----------------------------------------------------------------- need

_EN_PROBLEM = frozenset(
    """
    leak leaks leaking leaked leaky drip dripping broken broke break burst fix fixing repair repairs
    replace replacing install installing installation clog clogged clogging blocked blockage block
    boiler boilers pipe pipes sink sinks toilet toilets drain drains shower tap taps faucet heater
    flood flooding flooded pressure sewer sewage bath bathtub noise smell stuck overflow
    overflowing water heating radiator valve
    """.split()
)
_HE_PROBLEM = frozenset(
    """
    נזילה נזילות נוזל נוזלת דולף דולפת דליפה סתימה סתום סתומה תיקון לתקן תקלה דוד צינור צינורות
    צנרת שבור שבורה התקנה להתקין ברז אסלה כיור מקלחת ביוב הצפה מים החלפה להחליף
    """.split()
)
_EN_NEED_PREFIX = re.compile(
    r"^(?:(?:hi|hello|hey|yes|yeah|so|well|um|uh|ok|okay)[,.!]?\s+)*"
    r"(?:(?:i|we)(?:'ve| have)? (?:have|got|need|want|would like|'d like)(?: to (?:get|book|have))?\s+"
    r"|(?:i|we)'d like (?:to (?:get|book|have)\s+)?|there(?:'s| is)\s+"
    r"|(?:i'm|i am) calling (?:about|because of|for)\s+)?",
    re.I,
)
_HE_NEED_PREFIX = re.compile(
    r"^(?:(?:שלום|היי|כן|אז)[,.!]?\s+)*(?:יש לי\s+|יש לנו\s+|אני צריך\s+|אני צריכה\s+|צריך\s+|צריכה\s+)?"
)


def has_problem_word(text: str) -> bool:
    for tok in tokens(text):
        if variants(tok) & (_EN_PROBLEM | _HE_PROBLEM):
            return True
    return False


def clean_need(text: str) -> str:
    text = text.strip(" ,.;:!?-")
    text = _HE_NEED_PREFIX.sub("", text) if is_hebrew(text) else _EN_NEED_PREFIX.sub("", text)
    text = text.strip(" ,.;:!?-")
    if text and not is_hebrew(text) and not text[:2].isupper():
        text = text[0].lower() + text[1:]
    return text


_PHONE_INTRO = re.compile(
    r"(?:\b(?:and\s+)?(?:my\s+)?(?:phone(?:\s+number)?|number|cell|mobile)(?:\s+is|'s)?|"
    r"\b(?:and\s+)?(?:i'm|i am|you can reach me|reach me|call me(?:\s+back)?)(?:\s+(?:at|on))?|\b(?:at|on)|"
    r"(?:ו?המספר שלי(?: הוא)?|ו?הטלפון שלי(?: הוא)?|מספר|טלפון))[\s:,-]*$",
    re.I,
)


def remove_span(text: str, span: tuple[int, int] | None, *, phone: bool = False) -> str:
    """``text`` without ``span`` (and, for a phone, the words introducing it)."""
    if span is None:
        return text
    head = text[: span[0]]
    if phone:
        head = _PHONE_INTRO.sub("", head)
    return (head.rstrip() + " , " + text[span[1]:]).strip(" ,")


_CLAUSE_SPLIT = re.compile(
    r"(?<=[.!?;,])\s+(?=(?:and\s+|but\s+)?(?:i|i'm|we|it|my|the|our)\b)"  # ", my toilet..."
    r"|(?<=[.!?;])\s+"  # sentence ends
    r"|\s+(?:and|but)\s+(?=(?:i|i'm|we|it's)\b)",  # "... and I'm at ..."
    re.I,
)


def need_clause(text: str) -> str:
    """The clauses of ``text`` from the first to the last that holds a problem word
    (or the whole text): the caller's own words, only the unrelated ones around cut."""
    clauses = _clause_spans(text)
    hits = [i for i, (a, b) in enumerate(clauses) if has_problem_word(text[a:b])]
    if not hits:
        return text
    return text[clauses[hits[0]][0] : clauses[hits[-1]][1]]


def _clause_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _CLAUSE_SPLIT.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return spans
