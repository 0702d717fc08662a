"""The SQLite store's target index: ``memimg_targets (target, seq)``, filled after the fact.

History (:meth:`memimg.Store.read_target`) reads the events of one object.
An index on ``memimg_events(target)`` would serve it, but every commit would
then write one more page (an index page, wherever that target's entries
are): single-mutation commits at ``sync="normal"`` ran at about 0.7x. So the
index is a table of its own, ``WITHOUT ROWID`` with primary key
``(target, seq)``, that commits never touch, and the meta key
:data:`~memimg.stores._protocol.TARGETS_KEY` says up to which seq it is
filled. :func:`advance` fills it, set-based, in one transaction (the image's
snapshot thread calls it after each snapshot, and history before reading a
long unindexed tail), inserting in key order (each leaf is then visited
once: about a third faster than in seq order on a 1,000,000-entry index).
A fill writes every leaf of the index that one of its targets ends in --
when the events are spread over many objects, most leaves: about 12 MB of
WAL for 10,000 events over 10,000 objects on a 1,000,000-entry index -- so
its cost grows with the index's size up to one page per event, but in one
transaction off the commit path. :func:`fetch` reads one object's rows: the
indexed part by the primary key, joined to the events by seq, then the
events past it by scanning them. Events of no object (``target`` 0) are not
indexed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from memimg.stores._protocol import TARGETS_KEY
from memimg.stores._sqlitewal import retry_busy

__all__ = ["COLUMNS", "CREATE", "advance", "covered", "delete_before", "fetch", "immediate", "resize"]

#: The table's columns, as memimg makes it.
COLUMNS: Final = ["target", "seq"]
#: Made with a new log, and by a writable store opening a log made before it (empty: filled at the first advance).
CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS memimg_targets (target INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " PRIMARY KEY (target, seq)) WITHOUT ROWID",
    f"INSERT OR IGNORE INTO memimg_meta (key, value) VALUES ('{TARGETS_KEY}', '0')",
)
# The entries of the events compaction deletes (by the primary key: as many lookups as events deleted).
_DELETE_BEFORE: Final = (
    "DELETE FROM memimg_targets WHERE (target, seq) IN "
    "(SELECT target, seq FROM memimg_events WHERE seq < ? AND seq <= ? AND target <> 0)"
)
_COVERED: Final = f"SELECT value FROM memimg_meta WHERE key = '{TARGETS_KEY}'"
_HEAD: Final = "SELECT coalesce(max(seq), 0) FROM memimg_events"
_FILL: Final = (
    "INSERT OR IGNORE INTO memimg_targets (target, seq) "
    "SELECT target, seq FROM memimg_events WHERE seq > ? AND seq <= ? AND target <> 0 ORDER BY target, seq"
)
_MARK: Final = f"INSERT OR REPLACE INTO memimg_meta (key, value) VALUES ('{TARGETS_KEY}', ?)"
_EVENT: Final = "SELECT e.seq, e.tx, e.ts, e.kind, e.target, e.payload, e.checksum"
_INDEXED: Final = (
    f"{_EVENT} FROM memimg_targets t JOIN memimg_events e ON e.seq = t.seq "
    "WHERE t.target = ? AND t.seq > ? AND t.seq <= ? ORDER BY t.seq LIMIT ?"
)
_TAIL: Final = f"{_EVENT} FROM memimg_events e WHERE e.seq > ? AND e.seq <= ? AND e.target = ? ORDER BY e.seq LIMIT ?"


def covered(conn: sqlite3.Connection, has_table: bool, timeout: float = 0.0) -> int:
    """The seq up to which the index is filled (0: none, or no table -- a read-only store on an older log)."""
    if not has_table:
        return 0
    row = retry_busy(timeout, conn.execute, _COVERED).fetchone()
    return 0 if row is None else int(row[0])


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection, timeout: float) -> Iterator[None]:
    """A ``BEGIN IMMEDIATE`` transaction (the write lock waited for up to *timeout* s), committed or rolled back."""
    retry_busy(timeout, conn.execute, "BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


#: A fill's chunk -- the events indexed in one write transaction -- is sized so that it holds SQLite's write lock
#: about this long (seconds), so that commits of other processes and threads go on between chunks: a store measures
#: each chunk it writes and sizes the next one by it (:func:`resize`). About 10-15 ms for 2,000 events on a
#: 1,000,000-entry index; 1.5-3 ms on a small one, where 2,000-event chunks made a snapshot's fill of 10,000 events
#: cost twice a single chunk's time (each transaction rewrites most of the leaves the last one did).
CHUNK_SECONDS: Final = 0.01
#: The events of a store's first chunk, and of its smallest; of its largest.
CHUNK: Final = 2_000
MOST: Final = 200_000


def resize(chunk: int, filled: int, took: float) -> int:
    """The next chunk's events after a chunk of *chunk* filled *filled* events in *took* seconds: scaled towards
    :data:`CHUNK_SECONDS`, by at most 4x up, within :data:`CHUNK` and :data:`MOST`. A chunk cut short (fewer
    events waited) tells little of a whole one's time: *chunk* unchanged."""
    if filled < chunk // 2:
        return chunk
    want = int(filled * CHUNK_SECONDS / max(took, 1e-6))
    return max(CHUNK, min(MOST, 4 * chunk, want))


def advance(
    conn: sqlite3.Connection,
    timeout: float,
    upto: int,
    least: int,
    has_table: bool,
    check_writable: Callable[[], None],
    chunk: int = CHUNK,
) -> tuple[int, int, float]:
    """Fill the index by one chunk: up to ``min(upto, head, covered + chunk)``, in one transaction, if *least*
    events wait (up to ``min(upto, head)``).

    Returns the seq covered before and after, and the seconds the write
    lock was held for it (0.0 if nothing was written). Nothing is locked
    nor written (*check_writable* is not called) while fewer wait. The seq
    covered is read again under the write lock, so two processes advancing
    at once fill each entry once. The caller repeats it until it covers
    *upto*.
    """
    before = done = covered(conn, has_table, timeout)
    if upto - done < least:
        return before, done, 0.0
    check_writable()
    with immediate(conn, timeout):
        started = time.perf_counter()
        before = done = covered(conn, True)
        upto = min(upto, conn.execute(_HEAD).fetchone()[0])
        if upto - done >= least:
            end = min(upto, done + chunk)
            conn.execute(_FILL, (done, end))
            conn.execute(_MARK, (str(end),))
            done = end
    return before, done, time.perf_counter() - started


def delete_before(conn: sqlite3.Connection, timeout: float, seq: int) -> int:
    """Delete the events before *seq* and their index entries, in one transaction; how many events."""
    with immediate(conn, timeout):
        conn.execute(_DELETE_BEFORE, (seq, covered(conn, True)))
        count: int = conn.execute("DELETE FROM memimg_events WHERE seq < ?", (seq,)).rowcount
    return count


def fetch(
    conn: sqlite3.Connection, timeout: float, has_table: bool, target: int, after: int, until: int, n: int
) -> list[Any]:
    """Up to *n* rows of *target* with ``after < seq <= until``: from the index up to the seq it covers, then the
    events past it (the covered seq may grow between two calls: each call reads it)."""
    done = covered(conn, has_table, timeout)
    rows: list[Any] = []
    if after < done:
        rows = retry_busy(timeout, conn.execute, _INDEXED, (target, after, min(until, done), n)).fetchall()
        if len(rows) == n:
            return rows
    tail = retry_busy(timeout, conn.execute, _TAIL, (max(after, done), until, target, n - len(rows))).fetchall()
    return rows + tail if rows else tail
