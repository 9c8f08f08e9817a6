"""The voice's cache warmed at start-up: a rule planner's lines are spoken before any call.

A real ``Runtime`` with the embedded Piper voice (stub recognizer, rule planner):
after start-up the warm-up thread has spoken every business's fixed lines, so the
sentences a call's TTS actor is handed for an FAQ answer come from the cache.
"""

from __future__ import annotations

from pathlib import Path

from engine.business import load_businesses
from engine.config import load_settings
from engine.providers.rules_text import SENTENCE_SPLIT
from engine.runtime import Runtime


def _runtime(tmp_path: Path, warm: bool) -> Runtime:
    settings = load_settings(
        environ={},
        overrides={"tts": "piper", "stt": "stub", "llm": "rules", "data_dir": str(tmp_path), "piper.warm_lines": warm},
    )
    return Runtime.create(settings, call_tree=lambda *a: None)  # no call is placed here


def _fixed_sentences(lines: list[str]) -> list[str]:
    return [s for line in lines for s in SENTENCE_SPLIT.split(line) if s.strip() and "{" not in s]


def test_spoken_lines_are_the_faq_answers_and_the_prompts() -> None:
    demo = load_businesses(Path(__file__).resolve().parent.parent / "config" / "businesses")["demo"]
    lines = demo.spoken_lines()
    assert demo.faq[0].answers["en"] in lines
    assert set(demo.prompts["en"].values()) <= set(lines)
    assert demo.spoken_lines("he") != lines and demo.faq[0].answers["he"] in demo.spoken_lines("he")


def test_start_up_speaks_every_fixed_sentence_into_the_cache(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, warm=True)
    try:
        assert rt._warm_thread is not None
        rt._warm_thread.join(timeout=120)
        assert not rt._warm_thread.is_alive()
        voice = rt.tts.inner
        warmed = voice.cache_stats()
        demo = rt.businesses["demo"]
        sentences = _fixed_sentences(demo.spoken_lines())
        assert any("{" in t for t in demo.prompts["en"].values())  # templates' other sentences count too
        assert warmed["pieces"] >= len(set(sentences))
        for sentence in sentences:  # what the TTS actor is handed for these lines
            b"".join(rt.tts.synthesize(sentence, language="en-US"))
        after = voice.cache_stats()
        assert after["pieces"] == warmed["pieces"], "a fixed sentence was computed again"
        assert after["hits"] > warmed["hits"]
    finally:
        rt.close()


def test_warm_lines_off_leaves_the_cache_to_the_calls(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, warm=False)
    try:
        assert rt._warm_thread is None
        greeting_pieces = rt.tts.inner.cache_stats()["pieces"]  # the greetings, spoken at start-up
        demo = rt.businesses["demo"]
        b"".join(rt.tts.synthesize(demo.faq[0].answers["en"].split(". ")[0], language="en-US"))
        assert rt.tts.inner.cache_stats()["pieces"] > greeting_pieces
    finally:
        rt.close()
