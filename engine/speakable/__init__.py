"""Text made speakable before any TTS: numbers, phone numbers, times, prices, dates
and addresses written the way a person would say them.

``speakable(text, language)`` is applied to what goes to a voice (embedded or
Google), never to what is stored: the call record keeps the reply as written. It
is pure and deterministic (no I/O), so it is unit-tested on strings alone.

English (:mod:`engine.speakable.english`) uses ``num2words``; Hebrew
(:mod:`engine.speakable.hebrew`) uses ``heb-tts-normalizer`` (MIT) for numbers,
currency, times and abbreviations, with a pre-pass of its own for what it would
misread (phone numbers grouped as people say them, ``3.12`` as a date after a
date cue rather than a decimal, weekday and time ranges) and ``hebrew-num2words``
(Apache-2.0) for the date words. Other languages pass through unchanged.

Never raises on odd text: a rule that cannot read something leaves it as written.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from engine.business import short_lang

__all__ = ["speakable", "SpeakableTts"]

log = logging.getLogger(__name__)


def speakable(text: str, language: str) -> str:
    """``text`` as it should be spoken in ``language`` (a BCP-47 tag such as ``en-US``)."""
    if not text or not text.strip():
        return text
    lang = short_lang(language or "en")
    try:
        if lang == "en":
            from engine.speakable.english import speakable_en

            return speakable_en(text, region=(language or "en-US").partition("-")[2].upper() or "US")
        if lang == "he":
            from engine.speakable.hebrew import speakable_he

            return speakable_he(text)
    except Exception:  # a normaliser bug must never silence a call: speak it as written
        log.exception("speakable: could not normalise %r (%s); speaking it as written", text[:80], language)
    return text


class SpeakableTts:
    """A ``TextToSpeech`` that makes text speakable, then hands it to ``inner``.

    The host builds every voice behind one (``engine.providers.make_tts``), so the
    greeting cache, the TTS actor and ``voice-check`` all speak the same words;
    what the planner wrote (and the record keeps) is untouched. Other attributes
    (``name``, ``voice_for``, ``close``...) are the inner provider's.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def synthesize(self, text: str, *, language: str, voice: str = "", cancel: Any = None) -> Iterator[bytes]:
        return self.inner.synthesize(speakable(text, language), language=language, voice=voice, cancel=cancel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
