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
  unset before or after); an ``obj.update`` gives one change per field;
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
from collections.abc import Callable
from typing import Any, Final

import attrs

from memimg.core import _types
from memimg.core._markers import MISSING

__all__ = ["Change", "Collected", "Part", "Recorder", "entity_state", "field_namer"]

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


@attrs.frozen(repr=False)
class Change:
    """One change of an object, as :meth:`memimg.MemoryImage.history` reports it.

    ``seq``, ``tx`` and ``time`` (an aware UTC datetime) are those of the
    event; ``meta`` the metadata of its transaction (``{}`` if none);
    ``target`` the object changed, as live in the image asked; ``kind`` the
    event kind (``"obj.set"``, ``"dict.set"``, ``"list.append"``...);
    ``field`` the entity field (else ``None``); ``key`` the dict key (else
    ``None``: a dict's change, of kind ``dict.*``, may have the key ``None``
    too); ``old`` the value before and ``new`` the value after
    (:data:`memimg.MISSING` where there was, or is, none). For a list or a
    set, ``old`` is the tuple of items the change took out and ``new`` the
    tuple it put in, and for a list ``index`` is where
    (``lst[index:index + len(old)]`` became ``new``).
    """

    __module__ = "memimg"

    seq: int
    tx: int
    time: dt.datetime
    meta: dict[str, Any]
    target: Any
    kind: str
    field: str | None
    key: Any
    old: Any
    new: Any
    index: int | None = None

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
    """

    def __init__(self) -> None:
        self.parts: list[Part] = []

    def field_set(self, obj: dict[str, Any], name: str, value: Any) -> None:
        self.parts.append((name, None, obj.get(name, MISSING), value, None))
        obj[name] = value

    def field_del(self, obj: dict[str, Any], name: str) -> None:
        self.parts.append((name, None, obj.pop(name, MISSING), MISSING, None))

    def list_append(self, lst: list[Any], items: list[Any]) -> None:
        self.parts.append((None, None, (), tuple(items), len(lst)))
        lst.extend(items)

    def list_splice(self, lst: list[Any], start: int, stop: int, items: list[Any]) -> None:
        start, stop, _ = slice(start, stop).indices(len(lst))
        self.parts.append((None, None, tuple(lst[start:stop]), tuple(items), start))
        lst[start:stop] = items

    def list_clear(self, lst: list[Any]) -> None:
        self.parts.append((None, None, tuple(lst), (), 0))
        lst.clear()

    def list_reorder(self, lst: list[Any], order: list[int]) -> None:
        old = tuple(lst)
        lst[:] = [old[i] for i in order]
        self.parts.append((None, None, old, tuple(lst), 0))

    def list_reverse(self, lst: list[Any]) -> None:
        old = tuple(lst)
        lst.reverse()
        self.parts.append((None, None, old, tuple(lst), 0))

    def dict_set(self, d: dict[Any, Any], key: Any, value: Any) -> None:
        self.parts.append((None, key, d.get(key, MISSING), value, None))
        d[key] = value

    def dict_del(self, d: dict[Any, Any], key: Any) -> None:
        self.parts.append((None, key, d.pop(key, MISSING), MISSING, None))

    def dict_update(self, d: dict[Any, Any], pairs: list[tuple[Any, Any]]) -> None:
        for key, value in pairs:
            self.dict_set(d, key, value)

    def dict_clear(self, d: dict[Any, Any]) -> None:
        self.parts.extend((None, key, value, MISSING, None) for key, value in d.items())
        d.clear()

    def set_add(self, s: set[Any], items: list[Any]) -> None:
        self.parts.append((None, None, (), tuple(items), None))
        s.update(items)

    def set_discard(self, s: set[Any], items: list[Any]) -> None:
        self.parts.append((None, None, tuple(items), (), None))
        s.difference_update(items)

    def set_clear(self, s: set[Any]) -> None:
        self.parts.append((None, None, tuple(s), (), None))
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
