"""Store fixtures: a real PostgreSQL for the session, and a fresh store per test.

Import them into ``tests/conftest.py`` with ``from tests.conftest_store import *``
(``__all__`` lists them).

* ``pg_server`` (session): a :class:`tests.pgserver.PgServer`, started. When the
  PostgreSQL server binaries are missing the fixture FAILS with a message naming
  the ``postgresql`` package, unless ``CALLENGINE_TEST_NO_PG=1`` is set, in
  which case every PostgreSQL test is skipped.
* ``pg_dsn``: a DSN to a database created empty for this test (dropped after).
* ``sqlite_store`` / ``pg_store``: a migrated store of that backend, closed after.
* ``store``: parametrized over both backends (test ids ``[sqlite]``,
  ``[postgres]``), so one test body runs on each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engine.store import Store

if TYPE_CHECKING:
    from tests.pgserver import PgServer

__all__ = ["pg_server", "pg_dsn", "sqlite_store", "pg_store", "store"]

NO_PG_ENV = "CALLENGINE_TEST_NO_PG"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if os.environ.get(NO_PG_ENV) == "1":
        pytest.skip(f"PostgreSQL tests disabled by {NO_PG_ENV}=1")
    from tests.pgserver import PgNotInstalled, PgServer

    try:
        server = PgServer()
    except PgNotInstalled as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        server.start()
    except Exception:
        server.cleanup()
        raise
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    dsn = pg_server.create_database()
    try:
        yield dsn
    finally:
        if not pg_server.running:  # an outage test left it stopped
            pg_server.start()
        pg_server.drop_database(dsn.rsplit("/", 1)[-1])


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    from engine.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "callengine.db")
    try:
        store.migrate()
        yield store
    finally:
        store.close()


@pytest.fixture
def pg_store(pg_dsn: str) -> Iterator[Store]:
    from engine.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn)
    try:
        store.migrate()
        yield store
    finally:
        store.close()


_STORE_FIXTURES = {"sqlite": "sqlite_store", "postgres": "pg_store"}


@pytest.fixture(params=sorted(_STORE_FIXTURES))
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(_STORE_FIXTURES[request.param])
