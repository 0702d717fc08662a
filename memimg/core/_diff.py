"""The difference between two states of one image: :class:`Diff`, a list of :class:`Difference`.

:func:`compare` takes the object tables of two states of the same log (in
practice ``img.at(a)`` and ``img.at(b)``) and matches their objects by
object id. What is compared is what is reachable from the root in each:

* Every object reachable in the new state gets its path -- its shortest path
  from the root, found breadth first (entity fields in declaration order,
  dict values and list items in order, then dict keys, set members sorted),
  written in Python syntax where it can be: ``root.accounts['ada'].balance``.
  A key or member is written as Python writes it, except that an entity or
  collection in it is ``<Type #id>`` and an enum member ``Class.NAME``; a
  set member is ``path{member}``, and an object used as a dict key (or
  inside one) is reached at ``path{key <Type #id>}``, apart from the
  ``path[<Type #id>]`` of the value it is the key of.
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
(its object id), every other value by its type and its stored (encoded)
form -- so ``Decimal('1')`` and ``Decimal('1.00')``, ``0.0`` and ``-0.0``,
or one instant at two UTC offsets are different values, as they are
different in the log (value objects, tuples and frozensets field by field,
so the stand-ins tools make compare too). An entity or collection a
read-only image filled in (a field added since, read with its default: it
has no id there) is compared by content with what stands on the other side,
and itemized like an object of both states when they differ.

In a Difference, an entity or collection is the object itself, from
the state it belongs to (``old`` from the old state, ``new`` from the new);
absence is :data:`~memimg.core._markers.MISSING`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from typing import Any

import attrs
import orjson

from memimg._errors import value_repr
from memimg.core import _types
from memimg.core._codec import ENTITY, FROZENSET, TRACKED, TUPLE, VALUE
from memimg.core._markers import MISSING
from memimg.core._table import ObjectTable

__all__ = ["Diff", "Difference", "compare", "key_text", "show_value", "type_name"]


def _same_key(value: Any) -> Any:
    """What a Difference's value is compared by: an entity or collection by type and object id (the objects of
    two past images of one log are distinct), a list by its items so, other values as they are."""
    if hasattr(value, "_mi_img"):
        oid = value._mi_oid
        return ("@", type_name(value), id(value) if oid is None else oid)
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


def _is_object(value: Any) -> bool:
    """Whether *value* is an entity or tracked collection of an image (with an id, or filled in without one)."""
    return hasattr(value, "_mi_img") or getattr(value, "_mi_oid", None) is not None


def show_value(value: Any) -> str:
    """*value* for people: an entity or collection as ``Type #id`` (its content if it has no id), a list's items
    so, other values by repr."""
    if value is MISSING:
        return "MISSING"
    if _is_object(value):
        oid = value._mi_oid
        return f"{type_name(value).rsplit('.', 1)[-1]} #{oid}" if oid is not None else _content_text(value)
    if type(value) is list:
        return f"[{', '.join(map(show_value, value))}]"
    return value_repr(value)


def _content_text(obj: Any) -> str:
    """An object without an id (filled in by a read-only image) for people: its content."""
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{key_text(k)}: {show_value(v)}" for k, v in dict.items(obj)) + "}"
    if isinstance(obj, list):
        return f"[{', '.join(map(show_value, list.copy(obj)))}]"
    if isinstance(obj, set):
        return "{" + ", ".join(sorted(map(key_text, set.copy(obj)))) + "}" if obj else "set()"
    fields = ", ".join(f"{n}={show_value(v)}" for n, v in _fields(obj).items())
    return f"{type_name(obj).rsplit('.', 1)[-1]}({fields})"


def key_text(key: Any) -> str:
    """*key* (a dict key or set member) as written in a path: as Python writes it, but an entity or collection
    in it as ``<Type #id>`` and an enum member as ``Class.NAME``."""
    if _is_object(key):
        oid = key._mi_oid
        return f"<{type_name(key)} #{oid}>" if oid is not None else _content_text(key)
    t = type(key)
    if t is tuple:
        items = ", ".join(map(key_text, key))
        return f"({items},)" if len(key) == 1 else f"({items})"
    if t is frozenset:
        return f"frozenset({{{', '.join(sorted(map(key_text, key)))}}})" if key else "frozenset()"
    if isinstance(key, enum.Enum) and key.name is not None:
        return f"{t.__qualname__}.{key.name}"
    if t not in _types.NATIVE_TYPES and _types.is_value_class(t):
        names = [a.name for a in attrs.fields(t) if a.repr]
        return f"{t.__qualname__}({', '.join(f'{n}={key_text(getattr(key, n, None))}' for n in names)})"
    return value_repr(key)


def type_name(obj: Any) -> str:
    """The stored type name of *obj*: its class's ``@persistent`` name, ``list``/``dict``/``set`` for a
    collection, else its class's qualified name."""
    info = _types.info_of(type(obj))
    if info is not None:
        return info.name
    for base in (list, dict, set):
        if isinstance(obj, base):
            return base.__name__
    return type(obj).__qualname__


def _fields(obj: Any) -> dict[str, Any]:
    """The set fields of entity *obj*, by name, in declaration order (read raw)."""
    info = _types.info_of(type(obj))
    out = {}
    for name, get in info.getters.items() if info is not None else ():
        try:
            out[name] = get(obj)
        except AttributeError:
            pass
    return out


def _no_ref(obj: Any) -> int:
    raise TypeError("a reference")  # never: objects are compared before values are encoded


class _State:
    """One side of the comparison: its table, and its reachable objects by id with their paths (BFS)."""

    def __init__(self, table: ObjectTable) -> None:
        self.table = table
        self.classify = table.codec.classify
        self.encode = table.codec.encoder(_no_ref)
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
        """The values *obj* holds directly, each with its path: a dict's values before its keys."""
        kind = self.kind(obj)
        if kind == "entity":
            for name, value in _fields(obj).items():
                yield value, f"{path}.{name}"
        elif kind == "dict":
            items = list(dict.items(obj))
            for k, v in items:
                yield v, f"{path}[{key_text(k)}]"
            for k, _ in items:
                yield k, f"{path}{{key {key_text(k)}}}"
        elif kind == "list":
            for i, v in enumerate(list.copy(obj)):
                yield v, f"{path}[{i}]"
        else:
            for m in self.sorted_members(obj):
                yield m, f"{path}{{{key_text(m)}}}"

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
                yield from self.refs(item, f"{path}{{{key_text(item)}}}")
        elif shape is VALUE:
            info = _types.info_of(type(value))
            for name in info.fields if info is not None else ():
                yield from self.refs(getattr(value, name, None), f"{path}.{name}")

    def order(self, value: Any) -> tuple[int, str, str]:
        oid = getattr(value, "_mi_oid", None)
        if oid is not None:
            return (0, type_name(value), f"{oid:020d}")
        return (1, type(value).__qualname__, value_repr(value))

    def sorted_members(self, s: Any) -> list[Any]:
        return sorted(set.copy(s), key=self.order)

    def canon(self, value: Any) -> Any:
        """What *value* is compared by, across the two states (hashable): see the module docstring."""
        t = type(value)
        if t in _types.NATIVE_TYPES:
            return (t, repr(value)) if t is float else (t, value)  # -0.0 is not 0.0, NaN is NaN
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
            return ("v", type_name(value), tuple((n, self.canon(getattr(value, n, MISSING))) for n in names))
        try:  # as stored: Decimal('1.00') is not Decimal('1'), nor 13:00+01:00 12:00Z
            return ("=", type_name(value), orjson.dumps(self.encode(value), option=orjson.OPT_SORT_KEYS))
        except (TypeError, ValueError, orjson.JSONEncodeError):
            return ("=", type_name(value), value)

    def content(self, obj: Any) -> Any:
        """What an object without an id is compared by: its type and content."""
        kind = self.kind(obj)
        if kind == "entity":
            return ("E", type_name(obj), tuple((n, self.canon(v)) for n, v in _fields(obj).items()))
        if kind == "dict":
            return ("D", frozenset((self.canon(k), self.canon(v)) for k, v in dict.items(obj)))
        if kind == "list":
            return ("L", tuple(map(self.canon, list.copy(obj))))
        return ("S", frozenset(map(self.canon, set.copy(obj))))


def compare(old_table: ObjectTable, new_table: ObjectTable, a: int, b: int) -> Diff:
    """The :class:`Diff` from the state in *old_table* (seq *a*) to that in *new_table* (seq *b*)."""
    old, new = _State(old_table), _State(new_table)
    out: list[Difference] = []
    for oid, (obj, path) in new.reach.items():
        before = old.reach.get(oid)
        if before is None or type_name(before[0]) != type_name(obj):
            continue  # created (or linked in again): the new value of the slot that holds it
        out.extend(_itemize(old, new, before[0], obj, path))
    return Diff(a, b, tuple(out))


def _itemize(old: _State, new: _State, prev: Any, obj: Any, path: str) -> Iterator[Difference]:
    """The Differences between *prev* (old) and *obj* (new), one object of both states, at *path*."""
    kind = new.kind(obj)
    if kind == "entity":
        yield from _entity(old, new, prev, obj, path)
    elif kind == "dict":
        yield from _dict(old, new, prev, obj, path)
    elif kind == "list":
        before_items, items = list.copy(prev), list.copy(obj)
        if list(map(old.canon, before_items)) != list(map(new.canon, items)):
            yield Difference(path, before_items, items)
    else:
        yield from _set(old, new, prev, obj, path)


def _slot(old: _State, new: _State, was: Any, now: Any, path: str) -> Iterator[Difference]:
    """The Differences of one field or key that held *was* and holds *now* (either may be MISSING)."""
    if was is MISSING or now is MISSING:
        if was is not now:
            yield Difference(path, was, now)
        return
    if _filled(old, new, was, now):  # a read-only image's fill on one side (or both): compared by content
        if old.content(was) != new.content(now):
            yield from _itemize(old, new, was, now, path)
        return
    if old.canon(was) != new.canon(now):
        yield Difference(path, was, now)


def _filled(old: _State, new: _State, was: Any, now: Any) -> bool:
    """Whether *was* and *now* are objects of one type and kind, one (or both) of them without an id."""
    if not (_is_object(was) and _is_object(now)) or (was._mi_oid is not None and now._mi_oid is not None):
        return False
    return type_name(was) == type_name(now) and old.kind(was) == new.kind(now)


def _entity(old: _State, new: _State, prev: Any, obj: Any, path: str) -> Iterator[Difference]:
    before, now = _fields(prev), _fields(obj)
    names = list(now) + [n for n in _field_order(prev) if n not in now and n in before]
    for name in _ordered(obj, names):
        yield from _slot(old, new, before.get(name, MISSING), now.get(name, MISSING), f"{path}.{name}")


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
        yield from _slot(old, new, MISSING if was is None else was[1], v, f"{path}[{key_text(k)}]")
    for ck, (k, v) in before.items():
        if ck not in seen:
            yield Difference(f"{path}[{key_text(k)}]", v, MISSING)


def _set(old: _State, new: _State, prev: Any, obj: Any, path: str) -> Iterator[Difference]:
    before = {old.canon(m): m for m in old.sorted_members(prev)}
    now = {new.canon(m): m for m in new.sorted_members(obj)}
    for cm, m in before.items():
        if cm not in now:
            yield Difference(path, m, MISSING)
    for cm, m in now.items():
        if cm not in before:
            yield Difference(path, MISSING, m)
