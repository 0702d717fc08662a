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
that read it, records its delta -- unless the field was assigned a plain value
since the read (each plain write of a counter takes a new *generation*, kept
by the image for committed writes and by a transaction for its own, and the
counted value remembers the one it was read at); any other value (or a
counted value read elsewhere) is a plain write, stored as the plain number.

Counted values compare, hash, format, pickle and copy as the plain number
they stand for (``__reduce__`` gives the plain type), and the codec stores
them as that plain number wherever they are written, so they never reach
the log.

Decimals are added in one fixed context (:data:`CONTEXT`: 28 significant
digits, ``ROUND_HALF_EVEN``, no traps) at commit, on replay and in every
process, so every reader of the log computes the same sums whatever the
thread's context, and replaying an add never raises.

A counter holds a number of its declared type, always: :func:`check_value`
refuses anything else at assignment (and at construction), ``del`` is
refused, and :func:`check_adds` refuses, before anything is written, a
commit whose add would not give a finite number of that type on the value
the log holds now (another process, or an older memimg, may have written
something else there).
"""

from __future__ import annotations

import decimal
import itertools
import sys
import typing
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import attrs

from memimg._errors import UnsupportedValueError
from memimg.core import _types
from memimg.core._markers import ERASED

__all__ = [
    "CONTEXT",
    "COUNTED",
    "MERGES",
    "Delta",
    "add",
    "check_adds",
    "check_declaration",
    "check_value",
    "counter_fields",
    "mark",
    "plain",
    "public_type",
]

#: The one context Decimal counters are added in (see the module docstring).
CONTEXT: Final = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN, traps=[])

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


def _origin(v: Any) -> tuple[Any, str, Any, int]:
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


class _Counted:
    """What every counted number does: ``+`` and ``-`` carry the delta (:func:`_counted_add`); a copy, or the
    left operand's side of a subtraction, is the plain number."""

    __slots__ = ()

    def __add__(self, other: Any) -> Any:
        return _counted_add(self, other, 1)

    __radd__ = __iadd__ = __add__

    def __sub__(self, other: Any) -> Any:
        return _counted_add(self, other, -1)

    __isub__ = __sub__

    def __rsub__(self, other: Any) -> Any:
        return other - plain(self)

    def __copy__(self) -> Any:
        return plain(self)

    def __deepcopy__(self, memo: Any) -> Any:
        return plain(self)


class _CountedInt(_Counted, int):
    """An int read from a counter field (see the module docstring)."""

    _mi_origin: tuple[Any, str, Any, int]
    _mi_delta: Any

    def __reduce__(self) -> Any:
        return int, (int(self),)

    def __repr__(self) -> str:
        return int.__repr__(self)

    __str__ = __repr__


class _CountedDecimal(_Counted, Decimal):
    """A Decimal read from a counter field (see the module docstring)."""

    _mi_origin: tuple[Any, str, Any, int]
    _mi_delta: Any

    def __reduce__(self) -> Any:
        return Decimal, (str(self),)

    def __repr__(self) -> str:
        return f"Decimal('{self}')"


class _CountedFraction(_Counted, Fraction):
    """A Fraction read from a counter field (see the module docstring)."""

    __slots__ = ("_mi_delta", "_mi_origin")

    _mi_origin: tuple[Any, str, Any, int]
    _mi_delta: Any

    def __reduce__(self) -> Any:
        return Fraction, (self.numerator, self.denominator)

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


def mark(value: Any, origin: tuple[Any, str, Any, int], delta: Any = None) -> Any:
    """*value* as a counted value read from ``origin = (object, field, writer, generation)``, carrying *delta* (by
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
    """The delta *value* carries if it was read from field *name* of *obj* by *writer* and the field has been
    assigned no plain value since (its generation, ``writer.counter_generation``, is the one read), else
    ``None``."""
    if type(value) in _COUNTED_SET:
        o = value._mi_origin
        if o[0] is obj and o[1] == name and o[2] is writer and o[3] == writer.counter_generation(obj, name):
            return value._mi_delta
    return None


#: The source of generations: every plain write of a counter takes the next (see :func:`delta_for`).
GENERATIONS: Final = itertools.count(1)


# -- declarations ------------------------------------------------------------------------------------------

#: class -> {counter field: its number type}
_SPECS: dict[type, dict[str, type]] = {}


def is_counter(a: Any) -> bool:
    """Whether attrs attribute *a* is declared a counter (``merge=``)."""
    return _merge_option(a) is not None


def refuse_del(cls: type, name: str) -> TypeError:
    """The error ``del obj.name`` raises on a counter field."""
    return TypeError(
        f'{cls.__qualname__}.{name} is a counter (merge="add"): it cannot be deleted, since adds to it '
        "would have nothing to apply to; assign it 0 instead. Nothing was changed"
    )


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
        DECLARED.append(cls)


#: The classes with counter fields (empty: no commit needs :func:`check_adds`).
DECLARED: list[type] = []

_AN: Final = {int: "an int", Decimal: "a Decimal", Fraction: "a Fraction"}


def _refuse(cls: type, name: str, what: str, value: Any) -> UnsupportedValueError:
    tp = counter_fields(cls)[name]
    err = UnsupportedValueError(
        f'{cls.__qualname__}.{name} is {_AN[tp]} counter (merge="add"): {what} {plain(value)!r} '
        f"({public_type(type(value)).__name__}) is refused; it holds a finite {tp.__name__} only"
        f"{'' if tp is int else ' (or an int, converted exactly)'}, so that every add applies"
        f"{f' (a float added to it makes a float: add {_AN[tp]})' if type(value) is float else ''}. "
        "Nothing was changed",
        value_type=public_type(type(value)),
        where=f"{cls.__qualname__}.{name}",
    )
    return err


def public_type(t: type) -> type:
    """*t*, or for a counted type the plain number type it stands for (for messages)."""
    return _BASE.get(t, t)


def check_value(cls: type, name: str, value: Any) -> Any:
    """*value* as counter field *name* of *cls* may hold it: a finite number of the field's type (a counted
    value as it is), an int converted exactly for a Decimal or Fraction counter.

    Raises:
        UnsupportedValueError: (a TypeError) anything else: None, a bool, a float, an infinite or NaN
            Decimal (naming class and field).
    """
    tp = counter_fields(cls)[name]
    t = _BASE.get(type(value), type(value))
    if t is tp:
        if tp is Decimal and not value.is_finite():
            raise _refuse(cls, name, "assigning", value)
        return value
    if t is int:  # exact in a Decimal (any size) and a Fraction
        return tp(int(value))
    raise _refuse(cls, name, "assigning", value)


def _sum_or_none(tp: type, value: Any, delta: Any) -> Any:
    """``value + delta`` if both are numbers a *tp* counter holds and the sum is a finite *tp*, else None."""
    for v in (value, delta):
        t = type(v)
        if not (t is tp or t is int) or (t is Decimal and not v.is_finite()):
            return None
    out = add(value, delta)
    if tp is Decimal and not out.is_finite():
        return None
    return out


def check_adds(events: list[Any], add_kind: Any, set_kind: Any, del_kind: Any, seq: int) -> None:
    """Refuse a commit of *events* (the log at *seq*, caught up) if one of its adds would not apply: the
    counter does not hold a number of its type now, or the sum is not a finite one.

    Raises:
        UnsupportedValueError: naming class, field, value and seq; nothing was written.
    """
    now: dict[tuple[int, str], Any] = {}
    for k, target, args in events:
        if k is add_kind:
            name, delta = args
            cls = type(target)
            key = (id(target), name)
            if key in now:
                value = now[key]
            else:
                try:
                    value = _raw_get(cls, name)(target)
                except AttributeError:
                    value = None
            tp = counter_fields(cls).get(name, int)
            out = _sum_or_none(tp, value, delta)
            if out is None:
                where = f"{cls.__qualname__}.{name}"
                raise UnsupportedValueError(
                    f"{where} is {_AN[tp]} counter: adding {plain(delta)!r} to the {plain(value)!r} it holds at "
                    f"seq {seq} {'would not give a finite number' if type(value) in (tp, int) else 'is impossible'}"
                    f"; nothing was written. Assign {where} a {tp.__name__} first if it holds something else "
                    "(another process or an older memimg wrote it)",
                    value_type=type(plain(value)),
                    where=where,
                )
            now[key] = out
        elif (k is set_kind or k is del_kind) and args[0] in counter_fields(type(target)):
            now[(id(target), args[0])] = args[1] if k is set_kind else None


def _raw_get(cls: type, name: str) -> Any:
    return _types.info_of(cls).getters[name]  # type: ignore[union-attr]
