"""The store protocol: what memimg needs from a place that keeps the log.

A store keeps three tables -- ``memimg_events`` (one row per event),
``memimg_snapshots`` (one row per snapshot) and ``memimg_meta`` -- plus the
target index history reads by (``memimg_targets`` in the SQL stores: see
:meth:`Store.index_targets`), and knows nothing of user classes: rows are opaque bytes with a checksum the core
computed. The one rule a store must enforce itself, with the database's
guarantees rather than a lock held in Python, is the **append rule**:
a transaction's rows are appended all or none, and only if the log's head is
still the seq the writer expected -- otherwise :class:`SeqTaken` is raised
and nothing is written. That single rule makes commits from several
processes safe: the loser catches up and tries again.

A store raises no driver exception: every failure of its database is a
:class:`~memimg.StoreError` (``__cause__`` the driver's error), and a store
opened read-only refuses every write with :class:`~memimg.ReadOnlyError`.

Every store passes the contract suite in ``tests/stores/contract.py``.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from memimg.core._rows import EventRow, SnapshotInfo, SnapshotRow

__all__ = [
    "FORMAT_VERSION",
    "LEASE",
    "PROCESS_KEYS",
    "TARGETS_KEY",
    "EventRow",
    "Rewrite",
    "SeqTaken",
    "SnapshotInfo",
    "SnapshotRow",
    "Store",
    "check_target",
    "lease_entry",
    "live_positions",
    "poll",
    "position_entry",
    "read_in_chunks",
]

#: The lease a snapshot writer (and an erase) holds while it works (``lease(LEASE, ...)``).
LEASE = "snapshot"

#: The storage format this memimg writes; a store holding a newer one is refused.
FORMAT_VERSION = 1
#: The ``memimg_meta`` key of the seq up to which a SQL store's target index is filled (see Store.index_targets).
TARGETS_KEY = "targets_indexed"
#: The prefixes of the ``memimg_meta`` keys that running processes write and rewrite as they go -- snapshot
#: leases, image positions, the SQLite store's checkpoint mark -- not part of what the log holds (a copy leaves them).
PROCESS_KEYS = ("lease.", "position.", "checkpoint.")


class Rewrite(NamedTuple):
    """What :meth:`Store.rewrite` stores: rows whose payload and checksum change, and rows to append."""

    events: Sequence[EventRow]
    snapshots: Sequence[SnapshotRow]
    rows: Sequence[EventRow]


class SeqTaken(Exception):
    """The head moved since the writer last looked; nothing was appended.

    A store that read the events it refused over in the same round trip
    hands them over, so that the writer catches up without reading them
    again: *missed* -- the events after *expected*, in order, from
    ``expected + 1`` on (``None``: not read; the writer reads them itself) --
    and *more*: whether events past the last of them were left unread.
    """

    def __init__(self, expected: int, missed: Sequence[EventRow] | None = None, *, more: bool = False) -> None:
        super().__init__(f"seq {expected + 1} was taken by another writer")
        self.expected = expected
        self.missed = missed
        self.more = more


@runtime_checkable
class Store(Protocol):
    """Where an image's log lives."""

    #: A short description for messages (a path, a URL without password).
    description: str

    def head(self) -> int:
        """The seq of the newest event (0 when the log is empty)."""
        ...

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        """Append *rows* (seqs ``expected_head + 1`` on) atomically.

        Raises:
            SeqTaken: another writer appended first; nothing was written
                (with the events it missed, if the store read them).
            LockedError: the store stayed busy past its timeout.
            StoreError: the database failed; nothing was written.
            FileGoneError: (SQLite) the file is no longer at its path; the
                rows are not durable.
            CommitUnknownError: (PostgreSQL) the connection broke after the
                rows were sent and their outcome could not be learned.
            ValueError: the seqs of *rows* are not ``expected_head + 1``,
                ``+ 2``, ... (:func:`check_aligned`); nothing was written.
        """
        ...

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        """Event rows with ``seq > after``, in order."""
        ...

    def first_seq(self) -> int:
        """The seq of the oldest event still stored (``head() + 1`` when none)."""
        ...

    def read_target(self, target: int, after: int = 0, until: int | None = None) -> Iterator[EventRow]:
        """Event rows whose ``target`` is *target*, with ``after < seq <= until``, in order.

        What :meth:`memimg.MemoryImage.history` reads. The store's target
        index (see :meth:`index_targets`) gives the rows of the events it
        covers; the events past it are scanned. So the cost grows with that
        object's rows plus the events not indexed yet -- not the log's
        length -- and the answer is the same whatever the index covers
        (a read-only store, which cannot extend it, answers the same).

        Raises:
            ValueError: *target* is not an object id (``>= 1``).
        """
        ...

    def index_targets(self, upto: int, *, least: int = 1) -> int:
        """Extend the target index to every event with ``seq <= upto`` (at most the head); the seq it now covers.

        The index (``target``, ``seq``) of the events up to a seq is kept
        apart from the events, and extended by this call alone -- a
        set-based statement, in one transaction -- so commits never pay for
        it. Nothing is written while fewer than *least* events wait
        (``upto`` minus the seq covered); calls from several processes at
        once are safe (one extends, the others find it done). A store
        that indexes as it appends (memory) covers its head already.

        Raises:
            ReadOnlyError: the store is open read-only and events wait.
            LockedError: the store stayed busy past its timeout.
            StoreError: the database failed; nothing was written.
        """
        ...

    def write_snapshot(self, row: SnapshotRow, holder: str | None = None) -> bool:
        """Store a snapshot row (replacing one at the same seq); whether it was stored.

        With *holder*, the row is stored only if *holder* still holds the
        ``snapshot`` lease, checked in the same database transaction as the
        write (a snapshot that stalled past its lease, which another
        process -- an ``erase`` -- may have taken meanwhile, stores nothing).
        """
        ...

    def snapshots(self) -> list[SnapshotInfo]:
        """Headers of every stored snapshot, newest first."""
        ...

    def read_snapshot(self, seq: int) -> SnapshotRow:
        """The snapshot covering *seq*."""
        ...

    def meta(self) -> dict[str, str]:
        """The ``memimg_meta`` table."""
        ...

    def set_meta(self, key: str, value: str | None) -> None:
        """Write one ``memimg_meta`` entry (``None``: remove it)."""
        ...

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take lease *name* for *holder* for *seconds* (or renew it); ``False`` if another holder has it.

        A lease is how processes sharing a log agree that only one of them
        does something at a time (writes a snapshot): taking it is atomic in
        the database, and it expires by itself if its holder dies. Stored in
        ``memimg_meta`` (see :func:`lease_entry`).
        """
        ...

    def release(self, name: str, holder: str) -> None:
        """Give lease *name* back, if *holder* has it."""
        ...

    def changed(self, seen: int) -> bool:
        """Cheap check: may the head be past *seen* (another writer appended)?

        May answer ``True`` spuriously, never ``False`` wrongly.
        """
        ...

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        """Block until the head may be past *seen*, or *timeout* seconds pass.

        PostgreSQL is woken by LISTEN/NOTIFY; other stores poll.
        """
        ...

    def delete_events_before(self, seq: int) -> int:
        """Delete events with ``seq < seq`` and their target index entries (compaction); returns how many events."""
        ...

    def delete_snapshots_before(self, seq: int) -> int:
        """Delete snapshots covering seqs before *seq* (compaction); returns how many."""
        ...

    def reclaim(self) -> bool:
        """Give the space of deleted rows back to the disk, as far as the database can (compaction).

        The log reads the same afterwards. May take the database's write
        lock for as long as it rewrites what is kept (see each store).
        Returns whether it is all done: ``False`` when part of it has to
        wait (SQLite: another connection kept reading the write-ahead log,
        whose old pages stay in it until a later checkpoint).

        Raises:
            ReadOnlyError: the store is open read-only.
            LockedError: the store stayed busy past its timeout.
            StoreError: the database failed; nothing was changed.
        """
        ...

    def rewrite(self, plan: Callable[[Sequence[EventRow]], Rewrite], after: int) -> None:
        """Replace stored rows and append an event, in one transaction holding the log's write turn.

        What ``MemoryImage.erase`` stores. The store takes the write turn
        (no other writer appends until it ends), reads the events after seq
        *after* in that transaction, and calls ``plan(those events)``; the
        :class:`Rewrite` it returns is stored -- payloads and checksums of
        ``events`` and ``snapshots`` replaced by seq (a row no longer stored
        is skipped), ``rows`` appended right after the head -- and committed:
        all of it, or none. *plan* may be called again if the store retries
        on a new connection (with the same or more events). A commit whose
        outcome the store cannot learn (the connection lost at commit) is
        settled by looking the appended rows up, never appended twice.

        The old bytes are made as hard to recover as the database allows
        (see each store).

        Raises:
            ReadOnlyError: the store is open read-only.
            LockedError: the store stayed busy past its timeout.
            StoreError: the database failed; nothing was written.
            Exception: what *plan* raised; nothing was written.
        """
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def lease_entry(name: str, holder: str, seconds: float) -> tuple[str, str, str]:
    """``(key, value, now)`` of lease *name* held by *holder* for *seconds* from now.

    The value is the expiry (microseconds since the epoch, zero-padded to 20
    digits, so that text order is time order), a space, and the holder: a
    lease is free when ``value < now``, and held by *holder* when
    ``substr(value, 22) = holder`` -- one conditional ``UPDATE`` in SQL.
    """
    now = time.time_ns() // 1000
    return f"lease.{name}", f"{now + int(seconds * 1e6):020d} {holder}", f"{now:020d}"


def position_entry(holder: str, seq: int, seconds: float) -> tuple[str, str]:
    """``(key, value)`` of the position of image *holder*: at *seq*, for *seconds* from now.

    The value is the expiry (as in :func:`lease_entry`), a space, and the
    seq. Compaction keeps the events after the live positions (see
    :func:`live_positions`).
    """
    now = time.time_ns() // 1000
    return f"position.{holder}", f"{now + int(seconds * 1e6):020d} {seq}"


def live_positions(meta: dict[str, str]) -> dict[str, int]:
    """``holder -> seq`` of the positions in *meta* (a store's ``meta()``) that have not expired."""
    now = time.time_ns() // 1000
    live = {}
    for key, value in meta.items():
        if key.startswith("position."):
            expiry, _, seq = value.partition(" ")
            if expiry.isdigit() and seq.isdigit() and int(expiry) >= now:
                live[key[len("position.") :]] = int(seq)
    return live


def poll(moved: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Call *moved* every *interval* seconds until it says True (then True) or *timeout* passes (then False):
    a store's :meth:`Store.wait_for_change` where it has nothing to wait on but the log itself."""
    deadline = time.monotonic() + timeout
    while True:
        if moved():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))


_seq_of = operator.itemgetter(0)


def check_aligned(rows: Sequence[EventRow], expected_head: int) -> None:
    """Raise ``ValueError`` unless *rows* have the seqs ``expected_head + 1`` on, one after another, as
    :meth:`Store.append` takes them (a caller's error: nothing is written). Each store calls it first; one
    row's check is a comparison."""
    if rows[0][0] == expected_head + 1 and len(rows) == 1:
        return
    seqs = list(map(_seq_of, rows))
    if seqs == list(range(expected_head + 1, expected_head + 1 + len(rows))):  # (compared in C: a commit's rows)
        return
    for i, seq in enumerate(seqs):
        if seq != expected_head + 1 + i:
            raise ValueError(
                f"appending events {rows[0][0]}..{rows[-1][0]} after seq {expected_head} was refused: row seq "
                f"{seq} does not follow {expected_head + i}; nothing was written"
            )


def check_target(target: int) -> None:
    """Raise ``ValueError`` unless *target* is an object id, as :meth:`Store.read_target` takes."""
    if type(target) is not int or target < 1:
        raise ValueError(f"read_target({target!r}): a target is an object id (an int >= 1)")


def read_in_chunks(
    fetch: Callable[[int, int], Sequence[Sequence[object]]], after: int, limit: int | None, chunk: int = 20_000
) -> Iterator[Sequence[object]]:
    """Rows with ``seq > after``, fetched *chunk* at a time by ``fetch(after, n)``.

    A store's connection is held only while one chunk is read, so a slow
    consumer of a long log never blocks writers.
    """
    last = after
    remaining = limit
    while remaining is None or remaining > 0:
        n = chunk if remaining is None else min(chunk, remaining)
        rows = fetch(last, n)
        yield from rows
        if len(rows) < n:
            return
        last = rows[-1][0]  # type: ignore[assignment]
        if remaining is not None:
            remaining -= len(rows)
