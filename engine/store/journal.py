"""A durable write-behind journal for store records, and the writer that uses it.

Why this exists: the hot path never waits on the database, and nothing is lost
while the database is down. The recorder (a pykka actor) hands every record to
a :class:`DurableWriter`; when the store is reachable the record goes straight
to it, otherwise it is appended to a local :class:`Journal` (a JSON-lines file,
fsynced per record) and replayed in order by :meth:`DurableWriter.flush` once
the store answers again.

Ordering rule: while the journal holds anything, *every* new record is appended
to it, even if the store has come back, so records always reach the store in
the order they were written (a turn never lands before an earlier turn, a lead
update never before the one it refines).

Crash safety. A record is appended as one line, flushed and fsynced before
``append`` returns. The applied prefix is dropped by advancing a byte offset
kept in a sidecar file (``<journal>.offset``, replaced atomically with
``os.replace``), so dropping costs O(1) however long the backlog. When the
offset reaches the end, the journal is truncated to zero first and the offset
reset second; a crash between the two leaves an offset beyond the end, which
the next open recognises and resets. Every crash point therefore either loses
nothing or replays records already applied, and replays are harmless because
store writes are idempotent (natural keys). A torn last line (a crash during
``append``) is cut off with a warning when the journal is opened; a complete
but undecodable line is logged, skipped and kept in ``<journal>.rejected``.

Rejected designs: rewriting the remaining records to a temp file on every drop
(simple, but O(n^2) over a long outage); SQLite as the journal (a second
database to corrupt, and it would share the failure modes of the SQLite store).

Records are checked and encoded by ``engine.store.records``, the one
validation every backend applies, so bad data fails loudly at the writer
instead of poisoning a replay.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from engine.store.base import Record, Store, StoreUnavailable
from engine.store.records import InvalidRecord, check_record, decode_record, encode_record, record_to_dict

__all__ = [
    "Journal",
    "DurableWriter",
]

log = logging.getLogger("callengine.store.journal")


# ------------------------------------------------------------------- journal


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """An append-only, fsynced JSON-lines file of records with a durable read offset.

    Thread-safe: one internal lock serialises appends, reads and drops, so any
    thread may call any method. All methods block on disk I/O (an ``append``
    costs one fsync); call them off the trio thread.

    Guarantees: a record is on disk when :meth:`append` returns; :meth:`read`
    yields records in append order; :meth:`drop` persists before returning and
    never drops a record that was not read; after a crash at any point the
    journal reopens without error, holding every record not yet dropped (and
    possibly some that were, which idempotent stores ignore).
    """

    _READ_CHUNK = 1 << 16

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._offset_path = self.path.with_name(self.path.name + ".offset")
        self._rejected_path = self.path.with_name(self.path.name + ".rejected")
        self._lock = threading.Lock()
        self._file = open(self.path, "a+b")  # O_APPEND: writes always land at the end
        self._offset = 0
        self._pending = 0
        self._closed = False
        self._reported_bad: set[int] = set()
        _fsync_dir(self.path.parent)
        self._recover()

    # -- open / recovery ------------------------------------------------------

    def _size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def _recover(self) -> None:
        size = self._size()
        if size:
            self._cut_torn_tail(size)
            size = self._size()
        offset = self._read_offset_file()
        if offset > size:
            # Truncated to zero (compaction) but crashed before the offset was reset.
            log.info("journal offset beyond end, resetting", extra={"journal": str(self.path), "offset": offset})
            offset = 0
        elif offset > 0 and self._byte_at(offset - 1) != b"\n":
            log.warning(
                "journal offset not on a line boundary; replaying from the start",
                extra={"journal": str(self.path), "offset": offset},
            )
            offset = 0
        self._offset = offset
        self._pending = self._count_lines(offset, size)
        if self._pending == 0 and size:
            self._compact()
        elif offset != self._read_offset_file():
            self._write_offset_file(offset)

    def _byte_at(self, pos: int) -> bytes:
        return os.pread(self._file.fileno(), 1, pos)

    def _cut_torn_tail(self, size: int) -> None:
        if self._byte_at(size - 1) == b"\n":
            return
        # Scan back for the last newline; everything after it is a torn append.
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - self._READ_CHUNK)
            chunk = os.pread(self._file.fileno(), end - start, start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            end = start
        log.warning(
            "journal ends with a torn record (crash during append); dropping it",
            extra={"journal": str(self.path), "bytes_dropped": size - keep},
        )
        os.ftruncate(self._file.fileno(), keep)
        os.fsync(self._file.fileno())

    def _count_lines(self, start: int, end: int) -> int:
        count = 0
        pos = start
        while pos < end:
            chunk = os.pread(self._file.fileno(), min(self._READ_CHUNK, end - pos), pos)
            if not chunk:
                break
            count += chunk.count(b"\n")
            pos += len(chunk)
        return count

    def _read_offset_file(self) -> int:
        try:
            text = self._offset_path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            value = int(text)
        except ValueError:
            log.warning("journal offset file unreadable; replaying from the start", extra={"journal": str(self.path)})
            return 0
        return max(0, value)

    def _write_offset_file(self, offset: int) -> None:
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._offset_path)
        _fsync_dir(self.path.parent)

    def _compact(self) -> None:
        # Order matters: truncate first, reset the offset second (see module doc).
        os.ftruncate(self._file.fileno(), 0)
        os.fsync(self._file.fileno())
        self._offset = 0
        self._reported_bad.clear()
        self._write_offset_file(0)

    # -- public API -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Number of lines appended and not yet dropped."""
        return self._pending

    def __len__(self) -> int:
        return self._pending

    def append(self, record: Record) -> None:
        """Append one record; it is fsynced to disk when this returns.

        Raises :class:`InvalidRecord` for a bad record (nothing is written) and
        ``OSError`` when the disk refuses (nothing is left half-written).
        """
        line = encode_record(record).encode("utf-8") + b"\n"
        with self._lock:
            self._check_open()
            before = self._size()
            try:
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                # Leave no torn line behind for the next append to run into.
                try:
                    os.ftruncate(self._file.fileno(), before)
                except OSError:
                    pass
                raise
            self._pending += 1

    def read(self, limit: int | None = None) -> list[Record]:
        """The first ``limit`` (all when None) pending records, in append order.

        Undecodable lines are skipped (and logged); nothing is dropped.
        """
        return [record for record, _end in self._entries(limit) if record is not None]

    def drop(self, count: int) -> int:
        """Drop the first ``count`` pending lines durably; returns how many were dropped."""
        entries = self._entries(count)
        if entries:
            self._consume(entries[-1][1], len(entries))
        return len(entries)

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"journal {self.path} is closed")

    # -- used by DurableWriter -------------------------------------------------------

    def _entries(self, limit: int | None) -> list[tuple[Record | None, int]]:
        """Up to ``limit`` pending lines as (record or None if undecodable, end offset)."""
        out: list[tuple[Record | None, int]] = []
        with self._lock:
            self._check_open()
            if self._pending == 0:
                return out
            end_of_file = self._size()
            pos = self._offset  # file offset just past the data read so far
            buf = b""
            buf_start = pos  # file offset of buf[0]
            while pos < end_of_file and (limit is None or len(out) < limit):
                chunk = os.pread(self._file.fileno(), min(self._READ_CHUNK, end_of_file - pos), pos)
                if not chunk:
                    break
                buf += chunk
                pos += len(chunk)
                i = 0
                while limit is None or len(out) < limit:
                    nl = buf.find(b"\n", i)
                    if nl < 0:
                        break
                    raw = buf[i:nl]
                    line_offset = buf_start + i
                    i = nl + 1
                    try:
                        record: Record | None = decode_record(raw)
                    except InvalidRecord as exc:
                        record = None
                        if line_offset not in self._reported_bad:  # report each bad line once
                            self._reported_bad.add(line_offset)
                            log.error(
                                "undecodable journal line skipped",
                                extra={"journal": str(self.path), "offset": line_offset, "error": str(exc)},
                            )
                            self._write_rejected(raw.decode("utf-8", "replace"), str(exc))
                    out.append((record, buf_start + i))
                buf = buf[i:]
                buf_start += i
        return out

    def _consume(self, end: int, count: int) -> None:
        """Durably mark everything before byte ``end`` (``count`` lines) as applied."""
        with self._lock:
            self._check_open()
            if end <= self._offset:
                return
            self._offset = end
            self._pending = max(0, self._pending - count)
            if self._offset >= self._size():
                self._compact()
            else:
                self._write_offset_file(self._offset)

    def _write_rejected(self, line: str, error: str) -> None:
        entry = json.dumps({"line": line, "error": error, "at": time.time()}, ensure_ascii=False)
        try:
            with open(self._rejected_path, "a", encoding="utf-8") as f:
                f.write(entry + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            log.error("could not write rejected journal line", extra={"journal": str(self.path), "error": str(exc)})

    def reject(self, record: Record, error: str) -> None:
        """Keep a record the store refused (not for unavailability) in ``<journal>.rejected``."""
        line = json.dumps(record_to_dict(record), ensure_ascii=False, default=str)
        with self._lock:
            self._write_rejected(line, error)


# ------------------------------------------------------------ durable writer


class DurableWriter:
    """Writes records to a store, falling back to a journal while it is unreachable.

    Thread-safe. Typically the recorder actor's thread calls :meth:`write` and a
    timer thread (or the same actor on a tick) calls :meth:`flush`; both block
    (a store round trip, or an fsync) and must not run on the trio thread.

    Guarantees:

    * :meth:`write` never raises for an unavailable database: the record is
      either in the store or fsynced in the journal when it returns. It raises
      :class:`InvalidRecord` for bad data (nothing stored), ``OSError`` if the
      journal's disk fails, and whatever non-availability error the store
      raises for a record it refuses (a bug, not retried).
    * Records reach the store in ``write`` order: while the journal is not
      empty, new records are appended behind it rather than sent directly.
    * :meth:`flush` replays in order and stops at the first
      ``StoreUnavailable``; a record the store refuses for any other reason is
      logged, set aside in ``<journal>.rejected`` and skipped, so one bad
      record can never block the backlog.

    Counters (plain ints, read them for metrics): ``written`` (sent straight to
    the store), ``journaled``, ``flushed`` (replayed from the journal),
    ``rejected``; ``pending`` is the journal's backlog.
    """

    def __init__(self, store: Store, journal: Journal, *, batch: int = 256) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.store = store
        self.journal = journal
        self._batch = batch
        self._lock = threading.Lock()
        self.written = 0
        self.journaled = 0
        self.flushed = 0
        self.rejected = 0
        self._outage = False

    @property
    def pending(self) -> int:
        return self.journal.pending

    def write(self, record: Record) -> None:
        """Store ``record`` now, or journal it (see the class guarantees)."""
        check_record(record)
        with self._lock:
            if self.journal.pending == 0:
                try:
                    self.store.apply(record)
                except StoreUnavailable as exc:
                    self._enter_outage(exc)
                else:
                    self.written += 1
                    return
            self.journal.append(record)
            self.journaled += 1

    def flush(self) -> int:
        """Replay the journal into the store in order; returns the number of records applied.

        Duplicates (``apply`` returning False) count as applied: they are in
        the store. Stops early, leaving the rest journaled, at the first
        ``StoreUnavailable``. Writes may interleave between batches; they queue
        behind the backlog, so order holds.
        """
        total = 0
        while True:
            with self._lock:
                entries = self.journal._entries(self._batch)
                if not entries:
                    break
                done_end = -1
                done_count = 0
                applied = 0
                unavailable = False
                for record, end in entries:
                    if record is not None:
                        try:
                            self.store.apply(record)
                        except StoreUnavailable as exc:
                            self._enter_outage(exc)
                            unavailable = True
                            break
                        except Exception as exc:  # a record the store refuses: set aside, go on
                            self.rejected += 1
                            log.error(
                                "store refused a journaled record; set aside",
                                extra={"record_type": type(record).__name__, "error": repr(exc)},
                            )
                            self.journal.reject(record, repr(exc))
                        else:
                            applied += 1
                    done_end, done_count = end, done_count + 1
                if done_count:
                    self.journal._consume(done_end, done_count)
                self.flushed += applied
                total += applied
                if unavailable:
                    break
                if self.journal.pending == 0 and self._outage:
                    self._outage = False
                    log.warning("store reachable again; journal flushed", extra={"flushed": self.flushed})
        return total

    def _enter_outage(self, exc: Exception) -> None:
        if not self._outage:
            self._outage = True
            log.warning("store unavailable; journaling records", extra={"error": str(exc)})
