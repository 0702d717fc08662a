"""Values as JSON data: the one encoding of the tools' ``--json`` output and of the SQL projection's JSON columns.

JSON's own types stand for themselves -- ``None``, ``bool``, ``str``, an
``int`` (of up to 4,300 digits: Python writes no longer one in decimal), a
finite ``float`` -- and a ``tuple`` is an array. Every other value is an
object whose one ``$`` key names what it is, so it is never taken for a
string that happens to read the same:

* ``{"$decimal": "1.10"}``: a ``Decimal`` (exponent kept);
  ``{"$fraction": "1/3"}``: a ``Fraction``;
* ``{"$datetime": iso}``, ``{"$date": iso}``, ``{"$time": iso}`` (ISO 8601,
  with the offset if aware); ``{"$timedelta": [days, seconds, microseconds]}``;
* ``{"$uuid": "..."}``; ``{"$bytes": "base64"}``;
* ``{"$int": "0x..."}``: an int past 4,300 digits, in hex;
  ``{"$float": "nan"}``: ``nan``, ``inf``, ``-inf``;
* ``{"$frozenset": [...]}``;
* ``{"$enum": type, "name": member}``: an ``Enum`` member, its class loaded
  or not (a flag combination: the list of its members' names);
* ``{"$type": type, field: value, ...}``: a value object (frozen attrs);
  ``{"$custom": type, "data": data}``: a user value type registered with its
  own hooks (``register_value``), *data* as stored -- what its unstructure
  hook returns -- its class loaded or not;
* ``{"$erased": true}``: ``memimg.ERASED``, a past value ``erase`` excised;
  ``{"$missing": true}``: ``memimg.MISSING``, no value;
* ``{"$repr": "..."}``: anything else, by its ``repr``.

* ``{"$ref": id}``: an entity or collection inside a value (a tuple, a
  frozenset, a value object), or one a command does not spell out;
  ``{"$ref": id, "collected": true}``: one collected since (``history``).

Where an entity or collection stands for itself, each command says how it
spells it out (``{"$type", "$id", ...}``): it hands every value to
:func:`plain`, and entities inside values are references alike everywhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import fractions
import uuid
from typing import Any

import orjson

from memimg._errors import value_repr
from memimg.core import _types
from memimg.core._generic import CustomValue, EnumValue
from memimg.core._history import Collected
from memimg.core._markers import ERASED, MISSING
from memimg.core._values import converter

__all__ = ["plain"]


def plain(value: Any) -> Any:
    """*value* as JSON data (see the module docstring)."""
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        try:
            str(value)  # as json.dumps will write it
        except ValueError:
            return {"$int": hex(value)}  # past 4,300 digits: JSON numbers are decimal
        return value
    if t is float:
        return value if value == value and abs(value) != float("inf") else {"$float": repr(value)}
    if t is tuple:
        return [plain(v) for v in value]
    if hasattr(t, "_mi_oid"):  # an entity or tracked collection: by reference
        oid = getattr(value, "_mi_oid", None)
        return {"$ref": oid} if oid is not None else {"$repr": value_repr(value)}
    if t is Collected:
        return {"$ref": value.oid, "collected": True}
    if isinstance(value, enum.Enum):  # before int and str: an IntEnum is an int
        name: Any = value.name
        if isinstance(value, enum.Flag) and (name is None or "|" in name):  # a combination: its members' names
            name = [m.name for m in value]
        return {"$enum": _name(t), "name": name}
    if t is EnumValue:  # read without its class (the command line): the same
        return {"$enum": value.type_name, "name": list(value.member) if type(value.member) is tuple else value.member}
    if t is CustomValue:
        return {"$custom": value.type_name, "data": value.data}
    tag = _TAGS.get(t)
    if tag is not None:
        return tag(value)
    custom = converter._custom.get(t)
    if custom is not None:  # as stored: what its unstructure hook returns, the same read without its class
        try:
            data = orjson.loads(orjson.dumps(converter.get_unstructure_hook(t)(value)))
        except Exception:  # the application's hook failed here: the value is still shown, as text
            return {"$repr": repr(value)}
        return {"$custom": custom, "data": data}
    for base in (bool, int, float, str):  # a subclass, stored as its base
        if isinstance(value, base):
            return plain(base(value))
    if value is ERASED:
        return {"$erased": True}
    if value is MISSING:
        return {"$missing": True}
    info = _types.info_of(t)
    if info is not None and info.kind == _types.VALUE:
        return {"$type": info.name, **{f: plain(getattr(value, f, None)) for f in info.fields}}
    return {"$repr": value_repr(value)}


def _int_text(n: int) -> str:
    try:
        return str(n)
    except ValueError:
        return hex(n)  # past 4,300 digits


def _name(cls: type) -> str:
    info = _types.info_of(cls)
    return info.name if info is not None else cls.__qualname__


_TAGS: dict[type, Any] = {
    decimal.Decimal: lambda v: {"$decimal": str(v)},
    fractions.Fraction: lambda v: {"$fraction": f"{_int_text(v.numerator)}/{_int_text(v.denominator)}"},
    dt.datetime: lambda v: {"$datetime": v.isoformat()},
    dt.date: lambda v: {"$date": v.isoformat()},
    dt.time: lambda v: {"$time": v.isoformat()},
    dt.timedelta: lambda v: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    uuid.UUID: lambda v: {"$uuid": str(v)},
    bytes: lambda v: {"$bytes": base64.b64encode(v).decode("ascii")},
    frozenset: lambda v: {"$frozenset": sorted((plain(x) for x in v), key=repr)},
}
