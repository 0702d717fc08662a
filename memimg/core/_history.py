"""History of one object: its changes, each with the value before it, folded from its own events.

:meth:`memimg.MemoryImage.history` reads an object's first state (from the
records of the event that created it, or from a snapshot) and the events
that target it, and folds them here into a *plain copy* of that one
object's state -- a dict of fields for an entity, a ``list``, ``dict`` or
``set`` for a collection. The fold is the kinds' own apply functions run
against :class:`Recorder`, an applier that notes, for each primitive
operation, what was there before: so ``old`` is computed, never stored, and
adding a kind touches no code here.

What each :class:`Change` says, by target:

* an **entity**: ``field``, ``old`` and ``new`` (``MISSING`` for a field
  unset before or after); an ``obj.update`` gives one change per field; an
  ``obj.add`` (a counter's delta, ``memimg.field(merge="add")``) the value
  before and the sum after, its kind telling it was an add;
* a **dict**: ``key``, ``old`` and ``new`` (``MISSING`` for a key absent
  before or after); ``dict.update`` gives one change per pair and
  ``dict.clear`` one per key it removed;
* a **list** or **set**: ``old`` is the tuple of items the change took out
  and ``new`` the tuple of items it put in (the items the kind carries:
  ``list.append``, ``list.insert``, ``list.set``, ``list.splice``,
  ``set.add``; ``set.discard`` takes out the items it carries). For a list,
  ``index`` is where: ``lst[index:index + len(old)]`` became ``new``;
  ``list.reorder`` (``sort``) and ``list.reverse`` replace the whole list
  (``index`` 0, ``old`` the items before, ``new`` after).

References resolve to the objects of the image asked; an object it no
longer holds (collected since: it became unreachable) is a
:class:`Collected` naming its id, and one of a type removed since
(``removed_types``) is the placeholder the image holds for it, naming its
type and id (``<removed shop.Coupon #12>``: see :mod:`memimg.core._gone`).
"""

from __future__ import annotations

import datetime as dt
from collections import _tuplegetter  # type: ignore[attr-defined]  # namedtuple's field reader
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import attrs

from memimg.core import _types
from memimg.core._counters import add
from memimg.core._markers import MISSING
from memimg.core._rows import _EPOCH, ts_to_datetime

_MICROSECOND: Final = dt.timedelta(microseconds=1)

__all__ = ["Change", "Collected", "Part", "Recorder", "commit_time", "entity_state", "field_namer"]

#: the last commit time made by :func:`commit_time`: ``(ts, datetime)``
_last_time: tuple[int, dt.datetime] = (0, _EPOCH)


def commit_time(ts: int) -> dt.datetime:
    """:func:`~memimg.core._rows.ts_to_datetime`, remembering the last one made (the changes of a commit share it)."""
    global _last_time
    last = _last_time
    if last[0] == ts:
        return last[1]
    made = ts_to_datetime(ts)
    _last_time = (ts, made)
    return made


#: What one primitive operation changed: ``(field, key, old, new, index)``.
Part = tuple[str | None, Any, Any, Any, int | None]


@attrs.frozen(repr=False)
class Collected:
    """An object that was part of the image and no longer is (collected once unreachable), by its id.

    History shows it where a past value referred to such an object.
    """

    __module__ = "memimg"

    oid: int

    def __repr__(self) -> str:
        return f"<memimg.Collected #{self.oid}>"


_FIELDS: Final = ("seq", "tx", "time", "meta", "target", "kind", "field", "key", "old", "new", "index")


class Change(tuple):  # type: ignore[type-arg]
    """One change of an object, as :meth:`memimg.MemoryImage.history` reports it, and as change feeds deliver it.

    An immutable record of the fields below, equal to another Change with
    the same fields (never to a plain tuple). Like a
    :func:`~collections.namedtuple` (which it is underneath, so that a
    change feed makes one cheaply), it unpacks, in the order of
    ``_fields``, and has ``_asdict()`` and ``_replace(**fields)``; Changes
    are not ordered (``<`` raises ``TypeError``: sort by ``seq``). It is not
    an attrs class: ``attrs.evolve`` and ``attrs.asdict`` do not apply.
    For a list or a set, ``old`` is the tuple of items the change took out
    and ``new`` the tuple it put in, and ``index`` is where in a list
    (``lst[index:index + len(old)]`` became ``new``).
    """

    __module__ = "memimg"
    __slots__ = ()
    __match_args__ = _FIELDS
    _fields: tuple[str, ...] = _FIELDS
    """The names of the fields, in order (as a named tuple has them)."""

    if TYPE_CHECKING:
        seq: int
        """The seq of the event."""
        tx: int
        """Its transaction's id: the seq of the transaction's first event."""
        time: dt.datetime
        """The commit time of its transaction, an aware UTC datetime."""
        _ts: int
        """The commit time as the log stores it: microseconds since the epoch."""
        meta: dict[str, Any]
        """The metadata of its transaction (``{}`` if none)."""
        target: Any
        """The object changed, as live in the image asked (a :class:`memimg.Collected` for one no longer in it)."""
        kind: str
        """The event kind: ``"obj.set"``, ``"obj.del"``, ``"dict.set"``, ``"list.append"``...; ``"obj.add"`` for
        an add to a counter (``memimg.field(merge="add")``: ``new - old`` is what was added)."""
        field: str | None
        """The entity field changed, else ``None``."""
        key: Any
        """The dict key, else ``None`` (a dict's change, of kind ``dict.*``, may have the key ``None`` too)."""
        old: Any
        """The value before (:data:`memimg.MISSING`: there was none); for a list or set, the items taken out."""
        new: Any
        """The value after (:data:`memimg.MISSING`: there is none); for a list or set, the items put in."""
        index: int | None  # type: ignore[assignment]  # a field, over tuple.index
        """For a list, where the change was made (``lst[index:index + len(old)]`` became ``new``), else ``None``."""
    else:
        seq = _tuplegetter(0, "The seq of the event.")
        tx = _tuplegetter(1, "Its transaction's id: the seq of the transaction's first event.")
        _ts = _tuplegetter(2, "The commit time as the log stores it: microseconds since the epoch.")
        meta = _tuplegetter(3, "The metadata of its transaction ({} if none).")
        target = _tuplegetter(4, "The object changed, as live in the image asked.")
        kind = _tuplegetter(5, "The event kind.")
        field = _tuplegetter(6, "The entity field, else None.")
        key = _tuplegetter(7, "The dict key, else None.")
        old = _tuplegetter(8, "The value before (MISSING: none); for a list or set, the items taken out.")
        new = _tuplegetter(9, "The value after (MISSING: none); for a list or set, the items put in.")
        index = _tuplegetter(10, "For a list, where the change was made, else None.")

    def __new__(
        cls,
        seq: int,
        tx: int,
        time: dt.datetime | int,
        meta: dict[str, Any],
        target: Any,
        kind: str,
        field: str | None,
        key: Any,
        old: Any,
        new: Any,
        index: int | None = None,
    ) -> Change:
        """*time*: an aware datetime, or microseconds since the Unix epoch (how the log stores it)."""
        if type(time) is not int:
            if not isinstance(time, dt.datetime) or time.utcoffset() is None:
                raise TypeError(f"Change(time={time!r}): a time is an aware datetime, or microseconds since the epoch")
            time = (time - _EPOCH) // _MICROSECOND
        return tuple.__new__(cls, (seq, tx, time, meta, target, kind, field, key, old, new, index))

    if not TYPE_CHECKING:  # (for mypy, the time is a field like the others)

        @property
        def time(self) -> dt.datetime:
            """The commit time of its transaction, an aware UTC datetime."""
            return commit_time(self._ts)

    # positional access gives the fields as their names do (the time a datetime, made when read: a change feed
    # stores the log's microseconds, the cheaper to make), so the record unpacks, converts and indexes as one

    def _values(self) -> tuple[Any, ...]:
        raw = tuple.__getitem__
        return (*raw(self, slice(0, 2)), commit_time(raw(self, 2)), *raw(self, slice(3, None)))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values())

    def __getitem__(self, at: Any) -> Any:
        return self._values()[at]

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def count(self, value: Any) -> int:
        """How many fields equal *value* (as for a tuple)."""
        return self._values().count(value)

    def _asdict(self) -> dict[str, Any]:
        """The fields, by name, in order."""
        return dict(zip(_FIELDS, self._values(), strict=True))

    def _replace(self, **fields: Any) -> Change:
        """A Change with these *fields* changed (by name), the others as in this one.

        Raises:
            TypeError: a name is not a field of a Change.
        """
        values = self._asdict()
        unknown = fields.keys() - values.keys()
        if unknown:
            names = ", ".join(map(repr, sorted(unknown)))
            raise TypeError(f"Change._replace(): no field {names} (the fields: {', '.join(_FIELDS)})")
        values.update(fields)
        return Change(**values)

    def __eq__(self, other: object) -> bool:  # a Change is never equal to a plain tuple
        return isinstance(other, Change) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, Change) or tuple.__ne__(self, other)

    def _unordered(self, other: object) -> bool:
        raise TypeError(
            f"Changes are not ordered (comparing a Change with a {type(other).__qualname__}); sort them by a field, "
            "e.g. key=lambda c: c.seq"
        )

    __lt__ = __le__ = __gt__ = __ge__ = _unordered
    __hash__ = tuple.__hash__

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple.__getitem__(self, slice(None))

    def __repr__(self) -> str:
        where = f" {self.field}" if self.field is not None else ""
        if self.key is not None or self.kind.startswith("dict."):  # None is a dict key like any
            where += f" [{self.key!r}]"
        if self.index is not None:
            where += f" @{self.index}"
        target = f"{type(self.target).__name__} #{getattr(self.target, '_mi_oid', '?')}"
        return f"<memimg.Change seq {self.seq} {self.kind} {target}{where}: {self.old!r} -> {self.new!r}>"


class Recorder:
    """The applier of history: applies events to a plain copy of one object's state, noting each change.

    An entity's copy is a dict of its set fields. After each event,
    :attr:`parts` lists what it changed (see :data:`Part`).

    With *live*, the recorder reads the image's committed objects themselves
    and changes nothing: the change feed (:mod:`memimg.image._feeds`) runs an
    event against it just before the event is applied, for what it is about
    to change. Either way the state is read with raw builtin operations, so
    no tracking hook runs.
    """

    def __init__(self, *, live: bool = False) -> None:
        self.parts: list[Part] = []
        self.copies = not live
        #: live: the raw field getters of each entity class met
        self._getters: dict[type, dict[str, Callable[[Any], Any]]] = {}

    def _live_field(self, obj: Any, name: str) -> Any:
        getters = self._getters.get(type(obj))
        if getters is None:
            getters = self._getters[type(obj)] = _types.info_of(type(obj)).getters  # type: ignore[union-attr]
        try:
            return getters[name](obj)
        except AttributeError:
            return MISSING

    def field_set(self, obj: Any, name: str, value: Any) -> None:
        if self.copies:
            self.parts.append((name, None, obj.get(name, MISSING), value, None))
            obj[name] = value
            return
        try:  # the live field (a measured path of change feeds: no call more than needed)
            old = self._getters[type(obj)][name](obj)
        except KeyError:
            old = self._live_field(obj, name)
        except AttributeError:
            old = MISSING
        self.parts.append((name, None, old, value, None))

    def field_add(self, obj: Any, name: str, delta: Any) -> None:
        old = obj.get(name, MISSING) if self.copies else self._live_field(obj, name)
        new = MISSING if old is MISSING else add(old, delta)
        self.parts.append((name, None, old, new, None))
        if self.copies:
            obj[name] = new

    def field_del(self, obj: Any, name: str) -> None:
        if self.copies:
            self.parts.append((name, None, obj.pop(name, MISSING), MISSING, None))
        else:
            self.parts.append((name, None, self._live_field(obj, name), MISSING, None))

    def list_append(self, lst: list[Any], items: list[Any]) -> None:
        self.parts.append((None, None, (), tuple(items), list.__len__(lst)))
        if self.copies:
            lst.extend(items)

    def list_splice(self, lst: list[Any], start: int, stop: int, items: list[Any]) -> None:
        start, stop, _ = slice(start, stop).indices(list.__len__(lst))
        self.parts.append((None, None, tuple(list.__getitem__(lst, slice(start, stop))), tuple(items), start))
        if self.copies:
            lst[start:stop] = items

    def list_clear(self, lst: list[Any]) -> None:
        self.parts.append((None, None, tuple(list.copy(lst)), (), 0))
        if self.copies:
            lst.clear()

    def list_reorder(self, lst: list[Any], order: list[int]) -> None:
        old = tuple(list.copy(lst))
        new = tuple(old[i] for i in order)
        self.parts.append((None, None, old, new, 0))
        if self.copies:
            lst[:] = new

    def list_reverse(self, lst: list[Any]) -> None:
        old = tuple(list.copy(lst))
        self.parts.append((None, None, old, old[::-1], 0))
        if self.copies:
            lst.reverse()

    def dict_set(self, d: dict[Any, Any], key: Any, value: Any) -> None:
        self.parts.append((None, key, dict.get(d, key, MISSING), value, None))
        if self.copies:
            d[key] = value

    def dict_del(self, d: dict[Any, Any], key: Any) -> None:
        self.parts.append((None, key, dict.get(d, key, MISSING), MISSING, None))
        if self.copies:
            d.pop(key, None)

    def dict_update(self, d: dict[Any, Any], pairs: list[tuple[Any, Any]]) -> None:
        if self.copies:
            for key, value in pairs:
                self.dict_set(d, key, value)
            return
        now: dict[Any, Any] = {}  # a key given twice: its second old value is its first new one
        for key, value in pairs:
            self.parts.append((None, key, now[key] if key in now else dict.get(d, key, MISSING), value, None))
            now[key] = value

    def dict_clear(self, d: dict[Any, Any]) -> None:
        self.parts.extend((None, key, value, MISSING, None) for key, value in dict.items(d))
        if self.copies:
            d.clear()

    def set_add(self, s: set[Any], items: list[Any]) -> None:
        self.parts.append((None, None, (), tuple(items), None))
        if self.copies:
            s.update(items)

    def set_discard(self, s: set[Any], items: list[Any]) -> None:
        self.parts.append((None, None, tuple(items), (), None))
        if self.copies:
            s.difference_update(items)

    def set_clear(self, s: set[Any]) -> None:
        self.parts.append((None, None, tuple(set.copy(s)), (), None))
        if self.copies:
            s.clear()

    # the image's own kinds change no object's state
    def set_root(self, obj: Any) -> None:
        pass

    def collect(self) -> None:
        pass

    def snapshot_begins(self) -> None:
        pass

    def forget(self, oids: list[int]) -> None:
        pass


_DROPPED: Final = None


def field_namer(info: _types.TypeInfo) -> Callable[[str], str | None]:
    """``stored field name -> current field name`` of *info*'s class (``None``: a field removed since).

    A field renamed with ``memimg.field(renamed_from=...)`` is found under
    its old name too.
    """
    current = set(info.fields)
    old_names = {old: new for new, old in info.renamed.items()}

    def name(stored: str) -> str | None:
        if stored in current:
            return stored
        return old_names.get(stored, _DROPPED)

    return name


def entity_state(
    state: Any, stored_fields: list[str] | None, name: Callable[[str], str | None], decode: Callable[[Any], Any]
) -> dict[str, Any]:
    """An entity's stored state as ``{current field: value}`` (*stored_fields*: the order of a list state)."""
    if type(state) is list:
        if stored_fields is None or len(stored_fields) != len(state):
            raise ValueError(f"a state of {len(state)} values does not fit the fields declared ({stored_fields})")
        state = dict(zip(stored_fields, state))
    if type(state) is not dict:
        raise ValueError(f"an entity state is a {type(state).__name__}")
    out = {}
    for stored, raw in state.items():
        f = name(stored)
        if f is not None:
            out[f] = decode(raw)
    return out
