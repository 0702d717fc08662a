"""The difference between two states of one image: :class:`Diff`, a list of :class:`Difference`.

:func:`compare` takes the object tables of two states of the same log (in
practice ``img.at(a)`` and ``img.at(b)``) and matches their objects by
object id. What is compared is what is reachable from the root in each:

* Every object reachable in the new state gets its path -- its shortest path
  from the root, found breadth first (entity fields in declaration order,
  dict items and list items in order, set members sorted), written in
  Python syntax: ``root.accounts['ada'].balance``.
* An object reachable in both states is *itemized*, in that order: one
  :class:`Difference` per entity field (``path.field``) and dict key
  (``path[key]``) whose value changed, one for the whole list (``path``,
  ``old`` and ``new`` plain lists) if any item changed, and one per set
  member removed (``old=member, new=MISSING``) or added
  (``old=MISSING, new=member``), at the set's path.
* An object reachable only in the new state (created, or linked in again) is
  not itemized: it is the ``new`` of the field, key, item or member that
  holds it; one reachable only in the old state (dropped) is the ``old`` of
  the one that held it. Objects it holds that are new too are inside it.

Values are compared as stored: an entity or tracked collection by identity
(its object id), every other value by type and equality (value objects,
tuples and frozensets field by field, so the stand-ins tools make compare
too). In a Difference, an entity or collection is the object itself, from
the state it belongs to (``old`` from the old state, ``new`` from the new);
absence is :data:`~memimg.core._markers.MISSING`.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterator
from typing import Any, Final

import attrs

from memimg._errors import value_repr
from memimg.core import _types
from memimg.core._codec import ENTITY, FROZENSET, TRACKED, TUPLE, VALUE
from memimg.core._markers import MISSING
from memimg.core._table import ObjectTable

__all__ = ["Diff", "Difference", "compare", "show_value"]


def _same_key(value: Any) -> Any:
    """What a Difference's value is compared by: an entity or collection by type and object id (the objects of
    two past images of one log are distinct), a list by its items so, other values as they are."""
    if hasattr(value, "_mi_img"):
        oid = value._mi_oid
        return ("@", _type_name(value), id(value) if oid is None else oid)
    if type(value) is list:
        return ("[", tuple(map(_same_key, value)))
    return value


@attrs.frozen
class Difference:
    """One change between two states: the value at *path* was *old* and is *new*.

    ``MISSING`` stands where there was, or is, no value (an unset field, an
    absent key, a set member removed or added). Two Differences are equal when
    their paths and values are, entities and collections compared by object id.
    """

    __module__ = "memimg"

    path: str
    old: Any = attrs.field(eq=_same_key)
    new: Any = attrs.field(eq=_same_key)

    def __str__(self) -> str:
        return f"{self.path}: {show_value(self.old)} → {show_value(self.new)}"


@attrs.frozen
class Diff:
    """The differences from the state after seq *a* to the state after seq *b* (iterable, in path order)."""

    __module__ = "memimg"

    a: int
    b: int
    differences: tuple[Difference, ...]

    def __iter__(self) -> Iterator[Difference]:
        return iter(self.differences)

    def __len__(self) -> int:
        return len(self.differences)

    def __getitem__(self, index: int) -> Difference:
        return self.differences[index]

    def __bool__(self) -> bool:
        return bool(self.differences)

    def __str__(self) -> str:
        if not self.differences:
            return f"no differences between seq {self.a} and seq {self.b}"
        return "\n".join(map(str, self.differences))


def show_value(value: Any) -> str:
    """*value* for people: an entity or collection as ``Type #id``, a list's items so, other values by repr."""
    if value is MISSING:
        return "MISSING"
    oid = getattr(value, "_mi_oid", None)
    if oid is not None or hasattr(value, "_mi_img"):
        return f"{_type_name(value).rsplit('.', 1)[-1]} #{oid}"
    if type(value) is list:
        return f"[{', '.join(map(show_value, value))}]"
    return value_repr(value)


def _type_name(obj: Any) -> str:
    info = _types.info_of(type(obj))
    if info is not None:
        return info.name
    for base in (list, dict, set):
        if isinstance(obj, base):
            return base.__name__
    return type(obj).__qualname__


_NAN: Final = ("nan",)


class _State:
    """One side of the comparison: its table, and its reachable objects by id with their paths (BFS)."""

    def __init__(self, table: ObjectTable) -> None:
        self.table = table
        self.classify = table.codec.classify
        self.shell = table.shell
        #: oid -> (object, path), in breadth-first order
        self.reach: dict[int, tuple[Any, str]] = {}
        root = table.root
        if root is None:
            return
        self.reach[root._mi_oid] = (root, "root")
        queue = deque([(root, "root")])
        while queue:
            obj, path = queue.popleft()
            for value, where in self.slots(obj, path):
                for ref, ref_path in self.refs(value, where):
                    oid = ref._mi_oid
                    if oid not in self.reach:
                        self.reach[oid] = (ref, ref_path)
                        queue.append((ref, ref_path))

    def kind(self, obj: Any) -> str:
        t = type(obj)
        if t is self.shell.list:
            return "list"
        if t is self.shell.dict:
            return "dict"
        if t is self.shell.set:
            return "set"
        return "entity"

    def slots(self, obj: Any, path: str) -> Iterator[tuple[Any, str]]:
        """The values *obj* holds directly, each with its path."""
        kind = self.kind(obj)
        if kind == "entity":
            for name, value in self.fields(obj).items():
                yield value, f"{path}.{name}"
        elif kind == "dict":
            for k, v in list(dict.items(obj)):
                yield k, f"{path}[{self.key_text(k)}]"
                yield v, f"{path}[{self.key_text(k)}]"
        elif kind == "list":
            for i, v in enumerate(list.copy(obj)):
                yield v, f"{path}[{i}]"
        else:
            for m in self.sorted_members(obj):
                yield m, f"{path}{{{self.key_text(m)}}}"

    def fields(self, obj: Any) -> dict[str, Any]:
        """The set fields of entity *obj*, by name, in declaration order (read raw)."""
        info = _types.info_of(type(obj))
        out = {}
        for name, get in info.getters.items() if info is not None else ():
            try:
                out[name] = get(obj)
            except AttributeError:
                pass
        return out

    def refs(self, value: Any, path: str) -> Iterator[tuple[Any, str]]:
        """The entities and tracked collections in *value*, each with its path (inside values too)."""
        shape = self.classify(type(value)) if type(value) not in _types.NATIVE_TYPES else None
        if shape is ENTITY or shape is TRACKED:
            if value._mi_oid is not None:  # one without an id is a read-only image's fill: compared by content
                yield value, path
        elif shape is TUPLE:
            for i, item in enumerate(value):
                yield from self.refs(item, f"{path}[{i}]")
        elif shape is FROZENSET:
            for item in sorted(value, key=self.order):
                yield from self.refs(item, f"{path}{{{self.key_text(item)}}}")
        elif shape is VALUE:
            info = _types.info_of(type(value))
            for name in info.fields if info is not None else ():
                yield from self.refs(getattr(value, name, None), f"{path}.{name}")

    def key_text(self, key: Any) -> str:
        oid = getattr(key, "_mi_oid", None)
        if oid is not None:
            return f"<{_type_name(key)} #{oid}>"
        return value_repr(key)

    def order(self, value: Any) -> tuple[int, str, str]:
        oid = getattr(value, "_mi_oid", None)
        if oid is not None:
            return (0, _type_name(value), f"{oid:020d}")
        return (1, type(value).__qualname__, value_repr(value))

    def sorted_members(self, s: Any) -> list[Any]:
        return sorted(set.copy(s), key=self.order)

    def canon(self, value: Any) -> Any:
        """What *value* is compared by, across the two states (hashable)."""
        t = type(value)
        if t in _types.NATIVE_TYPES:
            return (t, _NAN) if t is float and math.isnan(value) else (t, value)
        oid = getattr(value, "_mi_oid", None)
        if oid is not None:
            return ("@", oid)
        shape = self.classify(t)
        if shape is ENTITY or shape is TRACKED:  # filled in by a read-only image, without an id
            return self.content(value)
        if shape is TUPLE:
            return ("t", tuple(map(self.canon, value)))
        if shape is FROZENSET:
            return ("f", frozenset(map(self.canon, value)))
        if shape is VALUE:
            info = _types.info_of(t)
            names = info.fields if info is not None else ()
            return ("v", _type_name(value), tuple((n, self.canon(getattr(value, n, MISSING))) for n in names))
        if isinstance(value, enum.Enum):
            return ("e", _type_name(value), value.name)
        return ("=", _type_name(value), value)

    def content(self, obj: Any) -> Any:
        """What an object without an id is compared by: its type and content."""
        kind = self.kind(obj)
        if kind == "entity":
            return ("E", _type_name(obj), tuple((n, self.canon(v)) for n, v in self.fields(obj).items()))
        if kind == "dict":
            return ("D", tuple((self.canon(k), self.canon(v)) for k, v in dict.items(obj)))
        if kind == "list":
            return ("L", tuple(map(self.canon, list.copy(obj))))
        return ("S", frozenset(map(self.canon, set.copy(obj))))


def compare(old_table: ObjectTable, new_table: ObjectTable, a: int, b: int) -> Diff:
    """The :class:`Diff` from the state in *old_table* (seq *a*) to that in *new_table* (seq *b*)."""
    old, new = _State(old_table), _State(new_table)
    out: list[Difference] = []
    for oid, (obj, path) in new.reach.items():
        before = old.reach.get(oid)
        if before is None or _type_name(before[0]) != _type_name(obj):
            continue  # created (or linked in again): the new value of the slot that holds it
        prev = before[0]
        kind = new.kind(obj)
        if kind == "entity":
            out.extend(_entity(old, new, prev, obj, path))
        elif kind == "dict":
            out.extend(_dict(old, new, prev, obj, path))
        elif kind == "list":
            before_items, items = list.copy(prev), list.copy(obj)
            if list(map(old.canon, before_items)) != list(map(new.canon, items)):
                out.append(Difference(path, before_items, items))
        else:
            out.extend(_set(old, new, prev, obj, path))
    return Diff(a, b, tuple(out))


def _entity(old: _State, new: _State, prev: Any, obj: Any, path: str) -> Iterator[Difference]:
    before, now = old.fields(prev), new.fields(obj)
    names = list(now) + [n for n in _field_order(prev) if n not in now and n in before]
    for name in _ordered(obj, names):
        was, nv = before.get(name, MISSING), now.get(name, MISSING)
        if (was is MISSING) is not (nv is MISSING) or (nv is not MISSING and old.canon(was) != new.canon(nv)):
            yield Difference(f"{path}.{name}", was, nv)


def _field_order(obj: Any) -> tuple[str, ...]:
    info = _types.info_of(type(obj))
    return info.fields if info is not None else ()


def _ordered(obj: Any, names: list[str]) -> list[str]:
    """*names* in the declaration order of *obj*'s class, then the others as given."""
    declared = _field_order(obj)
    rank = {n: i for i, n in enumerate(declared)}
    return sorted(dict.fromkeys(names), key=lambda n: rank.get(n, len(declared)))


def _dict(old: _State, new: _State, prev: Any, obj: Any, path: str) -> Iterator[Difference]:
    before = {old.canon(k): (k, v) for k, v in dict.items(prev)}
    seen = set()
    for k, v in list(dict.items(obj)):
        ck = new.canon(k)
        seen.add(ck)
        was = before.get(ck)
        if was is None:
            yield Difference(f"{path}[{new.key_text(k)}]", MISSING, v)
        elif old.canon(was[1]) != new.canon(v):
            yield Difference(f"{path}[{new.key_text(k)}]", was[1], v)
    for ck, (k, v) in before.items():
        if ck not in seen:
            yield Difference(f"{path}[{old.key_text(k)}]", v, MISSING)


def _set(old: _State, new: _State, prev: Any, obj: Any, path: str) -> Iterator[Difference]:
    before = {old.canon(m): m for m in old.sorted_members(prev)}
    now = {new.canon(m): m for m in new.sorted_members(obj)}
    for cm, m in before.items():
        if cm not in now:
            yield Difference(path, m, MISSING)
    for cm, m in now.items():
        if cm not in before:
            yield Difference(path, MISSING, m)
