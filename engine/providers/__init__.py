"""Provider construction by name: ``CALLENGINE_STT``, ``CALLENGINE_TTS``, ``CALLENGINE_LLM``.

One provider object per process and role (one Google client, one loaded whisper
model). Imports are lazy so a host that uses the embedded providers never
imports the Google or OpenAI SDKs, and vice versa.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from engine.providers.base import (
    Conversation,
    LanguagePlanner,
    ProviderError,
    SpeechToText,
    SttSession,
    TextToSpeech,
)

if TYPE_CHECKING:
    from engine.config import Settings

__all__ = [
    "Conversation",
    "LanguagePlanner",
    "ProviderError",
    "SpeechToText",
    "SttSession",
    "TextToSpeech",
    "make_stt",
    "make_tts",
    "make_planner",
]


def make_stt(name: str, settings: "Settings") -> SpeechToText:
    if name == "whisper":
        from engine.providers.whisper_stt import WhisperStt

        w = settings.whisper
        return WhisperStt(
            model_path=w.model or None,
            cpu_threads=w.cpu_threads,
            num_workers=w.workers,
            language=w.language,
            partial_interval_s=w.partial_interval_ms / 1000.0,
            partial_share=w.partial_share,
        )
    if name == "google":
        from engine.providers.google_stt import GoogleStt

        g = settings.google
        return GoogleStt(
            endpoint=g.speech_endpoint or None,
            insecure=g.insecure,
            region=g.region or None,
            model=g.stt_model,
            use_enhanced=g.use_enhanced,
            automatic_punctuation=g.punctuation,
            rotate_after_s=g.rotate_after_s,
            clock=time.monotonic,  # Transcript.t is monotonic everywhere in the engine
        )
    if name == "stub":
        from engine.providers.stub import StubStt

        return StubStt.from_settings(settings)
    raise ProviderError(f"unknown STT provider {name!r}")


def make_tts(name: str, settings: "Settings") -> TextToSpeech:
    """The process's voice, behind the speakable step (numbers, times, prices... in words)."""
    from engine.speakable import SpeakableTts

    return SpeakableTts(_make_voice(name, settings))


def _make_voice(name: str, settings: "Settings") -> TextToSpeech:
    if name == "piper":
        from engine.providers.piper_tts import PiperTts

        p = settings.piper
        return PiperTts(
            model_path=p.model or None,
            threads=p.threads,
            slots=p.slots,
            length_scale=p.length_scale,
            cache_bytes=int(p.cache_mb * (1 << 20)),
            fallback=_make_voice("espeak", settings),  # Hebrew and other languages the voice lacks
        )
    if name == "espeak":
        from engine.providers.espeak_tts import EspeakTts

        return EspeakTts(rate_wpm=settings.espeak.rate_wpm, hebrew_diacritize=settings.espeak.hebrew_diacritize)
    if name == "google":
        from engine.providers.google_tts import GoogleTts

        g = settings.google
        return GoogleTts(endpoint=g.tts_endpoint or None, insecure=g.insecure, region=g.region or None)
    if name == "stub":
        from engine.providers.stub import StubTts

        return StubTts.from_settings(settings)
    raise ProviderError(f"unknown TTS provider {name!r}")


def make_planner(name: str, settings: "Settings") -> LanguagePlanner:
    if name == "rules":
        from engine.providers.rules_planner import RulesPlanner

        return RulesPlanner()
    if name == "openai":
        from engine.providers.openai_planner import OpenAIPlanner

        o = settings.openai
        return OpenAIPlanner(
            api_key=settings.secret("openai_api_key") or None,
            base_url=settings.secret("openai_base_url") or None,
            model=o.model,
            max_tokens=o.max_tokens,
            temperature=o.temperature,
            timeout_s=o.timeout_s,
            first_token_timeout_s=o.timeout_s,
        )
    if name == "stub":
        from engine.providers.stub import StubPlanner

        return StubPlanner.from_settings(settings)
    raise ProviderError(f"unknown LLM provider {name!r}")


