"""`callengine voice-check` and its scoring; the Hebrew niqqud -> espeak-ng phoneme chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.providers.hebrew_niqqud import NakdimonDiacritizer, default_model_path, espeak_phonemes, word_phonemes
from engine.voice_check import business_lines, score

BUSINESS = """
id = "vc"
name = "Voice Check Plumbing"
language = "en-US"
default = true
[greeting]
en = "Hi, you've reached our plumbing company."
[prompts.en]
confirm = "We will call you at {phone}."
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callengine.cli", "voice-check", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


def test_scoring_reads_numbers_and_homophones_as_a_listener_would() -> None:
    assert score("A visit costs 200 shekels.", "a visit costs two hundred shekels", "en-US") == (0, 6)
    assert score("Open eight to six", "Open 8 2 6", "en-US") == (0, 4)
    assert score("Can I have your name?", "Can I have your aim?", "en-US") == (1, 5)
    errors, length = score("שלום, מה שלומך?", "שלום מה שלומך", "he-IL")
    assert (errors, length) == (0, len("שלוםמהשלומך"))


def test_lines_cover_greeting_faq_and_filled_prompts() -> None:
    from engine.business import load_businesses

    demo = load_businesses(Path(__file__).resolve().parents[1] / "config" / "businesses")["demo"]
    lines = business_lines(demo)
    kinds = [k for k, _ in lines]
    assert kinds[0] == "greeting" and "faq 1" in kinds and "prompt ask_name" in kinds
    assert not any("{" in text for _, text in lines)


def test_cli_prints_a_line_by_line_report(tmp_path: Path) -> None:
    (tmp_path / "vc.toml").write_text(BUSINESS, encoding="utf-8")
    env = {"CALLENGINE_BUSINESSES_DIR": str(tmp_path), "CALLENGINE_TTS": "piper"}
    done = _cli("--business", "vc", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["voice"] == "piper" and report["metric"] == "wer"
    assert [line["kind"] for line in report["lines"]] == ["greeting", "prompt confirm"]
    assert "plumbing" in report["lines"][0]["heard"].lower()
    assert "054-123-4567" in report["lines"][1]["said"]
    assert 0.0 <= report["total"] <= 1.0
    text = _cli("--business", "vc", "--max-error", "0", env=env)
    assert "total" in text.stdout and "prompt confirm" in text.stdout
    assert text.returncode in (0, 1)  # 1 only when a word was misheard


def test_cli_errors_and_help() -> None:
    done = _cli("--business", "nope")
    assert done.returncode == 2 and "no business 'nope'" in done.stderr and "demo" in done.stderr
    helptext = _cli("--help").stdout
    for option in ("--business", "--tts", "--language", "--stt-model", "--config", "--json", "--max-error"):
        assert option in helptext


def test_pointed_hebrew_becomes_espeak_phonemes() -> None:
    assert word_phonemes("שָׁלוֹם") == "Sal'om"
    assert word_phonemes("בַּמָּקוֹם") == "bamak'om"
    assert word_phonemes("לְדַבֵּר") == "ledab'eQ\""  # a prefix sheva is said
    assert word_phonemes("בֹּקֶר") == "bok'eQ\""  # stress on the last vowel, even in a segolate (measured)
    assert espeak_phonemes("שָׁלוֹם, דָּוִד.") == "[[Sal'om]], [[dav'id]]."


@pytest.mark.skipif(not default_model_path().is_file(), reason="the Nakdimon model is set up by scripts/fetch-models.sh")
def test_nakdimon_restores_vowels() -> None:
    pointed = NakdimonDiacritizer().diacritize("שלום, איך אפשר לעזור?")
    assert pointed.split(",")[0] == "\u05e9\u05c1\u05b8\u05dc\u05d5\u05b9\u05dd"  # shin, shin dot, qamats, lamed, vav, holam, mem
    assert espeak_phonemes(pointed).startswith("[[Sal'om]], ")
