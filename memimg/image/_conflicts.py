"""Conflict detection: which commit last wrote each part of each object, while transactions are open.

Commits are serializable. A transaction records what it reads (an entity
field, a dict key, a set member, or a whole collection) and its pending
events say what it writes; a commit is refused with
:class:`~memimg.ConflictError` if, since the transaction began, another
commit wrote something it read, or wrote what it writes in a way the two
cannot be reordered (each kind's :class:`~memimg.core._kinds.Rule` says
which). A read of something a newer commit already overwrote fails at once,
so a transaction never sees a mix of two states.

The :class:`ConflictIndex` remembers the seq of the last write of each part
of each object -- only while some transaction that began before it is
open: it is pruned as transactions end, and empty when none is open.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from memimg._errors import ConflictError, value_repr
from memimg.core._markers import WHOLE
from memimg.core._reader import Pending
from memimg.core._table import ObjectTable

__all__ = ["ConflictIndex"]


class ConflictIndex:
    """The seqs of the writes made while transactions are open, by object and part."""

    __slots__ = ("_last", "_last_obj", "_merged", "_recent", "rebased", "table")

    def __init__(self, table: ObjectTable) -> None:
        #: the table whose objects are written (named in messages)
        self.table = table
        self._last: dict[tuple[int, Any], int] = {}  # (oid, part) -> seq of its last write
        self._last_obj: dict[int, int] = {}  # oid -> seq of its last write of any part
        #: (oid, part) -> seq of its last merging write (a counter's add): kept apart, since those merge
        self._merged: dict[tuple[int, Any], int] = {}
        #: (seq, oid, keys, the dict they are in), oldest first
        self._recent: deque[tuple[int, int, list[tuple[int, Any]], dict[tuple[int, Any], int]]] = deque()
        #: the seq the image was reloaded at after the log was compacted past it: every transaction begun
        #: before conflicts (its reads and writes are of objects that were all reloaded)
        self.rebased = 0

    def record(self, events: list[Pending], rows: Iterable[Any]) -> None:
        """Remember what the committed *events* (stored as *rows*) wrote."""
        last, last_obj, recent = self._last, self._last_obj, self._recent
        for (k, _target, args), row in zip(events, rows):
            rule = k.conflict
            if not rule.shared:
                continue
            oid, seq = row[4], row[0]
            keys = [(oid, key) for key in rule.keys(args)]
            written = self._merged if rule.merges else last
            for key in keys:
                written[key] = seq
            last_obj[oid] = seq
            recent.append((seq, oid, keys, written))

    def prune(self, horizon: int | None) -> None:
        """Forget the writes at or before *horizon*, the oldest open transaction's start (None: none is open)."""
        if horizon is None:
            self._last.clear()
            self._last_obj.clear()
            self._merged.clear()
            self._recent.clear()
            return
        recent, last_obj = self._recent, self._last_obj
        while recent and recent[0][0] <= horizon:
            seq, oid, keys, written = recent.popleft()
            for key in keys:
                if written.get(key) == seq:
                    del written[key]
            if last_obj.get(oid) == seq:
                del last_obj[oid]

    def check_read(self, start: int, oid: int, part: Any) -> None:
        """Raise :class:`ConflictError` if part *part* of object *oid* was written after seq *start*."""
        if start < self.rebased:
            raise self._reloaded(start)
        if part is WHOLE:
            seq = self._last_obj.get(oid, 0)
        else:
            seq = max(self._last.get((oid, part), 0), self._last.get((oid, WHOLE), 0))
        if seq > start:
            raise self._conflict(oid, part, seq, "read")

    def validate(self, start: int, reads: Iterable[tuple[int, Any]], events: list[Pending]) -> None:
        """Raise :class:`ConflictError` unless a transaction begun at *start* may commit over what was written since.

        *reads* are the ``(oid, part)`` it read, *events* what it writes.
        """
        if start < self.rebased:
            raise self._reloaded(start)
        for oid, part in reads:
            self.check_read(start, oid, part)
        last, last_obj, merged = self._last, self._last_obj, self._merged
        for k, target, args in events:
            rule = k.conflict
            if target is None or not rule.shared:
                continue
            oid = target._mi_oid
            if oid is None:
                continue
            if merged and not rule.merges:  # a plain write over a counter's add since: the add would be lost
                for part in rule.keys(args):
                    s = merged.get((oid, part), 0)
                    if s > start:
                        raise self._conflict(oid, part, s, "wrote")
            if rule.after_any:
                seq, key = last_obj.get(oid, 0), WHOLE
            else:
                seq, key = (last.get((oid, WHOLE), 0), WHOLE) if rule.after_whole else (0, None)
                for part in rule.keys(args):
                    s = last.get((oid, part), 0)
                    if s > seq:
                        seq, key = s, part
            if seq > start:
                raise self._conflict(oid, key, seq, "wrote")

    def _reloaded(self, start: int) -> ConflictError:
        return ConflictError(
            f"transaction begun at seq {start} conflicts with the reload of the image at seq {self.rebased}: "
            "the log was compacted past this image's seq, so every object was brought to the newest snapshot's "
            "state; nothing was applied. Run it again (@img.transaction(retries=...) does)",
            target=None,
            key=None,
            seq=self.rebased,
        )

    def _conflict(self, oid: int, key: Any, seq: int, what: str) -> ConflictError:
        objects = self.table.objects
        obj = objects[oid] if oid < len(objects) else None
        name = type(obj).__qualname__ if obj is not None else "object"
        if key is WHOLE:
            part = f"{name} #{oid}"
        elif isinstance(key, str) and obj is not None and not isinstance(obj, (list, dict, set)):
            part = f"{name} #{oid}.{key}"
        else:
            part = f"{name} #{oid}[{value_repr(key)}]"
        return ConflictError(
            f"transaction conflicts with the commit at seq {seq}: it {what} {part}, which that "
            "commit changed; nothing was applied. Run it again (@img.transaction(retries=...) does)",
            target=oid,
            key=None if key is WHOLE else key,
            seq=seq,
        )
