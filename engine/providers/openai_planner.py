"""An LLM planner on the OpenAI chat completions API (or any compatible ``base_url``).

One :class:`OpenAIPlanner` per process owns one synchronous ``openai.OpenAI`` client
(``openai`` 3.x, whose HTTP layer is ``httpx2``), configured for a phone call rather than the
SDK defaults: ``timeout=httpx2.Timeout(3.0, connect=1.0)`` and ``max_retries=0`` (a retry
with backoff costs more than the caller will wait; the template reply is the retry).

Each call or chat opens an :class:`OpenAIConversation`. Its ``reply`` is a blocking generator
run on the planner actor's thread; it never raises for provider trouble.

Threads and the deadline: the HTTP stream is consumed by a short-lived worker thread
(``openai-reply-<n>``) that puts chunks on a ``queue.Queue``; the generator (caller's thread)
takes them with deadlines. That split is what makes the deadline hold whatever the server
does: httpx2's read timeout restarts on every byte, so a server that sends headers at 2.9 s
and then stalls would otherwise hold the caller for 5.9 s. Deadlines: the first token (text or
tool call) within ``first_token_timeout_s`` (3 s) of ``reply()`` being called, then no gap
longer than ``stall_timeout_s`` (2 s) between chunks. On a miss, an HTTP error (5xx, 4xx,
connection) or a malformed stream, the generator closes the stream and yields the business's
``fallback`` prompt (a template asking one narrowing question) -- within about
``first_token_timeout_s + poll_s`` of the call. The worker then ends by itself: its reads
are bounded by the 3 s read timeout and it checks a stop flag between chunks.

Cancellation: ``cancel`` is polled every ``poll_s`` (50 ms) and between yields; when set the
stream is closed and the generator returns without the template.

History and leads: ``reply`` reads the committed history and never changes it; the lead
fields a reply's ``save_lead`` call extracted are parked under its user text and become
the conversation's lead state only when ``commit`` is called with that user text.

A phone number from ``save_lead`` is checked against the business's country
(``engine.phone``): a valid one is kept as given plus ``phone_e164``; an incomplete or
invalid one is not saved, and the caller is told what was heard and asked for the
whole number (the model's own words may have accepted it). The tool asks the model to
read a number back digit by digit and save it only once the caller confirms.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping

import httpx2
import openai

from engine.business import Business
from engine.phone import PHONE_PROMPTS, PhoneCheck, check, extract_phone, problem_prompt, read_back
from engine.messages import CancelToken, EndCall, LeadCaptured, TextDelta
from engine.providers.base import PlannerEvent

__all__ = ["OpenAIPlanner", "OpenAIConversation", "MAX_SYSTEM_PROMPT"]

log = logging.getLogger(__name__)

MAX_SYSTEM_PROMPT = 600  # characters: a compact prompt plus a short history keeps first-token latency low
_LANG_NAMES = {"he": "Hebrew", "en": "English", "ar": "Arabic", "ru": "Russian", "fr": "French", "es": "Spanish"}
_DEFAULT_FALLBACK = {
    "he": "סליחה, לא הבנתי. אפשר לומר את זה בכמה מילים?",
    "en": "Sorry, I didn't catch that. Could you say it in a few words?",
}
_reply_ids = itertools.count(1)
_KEEP_MESSAGES = 40  # history kept for the summary; prompts use only the last few turns


class _Fail(Exception):
    """Why a reply fell back to the template (internal)."""


class OpenAIPlanner:
    """The process-wide OpenAI planner (implements ``LanguagePlanner``); thread-safe.

    ``api_key`` defaults to ``$OPENAI_API_KEY``; with a ``base_url`` (a local or compatible
    server) and no key, a placeholder key is sent. ``base_url`` defaults to
    ``$OPENAI_BASE_URL`` or the OpenAI API.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        max_tokens: int = 220,
        temperature: float = 0.2,
        timeout_s: float = 3.0,
        connect_timeout_s: float = 1.0,
        first_token_timeout_s: float = 3.0,
        stall_timeout_s: float = 2.0,
        poll_s: float = 0.05,
        history_turns: int = 4,
        http_client: httpx2.Client | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or ("local-no-key" if base_url else None)
        if not api_key:
            raise ValueError("OpenAIPlanner needs an api_key (or OPENAI_API_KEY, or a base_url of a local server)")
        if max_tokens <= 0 or first_token_timeout_s <= 0 or stall_timeout_s <= 0 or poll_s <= 0:
            raise ValueError("max_tokens and the timeouts must be positive")
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.first_token_timeout_s = first_token_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.poll_s = poll_s
        self.history_turns = history_turns
        self.client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=httpx2.Timeout(timeout_s, connect=connect_timeout_s),
            max_retries=0,
            http_client=http_client,
        )
        self._lock = threading.Lock()
        self._failures: Counter[str] = Counter()

    def open_conversation(
        self, business: Business, *, channel: str, history: Iterable[tuple[str, str]] = ()
    ) -> "OpenAIConversation":
        """``channel`` is "call" or "chat"; ``history`` is (role, text) pairs, oldest first."""
        if channel not in ("call", "chat"):
            raise ValueError(f"channel must be 'call' or 'chat', got {channel!r}")
        return OpenAIConversation(self, business, channel, history)

    def failures(self) -> dict[str, int]:
        """How many replies fell back to the template, by reason (timeout, stall, http_500, ...)."""
        with self._lock:
            return dict(self._failures)

    def _count_failure(self, reason: str) -> None:
        with self._lock:
            self._failures[reason] += 1

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            log.warning("openai planner: client close failed", exc_info=True)


class OpenAIConversation:
    """One conversation (implements ``Conversation``). Called from the planner actor's thread."""

    def __init__(
        self, planner: OpenAIPlanner, business: Business, channel: str, history: Iterable[tuple[str, str]]
    ) -> None:
        self._p = planner
        self.business = business
        self.channel = channel
        self.lang = business.lang
        self._lock = threading.Lock()
        self._history: list[tuple[str, str]] = []
        for role, text in history:
            role = "assistant" if role in ("assistant", "agent") else "user"
            self._history.append((role, str(text)))
        self._lead: dict[str, str] = {}
        self._pending_lead: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------------ prompt

    @property
    def lead(self) -> dict[str, str]:
        with self._lock:
            return dict(self._lead)

    def system_prompt(self) -> str:
        """The compact system prompt (at most ``MAX_SYSTEM_PROMPT`` characters)."""
        b = self.business
        with self._lock:
            lead = dict(self._lead)
        missing = [f for f in b.lead_fields if not lead.get(f)]
        where = "phone" if self.channel == "call" else "WhatsApp"
        language = _LANG_NAMES.get(self.lang, self.lang)
        head = f"You are the {where} receptionist of {b.name}. " + _clip(b.persona, 160)
        rules = f"Reply in {language}, 1-2 short spoken sentences, no lists or markup."
        if missing:
            task = f"Collect: {', '.join(missing)}; call save_lead with each value you get."
            if "phone" in missing:
                task += " Read a phone number back digit by digit; save it once the caller confirms."
        else:
            task = "Lead complete."
        budget = MAX_SYSTEM_PROMPT - len(head) - len(rules) - len(task) - len(" Facts: ") - 3
        facts: list[str] = []
        for entry in b.faq:
            answer = entry.answers.get(self.lang) or next(iter(entry.answers.values()), "")
            piece = _clip(answer, 110)
            if len(" | ".join([*facts, piece])) > budget:
                break
            facts.append(piece)
        parts = [head, rules, task]
        if facts:
            parts.insert(2, "Facts: " + " | ".join(facts))
        return " ".join(p.strip() for p in parts)[:MAX_SYSTEM_PROMPT]

    def messages(self, user_text: str) -> list[dict[str, str]]:
        """System prompt, the last ``history_turns`` turns (clipped), and the user's text."""
        with self._lock:
            recent = self._history[-2 * self._p.history_turns :] if self._p.history_turns else []
        msgs = [{"role": "system", "content": self.system_prompt()}]
        msgs += [{"role": role, "content": _clip(text, 400)} for role, text in recent]
        msgs.append({"role": "user", "content": _clip(user_text, 1000)})
        return msgs

    def tools(self) -> list[dict[str, Any]]:
        fields = list(self.business.lead_fields)
        tools: list[dict[str, Any]] = [
            {
                "type": "function",
                "function": {
                    "name": "save_lead",
                    "description": "Save the caller's details as soon as you learn any of them.",
                    "parameters": {
                        "type": "object",
                        "properties": {f: _FIELD_SCHEMAS.get(f, {"type": "string"}) for f in fields},
                        "required": [],
                    },
                },
            }
        ]
        if self.channel == "call":
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": "end_call",
                        "description": "End the call after saying goodbye.",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            )
        return tools

    def fallback_text(self) -> str:
        return self.business.prompt("fallback", self.lang) or _DEFAULT_FALLBACK.get(self.lang, _DEFAULT_FALLBACK["en"])

    # ------------------------------------------------------------------ reply

    def reply(self, user_text: str, *, cancel: CancelToken) -> Iterator[PlannerEvent]:
        """Stream the answer; see the module docstring for deadlines, threads and fallbacks."""
        started = time.monotonic()
        rid = next(_reply_ids)
        inbox: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        stop = threading.Event()
        holder: dict[str, Any] = {}
        request = dict(
            model=self._p.model,
            messages=self.messages(user_text),
            max_tokens=self._p.max_tokens,
            temperature=self._p.temperature,
            tools=self.tools(),
            stream=True,
        )
        worker = threading.Thread(
            target=self._pump, args=(request, inbox, stop, holder), name=f"openai-reply-{rid}", daemon=True
        )
        worker.start()
        said: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        got_first = False
        last = started
        try:
            while True:
                if cancel.cancelled:
                    return
                now = time.monotonic()
                deadline = (last + self._p.stall_timeout_s) if got_first else (started + self._p.first_token_timeout_s)
                if now >= deadline:
                    raise _Fail("stall" if got_first else "timeout")
                try:
                    kind, item, _at = inbox.get(timeout=min(self._p.poll_s, deadline - now))
                except queue.Empty:
                    continue
                if kind == "error":
                    raise _Fail(_reason(item))
                if kind == "end":
                    break
                last = time.monotonic()
                for choice in item.choices or ():
                    delta = choice.delta
                    if delta is None:
                        continue
                    for tc in delta.tool_calls or ():
                        got_first = True
                        slot = calls.setdefault(tc.index or 0, {"name": "", "arguments": ""})
                        if tc.function is not None:
                            slot["name"] += tc.function.name or ""
                            slot["arguments"] += tc.function.arguments or ""
                    if delta.content:
                        got_first = True
                        said.append(delta.content)
                        yield TextDelta(delta.content)
                        if cancel.cancelled:
                            return
                        last = time.monotonic()  # time spent in the consumer is not a stall
        except Exception as exc:  # noqa: BLE001 - _Fail, or a malformed chunk: never raise
            why = str(exc) if isinstance(exc, _Fail) else f"malformed:{type(exc).__name__}"
            self._p._count_failure(why)
            log.warning(
                "openai planner: reply fell back to the template",
                extra={"reason": why, "business": self.business.id, "after_ms": round((time.monotonic() - started) * 1000)},
            )
            yield TextDelta((" " if said else "") + self.fallback_text())
            return
        finally:
            stop.set()
            _close_quietly(holder.get("stream"))
        yield from self._after_stream(user_text, said, calls)

    def _after_stream(self, user_text: str, said: list[str], calls: Mapping[int, Mapping[str, str]]) -> Iterator[PlannerEvent]:
        """Turn the finished tool calls into events; make sure something was said."""
        end: EndCall | None = None
        for _, call in sorted(calls.items()):
            if call["name"] == "save_lead":
                fields, rejected = self._checked_phone(self._lead_fields(call["arguments"]))
                with self._lock:
                    merged = {**self._lead, **self._pending_lead.get(user_text, {}), **fields}
                    self._pending_lead[user_text] = merged
                complete = all(merged.get(f) for f in self.business.lead_fields)
                yield LeadCaptured(fields=dict(merged), complete=complete)
                if rejected is not None:
                    key, values = problem_prompt(rejected, self.business.country)
                    template = self.business.prompt(key, self.lang) or PHONE_PROMPTS.get(self.lang, PHONE_PROMPTS["en"])[key]
                    text = template.format_map(_Blank(values))
                    yield TextDelta((" " if said else "") + text)
                    said.append(text)
                elif not said:
                    text = self._next_prompt(merged, complete)
                    said.append(text)
                    yield TextDelta(text)
            elif call["name"] == "end_call":
                end = EndCall("goodbye")
        if not said:
            if end is not None:
                goodbye = self.business.prompt("goodbye", self.lang)
                if goodbye:
                    yield TextDelta(goodbye)
            else:
                self._p._count_failure("empty")
                yield TextDelta(self.fallback_text())
        if end is not None:
            yield end

    def _lead_fields(self, arguments: str) -> dict[str, str]:
        try:
            data = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            log.warning("openai planner: save_lead arguments are not JSON", extra={"business": self.business.id})
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: str(v).strip()
            for k, v in data.items()
            if k in self.business.lead_fields and isinstance(v, (str, int, float)) and str(v).strip()
        }

    def _checked_phone(self, fields: dict[str, str]) -> tuple[dict[str, str], PhoneCheck | None]:
        """``fields`` with a valid phone's ``phone_e164`` added, or without the phone
        and with what was wrong with it."""
        said = fields.get("phone")
        if not said:
            return fields, None
        found = extract_phone(said, min_digits=1)
        result = check(found[0], self.business.country) if found else PhoneCheck(said, "invalid")
        if result.valid:
            return {**fields, "phone_e164": result.e164}, None
        log.info("openai planner: save_lead phone rejected", extra={"business": self.business.id, "problem": result.problem})
        return {k: v for k, v in fields.items() if k != "phone"}, result

    def _next_prompt(self, lead: Mapping[str, str], complete: bool) -> str:
        if complete:
            template = self.business.prompt("confirm", self.lang)
            if template:
                values = dict(lead)
                if self.channel == "call" and lead.get("phone_e164"):
                    values["phone"] = read_back(lead["phone"], self.business.country)
                try:
                    return template.format_map(_Blank(values))
                except (ValueError, IndexError):
                    return template
        else:
            missing = next(f for f in self.business.lead_fields if not lead.get(f))
            ask = self.business.prompt(f"ask_{missing}", self.lang)
            if ask:
                return ask
        return self.fallback_text()

    def _pump(self, request: dict[str, Any], inbox: queue.Queue, stop: threading.Event, holder: dict[str, Any]) -> None:
        """Worker thread: open the stream and forward chunks until the end, an error or ``stop``."""
        try:
            stream = self._p.client.chat.completions.create(**request)
            holder["stream"] = stream
            if stop.is_set():
                return
            for chunk in stream:
                if stop.is_set():
                    return
                inbox.put(("chunk", chunk, time.monotonic()))
            inbox.put(("end", None, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which falls back
            if not stop.is_set():
                inbox.put(("error", exc, time.monotonic()))
        finally:
            _close_quietly(holder.get("stream"))

    # ------------------------------------------------------------------ history

    def commit(self, user_text: str, agent_text: str, *, interrupted: bool = False) -> None:
        """Append the turn (``agent_text`` as heard; marked when cut off) and adopt its lead."""
        with self._lock:
            if user_text:
                self._history.append(("user", user_text))
            if agent_text:
                self._history.append(("assistant", agent_text + (" [interrupted]" if interrupted else "")))
            lead = self._pending_lead.pop(user_text, None)
            if lead:
                self._lead.update(lead)
            self._pending_lead.clear()
            del self._history[:-_KEEP_MESSAGES]

    def summary(self) -> str:
        """A one-line summary from the model (non-streaming, same timeouts); "" on any error."""
        with self._lock:
            turns = list(self._history)
        if not turns:
            return ""
        transcript = "\n".join(f"{'Caller' if r == 'user' else 'Agent'}: {_clip(t, 300)}" for r, t in turns[-20:])
        language = _LANG_NAMES.get(self.lang, self.lang)
        try:
            response = self._p.client.chat.completions.create(
                model=self._p.model,
                messages=[
                    {"role": "system", "content": f"Summarize this conversation in one short line in {language}."},
                    {"role": "user", "content": transcript},
                ],
                max_tokens=80,
                temperature=self._p.temperature,
            )
            text = response.choices[0].message.content or ""
        except Exception:  # noqa: BLE001 - a summary is best effort
            log.warning("openai planner: summary failed", exc_info=True, extra={"business": self.business.id})
            return ""
        return " ".join(text.split())


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


_FIELD_SCHEMAS: dict[str, dict[str, str]] = {
    "phone": {
        "type": "string",
        "description": "The caller's phone number as said (digits; a leading + if international), "
        "after reading it back digit by digit and the caller confirming it.",
    },
    "name": {"type": "string", "description": "The caller's name exactly as they said it."},
    "need": {"type": "string", "description": "What the caller needs, in their own words."},
}


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    return type(exc).__name__


def _close_quietly(stream: Any) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except Exception:  # noqa: BLE001 - closing from the other thread may race the reader
        pass
