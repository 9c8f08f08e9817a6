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
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from engine.business import Business, FaqEntry
from engine.messages import CancelToken, EndCall, LeadCaptured, TextDelta
from engine.phone import PHONE_PROMPTS, check, correct, extract_phone, find_runs, problem_prompt, read_back
from engine.providers.base import PlannerEvent
from engine.providers.rules_text import (
    FAQ_THRESHOLD,
    SENTENCE_SPLIT,
    clean_need,
    has_problem_word,
    is_goodbye,
    is_hebrew,
    need_clause,
    phrase_score,
    remove_span,
    extract_name,
    tokens,
    variants,
)

__all__ = ["RulesPlanner", "RulesConversation", "extract_phone", "extract_name"]

_CHANNELS = ("call", "chat")
_MAX_TEXT = 1000  # characters of one user turn that are read (a pasted essay is cut, not parsed)

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
        tv = [variants(t) for t in tokens(text)]
        if not tv:
            return None
        best: tuple[float, FaqEntry, str] | None = None
        for entry in self._biz.faq:
            phrases = entry.questions.get(lang) or ()
            for phrase in phrases:
                score = phrase_score(phrase, tv)
                if score >= FAQ_THRESHOLD and (best is None or score > best[0]):
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
        if is_hebrew(text) and "he" in self._supported():
            lang = "he"
        elif text.strip() and not is_hebrew(text) and re.search(r"[a-zA-Z]", text) and "en" in self._supported():
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
                rest = remove_span(rest, found_name[1])

        complete_before = bool(wanted) and all(fields.get(f) for f in wanted) and ("phone" not in wanted or phone.ok)
        goodbye = not phone.event and is_goodbye(text, state.confirmed or complete_before)
        faq = None if goodbye or phone.event in ("confirmed", "again") else self._match_faq(rest, lang)

        if "need" in wanted and not goodbye and phone.event not in ("confirmed", "again"):
            rest_clean = rest.strip(" ,.;:!?")
            words = tokens(rest_clean)
            need = None
            if has_problem_word(rest_clean):
                need = clean_need(need_clause(rest_clean))
            elif state.asked == "need" and faq is None and len(words) >= 2 and not newly:
                need = clean_need(rest_clean)
            if need:
                if fields.get("need") != need:
                    newly.append("need")
                fields["need"] = need

        # Any other lead field a profile lists has no extractor: the answer to its question is the value.
        custom = state.asked if state.asked not in (None, "name", "phone", "phone_confirm", "need") else None
        if custom and not goodbye and faq is None and not newly and tokens(rest):
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
        elif state.asked == "phone_confirm" and fields.get("phone") and not phone.event:
            # Neither yes nor no nor a number: take what was said, answer what was
            # asked, then ask about the number again.
            if faq is None and not newly:
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
        rest = remove_span(text, span, phone=True)
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
    words = tokens(text)
    return bool(words) and not _is_no(text) and any(w in _YES_WORDS for w in words[:3])


def _is_no(text: str) -> bool:
    words = tokens(text)
    return bool(words) and (words[0] in _NO_START or " ".join(words[:3]) in ("that's wrong", "that is wrong", "זה לא נכון"))


def _wants_service(text: str) -> bool:
    return bool(_EN_SERVICE.search(text) or _HE_SERVICE.search(text))


def _split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_SPLIT.split(text.strip()) if s.strip()]


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
