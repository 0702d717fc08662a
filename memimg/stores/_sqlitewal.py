"""Keeping SQLite's locking out of a commit's latency: waiting for the write lock, and reading what a lost race
missed.

**Waiting for the write lock.** SQLite lets one connection write at a time.
Its own busy handler (``sqlite3.connect(timeout=...)``) sleeps 1, 2, 5, 10,
15, 20, 25 ... ms between attempts to take the lock, so a commit that finds
it held for a tenth of a millisecond by another process's commit waits a
whole millisecond or more: with several writer processes most of a commit's
tail latency was these sleeps. :func:`retry_busy` waits in steps of 50 µs,
doubling up to 2 ms, bounded by the same timeout; the store's connection
runs with SQLite's handler off. (Every store's waits for what another
connection holds keep that pace: :mod:`memimg.stores._waits`.)

The checkpoints -- off the commit path, and kept clear of SQLite's WAL-reset
bug -- are in :mod:`memimg.stores._sqlitecheckpoints`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Final, TypeVar

from memimg.core._rows import EventRow
from memimg.stores._protocol import SeqTaken
from memimg.stores._sqlitesql import READ
from memimg.stores._waits import lock_waits

__all__ = [
    "ADVICE",
    "CHECKPOINT_WAIT",
    "MISSED",
    "WAL_SIZE_LIMIT",
    "identity",
    "is_busy",
    "look_behind",
    "lost_race",
    "retry_busy",
]

_T = TypeVar("_T")
_BUSY: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
#: The WAL file's size kept after it starts over (SQLite's ``journal_size_limit``): what one burst grew past this is
#: given back to the disk, what steady commits reuse is kept.
WAL_SIZE_LIMIT: Final = 64 << 20
#: The most events a refused append hands over (the writer reads any others itself).
MISSED: Final = 1000


def is_busy(err: BaseException) -> bool:
    """Whether *err* is SQLite's "database is locked/busy" (by result code, extended codes included)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY


def identity(path: str | int) -> tuple[int, int] | None:
    """The (device, inode) of the file at *path* (or open on descriptor *path*), or ``None`` if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def retry_busy(timeout: float, fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)``, called again while it raises SQLite's busy error, for up to *timeout* seconds.

    *fn* must do nothing when it fails busy (one statement in autocommit
    mode, or a ``BEGIN IMMEDIATE``). It is tried again at the pace of
    :func:`~memimg.stores._waits.lock_waits`; after *timeout* the last busy error is raised (the store
    turns it into :class:`~memimg.LockedError`). Any other error is raised at once.
    """
    waits = None  # (made at the first busy error: most calls never meet one)
    while True:
        try:
            return fn(*args)
        except sqlite3.Error as err:
            if not is_busy(err):
                raise
            if waits is None:
                waits = lock_waits(timeout)
            if not next(waits, False):  # (raised in the except block: no reference kept to the error)
                raise


def lost_race(conn: sqlite3.Connection, expected_head: int, timeout: float) -> SeqTaken:
    """The :class:`SeqTaken` for an append that lost the race for a seq (another writer appended first), with the
    events it missed if they can be read: the writer catches up with them without reading them again."""
    try:
        return look_behind(conn, timeout, expected_head) or SeqTaken(expected_head)
    except sqlite3.Error:
        return SeqTaken(expected_head)  # the writer reads them itself


def look_behind(conn: sqlite3.Connection, timeout: float, expected_head: int) -> SeqTaken | None:
    """The :class:`SeqTaken` to raise for an append after *expected_head*, with the events other writers appended
    past it (up to :data:`MISSED`; ``more`` tells if there are others), read without the write lock; ``None`` if
    there are none. After a lost race (:func:`lost_race`), and before an append that found the write lock held
    waits for it, rather than queue for the lock only to find the seq taken.

    Only then: looking before every append (as this store did after a lost race, for its next 1,000) cost a
    read transaction each (~4 µs and its ``fcntl`` locks), and 4 writer processes on one log made 12-20% fewer
    commits for it (docs/performance.md, twelfth stop).
    """
    rows = retry_busy(timeout, conn.execute, READ, (expected_head, MISSED + 1)).fetchall()
    if not rows:
        return None
    return SeqTaken(expected_head, list(map(EventRow._make, rows[:MISSED])), more=len(rows) > MISSED)


#: how long :meth:`SQLiteStore.reclaim` tries to empty a WAL another connection is reading
CHECKPOINT_WAIT: Final = 2.0
# What to do about a failure, by SQLite's primary result code.
ADVICE: Final = {
    sqlite3.SQLITE_FULL: "the disk is full: free space, then retry",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error: check it",
    sqlite3.SQLITE_READONLY: "the file cannot be written by this process: check its permissions",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened: check that it and its directory exist",
    sqlite3.SQLITE_CORRUPT: "the file is damaged: restore it from a backup",
    sqlite3.SQLITE_NOTADB: "the file is not an SQLite database: restore it from a backup",
}
