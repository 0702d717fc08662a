"""Value types: how each one becomes JSON and comes back, and the converter that knows them.

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
``["erased"]``        ``memimg.ERASED``: a past value ``MemoryImage.erase`` excised
====================  ==========================================

:class:`Converter` is a ``cattrs.Converter`` that knows all of these; user
value types are registered on it (``register_value``), with cattrs hooks.
:mod:`memimg.core._codec` is the fast path built from one converter:
dispatch on the exact type, cached per type, the cache cleared when the
converter changes.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import functools
import operator
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import attrs
import cattrs

from memimg._errors import MemimgError, UnsupportedValueError
from memimg.core import _types
from memimg.core._markers import Marker

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "Converter",
    "check_text",
    "converter",
    "describe_unsupported",
    "flag_encoder",
    "int_from_text",
    "int_text",
    "tz_parts",
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


_UTC: Final = dt.UTC


def tz_parts(tz: dt.tzinfo | None) -> str | list[Any] | None:
    """How a tzinfo is stored beside a naive ISO string, or None if the ISO offset says it all."""
    if tz is None or tz is _UTC:
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
    key = tz_parts(v.tzinfo)
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
    key = tz_parts(v.tzinfo)
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


def flag_encoder(cls: type[enum.Flag], name: str) -> Enc:
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


class Converter(cattrs.Converter):
    """The cattrs converter that knows every value type an image can store.

    memimg's builtin value types (``Decimal``, ``datetime``, ``UUID``...) are
    registered on it; register your own immutable types with
    :meth:`register_value`. Pass it to ``memimg.open(..., converter=...)``,
    or use the process-wide ``memimg.converter``, before opening an image
    whose log holds such values.
    """

    __module__ = "memimg"

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

        For an enum or a frozen attrs class registered without hooks, this
        only names the class, and is the same as ``@persistent(name=...,
        aliases=..., version=..., removed=...)`` on it.

        Args:
            name: the stable name stored in the log (default ``module.QualName``).
            aliases: older names still accepted when reading (stored values
                of a class renamed or moved are read as *cls*).
            version: for a frozen attrs class, its schema version: states
                stored under an older one go through the upgraders
                registered for *name* (``@memimg.upgrader``), as for entities.
            removed: for a frozen attrs class, stored fields it dropped on
                purpose (their stored values are ignored).

        Raises:
            MemimgError: *version* or *removed* for a class that is not a frozen attrs class.
            TypeError: *name* is another kind of class's, or an alias is
                another class's name or alias (nothing is registered).
        """
        if (version is not None or removed) and not _types.is_value_class(cls):
            raise MemimgError(
                f"register_value({cls.__qualname__}, version=..., removed=...): only frozen attrs "
                "classes have a schema; a type with its own hooks evolves through them",
                value_type=cls,
            )
        existing = _types.info_of(cls)
        if existing is not None and existing.kind in (_types.VALUE, _types.ENUM) and unstructure is None:
            # the one path of @persistent(name=..., aliases=...) on an enum or a frozen attrs class
            _types.name_value_class(cls, name=name, aliases=tuple(aliases), version=version, removed=tuple(removed))
        else:
            stable = name or _types.default_name(cls)
            info = _types.TypeInfo(cls=cls, name=stable, kind=_types.CUSTOM, aliases=tuple(aliases))
            _types.register(info, check=True)  # a clash is refused before anything is registered
            self._custom[cls] = stable
        if unstructure is not None:
            self.register_unstructure_hook(cls, unstructure)
        if structure is not None:
            self.register_structure_hook(cls, structure)
        self.version += 1


#: The process-wide converter used by images opened without ``converter=``.
converter = Converter()


def describe_unsupported(value: Any, where: str) -> UnsupportedValueError:
    """The error for a value memimg cannot store, with what to do instead."""
    t = type(value)
    hint = "register it with memimg.converter.register_value (immutable values only)"
    if type(value) is Marker:
        hint = f"{value!r} is a marker of memimg's, not a value (memimg.ERASED stands where an erased past value was)"
    elif callable(value) and not isinstance(value, type):
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
