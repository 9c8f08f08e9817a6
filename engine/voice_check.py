"""``callengine voice-check``: does a caller understand what this business's voice says?

Every line a caller can hear from the rule-based agent (the greeting, each FAQ
answer, each prompt; templates filled with a sample name, phone number and need)
is spoken through the business's configured TTS, as 8 kHz μ-law, decoded as a
phone line delivers it, and transcribed back with the embedded recognizer. The
report scores each line: word error rate for English, character error rate for
Hebrew (a recognizer's Hebrew word boundaries and spellings vary too much for WER
to mean anything).

Scoring compares what the voice was asked to say with what was heard after both
went through :func:`engine.speakable.speakable` (so "200" and "two hundred" are
the same words), lower-cased, without punctuation, and with English homophones
that no listener can tell apart folded together ("to"/"two"/"too", "for"/"four").
A low error rate is a relative signal (the recognizer is imperfect too), not a
guarantee; a line with a high one is a line to reword or to voice differently.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable

from engine.audio import ulaw_decode
from engine.business import Business, short_lang
from engine.speakable import speakable

__all__ = ["LineResult", "business_lines", "score", "check_lines", "render_table", "error_counts"]

#: Sample values for the prompt templates ({name}, {phone}, {need}), per language.
SAMPLES = {
    "en": {"name": "David Cohen", "phone": "054-123-4567", "need": "a leaking pipe"},
    "he": {"name": "דוד כהן", "phone": "054-123-4567", "need": "נזילה במטבח"},
}
_HOMOPHONES = {"two": "to", "too": "to", "four": "for", "fore": "for", "ate": "eight", "won": "one",
               "hey": "hi", "okay": "ok", "write": "right", "their": "there", "theyre": "there", "youre": "your"}
_PUNCT = re.compile(r"[^\w\s']+", re.UNICODE)
_NIQQUD = re.compile("[\u0591-\u05c7]")


@dataclass(frozen=True)
class LineResult:
    kind: str  # greeting | faq 1 | prompt ask_name ...
    text: str  # as written in the profile
    heard: str  # the recognizer's transcript
    errors: int
    length: int  # reference words (English) or characters (Hebrew)
    synth_ms: float
    audio_ms: float

    @property
    def rate(self) -> float:
        return self.errors / self.length if self.length else 0.0


def business_lines(business: Business, lang: str | None = None) -> list[tuple[str, str]]:
    """(kind, text) of everything the business says in ``lang`` (default: its language)."""
    lang = lang or business.lang
    lines = [("greeting", business.greeting(lang))]
    for i, entry in enumerate(business.faq, 1):
        answer = entry.answers.get(lang)
        if answer:
            lines.append((f"faq {i}", answer))
    sample = SAMPLES.get(lang, SAMPLES["en"])
    for key, template in business.prompts.get(lang, {}).items():
        try:
            text = template.format(**sample)
        except (KeyError, IndexError, ValueError):
            text = template
        lines.append((f"prompt {key}", text))
    return lines


def _units(text: str, language: str) -> list[str]:
    spoken = speakable(text, language)
    lang = short_lang(language)
    clean = unicodedata.normalize("NFC", _NIQQUD.sub("", spoken)).lower().replace("-", " ")
    clean = _PUNCT.sub(" ", clean).replace("'", "")
    words = clean.split()
    if lang == "he":
        return list("".join(words))  # characters; spaces are not scored
    return [_HOMOPHONES.get(w, w) for w in words]


def error_counts(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two token lists (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        cur = [i] + [0] * len(hyp)
        r = ref[i - 1]
        for j in range(1, len(hyp) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != hyp[j - 1]))
        prev = cur
    return prev[len(hyp)]


def score(said: str, heard: str, language: str) -> tuple[int, int]:
    """(errors, reference length): words for English, characters for Hebrew."""
    ref, hyp = _units(said, language), _units(heard, language)
    return error_counts(ref, hyp), len(ref)


def check_lines(
    lines: Iterable[tuple[str, str]], *, tts: Any, stt: Any, language: str, voice: str = ""
) -> list[LineResult]:
    """Speak, round-trip through μ-law and transcribe each line (blocking)."""
    whisper_lang = short_lang(language)
    results: list[LineResult] = []
    for kind, text in lines:
        t0 = time.perf_counter()
        mulaw = b"".join(tts.synthesize(text, language=language, voice=voice))
        synth_ms = (time.perf_counter() - t0) * 1000.0
        heard = stt.transcribe_pcm16(ulaw_decode(mulaw), 8000, whisper_lang) if mulaw else ""
        errors, length = score(text, heard, language)
        results.append(LineResult(kind, text, heard, errors, length, synth_ms, len(mulaw) / 8.0))
    return results


def totals(results: list[LineResult]) -> tuple[int, int]:
    return sum(r.errors for r in results), sum(r.length for r in results)


def render_table(results: list[LineResult], *, business: str, voice: str, language: str) -> str:
    """The line-by-line report as plain text."""
    metric = "CER" if short_lang(language) == "he" else "WER"
    out = [f"voice check: business {business}, voice {voice}, language {language} ({metric} after 8 kHz μ-law)", ""]
    out.append(f"{'line':<20} {metric:>6}  said / heard")
    for r in results:
        out.append(f"{r.kind:<20} {100 * r.rate:5.1f}%  {r.text}")
        out.append(f"{'':<20} {'':>6}  {r.heard or '(nothing heard)'}")
    errors, length = totals(results)
    total = errors / length if length else 0.0
    out.append("")
    out.append(f"{'total':<20} {100 * total:5.1f}%  ({errors} errors in {length} {'characters' if metric == 'CER' else 'words'}, {len(results)} lines)")
    return "\n".join(out)


def as_json(results: list[LineResult], *, business: str, voice: str, language: str) -> dict[str, Any]:
    errors, length = totals(results)
    return {
        "business": business,
        "voice": voice,
        "language": language,
        "metric": "cer" if short_lang(language) == "he" else "wer",
        "total": errors / length if length else 0.0,
        "lines": [
            {"kind": r.kind, "said": r.text, "heard": r.heard, "rate": r.rate, "errors": r.errors,
             "length": r.length, "synth_ms": round(r.synth_ms, 1), "audio_ms": round(r.audio_ms, 1)}
            for r in results
        ],
    }


def main(args: Any) -> int:
    """The ``voice-check`` command (arguments from ``callengine.cli``); returns the exit status."""
    import json
    import sys

    from engine.business import BusinessError, load_businesses
    from engine.config import ConfigError, load_settings
    from engine.providers import ProviderError, make_tts
    from engine.providers.whisper_stt import WhisperStt

    try:
        settings = load_settings(args.config)
        businesses = load_businesses(settings.businesses_path)
    except (ConfigError, BusinessError) as exc:
        sys.stderr.write(f"callengine: {exc}\n")
        return 2
    business = businesses.get(args.business)
    if business is None:
        sys.stderr.write(f"callengine: no business {args.business!r} (known: {', '.join(sorted(businesses))})\n")
        return 2
    language = args.language or business.language
    voice_name = args.tts or settings.tts
    try:
        tts = make_tts(voice_name, settings)
        stt = WhisperStt(  # one-shot transcriptions: no partials, so no second model copy
            model_path=args.stt_model or settings.whisper.model or None,
            cpu_threads=settings.whisper.cpu_threads,
            partial_interval_s=0,
        )
    except (ProviderError, ValueError) as exc:
        sys.stderr.write(f"callengine: {exc}\n")
        return 2
    if not stt.supports(language):
        sys.stderr.write(
            f"callengine: the recognizer model {stt.model_path} does not know {language}; "
            "give a multilingual whisper model with --stt-model\n"
        )
        return 2
    speaks = getattr(getattr(tts, "inner", tts), "speaks", None)
    if speaks is not None and not speaks(language):
        voice_name += f" (espeak-ng for {language})"
    results = check_lines(business_lines(business, short_lang(language)), tts=tts, stt=stt, language=language,
                          voice=business.voice)
    if args.json:
        sys.stdout.write(json.dumps(as_json(results, business=business.id, voice=voice_name, language=language),
                                    ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render_table(results, business=business.id, voice=voice_name, language=language) + "\n")
    errors, length = totals(results)
    if args.max_error is not None and length and errors / length > args.max_error / 100.0:
        return 1
    return 0
