"""Values come back with their exact type and value: decode(encode(v)) is v."""

from __future__ import annotations

import datetime as dt
import math
import threading
import uuid
import zoneinfo
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memimg
from tests.models import Box, Color, Entry, Level, Money, MutableAttrs, NotPersistent, Point


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type, all the way down (nan, -0.0, Decimal exponent, tzinfo, fold)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold and repr(a) == repr(b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, frozenset):
        return a == b and sorted(map(repr, a)) == sorted(map(repr, b))
    if attrs.has(type(a)):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in attrs.fields(type(a)))
    return bool(a == b)


zones = st.sampled_from(
    [None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), zoneinfo.ZoneInfo("Europe/Paris")]
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 3, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.fractions(),
    st.datetimes(timezones=zones, allow_imaginary=False),
    st.dates(),
    st.times(timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-3))])),
    st.timedeltas(),
    st.uuids(),
    st.sampled_from(list(Color) + list(Level)),
    st.builds(Money, st.decimals(allow_nan=False, allow_infinity=False), st.sampled_from(["EUR", "USD"])),
    st.builds(Point, st.integers(), st.integers()),
)


def _hashable(v: Any) -> bool:
    if isinstance(v, Decimal):
        return not v.is_nan()
    return not (isinstance(v, float) and math.isnan(v))


values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple), st.frozensets(leaves.filter(_hashable), max_size=3)
    ),
    max_leaves=8,
)


def roundtrip_all(value: Any, path: str) -> list[Any]:
    """The value as read back by replay, by deserialize, and by reopening an SQLite image."""
    import os

    if os.path.exists(path):
        os.remove(path)
    with memimg.open(path, root=Box) as img:
        img.root.content = value
        replayed = memimg.replay(img.events()).content
        deserialized = memimg.deserialize(memimg.serialize(img.root)).content
        img.snapshot()
    with memimg.open(path, root=Box) as img:
        reopened = img.root.content
    return [replayed, deserialized, reopened]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_values_roundtrip_exactly(value: Any, tmp_path_factory: Any) -> None:
    """Every supported value comes back equal and of the same type."""
    path = str(tmp_path_factory.mktemp("v") / "v.db")
    for back in roundtrip_all(value, path):
        assert same(back, value), (back, value)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        -0.0,
        2**64,
        -(2**100),
        Decimal("1.50"),
        Decimal("-0"),
        Decimal("sNaN"),
        Decimal("1E+3"),
        Fraction(1, 3),
        dt.datetime(2024, 3, 31, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
        dt.datetime(2024, 1, 1, fold=1),
        dt.time(23, 59, 59, 999999),
        dt.timedelta(days=-3, microseconds=5),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        b"\x00\xff",
        "",
        "ünïcødé \u2028",
        Color.GREEN,
        Level.HIGH,
        (1, (2, (3,))),
        frozenset({1, "a", (2, 3)}),
        Money(Decimal("9.99")),
        (Money(Decimal("1")), Point(1, 2)),
    ],
    ids=repr,
)
def test_edge_values(value: Any, tmp_path: Any) -> None:
    """The values named in the spec round-trip exactly."""
    for back in roundtrip_all(value, str(tmp_path / "e.db")):
        if isinstance(value, Decimal) and value.is_snan():
            assert type(back) is Decimal and back.is_snan()
            continue
        assert same(back, value), (back, value)


def test_tuples_and_value_objects_may_hold_entities() -> None:
    """Immutable values may refer to entities; the references stay shared."""
    img = memimg.open(root=Box)
    e = Entry("x")
    img.root.content = (e, frozenset({e}))
    img.root.other = e
    again = memimg.replay(img.events())
    assert again.content[0] is again.other and next(iter(again.content[1])) is again.other


@pytest.mark.parametrize(
    "bad",
    [
        lambda: 1,
        print,
        threading.Lock(),
        (x for x in []),
        NotPersistent(),
        MutableAttrs(),
        bytearray(b"x"),
        object(),
        len,
        memimg,
    ],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_values_raise_and_change_nothing(bad: Any) -> None:
    """UnsupportedValueError (a TypeError) names where and what; graph and log are unchanged."""
    img = memimg.open(root=Box)
    img.root.content = [1]
    seq = img.seq
    with pytest.raises(memimg.UnsupportedValueError) as info:
        img.root.other = bad
    assert isinstance(info.value, TypeError)
    assert "Box.other" in str(info.value) and type(bad).__qualname__ in str(info.value)
    assert info.value.where == "Box.other" and info.value.value_type is type(bad)
    with pytest.raises(memimg.UnsupportedValueError, match=r"list #\d+\.insert\(1"):
        img.root.content.insert(1, bad)
    with pytest.raises(memimg.UnsupportedValueError, match=r"list #\d+\.append\(\)\['bad'\]\[1\]"):
        img.root.content.append({"ok": 1, "bad": [2, bad]})
    assert img.root.other is None and img.root.content == [1] and img.seq == seq


def test_unsupported_deep_inside_a_new_subgraph_undoes_everything() -> None:
    """A bad value deep in a new subgraph leaves every object of it as it was."""
    img = memimg.open(root=Box)
    inner = Entry("inner")
    outer = Box(content=[inner, {"k": [1, 2]}], other=lambda: 0)
    seq = img.seq
    with pytest.raises(memimg.UnsupportedValueError, match=r"Box\.content\.other"):
        img.root.content = outer
    assert outer._mi_img is None and inner._mi_img is None
    assert type(outer.content) is list and type(outer.content[1]["k"]) is list
    assert img.seq == seq and img.root.content is None


def test_mutable_container_inside_a_tuple_is_refused() -> None:
    """A list inside a tuple cannot be tracked, so it is refused with advice."""
    img = memimg.open(root=Box)
    with pytest.raises(memimg.UnsupportedValueError, match="immutable value"):
        img.root.content = (1, [2])


def test_subclass_of_a_value_type_is_refused() -> None:
    """Only exact types are stored, so nothing comes back with a different type."""

    class MyDecimal(Decimal):
        pass

    img = memimg.open(root=Box)
    with pytest.raises(memimg.UnsupportedValueError):
        img.root.content = MyDecimal("1")
    with pytest.raises(memimg.UnsupportedValueError):
        img.root.content = dt.datetime(2020, 1, 1, tzinfo=_OddTz())


class _OddTz(dt.tzinfo):
    def utcoffset(self, d: Any) -> dt.timedelta:
        return dt.timedelta(0)


class Celsius:
    """A user value type, not attrs: registered on a converter."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Celsius) and other.degrees == self.degrees

    def __hash__(self) -> int:
        return hash(self.degrees)


def test_user_registered_value_type(tmp_path: Any) -> None:
    """Types registered on the image's converter round-trip through the log."""
    conv = memimg.Converter()
    conv.register_value(
        Celsius, name="tests.Celsius", unstructure=lambda c: c.degrees, structure=lambda d, _: Celsius(d)
    )
    path = str(tmp_path / "c.db")
    with memimg.open(path, root=Box, converter=conv) as img:
        img.root.content = (Celsius(21.5), Celsius(-1.0))
        img.root.other = {Celsius(3.0): "cold"}
        assert img.converter is conv
    with memimg.open(path, root=Box, converter=conv) as img:
        assert img.root.content == (Celsius(21.5), Celsius(-1.0))
        assert img.root.other == {Celsius(3.0): "cold"}
    with pytest.raises(memimg.UnsupportedValueError):
        memimg.open(root=Box).root.content = Celsius(1.0)


def test_user_type_registered_with_plain_cattrs_hooks() -> None:
    """register_value may reuse hooks registered with the usual cattrs API."""
    conv = memimg.Converter()
    conv.register_unstructure_hook(Celsius, lambda c: {"c": c.degrees})
    conv.register_structure_hook(Celsius, lambda d, _: Celsius(d["c"]))
    conv.register_value(Celsius)
    img = memimg.open(root=Box, converter=conv)
    img.root.content = Celsius(4.0)
    assert memimg.replay(img.events(), converter=conv).content == Celsius(4.0)
    assert any(b'["x"' in e.payload for e in img.events())
