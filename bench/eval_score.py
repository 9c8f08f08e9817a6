"""Scoring for ``callengine eval``: the text normaliser, word alignment, and what the
alignment says about turns (dropped, split, merged, words lost at the edges).

Pure functions over strings and lists; no audio, no I/O.

The normaliser (applied to references and hypotheses alike, so that spelling
conventions are not counted as recognition errors):

1. lower case; typographic apostrophes and dashes made plain;
2. a few written forms spoken one way: ``mr`` → ``mister``, ``mrs`` → ``missus``,
   ``dr`` → ``doctor``, ``ok`` → ``okay``, ``&`` → ``and``, ``%`` → ``percent``,
   ``#`` → ``pound``, ``*`` → ``star``;
3. numbers spoken as words: a group of up to three digits, or a number written
   with thousands separators, becomes its cardinal words (``15`` → ``fifteen``,
   ``1,234`` → ``one thousand two hundred thirty four``); a longer run of digits is
   read digit by digit (``29340`` → ``two nine three four zero``), as phone numbers
   and codes are spoken; ordinals (``1st``, ``22nd``) become ordinal words; a time
   ``9:30`` becomes ``nine thirty``; ``$5`` → ``five dollars``; ``oh`` inside a
   digit run (``three oh five``) is ``zero``;
4. contractions other than ``'s`` are expanded (``you're`` → ``you are``, ``can't``
   and ``cannot`` → ``can not``, ``won't`` → ``will not``, ``I'm`` → ``i am``, ``'ll``,
   ``'ve``, ``'d``); then apostrophes are dropped (``it's`` → ``its``), hyphens split words
   (``cold-hearted`` → ``cold hearted``), every other character that is not a
   letter or a digit ends a word;
5. hesitation sounds (``uh``, ``um``, ``er``, ``ah``, ``hmm``, ``mm``) are removed.

Alignment is Levenshtein over words with unit costs; ties prefer a match or a
substitution over a deletion plus an insertion, so error counts are the minimum
edit distance and the split into substitutions, deletions and insertions is
deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["normalise", "words", "align", "Op", "Counts", "score_pair", "attribute_turns", "TurnAttribution"]

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
    "twelve": "twelfth",
}
_WRITTEN = {
    "mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay", "st": "saint", "vs": "versus",
}
_FILLERS = frozenset({"uh", "um", "er", "ah", "hmm", "mm", "erm", "uhm", "mhm"})
_DIGIT_WORDS = frozenset(_ONES[:10])
_SYMBOLS = {"&": " and ", "%": " percent ", "#": " pound ", "*": " star ", "+": " plus ", "@": " at "}

_CONTRACTED = {"re": " are", "m": " am", "ll": " will", "ve": " have", "d": " would"}
_CONTRACTIONS = re.compile(r"(?<=[a-z])'(re|m|ll|ve|d)\b")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_MONEY = re.compile(r"\$(\d[\d,]*(?:\.\d+)?)")
_THOUSANDS = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_NUMBER = re.compile(r"\d+")
_NON_WORD = re.compile(r"[^a-z0-9\u0590-\u05ff\u00c0-\u024f]+")


def _below_thousand(n: int) -> list[str]:
    out: list[str] = []
    if n >= 100:
        out += [_ONES[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return out
    if n < 20:
        out.append(_ONES[n])
    else:
        out.append(_TENS[n // 10])
        if n % 10:
            out.append(_ONES[n % 10])
    return out


def cardinal(n: int) -> list[str]:
    """``n`` (0 ≤ n < 10**12) in words, without "and": 1234 → one thousand two hundred thirty four."""
    if n < 1000:
        return _below_thousand(n)
    out: list[str] = []
    for value, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= value:
            out += _below_thousand(n // value) + [name]
            n %= value
    if n:
        out += _below_thousand(n)
    return out


def _ordinal(n: int) -> list[str]:
    w = cardinal(n)
    last = w[-1]
    if last in _ORD:
        w[-1] = _ORD[last]
    elif last.endswith("y"):
        w[-1] = last[:-1] + "ieth"
    else:
        w[-1] = last + "th"
    return w


def _digits_to_words(digits: str) -> str:
    if len(digits) <= 3 and not (len(digits) > 1 and digits[0] == "0"):
        return " ".join(cardinal(int(digits)))
    return " ".join(_ONES[int(d)] for d in digits)


def _time(m: re.Match[str]) -> str:
    hours, minutes = m.group(1), m.group(2)
    if minutes == "00":
        return f" {int(hours)} "
    if minutes[0] == "0":
        return f" {int(hours)} oh {minutes[1]} "
    return f" {int(hours)} {minutes} "


def normalise(text: str) -> str:
    """The normalised form of ``text`` (see the module docstring): lower-case words
    separated by single spaces."""
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u2013", "-").replace("\u2014", " ")
    t = _MONEY.sub(lambda m: f" {m.group(1)} dollars ", t)
    t = _TIME.sub(_time, t)
    t = _THOUSANDS.sub(lambda m: " " + " ".join(cardinal(int(m.group(0).replace(",", "")))) + " ", t)
    t = _ORDINAL.sub(lambda m: " " + " ".join(_ordinal(int(m.group(1)))) + " ", t)
    t = _DECIMAL.sub(lambda m: f" {m.group(1)} point " + " ".join(_ONES[int(d)] for d in m.group(2)) + " ", t)
    for sym, word in _SYMBOLS.items():
        t = t.replace(sym, word)
    t = _CONTRACTIONS.sub(lambda m: _CONTRACTED[m.group(1)], t.replace("won't", "will not").replace("cannot", "can not"))
    t = t.replace("can't", "can not").replace("n't", " not")
    t = t.replace("'", "").replace("-", " ")
    t = _NUMBER.sub(lambda m: f" {_digits_to_words(m.group(0))} ", t)
    out: list[str] = []
    raw = _NON_WORD.sub(" ", t).split()
    for i, w in enumerate(raw):
        w = _WRITTEN.get(w, w)
        if w in _FILLERS:
            continue
        if w == "oh" and _in_digit_run(raw, i):
            w = "zero"
        out.append(w)
    return " ".join(out)


def _in_digit_run(raw: Sequence[str], i: int) -> bool:
    before = raw[i - 1] if i > 0 else ""
    after = raw[i + 1] if i + 1 < len(raw) else ""
    return before in _DIGIT_WORDS or after in _DIGIT_WORDS


def words(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return normalise(text).split()


@dataclass(frozen=True, slots=True)
class Op:
    """One step of an alignment: ``kind`` is ``ok``, ``sub``, ``del`` or ``ins``;
    ``ref``/``hyp`` are word indices (None where the word does not exist)."""

    kind: str
    ref: int | None
    hyp: int | None


def align(ref: Sequence[str], hyp: Sequence[str]) -> list[Op]:
    """The minimum-edit alignment of two word lists, in order."""
    n, m = len(ref), len(hyp)
    # cost[i][j]: edits to turn ref[:i] into hyp[:j]
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = i
    for j in range(1, m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        ri = ref[i - 1]
        row, prev = cost[i], cost[i - 1]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (0 if ri == hyp[j - 1] else 1)
            row[j] = min(diag, prev[j] + 1, row[j - 1] + 1)
    ops: list[Op] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (0 if ref[i - 1] == hyp[j - 1] else 1):
            ops.append(Op("ok" if ref[i - 1] == hyp[j - 1] else "sub", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            ops.append(Op("del", i - 1, None))
            i -= 1
        else:
            ops.append(Op("ins", None, j - 1))
            j -= 1
    ops.reverse()
    return ops


@dataclass(slots=True)
class Counts:
    """Word counts of a scored set: reference words, hits, substitutions, deletions, insertions."""

    ref_words: int = 0
    hits: int = 0
    sub: int = 0
    dels: int = 0
    ins: int = 0

    def add(self, other: "Counts") -> None:
        self.ref_words += other.ref_words
        self.hits += other.hits
        self.sub += other.sub
        self.dels += other.dels
        self.ins += other.ins

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins

    @property
    def wer(self) -> float:
        """(S + D + I) / N; 0 for an empty reference with no insertions."""
        if self.ref_words == 0:
            return 0.0 if self.ins == 0 else 1.0
        return self.errors / self.ref_words

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ref_words": self.ref_words, "hits": self.hits, "sub": self.sub, "del": self.dels, "ins": self.ins,
            "wer": round(self.wer, 4),
        }


def count_ops(ops: Sequence[Op]) -> Counts:
    c = Counts()
    for op in ops:
        if op.kind == "ok":
            c.hits += 1
        elif op.kind == "sub":
            c.sub += 1
        elif op.kind == "del":
            c.dels += 1
        else:
            c.ins += 1
    c.ref_words = c.hits + c.sub + c.dels
    return c


def score_pair(reference: str, hypothesis: str) -> Counts:
    """Counts for one reference against one hypothesis (both normalised here)."""
    return count_ops(align(words(reference), words(hypothesis)))


@dataclass(slots=True)
class TurnAttribution:
    """What the alignment of one call's turns against its utterances says.

    Per utterance (in order): the turns whose recognised words landed in it
    (``turns_of``), the words lost before the first and after the last recognised
    word (``lost_start``/``lost_end``: deletions at the edges), and its counts.
    ``dropped``: utterances with no recognised word at all; ``split``: utterances
    whose words came from two or more turns; ``merged``: turns whose words landed
    in two or more utterances."""

    counts: Counts
    per_utterance: list[Counts]
    turns_of: list[list[int]]
    lost_start: list[int]
    lost_end: list[int]
    dropped: list[int] = field(default_factory=list)
    split: list[int] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)


def attribute_turns(references: Sequence[str], turns: Sequence[str]) -> TurnAttribution:
    """Align the words of all ``turns`` (a call's stored transcripts, in order) with
    the words of all ``references`` (what the caller said, in order) as one
    sequence, so that an utterance split across turns or two utterances merged
    into one turn score the same as when they are kept whole, and the turn
    structure is read off the alignment afterwards. An inserted word counts to
    the utterance of the nearest aligned word of its own turn (before it, else
    after it); a turn with no aligned word counts to the utterance of the last
    aligned reference word before it (the first utterance when there is none)."""
    ref_words: list[str] = []
    ref_utt: list[int] = []
    for u, text in enumerate(references):
        for w in words(text):
            ref_words.append(w)
            ref_utt.append(u)
    hyp_words: list[str] = []
    hyp_turn: list[int] = []
    for t, text in enumerate(turns):
        for w in words(text):
            hyp_words.append(w)
            hyp_turn.append(t)
    ops = align(ref_words, hyp_words)
    n = len(references)
    per = [Counts() for _ in range(n)]
    turns_of: list[set[int]] = [set() for _ in range(n)]
    utts_of_turn: dict[int, set[int]] = {}
    # the utterance each recognised hypothesis word landed in
    hyp_utt: dict[int, int] = {op.hyp: ref_utt[op.ref] for op in ops if op.ref is not None and op.hyp is not None}
    last_utt = 0
    # ref-word positions that were recognised (hit or substitution), per utterance
    recognised: list[list[int]] = [[] for _ in range(n)]
    for op in ops:
        if op.ref is None and n:
            assert op.hyp is not None
            per[_insertion_utterance(op.hyp, hyp_turn, hyp_utt, last_utt)].ins += 1
        elif op.ref is not None:
            u = ref_utt[op.ref]
            last_utt = u
            if op.kind == "del":
                per[u].dels += 1
            else:
                per[u].hits += op.kind == "ok"
                per[u].sub += op.kind == "sub"
                recognised[u].append(op.ref)
                assert op.hyp is not None
                t = hyp_turn[op.hyp]
                turns_of[u].add(t)
                utts_of_turn.setdefault(t, set()).add(u)
    lost_start: list[int] = []
    lost_end: list[int] = []
    first_word = 0
    for u in range(n):
        count = sum(1 for x in ref_utt if x == u)
        per[u].ref_words = count
        if recognised[u]:
            lost_start.append(min(recognised[u]) - first_word)
            lost_end.append(first_word + count - 1 - max(recognised[u]))
        else:
            lost_start.append(count)
            lost_end.append(0)
        first_word += count
    total = Counts()
    for c in per:
        total.add(c)
    if n == 0:
        total.ins = len(hyp_words)
    return TurnAttribution(
        counts=total,
        per_utterance=per,
        turns_of=[sorted(s) for s in turns_of],
        lost_start=lost_start,
        lost_end=lost_end,
        dropped=[u for u in range(n) if per[u].ref_words and not recognised[u]],
        split=[u for u in range(n) if len(turns_of[u]) > 1],
        merged=sorted(t for t, us in utts_of_turn.items() if len(us) > 1),
    )


def _insertion_utterance(h: int, hyp_turn: Sequence[int], hyp_utt: dict[int, int], fallback: int) -> int:
    """The utterance an inserted hypothesis word ``h`` counts to (see :func:`attribute_turns`)."""
    t = hyp_turn[h]
    for step in (-1, 1):
        j = h + step
        while 0 <= j < len(hyp_turn) and hyp_turn[j] == t:
            if j in hyp_utt:
                return hyp_utt[j]
            j += step
    return fallback
