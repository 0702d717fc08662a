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
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from memimg.model import _types

__all__ = ["CustomValue", "EnumValue", "entity_class", "value_class"]


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


def _class_name(name: str) -> str:
    short = name.rsplit(".", 1)[-1]
    return re.sub(r"\W", "_", short) or "Generic"


def _fields(fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: attrs.field(default=None) for f in fields}


def entity_class(name: str, fields: tuple[str, ...], version: int) -> _types.TypeInfo:
    """A ``@persistent`` stand-in for the stored entity type *name*."""
    from memimg.model._persistent import persistent

    ns: dict[str, Any] = {"__annotations__": dict.fromkeys(fields, "Any"), "__module__": "memimg.generic"}
    ns.update(_fields(fields))
    ns["__qualname__"] = _class_name(name)
    built = persistent(name=name, version=version)(type(_class_name(name), (), ns))
    info = _types.info_of(built)
    assert info is not None
    return info


def value_class(name: str, fields: tuple[str, ...], version: int) -> _types.TypeInfo:
    """A frozen attrs stand-in for the stored value type *name*."""
    cls = attrs.make_class(_class_name(name), _fields(fields), frozen=True)
    cls.__module__ = "memimg.generic"
    info = _types.TypeInfo(
        cls=cls,
        name=name,
        kind=_types.VALUE,
        version=version,
        fields=tuple(fields),
        defaults=dict.fromkeys(fields),
    )
    return _types.register(info)
