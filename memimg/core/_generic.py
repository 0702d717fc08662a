"""Generic stand-ins: reading an image without the classes that wrote it.

Tools (the ``memimg`` command line, ``verify``, ``export``) must open any
image, even where the application's classes cannot be imported. With
``memimg.open(..., generic_types=True)``, a stored type name that no class
claims gets a class made on the spot from the schema the log declares:

* an entity type becomes a ``@persistent`` class with the stored name and
  fields (each defaulting to ``None``);
* a value type becomes a frozen attrs class likewise;
* an enum member becomes an :class:`EnumValue`, a user value type a
  :class:`CustomValue` -- both written back exactly as they were read.

Stand-ins round-trip: an image read this way and written again (a snapshot,
an export) stores the same names, fields and values.

The entity stand-ins are ``@persistent`` classes, which the core cannot make
(it imports nothing of the model): the image layer makes them
(:mod:`memimg.image._generic`) and hands the maker to the reader.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from typing import Any

import attrs

from memimg._errors import CorruptLogError
from memimg.core import _types

__all__ = ["CustomValue", "EnumValue", "StandInMaker", "check_fields", "class_name", "stand_in_fields", "value_class"]

#: Makes the stand-in class of a stored type: ``(name, fields, version, is_value, field types) -> TypeInfo``.
StandInMaker = Callable[[str, tuple[str, ...], int, bool, tuple[str, ...] | None], _types.TypeInfo]


def _member(m: Any) -> Any:
    return tuple(m) if type(m) is list else m  # a list of flags' names: hashable, as a tuple


@attrs.frozen
class EnumValue:
    """An enum member whose class is not loaded: its type name and member name.

    A combination of flags has the tuple of its members' names.
    """

    type_name: str
    member: str | tuple[str, ...] = attrs.field(converter=_member)

    def __repr__(self) -> str:
        return f"<{self.type_name}.{self.member}>"


@attrs.frozen
class CustomValue:
    """A user value type that is not loaded: its type name and stored data."""

    type_name: str
    data: Any = attrs.field(hash=False)

    def __hash__(self) -> int:
        return hash((self.type_name, repr(self.data)))

    def __repr__(self) -> str:
        return f"<{self.type_name} {self.data!r}>"


def class_name(name: str) -> str:
    short = name.rsplit(".", 1)[-1]
    return re.sub(r"\W", "_", short) or "Generic"


def check_fields(name: str, fields: Any) -> None:
    """Refuse declared field names no class of ours can have (attrs writes field names into the code
    it generates for a stand-in, so a crafted one must never get there).

    Raises:
        CorruptLogError: a name is not an identifier, is a keyword, or is private to Python or memimg.
    """
    for f in fields:
        if type(f) is not str or not f.isidentifier() or keyword.iskeyword(f) or f.startswith(("__", "_mi_")):
            raise CorruptLogError(
                f"the log declares type {name!r} with a field named {f!r}, which no persistent or frozen "
                "attrs class has: the log was damaged or crafted; restore it from a backup",
                seq=None,
                table="",
            )


def stand_in_fields(name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    check_fields(name, fields)
    return {f: attrs.field(default=None) for f in fields}


_UNSET: Any = object()


def value_class(name: str, fields: tuple[str, ...], version: int) -> _types.TypeInfo:
    """A frozen attrs stand-in for the stored value type *name*.

    A value stored under an older declaration lacks the fields added since,
    which stay unset (so it is written back as it was); equality and hashing
    go by the fields it has, so such values can still be set members and
    dict keys.
    """
    cls = attrs.make_class(class_name(name), stand_in_fields(name, fields), frozen=True, eq=False)
    cls.__module__ = "memimg.generic"

    def key(self: Any) -> tuple[Any, ...]:
        return tuple([getattr(self, f, _UNSET) for f in fields])

    def __eq__(self: Any, other: Any) -> Any:
        if type(other) is not type(self):
            return NotImplemented
        return key(self) == key(other)

    def __hash__(self: Any) -> int:
        return hash(key(self))

    cls.__eq__ = __eq__  # type: ignore[method-assign,assignment]
    cls.__hash__ = __hash__  # type: ignore[method-assign,assignment]
    info = _types.TypeInfo(
        cls=cls,
        name=name,
        kind=_types.VALUE,
        version=version,
        fields=tuple(fields),
        stand_in=True,
    )
    return _types.register(info)
