"""Event kinds: the registry of every primitive mutation the log can hold.

Each kind is declared once, here, with

* its **name** (what the log's ``kind`` column says),
* its **parameters** -- a code per argument telling how it is stored (the
  table :data:`PARAMS`): ``s`` a string, ``i`` an int, ``I`` a list of ints
  (stored as they are); ``j`` a JSON object of scalars (transaction
  metadata), stored as it is and never through the value codec; ``v`` a
  value, ``V`` a list of values, ``P`` a list of key/value pairs (through the
  value codec),
* its **conflict rule** (a :class:`Rule`) -- which parts of its target it
  writes, and which earlier writes it cannot be reordered with; the image's
  conflict index reads these as data (see :mod:`memimg.image._conflicts`),
* its **apply** function, written against an *applier*: the primitive
  operations of a state. Two appliers exist: the committed object table
  (:class:`memimg.core._table.ObjectTable`, raw builtin operations on the
  real objects) and a transaction's delta layer
  (:class:`memimg.image._tx.TxState`, operations on its views). So one
  definition serves replay, commit and the transaction's own reads of its
  writes.

Adding a kind touches only this module (plus a planner that emits it).
Events record outcomes, not calls: ``sort`` is stored as ``list.reorder``
with the resulting permutation, so replay never runs user code.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import attrs

from memimg.core._markers import WHOLE as WHOLE_KEY

__all__ = [
    "ADD",
    "APPEND",
    "FIELD",
    "KEY",
    "KINDS",
    "MEMBERS",
    "NONE",
    "PAIRS",
    "PARAMS",
    "TARGETLESS",
    "WHOLE",
    "Applier",
    "Kind",
    "Rule",
]


@attrs.frozen(eq=False)
class Rule:
    """What part of its target an event writes, for serializable commits.

    An event writes the parts :attr:`keys` names (``WHOLE`` for the whole
    collection). A transaction's event cannot commit over a write made since
    the transaction began to one of those parts -- nor, with
    :attr:`after_whole`, over a whole-collection change, nor, with
    :attr:`after_any`, over any change of the target at all (a positional
    change depends on everything before it).
    """

    name: str
    #: The parts of the target an event with these arguments writes.
    keys: Callable[[tuple[Any, ...]], Iterable[Any]]
    after_whole: bool = False
    after_any: bool = False
    #: False: the event touches no shared data (root creation, collection).
    shared: bool = True
    #: ``args[0]`` names an entity field (schemas are declared, renamed fields read, for such events).
    field: bool = False
    #: The event's writes merge with each other (a counter's deltas): two such writes of one part never
    #: conflict; a plain write of the part conflicts with one, and the other way round.
    merges: bool = False

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


def _first(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0],)


def _no_keys(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return ()


#: ``args[0]`` is a field name.
FIELD: Final = Rule("field", _first, field=True)
#: ``args[0]`` is a counter field, ``args[1]`` what is added to it: commutes with other adds to it.
ADD: Final = Rule("add", _first, field=True, merges=True)
#: ``args[0]`` is a dict key.
KEY: Final = Rule("key", _first, after_whole=True)
#: ``args[0]`` is a list of (key, value).
PAIRS: Final = Rule("pairs", lambda args: [p[0] for p in args[0]], after_whole=True)
#: ``args[0]`` is a list of set members.
MEMBERS: Final = Rule("members", lambda args: args[0], after_whole=True)
#: Adds at the end of a list: commutes with other appends, not with a whole-list change.
APPEND: Final = Rule("append", _no_keys, after_whole=True)
#: A positional or whole-collection change.
WHOLE: Final = Rule("whole", lambda args: (WHOLE_KEY,), after_any=True)
#: Touches no shared data.
NONE: Final = Rule("none", _no_keys, shared=False)

#: How each parameter code is stored: ``"raw"`` as itself, ``"value"`` one value through the
#: codec, ``"values"`` a list of them, ``"pairs"`` a list of key/value pairs of them.
PARAMS: Final = {"s": "raw", "i": "raw", "I": "raw", "j": "raw", "v": "value", "V": "values", "P": "pairs"}


class Applier(Protocol):
    """The primitive operations every state offers to kinds."""

    def field_set(self, obj: Any, name: str, value: Any) -> None: ...
    def field_del(self, obj: Any, name: str) -> None: ...
    def field_add(self, obj: Any, name: str, delta: Any) -> None: ...
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
    def collect(self) -> Any: ...
    def snapshot_begins(self) -> None: ...
    def forget(self, oids: list[int]) -> None: ...


@attrs.frozen
class Kind:
    """One kind of event."""

    name: str
    params: str = attrs.field()
    conflict: Rule
    apply: Callable[..., None]
    #: What the event means, for ``memimg log`` and the docs.
    doc: str
    #: Mixed into row checksums, so a row cannot change kind unnoticed.
    code: int = attrs.field(init=False)
    #: How many trailing arguments rows written before they were added may lack (the apply function's defaults).
    optional: int = attrs.field(init=False)

    @params.validator
    def _known_params(self, attribute: Any, value: str) -> None:
        unknown = set(value) - PARAMS.keys()
        if unknown:
            raise ValueError(f"event kind {self.name!r}: unknown parameter codes {sorted(unknown)}")

    @code.default
    def _code(self) -> int:
        return zlib.crc32(self.name.encode())

    @optional.default
    def _optional(self) -> int:
        return len(getattr(self.apply, "__defaults__", None) or ())


KINDS: dict[str, Kind] = {}


def kind(name: str, params: str, conflict: Rule) -> Callable[[Callable[..., None]], Kind]:
    """Register the decorated apply function as event kind *name*."""

    def register(apply: Callable[..., None]) -> Kind:
        if name in KINDS:
            raise ValueError(f"event kind {name!r} is defined twice")
        k = Kind(name=name, params=params, conflict=conflict, apply=apply, doc=(apply.__doc__ or "").strip())
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


@kind("obj.add", "sv", ADD)
def _obj_add(a: Applier, obj: Any, name: str, delta: Any) -> None:
    """Add *delta* to counter field *name* of entity *target* (``obj.name += delta`` on a
    ``memimg.field(merge="add")`` field): concurrent adds all count."""
    a.field_add(obj, name, delta)


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
    """Forget every object no longer reachable from the root (before memimg 0.3: written with each snapshot)."""
    a.collect()


@kind("snapshot", "", NONE)
def _snapshot(a: Applier, obj: Any) -> None:
    """A snapshot of the state after this event is being written: the log declares every type again from here."""
    a.snapshot_begins()


@kind("tx.meta", "j", NONE)
def _tx_meta(a: Applier, obj: Any, meta: dict[str, Any]) -> None:
    """The metadata of its transaction (``img.transaction(meta=...)``, ``img.annotate(...)``): written first in it,
    so its seq is the transaction's ``tx``; changes nothing."""


@kind("erase", "sisVviI", NONE)
def _erase(
    a: Applier,
    obj: Any,
    reason: str,
    oid: int,
    type_name: str,
    fields: list[str],
    by: Any,
    count: int,
    others: list[int] = (),  # type: ignore[assignment]  # absent from audit rows written before it was added
) -> None:
    """Audit of ``MemoryImage.erase``: *count* stored past values of *fields* (all: empty) of object *oid*
    (a *type_name*) and of the objects *others* (the lists and dicts it holds, unreachable objects its past
    values referred to) were replaced by ``memimg.ERASED``, for *reason*, by *by*; the values are not here."""


@kind("gc.drop", "I", NONE)
def _gc_drop(a: Applier, obj: Any, oids: list[int]) -> None:
    """Forget the objects *oids*: unreachable at the last snapshot's seq, and not referenced since."""
    a.forget(oids)


#: The kinds whose events name no object (stored with target 0): every other names one, above 0.
TARGETLESS: Final = frozenset(k.name for k in KINDS.values() if k.conflict is NONE and k.name != "root")
