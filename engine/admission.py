"""Admission: whether a new media stream may be opened now (a pure decision object).

Why a call counts from its upgrade, not from its ``start``: the capacity check
used to count only calls whose ``start`` had arrived, so a burst of upgrades
all passed it before any of them started (30 upgrades against ``max_calls =
20`` gave 27-31 live calls). Here every accepted upgrade holds a
:class:`Ticket` from before ``websocket.accept`` until its handler leaves, and
capacity is counted in tickets.

Limits, each refused with its own reason (``Admission.admit`` returns the
reason instead of a ticket):

* ``draining``: the process is shutting down (SIGTERM); nothing new starts.
* ``capacity``: ``max_calls`` tickets are out (live calls and upgrades that
  have not started yet together).
* ``pending``: ``max_pending`` upgrades have not sent ``start`` yet. Such
  upgrades cost a socket and a task and no call; Twilio sends ``start``
  within milliseconds, so many of them at once are a fault or an attack.
* ``pending_ip``: one client address holds ``max_pending_per_ip`` of them
  (0: no limit). Only *not-started* connections are limited per address,
  never live calls: Twilio's media servers share a few addresses among many
  customers' calls, so a per-address cap on calls would refuse real callers.
  Behind a reverse proxy every connection has the proxy's address; set it to
  0 there.

``peak`` is the most tickets ever out at once, ``peak_live`` the most started
calls: what a burst test reads to prove the cap held.

Owned by the runtime; used on the trio thread only (no locks). A ticket's
``release`` is idempotent, so the owner can call it in a ``finally``.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["Admission", "Ticket", "REFUSALS"]

REFUSALS = ("draining", "capacity", "pending", "pending_ip")


class Ticket:
    """One admitted upgrade: pending until :meth:`started`, then a live call,
    until :meth:`release`."""

    __slots__ = ("_admission", "ip", "is_started", "released")

    def __init__(self, admission: "Admission", ip: str) -> None:
        self._admission = admission
        self.ip = ip
        self.is_started = False
        self.released = False

    def started(self) -> None:
        """Its ``start`` arrived: no longer pending. Idempotent."""
        if self.is_started or self.released:
            return
        self.is_started = True
        self._admission._on_started(self)

    def release(self) -> None:
        """The handler is leaving: the slot is free. Idempotent."""
        if self.released:
            return
        self.released = True
        self._admission._on_released(self)


class Admission:
    """See the module docstring."""

    def __init__(self, max_calls: int, max_pending: int, max_pending_per_ip: int = 0) -> None:
        if max_calls < 0 or max_pending < 0 or max_pending_per_ip < 0:
            raise ValueError("admission limits must not be negative")
        self.max_calls = max_calls
        self.max_pending = max_pending
        self.max_pending_per_ip = max_pending_per_ip
        self.draining = False
        self.admitted = 0  # tickets out
        self.pending = 0  # tickets not started
        self.live = 0  # tickets started
        self.peak = 0
        self.peak_live = 0
        self._pending_by_ip: Counter[str] = Counter()

    def refusal(self, ip: str = "") -> str | None:
        """Why an upgrade from ``ip`` would be refused now, or None."""
        if self.draining:
            return "draining"
        if self.admitted >= self.max_calls:
            return "capacity"
        if self.pending >= self.max_pending:
            return "pending"
        if self.max_pending_per_ip and self._pending_by_ip[ip] >= self.max_pending_per_ip:
            return "pending_ip"
        return None

    def admit(self, ip: str = "") -> Ticket | str:
        """A ticket for a new upgrade from ``ip``, or the reason it is refused."""
        reason = self.refusal(ip)
        if reason is not None:
            return reason
        ticket = Ticket(self, ip)
        self.admitted += 1
        self.pending += 1
        self._pending_by_ip[ip] += 1
        self.peak = max(self.peak, self.admitted)
        return ticket

    def can_take_call(self) -> bool:
        """For the voice webhook: would a new call's stream be admitted? (Not
        counting the per-address limits, which apply to the stream's socket.)"""
        return not self.draining and self.admitted < self.max_calls

    def _on_started(self, ticket: Ticket) -> None:
        self._unpend(ticket.ip)
        self.live += 1
        self.peak_live = max(self.peak_live, self.live)

    def _on_released(self, ticket: Ticket) -> None:
        self.admitted -= 1
        if ticket.is_started:
            self.live -= 1
        else:
            self._unpend(ticket.ip)

    def _unpend(self, ip: str) -> None:
        self.pending -= 1
        left = self._pending_by_ip[ip] - 1
        if left > 0:
            self._pending_by_ip[ip] = left
        else:
            del self._pending_by_ip[ip]

    def snapshot(self) -> dict[str, int | bool]:
        return {
            "draining": self.draining,
            "admitted": self.admitted,
            "pending": self.pending,
            "live": self.live,
            "peak": self.peak,
            "peak_live": self.peak_live,
        }
