"""Admission to the process's whisper decoders: finals first, partials on a budget.

One gate per process (the models are shared by every call). Finals and partials
decode on separate model instances (the partial one on threads of lower CPU
priority), so a final never waits for a partial: it waits only while ``slots``
other finals run. A partial never waits either: it starts only when no final is
waiting, a final slot is free (with every slot taken the CPU belongs to finals),
fewer than ``partial_slots`` partials run, and the partial CPU budget has credit.
The budget is a token bucket in decode seconds: it fills at ``partial_share``
seconds per second of wall time, holds at most ``burst_s``, and each partial pays
its measured decode time when it ends, so with many calls talking at once
partials thin out instead of taking CPU from finals and the 20 ms path.

Thread-safe; the clock is injected so the rules are tested without threads.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["DecodeGate"]


class DecodeGate:
    def __init__(
        self,
        slots: int,
        *,
        partial_slots: int = 1,
        partial_share: float = 0.5,
        burst_s: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1 or partial_slots < 1:
            raise ValueError("slots and partial_slots must be >= 1")
        if partial_share < 0 or burst_s < 0:
            raise ValueError("partial_share and burst_s must be >= 0")
        self.slots = slots
        self.partial_slots = partial_slots
        self._share = partial_share
        self._burst = burst_s
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._busy = 0
        self._partials = 0
        self._finals_waiting = 0
        self._credit = burst_s
        self._filled_at = clock()
        self.partials_started = 0
        self.partials_refused = 0

    def acquire_final(self) -> None:
        """Block until fewer than ``slots`` finals run; waiting finals keep new partials out."""
        with self._cond:
            self._finals_waiting += 1
            try:
                while self._busy >= self.slots:
                    self._cond.wait()
            finally:
                self._finals_waiting -= 1
            self._busy += 1

    def release_final(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify()

    def try_acquire_partial(self) -> bool:
        """Take a slot for a partial now, or say no (never blocks)."""
        with self._cond:
            self._refill()
            if (
                self._finals_waiting
                or self._busy >= self.slots  # finals only
                or self._partials >= self.partial_slots
                or self._credit <= 0.0
            ):
                self.partials_refused += 1
                return False
            self._partials += 1
            self.partials_started += 1
            return True

    def release_partial(self, decode_s: float) -> None:
        """A partial ended after ``decode_s`` seconds of decoding: free its slot, pay for it."""
        with self._cond:
            self._refill()
            self._credit -= max(0.0, decode_s)
            self._partials -= 1

    def _refill(self) -> None:
        now = self._clock()
        self._credit = min(self._burst, self._credit + (now - self._filled_at) * self._share)
        self._filled_at = now
