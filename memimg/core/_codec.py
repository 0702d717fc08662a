"""Value encoding: the one place where value types become JSON and come back.

A stored value is JSON data. Strings, booleans, ``None``, 64-bit ints and
finite floats are themselves; everything else is a list whose first item is a
tag (lists are never values -- a list is a tracked object -- so a JSON array
in a value position is always tagged):

====================  ==========================================
``["r", oid]``        a reference to an entity or tracked collection
``["i", "123..."]``   an int outside the 64-bit range: decimal, or hex (``"0x..."``,
                      ``"-0x..."``) past 4,300 digits (see :func:`int_text`)
``["f", "nan"]``      ``nan``, ``inf``, ``-inf``
``["b", "base64"]``   ``bytes``
``["D", "1.50"]``     ``Decimal`` (exponent kept)
``["Q", "1/3"]``      ``Fraction`` (each part as :func:`int_text` writes it)
``["dt", iso, tz?, fold?]``  ``datetime`` (``tz``: an IANA key for zoneinfo, or
                      ``[name, offset_us]`` for a named ``timezone``)
``["d", iso]``        ``date``
``["t", iso, tz?, fold?]``   ``time``
``["td", d, s, us]``  ``timedelta``
``["u", hex]``        ``UUID``
``["T", [..]]``       ``tuple``;  ``["F", [..]]`` ``frozenset``
``["e", type, name]`` an ``Enum`` member (a flag combination: a list of names)
``["v", type, {..}]`` a frozen attrs instance (a value object), by field
``["x", type, data]`` a user value type, as its converter hooks make it
====================  ==========================================

:class:`Converter` is a ``cattrs.Converter`` that knows all of these; user
value types are registered on it (``register_value``), with cattrs hooks.
:class:`Codec` is the fast path built from one converter: dispatch on the
exact type, cached per type, the cache cleared when the converter changes.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import functools
import math
import operator
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import attrs
import cattrs

from memimg._errors import CorruptLogError, MemimgError, UnknownTypeError, UnsupportedValueError
from memimg.core import _types
from memimg.image import _generic
from memimg.model._base import PersistentBase
from memimg.model._collections import TrackedDict, TrackedList, TrackedSet

__all__ = [
    "Codec",
    "Converter",
    "Gone",
    "converter",
    "describe_unsupported",
    "int_from_text",
    "int_text",
    "is_gone",
    "kind_mismatch",
]

INT_MAX: Final = 2**63 - 1
INT_MIN: Final = -(2**63)
#: Ints of fewer digits are stored in decimal; Python's default limit on int <-> str
#: conversion (``sys.set_int_max_str_digits``) is 4,300 digits, so any reader can parse them.
_DECIMAL_BOUND: Final = 10**4300
#: Digits per ``int()`` call when reading a decimal longer than this process's limit.
_DECIMAL_CHUNK: Final = 640

Enc = Callable[[Any], Any]
Dec = Callable[[list[Any]], Any]


def _tz_parts(tz: dt.tzinfo | None) -> str | list[Any] | None:
    """How a tzinfo is stored beside a naive ISO string, or None if the ISO offset says it all."""
    if tz is None:
        return None
    if isinstance(tz, zoneinfo.ZoneInfo):
        if tz.key is None:
            raise UnsupportedValueError(
                "cannot store a datetime whose ZoneInfo has no key (made with ZoneInfo.from_file): "
                "its rules could not be found again on reading; use zoneinfo.ZoneInfo('Area/City')",
                value_type=type(tz),
                where="",
            )
        return tz.key
    if isinstance(tz, dt.timezone):
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        if name == dt.timezone(offset).tzname(None):
            return None  # the ISO offset is enough
        return [name, offset // dt.timedelta(microseconds=1)]
    raise UnsupportedValueError(
        f"cannot store a datetime whose tzinfo is {type(tz).__qualname__}: use datetime.timezone "
        "or zoneinfo.ZoneInfo, or register the type with memimg.converter.register_value",
        value_type=type(tz),
        where="",
    )


def _tz_from(stored: str | list[Any]) -> dt.tzinfo:
    if type(stored) is list:  # a named fixed offset: [name, offset in microseconds]
        return dt.timezone(dt.timedelta(microseconds=stored[1]), stored[0])
    return zoneinfo.ZoneInfo(stored)  # type: ignore[arg-type]


def _enc_datetime(v: dt.datetime) -> list[Any]:
    key = _tz_parts(v.tzinfo)
    if key is not None:
        return ["dt", v.replace(tzinfo=None).isoformat(), key, v.fold]
    return ["dt", v.isoformat()] if not v.fold else ["dt", v.isoformat(), None, 1]


def _dec_datetime(x: list[Any]) -> dt.datetime:
    value = dt.datetime.fromisoformat(x[1])
    if len(x) > 2:
        if x[2] is not None:
            value = value.replace(tzinfo=_tz_from(x[2]))
        value = value.replace(fold=x[3])
    return value


def _enc_time(v: dt.time) -> list[Any]:
    key = _tz_parts(v.tzinfo)
    if key is not None:
        return ["t", v.replace(tzinfo=None).isoformat(), key, v.fold]
    return ["t", v.isoformat()] if not v.fold else ["t", v.isoformat(), None, 1]


def _dec_time(x: list[Any]) -> dt.time:
    value = dt.time.fromisoformat(x[1])
    if len(x) > 2:
        if x[2] is not None:
            value = value.replace(tzinfo=_tz_from(x[2]))
        value = value.replace(fold=x[3])
    return value


def int_text(v: int) -> str:
    """How an int outside 64 bits is written: decimal up to 4,300 digits, hex beyond.

    Decimal is what every memimg has written and read, so ordinary big ints
    stay readable by older processes sharing the log; Python refuses
    decimal conversion past 4,300 digits (by default), but hex conversion
    has no limit, in either direction, and costs linear time.
    """
    if -_DECIMAL_BOUND < v < _DECIMAL_BOUND:
        try:
            return str(v)
        except ValueError:  # this process lowered the limit below 4,300 digits
            pass
    return hex(v)


def int_from_text(text: str) -> int:
    """The int :func:`int_text` wrote (hex or decimal, any length)."""
    if "x" in text[:3]:
        return int(text, 16)
    try:
        return int(text)
    except ValueError:
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()):
            raise
    # decimal past this process's limit (written where the limit was raised): read in pieces
    value = 0
    for i in range(0, len(digits), _DECIMAL_CHUNK):
        piece = digits[i : i + _DECIMAL_CHUNK]
        value = value * 10 ** len(piece) + int(piece)
    return -value if text[:1] == "-" else value


def _enc_fraction(v: Fraction) -> list[Any]:
    n, d = v.numerator, v.denominator
    if -_DECIMAL_BOUND < n < _DECIMAL_BOUND and d < _DECIMAL_BOUND:
        try:
            return ["Q", str(v)]
        except ValueError:
            pass
    return ["Q", f"{int_text(n)}/{int_text(d)}"]


def _dec_fraction(x: list[Any]) -> Fraction:
    text = x[1]
    if "x" not in text:
        try:
            return Fraction(text)
        except ValueError:  # perhaps a part longer than this process's int/str limit
            pass
    n, _, d = text.partition("/")
    return Fraction(int_from_text(n), int_from_text(d) if d else 1)


def _flag_encoder(cls: type[enum.Flag], name: str) -> Enc:
    """Flags by member name; a combination (or no flag) as the list of its members' names."""

    def enc(v: enum.Flag) -> Any:
        if v.name is not None and cls.__members__.get(v.name) is v:
            return ["e", name, v.name]
        members = [m for m in cls if m & v]
        names = [str(m.name) for m in members]
        rebuilt = functools.reduce(operator.or_, members, cls(0))
        if rebuilt != v:
            raise UnsupportedValueError(
                f"cannot store {v!r}: it has bits that no member of {cls.__qualname__} names; "
                "store only combinations of members; nothing was changed",
                value_type=cls,
                where="",
            )
        return ["e", name, names]

    return enc


@attrs.frozen
class _Leaf:
    """How one builtin value type is written and read back."""

    tag: str
    encode: Enc
    decode: Dec


_LEAVES: dict[type, _Leaf] = {
    bytes: _Leaf("b", lambda v: ["b", base64.b64encode(v).decode("ascii")], lambda x: base64.b64decode(x[1])),
    Decimal: _Leaf("D", lambda v: ["D", str(v)], lambda x: Decimal(x[1])),
    Fraction: _Leaf("Q", _enc_fraction, _dec_fraction),
    dt.datetime: _Leaf("dt", _enc_datetime, _dec_datetime),
    dt.date: _Leaf("d", lambda v: ["d", v.isoformat()], lambda x: dt.date.fromisoformat(x[1])),
    dt.time: _Leaf("t", _enc_time, _dec_time),
    dt.timedelta: _Leaf(
        "td",
        lambda v: ["td", v.days, v.seconds, v.microseconds],
        lambda x: dt.timedelta(days=x[1], seconds=x[2], microseconds=x[3]),
    ),
    uuid.UUID: _Leaf("u", lambda v: ["u", v.hex], lambda x: uuid.UUID(hex=x[1])),
}


def _structure_with(leaf: _Leaf) -> Callable[[Any, Any], Any]:
    def structure(data: Any, _: Any) -> Any:
        return leaf.decode(data)

    return structure


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


def is_gone(v: Any) -> bool:
    return type(v) is Gone


class Converter(cattrs.Converter):
    """The cattrs converter that knows every value type an image can store.

    memimg's builtin value types (``Decimal``, ``datetime``, ``UUID``...) are
    registered on it; register your own immutable types with
    :meth:`register_value`. Pass it to ``memimg.open(..., converter=...)``,
    or use the process-wide ``memimg.converter``, before opening an image
    whose log holds such values.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._leaves: dict[type, _Leaf] = dict(_LEAVES)
        self._custom: dict[type, str] = {}
        self.version = 0
        for cls, leaf in self._leaves.items():
            self.register_unstructure_hook(cls, leaf.encode)
            self.register_structure_hook(cls, _structure_with(leaf))

    def register_value(
        self,
        cls: type,
        *,
        name: str | None = None,
        aliases: tuple[str, ...] = (),
        unstructure: Callable[[Any], Any] | None = None,
        structure: Callable[[Any, type], Any] | None = None,
        version: int | None = None,
        removed: tuple[str, ...] = (),
    ) -> None:
        """Accept instances of *cls* as stored values.

        *cls* must be immutable: values are stored by value, not by identity.
        ``unstructure(value)`` must return JSON data (``str``, ``int``,
        ``float``, ``bool``, ``None``, lists and string-keyed dicts of them);
        ``structure(data, cls)`` rebuilds the value. Either may be omitted if
        hooks for *cls* are already registered on this converter with the
        usual cattrs API (or for frozen attrs classes, which are value types
        without registration; register them only to give a stable name).

        Args:
            name: the stable name stored in the log (default ``module.QualName``).
            aliases: older names still accepted when reading.
            version: for a frozen attrs class, its schema version: states
                stored under an older one go through the upgraders
                registered for *name* (``@memimg.upgrader``), as for entities.
            removed: for a frozen attrs class, stored fields it dropped on
                purpose (their stored values are ignored).
        """
        if (version is not None or removed) and not _types.is_value_class(cls):
            raise MemimgError(
                f"register_value({cls.__qualname__}, version=..., removed=...): only frozen attrs "
                "classes have a schema; a type with its own hooks evolves through them"
            )
        if unstructure is not None:
            self.register_unstructure_hook(cls, unstructure)
        if structure is not None:
            self.register_structure_hook(cls, structure)
        stable = name or _types.default_name(cls)
        existing = _types.info_of(cls)
        if existing is not None and existing.kind in (_types.VALUE, _types.ENUM) and unstructure is None:
            existing.name = stable
            existing.aliases = tuple(aliases)
            if version is not None:
                existing.version = version
            existing.removed = tuple(removed)
            _types.register(existing)
        else:
            _types.register(_types.TypeInfo(cls=cls, name=stable, kind=_types.CUSTOM, aliases=tuple(aliases)))
            self._custom[cls] = stable
        self.version += 1


#: The process-wide converter used by images opened without ``converter=``.
converter = Converter()


def describe_unsupported(value: Any, where: str) -> UnsupportedValueError:
    """The error for a value memimg cannot store, with what to do instead."""
    t = type(value)
    hint = "register it with memimg.converter.register_value (immutable values only)"
    if callable(value) and not isinstance(value, type):
        hint = "store data, not code: functions, methods and lambdas cannot be persisted"
    elif isinstance(value, type):
        hint = "classes are not values; store a name or an Enum member instead"
    elif t.__module__ in ("builtins", "_io", "io", "socket", "_thread", "threading") or hasattr(value, "close"):
        hint = "open files, sockets, locks, generators and other runtime resources cannot be persisted"
    elif attrs.has(t):
        hint = f"decorate {t.__qualname__} with @memimg.persistent (an entity) or make it frozen (a value)"
    elif isinstance(value, (list, dict, set)):
        hint = f"use a plain list, dict or set; {t.__qualname__} subclasses are not stored"
    elif hasattr(value, "__dict__"):
        hint = f"decorate {t.__qualname__} with @memimg.persistent, or {hint}"
    location = f" at {where}" if where else ""
    return UnsupportedValueError(
        f"cannot store a {t.__module__}.{t.__qualname__}{location}: {hint}; nothing was changed",
        value_type=t,
        where=where,
    )


def check_text(s: str, where: str) -> None:
    """Refuse a str that cannot be written as UTF-8 (it holds a lone surrogate)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as err:
        location = f" at {where}" if where else ""
        raise UnsupportedValueError(
            f"cannot store a str that is not valid UTF-8{location}: it holds a lone surrogate at index "
            f"{err.start} ({s[max(0, err.start - 10) : err.start + 10]!r}), as os.fsdecode makes of an "
            "undecodable file name; decode the bytes with the right encoding or errors='replace', or "
            "store them as bytes; nothing was changed",
            value_type=str,
            where=where,
        ) from None


# Shape classes, decided once per exact type by Codec.classify.
NATIVE: Final = "native"
LEAF: Final = "leaf"
TUPLE: Final = "tuple"
FROZENSET: Final = "frozenset"
ENUM: Final = "enum"
VALUE: Final = "value"
CUSTOM: Final = "custom"
ENTITY: Final = "entity"
TRACKED: Final = "tracked"
PLAIN: Final = "plain"  # a plain list/dict/set: converted to a tracked one when stored
UNSUPPORTED: Final = "unsupported"
GONE: Final = "gone"  # an object of a removed type, while replaying
GENERIC: Final = "generic"  # a stand-in for an enum member or user value whose class is not loaded


class Codec:
    """Encode and decode values for one converter; references go through *ref* / *deref*.

    ``ref(obj) -> oid`` is called for entities and tracked collections while
    encoding, ``deref(oid) -> obj`` while decoding; the graph supplies both.
    """

    def __init__(self, conv: Converter, ref: Callable[[Any], int], deref: Callable[[int], Any]) -> None:
        self.converter = conv
        self.ref = ref
        self.deref = deref
        self._seen_version = conv.version
        #: hooks the graph sets: how to decode a value object (schema-aware),
        #: and what to do when one is encoded (declare its schema)
        self.value_decoder: Callable[[list[Any]], Any] = self._no_value_decoder
        self.on_value: Callable[[Any], None] = lambda info: None
        #: read unknown enums and user values into stand-ins (tools)
        self.generic = False
        self._shapes: dict[type, str] = {}
        self._encoders: dict[type, Enc] = {}
        self._decoders: dict[str, Dec] = {}
        self._reset()

    def _reset(self) -> None:
        self._shapes = {str: NATIVE, bool: NATIVE, int: NATIVE, float: NATIVE, type(None): NATIVE}
        self._encoders = {}
        self._decoders = {
            "r": lambda x: self.deref(x[1]),
            "i": lambda x: int_from_text(x[1]),
            "f": lambda x: float(x[1]),
            "T": self._dec_tuple,
            "F": self._dec_frozenset,
            "e": self._dec_enum,
            "v": lambda x: self.value_decoder(x),
            "x": self._dec_custom,
        }
        for leaf in self.converter._leaves.values():
            self._decoders[leaf.tag] = leaf.decode
        self._seen_version = self.converter.version

    # -- classification -----------------------------------------------------

    def classify(self, t: type) -> str:
        """The shape of values of exact type *t* (see the constants above)."""
        if self._seen_version != self.converter.version:
            self._reset()
        shape = self._shapes.get(t)
        if shape is None:
            shape = self._classify(t)
            self._shapes[t] = shape
        return shape

    def _classify(self, t: type) -> str:
        if t is Gone:
            return GONE
        if t is _generic.EnumValue or t is _generic.CustomValue:
            return GENERIC
        if issubclass(t, PersistentBase):
            return ENTITY if _types.info_of(t) is not None else UNSUPPORTED
        if t in (TrackedList, TrackedDict, TrackedSet):
            return TRACKED
        if t in (list, dict, set):
            return PLAIN
        if t in self.converter._leaves:
            return LEAF
        if t is tuple:
            return TUPLE
        if t is frozenset:
            return FROZENSET
        if t in self.converter._custom:
            return CUSTOM
        if isinstance(t, enum.EnumMeta):
            return ENUM
        if _types.is_value_class(t):
            return VALUE
        return UNSUPPORTED

    # -- encoding -----------------------------------------------------------

    def encode(self, v: Any) -> Any:
        """JSON data for value *v* (already validated by the graph)."""
        t = type(v)
        if t is str or t is bool or v is None:
            return v
        if t is int:
            return v if INT_MIN <= v <= INT_MAX else ["i", int_text(v)]
        if t is float:
            return v if math.isfinite(v) else ["f", repr(v)]
        enc = self._encoders.get(t)
        if enc is None or self._seen_version != self.converter.version:
            enc = self._encoder_for(t)
        return enc(v)

    def _encoder_for(self, t: type) -> Enc:
        shape = self.classify(t)
        enc: Enc
        if shape in (ENTITY, TRACKED, PLAIN):  # plain containers only in free-standing graphs
            enc = lambda v: ["r", self.ref(v)]  # noqa: E731
        elif shape == GONE:
            enc = lambda v: ["r", v.oid] if v.oid else v.raw  # noqa: E731
        elif shape == GENERIC:
            if t is _generic.EnumValue:
                enc = lambda v: ["e", v.type_name, list(v.member) if type(v.member) is tuple else v.member]  # noqa: E731
            else:
                enc = lambda v: ["x", v.type_name, v.data]  # noqa: E731
        elif shape == LEAF:
            enc = self.converter._leaves[t].encode
        elif shape == TUPLE:
            enc = lambda v: ["T", [self.encode(i) for i in v]]  # noqa: E731
        elif shape == FROZENSET:
            enc = lambda v: ["F", [self.encode(i) for i in v]]  # noqa: E731
        elif shape == ENUM:
            name = _types.info_of(t).name  # type: ignore[union-attr]
            enc = _flag_encoder(t, name) if issubclass(t, enum.Flag) else lambda v: ["e", name, v.name]
        elif shape == VALUE:
            info = _types.info_of(t)
            assert info is not None
            fields = info.fields

            def enc(v: Any) -> Any:
                self.on_value(info)
                state = {}
                for f in fields:
                    try:
                        state[f] = self.encode(getattr(v, f))
                    except AttributeError:
                        pass
                return ["v", info.name, state]

        elif shape == CUSTOM:
            name = self.converter._custom[t]
            unstructure = self.converter.get_unstructure_hook(t)
            enc = lambda v: ["x", name, unstructure(v)]  # noqa: E731
        else:

            def enc(v: Any) -> Any:
                raise describe_unsupported(v, "")

        self._encoders[t] = enc
        return enc

    # -- decoding -----------------------------------------------------------

    def decode(self, x: Any) -> Any:
        """The value that JSON data *x* encodes."""
        if type(x) is list:
            try:
                dec = self._decoders[x[0]]
            except (KeyError, IndexError):
                raise CorruptLogError(f"unknown value tag in stored data: {x!r:.80}", seq=None, table="") from None
            return dec(x)
        return x

    def _dec_tuple(self, x: list[Any]) -> tuple[Any, ...]:
        return tuple([self.decode(i) for i in x[1]])

    def _dec_frozenset(self, x: list[Any]) -> frozenset[Any]:
        return frozenset([self.decode(i) for i in x[1]])

    def _no_value_decoder(self, x: list[Any]) -> Any:  # pragma: no cover - the graph sets one
        raise MemimgError("internal: this codec belongs to no graph, which decodes value objects")

    def _resolve(self, x: list[Any], stand_in: Callable[[str, Any], Any], kind: str) -> Any:
        """The class stored as ``x[1]``, of *kind*, or (for tools) a generic stand-in for the value.

        Raises:
            CorruptLogError: the name is of a class of another kind (see :func:`kind_mismatch`).
        """
        try:
            info = _types.resolve(x[1])
        except UnknownTypeError:
            if self.generic:
                return stand_in(x[1], x[2])
            raise
        if info.kind != kind:
            raise kind_mismatch(x[0], x[1], info)
        return info

    def _dec_enum(self, x: list[Any]) -> Any:
        info = self._resolve(x, _generic.EnumValue, _types.ENUM)
        if not isinstance(info, _types.TypeInfo):
            return info
        cls: Any = info.cls
        member = x[2]
        try:
            if type(member) is list:  # a combination of flags, by the names of its members
                return functools.reduce(operator.or_, (cls[m] for m in member), cls(0))
            return cls[member]
        except KeyError as err:
            member = err.args[0] if err.args else member
            raise UnknownTypeError(
                f"enum {x[1]} has no member {member!r} any more: add it back, or add an alias "
                f"member ({member} = <its value>) so stored values can be read",
                type_name=x[1],
            ) from None

    def _dec_custom(self, x: list[Any]) -> Any:
        info = self._resolve(x, _generic.CustomValue, _types.CUSTOM)
        if not isinstance(info, _types.TypeInfo):
            return info
        return self.converter.structure(x[2], info.cls)


#: What each value tag stores, and each kind of class is, in messages.
_TAG_KINDS: Final = {"e": _types.ENUM, "v": _types.VALUE, "x": _types.CUSTOM}
_KIND_TEXT: Final = {
    _types.ENTITY: "an entity class (@persistent)",
    _types.VALUE: "a frozen attrs class (a value object)",
    _types.ENUM: "an enum",
    _types.CUSTOM: "a value type registered with its own hooks (register_value)",
}


def kind_mismatch(tag: str, name: str, info: _types.TypeInfo) -> CorruptLogError:
    """The error for a stored value whose tag says one kind of class and whose type name is of another.

    Each tag is read only by its own kind's way of building values (an enum
    member by name, a value object field by field, a registered type by its
    hooks): reading it the other way would run code the log chose -- an
    entity's ``__init__`` and validators, say -- and make an object that is
    no part of the graph.
    """
    if tag == "x" and info.kind in (_types.VALUE, _types.ENUM):
        fix = (
            f"if {name} was registered with its own hooks where the log was written, register it the same "
            "way (memimg.converter.register_value(..., unstructure=..., structure=...)) before opening"
        )
    else:
        fix = (
            f"if the class named {name} changed kind since (an enum that became a class, say), keep the old "
            "name for a class of the old kind and give the new class another name; otherwise restore the log "
            "from a backup"
        )
    cls = info.cls
    return CorruptLogError(
        f"a stored value tagged {tag!r} ({_KIND_TEXT[_TAG_KINDS[tag]]}) names type {name!r}, which in this "
        f"process is {_KIND_TEXT[info.kind]} ({cls.__module__}.{cls.__qualname__}): it is not read, and no code "
        f"of that class runs. The log was damaged or crafted, or {fix}",
        seq=None,
        table="",
    )


def _default_for(info: _types.TypeInfo, field: str, obj: Any) -> Any:
    """The default of *field* for a stored state that lacks it (a field added since)."""
    if field not in info.defaults:
        raise MemimgError(
            f"stored {info.name} has no value for field {field!r}, which has no default: "
            f"give {info.cls.__qualname__}.{field} a default or factory, or write an upgrader "
            f"(@memimg.upgrader({info.name!r}, from_version=...)) that fills it in"
        )
    default = info.defaults[field]
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory(obj) if default.takes_self else default.factory()
    return default
