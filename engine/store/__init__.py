"""Persistence: the ``Store`` interface, its two backends, and the write-behind journal.

Public surface (everything else in this package is an implementation detail):

* ``Store``, ``StoreUnavailable`` — the interface (``engine.store.base``).
* ``open_store(url)`` — a migrated store chosen by URL (the host passes
  ``DATABASE_URL``): empty/None or ``sqlite:///path`` -> SQLite,
  ``postgres://`` / ``postgresql://`` -> PostgreSQL.
* ``Journal``, ``DurableWriter`` — what the recorder writes through so that no
  record is lost while the database is down (``engine.store.journal``).
* ``InvalidRecord`` — raised for a malformed record, by every writer.

The backends are imported lazily so that a process on SQLite never imports
asyncpg.
"""

from __future__ import annotations

from pathlib import Path

from engine.store.base import Record, Store, StoreUnavailable
from engine.store.journal import DurableWriter, Journal
from engine.store.records import InvalidRecord

__all__ = [
    "Record",
    "Store",
    "StoreUnavailable",
    "InvalidRecord",
    "Journal",
    "DurableWriter",
    "open_store",
    "DEFAULT_SQLITE_PATH",
]

DEFAULT_SQLITE_PATH = Path("var") / "callengine.db"


def open_store(url: str | None, *, migrate: bool = True) -> Store:
    """Open the store named by ``url`` and, unless ``migrate=False``, apply migrations.

    * ``None`` or ``""``: SQLite at ``var/callengine.db`` (relative to the
      working directory; the directory is created).
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
      ``sqlite:///:memory:``: SQLite at that path.
    * ``postgres://...`` or ``postgresql://...``: PostgreSQL (asyncpg), the URL
      passed on as the DSN.

    Raises ``ValueError`` for any other scheme, and ``StoreUnavailable`` when
    migrations cannot reach the database (the store is closed first, so no
    thread is left behind). Blocking; call it at start-up, off the trio thread.
    """
    if url is not None and not isinstance(url, str):
        raise ValueError(f"store URL must be a str or None, got {type(url).__name__}")
    url = (url or "").strip()
    store: Store
    if not url:
        from engine.store.sqlite import SqliteStore

        store = SqliteStore(DEFAULT_SQLITE_PATH)
    elif url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError(f"SQLite URL must look like sqlite:///path/to/file.db, got {url!r}")
        from engine.store.sqlite import SqliteStore

        store = SqliteStore(url[len("sqlite:///") :])
    elif url.startswith(("postgres://", "postgresql://")):
        from engine.store.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        scheme = url.split(":", 1)[0]
        raise ValueError(f"unsupported store URL scheme {scheme!r}: use sqlite:///path or postgresql://...")
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
