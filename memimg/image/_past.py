"""Time travel: an image of the state after a past seq (``img.at``), and which past states the log holds.

``img.at(seq)`` opens a new, read-only image on :class:`PastStore` -- the
parent's store seen as it was at *seq*: its head is *seq*, it reads no event
after it, lists no snapshot after it, and refuses every write. Opening an
image on it is ordinary recovery (:func:`memimg.image._recovery.recover`,
the one fold): the newest valid snapshot at or before *seq*, then the events
up to *seq*. So the past image costs what opening the image at that seq
would, has the same classes and distinct objects, and never moves: catching
up finds nothing past its head. Being read-only, it registers no position in
the log, takes no snapshot lease and runs no snapshot thread; closing it
leaves the parent's store open.

Which states the log can give (:func:`check_seq`): every seq from 1 to the
head while the log is whole; after a compaction, those from the oldest
snapshot whose following events are all kept (or the seq of any kept
snapshot exactly). A time is turned into the seq of the last commit at or
before it (:func:`seq_at_time`) by a binary search on the commit times:
each commit is stamped with its process's wall clock, but never before the
newest event its image read or wrote, so the times never decrease with seq.
On a log written before that, where they may, the search still gives a
commit boundary, and one that never moves back as the time moves on.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from memimg._errors import HistoryError, ReadOnlyError
from memimg.core._rows import EventRow, SnapshotInfo, SnapshotRow, ts_to_datetime
from memimg.stores._protocol import Rewrite, Store

__all__ = ["PastStore", "check_seq", "commit_time", "oldest_seq", "resolve", "seq_at_time"]


class PastStore:
    """A read-only view of *store* as it was after event *seq* (see the module docstring)."""

    def __init__(self, store: Store, seq: int) -> None:
        self.store = store
        self.seq = seq
        self.description = f"{store.description} as of seq {seq}"

    def head(self) -> int:
        return self.seq

    def first_seq(self) -> int:
        return self.store.first_seq()

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        n = self.seq - after
        if n <= 0:
            return iter(())
        return self.store.read(after, n if limit is None else min(limit, n))

    def read_target(self, target: int, after: int = 0, until: int | None = None) -> Iterator[EventRow]:
        return self.store.read_target(target, after, self.seq if until is None else min(until, self.seq))

    def index_targets(self, upto: int, *, least: int = 1) -> int:
        return int(self._refuse(f"indexing the targets of the events up to seq {upto}"))

    def snapshots(self) -> list[SnapshotInfo]:
        return [info for info in self.store.snapshots() if info.seq <= self.seq]

    def read_snapshot(self, seq: int) -> SnapshotRow:
        if seq > self.seq:
            raise KeyError(seq)
        return self.store.read_snapshot(seq)

    def meta(self) -> dict[str, str]:
        return self.store.meta()

    def changed(self, seen: int) -> bool:
        return seen != self.seq

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        if seen != self.seq:
            return True
        time.sleep(timeout)  # the past does not change
        return False

    def _refuse(self, doing: str) -> Any:
        raise ReadOnlyError(
            f"{doing} in {self.description} was refused: a past state (img.at) is read-only; nothing was written"
        )

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        self._refuse(f"appending events {rows[0][0]}..{rows[-1][0]}" if rows else "appending events")

    def write_snapshot(self, row: SnapshotRow, holder: str | None = None) -> bool:
        return bool(self._refuse(f"writing the snapshot at seq {row.seq}"))

    def rewrite(self, plan: Callable[[Sequence[EventRow]], Rewrite], after: int) -> None:
        self._refuse("rewriting rows")

    def set_meta(self, key: str, value: str | None) -> None:
        self._refuse(f"writing memimg_meta[{key!r}]")

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        return bool(self._refuse(f"taking the {name} lease"))

    def release(self, name: str, holder: str) -> None:
        self._refuse(f"releasing the {name} lease")

    def delete_events_before(self, seq: int) -> int:
        return int(self._refuse(f"deleting events before seq {seq}"))

    def delete_snapshots_before(self, seq: int) -> int:
        return int(self._refuse(f"deleting snapshots before seq {seq}"))

    def reclaim(self) -> bool:
        return bool(self._refuse("reclaiming the space of deleted rows"))

    def close(self) -> None:
        """Nothing to release: the store is the parent image's, and stays open."""


def oldest_seq(store: Store) -> int:
    """The oldest seq whose state *store* can give with every later one (1 while no event was dropped)."""
    first = store.first_seq()
    if first <= 1:
        return 1
    usable = [info.seq for info in store.snapshots() if info.seq >= first - 1]
    return max(min(usable, default=first - 1), 1)


def check_seq(store: Store, seq: Any, *, asked: dt.datetime | None = None) -> int:
    """*seq*, checked: a state *store* can give (see the module docstring).

    Raises:
        TypeError: *seq* is not an int.
        ValueError: *seq* is negative.
        HistoryError: *seq* is 0 (before the first commit), past the head, or compacted away.
    """
    if type(seq) is not int:  # bool too: at(True) is a mistake, not seq 1
        raise TypeError(f"a past state is named by a seq (an int) or a time, not {type(seq).__qualname__}")
    if seq < 0:
        raise ValueError(f"seq {seq} is negative: seqs count events from 1")
    head = store.head()
    oldest = oldest_seq(store)
    facts = {"seq": seq if asked is None else None, "time": asked, "oldest": oldest, "head": head}
    if seq == 0:
        raise HistoryError(
            f"seq 0 of {store.description} is before the first commit (the root is created at seq 1); "
            f"ask for a seq from {oldest} to {head}",
            **facts,
        )
    if seq > head:
        raise HistoryError(
            f"seq {seq} is past the head of {store.description} (seq {head}); ask for a seq from {oldest} to {head}",
            **facts,
        )
    if seq < oldest and not any(info.seq == seq for info in store.snapshots()):
        if seq >= store.first_seq():
            raise HistoryError(
                f"the state at seq {seq} of {store.description} cannot be rebuilt: its events are kept (from seq "
                f"{store.first_seq()} on) but no snapshot at or before it is, to start from; the oldest available "
                f"seq is {oldest}",
                **facts,
            )
        raise HistoryError(
            f"the state at seq {seq} of {store.description} is no longer kept: a compaction dropped the events "
            f"before seq {store.first_seq()}; the oldest available seq is {oldest} (keep history with "
            "memimg compact --keep-events/--keep-days)",
            **facts,
        )
    return seq


def seq_at_time(store: Store, when: Any) -> int:
    """The seq of the last commit at or before *when* (an aware datetime).

    Raises:
        TypeError: *when* is not a datetime.
        ValueError: *when* is naive.
        HistoryError: *when* is in the future, or before the first kept commit.
    """
    if not isinstance(when, dt.datetime):
        raise TypeError(f"a time must be a datetime, not {type(when).__qualname__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"the time {when.isoformat()} is naive: give an aware datetime "
            "(datetime(..., tzinfo=datetime.UTC), or .astimezone() for local time)"
        )
    ts = (when - ts_to_datetime(0)) // dt.timedelta(microseconds=1)
    head, first = store.head(), store.first_seq()
    oldest = oldest_seq(store)
    facts = {"seq": None, "time": when, "oldest": oldest, "head": head}
    now = time.time_ns() // 1000
    if ts > now:
        raise HistoryError(
            f"time {when.isoformat()} is in the future (now is {ts_to_datetime(now).isoformat()}): "
            f"{store.description} holds the past only",
            **facts,
        )
    lo, hi = first, head
    first_ts = _ts(store, first) if first <= head else None
    if first_ts is None or first_ts > ts:
        where = "the first commit" if first <= 1 else f"the oldest kept event (seq {first})"
        at = "" if first_ts is None else f" at {ts_to_datetime(first_ts).isoformat()}"
        raise HistoryError(
            f"time {when.isoformat()} is before {where}{at} of {store.description}; "
            f"the oldest available seq is {oldest}",
            **facts,
        )
    while lo < hi:  # the last seq whose commit time is at or before ts
        mid = (lo + hi + 1) // 2
        if _ts(store, mid) <= ts:
            lo = mid
        else:
            hi = mid - 1
    return lo


def commit_time(store: Store, seq: int) -> dt.datetime | None:
    """The commit time of event *seq* of *store*, in UTC (``None`` if the event is not kept)."""
    for row in store.read(after=seq - 1, limit=1):
        return ts_to_datetime(int(row[2]))
    return None


def _ts(store: Store, seq: int) -> int:
    for row in store.read(after=seq - 1, limit=1):
        return int(row[2])
    raise HistoryError(
        f"event seq {seq} vanished from {store.description} while it was read (a compaction?); try again",
        seq=seq,
        time=None,
        oldest=oldest_seq(store),
        head=store.head(),
    )


def resolve(store: Store, seq: Any, when: Any) -> int:
    """The seq ``img.at(seq, time=when)`` asks for, checked (*seq* ``None`` and *when* ``None``: the head)."""
    if seq is not None and when is not None:
        raise TypeError("give a seq or a time, not both")
    if when is not None:
        return check_seq(store, seq_at_time(store, when), asked=when)
    return check_seq(store, store.head() if seq is None else seq)
