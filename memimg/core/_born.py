"""Where each object was born: the seq of the event whose records created it.

Object ids are given in log order, and the objects one event creates get
consecutive ids, so the event that created object *oid* is found from one
entry per *creating event* -- ``(first oid it created, its seq)`` -- by a
binary search: :class:`Born` keeps those entries in two arrays (16 bytes
per creating event, none per object). Replay and commit note each creating
event; a snapshot stores the entries of the objects it may hold in its
header (``"born"``), so an image opened from a snapshot still knows where
each of its objects was born, even after the events before it were
compacted away. :meth:`memimg.MemoryImage.history` uses it to find an
object's first state.

A snapshot written before memimg 0.4 has no entries: the objects it holds
are *born at or before* its seq (stored as the negated seq) until
:meth:`Born.settle` learns the exact events from the log.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from typing import Any

__all__ = ["Born"]


class Born:
    """``first oid -> seq`` of every creating event, in log order (see the module docstring)."""

    __slots__ = ("oids", "seqs")

    def __init__(self) -> None:
        self.oids = array("q")
        self.seqs = array("q")

    def note(self, first_oid: int, seq: int) -> None:
        """Event *seq* created objects from *first_oid* on."""
        oids = self.oids
        if not oids or first_oid > oids[-1]:
            oids.append(first_oid)
            self.seqs.append(seq)

    def seq_of(self, oid: int) -> int:
        """The seq of the event that created *oid*; ``-S`` if only known to be at or before ``S``; 0 if unknown."""
        i = bisect.bisect_right(self.oids, oid) - 1
        return self.seqs[i] if i >= 0 else 0

    def created(self, seq: int) -> bool:
        """Whether event *seq* is known to have created objects (the seqs grow with the ids, in log order)."""
        seqs = self.seqs
        i = bisect.bisect_left(seqs, seq)
        return i < len(seqs) and seqs[i] == seq

    def truncate(self, size: int) -> None:
        """Drop the entries past the first *size* (a commit whose append failed)."""
        del self.oids[size:]
        del self.seqs[size:]

    def clear(self) -> None:
        self.truncate(0)

    def __len__(self) -> int:
        return len(self.oids)

    def header(self, limit: int) -> list[list[int]]:
        """The entries of objects below id *limit*, for a snapshot's header: ``[oids, seqs]``."""
        n = bisect.bisect_left(self.oids, limit)
        return [self.oids[:n].tolist(), self.seqs[:n].tolist()]

    def load(self, header: Any, seq: int, next_oid: int) -> None:
        """Take the entries a snapshot at *seq* stores (``None``: a snapshot without them, see the module docstring)."""
        self.clear()
        if (
            type(header) is list
            and len(header) == 2
            and all(type(x) is list for x in header)
            and len(header[0]) == len(header[1])
        ):
            try:
                oids, seqs = array("q", header[0]), array("q", header[1])
            except (TypeError, OverflowError):
                oids = seqs = array("q")
            if all(b > a for a, b in itertools.pairwise(oids)):
                self.oids, self.seqs = oids, seqs
                return
        if next_oid > 1:
            self.note(1, -seq)

    def settle(self, found: list[tuple[int, int]], start: int) -> None:
        """Replace the entries only known as "at or before" by *found*: ``(first oid, seq)`` of the creating
        events the log holds from seq *start* to the seq those entries named.

        Objects created before *start* (events compacted away) stay known
        only as born at or before ``start - 1`` -- in a snapshot.
        """
        merged = {o: s for o, s in zip(self.oids, self.seqs) if s > 0}
        merged.update(found)
        entries = sorted(merged.items())
        if not entries or entries[0][0] > 1:
            entries.insert(0, (1, -(start - 1)))
        self.clear()
        for o, s in entries:
            self.note(o, s)
