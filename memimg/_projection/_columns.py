"""Columns of the SQL projection: the SQL type of each field, from its annotation, and its values as SQL values.

Each entity field is one column, whose *kind* comes from the field's
annotation (``Optional[X]`` and ``X | None`` are ``X``):

========================  ==========================  ==========================
annotation                PostgreSQL                  SQLite
========================  ==========================  ==========================
``bool``                  ``BOOLEAN``                 ``BOOLEAN`` (0/1)
``int``                   ``BIGINT``                  ``BIGINT``
``float``                 ``DOUBLE PRECISION``        ``DOUBLE`` (REAL)
``str``                   ``TEXT``                    ``TEXT``
``bytes``                 ``BYTEA``                   ``BLOB``
``Decimal``               ``NUMERIC`` (exact)         ``TEXT`` (exact: "10.50")
``Fraction``              ``TEXT`` ("1/3")            ``TEXT``
``datetime``              ``TIMESTAMPTZ`` (naive: UTC)  ``TEXT`` (ISO 8601)
``date``                  ``DATE``                    ``DATE`` (ISO text)
``time``                  ``TEXT`` (ISO 8601)         ``TEXT``
``timedelta``             ``INTERVAL``                ``DOUBLE`` (seconds)
``UUID``                  ``UUID``                    ``CHAR(32)`` (hex)
an ``Enum``               ``TEXT`` (member name)      ``TEXT``
a ``@persistent`` class   ``BIGINT`` (its oid)        ``BIGINT``
anything else             ``JSONB``                   ``JSON`` (text)
========================  ==========================  ==========================

"Anything else" is collections (``list[...]``, ``dict[...]``, ``set[...]``,
tuples), value objects, unions, ``Any``, and fields without an annotation
the code can resolve (the command line's stand-in classes, when the
application's module is not imported): their values are written as JSON
(:func:`content`), tracked collections with their items, entities inside
them as ``{"$ref": oid}``, other values as :mod:`memimg.core._plain` spells
them.

On PostgreSQL a NUL character in a string (a ``TEXT`` column or inside JSON) is written as U+FFFD (``\ufffd``):
PostgreSQL's text types cannot hold NUL. SQLite keeps it.

A value that does not fit its column (a ``str`` in a field annotated
``int``, an int past BIGINT) raises :class:`Misfit`, which the projection
turns into an error naming the object and the field.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import fractions
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from memimg.core import _types
from memimg.core._generic import EnumValue
from memimg.core._history import Collected
from memimg.core._plain import plain
from memimg.model import TrackedDict, TrackedList, TrackedSet

__all__ = ["KINDS", "Misfit", "Walk", "column_type", "encoder", "kinds_of"]

#: the kinds of column, by the name the meta table stores
KINDS: Final = (
    "bool",
    "int",
    "float",
    "str",
    "bytes",
    "decimal",
    "fraction",
    "datetime",
    "date",
    "time",
    "timedelta",
    "uuid",
    "enum",
    "ref",
    "json",
)

_BIGINT: Final = 2**63
_SCALARS: Final[tuple[tuple[type, str], ...]] = (
    (bool, "bool"),
    (enum.Enum, "enum"),  # before int and str: an IntEnum is an int
    (int, "int"),
    (float, "float"),
    (str, "str"),
    (bytes, "bytes"),
    (decimal.Decimal, "decimal"),
    (fractions.Fraction, "fraction"),
    (dt.datetime, "datetime"),  # before date: a datetime is a date
    (dt.date, "date"),
    (dt.time, "time"),
    (dt.timedelta, "timedelta"),
    (uuid.UUID, "uuid"),
)


class Misfit(Exception):
    """A value does not fit the column its field's annotation gives (see the module docstring)."""


def kinds_of(info: _types.TypeInfo) -> dict[str, str]:
    """``field -> kind`` for entity class *info*, from its annotations (unresolvable ones: ``"json"``)."""
    try:
        hints = typing.get_type_hints(info.cls)
    except Exception:  # a forward reference the module cannot resolve, or a stand-in class
        hints = {}
    return {f: _kind(hints.get(f, Any)) for f in info.fields}


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _kind(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _kind(args[0]) if len(args) == 1 else "json"
    if origin is not None or not isinstance(tp, type):
        return "json"
    for base, kind in _SCALARS:
        if issubclass(tp, base):
            return kind
    info = _types.info_of(tp)
    return "ref" if info is not None and info.kind == _types.ENTITY else "json"


def column_type(kind: str, dialect: str) -> Any:
    """The SQLAlchemy type of a column of *kind* on *dialect* (``"postgresql"`` or ``"sqlite"``)."""
    pg = dialect == "postgresql"
    if kind == "bool":
        return sa.Boolean()
    if kind in ("int", "ref"):
        return sa.BigInteger()
    if kind == "float":
        return sa.Double()
    if kind == "bytes":
        return sa.LargeBinary()
    if kind == "decimal":
        return sa.Numeric() if pg else sa.Text()
    if kind == "datetime":
        return sa.DateTime(timezone=True) if pg else sa.Text()
    if kind == "date":
        return sa.Date()
    if kind == "timedelta":
        return sa.Interval() if pg else sa.Double()
    if kind == "uuid":
        return sa.Uuid()
    if kind == "json":
        return postgresql.JSONB(none_as_null=True) if pg else sa.JSON(none_as_null=True)
    return sa.Text()  # str, fraction, time, enum


def encoder(kind: str, dialect: str) -> Callable[[Any, Walk], Any]:
    """The function giving a non-None value's SQL value in a column of *kind* (raises :class:`Misfit`)."""
    pg = dialect == "postgresql"

    def misfit(value: Any, what: str) -> Misfit:
        return Misfit(f"holds a {type(value).__qualname__} ({_short(value)}), not {what}")

    def enc_bool(v: Any, walk: Walk) -> Any:
        if type(v) is not bool:
            raise misfit(v, "a bool")
        return v

    def enc_int(v: Any, walk: Walk) -> Any:
        if not isinstance(v, int) or isinstance(v, enum.Enum):
            raise misfit(v, "an int")
        if not -_BIGINT <= v < _BIGINT:
            raise Misfit(f"holds {_short(v)}, past the range of a BIGINT column (64-bit)")
        return int(v)

    def enc_float(v: Any, walk: Walk) -> Any:
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise misfit(v, "a float")
        return float(v)

    def enc_str(v: Any, walk: Walk) -> Any:
        if not isinstance(v, str) or isinstance(v, enum.Enum):
            raise misfit(v, "a str")
        return _without_nul(str(v)) if pg else str(v)

    def enc_bytes(v: Any, walk: Walk) -> Any:
        if not isinstance(v, bytes | bytearray):
            raise misfit(v, "bytes")
        return bytes(v)

    def enc_decimal(v: Any, walk: Walk) -> Any:
        if isinstance(v, bool) or not isinstance(v, decimal.Decimal | int):
            raise misfit(v, "a Decimal")
        d = decimal.Decimal(v)
        return d if pg else str(d)

    def enc_fraction(v: Any, walk: Walk) -> Any:
        if isinstance(v, bool) or not isinstance(v, fractions.Fraction | int):
            raise misfit(v, "a Fraction")
        f = fractions.Fraction(v)
        return f"{f.numerator}/{f.denominator}"

    def enc_datetime(v: Any, walk: Walk) -> Any:
        if not isinstance(v, dt.datetime):
            raise misfit(v, "a datetime")
        if pg:
            return v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)
        return v.isoformat()

    def enc_date(v: Any, walk: Walk) -> Any:
        if not isinstance(v, dt.date) or isinstance(v, dt.datetime):
            raise misfit(v, "a date")
        return v

    def enc_time(v: Any, walk: Walk) -> Any:
        if not isinstance(v, dt.time):
            raise misfit(v, "a time")
        return v.isoformat()

    def enc_timedelta(v: Any, walk: Walk) -> Any:
        if not isinstance(v, dt.timedelta):
            raise misfit(v, "a timedelta")
        return v if pg else v.total_seconds()

    def enc_uuid(v: Any, walk: Walk) -> Any:
        if not isinstance(v, uuid.UUID):
            raise misfit(v, "a UUID")
        return v

    def enc_enum(v: Any, walk: Walk) -> Any:
        if type(v) is EnumValue:  # read without its class (the command line)
            return "|".join(v.member) if type(v.member) is tuple else v.member
        if not isinstance(v, enum.Enum):
            raise misfit(v, "an Enum member")
        name = v.name
        if name is None or (isinstance(v, enum.Flag) and "|" in name):
            return "|".join(m.name or "" for m in v)
        return name

    def enc_ref(v: Any, walk: Walk) -> Any:
        if type(v) is Collected:
            return v.oid
        info = _types.info_of(type(v))
        if info is None or info.kind != _types.ENTITY:
            raise misfit(v, "a persistent object")
        oid = v._mi_oid
        if oid is not None:  # None: collected as the row is read (so is the object holding it: its row goes)
            walk.entity(v)
        return oid

    def enc_json(v: Any, walk: Walk) -> Any:
        return _without_nul(walk.content(v)) if pg else walk.content(v)

    found: dict[str, Callable[[Any, Walk], Any]] = {
        "bool": enc_bool,
        "int": enc_int,
        "float": enc_float,
        "str": enc_str,
        "bytes": enc_bytes,
        "decimal": enc_decimal,
        "fraction": enc_fraction,
        "datetime": enc_datetime,
        "date": enc_date,
        "time": enc_time,
        "timedelta": enc_timedelta,
        "uuid": enc_uuid,
        "enum": enc_enum,
        "ref": enc_ref,
        "json": enc_json,
    }
    return found[kind]


def _without_nul(value: Any) -> Any:
    """*value* (a str, or JSON content) with every NUL character in its strings made U+FFFD: PostgreSQL's
    ``TEXT`` and ``JSONB`` cannot hold NUL, and one such string must not stop the projection."""
    t = type(value)
    if t is str:
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if t is list:
        return [_without_nul(v) for v in value]
    if t is dict:
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Walk:
    """What encoding one entity's row met: the tracked collections it spelled out, the entities it referenced.

    :meth:`content` gives a value as JSON data: a tracked collection with its
    items (a list as an array; a set as an array in a stable order; a dict
    as an object if all its keys are strings, else as an array of ``[key,
    value]`` pairs), an entity as ``{"$ref": oid}``, a collection met again
    inside itself (a cycle) as ``{"$ref": oid}``, and any other value as
    :func:`memimg.core._plain.plain` spells it.
    """

    __slots__ = ("_open", "collections", "entities")

    def __init__(self) -> None:
        self.collections: set[int] = set()
        self.entities: list[Any] = []
        self._open: set[int] = set()

    def entity(self, obj: Any) -> None:
        self.entities.append(obj)

    def content(self, value: Any) -> Any:
        if isinstance(value, TrackedList | TrackedDict | TrackedSet):
            oid = value._mi_oid
            if oid is None or oid in self._open:
                return {"$ref": oid}
            self.collections.add(oid)
            self._open.add(oid)
            try:
                # copies made in one call: another thread's commit may change the collection meanwhile
                if isinstance(value, TrackedList):
                    return [self.content(v) for v in list.copy(value)]
                if isinstance(value, TrackedSet):
                    items = [self.content(v) for v in set.copy(value)]
                    return sorted(items, key=repr)
                pairs = list(dict.copy(value).items())
                if all(type(k) is str for k, _ in pairs):
                    return {k: self.content(v) for k, v in pairs}
                return [[self.content(k), self.content(v)] for k, v in pairs]
            finally:
                self._open.discard(oid)
        t = type(value)
        if hasattr(t, "_mi_oid"):  # an entity (tracked collections are above)
            if value._mi_oid is not None:
                self.entities.append(value)
            return {"$ref": value._mi_oid}
        elif t is tuple:
            return [self.content(v) for v in value]
        elif t is frozenset:
            return {"$frozenset": sorted((self.content(v) for v in value), key=repr)}
        else:
            info = _types.info_of(t) if not (value is None or t in _types.NATIVE_TYPES) else None
            if info is not None and info.kind == _types.VALUE:
                return {"$type": info.name, **{f: self.content(getattr(value, f, None)) for f in info.fields}}
        return plain(value)
