"""The Store on both backends (SQLite and a real PostgreSQL), the journal, and the durable writer.

Tests taking the ``store`` fixture run twice: ``[sqlite]`` and ``[postgres]``.
The PostgreSQL server is real (``tests/pgserver.py``); the outage test stops and
restarts it under a writer thread.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.messages import (
    RecordCallEnded,
    RecordCallStarted,
    RecordChatMessage,
    RecordLead,
    RecordTurn,
)
from engine.store import DurableWriter, InvalidRecord, Journal, Store, StoreUnavailable, open_store
from engine.store.records import decode_record, encode_record
from engine.store.sql import load_migrations
from engine.store.sqlite import SqliteStore

ALL_MIGRATIONS = [m.version for m in load_migrations()]

try:  # the fixtures, unless tests/conftest.py already provides them
    from tests import conftest as _conftest

    _HAVE_FIXTURES = hasattr(_conftest, "pg_server")
except ImportError:
    _HAVE_FIXTURES = False
if not _HAVE_FIXTURES:
    from tests.conftest_store import *  # noqa: F401,F403


def started(call_sid: str = "CA1", at: float = 1_700_000_000.25) -> RecordCallStarted:
    return RecordCallStarted(call_sid, "MZ" + call_sid, "demo", "+972501234567", "+97231234567", at)


def turn(call_sid: str, index: int, **kw) -> RecordTurn:
    stamps = kw.pop("stamps", {"speech_end": 1000.0 + index, "stt_final": 1180.5 + index, "reply_first_frame": 1900})
    return RecordTurn(
        call_sid,
        index,
        kw.pop("transcript", f"caller says {index}"),
        kw.pop("reply", f"reply {index}"),
        kw.pop("interrupted", False),
        stamps,
        kw.pop("dtmf", ""),
    )


def message(chat_id: str, message_id: str, at: float, text: str = "שלום", direction: str = "in") -> RecordChatMessage:
    return RecordChatMessage(chat_id, "demo", message_id, direction, text, at)


ALL_RECORDS = [
    started(),
    RecordCallEnded("CA1", 1_700_000_060.5, "hangup", "asked about hours"),
    RecordTurn("CA1", 3, "מה השעות?", "אנחנו פתוחים 9-17", True, {"speech_end": 12.5, "llm_first_token": 300}, "1#"),
    RecordLead("demo", "call", "CA1", {"name": "דנה", "phone": "050-1234567"}, False),
    RecordChatMessage("972501234567@s.whatsapp.net", "demo", "wamid.ABC", "in", 'hi\nthere "quoted"', 1.5),
]


# ----------------------------------------------------------------- both backends


def test_migrations_are_idempotent(store: Store) -> None:
    assert store.applied_migrations() == ALL_MIGRATIONS  # type: ignore[attr-defined]
    store.apply(started())
    store.migrate()
    store.migrate()
    assert store.applied_migrations() == ALL_MIGRATIONS  # type: ignore[attr-defined]
    assert store.get_call("CA1")["stream_sid"] == "MZCA1"


def test_call_and_turns_round_trip(store: Store) -> None:
    assert store.get_call("CA1") is None
    assert store.apply(started("CA1", at=100.0))
    assert store.apply(started("CA2", at=200.0))
    stamps = {"speech_end": 1234.5, "stt_final": 1400.125, "reply_first_frame": 2100}
    for index in (2, 0, 1):  # out of order: reads come back by turn_index
        assert store.apply(turn("CA1", index, interrupted=index == 1, dtmf="5" if index == 2 else "", stamps=stamps))
    assert store.apply(RecordCallEnded("CA1", 160.5, "hangup", "summary text"))

    call = store.get_call("CA1")
    assert call is not None
    assert {k: call[k] for k in ("call_sid", "stream_sid", "business_id", "from_number", "to_number")} == {
        "call_sid": "CA1",
        "stream_sid": "MZCA1",
        "business_id": "demo",
        "from_number": "+972501234567",
        "to_number": "+97231234567",
    }
    assert (call["started_at"], call["ended_at"], call["end_reason"], call["summary"]) == (
        100.0,
        160.5,
        "hangup",
        "summary text",
    )
    assert [t["turn_index"] for t in call["turns"]] == [0, 1, 2]
    assert [t["interrupted"] for t in call["turns"]] == [False, True, False]
    assert [t["dtmf"] for t in call["turns"]] == ["", "", "5"]
    assert call["turns"][0]["transcript"] == "caller says 0" and call["turns"][0]["reply"] == "reply 0"
    assert call["turns"][1]["stamps"] == stamps and isinstance(call["turns"][1]["stamps"], dict)
    assert call["leads"] == []

    calls = store.list_calls()
    assert [c["call_sid"] for c in calls] == ["CA2", "CA1"]  # newest first
    assert calls[1]["ended_at"] == 160.5 and calls[0]["ended_at"] is None
    assert [c["call_sid"] for c in store.list_calls(limit=1)] == ["CA2"]


def test_call_end_before_start_keeps_both(store: Store) -> None:
    assert store.apply(RecordCallEnded("CA9", 50.0, "error"))
    assert store.apply(started("CA9", at=10.0))
    assert not store.apply(started("CA9", at=10.0))
    call = store.get_call("CA9")
    assert (call["started_at"], call["ended_at"], call["end_reason"], call["stream_sid"]) == (
        10.0,
        50.0,
        "error",
        "MZCA9",
    )


def test_duplicates_return_false_and_add_no_rows(store: Store) -> None:
    for record in ALL_RECORDS:
        assert store.apply(record) is True, record
    for record in ALL_RECORDS:
        assert store.apply(record) is False, record
    call = store.get_call("CA1")
    assert len(call["turns"]) == 1 and len(call["leads"]) == 1
    assert call["end_reason"] == "hangup"
    assert len(store.list_leads()) == 1
    assert len(store.chat_history("972501234567@s.whatsapp.net")) == 1
    assert len(store.list_chats()) == 1
    # A second end for the same call does not overwrite the first.
    assert not store.apply(RecordCallEnded("CA1", 999.0, "other"))
    assert store.get_call("CA1")["ended_at"] == 1_700_000_060.5


def test_every_record_type_round_trips(store: Store) -> None:
    for record in ALL_RECORDS:
        store.apply(record)
    call = store.get_call("CA1")
    t = call["turns"][0]
    original = ALL_RECORDS[2]
    assert (t["turn_index"], t["transcript"], t["reply"], t["interrupted"], t["stamps"], t["dtmf"]) == (
        original.turn_index,
        original.transcript,
        original.reply,
        original.interrupted,
        dict(original.stamps),
        original.dtmf,
    )
    lead = call["leads"][0]
    assert (lead["business_id"], lead["source"], lead["ref"], lead["fields"], lead["complete"]) == (
        "demo",
        "call",
        "CA1",
        {"name": "דנה", "phone": "050-1234567"},
        False,
    )
    msg = store.chat_history("972501234567@s.whatsapp.net")[0]
    assert msg == {
        "message_id": "wamid.ABC",
        "chat_id": "972501234567@s.whatsapp.net",
        "business_id": "demo",
        "direction": "in",
        "text": 'hi\nthere "quoted"',
        "at": 1.5,
    }


def test_leads_merge_per_ref(store: Store) -> None:
    store.apply(started("CA1"))
    assert store.apply(RecordLead("demo", "call", "CA1", {"name": "Dana"}, False))
    assert store.apply(RecordLead("demo", "call", "CA1", {"phone": "0501234567"}, False))
    assert store.apply(RecordLead("demo", "call", "CA1", {"name": "Dana Levi", "need": "quote"}, True))
    assert not store.apply(RecordLead("demo", "call", "CA1", {"need": "quote"}, False))  # nothing new
    assert store.apply(RecordLead("demo", "whatsapp", "CA1", {"name": "Other"}, False))  # same ref, other source
    assert store.apply(RecordLead("demo", "whatsapp", "chat-7", {"name": "Noa"}, True))

    (lead,) = store.get_call("CA1")["leads"]
    assert lead["fields"] == {"name": "Dana Levi", "phone": "0501234567", "need": "quote"}
    assert lead["complete"] is True  # sticky once complete
    assert lead["updated_at"] >= lead["created_at"]
    leads = store.list_leads()
    assert len(leads) == 3
    assert {(x["source"], x["ref"]) for x in leads} == {("call", "CA1"), ("whatsapp", "CA1"), ("whatsapp", "chat-7")}
    assert len({x["id"] for x in leads}) == 3
    assert len(store.list_leads(limit=2)) == 2


def test_chat_history_order_limit_and_chats(store: Store) -> None:
    chat = "972500000001@s.whatsapp.net"
    ats = [5.0, 1.0, 3.0, 2.0, 4.0]
    for i, at in enumerate(ats):
        assert store.apply(message(chat, f"m{i}", at, text=f"טקסט {at}", direction="in" if i % 2 else "out"))
    store.apply(message("other-chat", "x1", 10.0))
    history = store.chat_history(chat)
    assert [m["at"] for m in history] == [1.0, 2.0, 3.0, 4.0, 5.0]  # oldest first
    assert history[0]["text"] == "טקסט 1.0" and history[0]["message_id"] == "m1"
    assert [m["at"] for m in store.chat_history(chat, limit=2)] == [4.0, 5.0]  # the last two, oldest first
    assert store.chat_history(chat, limit=0) == []
    assert store.chat_history("nobody") == []
    assert store.has_chat_message("m3") and not store.has_chat_message("m99")
    # The chat row: last_at is the newest message even when an older one arrives later.
    store.apply(message(chat, "late", 0.5))
    chats = store.list_chats()
    assert [c["chat_id"] for c in chats] == ["other-chat", chat]
    assert chats[1] == {"chat_id": chat, "business_id": "demo", "last_at": 5.0}
    assert len(store.list_chats(limit=1)) == 1


def test_upsert_business(store: Store) -> None:
    store.upsert_business("demo", "Demo Ltd", {"language": "he-IL", "phones": ("+1", "+2"), "nested": {"a": 1}})
    store.upsert_business("demo", "Demo Ltd 2", {"language": "en-US"})
    business = store.get_business("demo")  # type: ignore[attr-defined]
    assert business["name"] == "Demo Ltd 2" and business["profile"] == {"language": "en-US"}
    assert store.get_business("nope") is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        store.upsert_business("", "x", {})


def test_concurrent_writes_from_8_threads(store: Store) -> None:
    per_thread = 40
    errors: list[BaseException] = []
    duplicate_wins: list[bool] = []
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            barrier.wait()
            store.apply(started(f"CT{n}"))
            for i in range(per_thread):
                store.apply(turn(f"CT{n}", i))
                store.apply(message("shared-chat", f"t{n}-m{i}", float(i) + n / 10))
            duplicate_wins.append(store.apply(message("shared-chat", "same-id", 0.0)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for n in range(8):
        assert [t["turn_index"] for t in store.get_call(f"CT{n}")["turns"]] == list(range(per_thread))
    assert len(store.chat_history("shared-chat", limit=10_000)) == 8 * per_thread + 1
    assert sorted(duplicate_wins) == [False] * 7 + [True]


def test_bad_input_is_a_clear_error(store: Store) -> None:
    bad = [
        ("not a record", "not a store record"),
        (RecordTurn("CA1", -1, "", "", False, {}), "turn_index"),
        (RecordTurn("CA1", 0, "", "", False, {"x": float("nan")}), "stamps"),
        (RecordTurn("", 0, "", "", False, {}), "call_sid"),
        (RecordChatMessage("c", "demo", "m", "sideways", "", 1.0), "direction"),
        (RecordLead("demo", "call", "CA1", {"phone": 5}, False), "fields"),  # type: ignore[dict-item]
        (RecordCallStarted("CA1", "MZ", "demo", "", "", "yesterday"), "started_at"),  # type: ignore[arg-type]
    ]
    for record, field in bad:
        with pytest.raises(InvalidRecord, match=field):
            store.apply(record)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.list_calls(limit=-1)
    assert store.apply(started())  # still usable


def test_closed_store_is_unavailable(store: Store) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreUnavailable):
        store.apply(started())
    with pytest.raises(StoreUnavailable):
        store.list_calls()


# ----------------------------------------------------------------------- SQLite


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(None)
    try:
        assert store.backend == "sqlite"
        assert (tmp_path / "var" / "callengine.db").exists()
        store.apply(started())
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "var" / "callengine.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 1

    store = open_store(f"sqlite:///{tmp_path}/sub/dir/x.db")
    try:
        assert isinstance(store, SqliteStore) and store.applied_migrations() == ALL_MIGRATIONS
    finally:
        store.close()
    for url in ("mysql://x/y", "sqlite://relative.db", "sqlite:///", "redis://h"):
        with pytest.raises(ValueError):
            open_store(url)


def test_sqlite_chat_message_survives_process_kill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    code = (
        "import os, sys\n"
        "from engine.store.sqlite import SqliteStore\n"
        "from engine.messages import RecordChatMessage\n"
        f"s = SqliteStore({str(db)!r}); s.migrate()\n"
        "assert s.apply(RecordChatMessage('c1', 'demo', 'wamid.1', 'in', 'hello', 1.0))\n"
        "os._exit(0)  # no close, no checkpoint\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parent.parent)
    store = SqliteStore(db)
    try:
        assert store.has_chat_message("wamid.1")
        assert store.list_chats()[0]["chat_id"] == "c1"
    finally:
        store.close()


# ------------------------------------------------------------------- PostgreSQL


def test_open_store_postgres(pg_dsn: str) -> None:
    store = open_store(pg_dsn)
    try:
        assert store.backend == "postgres"
        assert store.applied_migrations() == ALL_MIGRATIONS  # type: ignore[attr-defined]
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgres_unreachable_maps_to_unavailable_and_leaks_no_thread() -> None:
    from engine.store.postgres import PostgresStore

    before = set(threading.enumerate())
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{_free_port()}/nothing", connect_timeout=2)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.apply(started())
        with pytest.raises(StoreUnavailable):
            store.chat_history("c")
        assert time.monotonic() - t0 < 10
        with pytest.raises(StoreUnavailable):
            open_store(f"postgresql://postgres@127.0.0.1:{_free_port()}/nothing")
    finally:
        store.close()
    assert set(threading.enumerate()) - before == set()


def test_postgres_store_leaves_no_thread_behind(pg_dsn: str) -> None:
    from engine.store.postgres import PostgresStore

    before = set(threading.enumerate())
    store = PostgresStore(pg_dsn)
    store.migrate()
    workers = [threading.Thread(target=lambda n=n: store.apply(turn("CA1", n))) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert store.get_call("CA1") is None  # turns without a call row are stored but not a call
    store.apply(started("CA1"))
    assert [t["turn_index"] for t in store.get_call("CA1")["turns"]] == list(range(8))
    assert set(threading.enumerate()) - before  # the loop thread exists while open
    store.close()
    assert set(threading.enumerate()) - before == set()


def test_outage_journals_then_flushes_in_order(pg_server, pg_dsn: str, tmp_path: Path) -> None:
    from engine.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn, timeout=5, connect_timeout=2)
    store.migrate()
    journal = Journal(tmp_path / "journal.jsonl")
    writer = DurableWriter(store, journal)
    writer.write(started("CAOUT"))
    total = 300
    reached_100 = threading.Event()
    server_down = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(total):
                if i == 100:
                    reached_100.set()
                if i == 150:  # 100..149 race the shutdown; 150.. surely hit the outage
                    assert server_down.wait(60)
                writer.write(turn("CAOUT", i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert reached_100.wait(60)
        pg_server.stop()
        server_down.set()
        producer.join(120)
        assert not producer.is_alive() and not errors

        assert writer.written >= 101  # the call row and turns 0..99 went straight in
        assert writer.journaled >= 150 and writer.written + writer.journaled == total + 1
        assert writer.pending == writer.journaled == journal.pending
        with pytest.raises(StoreUnavailable):
            store.list_calls()
        assert writer.flush() == 0  # still down: nothing applied, nothing dropped
        assert writer.pending == writer.journaled
    finally:
        pg_server.start()

    # Same store object, no re-creation: it reconnects by itself.
    replayed = writer.flush()
    assert replayed == writer.journaled and writer.flushed == replayed
    assert writer.pending == 0 and journal.pending == 0
    assert (tmp_path / "journal.jsonl").stat().st_size == 0
    call = store.get_call("CAOUT")
    assert [t["turn_index"] for t in call["turns"]] == list(range(total))
    assert [t["transcript"] for t in call["turns"]] == [f"caller says {i}" for i in range(total)]
    # Writes go straight to the store again.
    written = writer.written
    writer.write(turn("CAOUT", total))
    assert writer.written == written + 1 and writer.pending == 0
    store.close()
    journal.close()


def test_writes_racing_a_shutdown_only_ever_raise_store_unavailable(pg_server, pg_dsn: str) -> None:
    """A statement cut off by the server going away must read as StoreUnavailable, never as a bug."""
    from engine.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn, timeout=5, connect_timeout=2)
    store.migrate()
    unexpected: list[BaseException] = []
    try:
        for attempt in range(3):
            running = threading.Event()
            stop = threading.Event()

            def hammer(
                attempt: int = attempt, running: threading.Event = running, stop: threading.Event = stop
            ) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        store.apply(turn(f"RACE{attempt}", i))
                        running.set()
                    except StoreUnavailable:
                        pass
                    except BaseException as exc:  # noqa: BLE001 - reported below
                        unexpected.append(exc)
                        return
                    i += 1

            workers = [threading.Thread(target=hammer) for _ in range(2)]
            for w in workers:
                w.start()
            assert running.wait(30)
            pg_server.stop()
            stop.set()
            for w in workers:
                w.join(30)
            pg_server.start()
            assert not unexpected, unexpected
        store.apply(started("RACE0"))
        assert store.get_call("RACE0")["turns"]  # and the same store works again
    finally:
        store.close()


# ---------------------------------------------------------------------- journal


def test_codec_round_trips_every_record_type() -> None:
    for record in ALL_RECORDS:
        line = encode_record(record)
        assert "\n" not in line
        back = decode_record(line)
        assert back == record and type(back) is type(record)
    assert json.loads(encode_record(ALL_RECORDS[2]))["type"] == "RecordTurn"
    with pytest.raises(InvalidRecord):
        decode_record('{"type": "RecordNope", "data": {}}')
    with pytest.raises(InvalidRecord):
        decode_record('{"type": "RecordTurn", "data": {"call_sid": "x"}}')
    with pytest.raises(InvalidRecord):
        decode_record("[1, 2")


def test_journal_append_read_drop_persist(tmp_path: Path) -> None:
    path = tmp_path / "j" / "journal.jsonl"
    journal = Journal(path)
    for record in ALL_RECORDS:
        journal.append(record)
    assert journal.pending == len(ALL_RECORDS)
    assert journal.read() == ALL_RECORDS
    assert journal.read(2) == ALL_RECORDS[:2]
    assert journal.drop(2) == 2
    journal.close()

    journal = Journal(path)  # reopen: the drop was durable
    assert journal.pending == len(ALL_RECORDS) - 2
    assert journal.read() == ALL_RECORDS[2:]
    assert journal.drop(100) == len(ALL_RECORDS) - 2
    assert journal.pending == 0 and path.stat().st_size == 0
    journal.append(ALL_RECORDS[0])
    journal.close()
    assert Journal(path).read() == [ALL_RECORDS[0]]
    with pytest.raises(InvalidRecord):
        Journal(path).append("nope")  # type: ignore[arg-type]


def test_journal_torn_last_line_is_dropped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    for record in ALL_RECORDS[:3]:
        journal.append(record)
    journal.close()
    with open(path, "ab") as f:  # a crash in the middle of an append
        f.write(encode_record(ALL_RECORDS[3]).encode()[:17])

    with caplog.at_level(logging.WARNING, logger="callengine.store.journal"):
        journal = Journal(path)
    assert any("torn" in r.getMessage() for r in caplog.records)
    assert journal.pending == 3 and journal.read() == ALL_RECORDS[:3]
    journal.append(ALL_RECORDS[4])  # the next append is not glued to the torn bytes
    journal.close()
    assert Journal(path).read() == [*ALL_RECORDS[:3], ALL_RECORDS[4]]


def test_journal_corrupt_line_skipped_and_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.jsonl"
    lines = [encode_record(ALL_RECORDS[0]), "{garbage", encode_record(ALL_RECORDS[1])]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.ERROR, logger="callengine.store.journal"):
        journal = Journal(path)
        assert journal.read() == ALL_RECORDS[:2]
        assert journal.read() == ALL_RECORDS[:2]
    assert journal.pending == 3  # lines, including the bad one
    rejected = (tmp_path / "journal.jsonl.rejected").read_text().splitlines()
    assert len(rejected) == 1 and json.loads(rejected[0])["line"] == "{garbage"  # reported once
    assert journal.drop(3) == 3 and journal.pending == 0


def test_journal_recovers_from_crash_between_truncate_and_offset_reset(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"")
    (tmp_path / "journal.jsonl.offset").write_text("4096")
    journal = Journal(path)
    assert journal.pending == 0
    journal.append(ALL_RECORDS[0])
    journal.close()
    assert Journal(path).read() == [ALL_RECORDS[0]]

    # An offset that is not on a line boundary replays from the start (never skips).
    journal = Journal(path)
    journal.append(ALL_RECORDS[1])
    journal.close()
    (tmp_path / "journal.jsonl.offset").write_text("3")
    assert Journal(path).read() == ALL_RECORDS[:2]


def test_durable_writer_keeps_order_behind_a_backlog(sqlite_store: Store, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    writer = DurableWriter(sqlite_store, journal)
    writer.write(started("CA1"))
    assert (writer.written, writer.journaled, writer.pending) == (1, 0, 0)
    # A backlog left by an earlier outage (or process): new writes queue behind it.
    journal.append(turn("CA1", 0))
    writer.write(turn("CA1", 1))
    assert (writer.written, writer.journaled, writer.pending) == (1, 1, 2)
    assert sqlite_store.get_call("CA1")["turns"] == []
    assert writer.flush() == 2
    assert [t["turn_index"] for t in sqlite_store.get_call("CA1")["turns"]] == [0, 1]
    assert writer.flush() == 0
    with pytest.raises(InvalidRecord):
        writer.write(turn("CA1", -5))
    assert writer.pending == 0


def test_durable_writer_sets_aside_a_record_the_store_refuses(tmp_path: Path) -> None:
    unmigrated = SqliteStore(tmp_path / "empty.db")  # no tables: every apply is a real error
    journal = Journal(tmp_path / "journal.jsonl")
    journal.append(turn("CA1", 0))
    writer = DurableWriter(unmigrated, journal)
    try:
        assert writer.flush() == 0
        assert writer.rejected == 1 and writer.pending == 0
        rejected = (tmp_path / "journal.jsonl.rejected").read_text()
        assert "no such table" in rejected and "CA1" in rejected
    finally:
        unmigrated.close()



def test_opening_a_new_sqlite_file_waits_for_another_process_lock(tmp_path: Path) -> None:
    """`serve --workers N` opens one new SQLite file from N processes at once.
    SQLite answers the switch to WAL with "database is locked" at once (no busy
    handler) while another connection holds the file: the store must wait for
    it (up to its timeout), not fail to start."""
    db = tmp_path / "shared.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        t0 = time.monotonic()
        store = SqliteStore(db, timeout=5.0)
        waited = time.monotonic() - t0
        store.migrate()
        assert store.applied_migrations()
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert waited >= 0.4  # it did wait for the other connection
        store.close()
    finally:
        release.join()
        holder.close()
