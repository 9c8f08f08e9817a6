"""What a caller's words say about their turn: how transcripts compare, and whether the caller has more to say.

Both are judgements on text alone, so they are pure functions: ``normalize``
makes two transcripts of the same words compare equal whatever the recognizer's
case and punctuation (a speculation is kept only when the words are the same);
``looks_unfinished`` holds a turn whose last words promise more (a number read
in groups, a filler, a conjunction, a trailing comma), in English and Hebrew,
so digits and hesitations stay one turn.
"""

from __future__ import annotations

import re

__all__ = ["normalize", "looks_unfinished"]

_WORDS = re.compile(r"[\w']+", re.UNICODE)

#: Last words after which a caller has rarely finished: fillers, conjunctions,
#: articles and prepositions (English and Hebrew).
_OPEN_ENDINGS = frozenset(
    "uh um uhm er erm ah eh hmm mm mhm and or but so because like the a an to of for with "
    "is my your our at in on from than then "
    "אה אמ אממ אז ו או אבל כי של עם את".split()
)
_NUMBER_WORDS = frozenset(
    "zero oh o one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
    "thousand double triple "
    "אפס אחת אחד שתיים שניים שלוש ארבע חמש שש שבע שמונה תשע".split()
)


def normalize(text: str) -> str:
    """Lower case words only: how two transcripts are compared."""
    return " ".join(_WORDS.findall(text.lower()))


def looks_unfinished(text: str) -> bool:
    """Whether the caller probably has more to say after ``text``: it ends in a
    digit or number word (a number read in groups; recognizers add a full stop
    after each group, so a trailing '.' does not count as finished), a filler, a
    conjunction, article or preposition, or a comma/dash/ellipsis. A question or
    exclamation mark counts as finished."""
    t = text.rstrip()
    if not t:
        return False
    if t[-1] in "?!":
        return False
    if t[-1] in ",-–—…" or t.endswith(".."):
        return True
    words = _WORDS.findall(t.lower())
    if not words:
        return False
    last = words[-1]
    return last[-1].isdigit() or last in _NUMBER_WORDS or last in _OPEN_ENDINGS
