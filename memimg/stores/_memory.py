"""The in-memory store: the log in Python lists, for tests and scratch work.

One instance may be shared by several images in one process; it then behaves
like a shared log (appends are checked against the head under a lock).
Nothing in it can fail the way a database can: no store method raises a
:class:`StoreError`. A store made with ``readonly=True`` refuses writes with
:class:`ReadOnlyError`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Sequence

from memimg._errors import ReadOnlyError
from memimg.stores._protocol import (
    FORMAT_VERSION,
    LEASE,
    EventRow,
    Rewrite,
    SeqTaken,
    SnapshotInfo,
    SnapshotRow,
    check_aligned,
    check_target,
    lease_entry,
    poll,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A store that keeps everything in memory (``memimg.open(":memory:")``).

    Args:
        readonly: refuse every write (:class:`ReadOnlyError`).
    """

    def __init__(self, *, readonly: bool = False) -> None:
        self.description = ":memory:"
        self.readonly = readonly
        self._lock = threading.Lock()
        self._events: list[EventRow] = []
        #: the target index, kept as rows are appended: target -> the seqs of its rows (see index_targets)
        self._by_target: dict[int, list[int]] = {}
        self._first = 1
        self._snapshots: dict[int, SnapshotRow] = {}
        self._meta: dict[str, str] = {"format_version": str(FORMAT_VERSION)}

    def head(self) -> int:
        if self._events:
            return self._first - 1 + len(self._events)
        # no event kept: the newest snapshot says where the log is (as in the SQL stores)
        return max(self._first - 1, max(self._snapshots, default=0))

    def first_seq(self) -> int:
        return self._first if self._events else self.head() + 1

    def _refuse(self, doing: str) -> None:
        raise ReadOnlyError(f"{doing} in :memory: was refused: the store is open read-only; nothing was written")

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        if self.readonly:
            self._refuse(f"appending events {rows[0][0]}..{rows[-1][0]}")
        check_aligned(rows, expected_head)
        with self._lock:
            if self.head() != expected_head:
                raise SeqTaken(expected_head)
            if not self._events:
                self._first = expected_head + 1
            self._extend(rows)

    def _extend(self, rows: Sequence[EventRow]) -> None:
        """Append *rows* (their seqs checked) and index them by target; the lock is held."""
        self._events.extend(rows)
        by_target = self._by_target
        for row in rows:
            seqs = by_target.get(row[4])
            if seqs is None:
                by_target[row[4]] = [row[0]]
            else:
                seqs.append(row[0])

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        with self._lock:
            start = max(0, after + 1 - self._first)
            rows = self._events[start : None if limit is None else start + limit]
        return iter(rows)

    def read_target(self, target: int, after: int = 0, until: int | None = None) -> Iterator[EventRow]:
        check_target(target)
        with self._lock:
            seqs = self._by_target.get(target, [])
            lo = bisect.bisect_right(seqs, max(after, self._first - 1))
            hi = len(seqs) if until is None else bisect.bisect_right(seqs, until)
            first, events = self._first, self._events
            rows = [events[s - first] for s in seqs[lo:hi]]
        return iter(rows)

    def index_targets(self, upto: int, *, least: int = 1) -> int:
        """The head: rows are indexed as they are appended, so nothing waits."""
        with self._lock:
            return self._first + len(self._events) - 1

    def write_snapshot(self, row: SnapshotRow, holder: str | None = None) -> bool:
        if self.readonly:
            self._refuse(f"writing the snapshot at seq {row.seq}")
        with self._lock:
            if holder is not None and self._meta.get(f"lease.{LEASE}", "")[21:] != holder:
                return False
            self._snapshots[row.seq] = row
            return True

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock:
            return [SnapshotInfo(r.seq, r.ts, len(r.payload)) for r in sorted(self._snapshots.values(), reverse=True)]

    def read_snapshot(self, seq: int) -> SnapshotRow:
        with self._lock:
            return self._snapshots[seq]

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._meta)

    def set_meta(self, key: str, value: str | None) -> None:
        if self.readonly:
            self._refuse(f"writing memimg_meta[{key!r}]")
        with self._lock:
            if value is None:
                self._meta.pop(key, None)
            else:
                self._meta[key] = value

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        if self.readonly:
            self._refuse(f"taking the {name} lease")
        key, value, now = lease_entry(name, holder, seconds)
        with self._lock:
            current = self._meta.get(key)
            if current is not None and current >= now and current[21:] != holder:
                return False
            self._meta[key] = value
            return True

    def release(self, name: str, holder: str) -> None:
        if self.readonly:
            self._refuse(f"releasing the {name} lease")
        with self._lock:
            key = f"lease.{name}"
            if self._meta.get(key, "")[21:] == holder:
                del self._meta[key]

    def changed(self, seen: int) -> bool:
        return self.head() != seen

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        return poll(lambda: self.head() != seen, timeout, 0.005)

    def delete_events_before(self, seq: int) -> int:
        if self.readonly:
            self._refuse(f"deleting events before seq {seq}")
        with self._lock:
            n = max(0, min(len(self._events), seq - self._first))
            dropped = self._events[:n]
            del self._events[:n]
            self._first += n
            for target in {r[4] for r in dropped}:  # their index entries too
                seqs = self._by_target[target]
                del seqs[: bisect.bisect_left(seqs, self._first)]
                if not seqs:
                    del self._by_target[target]
            return n

    def delete_snapshots_before(self, seq: int) -> int:
        if self.readonly:
            self._refuse(f"deleting snapshots before seq {seq}")
        with self._lock:
            old = [s for s in self._snapshots if s < seq]
            for s in old:
                del self._snapshots[s]
            return len(old)

    def reclaim(self) -> bool:
        """Nothing to give back: deleted rows left the lists when they were deleted."""
        if self.readonly:
            self._refuse("reclaiming the space of deleted rows")
        return True

    def rewrite(self, plan: Callable[[Sequence[EventRow]], Rewrite], after: int) -> None:
        """Replace rows in the lists and append, under the store's lock (the old rows are garbage)."""
        if self.readonly:
            self._refuse("rewriting rows")
        with self._lock:
            events, snapshots, rows = plan(self._events[max(0, after + 1 - self._first) :])
            head = self.head()
            for i, row in enumerate(rows):
                if row[0] != head + 1 + i:
                    raise ValueError(f"row seq {row[0]} does not follow {head + i}")
            for row in events:
                i = row.seq - self._first
                if 0 <= i < len(self._events) and self._events[i][0] == row.seq:
                    self._events[i] = row
            for snap in snapshots:
                if snap.seq in self._snapshots:
                    self._snapshots[snap.seq] = snap
            if rows and not self._events:
                self._first = head + 1
            self._extend(rows)

    def close(self) -> None:
        pass
