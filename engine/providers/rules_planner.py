"""The embedded language planner: rules driven entirely by the business profile.

No model, no network: each user turn is matched against goodbye intents, the
profile's FAQ and the lead slots (``lead_fields``: name, phone, need), and the
reply is assembled from the profile's per-language ``prompts`` (``ask_name``,
``ask_phone``, ``ask_need``, ``confirm``, ``goodbye``, ``fallback``, optional
``sorry``). English and Hebrew are understood; a conversation answers in the
business language unless the user writes in the other supported one.

Why a pure planning step: ``Conversation.reply`` must not change state (a reply may
be speculative, started on a partial transcript, or interrupted), while ``commit``
applies what really happened. So all logic lives in ``_plan(state, text)``, a pure
function returning the events and the *next* state; ``reply`` streams the events and
throws the state away, ``commit`` recomputes the same plan on the committed state
and keeps it. Restoring a WhatsApp chat from the store is the same thing: re-run
``_plan`` over the stored user turns.

The phone slot (``_phone_step``; parsing, validity and corrections in
``engine.phone``): a number counts only when it is valid for the business's
``country``. On a call it is read back digit by digit, grouped, and the lead is
complete only after the caller's "yes"; "no" asks again, digits correct it. A
short or invalid number is not stored: the caller hears how many digits came
through, and digits said next may complete it. In a chat (typed) a valid number
needs no read-back. Names and needs keep the caller's words and casing.

Rejected: keyword tables per business (the FAQ phrases already say what to match)
and regexes per FAQ entry (too brittle for ASR output). FAQ matching is weighted
token coverage with light stemming (English suffixes, Hebrew one-letter prefixes)
and a difflib fallback for misspelt tokens; the threshold was tuned on the demo
questions and a list of unrelated sentences (see tests/test_rules_planner.py).

Threads: a provider object is shared by the process and holds no per-call state.
Each ``RulesConversation`` has one owner (the planner actor's pykka thread, or the
chat tree's planner); it is not safe to use one conversation from two threads.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from engine.business import Business, FaqEntry
from engine.messages import CancelToken, EndCall, LeadCaptured, TextDelta
from engine.phone import PHONE_PROMPTS, check, correct, extract_phone, find_runs, is_digit_word, problem_prompt, read_back
from engine.providers.base import PlannerEvent

__all__ = ["RulesPlanner", "RulesConversation", "extract_phone", "extract_name"]

_CHANNELS = ("call", "chat")
_MAX_TEXT = 1000  # characters of one user turn that are read (a pasted essay is cut, not parsed)

# ----------------------------------------------------------------- text helpers

_HEBREW = re.compile(r"[\u0590-\u05FF]")
_NIQQUD = re.compile(r"[\u0591-\u05C7]")
_WORD = re.compile(r"[\w'\u05F3\u05F4\"]+", re.UNICODE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])\s+")
_HE_PREFIXES = "והבלמשכ"  # conjunction/preposition/article letters glued to a word


def _norm(text: str) -> str:
    """Lower-case, NFC, niqqud and smart quotes removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = _NIQQUD.sub("", text)
    text = text.replace("’", "'").replace("‘", "'").replace("`", "'")
    return " ".join(text.lower().split())


def _tokens(text: str) -> list[str]:
    return [t.strip("'\"") for t in _WORD.findall(_norm(text)) if t.strip("'\"")]


def _is_hebrew(text: str) -> bool:
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


def _variants(tok: str) -> set[str]:
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
    targets = _variants(phrase_tok)
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

_FAQ_THRESHOLD = 0.8


def _weight(tok: str) -> float:
    if tok in _EN_STOP or tok in _HE_STOP:
        return 0.3
    if tok in _EN_QUESTION or tok in _HE_QUESTION:
        return 0.6
    return 1.0


def _phrase_score(phrase: str, text_variants: list[set[str]]) -> float:
    """Weighted share of the phrase's tokens present in the text (0..1)."""
    ptoks = _tokens(phrase)
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


def _is_goodbye(text: str, after_confirm: bool) -> bool:
    norm = " ".join(_tokens(text))
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
        words = [w for w in _tokens(text) if w not in _YES]
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


def _has_problem_word(text: str) -> bool:
    for tok in _tokens(text):
        if _variants(tok) & (_EN_PROBLEM | _HE_PROBLEM):
            return True
    return False


def _clean_need(text: str) -> str:
    text = text.strip(" ,.;:!?-")
    text = _HE_NEED_PREFIX.sub("", text) if _is_hebrew(text) else _EN_NEED_PREFIX.sub("", text)
    text = text.strip(" ,.;:!?-")
    if text and not _is_hebrew(text) and not text[:2].isupper():
        text = text[0].lower() + text[1:]
    return text


_PHONE_INTRO = re.compile(
    r"(?:\b(?:and\s+)?(?:my\s+)?(?:phone(?:\s+number)?|number|cell|mobile)(?:\s+is|'s)?|"
    r"\b(?:and\s+)?(?:i'm|i am|you can reach me|reach me|call me(?:\s+back)?)(?:\s+(?:at|on))?|\b(?:at|on)|"
    r"(?:ו?המספר שלי(?: הוא)?|ו?הטלפון שלי(?: הוא)?|מספר|טלפון))[\s:,-]*$",
    re.I,
)


def _remove_span(text: str, span: tuple[int, int] | None, *, phone: bool = False) -> str:
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


def _need_clause(text: str) -> str:
    """The clauses of ``text`` from the first to the last that holds a problem word
    (or the whole text): the caller's own words, only the unrelated ones around cut."""
    clauses = _clause_spans(text)
    hits = [i for i, (a, b) in enumerate(clauses) if _has_problem_word(text[a:b])]
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


# ----------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class _State:
    """Everything a conversation remembers between committed turns (immutable)."""

    lang: str
    fields: Mapping[str, str] = field(default_factory=dict)
    asked: str | None = None  # the slot we last asked for ("phone_confirm": the read-back)
    phone_ok: bool = False  # the phone is valid and (on a call) the caller confirmed it
    phone_partial: str = ""  # digits of an incomplete number, joined with the next ones
    confirmed: bool = False  # the confirm prompt ("Anything else?") was the last thing said
    faq_topics: tuple[str, ...] = ()
    ended: bool = False
    turns: int = 0


@dataclass(frozen=True, slots=True)
class _Plan:
    sentences: tuple[str, ...]
    lead: LeadCaptured | None
    end: EndCall | None
    state: _State


class _SafeFields(dict):
    def __missing__(self, key: str) -> str:
        return ""


def _fmt(template: str, values: Mapping[str, str]) -> str:
    """``str.format_map`` that never raises on a business's malformed template."""
    try:
        return template.format_map(_SafeFields(values))
    except (ValueError, IndexError, AttributeError, KeyError):
        return template


_DEFAULTS = {
    "en": {
        "ask_need": "What do you need help with?",
        "ask_name": "Can I have your name, please?",
        "ask_phone": "What is the best phone number to reach you?",
        "confirm": "Thanks {name}. We will call you at {phone} about {need}.",
        "goodbye": "Thank you for calling. Goodbye!",
        "fallback": "Sorry, I didn't catch that. Could you say it in a few words?",
        "sorry": "Sorry, I didn't catch that.",
        "anything_else": "Anything else I can help with?",
    },
    "he": {
        "ask_need": "במה אפשר לעזור?",
        "ask_name": "מה השם שלך, בבקשה?",
        "ask_phone": "מה מספר הטלפון הכי טוב להשיג אותך?",
        "confirm": "תודה {name}. נחזור אליך למספר {phone} בנושא {need}.",
        "goodbye": "תודה ולהתראות!",
        "fallback": "סליחה, לא הבנתי. אפשר לומר את זה בכמה מילים?",
        "sorry": "סליחה, לא הבנתי.",
        "anything_else": "עוד משהו?",
    },
}


class RulesConversation:
    """One call or chat answered by rules (implements ``Conversation``).

    ``reply`` is pure with respect to the conversation: calling it twice with the
    same text yields the same events; only ``commit`` moves the state. Runs on its
    owner's thread (the planner actor's pykka thread); never blocks, never raises on
    user text.
    """

    def __init__(self, business: Business, *, channel: str, history: Iterable[tuple[str, str]] = ()) -> None:
        if channel not in _CHANNELS:
            raise ValueError(f"channel must be one of {_CHANNELS}, got {channel!r}")
        self._biz = business
        self._channel = channel
        self._state = _State(lang=business.lang if business.lang in _DEFAULTS else "en")
        self._history: list[tuple[str, str]] = []
        for role, text in history:
            if role not in ("user", "assistant", "agent"):
                raise ValueError(f"history role must be 'user' or 'assistant', got {role!r}")
            if role == "user":  # the plan is deterministic: replaying user turns rebuilds the state
                self._state = self._plan(self._state, text).state
            self._history.append((role, text))

    # -------------------------------------------------------------- interface

    def reply(self, user_text: str, *, cancel: CancelToken) -> Iterator[PlannerEvent]:
        """Stream the answer to ``user_text``: ``LeadCaptured`` first (if any), one
        ``TextDelta`` per sentence, then ``EndCall`` (if any). Stops between events
        once ``cancel`` is set. Does not change the conversation."""
        plan = self._plan(self._state, user_text)
        if cancel.cancelled:
            return
        if plan.lead is not None:
            yield plan.lead
        for sentence in plan.sentences:
            if cancel.cancelled:
                return
            yield TextDelta(sentence)
        if plan.end is not None and not cancel.cancelled:
            yield plan.end

    def commit(self, user_text: str, agent_text: str, *, interrupted: bool = False) -> None:
        """Apply one finished turn. Lead slots the user gave are kept even when the
        reply was interrupted (the user did say them)."""
        if user_text:
            self._state = self._plan(self._state, user_text).state
            self._history.append(("user", user_text))
        if agent_text:
            self._history.append(("assistant", agent_text))
        if interrupted:
            # The caller did not hear the whole confirm/goodbye: do not treat a bare
            # "no" as the answer to "Anything else?".
            self._state = dataclasses.replace(self._state, confirmed=False)

    def summary(self) -> str:
        """One line: need, name, phone, FAQ topics asked (only what is known)."""
        s = self._state
        parts = [f"{k}: {s.fields[k]}" for k in ("need", "name", "phone") if s.fields.get(k)]
        parts += [f"{k}: {v}" for k, v in s.fields.items() if k not in ("need", "name", "phone") and v]
        if s.faq_topics:
            parts.append("asked about: " + ", ".join(s.faq_topics))
        if not parts:
            return f"{s.turns} turn(s), nothing captured"
        return "; ".join(parts)

    # -------------------------------------------------------------- read-only views

    @property
    def lead(self) -> dict[str, str]:
        """The committed lead fields (a copy)."""
        return dict(self._state.fields)

    @property
    def history(self) -> list[tuple[str, str]]:
        return list(self._history)

    @property
    def ended(self) -> bool:
        return self._state.ended

    # -------------------------------------------------------------- planning

    def _p(self, key: str, lang: str) -> str:
        return (
            self._biz.prompt(key, lang)
            or _DEFAULTS.get(lang, _DEFAULTS["en"]).get(key, "")
            or PHONE_PROMPTS.get(lang, PHONE_PROMPTS["en"]).get(key, "")
        )

    def _match_faq(self, text: str, lang: str) -> tuple[FaqEntry, str] | None:
        tv = [_variants(t) for t in _tokens(text)]
        if not tv:
            return None
        best: tuple[float, FaqEntry, str] | None = None
        for entry in self._biz.faq:
            phrases = entry.questions.get(lang) or ()
            for phrase in phrases:
                score = _phrase_score(phrase, tv)
                if score >= _FAQ_THRESHOLD and (best is None or score > best[0]):
                    best = (score, entry, phrase)
        if best is None:
            return None
        entry = best[1]
        topic = (entry.questions.get(self._biz.lang) or entry.questions.get(lang) or (best[2],))[0]
        return entry, topic

    def _format_fields(self, fields: Mapping[str, str], lang: str) -> dict[str, str]:
        out = dict(fields)
        phone = out.get("phone", "")
        if phone and self._channel == "call":
            # Digit by digit, grouped as the country writes it: a TTS would say
            # "five hundred forty million..." for the bare digits.
            out["phone"] = read_back(phone, self._biz.country, plus_word="פלוס" if lang == "he" else "plus")
        return out

    def _plan(self, state: _State, text: str) -> _Plan:
        """The whole decision for one user turn; pure (no attribute of ``self`` changes)."""
        text = text[:_MAX_TEXT]
        lang = state.lang
        if _is_hebrew(text) and "he" in self._supported():
            lang = "he"
        elif text.strip() and not _is_hebrew(text) and re.search(r"[a-zA-Z]", text) and "en" in self._supported():
            lang = "en"
        wanted = self._biz.lead_fields
        fields = dict(state.fields)
        newly: list[str] = []
        rest = text

        # Lead slots first: they may ride along with anything else.
        phone = _PhoneStep(state.phone_ok, state.phone_partial)
        if "phone" in wanted:
            rest = self._phone_step(state, text, fields, phone)
            if phone.changed:
                newly.append("phone")
        if "name" in wanted and phone.event not in ("confirmed", "again"):
            found_name = extract_name(rest, asked=state.asked == "name")
            if found_name:
                if fields.get("name") != found_name[0]:
                    newly.append("name")
                fields["name"] = found_name[0]
                rest = _remove_span(rest, found_name[1])

        complete_before = bool(wanted) and all(fields.get(f) for f in wanted) and ("phone" not in wanted or phone.ok)
        goodbye = not phone.event and _is_goodbye(text, state.confirmed or complete_before)
        faq = None if goodbye or phone.event in ("confirmed", "again") else self._match_faq(rest, lang)

        if "need" in wanted and not goodbye and phone.event not in ("confirmed", "again"):
            rest_clean = rest.strip(" ,.;:!?")
            words = _tokens(rest_clean)
            need = None
            if _has_problem_word(rest_clean):
                need = _clean_need(_need_clause(rest_clean))
            elif state.asked == "need" and faq is None and len(words) >= 2 and not newly:
                need = _clean_need(rest_clean)
            if need:
                if fields.get("need") != need:
                    newly.append("need")
                fields["need"] = need

        # Any other lead field a profile lists has no extractor: the answer to its question is the value.
        custom = state.asked if state.asked not in (None, "name", "phone", "phone_confirm", "need") else None
        if custom and not goodbye and faq is None and not newly and _tokens(rest):
            newly.append(custom)
            fields[custom] = rest.strip(" ,.;:!?")

        sentences: list[str] = []
        topics = state.faq_topics
        if faq is not None:
            entry, topic = faq
            answers = entry.answers
            answer = answers.get(lang) or answers.get(self._biz.lang) or next(iter(answers.values()), "")
            sentences += _split_sentences(answer)
            if topic not in topics:
                topics = topics + (topic,)

        missing = [f for f in wanted if not fields.get(f)]
        complete = bool(wanted) and not missing and ("phone" not in wanted or phone.ok)
        ordered = {k: fields[k] for k in wanted if fields.get(k)}
        ordered.update((k, v) for k, v in fields.items() if k not in ordered and (v or k in state.fields))
        fields = ordered
        lead = LeadCaptured(fields=dict(fields), complete=complete) if newly else None
        fields = {k: v for k, v in fields.items() if v}  # a rejected number is cleared in the record only
        asked: str | None = None
        confirmed = False
        end: EndCall | None = None

        if goodbye:
            sentences = _split_sentences(self._p("goodbye", lang))
            end = EndCall("goodbye")
        elif phone.event == "confirm":
            sentences += _split_sentences(_fmt(self._p("confirm_phone", lang), self._format_fields(fields, lang)))
            asked = "phone_confirm"
        elif phone.event == "invalid":
            key, values = problem_prompt(check(phone.said, self._biz.country), self._biz.country)
            sentences += _split_sentences(_fmt(self._p(key, lang), values))
            asked = "phone"
        elif phone.event == "again":
            sentences += _split_sentences(self._p("phone_again", lang))
            asked = "phone"
        elif newly and complete:
            confirm = _fmt(self._p("confirm", lang), self._format_fields(fields, lang))
            sentences += _split_sentences(confirm)
            if not confirm.rstrip().endswith("?"):
                sentences += _split_sentences(self._p("anything_else", lang))
            confirmed = True
        elif state.asked == "phone_confirm" and fields.get("phone"):
            # Neither yes nor no nor a number: answer what was asked, then ask again.
            if faq is None:
                sentences += _split_sentences(self._p("sorry", lang))
            sentences += _split_sentences(_fmt(self._p("confirm_phone", lang), self._format_fields(fields, lang)))
            asked = "phone_confirm"
        elif missing and (newly or (state.asked is not None and faq is not None) or _wants_service(rest)):
            asked = missing[0]
            sentences += _split_sentences(self._ask(asked, lang))
        elif faq is None:
            if state.asked is not None:
                asked = state.asked
                sentences += _split_sentences(self._p("sorry", lang)) + _split_sentences(self._ask(asked, lang))
            else:
                sentences += _split_sentences(self._p("fallback", lang))
        new_state = _State(
            lang=lang,
            fields=fields,
            asked=asked,
            phone_ok=phone.ok,
            phone_partial=phone.partial,
            confirmed=confirmed,
            faq_topics=topics,
            ended=state.ended or goodbye,
            turns=state.turns + 1,
        )
        return _Plan(tuple(s for s in sentences if s), lead, end, new_state)

    def _phone_step(self, state: _State, text: str, fields: dict[str, str], step: "_PhoneStep") -> str:
        """The phone slot for one turn: fills ``fields`` and ``step``; returns the text
        left for the other slots.

        On a call a valid number is read back and asked about ("confirm"); "yes"
        confirms it, "no" asks for it again, digits correct it (``engine.phone.correct``).
        An incomplete or invalid number is not stored: the caller is told how many
        digits were heard and asked for the whole number ("invalid"); its digits are
        kept so that the rest, said next, completes it. In a chat a valid number
        needs no read-back."""
        region = self._biz.country
        current = fields.get("phone", "")
        if state.asked == "phone_confirm" and current:
            runs = [r for r in find_runs(text) if r.strong]
            if runs:
                fixed = correct(current, text, region)
                if fixed is None:
                    said = max(runs, key=lambda r: r.count)
                    self._set_phone(fields, step, None)
                    step.event, step.said, step.count, step.partial = "invalid", said.digits, said.count, ""
                    return text
                self._set_phone(fields, step, fixed)
                step.event = "confirm"
                return ""
            if _is_no(text):
                self._set_phone(fields, step, None)
                step.event = "again"
                return text
            if _is_yes(text):
                step.ok, step.changed, step.event = True, True, "confirmed"
                return text
            return text
        asked = state.asked == "phone"
        found = extract_phone(text, min_digits=3 if asked or _PHONE_WORDS.search(text) else MIN_PHONE_DIGITS)
        if found is None:
            return text
        digits, span = found
        result = check(digits, region)
        if not result.valid and state.phone_partial and not digits.startswith("+"):
            joined = check(state.phone_partial + digits, region)
            if joined.valid:
                result = joined
        rest = _remove_span(text, span, phone=True)
        if not result.valid:
            step.event, step.said, step.count = "invalid", digits, result.count
            step.partial = digits if not digits.startswith("+") and result.problem in ("short", "invalid") else ""
            return rest
        self._set_phone(fields, step, result.digits)
        step.partial = ""
        if self._channel == "call":
            step.event = "confirm"
        else:
            step.ok = True
        return rest

    def _set_phone(self, fields: dict[str, str], step: "_PhoneStep", digits: str | None) -> None:
        """Store ``digits`` as said and in E.164, or clear both (``None``)."""
        e164 = check(digits, self._biz.country).e164 if digits else ""
        if fields.get("phone", "") != (digits or ""):
            step.changed = True
        if digits or fields.get("phone"):
            fields["phone"] = digits or ""
            fields["phone_e164"] = e164
        step.ok = False

    def _ask(self, slot: str, lang: str) -> str:
        """The question for ``slot``: the profile's ``ask_<slot>``, else a generic one."""
        generic = f"מה ה{slot}?" if lang == "he" else f"What is your {slot.replace('_', ' ')}?"
        return self._p(f"ask_{slot}", lang) or generic

    def _supported(self) -> set[str]:
        return set(self._biz.prompts) | {self._biz.lang}


_EN_SERVICE = re.compile(
    r"\b(?:book|appointment|someone|come (?:over|out)|send|schedule|help|plumber|technician|visit)\b", re.I
)
_HE_SERVICE = re.compile(r"(?:לקבוע|תור|ביקור|שיבוא|לשלוח|עזרה|אינסטלטור|טכנאי)")


@dataclass
class _PhoneStep:
    """What the phone slot did in one turn (see ``RulesConversation._phone_step``)."""

    ok: bool
    partial: str
    event: str = ""  # "" | "confirm" | "confirmed" | "again" | "invalid"
    changed: bool = False
    said: str = ""  # the digits heard, for "invalid"
    count: int = 0


MIN_PHONE_DIGITS = 7  # unprompted, a shorter run is not taken for a phone number
_PHONE_WORDS = re.compile(r"\b(?:phone|number|cell|mobile|reach me|call me)\b|טלפון|מספר|נייד", re.I)
_YES_WORDS = frozenset(
    "yes yeah yep yup correct right exactly sure ok okay perfect כן נכון בדיוק בסדר מדויק".split()
)
_NO_START = frozenset("no nope nah wrong incorrect not לא טעות".split())


def _is_yes(text: str) -> bool:
    """A confirmation ("yes", "that's right", "כן, נכון"), in its first three words."""
    words = _tokens(text)
    return bool(words) and not _is_no(text) and any(w in _YES_WORDS for w in words[:3])


def _is_no(text: str) -> bool:
    words = _tokens(text)
    return bool(words) and (words[0] in _NO_START or " ".join(words[:3]) in ("that's wrong", "that is wrong", "זה לא נכון"))


def _wants_service(text: str) -> bool:
    return bool(_EN_SERVICE.search(text) or _HE_SERVICE.search(text))


def _split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


class RulesPlanner:
    """The embedded ``LanguagePlanner``: one per process, stateless, thread-safe."""

    name = "rules"

    def open_conversation(
        self,
        business: Business,
        *,
        channel: str,
        history: Iterable[tuple[str, str]] = (),
    ) -> RulesConversation:
        """Open a conversation; ``history`` (role, text) pairs, oldest first, are
        replayed so lead state survives a chat restored from the store. Raises
        ``ValueError`` for an unknown channel or history role."""
        return RulesConversation(business, channel=channel, history=history)
