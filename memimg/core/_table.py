"""The object table: every object of a graph by id, the root, and the committed applier.

Object ids are given at commit, in log order (``len(objects)`` is the next
one), so every process folding the same log gives every object the same id;
``objects[oid]`` is the object, ``None`` for an id no longer in use.

:class:`ObjectTable` is also the *applier* of the committed state: the
primitive operations events reduce to (see :mod:`memimg.core._kinds`), done
with raw builtin operations on the real objects, so neither user code nor
memimg's own tracking runs during replay or commit.

Beside the objects, the table keeps what the log has declared of their
types (:class:`Declarations`): reading the log records declarations, writing
consults them, and a ``snapshot`` event -- a snapshot's boundary -- resets them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from memimg._errors import CorruptLogError
from memimg.core import _types
from memimg.core._born import Born
from memimg.core._codec import ENTITY, FROZENSET, TRACKED, TUPLE, VALUE, Codec
from memimg.core._counters import GENERATIONS, add, counter_fields
from memimg.core._extents import UNSET, Extents
from memimg.core._gone import Gone
from memimg.core._indexes import indexed_fields
from memimg.core._shell import Shell

__all__ = ["Declarations", "ObjectTable"]

_NATIVE: Final = _types.NATIVE_TYPES
_list_setitem = list.__setitem__
_list_copy = list.copy


class Declarations:
    """What the log has declared so far of each type: ``name -> (version, fields, field types)``.

    Every event that first writes a class's state declares its schema; a
    snapshot declares the types it holds. After a ``snapshot`` event (``gc``
    before memimg 0.3) the log must declare every type again, since a reader
    starting from that snapshot knows only what it declares.
    """

    __slots__ = ("by_name", "current")

    def __init__(self) -> None:
        self.by_name: dict[str, tuple[int, tuple[str, ...], tuple[str, ...] | None]] = {}
        #: classes whose current schema is the one declared (cleared whenever declarations change)
        self.current: set[type] = set()

    def note(self, name: str, version: int, fields: tuple[str, ...], types: tuple[str, ...] | None) -> None:
        """The log declares *name* so (read from an event or a snapshot; *types* ``None``: not recorded)."""
        self.by_name[name] = (version, fields, types)
        self.current.clear()

    def clear(self) -> None:
        self.by_name.clear()
        self.current.clear()


class ObjectTable:
    """The objects of one graph by id, its root, and the primitive operations on them."""

    def __init__(self, shell: Shell, codec: Codec, owner: Any = None) -> None:
        self.shell = shell
        self.codec = codec
        #: what the objects' ``_mi_img`` holds: the image (None for a free-standing graph)
        self.owner = owner
        self.objects: list[Any] = [None]
        self.holes = 0  # None entries in objects, besides objects[0]
        #: how many times objects left the table (forgotten, cut, or all of them at a reload): only ever grows,
        #: so a reader that saw the same count twice knows no object left in between
        self.removals = 0
        self.root_oid = 0
        self.declarations = Declarations()
        #: the event that created each object (see :mod:`memimg.core._born`)
        self.born = Born()
        #: the entities by class, made when first asked for (see :meth:`extent_index`)
        self.extents: Extents | None = None
        #: ``(object, field, value, objects attached)``: what a read-only image filled in memory only
        self.unlogged: list[tuple[Any, str, Any, list[Any]]] = []
        self._setters: dict[type, dict[str, Any]] = {}
        self._add_setters: dict[type, dict[str, Any]] = {}
        #: object id -> {counter field: the generation of its last plain write} (see :func:`_counters.delta_for`;
        #: ids are never reused, and an entry is a few dozen bytes per counter object ever assigned)
        self.counter_writes: dict[int, dict[str, int]] = {}

    # -- identity -----------------------------------------------------------

    @property
    def root(self) -> Any:
        """The root object (``None`` before the root event)."""
        return self.objects[self.root_oid] if self.root_oid else None

    def deref(self, oid: Any) -> Any:
        """The object of id *oid*.

        Raises:
            CorruptLogError: there is none (a stored reference to a missing object).
        """
        try:  # an int above 0: not counted from the end, not a bool (True would be object 1)
            obj = self.objects[oid] if type(oid) is int and oid > 0 else None
        except IndexError:
            obj = None
        if obj is None:
            raise CorruptLogError(
                f"a stored reference names object {oid!r:.80}, which does not exist: the log was damaged or "
                "crafted; restore it from a backup",
                seq=None,
                table="",
            )
        return obj

    def add_unlogged(self, obj: Any, name: str, value: Any, attached: list[Any]) -> None:
        """A read-only image filled field *name* of *obj* with *value*, attaching the objects *attached* in
        memory only (no ids): the extents hold its entities until a writer's commit replaces the value."""
        self.unlogged.append((obj, name, value, attached))
        if self.extents is not None:
            self.extents.file_unlogged(attached)

    def prune_unlogged(self) -> None:
        """Take out of the extents the unlogged objects whose filled value a commit replaced."""
        kept = []
        for entry in self.unlogged:
            obj, name, value, attached = entry
            try:
                same = _types.info_of(type(obj)).getters[name](obj) is value  # type: ignore[union-attr]
            except AttributeError:
                same = False
            if same and obj._mi_img is self.owner:
                kept.append(entry)
            elif self.extents is not None:
                self.extents.drop_unlogged(attached)
        self.unlogged = kept

    def extent_index(self) -> Extents:
        """The entities of this table by class (made now if nobody asked before); see :mod:`memimg.core._extents`."""
        extents = self.extents
        if extents is None:
            extents = self.extents = Extents(self)
            for entry in self.unlogged:
                extents.file_unlogged(entry[3])
        return extents

    def live_count(self) -> int:
        """How many objects the table holds (attached, reachable or not yet collected)."""
        return len(self.objects) - 1 - self.holes

    def place(self, entries: list[tuple[int, Any]]) -> None:
        """Put each object of ``(oid, obj)`` *entries* at its id (stored objects being created).

        The hot loop of loading a snapshot: a million entries are placed
        without a call each.

        The ids are 1 or more (the readers check each batch: a negative
        index would count from the end of the table).

        Raises:
            CorruptLogError: an id is in use.
        """
        objects = self.objects
        holes = self.holes
        extents = self.extents
        try:
            for oid, obj in entries:
                n = len(objects)
                if oid == n:
                    objects.append(obj)
                elif oid > n:
                    objects.extend([None] * (oid - n))
                    holes += oid - n
                    objects.append(obj)
                elif objects[oid] is None:
                    objects[oid] = obj
                    holes -= 1
                    if extents is not None:
                        extents.filled(oid, obj)
                else:
                    raise CorruptLogError(f"object id {oid} is created twice", seq=None, table="")
        finally:
            self.holes = holes

    def place_run(self, oids: list[int], objs: list[Any]) -> None:
        """:meth:`place` the objects *objs* at ids *oids*: at once when the ids follow the table's end."""
        objects = self.objects
        n = len(objects)
        if oids and oids[0] == n and oids == list(range(n, n + len(oids))):
            objects.extend(objs)
        else:
            self.place(list(zip(oids, objs)))

    def detach_all(self) -> list[Any]:
        """Empty the table, for a reload in place (see :attr:`Reader.reuse`); the objects it held, by id.

        The objects keep their owner and id: the reload takes back those
        it finds again, and the caller detaches the others.
        """
        objects = self.objects
        held = objects[:]
        if self.extents is not None:
            self.extents.reset()
        self.unlogged = []
        del objects[1:]
        self.holes = 0
        self.removals += 1
        self.root_oid = 0
        self.declarations.clear()
        self.born.clear()
        return held

    def unplace(self, size: int) -> None:
        """Forget the objects placed at ids from *size* on (a transaction's rows that failed to decode).

        Stored objects are always created at ids past every id before them,
        so these are all the objects the failed decoding made.
        """
        objects = self.objects
        set_identity = self.shell.set_identity
        self.truncating(size)
        self.removals += 1
        for obj in objects[size:]:
            if obj is None:
                self.holes -= 1
            elif type(obj) is not Gone:
                set_identity(obj, None, None)
        del objects[size:]

    def truncating(self, size: int) -> None:
        """The objects at ids from *size* on are about to be taken out of the table (by truncating it)."""
        if self.extents is not None:
            self.extents.truncate(size)

    def extend_to(self, next_oid: int) -> None:
        """Reserve the ids below *next_oid* (a snapshot's next id: ids of collected objects stay unused)."""
        n = len(self.objects)
        if n < next_oid:
            self.holes += next_oid - n
            self.objects.extend([None] * (next_oid - n))

    # -- the committed applier --------------------------------------------------

    @property
    def setters(self) -> dict[type, dict[str, Any]]:
        """The field setters :meth:`field_set` uses, by class (a class's made on its first set): the compiled
        applier of a commit's sets calls them as it does."""
        return self._setters

    def field_set(self, obj: Any, name: str, value: Any) -> None:
        setters = self._setters.get(type(obj))
        if setters is None:
            setters = self._setters[type(obj)] = self._setters_of(type(obj))
        setters[name](obj, value)

    def _setters_of(self, t: type, adding: bool = False) -> dict[str, Any]:
        """The field setters of class *t*: the raw slot setters, those of indexed fields keeping the indexes,
        those of counters (unless *adding*) taking a new generation (see :func:`_counters.delta_for`)."""
        setters = _types.info_of(t).setters  # type: ignore[union-attr]
        indexed = indexed_fields(t)
        counters = () if adding else counter_fields(t)
        if not indexed and not counters:
            return setters
        setters = dict(setters)
        for name in indexed:
            setters[name] = self._indexed_setter(name, setters[name])
        for name in counters:
            setters[name] = self._counter_setter(name, setters[name])
        return setters

    def _counter_setter(self, name: str, setter: Any) -> Any:
        writes = self.counter_writes

        def set_counter(obj: Any, value: Any) -> None:
            setter(obj, value)
            oid = obj._mi_oid
            gens = writes.get(oid)
            if gens is None:
                gens = writes[oid] = {}
            gens[name] = next(GENERATIONS)

        return set_counter

    def counter_generation(self, obj: Any, name: str) -> int:
        """The generation of counter *name* of *obj*: that of its last committed plain write (0: none)."""
        writes = self.counter_writes
        if not writes:
            return 0
        gens = writes.get(obj._mi_oid)
        return 0 if gens is None else gens.get(name, 0)

    def _indexed_setter(self, name: str, raw: Any) -> Any:
        def set_indexed(obj: Any, value: Any) -> None:
            raw(obj, value)
            extents = self.extents
            if extents is not None and extents.indexes:
                extents.reindex(obj, name, value)

        return set_indexed

    def field_add(self, obj: Any, name: str, delta: Any) -> None:
        t = type(obj)
        setters = self._add_setters.get(t)
        if setters is None:
            setters = self._add_setters[t] = self._setters_of(t, adding=True)
        setters[name](obj, add(_types.info_of(t).getters[name](obj), delta))  # type: ignore[union-attr]

    def field_del(self, obj: Any, name: str) -> None:
        _types.info_of(type(obj)).deleters[name](obj)  # type: ignore[union-attr]
        extents = self.extents
        if extents is not None and extents.indexes and name in indexed_fields(type(obj)):
            extents.reindex(obj, name, UNSET)

    def list_append(self, lst: Any, items: list[Any]) -> None:
        list.extend(lst, items)

    def list_splice(self, lst: Any, start: int, stop: int, items: list[Any]) -> None:
        if not 0 <= start <= stop <= list.__len__(lst):
            raise IndexError(f"splice {start}:{stop} out of range for a list of {list.__len__(lst)}")
        _list_setitem(lst, slice(start, stop), items)

    def list_clear(self, lst: Any) -> None:
        list.clear(lst)

    def list_reorder(self, lst: Any, order: list[int]) -> None:
        current = _list_copy(lst)
        if sorted(order) != list(range(len(current))):
            raise IndexError("list.reorder order is not a permutation of the list")
        _list_setitem(lst, slice(None), [current[i] for i in order])

    def list_reverse(self, lst: Any) -> None:
        list.reverse(lst)

    def dict_set(self, d: Any, key: Any, value: Any) -> None:
        dict.__setitem__(d, key, value)

    def dict_del(self, d: Any, key: Any) -> None:
        dict.__delitem__(d, key)

    def dict_update(self, d: Any, pairs: list[tuple[Any, Any]]) -> None:
        dict.update(d, pairs)

    def dict_clear(self, d: Any) -> None:
        dict.clear(d)

    def set_add(self, s: Any, items: list[Any]) -> None:
        set.update(s, items)

    def set_discard(self, s: Any, items: list[Any]) -> None:
        set.difference_update(s, items)

    def set_clear(self, s: Any) -> None:
        set.clear(s)

    def set_root(self, obj: Any) -> None:
        oid = obj._mi_oid
        if not oid:
            raise CorruptLogError("the root event names no object", seq=None, table="memimg_events")
        self.root_oid = oid

    def collect(self) -> int:
        """Forget every object that is no longer reachable (an old ``gc`` event); returns how many.

        Declarations are forgotten too (see :class:`Declarations`).
        """
        self.declarations.clear()
        reachable = self.reachable_oids()
        objects = self.objects
        dropped = [oid for oid in range(1, len(objects)) if objects[oid] is not None and oid not in reachable]
        self.forget(dropped)
        return len(dropped)

    def snapshot_begins(self) -> None:
        """A snapshot of this state is being written: declarations are forgotten (see :class:`Declarations`)."""
        self.declarations.clear()

    def forget(self, oids: list[int]) -> None:
        """Forget the objects *oids* (ids a reader loading a snapshot never had are passed over)."""
        objects = self.objects
        set_identity = self.shell.set_identity
        extents = self.extents
        for oid in oids:
            obj = objects[oid] if 0 < oid < len(objects) else None
            if obj is not None:
                objects[oid] = None
                self.holes += 1
                self.removals += 1
                if extents is not None:
                    extents.drop(oid, obj)
                if type(obj) is not Gone:
                    set_identity(obj, None, None)

    # -- walking the graph ----------------------------------------------------

    def references(self, obj: Any) -> Iterable[Any]:
        """The entities and tracked collections *obj* refers to directly."""
        t = type(obj)
        shell = self.shell
        if t is shell.list:
            values: Iterable[Any] = _list_copy(obj)
        elif t is shell.dict:
            values = [x for pair in dict.items(obj) for x in pair]
        elif t is shell.set:
            values = set.copy(obj)
        else:
            info = _types.info_of(t)
            assert info is not None
            values = []
            for get in info.getters.values():
                try:
                    values.append(get(obj))
                except AttributeError:
                    pass
        return self.value_references(values)

    def value_references(self, values: Iterable[Any], *, flatten: bool = False) -> list[Any]:
        """The entities and tracked collections in *values* (inside tuples, frozensets and value objects too).

        With *flatten*, plain lists and tuples are looked into as well (an
        event's arguments: lists of items, pairs).
        """
        out: list[Any] = []
        work = list(values)
        classify = self.codec.classify
        while work:
            v = work.pop()
            vt = type(v)
            if vt in _NATIVE:
                continue
            if flatten and (vt is list or vt is tuple):
                work.extend(v)
                continue
            shape = classify(vt)
            if shape is ENTITY or shape is TRACKED:
                out.append(v)
            elif shape is TUPLE or shape is FROZENSET:
                work.extend(v)
            elif shape is VALUE:  # a stand-in value read from an older declaration lacks newer fields
                work.extend(getattr(v, f, None) for f in _types.info_of(vt).fields)  # type: ignore[union-attr]
        return out

    def reachable_oids(self) -> set[int]:
        """Ids of every object reachable from the root."""
        root = self.root
        if root is None:
            return set()
        seen = {self.root_oid}
        work = [root]
        while work:
            for ref in self.references(work.pop()):
                oid = ref._mi_oid
                if oid is not None and oid not in seen:
                    seen.add(oid)
                    work.append(ref)
        return seen
