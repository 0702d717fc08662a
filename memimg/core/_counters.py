"""Mergeable counters: ``memimg.field(merge="add")`` fields, their deltas, and the values that carry them.

A counter field holds an ``int``, a ``Decimal`` or a ``Fraction``. Writing
``obj.hits += 1`` is recorded as an ``obj.add`` event carrying the *delta*
(``1``), not the new value: two transactions that each add to the same
counter commute, so neither conflicts with the other, and replay adds.

Python compiles ``obj.hits += 1`` into a read, an addition and a plain
assignment (``obj.hits = obj.hits.__iadd__(1)``), so the assignment alone
cannot tell an increment from ``obj.hits = 5``. A read of a counter field
of an attached object therefore hands out a *counted* value: an instance of
a private subclass of the field's number type (:data:`COUNTED`) that
remembers where it was read (object, field, and the transaction or image
writer that read it) and the sum of the numbers added to it since
(``delta``). ``+`` and ``-`` with a number return another counted value with
the delta carried along; every other operation returns a plain number.
Assigning a counted value back to the field it was read from, by the writer
that read it, records its delta; any other value (or a counted value read
elsewhere) is a plain write, stored as the plain number.

Counted values compare, hash, format, pickle and copy as the plain number
they stand for (``__reduce__`` gives the plain type), and the codec stores
them as that plain number wherever they are written, so they never reach
the log.

Decimals are added in one fixed context (:data:`CONTEXT`: 28 significant
digits, ``ROUND_HALF_EVEN``) at commit, on replay and in every process, so
every reader of the log computes the same sums whatever the thread's
context.
"""

from __future__ import annotations

import decimal
import sys
import typing
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import attrs

from memimg.core._markers import ERASED

__all__ = [
    "CONTEXT",
    "COUNTED",
    "MERGES",
    "Delta",
    "add",
    "check_declaration",
    "counter_fields",
    "mark",
    "plain",
]

#: The one context Decimal counters are added in (see the module docstring).
CONTEXT: Final = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)

#: The ``merge=`` values a field may declare.
MERGES: Final = ("add",)

#: The number types a counter field may hold.
_NUMBERS: Final = (int, Decimal, Fraction)


def add(value: Any, delta: Any) -> Any:
    """``value + delta`` as counters add (Decimals in :data:`CONTEXT`); an erased value or delta stays erased."""
    if value is ERASED or delta is ERASED:
        return ERASED
    if type(value) is Decimal or type(delta) is Decimal:
        return CONTEXT.add(value, delta)
    return value + delta


def _sub(value: Any, delta: Any) -> Any:
    if type(value) is Decimal or type(delta) is Decimal:
        return CONTEXT.subtract(value, delta)
    return value - delta


class Delta:
    """What a transaction's overlay holds for a counter it added to (and did not assign): the sum of its adds."""

    __slots__ = ("amount",)

    def __init__(self, amount: Any) -> None:
        self.amount = amount

    def __repr__(self) -> str:
        return f"<delta {self.amount!r}>"


# -- counted values ---------------------------------------------------------------------------------------


def _origin(v: Any) -> tuple[Any, str, Any]:
    return v._mi_origin  # type: ignore[no-any-return]


def _counted_add(self: Any, other: Any, sign: int) -> Any:
    """``self ± other``: counted (delta carried) when *other* is a number the field's type adds exactly to."""
    base = _BASE[type(self)]
    mine = plain(self)
    if type(other) in _COUNTED_SET:
        if other._mi_origin == self._mi_origin:  # two reads of the same counter combined: not an increment
            return _plain_op(mine, plain(other), sign)
        other = plain(other)
    if not isinstance(other, (int, base)):
        return _plain_op(mine, other, sign)
    result = add(mine, other) if sign > 0 else _sub(mine, other)
    if type(result) is not base:
        return result
    return mark(result, self._mi_origin, add(self._mi_delta, other) if sign > 0 else _sub(self._mi_delta, other))


def _plain_op(a: Any, b: Any, sign: int) -> Any:
    return a + b if sign > 0 else a - b


class _CountedInt(int):
    """An int read from a counter field (see the module docstring)."""

    _mi_origin: tuple[Any, str, Any]
    _mi_delta: Any

    def __add__(self, other: Any) -> Any:
        return _counted_add(self, other, 1)

    __radd__ = __iadd__ = __add__

    def __sub__(self, other: Any) -> Any:
        return _counted_add(self, other, -1)

    __isub__ = __sub__

    def __rsub__(self, other: Any) -> Any:
        return other - int(self)

    def __reduce__(self) -> Any:
        return int, (int(self),)

    def __copy__(self) -> Any:
        return int(self)

    def __deepcopy__(self, memo: Any) -> Any:
        return int(self)

    def __repr__(self) -> str:
        return int.__repr__(self)

    __str__ = __repr__


class _CountedDecimal(Decimal):
    """A Decimal read from a counter field (see the module docstring)."""

    _mi_origin: tuple[Any, str, Any]
    _mi_delta: Any

    def __add__(self, other: Any) -> Any:
        return _counted_add(self, other, 1)

    __radd__ = __iadd__ = __add__

    def __sub__(self, other: Any) -> Any:
        return _counted_add(self, other, -1)

    __isub__ = __sub__

    def __rsub__(self, other: Any) -> Any:
        return other - plain(self)

    def __reduce__(self) -> Any:
        return Decimal, (str(self),)

    def __copy__(self) -> Any:
        return plain(self)

    def __deepcopy__(self, memo: Any) -> Any:
        return plain(self)

    def __repr__(self) -> str:
        return f"Decimal('{self}')"


class _CountedFraction(Fraction):
    """A Fraction read from a counter field (see the module docstring)."""

    __slots__ = ("_mi_delta", "_mi_origin")

    _mi_origin: tuple[Any, str, Any]
    _mi_delta: Any

    def __add__(self, other: Any) -> Any:
        return _counted_add(self, other, 1)

    __radd__ = __iadd__ = __add__

    def __sub__(self, other: Any) -> Any:
        return _counted_add(self, other, -1)

    __isub__ = __sub__

    def __rsub__(self, other: Any) -> Any:
        return other - plain(self)

    def __reduce__(self) -> Any:
        return Fraction, (self.numerator, self.denominator)

    def __copy__(self) -> Any:
        return plain(self)

    def __deepcopy__(self, memo: Any) -> Any:
        return plain(self)

    def __repr__(self) -> str:
        return f"Fraction({self.numerator}, {self.denominator})"

    def __str__(self) -> str:
        return str(plain(self))


#: counted type -> the plain type it stands for
_BASE: Final[dict[type, type]] = {_CountedInt: int, _CountedDecimal: Decimal, _CountedFraction: Fraction}
_COUNTED_OF: Final[dict[type, type]] = {v: k for k, v in _BASE.items()}
_COUNTED_SET: Final = frozenset(_BASE)
#: The counted types: a value of one is stored as the plain number it stands for.
COUNTED: Final = _COUNTED_SET


def mark(value: Any, origin: tuple[Any, str, Any], delta: Any = None) -> Any:
    """*value* as a counted value read from ``origin = (object, field, writer)``, carrying *delta* (by
    default zero, of *value*'s type: the adds to a Decimal counter are Decimals, whatever was added).

    A value that is not exactly an int, Decimal or Fraction (a subclass, a
    float someone assigned) comes back as it is: it is no counter.
    """
    t = _COUNTED_OF.get(type(value))
    if t is None:
        return value
    if t is _CountedFraction:
        out: Any = Fraction.__new__(t, value.numerator, value.denominator)
    else:
        out = t(value)
    out._mi_origin = origin
    out._mi_delta = _BASE[t](0) if delta is None else delta
    return out


def plain(value: Any) -> Any:
    """The plain number a counted value stands for (any other value as it is)."""
    base = _BASE.get(type(value))
    if base is None:
        return value
    if base is Fraction:
        return Fraction(value.numerator, value.denominator)
    return base(value)


def delta_for(value: Any, obj: Any, name: str, writer: Any) -> Any:
    """The delta *value* carries if it was read from field *name* of *obj* by *writer*, else ``None``."""
    if type(value) in _COUNTED_SET:
        o = value._mi_origin
        if o[0] is obj and o[1] == name and o[2] is writer:
            return value._mi_delta
    return None


# -- declarations ------------------------------------------------------------------------------------------

#: class -> {counter field: its number type}
_SPECS: dict[type, dict[str, type]] = {}


def _merge_option(a: Any) -> Any:
    return (a.metadata.get("memimg", {}) if a.metadata else {}).get("merge")


def counter_fields(cls: type) -> dict[str, type]:
    """The counter fields of entity class *cls* (``merge="add"``), with their number types (cached)."""
    spec = _SPECS.get(cls)
    if spec is None:
        spec = {}
        if attrs.has(cls):
            for a in attrs.fields(cls):
                if _merge_option(a) is not None:
                    spec[a.name] = _number_type(cls, a) or int
        _SPECS[cls] = spec
    return spec


def _number_type(cls: type, a: Any, localns: dict[str, Any] | None = None) -> type | None:
    """The type field *a* of *cls* is annotated with, resolved (``None``: not resolvable here)."""
    try:
        hints = typing.get_type_hints(cls, localns=localns, include_extras=True)
    except Exception:  # some annotation cannot be resolved (yet): this field's on its own
        hints = {}
    tp = hints.get(a.name, a.type)
    if isinstance(tp, str):
        module = sys.modules.get(cls.__module__)
        try:
            tp = eval(tp, dict(vars(module)) if module else {}, dict(localns or {}))
        except Exception:
            return None
    return tp if isinstance(tp, type) else typing.cast(type, tp)


def check_declaration(cls: type, localns: dict[str, Any] | None = None) -> None:
    """Refuse a ``merge=`` option that cannot work on a field of *cls*.

    Raises:
        TypeError: an unknown merge, merge on a field that is not an int,
            Decimal or Fraction (bool refused), or merge with ``unique=True``
            (naming class and field).
    """
    for a in attrs.fields(cls):
        merge = _merge_option(a)
        if merge is None:
            continue
        where = f"{cls.__qualname__}.{a.name}"
        if merge not in MERGES:
            raise TypeError(
                f"{where}: memimg.field(merge={merge!r}) is not a merge memimg knows; the only one is "
                'merge="add" (a counter: concurrent += and -= commute)'
            )
        if (a.metadata.get("memimg") or {}).get("unique"):
            raise TypeError(
                f'{where}: memimg.field(merge="add") cannot be unique=True: concurrent adds merge without '
                "seeing each other, so no commit could check the sum is unique; use index=True to look "
                "instances up by the counter's value"
            )
        tp = _number_type(cls, a, localns)
        if tp is None:
            default = a.default
            if default is attrs.NOTHING or isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                raise TypeError(
                    f'{where}: the annotation {a.type!r} of a merge="add" field cannot be resolved here; '
                    "annotate it int, decimal.Decimal or fractions.Fraction where the class is defined"
                )
            tp = type(default)
        if tp is bool or tp not in _NUMBERS:
            name = getattr(tp, "__qualname__", None) or repr(tp)
            raise TypeError(
                f'{where}: memimg.field(merge="add") needs an int, decimal.Decimal or fractions.Fraction field, '
                f"not {name}{' (a bool is no counter)' if tp is bool else ''}; annotate it with one of those "
                "(and no None: a counter always holds a number)"
            )
        _SPECS.setdefault(cls, {})[a.name] = tp
