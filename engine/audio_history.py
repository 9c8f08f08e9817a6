"""The caller audio a recognizer has not yet turned into a final transcript.

One per call. The decoder (trio thread) appends every ``AudioChunk`` and
``UtteranceEnded`` it sends to the STT slot; the STT actor (its own thread)
trims what a final transcript covers. When the STT session dies and the
supervisor starts a new one (or the fallback), the new incarnation replays
``pending()`` first and then skips mailbox items whose ``seq`` it already
replayed, so no word is lost and none is recognized twice.

Bounded (``max_items``, about 30 s at 60 ms batches): a recognizer that never
produces a final cannot make a call hold unbounded audio; the oldest is
dropped and counted.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Union

from engine.messages import AudioChunk, UtteranceEnded

Item = Union[AudioChunk, UtteranceEnded]


class AudioHistory:
    def __init__(self, max_items: int = 500) -> None:
        self._items: deque[Item] = deque()
        self._max = max_items
        self._lock = threading.Lock()
        self._seq = 0
        self.dropped = 0

    def next_seq(self) -> int:
        """The next sequence number (decoder's thread only)."""
        self._seq += 1
        return self._seq

    def append(self, item: Item) -> None:
        with self._lock:
            self._items.append(item)
            if len(self._items) > self._max:
                self._items.popleft()
                self.dropped += 1

    def trim_through(self, seq: int) -> None:
        """Forget every item with ``seq`` <= ``seq`` (a final covered them)."""
        with self._lock:
            while self._items and self._items[0].seq <= seq:
                self._items.popleft()

    def pending(self) -> list[Item]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
