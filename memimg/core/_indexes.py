"""Indexes and unique constraints on entity fields: what a class declares, and one field's index.

A field declared with ``memimg.field(index=True)`` (or ``unique=True``,
which implies an index) is recorded in the field's attrs metadata; this
module reads it back (:func:`indexed_fields`, cached per class) and checks
it at class definition (:func:`check_declaration`): a collection field, or
a type whose instances cannot be hashed, cannot be indexed.

A :class:`FieldIndex` maps each value of one field of one concrete class
to the objects holding it (``value -> {oid: object}``), plus the value each
object is filed under, so that an object is taken out of the index without
reading its field again. Values compare as dict keys do (``1`` and ``1.0``
are one key); a value that cannot be hashed after all (a field annotated
``Any`` holding a list) is kept aside in :attr:`FieldIndex.odd`, which every
lookup returns too, for the caller to compare.

The indexes of a table live beside its extents
(:class:`~memimg.core._extents.Extents`), are filled with them and kept
current by the table's applier (:meth:`ObjectTable.field_set`): a table
whose classes declare no index does no index work at all.

The index of a unique field also notices a value filed for a second
holder -- in its own class or, through its :attr:`FieldIndex.peers`, in
another class the field is unique among: the committed state has such a
value only while one of the holders is unreachable and not collected yet
(its successor took the value over). The value is then *shadowed*
(:attr:`FieldIndex.shadows`, one set per table), and a commit that links
existing objects back into the graph checks it (see
:mod:`memimg.image._unique`) -- until the value is filed for one holder
again (:meth:`FieldIndex.remove` drops it then: a transaction swapping two
holders' values passes through a value filed twice). ``None`` is never
shadowed: it is no value of a unique field (any number of instances may
hold it).
"""

from __future__ import annotations

import sys
import types
import typing
from collections import abc
from collections.abc import Callable
from typing import Any, Final, final

import attrs

__all__ = ["UNIQUE", "FieldIndex", "check_declaration", "indexed_fields", "unique_root"]

#: the key an object holding an unhashable value is filed under (see :attr:`FieldIndex.odd`)
_ODD: Final = object()
_ABSENT: Final = object()

#: ``class -> {field: unique root class, or None for an index that is not unique}`` (an empty dict: none)
_SPECS: dict[type, dict[str, type | None]] = {}

#: the classes with unique fields (seen so far): while there are none, commits check nothing
UNIQUE: set[type] = set()

_COLLECTIONS: Final = (list, dict, set, bytearray)
_MUTABLE_ABCS: Final = (abc.MutableSequence, abc.MutableMapping, abc.MutableSet, abc.Mapping)


def _options(a: Any) -> dict[str, Any]:
    opts: dict[str, Any] = a.metadata.get("memimg", {}) if a.metadata else {}
    return opts


def indexed_fields(cls: type) -> dict[str, type | None]:
    """The indexed fields of entity class *cls*: ``field -> the class a unique field is unique among``
    (``None``: indexed, not unique). Empty for a class with none, or that is not an attrs class."""
    spec = _SPECS.get(cls)
    if spec is None:
        spec = {}
        if attrs.has(cls):
            for a in attrs.fields(cls):
                opts = _options(a)
                if opts.get("unique"):
                    spec[a.name] = unique_root(cls, a.name)
                    UNIQUE.add(cls)
                elif opts.get("index"):
                    spec[a.name] = None
        _SPECS[cls] = spec
    return spec


def unique_root(cls: type, name: str) -> type:
    """The most basic class among *cls* and its bases that declares field *name* unique: its values are
    unique among the instances of that class and of all its subclasses."""
    for base in reversed(cls.__mro__):
        if attrs.has(base):
            f = getattr(attrs.fields(base), name, None)
            if f is not None and _options(f).get("unique"):
                return base
    return cls


def _unhashable(tp: Any) -> str | None:
    """Why values of annotation *tp* cannot be indexed, or None when they can (or it cannot be told)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(tp):
            why = _unhashable(arg)
            if why is not None:
                return why
        return None
    if origin is typing.Annotated:
        return _unhashable(typing.get_args(tp)[0])
    base = origin if origin is not None else tp
    if not isinstance(base, type):
        return None
    if issubclass(base, _COLLECTIONS) or base in _MUTABLE_ABCS:
        return f"{_name(tp)} is a collection"
    if getattr(base, "__hash__", None) is None:
        return f"instances of {_name(tp)} cannot be hashed"
    return None


def _name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _check_inherited(cls: type) -> None:
    """Refuse a field that a base class declares unique, redeclared without ``unique=True``."""
    for a in attrs.fields(cls):
        if _options(a).get("unique"):
            continue
        for base in cls.__mro__[1:]:
            if attrs.has(base):
                f = getattr(attrs.fields(base), a.name, None)
                if f is not None and _options(f).get("unique"):
                    raise TypeError(
                        f"{cls.__qualname__}.{a.name}: {base.__qualname__}.{a.name} is unique, and a subclass "
                        f"cannot drop the constraint (its instances are {base.__qualname__}s too); declare it "
                        f"again with memimg.field(unique=True, ...), or do not redeclare it"
                    )


def check_declaration(cls: type, localns: dict[str, Any] | None = None) -> None:
    """Refuse ``index=True`` / ``unique=True`` on a field whose values cannot be indexed, and a subclass
    redeclaring a unique field without ``unique=True``.

    Raises:
        TypeError: a collection field, or one whose type's instances are unhashable (naming class and field);
            a unique field redeclared without the constraint (naming both classes).
    """
    _check_inherited(cls)
    fields = [a for a in attrs.fields(cls) if _options(a).get("index") or _options(a).get("unique")]
    if not fields:
        return
    try:
        hints = typing.get_type_hints(cls, localns=localns, include_extras=True)
    except Exception:  # some annotation cannot be resolved (yet): each field's on its own
        hints = {}
    module = sys.modules.get(cls.__module__)
    for a in fields:
        tp = hints.get(a.name, a.type)
        if isinstance(tp, str):
            try:
                tp = eval(tp, dict(vars(module)) if module else {}, dict(localns or {}))
            except Exception:  # not resolvable here (a name local to a function): values are checked as they come
                continue
        if tp is None:
            continue
        why = _unhashable(tp)
        if why is not None:
            option = "unique=True" if _options(a).get("unique") else "index=True"
            raise TypeError(
                f"{cls.__qualname__}.{a.name}: memimg.field({option}) needs hashable values, and {why}; index "
                "scalar fields (str, int, ...), value objects (frozen attrs classes) or references to entities, "
                "or keep a dict of your own in the model"
            )


@final
class FieldIndex:
    """The objects of one concrete class by the value of one field (see the module docstring)."""

    __slots__ = ("by_value", "getter", "key", "keys", "odd", "peers", "shadows")

    def __init__(
        self, getter: Callable[[Any], Any], key: tuple[type, str] | None = None, shadows: dict[Any, Any] | None = None
    ) -> None:
        self.getter = getter
        #: for a unique field, ``(the class it is unique in, field)``; None for an index that is not unique
        self.key = key
        #: for a unique field, the table's shadowed values: ``(root, field, value)`` filed for two holders
        #: (see :attr:`Extents.shadowed <memimg.core._extents.Extents.shadowed>`)
        self.shadows = shadows
        #: for a unique field, the indexes of the same field of the other classes it is unique among
        self.peers: list[FieldIndex] = []
        #: ``value -> {oid: object}``
        self.by_value: dict[Any, dict[int, Any]] = {}
        #: ``oid -> the value it is filed under`` (:data:`_ODD` for an unhashable one)
        self.keys: dict[int, Any] = {}
        #: ``oid -> object`` holding a value that cannot be hashed
        self.odd: dict[int, Any] = {}

    def file(self, oid: int, obj: Any) -> None:
        """File *obj* under its field's current value (nothing if the field is unset)."""
        try:
            value = self.getter(obj)
        except AttributeError:
            return
        self.add(oid, obj, value)

    def add(self, oid: int, obj: Any, value: Any) -> None:
        try:
            d = self.by_value.get(value)
            if d is None:
                d = self.by_value[value] = {}
        except Exception:  # unhashable (or a __hash__ that fails): compared by the caller
            self.odd[oid] = obj
            self.keys[oid] = _ODD
            return
        d[oid] = obj
        self.keys[oid] = value
        # None is no value of a unique field (any number of instances may hold it): never shadowed
        if (
            self.shadows is not None
            and value is not None
            and (len(d) > 1 or any(value in p.by_value for p in self.peers))
        ):
            self.shadows.setdefault((*self.key, value), None)  # type: ignore[misc]

    def remove(self, oid: int) -> None:
        key = self.keys.pop(oid, _ABSENT)
        if key is _ABSENT:
            return
        if key is _ODD:
            self.odd.pop(oid, None)
            return
        d = self.by_value.get(key)
        if d is not None:
            d.pop(oid, None)
            if not d:
                del self.by_value[key]
        # back to one holder (or none), here and in the peers: no longer shadowed
        shadows = self.shadows
        if (
            shadows
            and (*self.key, key) in shadows  # type: ignore[misc]
            and len(d or ()) + sum(len(p.by_value.get(key, ())) for p in self.peers) < 2
        ):
            del shadows[(*self.key, key)]  # type: ignore[misc]

    def lookup(self, value: Any) -> list[Any]:
        """The objects filed under *value*, and those holding unhashable values (for the caller to compare)."""
        try:
            d = self.by_value.get(value)
        except Exception:  # an unhashable value: only an unhashable value may equal it
            d = None
        found = list(d.values()) if d else []
        if self.odd:
            found += self.odd.values()
        return found
