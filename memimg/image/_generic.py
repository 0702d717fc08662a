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

import keyword
import re
from typing import Any

import attrs

from memimg._errors import CorruptLogError, UnknownTypeError
from memimg.core import _types

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


def _fields(name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    check_fields(name, fields)
    return {f: attrs.field(default=None) for f in fields}


def entity_class(name: str, fields: tuple[str, ...], version: int) -> _types.TypeInfo:
    """A ``@persistent`` stand-in for the stored entity type *name*."""
    from memimg.model._persistent import persistent

    ns: dict[str, Any] = {"__annotations__": dict.fromkeys(fields, "Any"), "__module__": "memimg.generic"}
    ns.update(_fields(name, fields))
    ns["__qualname__"] = _class_name(name)
    built = persistent(name=name, version=version)(type(_class_name(name), (), ns))
    info = _types.info_of(built)
    assert info is not None
    info.stand_in = True
    info.defaults = {}  # a field a stored state lacks stays unset, so it is written back without it
    return info


_UNSET: Any = object()


def value_class(name: str, fields: tuple[str, ...], version: int) -> _types.TypeInfo:
    """A frozen attrs stand-in for the stored value type *name*.

    A value stored under an older declaration lacks the fields added since,
    which stay unset (so it is written back as it was); equality and hashing
    go by the fields it has, so such values can still be set members and
    dict keys.
    """
    cls = attrs.make_class(_class_name(name), _fields(name, fields), frozen=True, eq=False)
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


def prepare(store: Any, removed_types: frozenset[str]) -> None:
    """Make stand-ins, before reading *store*, for every type its log declares and no class claims.

    Each stand-in gets every field any declaration of its name lists (and
    the newest version), so states written by successive versions of a class
    -- fields added over time -- are all read and written back whole. A
    stand-in made by an earlier read (of another image) is made again.
    """
    import orjson

    found: dict[str, tuple[int, dict[str, None], bool]] = {}

    def note(types: dict[str, Any], seq: int, table: str) -> None:
        for name, decl in types.items():
            try:
                version, fields = decl[0], decl[1]
                check_fields(name, fields)
            except (CorruptLogError, TypeError, IndexError, KeyError) as err:
                where = "snapshot at seq" if table == "memimg_snapshots" else "event seq"
                detail = err if isinstance(err, CorruptLogError) else f"a malformed declaration of {name!r} ({err!r})"
                raise CorruptLogError(f"{where} {seq}: {detail}", seq=seq, table=table) from None
            value = len(decl) > 2 and decl[2] == "value"
            old = found.get(name)
            if old is None:
                found[name] = (version, dict.fromkeys(fields), value)
            else:
                old[1].update(dict.fromkeys(fields))
                found[name] = (max(old[0], version), old[1], old[2] or value)

    for info in store.snapshots():
        payload = store.read_snapshot(info.seq)[2]
        end = payload.find(b"\n")
        try:
            header = orjson.loads(payload if end < 0 else payload[:end])
        except orjson.JSONDecodeError:
            continue  # a corrupt snapshot: recovery skips it, with a warning
        if isinstance(header, dict):
            note(header.get("types") or {}, info.seq, "memimg_snapshots")
    for row in store.read(after=0):
        payload = row[5]
        if payload.endswith(b"}]"):  # declarations come last: [args, records, types]
            try:
                parts = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # reported by the replay, with its seq
            if len(parts) > 2 and isinstance(parts[2], dict):
                note(parts[2], row[0], "memimg_events")
    for name, (version, fields, value) in found.items():
        if name in removed_types:
            continue
        try:
            info = _types.resolve(name)
        except UnknownTypeError:
            info = None
        if info is None or info.stand_in:
            (value_class if value else entity_class)(name, tuple(fields), version)
