"""The recorder: one per process, the only writer of call and chat records.

A ``PykkaActor``: database writes block, so they happen on the recorder's own
thread and no hot path ever waits on them. Everything reaches it as a ``Record*``
message (``Runtime.record`` is thread-safe and never blocks).

Durability: writes go through ``DurableWriter``: straight to the store while it
answers; into the local journal (fsynced) while it does not, and in order after
anything already journaled. A ``FlushJournal`` tick (sent every couple of
seconds by the runtime) replays the journal when the database is back. Nothing
accepted is lost, nothing is reordered.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.actor import ActorContext, PykkaActor
from engine.messages import FlushJournal
from engine.store import DurableWriter

log = logging.getLogger("callengine.recorder")


class Recorder(PykkaActor):
    def __init__(self, ctx: ActorContext, writer: DurableWriter) -> None:
        super().__init__(ctx)
        self._writer = writer

    def receive(self, msg: Any) -> None:
        if isinstance(msg, FlushJournal):
            if self._writer.pending:
                self._writer.flush()
            return
        self._writer.write(msg)
