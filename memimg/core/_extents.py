"""Extents: the entities of an object table grouped by class, for ``img.all`` and ``img.find``.

An :class:`Extents` keeps, for every entity class with instances in a
table, a dict ``oid -> object`` of them. It is made the first time an image
is asked for an extent (a table nobody queries never has one) and is kept
current without touching the hot paths -- a field write, a commit, the
attaching of a big graph, replay:

* **Objects entering the table** are taken in lazily and in bulk. Ids are
  given in log order by appending to ``table.objects``, so everything past
  :attr:`Extents.synced` is new: :meth:`Extents.sync` files it by class when
  an extent is next read. Each object is filed once, so ``len`` costs O(1)
  plus the objects that entered since the last read, each counted once.
* **Objects leaving the table** are few and leave on cold paths, which tell
  the extents at once: the collection of unreachable objects when a
  snapshot is finished (a ``gc.drop`` event, :meth:`ObjectTable.forget`), a
  commit that failed after giving ids (its ids are taken back), rows that
  failed to decode (:meth:`ObjectTable.unplace`) and a reload in place
  (:meth:`ObjectTable.detach_all`).

So an extent holds the entities the table holds: the reachable ones, and
the ones made unreachable since the last snapshot until that snapshot's
collection forgets them (memimg finds out what is unreachable only by
walking the graph, which a snapshot does). Tracked collections and the
stand-ins of removed classes are not filed.

The indexes of the classes that declare some (:mod:`memimg.core._indexes`)
are kept here too, filed with the extents: an object is indexed when it is
filed, re-indexed when the table's applier changes an indexed field of a
filed object (:meth:`Extents.reindex`), and taken out when it leaves.

Reading and changing an :class:`Extents` is left to the caller to serialise
(an image does both under its engine's lock, where commits and catch-up
change the table).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from memimg.core import _types
from memimg.core._gone import Gone
from memimg.core._indexes import FieldIndex, indexed_fields

__all__ = ["UNSET", "Extents"]

#: the value :meth:`Extents.reindex` is given for a field deleted
UNSET: Any = object()


class Extents:
    """The entities of one object table by class (see the module docstring)."""

    __slots__ = (
        "by_class",
        "groups",
        "indexes",
        "known",
        "known_seq",
        "late",
        "links_seq",
        "shadowed",
        "skip",
        "synced",
        "table",
        "unlogged",
        "unordered",
    )

    def __init__(self, table: Any) -> None:
        self.table = table
        #: ``class -> {oid: object}``, for each class that ever had an instance filed (emptied ones are kept)
        self.by_class: dict[type, dict[int, Any]] = {}
        #: ``cls -> the dicts of cls and its subclasses`` (cleared whenever a class is first filed)
        self.groups: dict[type, list[dict[int, Any]]] = {}
        #: ids below this are filed; ids from it on are not yet looked at
        self.synced = 1
        self.skip = frozenset({*table.shell.tracked, Gone})
        #: ``class -> {field: its index}``, for each filed class that declares indexed fields
        self.indexes: dict[type, dict[str, FieldIndex]] = {}
        #: filed objects whose indexed fields are to be read again at the next sync (holes filled)
        self.late: list[int] = []
        #: ``(root, field, value) -> (seq, oids of its holders unreachable at seq) or None (not known)``: the
        #: unique values filed for more than one holder (see :mod:`memimg.core._indexes`); pruned lazily
        self.shadowed: dict[tuple[type, str, Any], tuple[int, frozenset[int]] | None] = {}
        #: the seq of the last commit that may have linked existing objects back into the graph while values
        #: were shadowed: what was found unreachable before it may be reachable again
        self.links_seq = 0
        #: while values are shadowed, ``id()`` of objects known reachable at seq :attr:`known_seq`, or
        #: reachable then and since unlinked, and closed under references (what a referenced object refers
        #: to is in it too): a commit that links objects walks only as far as these (see
        #: :mod:`memimg.image._unique`); None when not known. Objects leaving the table drop it (their ids
        #: may be reused)
        self.known: set[int] | None = None
        self.known_seq = -1
        #: ``id(obj) -> the key it is filed under`` (negative) for the entities a read-only image filled in
        #: memory only (:meth:`ObjectTable.add_unlogged`): they have no id
        self.unlogged: dict[int, int] = {}
        #: ``id()`` of the dicts of :attr:`by_class` not in id order: a hole filled, or an unlogged entity
        #: filed (under a negative key) after others; the rest are (objects are filed in id order)
        self.unordered: set[int] = set()

    def up_to_date(self) -> bool:
        """Whether every object of the table is filed (no :meth:`sync` needed)."""
        return self.synced >= len(self.table.objects) and not self.late

    def _new_class(self, t: type) -> dict[int, Any]:
        d = self.by_class[t] = {}
        self.groups.clear()
        fields = indexed_fields(t)
        if fields:
            getters = _types.info_of(t).getters  # type: ignore[union-attr]
            ix = self.indexes[t] = {}
            for name, root in fields.items():
                if root is None:
                    ix[name] = FieldIndex(getters[name])
                    continue
                ix[name] = FieldIndex(getters[name], (root, name), self.shadowed)
                peers = [i[name] for c, i in self.indexes.items() if indexed_fields(c).get(name) is root]
                for index in peers:
                    index.peers = [p for p in peers if p is not index]
        return d

    def sync(self, upto: int | None = None) -> None:
        """File the objects that entered the table since the last sync (those below id *upto*, if given)."""
        objects = self.table.objects
        n = len(objects) if upto is None else min(upto, len(objects))
        start = self.synced
        if start >= n:
            if self.late:
                self._refile_late()
            return
        by_class = self.by_class
        skip = self.skip
        indexes = self.indexes
        for oid, obj in enumerate(objects[start:n], start):
            t = type(obj)
            if obj is None or t in skip:
                continue
            d = by_class.get(t)
            if d is None:
                d = self._new_class(t)
            d[oid] = obj
            if indexes and (ix := indexes.get(t)) is not None:
                for index in ix.values():
                    index.file(oid, obj)
        self.synced = n
        if self.late:
            self._refile_late()

    def _refile_late(self) -> None:
        objects = self.table.objects
        for oid in self.late:
            obj = objects[oid] if oid < len(objects) else None
            ix = self.indexes.get(type(obj))
            if obj is not None and ix is not None:
                for index in ix.values():
                    index.remove(oid)
                    index.file(oid, obj)
        self.late = []

    def group(self, cls: type) -> list[dict[int, Any]]:
        """The dicts of *cls* and of its subclasses that have instances."""
        g = self.groups.get(cls)
        if g is None:
            g = self.groups[cls] = [d for t, d in self.by_class.items() if issubclass(t, cls)]
        return g

    def count(self, cls: type) -> int:
        """How many filed objects are instances of *cls* (subclasses included)."""
        return sum(map(len, self.group(cls)))

    def members(self, cls: type) -> Iterator[Any]:
        """The filed instances of *cls* (subclasses included), class by class, each in the order filed (id
        order, but for the dicts in :attr:`unordered`)."""
        for d in self.group(cls):
            yield from d.values()

    # -- objects leaving the table (called by the table) ------------------------

    def filled(self, oid: int, obj: Any) -> None:
        """*obj* was placed at *oid*, an id below the next one (a hole filled)."""
        if oid < self.synced and type(obj) not in self.skip:
            d = self.by_class.get(type(obj))
            if d is None:
                d = self._new_class(type(obj))
            if d and oid < next(reversed(d)):
                self.unordered.add(id(d))
            d[oid] = obj
            if type(obj) in self.indexes:
                self.late.append(oid)  # its fields are filled after it is placed

    def drop(self, oid: int, obj: Any) -> None:
        """*obj*, at *oid*, left the table."""
        self.known = None
        if oid < self.synced:
            d = self.by_class.get(type(obj))
            if d is not None:
                d.pop(oid, None)
                ix = self.indexes.get(type(obj))
                if ix is not None:
                    for index in ix.values():
                        index.remove(oid)

    def file_unlogged(self, objs: list[Any]) -> None:
        """File *objs*, attached without ids by a read-only image (under negative keys of their own)."""
        for obj in objs:
            t = type(obj)
            if t in self.skip or id(obj) in self.unlogged or _types.entity_info(t) is None:
                continue
            key = self.unlogged[id(obj)] = -id(obj)  # unique while it lives, and it is held
            d = self.by_class.get(t)
            if d is None:
                d = self._new_class(t)
            if d and key < next(reversed(d)):
                self.unordered.add(id(d))
            d[key] = obj
            ix = self.indexes.get(t)
            if ix is not None:
                for index in ix.values():
                    index.file(key, obj)

    def drop_unlogged(self, objs: list[Any]) -> None:
        """Take *objs* (filed by :meth:`file_unlogged`) out again."""
        for obj in objs:
            key = self.unlogged.pop(id(obj), None)
            if key is not None:
                self.drop(key, obj)

    def reindex(self, obj: Any, name: str, value: Any) -> None:
        """The table's applier set indexed field *name* of *obj* to *value* (:data:`UNSET`: deleted)."""
        oid = obj._mi_oid
        if oid is None or oid >= self.synced:
            return  # filed, with its value then, at the next sync
        ix = self.indexes.get(type(obj))
        if ix is None or oid not in self.by_class[type(obj)]:
            return
        index = ix[name]
        index.remove(oid)
        if value is not UNSET:
            index.add(oid, obj, value)

    def truncate(self, size: int) -> None:
        """The objects at ids from *size* on are about to leave the table."""
        self.known = None
        objects = self.table.objects
        for oid in range(size, min(self.synced, len(objects))):
            obj = objects[oid]
            if obj is not None:
                self.drop(oid, obj)
        self.synced = min(self.synced, size)

    def reset(self) -> None:
        """The table was emptied (a reload in place): nothing is filed."""
        self.by_class.clear()
        self.groups.clear()
        self.indexes.clear()
        self.late = []
        self.shadowed.clear()
        self.unordered.clear()
        self.known = None
        self.unlogged.clear()
        self.synced = 1
