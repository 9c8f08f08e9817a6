"""The ``Store`` interface: what the engine persists and reads back.

Two backends implement it and run the same test suite: SQLite (the embedded
default, ``var/callengine.db`` in WAL mode) and PostgreSQL through asyncpg (a
dedicated asyncio thread owns the pool; callers on any thread submit to it).

Every method is *blocking* and *thread-safe*: the recorder (a pykka actor) and
request handlers (through ``trio.to_thread``) call it from their own threads.
No method is ever called on the trio thread or on the 20 ms path.

Writes are idempotent (each record carries its natural key: call_sid,
(call_sid, turn_index), message_id, (source, ref) for leads), so a journal that
replays after a crash can never duplicate a row.

``StoreUnavailable`` means "the database cannot be reached right now": the
caller may journal the write and retry later. Any other exception is a bug or
bad data and is not retried.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

from engine.messages import (
    RecordCallEnded,
    RecordCallStarted,
    RecordChatMessage,
    RecordLead,
    RecordTurn,
)

Record = RecordCallStarted | RecordCallEnded | RecordTurn | RecordLead | RecordChatMessage


class StoreUnavailable(Exception):
    """The backend is unreachable (connection refused, dropped, timed out)."""


class Store(abc.ABC):
    """Durable records: businesses, calls, turns, leads, chats, WhatsApp messages."""

    backend: str  # "sqlite" | "postgres"

    @abc.abstractmethod
    def migrate(self) -> None:
        """Apply numbered migrations not yet applied. Idempotent."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and threads. Idempotent."""

    # ---- writes (idempotent) -------------------------------------------------

    @abc.abstractmethod
    def apply(self, record: Record) -> bool:
        """Persist one record. Returns False when it was already there (a duplicate).

        Raises ``StoreUnavailable`` when the database cannot be reached.
        """

    @abc.abstractmethod
    def upsert_business(self, business_id: str, name: str, profile: Mapping[str, Any]) -> None: ...

    # ---- reads ---------------------------------------------------------------

    @abc.abstractmethod
    def list_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: call_sid, stream_sid, business, from, to, started_at, ended_at, end_reason."""

    @abc.abstractmethod
    def get_call(self, call_sid: str) -> dict[str, Any] | None:
        """The call with ``turns`` (ordered by turn_index; transcript, reply,
        interrupted, stamps, dtmf) and ``leads``; None if unknown."""

    @abc.abstractmethod
    def list_leads(self, limit: int = 100) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def chat_history(self, chat_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` messages of a chat, oldest first (direction, text, at, message_id)."""

    @abc.abstractmethod
    def has_chat_message(self, message_id: str) -> bool: ...

    @abc.abstractmethod
    def list_chats(self, limit: int = 100) -> list[dict[str, Any]]: ...

    # ---- portable statements of other store-side modules ----------------------

    @abc.abstractmethod
    def query(self, statement: str, *args: Any) -> list[dict[str, Any]]:
        """Run one read statement written in the portable dialect (``$n``
        placeholders, see ``engine.store.sql.Sql``); rows as dicts. For
        modules that own their tables and SQL (``engine.presence``)."""

    @abc.abstractmethod
    def execute(self, statement: str, *args: Any) -> int:
        """Run one write statement (portable dialect) in its own transaction;
        the number of rows it changed."""

    def apply_many(self, records: Sequence[Record]) -> None:
        for record in records:
            self.apply(record)
