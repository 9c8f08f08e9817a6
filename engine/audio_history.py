"""The caller audio a new recognizer session must hear: speech not yet finalized.

One per call. The decoder (trio thread) appends every ``AudioChunk`` and
``UtteranceEnded`` it sends to the STT slot; the STT actor (its own thread)
trims what a final transcript covers. When the STT session dies and the
supervisor starts a new one (or the fallback), the new incarnation replays
``pending()`` first and then skips mailbox items whose ``seq`` it already
replayed, so no word is lost and none is recognized twice.

What is kept is the audio that holds speech no final has covered yet: from the
start of the oldest unfinalized utterance, minus a pre-roll (``preroll_bytes``:
the speech onset the VAD flags late), to now. Silence is not kept for its own
sake: while no unfinalized speech is held, only the newest ``preroll_bytes`` of
silence are (the pre-roll of whatever comes next), and a silence after an
utterance keeps at most ``settle_bytes`` at its head (what a recognizer needs to
end that utterance's result) plus the pre-roll at its tail. Why: a recognition
stream that dies while the caller is silent (a greeting, the agent talking) must
not have that silence replayed into the next stream. Replayed silence made each
new stream older than the one before; a service that ends streams after a fixed
amount of audio then killed every new stream during its replay, and the call
fell back to the weaker recognizer without a word said.

Bounded (``max_items``, about 50 s at 100 ms batches): a recognizer that never
produces a final cannot make a call hold unbounded audio; the oldest is
dropped and counted in ``dropped``. Silence left out on purpose is counted in
``skipped`` (items), never in ``dropped``.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Union

from engine.messages import AudioChunk, UtteranceEnded

Item = Union[AudioChunk, UtteranceEnded]

#: Audio kept before the speech's first chunk for batch recognizers: 600 ms of
#: 8 kHz PCM16, whatever the batch size. It must cover the VAD's decision delay
#: (the onset to ``SpeechStarted``: min_speech_ms, silero's 32 ms windows and its
#: slow rise on soft onsets), measured on real recorded speech (Asterisk's
#: prompts, ``python -m bench.vad_onsets``): p95 220 ms at the level recorded,
#: 365 ms 30 dB quieter. The delay exceeded 300 ms for 1.7 % (as recorded) to
#: 16 % (36 dB quieter) of the prompts, 600 ms for 0-0.9 %. Not much more: long
#: leading silence makes whisper guess worse.
PREROLL_BYTES = 600 * 16
#: 1 s of 8 kHz PCM16 after an utterance: a recognizer ends its result on trailing silence.
DEFAULT_SETTLE_BYTES = 1000 * 16


class AudioHistory:
    """Thread-safe: ``append`` on the decoder's thread, the rest on the STT actor's."""

    def __init__(
        self,
        max_items: int = 500,
        *,
        preroll_bytes: int = PREROLL_BYTES,
        settle_bytes: int = DEFAULT_SETTLE_BYTES,
    ) -> None:
        if preroll_bytes < 0 or settle_bytes < 0:
            raise ValueError("preroll_bytes and settle_bytes must be >= 0")
        self._items: deque[Item] = deque()  # kept, in seq order
        self._gap: deque[AudioChunk] = deque()  # the newest silence, beyond the settle head
        self._gap_bytes = 0
        self._settle_left = 0  # silence bytes still kept at the head of the current gap
        self._speech_held = False  # ``_items`` hold speech no final has covered
        self._max = max_items
        self._preroll = preroll_bytes
        self._settle = settle_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self.dropped = 0
        self.skipped = 0

    def next_seq(self) -> int:
        """The next sequence number (decoder's thread only)."""
        self._seq += 1
        return self._seq

    def append(self, item: Item) -> None:
        with self._lock:
            if isinstance(item, AudioChunk) and not item.in_speech:
                self._append_silence(item)
            else:
                self._flush_gap()
                self._items.append(item)
                if isinstance(item, AudioChunk):
                    self._speech_held = True
                    self._settle_left = self._settle
                elif not self._speech_held:
                    self._settle_left = 0
            while len(self._items) + len(self._gap) > self._max:
                if self._items:
                    self._items.popleft()
                else:
                    self._gap_bytes -= len(self._gap.popleft().pcm16)
                self.dropped += 1

    def trim_through(self, seq: int) -> None:
        """Forget every item with ``seq`` <= ``seq`` (a final covered them)."""
        with self._lock:
            items = self._items
            while items and items[0].seq <= seq:
                items.popleft()
            gap = self._gap
            while gap and gap[0].seq <= seq:
                self._gap_bytes -= len(gap.popleft().pcm16)
            first = next((k for k, i in enumerate(items) if isinstance(i, AudioChunk) and i.in_speech), None)
            lead = [items.popleft() for _ in range(len(items) if first is None else first)]
            self._speech_held = first is not None
            if not self._speech_held:
                self._settle_left = 0
            # What precedes the oldest speech still held (or everything, when none is
            # held) is silence after finalized speech: only its newest pre-roll stays.
            chunks = [i for i in lead if isinstance(i, AudioChunk)]
            self.skipped += len(lead) - len(chunks)
            if first is None:
                self._gap.extendleft(reversed(chunks))
                self._gap_bytes += sum(len(c.pcm16) for c in chunks)
                self._bound_gap()
                return
            size = 0
            keep: list[AudioChunk] = []
            for c in reversed(chunks):
                if size >= self._preroll:
                    self.skipped += 1
                    continue
                keep.append(c)
                size += len(c.pcm16)
            items.extendleft(keep)

    def pending(self) -> list[Item]:
        """What a new session must hear, oldest first."""
        with self._lock:
            return [*self._items, *self._gap]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items) + len(self._gap)

    # ---- internals (lock held) ----------------------------------------------------------

    def _append_silence(self, chunk: AudioChunk) -> None:
        if self._settle_left > 0 and not self._gap:
            self._items.append(chunk)
            self._settle_left -= len(chunk.pcm16)
            return
        self._gap.append(chunk)
        self._gap_bytes += len(chunk.pcm16)
        self._bound_gap()

    def _bound_gap(self) -> None:
        """Keep the newest ``preroll_bytes`` of the gap (at least its newest chunk)."""
        gap = self._gap
        while len(gap) > 1 and self._gap_bytes - len(gap[0].pcm16) >= self._preroll:
            self._gap_bytes -= len(gap.popleft().pcm16)
            self.skipped += 1

    def _flush_gap(self) -> None:
        """Speech (or a boundary) follows: the gap's newest silence is its pre-roll."""
        if self._gap:
            self._items.extend(self._gap)
            self._gap.clear()
            self._gap_bytes = 0
