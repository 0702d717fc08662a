"""PostgreSQL commits and catch-up reads: one round trip each, and settling a commit whose reply was lost.

:class:`PgWriter` appends a commit with one statement on a psycopg connection
of its own, in autocommit: the conditional insert (only if the head is still
the expected seq) and the ``NOTIFY`` that wakes followers, all or none. The
reads every transaction begins with -- the head of the log, the events after
a seq -- go over the same connection, one statement each: through a pooled
SQLAlchemy connection each would also cost a ``BEGIN`` and a ``ROLLBACK``
round trip and SQLAlchemy's own work, which made them most of a web
worker's time on PostgreSQL (``python -m benchmarks --only web``).

Each commit carries a random 63-bit **commit id**, stored on every row it
writes. When the connection breaks after a commit was sent and before its
reply arrived, the commit may or may not be in the log; :func:`settle`
reconnects and looks at the event at the commit's first seq: its own id --
the commit landed; another writer's -- it never will (the caller raises
:class:`SeqTaken`, as if the head had moved before it); none -- it resends
the same rows with the same id (the lost statement may still be on its way:
the append rule lets exactly one of the two land, and the next look says
which). Only when the database cannot be asked within the connection timeout
is the outcome unknown: :class:`CommitUnknownError`, naming the seq and id
to look up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from memimg._errors import CommitUnknownError
from memimg.stores._protocol import EventRow, SeqTaken

__all__ = [
    "ABSENT",
    "CHUNK",
    "LOST",
    "PgListener",
    "PgWriter",
    "appending",
    "lost",
    "new_commit_id",
    "settle",
    "sqlstate",
]

#: Rows per statement: stays under PostgreSQL's 65,535 parameters.
CHUNK: Final = 8000
#: SQLSTATEs of a connection that is gone: admin_shutdown, crash_shutdown, cannot_connect_now (and class 08).
LOST: Final = frozenset({"57P01", "57P02", "57P03"})
#: At most this many events are read by a refused append (see :class:`SeqTaken`).
MISSED: Final = 1000
#: No event at the seq looked up.
ABSENT: Final[Any] = object()


def sqlstate(err: BaseException) -> str | None:
    """The SQLSTATE of a driver error (psycopg 3, psycopg2), or None."""
    state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return state if isinstance(state, str) else None


def lost(err: BaseException, operational: Any) -> bool:
    """Whether PostgreSQL driver error *err* means the connection broke.

    A statement sent on a broken connection may or may not have run.
    *operational* is the driver's ``OperationalError`` class, which
    libpq-based drivers raise without a SQLSTATE when the server is gone.
    """
    orig = getattr(err, "orig", None)
    if getattr(err, "connection_invalidated", False):
        return True
    if orig is not None:
        err = orig
    state = sqlstate(err)
    if state is None:
        return isinstance(err, operational)
    return state.startswith("08") or state in LOST


def appending(rows: Sequence[EventRow]) -> str:
    """What appending *rows* is called in messages."""
    return f"appending events {rows[0][0]}..{rows[-1][0]}"


def new_commit_id() -> int:
    """A random 63-bit commit id."""
    # os.urandom, not the random module: a forked worker or a seeded random must not repeat ids
    return int.from_bytes(os.urandom(8), "big") >> 1


def settle(
    rows: Sequence[EventRow],
    commit_id: int,
    cause: BaseException,
    *,
    insert: Callable[[], bool],
    lookup: Callable[[int], Any],
    retryable: tuple[type[BaseException], ...],
    on_failure: Callable[[], None],
    timeout: float,
    description: str,
    events_table: str,
) -> bool:
    """After a commit's connection broke: whether the commit is in the log (see the module docstring).

    ``True``: its rows are there (by its commit id). ``False``: another
    writer's commit holds its first seq, so it can never land. *insert*
    sends the rows again (``False``: refused); *lookup* gives the commit id
    of the event at a seq, or :data:`ABSENT`; an error of *retryable* while
    doing either is retried (after *on_failure*) until *timeout* seconds.

    Raises:
        CommitUnknownError: the database could not tell within *timeout*.
    """
    first = rows[0][0]
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = lookup(first)
            if found is ABSENT:
                if insert():
                    return True
                found = lookup(first)
            if found is not ABSENT:
                return bool(found == commit_id)
        except retryable as err:
            cause = err
            on_failure()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(0.2, left))
    raise CommitUnknownError(
        f"{appending(rows)} in {description}: the connection broke after the commit was sent, and the "
        f"database could not be asked within {timeout:g} s whether it was applied: its "
        "outcome is UNKNOWN (it was not applied to this image). Do not simply make the change again: "
        f"once the database is back, the commit is in the log if the event at seq {first} has "
        f"commit_id {commit_id} (SELECT commit_id FROM {events_table} WHERE seq = {first}); "
        "img.refresh() then applies it. If that event is missing or has another commit_id, it was not "
        "applied",
        commit_id=commit_id,
        first_seq=first,
        seq=rows[-1][0],
        store=description,
        operation=appending(rows),
    ) from cause


class PgWriter:
    """Appends commits to a PostgreSQL log in one round trip each (see the module docstring).

    Args:
        connect: makes a new psycopg connection in autocommit.
        events_table, snapshots_table: the tables' quoted names.
        channel: the ``NOTIFY`` channel of the log.
        asynchronous: ``synchronous_commit = off`` (``sync="normal"``).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        events_table: str,
        snapshots_table: str,
        channel: str,
        asynchronous: bool,
    ) -> None:
        self._connect = connect
        self.events_table = events_table
        self._snapshots_table = snapshots_table
        self._channel = channel
        self._asynchronous = asynchronous
        self._conn: Any = None
        self._sql: dict[int, str] = {}
        self._head_sql = (
            f"SELECT coalesce((SELECT max(seq) FROM {events_table}), (SELECT max(seq) FROM {snapshots_table}), 0)"
        )
        self._read_sql = (
            f"SELECT seq, tx, ts, kind, target, payload, checksum FROM {events_table} "
            "WHERE seq > %s ORDER BY seq LIMIT %s"
        )

    def connection(self) -> Any:
        """The writer's connection (made now if there is none)."""
        if self._conn is None:
            conn = self._connect()
            if self._asynchronous:
                conn.execute("SET synchronous_commit = off")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Drop the connection (a broken one, or at the store's close)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def append(self, rows: Sequence[EventRow], expected_head: int, commit_id: int) -> None:
        """Insert *rows* if the head is *expected_head*.

        Raises:
            SeqTaken: the head moved; with the events after *expected_head*
                (up to :data:`MISSED`), read by the same statement.
            psycopg.Error: the database or the connection failed (the caller settles a lost one).
        """
        import psycopg

        conn = self.connection()
        try:
            if len(rows) <= CHUNK:
                params: list[Any] = [commit_id]
                params += [v for r in rows for v in r]
                params += [expected_head, self._channel, expected_head, MISSED + 1]
                self._check(conn.execute(self._insert_sql(len(rows)), params).fetchall(), len(rows), expected_head)
            else:
                self._append_chunked(conn, rows, expected_head, commit_id)
        except psycopg.errors.UniqueViolation:  # another writer's insert of the seq committed meanwhile
            raise SeqTaken(expected_head) from None

    @staticmethod
    def _check(result: list[Any], n: int, expected_head: int) -> None:
        """Raise :class:`SeqTaken` (with the events read) unless *result* says the *n* rows were inserted."""
        if result[0][0] == n:
            return
        missed = [EventRow(r[2], r[3], r[4], r[5], r[6], bytes(r[7]), r[8]) for r in result if r[2] is not None]
        more = len(missed) > MISSED  # one more row than handed over is read, to tell
        raise SeqTaken(expected_head, missed[:MISSED] or None, more=more)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one reading statement (autocommit: no transaction around it).

        Raises:
            psycopg.Error: the database failed; a connection that broke is
                dropped first (the next statement makes a new one).
        """
        import psycopg

        try:
            return self.connection().execute(sql, params).fetchall()  # type: ignore[no-any-return]
        except psycopg.Error as err:
            if lost(err, psycopg.OperationalError):
                self.close()
            raise

    def head(self) -> int:
        """The seq of the last event (or of the newest snapshot, every event compacted away; 0 if none)."""
        return int(self.query(self._head_sql)[0][0])

    def fetch(self, after: int, n: int) -> list[EventRow]:
        """Up to *n* events after seq *after*, in order."""
        return [
            EventRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in self.query(self._read_sql, (after, n))
        ]

    def lookup(self, seq: int) -> Any:
        """The commit id of the event at *seq* (``None``: written by memimg 0.2), or :data:`ABSENT`."""
        row = self.connection().execute(f"SELECT commit_id FROM {self.events_table} WHERE seq = %s", (seq,)).fetchone()
        return ABSENT if row is None else row[0]

    def _insert_sql(self, n: int) -> str:
        """The append of *n* rows: inserted if the head is the expected seq, then NOTIFY; refused, the events after it.

        One statement, so one snapshot: the events a refused append reads are those its head check saw.
        """
        sql = self._sql.get(n)
        if sql is None:
            row = "(%s::bigint, %s::bigint, %s::bigint, %s::text, %s::bigint, %s::bytea, %s::bigint)"
            events, snapshots = self.events_table, self._snapshots_table
            sql = (
                f"WITH ins AS (INSERT INTO {events} (seq, tx, ts, kind, target, payload, checksum, commit_id) "
                f"SELECT v.*, %s::bigint FROM (VALUES {', '.join([row] * n)}) "
                "AS v(seq, tx, ts, kind, target, payload, checksum) "
                f"WHERE coalesce((SELECT max(seq) FROM {events}), (SELECT max(seq) FROM {snapshots}), 0) "
                "= %s::bigint RETURNING seq), "
                "done AS (SELECT count(*) AS n, "
                "(SELECT pg_notify(%s, max(seq)::text) FROM ins HAVING count(*) > 0) AS note FROM ins) "
                "SELECT done.n, done.note, e.* FROM done LEFT JOIN LATERAL "
                f"(SELECT seq, tx, ts, kind, target, payload, checksum FROM {events} "
                "WHERE done.n = 0 AND seq > %s::bigint ORDER BY seq LIMIT %s) AS e ON true"
            )
            if len(self._sql) < 64:
                self._sql[n] = sql
        return sql

    def _append_chunked(self, conn: Any, rows: Sequence[EventRow], expected_head: int, commit_id: int) -> None:
        with conn.transaction():  # a SeqTaken raised in it rolls it back
            done = expected_head
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start : start + CHUNK]
                params: list[Any] = [commit_id, *[v for r in chunk for v in r], done, self._channel, done, MISSED + 1]
                result = conn.execute(self._insert_sql(len(chunk)), params).fetchall()
                if done != expected_head and result[0][0] != len(chunk):  # cannot be, by the append rule
                    raise SeqTaken(expected_head)
                self._check(result, len(chunk), done)
                done += len(chunk)


class PgListener:
    """Waits for ``NOTIFY`` on the log's channel, ``LISTEN``-ing only while it waits.

    The server keeps one queue of notifications for every session, and
    cannot free any part of it until every session that ``LISTEN``-s has
    read that part: a listening connection left unread -- an image that
    waited once and then sat idle -- would let the queue grow with every
    commit anywhere, until ``NOTIFY``, and with it every commit, fails
    ("too many notifications in the NOTIFY queue"). So :meth:`wait` sends
    ``LISTEN``, waits, and sends ``UNLISTEN`` before it returns; the
    connection is kept (not listening) for the next wait.

    Args:
        connect: makes a new psycopg connection in autocommit.
        channel: the ``NOTIFY`` channel of the log.
    """

    def __init__(self, connect: Callable[[], Any], channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._conn: Any = None
        self._lock = threading.Lock()

    def connection(self) -> Any:
        """The listener's connection (made now if there is none)."""
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def wait(self, changed: Callable[[], bool], timeout: float) -> bool | None:
        """Whether the log may have changed: ``changed()`` once listening, else a notification within *timeout*.

        ``None``: it could not listen (the server is away, or another thread
        is waiting on this listener): the caller polls instead. A connection
        that breaks while waiting is dropped (the next wait makes a new one)
        and counts as a change, so that the caller looks.

        Raises:
            ImportError: psycopg is not installed.
            Exception: whatever ``changed()`` raises.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            try:
                conn = self.connection()
                conn.execute(f'LISTEN "{self._channel}"')
            except ImportError:
                raise
            except Exception:
                self.close()
                return None
            try:
                # listening before looking: a commit after the look is notified
                return changed() or self._notified(conn, timeout)
            finally:
                self._unlisten(conn)
        finally:
            self._lock.release()

    def _notified(self, conn: Any, timeout: float) -> bool:
        try:
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                return True
        except Exception:  # the connection broke: look
            self.close()
            return True
        return False

    def _unlisten(self, conn: Any) -> None:
        if self._conn is not conn:
            return
        try:
            conn.execute(f'UNLISTEN "{self._channel}"')
            for _ in conn.notifies(timeout=0):  # those that came before the UNLISTEN: stale from now on
                pass
        except Exception:  # a connection that broke listens no more
            self.close()

    def close(self) -> None:
        """Drop the connection (a broken one, or at the store's close)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
