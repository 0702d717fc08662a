"""Event kinds: the registry of every primitive mutation the log can hold.

Each kind is declared once, here, with

* its **name** (what the log's ``kind`` column says),
* its **parameters** -- a short code per argument telling how it is stored:
  ``s`` a string, ``i`` an int, ``I`` a list of ints (stored as is);
  ``v`` a value, ``V`` a list of values, ``P`` a list of key/value pairs
  (stored through the value codec),
* its **conflict rule** -- which part of its target it writes, for
  serializable commits (see :mod:`memimg.image._tx`),
* its **apply** function, written against an *applier*: the primitive
  operations of a state. Two appliers exist: the committed graph
  (:class:`memimg.core._graph.Graph`, raw builtin operations on the real objects)
  and a transaction's delta layer (:class:`memimg.image._tx.TxState`, operations on
  its views). So one definition serves replay, commit and the transaction's
  own reads of its writes.

Adding a kind touches only this module (plus a planner that emits it).
Events record outcomes, not calls: ``sort`` is stored as ``list.reorder``
with the resulting permutation, so replay never runs user code.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs

__all__ = ["KINDS", "Applier", "Kind", "kind"]

# Conflict rules: what part of the target an event writes.
FIELD: Final = "field"  # args[0] is a field name
KEY: Final = "key"  # args[0] is a dict key
PAIRS: Final = "pairs"  # args[0] is a list of (key, value)
MEMBERS: Final = "members"  # args[0] is a list of set members
APPEND: Final = "append"  # adds at the end of a list: commutes with other appends
WHOLE: Final = "whole"  # positional or whole-collection change
NONE: Final = "none"  # touches no shared data (root creation, collection)


class Applier(Protocol):
    """The primitive operations every state offers to kinds."""

    def field_set(self, obj: Any, name: str, value: Any) -> None: ...
    def field_del(self, obj: Any, name: str) -> None: ...
    def list_append(self, lst: Any, items: list[Any]) -> None: ...
    def list_splice(self, lst: Any, start: int, stop: int, items: list[Any]) -> None: ...
    def list_clear(self, lst: Any) -> None: ...
    def list_reorder(self, lst: Any, order: list[int]) -> None: ...
    def list_reverse(self, lst: Any) -> None: ...
    def dict_set(self, d: Any, key: Any, value: Any) -> None: ...
    def dict_del(self, d: Any, key: Any) -> None: ...
    def dict_update(self, d: Any, pairs: list[tuple[Any, Any]]) -> None: ...
    def dict_clear(self, d: Any) -> None: ...
    def set_add(self, s: Any, items: list[Any]) -> None: ...
    def set_discard(self, s: Any, items: list[Any]) -> None: ...
    def set_clear(self, s: Any) -> None: ...
    def set_root(self, obj: Any) -> None: ...
    def collect(self) -> None: ...


@attrs.frozen
class Kind:
    """One kind of event."""

    name: str
    params: str
    conflict: str
    apply: Callable[..., None]
    #: What the event means, for ``memimg log`` and the docs.
    doc: str
    #: Mixed into row checksums, so a row cannot change kind unnoticed.
    code: int = attrs.field(init=False)

    @code.default
    def _code(self) -> int:
        return zlib.crc32(self.name.encode())


KINDS: dict[str, Kind] = {}
_RULES: Final = {r: r for r in (FIELD, KEY, PAIRS, MEMBERS, APPEND, WHOLE, NONE)}


def kind(name: str, params: str, conflict: str) -> Callable[[Callable[..., None]], Kind]:
    """Register the decorated apply function as event kind *name*."""

    def register(apply: Callable[..., None]) -> Kind:
        conflict_rule = _RULES[conflict]  # the interned constant, so `is` comparisons hold
        if name in KINDS:
            raise ValueError(f"event kind {name!r} is defined twice")
        k = Kind(name=name, params=params, conflict=conflict_rule, apply=apply, doc=(apply.__doc__ or "").strip())
        KINDS[name] = k
        return k

    return register


# -- entities -----------------------------------------------------------------


@kind("obj.set", "sv", FIELD)
def _obj_set(a: Applier, obj: Any, name: str, value: Any) -> None:
    """Set field *name* of entity *target* to *value*."""
    a.field_set(obj, name, value)


@kind("obj.update", "P", PAIRS)
def _obj_update(a: Applier, obj: Any, pairs: list[tuple[str, Any]]) -> None:
    """Set several fields of entity *target* at once (states upgraded on replay)."""
    for name, value in pairs:
        a.field_set(obj, name, value)


@kind("obj.del", "s", FIELD)
def _obj_del(a: Applier, obj: Any, name: str) -> None:
    """Delete field *name* of entity *target* (``del obj.name``)."""
    a.field_del(obj, name)


# -- lists --------------------------------------------------------------------


@kind("list.append", "V", APPEND)
def _list_append(a: Applier, lst: Any, items: list[Any]) -> None:
    """Append *items* at the end (``append``, ``extend``, ``+=``)."""
    a.list_append(lst, items)


@kind("list.insert", "iv", WHOLE)
def _list_insert(a: Applier, lst: Any, index: int, item: Any) -> None:
    """Insert *item* before position *index*."""
    a.list_splice(lst, index, index, [item])


@kind("list.set", "iv", WHOLE)
def _list_set(a: Applier, lst: Any, index: int, item: Any) -> None:
    """Replace the item at *index* (``lst[i] = x``)."""
    a.list_splice(lst, index, index + 1, [item])


@kind("list.del", "i", WHOLE)
def _list_del(a: Applier, lst: Any, index: int) -> None:
    """Remove the item at *index* (``del lst[i]``, ``pop``, ``remove``)."""
    a.list_splice(lst, index, index + 1, [])


@kind("list.splice", "iiV", WHOLE)
def _list_splice(a: Applier, lst: Any, start: int, stop: int, items: list[Any]) -> None:
    """Replace ``lst[start:stop]`` with *items* (slice assignment and deletion)."""
    a.list_splice(lst, start, stop, items)


@kind("list.clear", "", WHOLE)
def _list_clear(a: Applier, lst: Any) -> None:
    """Remove every item."""
    a.list_clear(lst)


@kind("list.reorder", "I", WHOLE)
def _list_reorder(a: Applier, lst: Any, order: list[int]) -> None:
    """Reorder the items: item *i* of the result is the old item ``order[i]`` (``sort``)."""
    a.list_reorder(lst, order)


@kind("list.reverse", "", WHOLE)
def _list_reverse(a: Applier, lst: Any) -> None:
    """Reverse the items in place."""
    a.list_reverse(lst)


# -- dicts --------------------------------------------------------------------


@kind("dict.set", "vv", KEY)
def _dict_set(a: Applier, d: Any, key: Any, value: Any) -> None:
    """Set ``d[key] = value`` (``setdefault`` when the key was missing)."""
    a.dict_set(d, key, value)


@kind("dict.del", "v", KEY)
def _dict_del(a: Applier, d: Any, key: Any) -> None:
    """Delete *key* (``del d[k]``, ``pop``, ``popitem``)."""
    a.dict_del(d, key)


@kind("dict.update", "P", PAIRS)
def _dict_update(a: Applier, d: Any, pairs: list[tuple[Any, Any]]) -> None:
    """Set each key/value pair in order (``update``, ``|=``)."""
    a.dict_update(d, pairs)


@kind("dict.clear", "", WHOLE)
def _dict_clear(a: Applier, d: Any) -> None:
    """Remove every key."""
    a.dict_clear(d)


# -- sets ---------------------------------------------------------------------


@kind("set.add", "V", MEMBERS)
def _set_add(a: Applier, s: Any, items: list[Any]) -> None:
    """Add *items* (``add``, ``update``, ``|=``, and the new side of ``^=``)."""
    a.set_add(s, items)


@kind("set.discard", "V", MEMBERS)
def _set_discard(a: Applier, s: Any, items: list[Any]) -> None:
    """Remove *items* (``discard``, ``remove``, ``pop``, ``-=``, ``&=``, ``^=``)."""
    a.set_discard(s, items)


@kind("set.clear", "", WHOLE)
def _set_clear(a: Applier, s: Any) -> None:
    """Remove every member."""
    a.set_clear(s)


# -- the image ----------------------------------------------------------------


@kind("root", "", NONE)
def _root(a: Applier, obj: Any) -> None:
    """Make *target* (created by this event) the root: the first event of every log."""
    a.set_root(obj)


@kind("gc", "", NONE)
def _gc(a: Applier, obj: Any) -> None:
    """Forget every object no longer reachable from the root (written before each snapshot)."""
    a.collect()
