"""Hebrew vowel points (niqqud) restored with the Nakdimon model, then phonemes for espeak-ng.

Hebrew is written without vowels; espeak-ng guesses them from its rules and gets
many common words wrong. Nakdimon (Elazar Gershuni, MIT; a character-level model
that predicts, for every letter, its vowel point, dagesh and shin/sin dot) puts
them back first. Its ONNX export is shipped inside the ``piper-tts`` wheel; the
setup (``scripts/fetch-models.sh``) copies that one model file out of the wheel
into ``<venv>/share/callengine/nakdimon.onnx``. No ``piper-tts`` code (GPL-3) is
used or imported: the character tables below are Nakdimon's own (its
``hebrew.py`` / ``dataset.py``), and the model is run here with onnxruntime.

The model takes the character ids as float32 (its embedding lookup is inside the
graph) and returns three heads per character: ``N`` (16 classes: none, rafe, the
points U+05B0-U+05BC, patah), ``D`` (none, rafe, dagesh) and ``S`` (none, rafe,
shin dot, sin dot). Marks are written in the order dagesh, shin/sin dot, vowel,
as Nakdimon does.

espeak-ng does not read pointed text well (it spells out the names of letters with
a dagesh), so ``espeak_phonemes`` turns the pointed words into espeak-ng's own
phoneme mnemonics for its Hebrew voice (``[[Sal'om]]``: ``S`` = ʃ, ``X`` = χ,
``Q"`` = ʁ, ``'`` before the stressed vowel), which espeak-ng speaks as given.
Rules (modern Israeli Hebrew): ב/כ/פ are b/k/p with a dagesh and v/χ/f without;
ש is ʃ or s by its dot; ו with holam is o, with a dagesh and no vowel u; א, ע and
a word-final ה without a vowel are silent; a sheva is silent except on a word's
first letter when that is a one-letter prefix (ב כ ל מ ו) or the pair will not cluster (then e); a patah on a
final ח/ע is read before it; stress falls on the last vowel (the most common
Hebrew stress). Stress before the last syllable for segolates (בֹּקֶר) and the dual
(מָאתַיִם) was tried and measured worse with the recognizer (CER 63.8 % against
56.9 % on demo-he, same run), so words stressed before the last syllable are
misplaced, a known limit.

Thread-safe: one ``InferenceSession`` per process, ``run`` from any thread.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

__all__ = ["NakdimonDiacritizer", "default_model_path", "espeak_phonemes"]

_RAFE = "\u05bf"
_LETTERS = [chr(c) for c in range(0x05D0, 0x05EB)]
_VALID = [" ", "!", '"', "'", "(", ")", ",", "-", ".", ":", ";", "?"] + _LETTERS
_INPUT = ["", "H", "O", "5"] + _VALID  # index 0 is the mask token
_IDS = {c: float(i) for i, c in enumerate(_INPUT)}
_NIQQUD = ["", _RAFE] + [chr(c) for c in range(0x05B0, 0x05BD)] + ["\u05b7"]
_DAGESH = ["", _RAFE, "\u05bc"]
_SIN = ["", _RAFE, "\u05c1", "\u05c2"]
_FINALS = dict(zip("ךםןףץ", "כמנפצ"))
_CAN_DAGESH = set("בגדהוזטיכלמנספצקשתךף")
_CAN_NIQQUD = set("אבגדהוזחטיכלמנסעפצקרשתךן")
_POINTS = re.compile("[\u0591-\u05c7]")
_DASHES = {"\u05be": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-", "[": "(", "]": ")",
           "´": "'", "‘": "'", "’": "'", "“": '"', "”": '"', "״": '"', "׳": "'", "…": ",", "\n": " ", "\t": " "}


def default_model_path() -> Path:
    """Where the setup puts the model: ``<sys.prefix>/share/callengine/nakdimon.onnx``."""
    return Path(sys.prefix) / "share" / "callengine" / "nakdimon.onnx"


def _input_char(c: str) -> str:
    if c in _IDS:
        return c
    if c in _FINALS:
        return _FINALS[c]
    if c in _DASHES:
        return _DASHES[c]
    if c.isdigit():
        return "5"
    if c in ("ײ", "װ", "ױ"):
        return "H"
    return "O"


class NakdimonDiacritizer:
    """``diacritize(text)`` -> the text with niqqud. Raises ``FileNotFoundError`` for a missing model."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"no Nakdimon model at {path} (run scripts/fetch-models.sh)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.model_path = path

    def diacritize(self, text: str) -> str:
        letters = list(_POINTS.sub("", text))
        if not letters:
            return ""
        ids = np.array([[_IDS[_input_char(c)] for c in letters]], dtype=np.float32)
        n_out, d_out, s_out = self._session.run(None, {self._input: ids})
        niqqud, dagesh, sin = (np.argmax(h[0], axis=-1) for h in (n_out, d_out, s_out))
        out: list[str] = []
        for c, n, d, s in zip(letters, niqqud, dagesh, sin):
            out.append(c)
            if c in _CAN_DAGESH:
                out.append(_DAGESH[d])
            if c == "ש":
                out.append(_SIN[s])
            if c in _CAN_NIQQUD:
                out.append(_NIQQUD[n])
        return "".join(out).replace(_RAFE, "")


_CONSONANTS = {
    "ב": ("b", "v"), "כ": ("k", "X"), "ך": ("k", "X"), "פ": ("p", "f"), "ף": ("p", "f"),
    "ג": "g", "ד": "d", "ה": "h", "ז": "z", "ח": "X", "ט": "t", "י": "j", "ל": "l", "מ": "m", "ם": "m",
    "נ": "n", "ן": "n", "ס": "s", "צ": "ts", "ץ": "ts", "ק": "k", "ר": 'Q"', "ת": "t", "א": "", "ע": "", "ו": "v",
}
_GERESH_SOUNDS = {"ג": "dZ", "ז": "Z", "צ": "tS", "ץ": "tS", "ת": "t"}
_VOWELS = {"\u05b1": "e", "\u05b2": "a", "\u05b3": "o", "\u05b4": "i", "\u05b5": "e", "\u05b6": "e",
           "\u05b7": "a", "\u05b8": "a", "\u05b9": "o", "\u05ba": "o", "\u05bb": "u", "\u05c7": "o"}
_SHEVA, _DAGESH_MARK, _SHIN_DOT, _SIN_DOT, _HOLAM = "\u05b0", "\u05bc", "\u05c1", "\u05c2", "\u05b9"
_WORD = re.compile(r"[\u05d0-\u05ea][\u05d0-\u05ea\u0591-\u05c7'׳\"״]*")
_VOWEL_LETTERS = set("aeiou")


def _letters(word: str) -> list[tuple[str, set[str], bool]]:
    """(letter, its marks, geresh after it) for each letter of a pointed word."""
    out: list[tuple[str, set[str], bool]] = []
    for c in word:
        if "\u05d0" <= c <= "\u05ea":
            out.append((c, set(), False))
        elif out and c in ("'", "׳"):
            out[-1] = (out[-1][0], out[-1][1], True)
        elif out and "\u0591" <= c <= "\u05c7":
            out[-1][1].add(c)
    return out


def word_phonemes(word: str) -> str:
    """espeak-ng Hebrew mnemonics for one pointed word (no brackets)."""
    letters = _letters(word)
    sounds: list[str] = []  # consonant and vowel symbols in order
    n = len(letters)
    for i, (c, marks, geresh) in enumerate(letters):
        vowel = next((_VOWELS[m] for m in marks if m in _VOWELS), "")
        if c == "ו" and i == 0 and _DAGESH_MARK in marks and not vowel:
            sounds.append("u")  # the conjunction before a labial or a sheva
            continue
        if c == "ו" and i > 0:
            if _HOLAM in marks and not vowel.replace("o", ""):
                sounds.append("o")
                continue
            if _DAGESH_MARK in marks and not vowel:
                sounds.append("u")
                continue
        if c == "י" and not vowel and i > 0 and sounds and sounds[-1] in ("i", "e"):
            continue  # a vowel letter after i/e
        if c == "ה" and i == n - 1 and not vowel and _DAGESH_MARK not in marks:
            continue  # a silent final he
        if geresh and c in _GERESH_SOUNDS:
            cons = _GERESH_SOUNDS[c]
        elif c == "ש":
            cons = "s" if _SIN_DOT in marks else "S"
        else:
            table = _CONSONANTS.get(c, "")
            cons = (table[0] if _DAGESH_MARK in marks or i == 0 else table[1]) if isinstance(table, tuple) else table
        if vowel == "a" and i == n - 1 and c in ("ח", "ע", "ה") and i > 0:  # furtive patah
            sounds.extend(["a", cons] if cons else ["a"])
            continue
        if cons:
            sounds.append(cons)
        if vowel:
            sounds.append(vowel)
        elif _SHEVA in marks and i == 0 and n > 2:
            nxt = letters[1][0]
            if c in "בכלמוינר" or nxt in "אהעחי" or nxt == c:  # the prefixes, and pairs that do not cluster
                sounds.append("e")
    if not sounds:
        return ""
    vowels = [k for k, s in enumerate(sounds) if s in _VOWEL_LETTERS]
    if len(vowels) > 1:
        sounds.insert(vowels[-1], "'")
    return "".join(sounds)


def espeak_phonemes(pointed: str) -> str:
    """A pointed Hebrew sentence as espeak-ng input: each Hebrew word as ``[[phonemes]]``,
    punctuation and any other text left as it is (espeak-ng reads that itself)."""

    def repl(m: re.Match[str]) -> str:
        ph = word_phonemes(m[0])
        return f"[[{ph}]]" if ph else ""

    return _WORD.sub(repl, pointed)
