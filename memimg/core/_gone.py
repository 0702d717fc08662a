"""Removed types: the placeholders replay keeps for them, and the events that clean them out.

``memimg.open(..., removed_types=("shop.Coupon",))`` drops a class from an
image. Replay keeps a :class:`Gone` placeholder wherever the log has an
object or value of a removed type, so the graph is exactly what the log
says; :func:`strip_gone` then plans the events that remove them -- the
image logs those, so every later reader, and the next snapshot, agrees:
collection elements that are (or hold) one are dropped, a field that is one
becomes ``None``, and a value holding one is written again without it
(``None`` in a tuple or value object, dropped from a frozenset).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

from memimg.core import _types
from memimg.core._kinds import KINDS, Kind
from memimg.core._schema import SchemaReport

__all__ = ["Gone", "caches_hash", "strip_gone"]

_NATIVE: Final = _types.NATIVE_TYPES
_OBJ_SET = KINDS["obj.set"]
_LIST_DEL = KINDS["list.del"]
_LIST_SET = KINDS["list.set"]
_DICT_SET = KINDS["dict.set"]
_DICT_DEL = KINDS["dict.del"]
_SET_DISCARD = KINDS["set.discard"]


class Gone:
    """Stands, during replay, for an object or value of a removed type (see ``removed_types``).

    A removed object keeps its id (``oid``); a removed value (``oid`` 0) keeps
    its stored data, so an event that removes it names it as the log does.
    """

    __slots__ = ("oid", "raw", "type_name")

    def __init__(self, oid: int, type_name: str, raw: Any = None) -> None:
        self.oid = oid
        self.type_name = type_name
        self.raw = raw

    def __hash__(self) -> int:
        return hash(("memimg.Gone", self.oid))

    def __eq__(self, other: object) -> bool:
        return type(other) is Gone and other.oid == self.oid and (self.oid != 0 or other.raw == self.raw)

    def __repr__(self) -> str:
        return f"<removed {self.type_name} #{self.oid}>"


@functools.cache
def caches_hash(cls: type) -> bool:
    """Whether attrs caches the hash of *cls* instances (``cache_hash=True``), slotted or not."""
    if hasattr(cls, "_attrs_cached_hash"):
        return True
    props = getattr(cls, "__attrs_props__", None)
    hashability = getattr(props, "hashability", None)
    if hashability is not None:
        return getattr(hashability, "name", "") == "HASHABLE_CACHED"
    code = getattr(cls.__hash__, "__code__", None)  # attrs < 25.4: the generated __hash__ reads it
    return code is not None and "_attrs_cached_hash" in code.co_names


Pending = tuple[Kind, Any, tuple[Any, ...]]


def strip_gone(objects: list[Any], shell: Any, is_value: Callable[[type], bool], report: SchemaReport) -> list[Pending]:
    """The events that clean every placeholder out of the objects of *objects*.

    *is_value* says whether a type is a value-object class (whose fields may
    hold placeholders); *report* counts what is dropped.
    """
    events: list[Pending] = []
    cleaner = _Cleaner(is_value, report)
    dirty, clean = cleaner.holds_gone, cleaner.without_gone
    tl, td, ts = shell.list, shell.dict, shell.set
    for obj in objects:
        t = type(obj)
        if t is tl:
            items = list.copy(obj)
            for i in range(len(items) - 1, -1, -1):  # from the end: earlier indexes stay valid
                x = items[i]
                if type(x) is Gone:
                    events.append((_LIST_DEL, obj, (i,)))
                    report.elements_dropped += 1
                elif dirty(x):
                    events.append((_LIST_SET, obj, (i, clean(x))))
        elif t is td:
            for key, value in list(dict.items(obj)):
                if dirty(key) or type(value) is Gone:
                    events.append((_DICT_DEL, obj, (key,)))
                    report.elements_dropped += 1
                elif dirty(value):
                    events.append((_DICT_SET, obj, (key, clean(value))))
        elif t is ts:
            members = [m for m in set.copy(obj) if dirty(m)]
            if members:
                events.append((_SET_DISCARD, obj, (members,)))
                report.elements_dropped += len(members)
        elif t is not Gone and obj is not None:
            info = _types.info_of(t)
            if info is None:
                continue
            for f, get in info.getters.items():
                try:
                    v = get(obj)
                except AttributeError:
                    continue
                if dirty(v):
                    events.append((_OBJ_SET, obj, (f, clean(v))))
    return events


class _Cleaner:
    """Finds placeholders inside values, and makes values without them."""

    def __init__(self, is_value: Callable[[type], bool], report: SchemaReport) -> None:
        self.is_value = is_value
        self.report = report

    def holds_gone(self, v: Any) -> bool:
        t = type(v)
        if t is Gone:
            return True
        if t is tuple or t is frozenset:
            return any(self.holds_gone(i) for i in v)
        if t in _NATIVE or not self.is_value(t):
            return False
        return any(self.holds_gone(getattr(v, f, None)) for f in _types.info_of(t).fields)  # type: ignore[union-attr]

    def without_gone(self, v: Any) -> Any:
        """*v* with placeholders cleaned out."""
        t = type(v)
        if t is Gone:
            self.report.references_cleared += 1
            return None
        if not self.holds_gone(v):
            return v
        if t is tuple:
            return tuple([self.without_gone(i) for i in v])
        if t is frozenset:
            kept = [i for i in v if type(i) is not Gone]
            self.report.elements_dropped += len(v) - len(kept)
            return frozenset([self.without_gone(i) for i in kept])
        info = _types.info_of(t)
        assert info is not None
        obj: Any = object.__new__(t)
        for f in info.fields:
            try:
                object.__setattr__(obj, f, self.without_gone(getattr(v, f)))
            except AttributeError:
                continue
        if caches_hash(info.cls):
            object.__setattr__(obj, "_attrs_cached_hash", None)
        return obj
