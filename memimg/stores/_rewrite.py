"""Rewriting stored rows in place (``Store.rewrite``: what ``MemoryImage.erase`` stores), per database.

Each store's ``rewrite`` replaces the payload and checksum of event and
snapshot rows by seq and appends the ``erase`` audit event under the append
rule, in one database transaction: a process killed midway leaves the log
as it was, or wholly rewritten. Rows no longer stored are skipped (an
``UPDATE`` that matches nothing).

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

The store modules call these functions; they know the stores only through
the attributes named here, so this module imports neither.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from memimg.stores._postgres import new_commit_id
from memimg.stores._protocol import EventRow, SeqTaken, SnapshotRow
from memimg.stores._sqltables import COLUMNS

if TYPE_CHECKING:  # SQLAlchemy is optional: imported where it is used
    import sqlalchemy as sa

__all__ = ["sqlalchemy_rewrite", "sqlite_rewrite"]

_DOING = "rewriting rows (erase)"
_SET_EVENT = "UPDATE memimg_events SET payload = ?, checksum = ? WHERE seq = ?"
_SET_SNAPSHOT = "UPDATE memimg_snapshots SET payload = ?, checksum = ? WHERE seq = ?"


def sqlite_rewrite(
    store: Any,
    append_first: str,
    append: str,
    events: Sequence[EventRow],
    snapshots: Sequence[SnapshotRow],
    rows: Sequence[EventRow],
    expected_head: int,
) -> None:
    """:meth:`SQLiteStore.rewrite`: one ``BEGIN IMMEDIATE`` transaction, ``secure_delete`` on while it runs."""
    store._check_writable(_DOING)
    conn: sqlite3.Connection = store._conn
    with store._lock:
        try:
            previous = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
            conn.execute("PRAGMA secure_delete = ON")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if rows:
                        if conn.execute(append_first, (*rows[0], expected_head)).rowcount != 1:
                            raise SeqTaken(expected_head)
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
        except sqlite3.IntegrityError as err:
            if err.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
                raise SeqTaken(expected_head) from None
            raise store._error(err, _DOING, write=True) from err
        except sqlite3.Error as err:
            raise store._error(err, _DOING, write=True) from err
        store._check_files(_DOING, rows[-1][0] if rows else None)


def sqlalchemy_rewrite(
    store: Any,
    events: Sequence[EventRow],
    snapshots: Sequence[SnapshotRow],
    rows: Sequence[EventRow],
    expected_head: int,
    *,
    commit_id: bool,
    channel: str | None,
) -> Callable[[sa.Connection], None]:
    """The work of :meth:`SQLAlchemyStore.rewrite`, to run in one transaction (``store._run(..., write=True)``).

    With *commit_id* (PostgreSQL) the appended rows carry a fresh commit id;
    with *channel*, the commit is announced there (``NOTIFY``), as appends are.
    """
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc

    columns = COLUMNS["events"]
    cid = new_commit_id() if commit_id else None
    ev, sn = store.events, store.snapshots_table
    payload = sa.bindparam("b_payload", type_=sa.LargeBinary)
    checksum = sa.bindparam("b_checksum", type_=sa.BigInteger)
    updates = [
        (
            ev.update().where(ev.c.seq == sa.bindparam("b_seq")).values(payload=payload, checksum=checksum),
            [{"b_seq": r.seq, "b_payload": r.payload, "b_checksum": r.checksum} for r in events],
        ),
        (
            sn.update().where(sn.c.seq == sa.bindparam("b_seq")).values(payload=payload, checksum=checksum),
            [{"b_seq": r.seq, "b_payload": r.payload, "b_checksum": r.checksum} for r in snapshots],
        ),
    ]

    def work(conn: sa.Connection) -> None:
        if rows:
            appended = [dict(zip(columns, r)) for r in rows]
            if cid is not None:
                for r in appended:
                    r["commit_id"] = cid
            try:
                with conn.begin_nested():
                    if conn.execute(store._append_first, {**appended[0], "expected": expected_head}).rowcount != 1:
                        raise SeqTaken(expected_head)
            except sa_exc.IntegrityError:  # the seq was taken by a racing writer
                raise SeqTaken(expected_head) from None
            if len(appended) > 1:
                conn.execute(store._append_rest, appended[1:])
        for statement, params in updates:
            if params:
                conn.execute(statement, params)
        if channel is not None and rows:
            conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": str(rows[-1][0])})

    return work
