"""The SQLite store (the default): one file holds the log, the snapshots and the meta.

Write-ahead logging (WAL) lets readers run while one writer appends.
``sync="normal"`` (``PRAGMA synchronous=NORMAL``) makes every commit survive
a crash of the process; ``sync="full"`` also survives an OS crash or power
loss, at the price of an fsync per commit.

The append rule is enforced by SQLite itself: an event row is inserted only
if the table's newest seq is the one the writer expected
(``INSERT ... SELECT ... WHERE (SELECT max(seq) ...) IS ?``) and seq is the
primary key, so two processes can never both write the same seq, nor leave a
gap. memimg's tables can live in a database that also holds an
application's own tables. A file that is not an SQLite database, or whose
``memimg_*`` tables were not made by memimg, is refused and left untouched.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, Final

from memimg._errors import LockedError, MemimgError
from memimg.stores._protocol import FORMAT_VERSION, EventRow, SeqTaken, SnapshotInfo, SnapshotRow, read_in_chunks

__all__ = ["SQLiteStore"]

_HEADER: Final = b"SQLite format 3\x00"
_COLUMNS: Final = {
    "memimg_events": ["seq", "tx", "ts", "kind", "target", "payload", "checksum"],
    "memimg_snapshots": ["seq", "ts", "payload", "checksum"],
    "memimg_meta": ["key", "value"],
}
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS memimg_events ("
    " seq INTEGER PRIMARY KEY, tx INTEGER NOT NULL, ts INTEGER NOT NULL, kind TEXT NOT NULL,"
    " target INTEGER NOT NULL, payload BLOB NOT NULL, checksum INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS memimg_snapshots ("
    " seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, payload BLOB NOT NULL, checksum INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS memimg_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_APPEND_FIRST: Final = (
    "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) "
    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE "
    "coalesce((SELECT max(seq) FROM memimg_events), (SELECT max(seq) FROM memimg_snapshots), 0) = ?"
)
# The head: the last event, or (every event compacted away) the seq the newest snapshot covers.
_HEAD: Final = "SELECT coalesce((SELECT max(seq) FROM memimg_events), (SELECT max(seq) FROM memimg_snapshots), 0)"
_APPEND: Final = "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) VALUES (?, ?, ?, ?, ?, ?, ?)"


def _is_busy(err: sqlite3.OperationalError) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text


class SQLiteStore:
    """The log in an SQLite file.

    Args:
        path: the database file (created if missing, unless *readonly*).
        sync: ``"normal"`` or ``"full"`` (see the module docstring).
        readonly: open the file read-only; writes raise.
        busy_timeout: seconds to wait for another writer's lock before
            raising :class:`LockedError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "normal",
        readonly: bool = False,
        busy_timeout: float = 10.0,
    ) -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
        self.path = os.fspath(path)
        self.description = self.path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._check_file()
        try:
            if readonly:
                uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout
                )
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        except sqlite3.Error as err:
            raise MemimgError(f"cannot open {self.path!r} as an SQLite database: {err}") from err
        self._conn = conn
        try:
            self._setup(sync)
        except BaseException:
            conn.close()
            raise
        self._data_version = self._pragma("data_version")

    def _check_file(self) -> None:
        try:
            with open(self.path, "rb") as f:
                header = f.read(16)
        except FileNotFoundError:
            if self.readonly:
                raise MemimgError(f"{self.path!r} does not exist (opened read-only)") from None
            return
        except IsADirectoryError:
            raise MemimgError(f"{self.path!r} is a directory, not an SQLite database file") from None
        if header and header != _HEADER:
            raise MemimgError(f"{self.path!r} is not an SQLite database (nor a memimg image); it was left untouched")

    def _pragma(self, name: str) -> Any:
        with self._lock:
            return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    def _setup(self, sync: str) -> None:
        conn = self._conn
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as err:
            raise MemimgError(f"{self.path!r} is not a usable SQLite database ({err}); it was left untouched") from err
        for table, columns in _COLUMNS.items():
            if table in tables:
                found = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
                if found != columns:
                    raise MemimgError(
                        f"{self.path!r} has a table {table} with columns {found}, not made by memimg "
                        f"(expected {columns}); it was left untouched"
                    )
        if not self.readonly:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            if not set(_COLUMNS) <= tables:
                self._write_schema()
        elif not set(_COLUMNS) <= tables:
            raise MemimgError(f"{self.path!r} holds no memimg image (opened read-only)")
        meta = self.meta()
        version = int(meta.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise MemimgError(
                f"{self.path!r} was written in memimg storage format {version}; this memimg reads "
                f"format {FORMAT_VERSION} and older: upgrade memimg. The file was left untouched"
            )

    def _write_schema(self) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for ddl in _SCHEMA:
                    conn.execute(ddl)
                conn.execute(
                    "INSERT OR IGNORE INTO memimg_meta (key, value) VALUES ('format_version', ?)",
                    (str(FORMAT_VERSION),),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as err:
            raise self._error(err, "creating memimg's tables") from err

    def _error(self, err: sqlite3.Error, doing: str) -> MemimgError:
        if isinstance(err, sqlite3.OperationalError) and _is_busy(err):
            return LockedError(
                f"{doing} in {self.path!r}: the database stayed locked by another writer; retry, or raise busy_timeout"
            )
        return MemimgError(f"{doing} in {self.path!r} failed: {err}")

    # -- events ---------------------------------------------------------------

    def head(self) -> int:
        with self._lock:
            return self._conn.execute(_HEAD).fetchone()[0]  # type: ignore[no-any-return]

    def first_seq(self) -> int:
        with self._lock:
            # min() alone, so SQLite reads one end of the primary key instead of scanning
            low = self._conn.execute("SELECT min(seq) FROM memimg_events").fetchone()[0]
            if low is None:
                return self._snapshot_head() + 1
        return low  # type: ignore[no-any-return]

    def _snapshot_head(self) -> int:
        return self._conn.execute("SELECT coalesce(max(seq), 0) FROM memimg_snapshots").fetchone()[0]  # type: ignore[no-any-return]

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        if self.readonly:
            raise MemimgError(f"{self.path!r} is open read-only")
        first = (*rows[0], expected_head)
        conn = self._conn
        with self._lock:
            try:
                if len(rows) == 1:
                    if conn.execute(_APPEND_FIRST, first).rowcount != 1:
                        raise SeqTaken(expected_head)
                    return
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute(_APPEND_FIRST, first).rowcount != 1:
                        raise SeqTaken(expected_head)
                    conn.executemany(_APPEND, rows[1:])
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise SeqTaken(expected_head) from None
            except sqlite3.Error as err:
                raise self._error(err, f"appending events {rows[0][0]}..{rows[-1][0]}") from err

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        return read_in_chunks(self._fetch, after, limit)  # type: ignore[return-value]

    def _fetch(self, after: int, n: int) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(
                    "SELECT seq, tx, ts, kind, target, payload, checksum FROM memimg_events "
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, n),
                ).fetchall()
            except sqlite3.Error as err:
                raise self._error(err, "reading events") from err

    def changed(self, seen: int) -> bool:
        version = self._pragma("data_version")
        if version != self._data_version:
            self._data_version = version
            return True
        return False

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        """Block until another writer may have appended past *seen* (polls), or *timeout* passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.changed(seen) or self.head() != seen:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.02, left))

    def delete_events_before(self, seq: int) -> int:
        with self._lock:
            return self._conn.execute("DELETE FROM memimg_events WHERE seq < ?", (seq,)).rowcount

    def delete_snapshots_before(self, seq: int) -> int:
        with self._lock:
            return self._conn.execute("DELETE FROM memimg_snapshots WHERE seq < ?", (seq,)).rowcount

    # -- snapshots and meta ---------------------------------------------------

    def write_snapshot(self, row: SnapshotRow) -> None:
        if self.readonly:
            raise MemimgError(f"{self.path!r} is open read-only")
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO memimg_snapshots (seq, ts, payload, checksum) VALUES (?, ?, ?, ?)", row
                )
            except sqlite3.Error as err:
                raise self._error(err, f"writing the snapshot at seq {row.seq}") from err

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, ts, length(payload) FROM memimg_snapshots ORDER BY seq DESC"
            ).fetchall()
        return [SnapshotInfo(*r) for r in rows]

    def read_snapshot(self, seq: int) -> SnapshotRow:
        with self._lock:
            row = self._conn.execute(
                "SELECT seq, ts, payload, checksum FROM memimg_snapshots WHERE seq = ?", (seq,)
            ).fetchone()
        if row is None:
            raise KeyError(seq)
        return SnapshotRow(*row)

    def meta(self) -> dict[str, str]:
        with self._lock:
            try:
                return dict(self._conn.execute("SELECT key, value FROM memimg_meta"))
            except sqlite3.OperationalError:
                return {}

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO memimg_meta (key, value) VALUES (?, ?)", (key, value))

    def size(self) -> int:
        """Bytes on disk (the database file and its WAL)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    def close(self) -> None:
        with self._lock:
            self._conn.close()
