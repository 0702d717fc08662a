"""Rewriting stored rows in place (``Store.rewrite``: what ``MemoryImage.erase`` stores), per database.

Each store's ``rewrite`` takes the log's write turn, reads the events
appended since the caller planned, lets the caller finish its plan, replaces
the payload and checksum of event and snapshot rows by seq and appends the
``erase`` audit event, in one database transaction: a process killed midway
leaves the log as it was, or wholly rewritten, and no other writer can
append between the plan and the write (so the caller never plans again).
Rows no longer stored are skipped (an ``UPDATE`` that matches nothing).

The write turn:

* **SQLite**: ``BEGIN IMMEDIATE`` (other writers wait, readers go on);
* **PostgreSQL**: ``LOCK TABLE memimg_events IN EXCLUSIVE MODE`` in the
  transaction (inserts wait, reads go on);
* **SQLite through SQLAlchemy**: a write that changes nothing takes the
  database's write lock first.

Where the old bytes go:

* **SQLite**: ``PRAGMA secure_delete`` is on for the transaction, so the
  space the old payloads leave in their pages is zeroed; old page images
  stay in the WAL, and content moved by earlier writes can remain in free
  pages, until ``Store.reclaim`` (``VACUUM``, WAL checkpointed and truncated),
  which ``erase`` runs right after;
* **PostgreSQL**: an ``UPDATE`` writes a new row version; the old one stays
  in the table's files until ``VACUUM`` marks its space free and new rows
  overwrite it. ``VACUUM FULL`` rewrites the tables without it (it locks
  them while it runs). WAL archives and backups keep what they kept.

The functions here do the database work on a connection they are given;
the stores' ``rewrite`` methods add their locks, error translation and
file checks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from memimg.stores._protocol import EventRow, Rewrite, SeqTaken
from memimg.stores._sqlitewal import retry_busy

if TYPE_CHECKING:  # SQLAlchemy is optional: imported where it is used
    import sqlalchemy as sa

__all__ = ["RewriteStatements", "sqlalchemy_rewrite", "sqlite_rewrite"]

_READ: Final = "SELECT seq, tx, ts, kind, target, payload, checksum FROM memimg_events WHERE seq > ? ORDER BY seq"
_SET_EVENT: Final = "UPDATE memimg_events SET payload = ?, checksum = ? WHERE seq = ?"
_SET_SNAPSHOT: Final = "UPDATE memimg_snapshots SET payload = ?, checksum = ? WHERE seq = ?"

Plan = Callable[[Sequence[EventRow]], Rewrite]


def sqlite_rewrite(
    conn: sqlite3.Connection, timeout: float, plan: Plan, after: int, append_first: str, append: str
) -> int | None:
    """The rewrite on *conn*: one ``BEGIN IMMEDIATE`` transaction, ``secure_delete`` on while it runs.

    *append_first* inserts a row if the head is its last parameter, *append*
    one more. Returns the last seq appended (None: nothing appended).
    """
    previous = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
    conn.execute("PRAGMA secure_delete = ON")
    try:
        retry_busy(timeout, conn.execute, "BEGIN IMMEDIATE")  # the write lock, waited for as an append does
        try:
            missed = [EventRow(*r) for r in conn.execute(_READ, (after,))]
            events, snapshots, rows = plan(missed)
            if rows:
                expected = rows[0][0] - 1
                if conn.execute(append_first, (*rows[0], expected)).rowcount != 1:
                    raise SeqTaken(expected)
                conn.executemany(append, rows[1:])
            conn.executemany(_SET_EVENT, [(r.payload, r.checksum, r.seq) for r in events])
            conn.executemany(_SET_SNAPSHOT, [(r.payload, r.checksum, r.seq) for r in snapshots])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute(f"PRAGMA secure_delete = {previous}")
    return rows[-1][0] if rows else None


class RewriteStatements:
    """What :func:`sqlalchemy_rewrite` needs of a SQLAlchemy store's tables.

    Args:
        events, snapshots: the tables.
        append_first: inserts the first row if the head is ``expected`` (``LogTables.append_first``).
        read: the events after ``after``, at most ``n`` (``LogTables.read``).
        events_name: the events table's quoted name (for ``LOCK TABLE``).
        columns: the events table's columns, in row order.
    """

    def __init__(
        self,
        events: sa.Table,
        snapshots: sa.Table,
        append_first: Any,
        read: Any,
        events_name: str,
        columns: Sequence[str],
    ) -> None:
        self.events, self.snapshots = events, snapshots
        self.append_first, self.read = append_first, read
        self.events_name, self.columns = events_name, list(columns)


def sqlalchemy_rewrite(
    s: RewriteStatements,
    plan: Plan,
    after: int,
    *,
    pg: bool,
    commit_id: int | None,
    channel: str | None,
) -> Callable[[sa.Connection], int | None]:
    """The work of :meth:`SQLAlchemyStore.rewrite`, to run in one transaction; it returns the last seq appended.

    On PostgreSQL (*pg*) the events table is locked first (the write turn),
    the appended rows carry *commit_id* (so a commit whose reply was lost can
    be looked up), and with *channel* the commit is announced (``NOTIFY``),
    as appends are. Elsewhere (SQLite) a write that changes nothing takes
    the write lock first.
    """
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc

    ev, sn = s.events, s.snapshots
    payload = sa.bindparam("b_payload", type_=sa.LargeBinary)
    checksum = sa.bindparam("b_checksum", type_=sa.BigInteger)
    set_event = ev.update().where(ev.c.seq == sa.bindparam("b_seq")).values(payload=payload, checksum=checksum)
    set_snap = sn.update().where(sn.c.seq == sa.bindparam("b_seq")).values(payload=payload, checksum=checksum)

    def work(conn: sa.Connection) -> int | None:
        if pg:
            conn.exec_driver_sql(f"LOCK TABLE {s.events_name} IN EXCLUSIVE MODE")
        else:
            conn.execute(ev.update().where(ev.c.seq < 0).values(seq=ev.c.seq))  # the write lock, nothing changed
        missed = [EventRow(*r) for r in conn.execute(s.read, {"after": after, "n": 1 << 62})]
        events, snapshots, rows = plan(missed)
        if rows:
            appended = [dict(zip(s.columns, r)) for r in rows]
            if commit_id is not None:
                for r in appended:
                    r["commit_id"] = commit_id
            expected = rows[0][0] - 1
            try:
                with conn.begin_nested():
                    if conn.execute(s.append_first, {**appended[0], "expected": expected}).rowcount != 1:
                        raise SeqTaken(expected)
            except sa_exc.IntegrityError:  # the seq was taken (cannot happen while the turn is held)
                raise SeqTaken(expected) from None
            if len(appended) > 1:
                conn.execute(ev.insert(), appended[1:])
        for statement, changed in ((set_event, events), (set_snap, snapshots)):
            if changed:
                params = [{"b_seq": r.seq, "b_payload": r.payload, "b_checksum": r.checksum} for r in changed]
                conn.execute(statement, params)
        if channel is not None and rows:
            conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": str(rows[-1][0])})
        return rows[-1][0] if rows else None

    return work
