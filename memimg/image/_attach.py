"""Attaching: making a value storable in an image, at the assignment that makes it reachable.

Attaching validates every value of the new subgraph, converts plain
``list``/``dict``/``set`` into tracked ones and marks new entities as
attached (owner set, no id yet: ids are given at commit, in log order),
writing an *undo journal* so that a failure -- or a discarded transaction --
leaves every object as it was. Everything here walks graphs with explicit
work lists, never recursion, so a linked list of a million nodes is as fine
as a tree.

Paths to the value being attached (``Box.content[3]['k'].name``) are built
lazily, as nested tuples, and rendered only for an error message.
"""

from __future__ import annotations

import datetime as dt
import itertools
import linecache
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs

from memimg._errors import UnsupportedValueError, value_repr
from memimg.core import _types
from memimg.core._codec import (
    COUNTED_SHAPE,
    CUSTOM,
    ENTITY,
    ENUM,
    FROZENSET,
    GENERIC,
    LEAF,
    PLAIN,
    TRACKED,
    TUPLE,
    VALUE,
)
from memimg.core._counters import plain
from memimg.core._gc import paused_gc
from memimg.core._table import ObjectTable
from memimg.core._values import check_text, describe_unsupported, tz_parts

__all__ = [
    "NATIVE",
    "Attacher",
    "attached_by",
    "journal_attach",
    "journal_fields",
    "render",
    "where_coll",
    "where_field",
]

#: Values stored as they are, with nothing to attach: a write of one (an ASCII str) needs no preparing.
NATIVE: Final = _types.NATIVE_TYPES
_NATIVE: Final = NATIVE
_SCALARS: Final = frozenset({int, float, bool, type(None)})
#: journal entry ``(_UNDO_ATTACH, objects)``: the objects one prepare attached, all undone at once
_UNDO_ATTACH: Final = 0
_UNDO_FIELD: Final = 1
_UNDO_ITEMS: Final = 2
#: journal entry ``(_UNDO_FIELDS, [obj, setter, old, ...])``: the fields one bulk attach put tracked lists in
_UNDO_FIELDS: Final = 3
_WALKER: Final = ("attach fields",)  # the key of the compiled walker among a TypeInfo's encoders
_counter = itertools.count()
_list_setitem = list.__setitem__
_list_copy = list.copy
_dict_items = dict.items


def render(where: Any) -> str:
    """The readable path of a value being attached (``Box.content[3]['k'].name``).

    Paths are built lazily as nested tuples ``(parent, step, key)`` while
    attaching -- formatting a string per value would cost more than the
    attaching itself -- and rendered only for an error message.
    """
    steps = []
    while isinstance(where, tuple):
        where, step, key = where
        if step == ".":
            steps.append(f".{key}")
        elif step == "[":
            steps.append(f"[{key}]")
        elif step == "[k":
            steps.append(f"[{value_repr(key)}]")
        elif step == "(key)":
            steps.append(f"[{value_repr(key)}] (key)")
        else:
            steps.append(step)
    return str(where or "") + "".join(reversed(steps))


def attached_by(undo: list[Any]) -> Iterator[Any]:
    """The objects the attaches journaled in *undo* made part of the image, in the order they were met."""
    return itertools.chain.from_iterable(entry[1] for entry in undo if entry[0] == _UNDO_ATTACH)


def journal_attach(objects: list[Any]) -> tuple[Any, ...]:
    """The journal entry of an attach that made *objects* part of the image (undone all at once)."""
    return (_UNDO_ATTACH, objects)


def journal_fields(replaced: list[Any]) -> tuple[Any, ...]:
    """The journal entry of an attach that replaced values in fields (plain lists by tracked ones):
    *replaced* is flat, ``[obj, raw setter of the field, old value, ...]``, undone all at once."""
    return (_UNDO_FIELDS, replaced)


def where_field(obj: Any, name: str) -> str:
    """Where a value assigned to field *name* of *obj* goes, for messages."""
    return f"{type(obj).__qualname__}.{name}"


def where_coll(coll: Any) -> str:
    """Where a value put into tracked collection *coll* goes, for messages."""
    builtin = type(coll).__bases__[0].__name__
    oid = coll._mi_oid
    return f"{builtin} #{oid}" if oid else builtin


class _Walk:
    """The state of one attach walk: the journal, the objects still to walk, the plain containers
    converted so far (by id: one container met twice is one tracked container) and the objects attached."""

    __slots__ = ("attached", "memo", "stack", "undo")

    def __init__(self, undo: list[Any], attached: list[Any]) -> None:
        self.undo = undo
        self.attached = attached
        #: ``(object, lazy path, plain source or None)`` of each object whose contents are still to attach
        self.stack: list[tuple[Any, Any, Any]] = []
        self.memo: dict[int, tuple[Any, Any]] = {}


class Attacher:
    """Attaches values to the objects of one table (see the module docstring)."""

    def __init__(self, table: ObjectTable) -> None:
        self.table = table
        self.codec = table.codec
        self.shell = table.shell
        self.owner = table.owner
        #: entity and tracked collection types met: a value of one that belongs here already needs no call
        self.linked: set[type] = set(table.shell.tracked)
        #: the compiled walker of each entity class's fields met (see :func:`_fields_walker`)
        self._walkers: dict[type, Callable[..., None]] = {}

    def prepare(self, value: Any, where: str, undo: list[Any]) -> Any:
        """Make *value* storable in this graph and return what is to be stored.

        Plain containers come back as tracked ones; free-standing entities
        and tracked collections are attached, with everything they reach.
        Every change is journaled in *undo* (see :meth:`undo`).

        Raises:
            UnsupportedValueError: a value in the new subgraph cannot be
                stored; everything done so far is undone.
        """
        t = type(value)
        if t in _NATIVE:
            if t is str and not value.isascii():
                check_text(value, where)
            return value
        mark = len(undo)
        # one journal entry for every object this attaches (not one each), undone all at once; put in the
        # journal only once complete: another thread of the transaction reading it meanwhile (a query
        # indexing what the transaction attached, see _unique.TxIndex) records an entry as read for good
        attached: list[Any] = []
        entry = (_UNDO_ATTACH, attached)
        try:
            with paused_gc():
                out = self._prepare(value, where, _Walk(undo, attached))
            if attached:  # else nothing to undo: values are put back only inside objects it attached
                undo.append(entry)
            return out
        except BaseException:
            self.undo(undo[mark:])
            del undo[mark:]
            self.undo([entry])  # the objects attached so far (again if already journaled: a no-op)
            raise

    def _prepare(self, value: Any, where: str, walk: _Walk) -> Any:
        out = self._inner(value, where, walk, True)
        stack = walk.stack
        while stack:
            obj, w, source = stack.pop()
            self._attach_contents(obj, w, source, walk)
        return out

    def _inner(self, v: Any, where: Any, walk: _Walk, mutable_ok: bool) -> Any:
        """Prepare one value met while attaching; *where* is a lazy path (see :func:`render`).

        A hot loop of attaching (``python -m benchmarks``, graph commit): one
        call per value of a new graph, its type tests ordered by frequency
        (objects of types met before, then plain containers, with no lookup
        of the type's shape).
        """
        t = type(v)
        if t in _NATIVE:
            if t is str and not v.isascii():
                check_text(v, render(where))
            return v
        if t in self.linked:  # an entity or tracked collection (of a type met before)
            shape = ENTITY
        elif t is list or t is dict or t is set:
            shape = PLAIN
        else:
            shape = self.codec._shapes.get(t) or self.codec.classify(t)
            if shape is ENTITY or shape is TRACKED:
                self.linked.add(t)
                shape = ENTITY
        if shape is ENTITY:
            owner = v._mi_img
            if owner is None:
                self.shell.set_identity(v, self.owner, None)
                walk.attached.append(v)
                walk.stack.append((v, where, None))
            elif owner is not self.owner:
                at = render(where)
                raise UnsupportedValueError(
                    f"cannot store {type(v).__qualname__} object at {at}: it belongs to another "
                    "image; copy it (copy.deepcopy gives a free-standing copy) or store a value",
                    value_type=t,
                    where=at,
                )
            return v
        if shape is PLAIN:
            if not mutable_ok:
                at = render(where)
                raise UnsupportedValueError(
                    f"cannot store a {t.__name__} inside an immutable value at {at}: tuples, "
                    "frozensets and frozen attrs values may hold values and entities, not "
                    f"mutable containers; use a tuple or frozenset instead of the {t.__name__}",
                    value_type=t,
                    where=at,
                )
            seen = walk.memo.get(id(v))
            if seen is not None:
                return seen[1]
            cls: Any = self.shell.tracked_for[t]
            tracked = cls.__new__(cls)
            tracked._mi_img = self.owner
            walk.memo[id(v)] = (v, tracked)
            walk.attached.append(tracked)
            walk.stack.append((tracked, where, v))
            return tracked
        if shape is LEAF:
            if t is dt.datetime or t is dt.time:
                tz_parts(v.tzinfo)
            return v
        if shape is ENUM or shape is CUSTOM or shape is GENERIC:
            return v
        if shape is TUPLE or shape is FROZENSET:
            changed: dict[int, Any] | None = None
            for i, item in enumerate(v):
                out = self._inner(item, (where, "[", i), walk, False)
                if out is not item:  # a number read from a counter in it: stored as the plain number
                    if changed is None:
                        changed = {}
                    changed[i] = out
            return v if changed is None else t(changed.get(i, item) for i, item in enumerate(v))
        if shape is VALUE:
            replaced: dict[str, Any] = {}
            for f in _types.info_of(t).fields:  # type: ignore[union-attr]
                item = getattr(v, f)
                out = self._inner(item, (where, ".", f), walk, False)
                if out is not item:
                    replaced[f] = out
            return attrs.evolve(v, **replaced) if replaced else v
        if shape is COUNTED_SHAPE:
            return plain(v)
        raise describe_unsupported(v, render(where))

    def _attach_contents(self, obj: Any, where: Any, source: Any, walk: _Walk) -> None:
        """Attach what an object being attached holds (its items, or its fields' values).

        A measured hot loop (``python -m benchmarks``, graph commit: attaching
        a new graph of 100,000 objects): each kind of object inline, values
        that need nothing skipped without a call.
        """
        t = type(obj)
        shell = self.shell
        inner = self._inner
        native = _SCALARS  # ASCII str is stored as is; other str goes through inner(), which checks it is valid UTF-8
        if t is shell.list:
            old = source if source is not None else _list_copy(obj)
            linked, owner = self.linked, self.owner
            new = [
                x
                if (tx := type(x)) in native or (tx is str and x.isascii()) or (tx in linked and x._mi_img is owner)
                else inner(x, (where, "[", i), walk, True)
                for i, x in enumerate(old)
            ]
            if source is not None:
                list.extend(obj, new)
            elif any(a is not b for a, b in zip(old, new)):
                walk.undo.append((_UNDO_ITEMS, obj, old))
                _list_setitem(obj, slice(None), new)
        elif t is shell.dict:
            old_pairs = list(_dict_items(source if source is not None else obj))
            pairs = [
                (
                    k
                    if (tk := type(k)) in native or (tk is str and k.isascii())
                    else inner(k, (where, "(key)", k), walk, False),
                    val
                    if (tv := type(val)) in native or (tv is str and val.isascii())
                    else inner(val, (where, "[k", k), walk, True),
                )
                for k, val in old_pairs
            ]
            if source is not None:
                dict.update(obj, pairs)
            elif any(a[1] is not b[1] or a[0] is not b[0] for a, b in zip(old_pairs, pairs)):
                walk.undo.append((_UNDO_ITEMS, obj, dict(old_pairs)))
                dict.clear(obj)
                dict.update(obj, pairs)
        elif t is shell.set:
            members = source if source is not None else set.copy(obj)
            new_members = [
                m
                if (tm := type(m)) in native or (tm is str and m.isascii())
                else inner(m, (where, " member", None), walk, False)
                for m in members
            ]
            if source is not None:
                set.update(obj, new_members)
        else:
            fields = self._walkers.get(t)
            if fields is None:
                fields = self._walkers[t] = self._walker(t)
            fields(obj, where or t.__qualname__, walk)

    def _walker(self, t: type) -> Callable[..., None]:
        """The compiled walker of *t*'s fields (see :func:`_fields_walker`), bound to this attacher."""
        info = _types.info_of(t)
        assert info is not None
        make = info.encoders.get(_WALKER)
        if make is None:
            make = info.encoders[_WALKER] = _fields_walker(info)
        return make(self._inner, _SCALARS, self.owner, self.linked, self._fields_slow)

    def _fields_slow(self, obj: Any, where: Any, walk: _Walk) -> None:
        """Attach what an entity's fields hold, field by field (an entity with an unset field)."""
        inner = self._inner
        native = _SCALARS
        info = _types.info_of(type(obj))
        assert info is not None
        setters = info.setters
        for f, get in info.getters.items():
            try:
                v = get(obj)
            except AttributeError:
                continue
            if type(v) in native or (type(v) is str and v.isascii()):
                continue
            nv = inner(v, (where, ".", f), walk, True)
            if nv is not v:
                walk.undo.append((_UNDO_FIELD, obj, f, v))
                setters[f](obj, nv)

    def undo(self, undo: list[Any]) -> None:
        """Revert a journal written by :meth:`prepare`, newest first."""
        set_identity = self.shell.set_identity
        for entry in reversed(undo):
            tag = entry[0]
            if tag == _UNDO_ATTACH:
                for obj in entry[1]:
                    if obj._mi_oid is None:  # else committed meanwhile (by another thread's transaction)
                        set_identity(obj, None, None)
                continue
            if tag == _UNDO_FIELDS:
                replaced = entry[1]
                for i in range(len(replaced) - 3, -1, -3):
                    obj, setter, old = replaced[i : i + 3]
                    if obj._mi_oid is None:
                        setter(obj, old)
                continue
            if entry[1]._mi_oid is not None:
                continue  # committed meanwhile (by another thread's transaction): it is part of the image now
            if tag == _UNDO_FIELD:
                _, obj, f, old = entry
                _types.info_of(type(obj)).setters[f](obj, old)  # type: ignore[union-attr]
            else:
                _, obj, old = entry
                if type(obj) is self.shell.list:
                    _list_setitem(obj, slice(None), old)  # type: ignore[call-overload]
                else:
                    dict.clear(obj)
                    dict.update(obj, old)


def _fields_walker(info: _types.TypeInfo) -> Callable[..., Callable[..., None]]:
    """Compile the maker of a walker attaching what an entity of *info*'s class holds in its fields.

    ``make(inner, native, owner, linked, slow)`` returns ``fields(obj, where,
    walk)`` (*walk* the state of the attach walk, :class:`_Walk`): every field read through its raw slot getter and
    tested inline -- a scalar, an ASCII str, or an object of this image is
    left as it is with no call; anything else goes through *inner* and is
    put back (journaled) if it comes back as another object (a plain list
    as a tracked one). An entity with an unset field goes to *slow*. The
    hot loop of attaching a big new graph (``python -m benchmarks``, graph
    commit): one call per entity instead of one per field.
    """
    names = info.fields
    reads = "\n            ".join(f"v{i} = g{i}(obj)" for i in range(len(names))) or "pass"
    tests = []
    for i, f in enumerate(names):
        tests.append(
            f"""
        t = type(v{i})
        if not (t in native or (t is str and v{i}.isascii()) or (t in linked and v{i}._mi_img is owner)):
            nv = inner(v{i}, (where, ".", {f!r}), walk, True)
            if nv is not v{i}:
                walk.undo.append(({_UNDO_FIELD}, obj, {f!r}, v{i}))
                s{i}(obj, nv)"""
        )
    source = f"""
def make(inner, native, owner, linked, slow):
    def fields(obj, where, walk):
        try:
            {reads}
        except AttributeError:
            return slow(obj, where, walk)
{"".join(tests) or "        pass"}
    return fields
"""
    filename = f"<memimg attach walker of {info.name} #{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    for i, f in enumerate(names):
        namespace[f"g{i}"] = info.getters[f]
        namespace[f"s{i}"] = info.setters[f]
    exec(compile(source, filename, "exec"), namespace)
    return namespace["make"]  # type: ignore[no-any-return]
