"""Unique constraints (``memimg.field(unique=True)``).

A unique field's value may be held by at most one *reachable* instance of
the class that declares it unique (subclasses included); ``None`` is not a
value (any number of instances may hold it). The rule is checked twice:

* **at the assignment**, inside a transaction (the field's on-setattr hook
  asks the transaction, :meth:`TxState.check_unique`): against the
  committed holders of the value (from its index) and the transaction's own
  changed and attached objects, as the transaction sees them. This catches
  the clashes visible then, early.
* **at commit**, always (:func:`check_commit`, called by the engine's commit
  loop after encoding, under the lock, before the append): every instance
  of a class with unique fields that the commit changes or attaches is
  compared with the committed state the commit goes on top of. When the
  append is refused because another writer got there first (another thread
  or process), the engine catches up and checks again before retrying, so
  of two concurrent commits adding the same value only one is appended: the
  other raises :class:`~memimg.UniqueError`. Outside a transaction every
  write is its own commit, so this is also "at the assignment" there.

An object made unreachable stays in its extent (and index) until the next
snapshot's collection. So when a clash is found, the graph is walked from
the root, as the commit would leave it, and holders no longer reachable are
treated as free: a value freed by dropping its holder can be reused at once.
The walk happens only when a clash is found.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from memimg._errors import UniqueError
from memimg.core import _types
from memimg.core._indexes import indexed_fields
from memimg.core._kinds import KINDS
from memimg.core._markers import ABSENT, DELETED
from memimg.image._attach import attached
from memimg.image._tx import TxState
from memimg.image._views import ListView

__all__ = ["check_assignment", "check_commit", "committed_holders", "reachable_ids", "tx_touched", "visible"]

_OBJ_UPDATE: Final = KINDS["obj.update"]
_OBJ_SET: Final = KINDS["obj.set"]
_OBJ_DEL: Final = KINDS["obj.del"]


def committed_holders(engine: Any, cls: type, name: str, value: Any, upto: int | None = None) -> list[Any]:
    """The committed instances of *cls* (subclasses included) filed under *value* for field *name*, and those
    holding unhashable values; from the indexes, or by scanning a class that does not index the field.
    Called with the engine's lock held; objects from id *upto* on are not looked at (a commit's own)."""
    ext = engine.table.extent_index()
    ext.sync(upto)
    out: list[Any] = []
    for t, d in ext.by_class.items():
        if not issubclass(t, cls) or not d:
            continue
        ix = ext.indexes.get(t)
        index = ix.get(name) if ix is not None else None
        if index is not None:
            out += index.lookup(value)
        else:
            getter = _types.info_of(t).getters[name]  # type: ignore[union-attr]
            for obj in list(d.values()):
                try:
                    v = getter(obj)
                except AttributeError:
                    continue
                if v is value or v == value:
                    out.append(obj)
    return out


def tx_touched(state: TxState, cls: type) -> list[Any]:
    """The instances of *cls* a transaction changed a field of or attached (each may hold anything now)."""
    events = state.events
    out = [t for t in events[1::3] if isinstance(t, cls)]
    out += attached(state.undo, cls)
    return out


def visible(state: TxState | None, obj: Any, name: str) -> Any:
    """Field *name* of *obj* as *state* sees it (committed if None), without recording a read; ABSENT if unset."""
    if state is not None:
        d = state.fields.get(id(obj))
        if d is not None:
            v = d.get(name, ABSENT)
            if v is not ABSENT:
                return ABSENT if v is DELETED else v
    try:
        return _types.info_of(type(obj)).getters[name](obj)  # type: ignore[union-attr]
    except AttributeError:
        return ABSENT


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def reachable_ids(engine: Any, state: TxState | None) -> set[int]:
    """``id()`` of every object reachable from the root as *state* sees the graph (the committed one if None)."""
    table = engine.table
    root = table.root
    if root is None:
        return set()
    shell = table.shell
    tracked = shell.tracked
    seen = {id(root)}
    work = [root]
    while work:
        obj = work.pop()
        t = type(obj)
        values: Iterable[Any]
        if t in tracked:
            view = state.views.get(id(obj)) if state is not None else None
            if type(view) is ListView:  # read without materializing it (the transaction's later reads see the base)
                values = list(view.items) if view.items is not None else view._base() + view.tail
            elif view is not None:
                contents = view.materialize()
                values = [x for pair in contents.items() for x in pair] if type(contents) is dict else contents
            elif t is shell.dict:
                values = [x for pair in dict.items(obj) for x in pair]
            elif t is shell.list:
                values = list.copy(obj)
            else:
                values = set.copy(obj)
        else:
            info = _types.info_of(t)
            if info is None:
                continue
            values = [v for f in info.fields if (v := visible(state, obj, f)) is not ABSENT]
        for ref in table.value_references(values):
            if id(ref) not in seen:
                seen.add(id(ref))
                work.append(ref)
    return seen


def _clash(engine: Any, cls: type, name: str, value: Any, holders: list[Any]) -> UniqueError:
    holder = holders[0]
    oid = holder._mi_oid
    which = f"object {oid}" if oid is not None else "an object this change attaches"
    return UniqueError(
        f"{cls.__qualname__}.{name} is unique, and {value!r} is held by another {type(holder).__qualname__} "
        f"({which}); nothing was changed. Give it another value, or change or remove the other one first "
        f"(img.get({cls.__qualname__}, {name}=...) finds it)",
        cls=cls,
        field=name,
        value=value,
        holder=holder,
        target=oid,
        key=name,
        seq=None,
    )


def check_assignment(engine: Any, state: TxState, obj: Any, name: str, value: Any) -> None:
    """Raise :class:`UniqueError` if setting unique field *name* of *obj* to *value* in transaction *state*
    clashes with another reachable instance the transaction sees."""
    root = indexed_fields(type(obj)).get(name)
    if root is None or value is None:
        return
    with engine.lock:
        pool = committed_holders(engine, root, name, value)
    pool += tx_touched(state, root)
    seen: set[int] = set()
    others = []
    for h in pool:
        if h is obj or id(h) in seen:
            continue
        seen.add(id(h))
        if _same(visible(state, h, name), value):
            others.append(h)
    if others:
        with engine.lock:
            live = reachable_ids(engine, state)
        others = [h for h in others if id(h) in live]
        if others:
            raise _clash(engine, root, name, value, others)


def check_commit(engine: Any, events: list[Any], state: TxState | None, new: list[Any], upto: int) -> None:
    """Raise :class:`UniqueError` if the commit of *events* (attaching *new*) would leave two reachable
    instances holding one unique value. Called under the lock, on the committed state the commit goes on
    (objects from id *upto* on are this commit's own)."""
    touched: dict[int, Any] = {}
    for k, target, args in events:
        # kinds compared by identity: `in` a set would hash the (attrs-frozen) kind, field by field, per event
        if (k is _OBJ_SET or k is _OBJ_UPDATE or k is _OBJ_DEL) and (spec := indexed_fields(type(target))):
            names = [name for name, _ in args[0]] if k is _OBJ_UPDATE else [args[0]]
            if any(spec.get(name) is not None for name in names):
                touched[id(target)] = target
    for obj in new:
        spec = indexed_fields(type(obj))
        if spec and any(r is not None for r in spec.values()):
            touched[id(obj)] = obj
    if not touched:
        return
    busy, engine.busy = engine.busy, "checking unique fields"  # values' __eq__ and __hash__ run
    try:
        _check_touched(engine, events, state, touched, upto)
    finally:
        engine.busy = busy


def _check_touched(engine: Any, events: list[Any], state: TxState | None, touched: dict[int, Any], upto: int) -> None:
    # the state the commit will leave: its events over the committed state as it is now (a transaction's own
    # delta may have copied a collection before another commit changed it; the events apply to the new one)
    view = TxState(engine, engine.seq)
    try:
        for k, target, args in events:
            k.apply(view, target, *args)
    except Exception:  # it would fail to apply: judged on the transaction's own view instead
        view = state if state is not None else TxState(engine, engine.seq)
    # (root, field) -> value -> the touched objects holding it after the commit
    claims: dict[tuple[type, str], list[tuple[Any, Any]]] = {}
    for obj in touched.values():
        for name, root in indexed_fields(type(obj)).items():
            if root is None:
                continue
            v = visible(view, obj, name)
            if v is not ABSENT and v is not None:
                claims.setdefault((root, name), []).append((v, obj))
    live: set[int] | None = None
    for (root, name), pairs in claims.items():
        by_value: dict[Any, list[Any]] = {}
        for v, obj in pairs:
            try:
                by_value.setdefault(v, []).append(obj)
            except TypeError:  # unhashable: compared with the committed holders only
                by_value.setdefault(id(v), []).append(obj)
        for objs in by_value.values():
            value = visible(view, objs[0], name)
            holders = {id(o): o for o in objs}
            for h in committed_holders(engine, root, name, value, upto):
                if id(h) not in holders and _same(visible(view, h, name), value):
                    holders[id(h)] = h
            if len(holders) < 2:
                continue
            if live is None:
                live = reachable_ids(engine, view)
            found = [h for h in holders.values() if id(h) in live]
            if len(found) > 1:
                # name the one already there (committed) if there is one
                found.sort(key=lambda h: id(h) in touched)
                raise _clash(engine, root, name, value, found)
