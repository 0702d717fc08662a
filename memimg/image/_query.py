"""Querying the model: extents (``img.all``), ``img.find`` and ``img.get``.

An extent is a live, read-only, set-like view of the entities of a class
(subclasses included) that the image holds: every read -- ``len``, ``in``,
iteration -- looks at the image as it is then. Outside a transaction that
is the committed state; inside one, the committed state plus the objects
the transaction attached (an object attached and then dropped again in the
same transaction included, as the commit gives it an id). The entities by
class are kept by :class:`~memimg.core._extents.Extents`, made the first
time an extent is read and filed lazily, under the engine's lock (where
commits and catch-up change the table), so no commit, field write or
replay does any extra work for them.

An object made unreachable stays in its extent until the next snapshot
collects it (see :mod:`memimg.core._extents`).

:func:`find` compares fields as the calling thread reads them (a
transaction reads its own writes). Its candidates come from
:func:`candidates`: the whole extent, or, when an equality is on an indexed
field (``memimg.field(index=True)``), the committed objects the index files
under that value plus the objects the calling transaction changed or
attached -- every candidate is then compared on every field, so the index
only narrows the search and a transaction still sees its own writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from typing import Any, NoReturn, TypeVar

from memimg.core import _types
from memimg.core._indexes import indexed_fields
from memimg.image._unique import committed_holders, dead_holders, reachable_ids, tx_index

__all__ = ["Extent", "candidates", "entity_class", "find", "get", "unknown_field"]

T = TypeVar("T")


def entity_class(cls: Any, what: str) -> _types.TypeInfo:
    """The type info of *cls*, which must be a ``@persistent`` class.

    Raises:
        TypeError: it is not (naming it, and *what* was asked).
    """
    info = _types.entity_info(cls)
    if info is None:
        name = cls.__qualname__ if isinstance(cls, type) else repr(cls)
        raise TypeError(
            f"{what} takes a @persistent class, not {name}: extents and find list the entities of "
            "a class decorated with @memimg.persistent (and of its subclasses)"
        )
    return info


def _groups(engine: Any, cls: type) -> Any:
    """The dicts ``oid -> object`` of *cls* and its subclasses, filed up to the table's last object."""
    ext = engine.table.extents
    if ext is not None and ext.up_to_date():
        g = ext.groups.get(cls)
        if g is not None:
            return g
    with engine.lock:  # not in the middle of a commit: its new objects are filed once it is applied
        ext = engine.table.extent_index()
        ext.sync()
        return ext.group(cls)


class Extent(Set[T]):
    """The entities of a class that an image holds: a live, read-only set-like view (see the module docstring).

    ``len`` costs O(1) (plus the objects that entered the image since the
    last read, each counted once; inside a transaction plus the objects it
    attached); ``in`` costs O(1); iteration reads the extent as it is when
    it begins, so the loop may change the model.
    """

    __slots__ = ("_cls", "_engine")

    def __init__(self, engine: Any, cls: type[T]) -> None:
        self._engine = engine
        self._cls = cls

    def _new(self, state: Any) -> list[Any]:
        """The instances transaction *state* attached (none outside one)."""
        return tx_index(state).attached_of(self._cls) if state is not None and state.undo else []

    def __len__(self) -> int:
        engine = self._engine
        engine.check_open()
        groups = _groups(engine, self._cls)
        n = sum(map(len, groups))
        state = engine.current_tx()
        if state is None:
            return n
        mark = state.mark
        if mark is not None and len(engine.table.objects) > mark:  # others' objects since it began: not counted
            with engine.lock:
                unordered = engine.table.extents.unordered
                for d in groups:
                    if unordered and id(d) in unordered:
                        n -= sum(1 for oid in list(d) if oid >= mark)
                        continue
                    for oid in reversed(d):  # filed in id order: the newest last
                        if oid < mark:
                            break
                        n -= 1
        return n + len(self._new(state))

    def __contains__(self, obj: object) -> bool:
        engine = self._engine
        engine.check_open()
        if not isinstance(obj, self._cls) or getattr(obj, "_mi_img", None) is not engine.table.owner:
            return False
        oid = obj._mi_oid  # type: ignore[attr-defined]
        state = engine.current_tx()
        if oid is None:  # attached by this transaction, or filled in memory by a read-only image
            if any(x is obj for x in self._new(state)):
                return True
            return id(obj) in engine.table.extent_index().unlogged
        if state is not None and state.mark is not None and oid >= state.mark:
            return False  # entered after the transaction began
        _groups(engine, self._cls)  # files what entered since the last read
        d = engine.table.extents.by_class.get(type(obj))
        return d is not None and d.get(oid) is obj

    def __iter__(self) -> Iterator[T]:
        engine = self._engine
        engine.check_open()
        state = engine.current_tx()
        mark = state.mark if state is not None else None
        with engine.lock:
            if mark is None or len(engine.table.objects) <= mark:
                items = [x for d in _groups(engine, self._cls) for x in list(d.values())]
            else:
                items = [x for d in _groups(engine, self._cls) for oid, x in list(d.items()) if oid < mark]
        items += self._new(state)
        return iter(items)

    def __repr__(self) -> str:
        if self._engine.closed:
            return f"<extent of {self._cls.__qualname__} (image closed)>"
        return f"<extent of {self._cls.__qualname__}: {len(self)} objects>"

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        """Set operators (``&``, ``|``, ``-``, ``^``) give a plain ``set``."""
        return set(it)

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"img.all({self._cls.__qualname__}) is a read-only view of the objects the image holds; change the "
            "model instead (an object enters by being made reachable from the root and leaves by being made "
            "unreachable), or copy it with set(...) for a set of your own"
        )

    add = discard = remove = pop = clear = update = _refuse
    difference_update = intersection_update = symmetric_difference_update = _refuse
    __ior__ = __iand__ = __isub__ = __ixor__ = _refuse
    __hash__ = None  # type: ignore[assignment]


def candidates(engine: Any, cls: type, equalities: dict[str, Any]) -> tuple[Iterable[Any], dict[str, Any]]:
    """Where :func:`find` looks: ``(objects that may match, equalities still to check on them)``.

    With an equality on an indexed field (a unique one first): the committed
    objects filed under its value (a subclass that does not index the field
    is scanned), and the objects the calling transaction changed or attached;
    every equality is checked on them, as this thread reads the fields.
    Otherwise the whole extent.
    """
    spec = indexed_fields(cls)
    names = sorted((n for n in equalities if n in spec), key=lambda n: spec[n] is None)
    if not names:
        return Extent(engine, cls), equalities
    name = names[0]
    state = engine.current_tx()
    with engine.lock:
        pool = _committed(engine, state, cls, name, equalities[name])
    if state is not None and (state.events or state.undo):
        seen = {id(obj) for obj in pool}
        for obj in tx_index(state).holders(cls, name, equalities[name]):
            if id(obj) not in seen:
                seen.add(id(obj))
                pool.append(obj)
    return pool, equalities


def _committed(engine: Any, state: Any, cls: type, name: str, value: Any) -> list[Any]:
    """The committed instances of *cls* filed under *value* for field *name* that transaction *state* (or the
    committed state, if None) sees: those that entered after it began are not in its view."""
    mark = state.mark if state is not None else None
    pool = committed_holders(engine, cls, name, value)
    if mark is None or len(engine.table.objects) <= mark:
        return [obj for obj in pool if isinstance(obj, cls)]
    return [obj for obj in pool if isinstance(obj, cls) and obj._mi_oid < mark]  # type: ignore[attr-defined]


def unknown_field(what: str, cls: type, info: _types.TypeInfo, name: str) -> TypeError:
    """The error for a query naming field *name*, which *cls* does not declare."""
    return TypeError(
        f"{what}({cls.__qualname__}, {name}=...): {cls.__qualname__} has no field {name!r} "
        f"(its fields: {', '.join(info.fields) or 'none'}); {what} compares the fields of the class given"
    )


def find(engine: Any, cls: type[T], equalities: dict[str, Any]) -> list[T]:
    """The entities of *cls* (subclasses included) whose fields equal *equalities* (see ``MemoryImage.find``)."""
    engine.check_open()
    info = entity_class(cls, "img.find")
    for name in equalities:
        if name not in info.fields:
            raise unknown_field("img.find", cls, info, name)
    pool, rest = candidates(engine, cls, equalities)
    checks = list(rest.items())
    out: list[T] = []
    for obj in pool:
        for name, want in checks:
            try:
                v = getattr(obj, name)
            except AttributeError:  # unset: equal to nothing
                break
            if v is not want and v != want:
                break
        else:
            out.append(obj)
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def get(engine: Any, cls: type, key: dict[str, Any]) -> Any:
    """The one instance of *cls* whose unique field equals *key*'s value, or None (see ``MemoryImage.get``)."""
    engine.check_open()
    info = entity_class(cls, "img.get")
    spec = indexed_fields(cls)
    for name in key:
        if name not in info.fields:
            raise unknown_field("img.get", cls, info, name)
    uniques = [n for n in info.fields if spec.get(n) is not None]
    if len(key) != 1 or spec.get(next(iter(key))) is None:
        given = ", ".join(f"{n}=..." for n in key) or "no field"
        if uniques:
            hint = f"its unique fields: {', '.join(uniques)}"
        else:
            hint = "it has none; declare one with memimg.field(unique=True)"
        raise TypeError(
            f"img.get({cls.__qualname__}, {given}): get looks an instance up by one unique field ({hint}); "
            "use img.find for other fields or several"
        )
    ((name, value),) = key.items()
    if value is None:  # not a value of a unique field: any number of instances may hold it (see memimg.field)
        raise ValueError(
            f"img.get({cls.__qualname__}, {name}=None): None is not a unique value (any number of instances may "
            f"leave {cls.__qualname__}.{name} None), so there is no one instance to get; use "
            f"img.find({cls.__qualname__}, {name}=None) for all of them"
        )
    root = spec[name]
    assert root is not None
    state = engine.current_tx()
    with engine.lock:
        pool = _committed(engine, state, root, name, value)
    if state is not None and (state.events or state.undo):
        pool += tx_index(state).holders(root, name, value)
    found: dict[int, Any] = {}
    for h in pool:
        if id(h) in found or not isinstance(h, cls):
            continue
        try:
            v = getattr(h, name)  # as this thread reads it (a transaction's own writes; a read recorded)
        except AttributeError:
            continue
        if _same(v, value):
            found[id(h)] = h
    if not found:
        return None
    if len(found) == 1:
        return next(iter(found.values()))
    # a holder made unreachable and not collected yet, and its successor: the one that is reachable. A
    # transaction that linked no existing object cannot make an unreachable one reachable again, so the
    # holders unreachable in the committed state (remembered) are left out first; a walk only if that is
    # not enough (a transaction's own changes)
    holders = list(found.values())
    if state is None or not tx_index(state).relinks:
        with engine.lock:
            dead = dead_holders(engine, root, name, value)
        holders = [h for h in holders if h._mi_oid is None or h._mi_oid not in dead] or holders
        if len(holders) == 1:
            return holders[0]
    with engine.lock:
        live = reachable_ids(engine, state)
    reachable = [h for h in holders if id(h) in live]
    return reachable[0] if reachable else holders[0]
