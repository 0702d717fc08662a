"""The SQLite store (the default): one file holds the log, the snapshots and the meta.

Write-ahead logging (WAL) lets readers run while one writer appends.
``sync="normal"`` (``PRAGMA synchronous=NORMAL``) makes every commit survive
a crash of the process; ``sync="full"`` also survives an OS crash or power
loss, at the price of an fsync per commit. The store waits for another
connection's write lock in short steps and checkpoints the WAL from a thread
of its own, off the commit path (:mod:`memimg.stores._sqlitewal`,
:mod:`memimg.stores._sqlitecheckpoints`).

The append rule is enforced by SQLite itself: an event row is inserted only
if the table's newest seq is the one the writer expected
(``INSERT ... SELECT ... WHERE (SELECT max(seq) ...) IS ?``) and seq is the
primary key, so two processes can never both write the same seq, nor leave a
gap. memimg's tables can live in a database that also holds an
application's own tables. A file that is not an SQLite database, or whose
``memimg_*`` tables were not made by memimg, is refused and left untouched.

A commit is acknowledged only while the file it went into is still the file
at the store's path. SQLite writes through the descriptors it opened, so a
database (or ``-wal``) file deleted, moved or replaced under a running image
would silently take every later commit with it; after each write the store
checks that the path still names the database and WAL it opened (device and
inode, recorded at open) and otherwise raises :class:`FileGoneError` and
refuses every later write. SQLite itself never deletes or recreates either
file while a connection is open (it truncates the WAL, which keeps its
inode, and ``VACUUM`` -- :meth:`SQLiteStore.reclaim` -- rewrites the
database in place), so a change of identity always comes from outside. The check costs
one ``stat`` of the directory per commit: the files are looked at only when
the directory's ctime moved since they last checked out (an entry was added,
removed or renamed -- which is what deleting or replacing a file does), or
when it changed too recently for its ctime to tell (see ``_stamped_after``).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from memimg._errors import FileGoneError, LockedError, MemimgError, ReadOnlyError, StoreError
from memimg.stores import _sqlitetargets as targets
from memimg.stores._protocol import (
    FORMAT_VERSION,
    LEASE,
    EventRow,
    Rewrite,
    SnapshotInfo,
    SnapshotRow,
    check_aligned,
    check_target,
    lease_entry,
    poll,
    read_in_chunks,
)
from memimg.stores._sqlitecheckpoints import Checkpointer, checkpoints_alone, marked_checkpoint
from memimg.stores._sqlitefiles import connect_existing, dir_quiet, gone_error
from memimg.stores._sqlitefiles import stamped_after as _stamped_after
from memimg.stores._sqlitesql import (
    AFTER_SNAPSHOTS,
    APPEND,
    APPEND_AT_HEAD,
    APPEND_CHUNKS,
    APPEND_FIRST,
    COLUMNS,
    FIRST,
    HEAD,
    LEASE_RELEASE,
    LEASE_RENEW,
    READ,
    SCHEMA,
    SNAPSHOT,
    SNAPSHOT_LEASED,
)
from memimg.stores._sqlitewal import (
    ADVICE,
    CHECKPOINT_WAIT,
    WAL_SIZE_LIMIT,
    is_busy,
    look_behind,
    lost_race,
    retry_busy,
)
from memimg.stores._sqlitewal import identity as _identity

__all__ = ["SQLiteStore"]

_PAYLOAD = operator.itemgetter(5)
#: the constraints an append breaks when another writer got there first (see APPEND_AT_HEAD)
_LOST = frozenset({sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_NOTNULL})
#: the one of them a row's own NULL breaks too: read as a lost race only when the head moved
_NOTNULL = sqlite3.SQLITE_CONSTRAINT_NOTNULL

# The sqlite3 module binds int, float and str parameters directly, but first asks every other one -- a
# payload's ``bytes`` -- how to adapt it, looking for ``__adapt__`` on its protocol class, which fails by
# formatting an AttributeError: ~2,200 of the ~13,000 instructions of binding and inserting one event row
# (callgrind, CPython 3.11). An adapter registered for ``bytes`` is found first, in a dict; this one gives
# the very same object back (``bytes.__bytes__``), so what is stored does not change for this module or
# any other (an application's own adapter for bytes, registered before or after, is left to win).
sqlite3.adapters.setdefault((bytes, sqlite3.PrepareProtocol), bytes.__bytes__)


def _insert_rest(cur: sqlite3.Cursor, rows: Sequence[EventRow]) -> None:
    """Insert *rows* after the first: by the multi-row statements of APPEND_CHUNKS, the rest one by one."""
    at, end = 1, len(rows)
    for size, sql in APPEND_CHUNKS:
        while end - at >= size:
            cur.execute(sql, list(_flat(rows[at : at + size])))
            at += size
    if at < end:
        cur.executemany(APPEND, itertools.islice(rows, at, None))


_flat = itertools.chain.from_iterable


class SQLiteStore:
    """The log in an SQLite file.

    Args:
        path: the database file (created if missing, unless *readonly*).
        sync: ``"normal"`` or ``"full"`` (see the module docstring).
        readonly: open the file read-only; writes raise.
        busy_timeout: seconds to wait for another writer's lock before
            raising :class:`LockedError` (waited for in steps of 50 µs to
            2 ms, see :mod:`memimg.stores._sqlitewal`).
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
        if os.fspath(path) == ":memory:":
            raise ValueError("SQLiteStore keeps its image in a file; for one in memory use memimg.open(':memory:')")
        self.path = os.fspath(path)
        self.description = self.path
        #: the path made absolute once, at the open: what the store's file checks and other connections use,
        #: whatever the working directory becomes (SQLite, too, resolves a relative path once, at its open)
        self._abspath = os.path.abspath(self.path)
        self.readonly = readonly
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        #: held by the target index's fill while a chunk is written (on its own connection; see index_targets)
        self._fill_lock = threading.Lock()
        self._check_file()
        try:
            if readonly:
                conn = connect_existing(self._abspath, "ro", busy_timeout)
            else:
                conn = sqlite3.connect(
                    self._abspath, isolation_level=None, check_same_thread=False, timeout=busy_timeout
                )
        except sqlite3.Error as err:
            raise StoreError(
                f"cannot open {self.path!r} as an SQLite database: {err}", store=self.path, operation="opening"
            ) from err
        self._conn = conn
        #: the cursor appends run on (a connection's execute makes a cursor per call)
        self._appender = conn.cursor()
        try:
            self._setup(sync)
            # from here on the store waits for locks itself (retry_busy), and checkpoints off the commit path
            conn.execute("PRAGMA busy_timeout = 0")
            if not readonly:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._data_version = self._pragma("data_version")
        except sqlite3.Error as err:
            conn.close()
            raise self._error(err, "opening the image") from err
        except BaseException:
            conn.close()
            raise
        self._gone: str | None = None  # why writes are refused: the file is no longer at the path
        self._dir = os.path.dirname(self._abspath)
        self._dir_bytes = os.fsencode(self._dir)  # (for dir_quiet)
        # the directory (ctime, inode) as it was when the files last checked out; -1: not trusted
        self._quiet_ctime = self._quiet_ino = -1
        self._db_id = self._wal_id = None
        self._checkpointer: Checkpointer | None = None
        if not readonly:
            self._db_id = _identity(self._abspath)
            self._wal_id = _identity(self._abspath + "-wal")
            if self._db_id is None:
                conn.close()
                raise MemimgError(f"{self.path!r} disappeared while it was being opened; nothing was written")
            self._check_files("opening", None)
            self._checkpointer = Checkpointer(self._abspath, self._db_id, self._lock)
            weakref.finalize(self, self._checkpointer.stop, 0)  # a store dropped unclosed ends its thread too

    def adopt(self, conn: Any, path: str | os.PathLike[str]) -> bool:
        """Have *conn*, another library's DB-API connection (``sqlite3``) to the database file at *path*, leave
        its checkpoints to this store if that is this store's file: SQLite's automatic checkpoints off on it,
        and the store's checkpoint thread copying its commits too, within
        :data:`~memimg.stores._sqlitecheckpoints.OTHERS_EVERY` seconds while it commits. Whether it did (``False`` for
        another file, and for a read-only or closed store, which checkpoints nothing).

        For a connection that writes tables of its own in the image's file
        (Django's, with ``TARGET: "default"``): its automatic checkpoints would
        run outside the guard memimg's checkpoints keep against SQLite's
        WAL-reset bug (see :mod:`memimg.stores._sqlitecheckpoints`).
        """
        if self._checkpointer is None or self._checkpointer.stopped or _identity(os.path.abspath(path)) != self._db_id:
            return False
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer.copy_others()
        return True

    def _check_file(self) -> None:
        """Refuse a directory, and a missing file when read-only, before SQLite opens the path.

        The file is never opened here: closing any descriptor of a file ends
        every POSIX lock this process holds on it, so reading the header with
        ``open()`` while another image in the process has the database open
        would silently drop that connection's shared lock -- and the next
        process to close its last connection would then take the file for its
        own, checkpoint and delete the WAL that connection still writes to
        (its commits lost). SQLite reads the header itself; one that is not
        SQLite's is refused in :meth:`_setup`.
        """
        try:
            st = os.stat(self._abspath)
        except FileNotFoundError:
            if self.readonly:
                raise MemimgError(f"{self.path!r} does not exist (opened read-only)") from None
            return
        if stat.S_ISDIR(st.st_mode):
            raise MemimgError(f"{self.path!r} is a directory, not an SQLite database file")

    def _pragma(self, name: str) -> Any:
        with self._lock:
            return retry_busy(self._busy_timeout, self._conn.execute, f"PRAGMA {name}").fetchone()[0]

    def _setup(self, sync: str) -> None:
        conn = self._conn
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as err:
            if is_busy(err):
                raise
            if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
                raise MemimgError(
                    f"{self.path!r} is not an SQLite database (nor a memimg image); it was left untouched"
                ) from None
            raise MemimgError(f"{self.path!r} is not a usable SQLite database ({err}); it was left untouched") from err
        for table, columns in (*COLUMNS.items(), ("memimg_targets", targets.COLUMNS)):
            if table in tables:
                info = conn.execute(f"PRAGMA table_info({table})").fetchall()
                found = [r[1] for r in info]
                if found != columns:
                    raise MemimgError(
                        f"{self.path!r} has a table {table} with columns {found}, not made by memimg "
                        f"(expected {columns}); it was left untouched"
                    )
                if table == "memimg_events" and not info[1][3]:  # APPEND_AT_HEAD refuses a stale append by it
                    raise MemimgError(
                        f"{self.path!r} has a table memimg_events whose column tx is not NOT NULL, not made by "
                        "memimg (a stale append would not be refused); copy its rows into a table made by "
                        "memimg, or use another file. It was left untouched"
                    )
        if not self.readonly:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            if not {*COLUMNS, "memimg_targets"} <= tables:
                self._write_schema()  # a new log, or one made before the target index (see read_target)
            tables.add("memimg_targets")
        elif not set(COLUMNS) <= tables:
            raise MemimgError(f"{self.path!r} holds no memimg image (opened read-only)")
        self._has_targets = "memimg_targets" in tables
        #: the events of the target index's next chunk (see targets.resize)
        self._fill_chunk = targets.CHUNK
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
            with targets.immediate(conn, self._busy_timeout):
                for ddl in (*SCHEMA, *targets.CREATE):
                    conn.execute(ddl)
                conn.execute(
                    "INSERT OR IGNORE INTO memimg_meta (key, value) VALUES ('format_version', ?)",
                    (str(FORMAT_VERSION),),
                )
        except sqlite3.Error as err:
            raise self._error(err, "creating memimg's tables") from err

    def _error(self, err: sqlite3.Error, doing: str, *, write: bool = False) -> StoreError:
        """The :class:`StoreError` for a failure of sqlite3 (its result code decides which)."""
        outcome = "; nothing was written" if write else ""
        if is_busy(err):
            return LockedError(
                f"{doing} in {self.path!r}: the database stayed locked by another writer{outcome}; "
                "retry, or raise busy_timeout",
                store=self.path,
                operation=doing,
            )
        code = getattr(err, "sqlite_errorcode", None)
        if code is None:  # not from SQLite itself: the connection was closed or misused
            advice = "the store's connection is closed: open the image again"
        else:
            advice = ADVICE.get(code & 0xFF, "see the cause below")
        name = getattr(err, "sqlite_errorname", type(err).__name__)
        return StoreError(
            f"{doing} in {self.path!r} failed ({name}: {err}){outcome}; {advice}", store=self.path, operation=doing
        )

    # -- the file at the path ---------------------------------------------------

    def _check_files(self, doing: str, seq: int | None) -> None:
        """Raise :class:`FileGoneError` unless the path still names the database and WAL opened.

        Called after every write, before it is acknowledged; *seq* is the
        last seq the write committed (``None`` for other writes). While the
        directory is unchanged since the files last checked out, its ``stat``
        is all it costs.
        """
        st: os.stat_result | None
        try:
            st = os.stat(self._dir)
        except OSError:
            st = None
        if st is not None and st.st_ctime_ns == self._quiet_ctime and st.st_ino == self._quiet_ino:
            return
        # read the clock before the files: a change after that could share the directory's ctime only
        # if the clock had not moved past it then
        trusted = st is not None and _stamped_after(st.st_ctime_ns)
        # the directory was taken before the files: a change after it moves its ctime
        db, wal = _identity(self._abspath), _identity(self._abspath + "-wal")
        if self._wal_id is None:
            self._wal_id = wal  # SQLite creates it at the first read of a WAL database
        if db is None or db != self._db_id:
            self._gone = "its database file was deleted, moved or replaced after the image opened it"
            self._empty_stale_wal()
            raise self._gone_error(doing, seq)
        if wal != self._wal_id:
            self._gone = "its -wal file was deleted or replaced after the image opened it"
            raise self._gone_error(doing, seq)
        if trusted:
            assert st is not None
            self._quiet_ctime, self._quiet_ino = st.st_ctime_ns, st.st_ino
        else:
            self._quiet_ctime = self._quiet_ino = -1

    def _empty_stale_wal(self) -> None:
        """Move this connection's WAL into the database file it belongs to, and empty the WAL.

        With the database file gone from the path, SQLite no longer
        checkpoints at close and leaves its -wal behind, and whoever opens
        the path next would replay those pages into another database. A
        moved file gets every commit (the refused one too); best effort: a
        reader elsewhere holding the WAL makes it a no-op.
        """
        # (the -wal at the path may be another database's by now: its lock then guards nothing of this one, and
        # this connection's mark and checkpoint go into the moved file -- harmless, and best effort as the rest)
        with contextlib.suppress(sqlite3.Error, OSError), checkpoints_alone(self._abspath, 0) as alone:
            if alone:  # (the connection's busy timeout is 0: no waiting)
                marked_checkpoint(self._conn, "TRUNCATE")

    def _gone_error(self, doing: str, seq: int | None) -> FileGoneError:
        return gone_error(self.path, self._gone, doing, seq)

    def _check_writable(self, doing: str) -> None:
        if self.readonly:
            raise ReadOnlyError(
                f"{doing} in {self.path!r} was refused: the store is open read-only; nothing was written"
            )
        if self._gone is not None:
            raise self._gone_error(doing, None)

    # -- events ---------------------------------------------------------------

    def head(self) -> int:
        with self._lock:
            try:
                return retry_busy(self._busy_timeout, self._conn.execute, HEAD).fetchone()[0]  # type: ignore[no-any-return]
            except sqlite3.Error as err:
                raise self._error(err, "reading the head of the log") from err

    def first_seq(self) -> int:
        with self._lock:
            try:
                # min() alone, so SQLite reads one end of the primary key instead of scanning
                low = retry_busy(self._busy_timeout, self._conn.execute, FIRST).fetchone()[0]
                if low is None:
                    low = retry_busy(self._busy_timeout, self._conn.execute, AFTER_SNAPSHOTS).fetchone()[0]
            except sqlite3.Error as err:
                raise self._error(err, "reading the first seq of the log") from err
        return low  # type: ignore[no-any-return]

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        first = rows[0]
        if self.readonly or self._gone is not None or first[0] != expected_head + 1 or len(rows) > 1:
            self._check_append(rows, expected_head)
        conn, cur, lock = self._conn, self._appender, self._lock
        # (acquire and release, not ``with``: ~1,100 fewer instructions on every commit, callgrind)
        lock.acquire()
        try:
            try:
                if cur.connection is not conn:  # (the connection was replaced: tests break it so)
                    cur = self._appender = conn.cursor()
                # APPEND_AT_HEAD fails (an IntegrityError, below) unless the head is expected_head
                if len(rows) == 1:
                    try:  # retry_busy's first try, inline: this is every single mutation's cost
                        cur.execute(APPEND_AT_HEAD, first)
                    except sqlite3.OperationalError as err:
                        if not is_busy(err):
                            raise
                        self._when_locked(expected_head, cur.execute, APPEND_AT_HEAD, first)
                    size = len(first[5])
                else:
                    try:
                        cur.execute("BEGIN IMMEDIATE")
                    except sqlite3.OperationalError as err:
                        if not is_busy(err):
                            raise
                        self._when_locked(expected_head, cur.execute, "BEGIN IMMEDIATE")
                    try:
                        cur.execute(APPEND_AT_HEAD, first)
                        _insert_rest(cur, rows)
                        cur.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    size = sum(map(len, map(_PAYLOAD, rows)))
            except sqlite3.IntegrityError as err:
                # the head was not expected_head (see APPEND_AT_HEAD) -- or, NOT NULL with the head where it
                # was expected, a row's own NULL column: refused (retrying would fail alike, forever)
                if err.sqlite_errorcode in _LOST and (
                    err.sqlite_errorcode != _NOTNULL or self._head_moved(conn, expected_head)
                ):
                    raise lost_race(conn, expected_head, self._busy_timeout) from None
                raise self._error(err, f"appending events {first[0]}..{rows[-1][0]}", write=True) from err
            except sqlite3.Error as err:
                raise self._error(err, f"appending events {first[0]}..{rows[-1][0]}", write=True) from err
            if not dir_quiet(self._dir_bytes, self._quiet_ctime, self._quiet_ino):  # _check_files' first step
                self._check_files(f"appending events {first[0]}..{rows[-1][0]}", rows[-1][0])
            if self._checkpointer is not None:
                self._checkpointer.wrote(size, len(rows))
        finally:
            lock.release()

    def _check_append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        """Raise for an append this store refuses (read-only, its file gone, or *rows* not after *expected_head*);
        the test of anything but a single row's seq, off the single row's path."""
        self._check_writable(f"appending events {rows[0][0]}..{rows[-1][0]}")
        check_aligned(rows, expected_head)

    def _head_moved(self, conn: sqlite3.Connection, expected_head: int) -> bool:
        """Whether the head is no longer *expected_head* (an append's failure path; lock held)."""
        try:
            return retry_busy(self._busy_timeout, conn.execute, HEAD).fetchone()[0] != expected_head  # type: ignore[no-any-return]
        except sqlite3.Error:
            return False  # the append's own error is the one to report

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        return read_in_chunks(self._fetch, after, limit)  # type: ignore[return-value]

    def _fetch(self, after: int, n: int) -> list[Any]:
        with self._lock:
            try:
                return retry_busy(self._busy_timeout, self._conn.execute, READ, (after, n)).fetchall()
            except sqlite3.Error as err:
                raise self._error(err, f"reading events after seq {after}") from err

    def read_target(self, target: int, after: int = 0, until: int | None = None) -> Iterator[EventRow]:
        check_target(target)
        last = (1 << 63) - 1 if until is None else until

        def fetch(after: int, n: int) -> list[Any]:
            with self._lock:
                try:
                    return targets.fetch(self._conn, self._busy_timeout, self._has_targets, target, after, last, n)
                except sqlite3.Error as err:
                    raise self._error(err, f"reading the events of object {target}") from err

        return read_in_chunks(fetch, after, None)  # type: ignore[return-value]

    def index_targets(self, upto: int, *, least: int = 1) -> int:
        """See :meth:`Store.index_targets`: filled a chunk per transaction (sized to hold the write lock about
        :data:`targets.CHUNK_SECONDS`, see :func:`targets.resize`), the write lock given up between chunks, on a
        connection of its own (opened for the call): this store's connection stays free meanwhile for what
        needs no write lock -- a transaction's begin asking whether others committed, reads -- and an append
        that finds the write lock held by a chunk waits for that chunk's end (see :meth:`_when_locked`)."""
        doing = f"indexing the targets of the events up to seq {upto}"
        with self._lock:  # first whether anything waits (history asks before each read), on this store's connection
            try:
                done = targets.covered(self._conn, self._has_targets, self._busy_timeout)
            except sqlite3.Error as err:
                raise self._error(err, doing) from err
        if upto - done < least:
            return done
        conn = self._fill_connection(doing)  # (ReadOnlyError if this store is read-only)
        try:
            while True:
                with self._fill_lock:
                    try:
                        chunk = self._fill_chunk
                        before, done, took = targets.advance(
                            conn,
                            self._busy_timeout,
                            upto,
                            least,
                            self._has_targets,
                            lambda: self._check_writable(doing),
                            chunk,
                        )
                    except sqlite3.Error as err:
                        raise self._error(err, doing, write=True) from err
                if done > before:  # (nothing waited: nothing was written)
                    self._fill_chunk = targets.resize(chunk, done - before, took)
                    with self._lock:
                        self._check_files(doing, None)
                    if self._checkpointer is not None:
                        self._checkpointer.kick()  # a fill rewrites many pages of the index
                if done == before or done >= upto:
                    return done
                least = 1  # the rest of what waited
        finally:
            conn.close()

    def _fill_connection(self, doing: str) -> sqlite3.Connection:
        """A connection of the fill's own to the database this store opened -- never to a file now at its path
        instead (:class:`FileGoneError`; nothing is created there) -- set up as the store's own for writing: no
        automatic checkpoint (the checkpoint thread's work), the WAL's size limit."""
        self._check_writable(doing)
        try:
            conn = connect_existing(self._abspath, "rw", 0)
        except sqlite3.Error as err:
            with self._lock:
                self._check_files(doing, None)  # no file at the path: gone
            raise self._error(err, doing, write=True) from err
        try:
            with self._lock:  # before any statement reads a file: the database and WAL are the store's own
                self._check_files(doing, None)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            conn.execute("PRAGMA synchronous = NORMAL")  # (what it writes is made again from the events)
        except BaseException as err:
            conn.close()
            if isinstance(err, sqlite3.Error):
                raise self._error(err, doing, write=True) from err
            raise
        return conn

    def _when_locked(self, expected_head: int, fn: Any, *args: Any) -> Any:
        """An append found the write lock held. If other writers appended past *expected_head*, raise the
        :class:`SeqTaken` with what it missed (:func:`look_behind`), without waiting for the lock; otherwise
        ``retry_busy(fn, *args)`` -- holding the fill's lock first if this store's own fill (:meth:`index_targets`)
        holds SQLite's, so that the append waits for that chunk's end (not in polls) and goes in before the next
        chunk. The whole wait is bounded by busy_timeout, the fill's lock included (a fill waiting as long for
        another process's lock gives up)."""
        if (taken := look_behind(self._conn, self._busy_timeout, expected_head)) is not None:
            raise taken from None  # behind already: refused without the "database is locked" it was found in
        fill, deadline = self._fill_lock, time.monotonic() + self._busy_timeout
        if fill.locked() and fill.acquire(timeout=self._busy_timeout):
            try:
                return retry_busy(max(deadline - time.monotonic(), 0.0), fn, *args)
            finally:
                fill.release()
        return retry_busy(max(deadline - time.monotonic(), 0.0), fn, *args)

    def changed(self, seen: int) -> bool:
        try:
            version = self._pragma("data_version")
        except sqlite3.Error as err:
            raise self._error(err, "checking for other writers' commits") from err
        if version != self._data_version:
            self._data_version = version
            return True
        return False

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        """Block until another writer may have appended past *seen* (polls), or *timeout* passes."""
        return poll(lambda: self.changed(seen) or self.head() != seen, timeout, 0.02)

    def delete_events_before(self, seq: int) -> int:
        doing = f"deleting events before seq {seq}"
        self._check_writable(doing)
        with self._lock:
            try:
                count = targets.delete_before(self._conn, self._busy_timeout, seq)
            except sqlite3.Error as err:
                raise self._error(err, doing, write=True) from err
            self._check_files(doing, None)
            if self._checkpointer is not None:
                self._checkpointer.wrote(0, max(count, 0))
        return count

    def delete_snapshots_before(self, seq: int) -> int:
        return self._write(f"deleting snapshots before seq {seq}", "DELETE FROM memimg_snapshots WHERE seq < ?", (seq,))

    def _write(self, doing: str, sql: str, params: tuple[Any, ...]) -> int:
        """One statement that writes (its own transaction); returns the rows it changed."""
        self._check_writable(doing)
        with self._lock:
            try:
                count: int = retry_busy(self._busy_timeout, self._conn.execute, sql, params).rowcount
            except sqlite3.Error as err:
                raise self._error(err, doing, write=True) from err
            self._check_files(doing, None)
            if self._checkpointer is not None:
                size = sum(len(p) for p in params if isinstance(p, (bytes, str)))
                self._checkpointer.wrote(size, max(count, 0))
        return count

    def reclaim(self) -> bool:
        """Give the space of deleted rows back to the disk: ``VACUUM``, and the WAL emptied before and after.

        VACUUM rewrites the database in place -- the same file, so the same
        inode, and the WAL is truncated, not replaced: images that have the
        file open go on writing to it -- under the write lock: other
        processes' commits wait for it (up to their busy_timeout), their reads
        go on. It needs free disk space for a copy of what is kept. The WAL is
        emptied once no reader uses it: tried for :data:`CHECKPOINT_WAIT` s, then
        ``False`` (a later checkpoint empties it).
        """
        doing = "reclaiming the space of deleted rows"
        self._check_writable(doing)
        deadline = time.monotonic() + CHECKPOINT_WAIT
        vacuum = True
        while True:
            try:
                busy = self._reclaim_steps(vacuum, doing)
            except OSError as err:  # the -wal could not be opened to take the checkpoint lock
                raise StoreError(
                    f"{doing} in {self.path!r}: cannot take the checkpoint lock on its -wal file ({err}); "
                    "nothing was changed: check the file's permissions",
                    store=self.path,
                    operation=doing,
                ) from err
            if not busy or time.monotonic() >= deadline:
                return not busy
            vacuum = False  # the WAL only, once no reader uses it
            time.sleep(0.05)

    def _reclaim_steps(self, vacuum: bool, doing: str) -> int:
        """Empty the WAL (a ``TRUNCATE`` checkpoint), ``VACUUM`` if *vacuum* and empty it again, holding the
        checkpoint lock, then the store's (the order a checkpoint thread takes them in: it holds the first while it
        waits for the second); the busy flag of the last checkpoint."""
        with checkpoints_alone(self._abspath, self._busy_timeout) as alone, self._lock:
            if not alone:
                raise LockedError(
                    f"{doing} in {self.path!r}: another connection kept checkpointing the database for "
                    f"{self._busy_timeout:g} s; nothing was changed. Retry.",
                    store=self.path,
                    operation=doing,
                )
            try:
                with self._own_waiting():  # a TRUNCATE checkpoint waits for readers through it
                    if vacuum:
                        marked_checkpoint(self._conn, "TRUNCATE")
                        self._conn.execute("VACUUM")
                    busy = marked_checkpoint(self._conn, "TRUNCATE")[0]
            except sqlite3.Error as err:
                raise self._error(err, doing, write=True) from err
            self._check_files(doing, None)
        return busy

    @contextlib.contextmanager
    def _own_waiting(self) -> Iterator[None]:
        """SQLite's own busy handler, for once (the connection otherwise waits through :func:`retry_busy`)."""
        self._conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        try:
            yield
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")

    def rewrite(self, plan: Callable[[Sequence[EventRow]], Rewrite], after: int) -> None:
        """See :meth:`Store.rewrite` and :func:`memimg.stores._rewrite.sqlite_rewrite`."""
        from memimg.stores._rewrite import sqlite_rewrite

        doing = "rewriting rows (erase)"
        self._check_writable(doing)
        with self._lock:
            try:
                last = sqlite_rewrite(self._conn, self._busy_timeout, plan, after, APPEND_FIRST, APPEND)
            except sqlite3.Error as err:
                raise self._error(err, doing, write=True) from err
            self._check_files(doing, last)

    # -- snapshots and meta ---------------------------------------------------

    def write_snapshot(self, row: SnapshotRow, holder: str | None = None) -> bool:
        doing = f"writing the snapshot at seq {row.seq}"
        if holder is None:
            return bool(self._write(doing, SNAPSHOT, tuple(row)))
        return bool(self._write(doing, SNAPSHOT_LEASED, (*row, f"lease.{LEASE}", holder)))

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock:
            try:
                rows = retry_busy(
                    self._busy_timeout,
                    self._conn.execute,
                    "SELECT seq, ts, length(payload) FROM memimg_snapshots ORDER BY seq DESC",
                ).fetchall()
            except sqlite3.Error as err:
                raise self._error(err, "listing snapshots") from err
        return [SnapshotInfo(*r) for r in rows]

    def read_snapshot(self, seq: int) -> SnapshotRow:
        with self._lock:
            try:
                row = retry_busy(
                    self._busy_timeout,
                    self._conn.execute,
                    "SELECT seq, ts, payload, checksum FROM memimg_snapshots WHERE seq = ?",
                    (seq,),
                ).fetchone()
            except sqlite3.Error as err:
                raise self._error(err, f"reading the snapshot at seq {seq}") from err
        if row is None:
            raise KeyError(seq)
        return SnapshotRow(*row)

    def meta(self) -> dict[str, str]:
        with self._lock:
            try:
                return dict(retry_busy(self._busy_timeout, self._conn.execute, "SELECT key, value FROM memimg_meta"))
            except sqlite3.Error as err:
                raise self._error(err, "reading memimg_meta") from err

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._write(f"removing memimg_meta[{key!r}]", "DELETE FROM memimg_meta WHERE key = ?", (key,))
            return
        self._write(
            f"writing memimg_meta[{key!r}]",
            "INSERT OR REPLACE INTO memimg_meta (key, value) VALUES (?, ?)",
            (key, value),
        )

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        key, value, now = lease_entry(name, holder, seconds)
        doing = f"taking the {name} lease"
        if self._write(doing, LEASE_RENEW, (value, key, now, holder)):
            return True
        return bool(self._write(doing, "INSERT OR IGNORE INTO memimg_meta (key, value) VALUES (?, ?)", (key, value)))

    def release(self, name: str, holder: str) -> None:
        self._write(f"releasing the {name} lease", LEASE_RELEASE, (f"lease.{name}", holder))

    def size(self) -> int:
        """Bytes on disk (the database file and its WAL)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self._abspath + suffix)
            except OSError:
                pass
        return total

    def close(self) -> None:
        """Close the store: its checkpoint thread first, then its connection (which, if it is the last
        one to the database, checkpoints the WAL and removes it)."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._conn.close()
