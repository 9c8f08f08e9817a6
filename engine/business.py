"""Business profiles: who answers, in which language, with what to say.

A profile is a TOML file in ``config/businesses/``. It is data for every channel
(calls and chats) and every planner (the rule planner reads the FAQ and prompts;
an LLM planner folds them into a compact prompt). Loading validates every field
and names the file and key of anything wrong, because a typo in a greeting should
stop the host at start-up, not surface as silence on a live call.

Languages are keyed by their short code (``en``, ``he``); ``language`` is the BCP-47
tag of the call language (``en-US``, ``he-IL``; ``iw-IL`` is accepted as Hebrew).

``country`` (ISO 3166 alpha-2, e.g. ``IL``) is where the business's callers live:
a phone number a caller gives is valid only when it is a valid number of that
country (or an international one said with a ``+``). When the profile does not
say, it is the country of the business's first phone number, else the region of
its language tag.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import phonenumbers

__all__ = ["Business", "FaqEntry", "BusinessError", "load_business", "load_businesses", "short_lang"]


class BusinessError(ValueError):
    """A business profile is invalid; the message names the file and the key."""


def short_lang(tag: str) -> str:
    """``he-IL`` -> ``he``; ``iw-IL`` (Google's legacy code) -> ``he``."""
    base = tag.split("-")[0].lower()
    return "he" if base == "iw" else base


@dataclass(frozen=True, slots=True)
class FaqEntry:
    """One frequently asked question: trigger phrases and the answer, per language."""

    questions: Mapping[str, tuple[str, ...]]
    answers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Business:
    id: str
    name: str
    language: str  # BCP-47 call language, e.g. "en-US" or "he-IL"
    greetings: Mapping[str, str]  # short lang -> greeting text
    voice: str = ""
    phone_numbers: tuple[str, ...] = ()
    whatsapp_numbers: tuple[str, ...] = ()
    default: bool = False
    persona: str = ""
    phrase_hints: tuple[str, ...] = ()
    lead_fields: tuple[str, ...] = ("name", "phone", "need")
    faq: tuple[FaqEntry, ...] = ()
    # Per-language phrase templates for the rule planner and the LLM fallback
    # reply (keys such as ask_name, ask_phone, confirm, goodbye, fallback).
    prompts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    source: str = ""  # the file it came from
    country: str = ""  # ISO 3166 alpha-2 region of the callers' phone numbers ("" if unknown)

    @property
    def lang(self) -> str:
        return short_lang(self.language)

    def greeting(self, lang: str | None = None) -> str:
        lang = lang or self.lang
        return self.greetings.get(lang) or next(iter(self.greetings.values()))

    def prompt(self, key: str, lang: str | None = None, default: str = "") -> str:
        return self.prompts.get(lang or self.lang, {}).get(key, default)

    def spoken_lines(self, lang: str | None = None) -> list[str]:
        """What the business says in ``lang`` (default: its language) besides the
        greeting: the FAQ answers, then the prompts (templates: a ``{field}`` in one
        is filled on the call)."""
        lang = lang or self.lang
        lines = [entry.answers[lang] for entry in self.faq if entry.answers.get(lang)]
        return lines + list(self.prompts.get(lang, {}).values())


def _req(data: Mapping[str, Any], key: str, typ: type | tuple[type, ...], src: str) -> Any:
    if key not in data:
        raise BusinessError(f"{src}: missing required key '{key}'")
    value = data[key]
    if not isinstance(value, typ):
        names = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
        raise BusinessError(f"{src}: key '{key}' must be {names}, got {type(value).__name__}")
    return value


def _str_tuple(data: Mapping[str, Any], key: str, src: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BusinessError(f"{src}: key '{key}' must be a list of strings")
    return tuple(value)


def _lang_map(value: Any, src: str, key: str) -> dict[str, str]:
    if isinstance(value, str):
        return {"en": value}
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
        raise BusinessError(f"{src}: key '{key}' must be a table of language -> text")
    return {short_lang(k): v for k, v in value.items()}


def parse_business(data: Mapping[str, Any], src: str) -> Business:
    bid = _req(data, "id", str, src)
    if not bid or not bid.replace("-", "").replace("_", "").isalnum():
        raise BusinessError(f"{src}: key 'id' must be a non-empty slug, got {bid!r}")
    language = data.get("language", "en-US")
    if not isinstance(language, str) or short_lang(language) not in ("en", "he") and len(short_lang(language)) != 2:
        raise BusinessError(f"{src}: key 'language' must be a BCP-47 tag such as 'he-IL', got {language!r}")
    greetings = _lang_map(_req(data, "greeting", (str, dict), src), src, "greeting")  # type: ignore[arg-type]
    faq: list[FaqEntry] = []
    for i, entry in enumerate(data.get("faq", [])):
        where = f"{src}: faq[{i}]"
        if not isinstance(entry, dict):
            raise BusinessError(f"{where} must be a table")
        qs = entry.get("q")
        if isinstance(qs, list):
            questions = {"en": tuple(qs)}
        elif isinstance(qs, dict):
            questions = {short_lang(k): tuple(v) for k, v in qs.items()}
        else:
            raise BusinessError(f"{where}: key 'q' must be a list or a table of language -> list")
        if not all(isinstance(q, str) for qq in questions.values() for q in qq):
            raise BusinessError(f"{where}: questions must be strings")
        answers = _lang_map(entry.get("a"), where, "a")
        faq.append(FaqEntry(questions=questions, answers=answers))
    prompts_raw = data.get("prompts", {})
    if not isinstance(prompts_raw, dict):
        raise BusinessError(f"{src}: key 'prompts' must be a table of language -> table")
    prompts: dict[str, dict[str, str]] = {}
    for lang, table in prompts_raw.items():
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise BusinessError(f"{src}: prompts.{lang} must be a table of strings")
        prompts[short_lang(lang)] = dict(table)
    default = data.get("default", False)
    if not isinstance(default, bool):
        raise BusinessError(f"{src}: key 'default' must be true or false")
    phone_numbers = _str_tuple(data, "phone_numbers", src)
    return Business(
        country=_country(data.get("country"), phone_numbers, language, src),
        id=bid,
        name=_req(data, "name", str, src),
        language=language,
        greetings=greetings,
        voice=str(data.get("voice", "")),
        phone_numbers=phone_numbers,
        whatsapp_numbers=_str_tuple(data, "whatsapp_numbers", src),
        default=default,
        persona=str(data.get("persona", "")),
        phrase_hints=_str_tuple(data, "phrase_hints", src),
        lead_fields=_str_tuple(data, "lead_fields", src, ("name", "phone", "need")),
        faq=tuple(faq),
        prompts=prompts,
        source=src,
    )


def _country(value: Any, phone_numbers: tuple[str, ...], language: str, src: str) -> str:
    if value is not None:
        if not isinstance(value, str) or phonenumbers.country_code_for_region(value.upper()) == 0:
            raise BusinessError(f"{src}: key 'country' must be an ISO 3166 country code such as 'IL', got {value!r}")
        return value.upper()
    for number in phone_numbers:
        try:
            region = phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
        except phonenumbers.NumberParseException:
            continue
        if region and region != "ZZ":
            return region
    tail = language.rsplit("-", 1)[-1].upper() if "-" in language else ""
    return tail if phonenumbers.country_code_for_region(tail) else ""


def load_business(path: Path) -> Business:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BusinessError(f"{path}: not valid TOML: {exc}") from None
    return parse_business(data, str(path))


def load_businesses(directory: Path) -> dict[str, Business]:
    """Load every ``*.toml`` profile in ``directory``; ids must be unique."""
    found: dict[str, Business] = {}
    for path in sorted(directory.glob("*.toml")):
        biz = load_business(path)
        if biz.id in found:
            raise BusinessError(f"{path}: business id '{biz.id}' also defined in {found[biz.id].source}")
        found[biz.id] = biz
    if not found:
        raise BusinessError(f"{directory}: no business profiles (*.toml) found")
    return found
