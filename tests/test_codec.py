"""Values come back with their exact type and value: decode(encode(v)) is v."""

from __future__ import annotations

import datetime as dt
import enum
import math
import threading
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import memimg
from memimg._errors import value_repr
from memimg.core._codec import Codec
from memimg.core._reader import Reader
from memimg.core._table import ObjectTable
from memimg.model import SHELL
from tests.conftest import Images
from tests.models import Box, Color, Entry, Level, Money, MutableAttrs, NotPersistent, Point
from tests.tampering import append_event


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
        return a == b and sorted(map(value_repr, a)) == sorted(map(value_repr, b))
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


def roundtrip_all(value: Any, open_image: Callable[..., memimg.MemoryImage]) -> list[Any]:
    """The value as read back by replay, by deserialize, and by reopening its image from a snapshot.

    *open_image* opens one empty log, and opens it again (``make_image``, or a
    fresh SQLite file for each hypothesis example).
    """
    with open_image(root=Box) as img:
        img.root.content = value
        replayed = memimg.replay(img.events()).content
        deserialized = memimg.deserialize(memimg.serialize(img.root)).content
        img.snapshot()
    with open_image(root=Box) as img:
        reopened = img.root.content
    return [replayed, deserialized, reopened]


def sqlite_image(tmp_path_factory: Any) -> Callable[..., memimg.MemoryImage]:
    """Opens a new SQLite file (for hypothesis, whose examples share one test's fixtures)."""
    path = str(tmp_path_factory.mktemp("v") / "v.db")
    return lambda **options: memimg.open(path, **options)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_values_roundtrip_exactly(value: Any, tmp_path_factory: Any) -> None:
    """Every supported value comes back equal and of the same type.

    On SQLite only: the encoding does not depend on the store, and the values
    named in the spec go through every store (test_edge_values).
    """
    for back in roundtrip_all(value, sqlite_image(tmp_path_factory)):
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
def test_edge_values(value: Any, make_image: Images) -> None:
    """The values named in the spec round-trip exactly."""
    for back in roundtrip_all(value, make_image):
        if isinstance(value, Decimal) and value.is_snan():
            assert type(back) is Decimal and back.is_snan()
            continue
        assert same(back, value), (back, value)


#: An int around or past 4,300 digits (the most Python converts to or from decimal by default), drawn
#: as ``sign * (base ** exponent + offset)``: hypothesis shows examples with repr, which such ints refuse.
huge_int_parts = st.tuples(
    st.sampled_from([1, -1]),
    st.one_of(st.tuples(st.just(10), st.integers(4295, 5100)), st.tuples(st.just(2), st.integers(14000, 40000))),
    st.integers(-(2**70), 2**70),
)


def _huge(parts: Any) -> int:
    sign, (base, exponent), offset = parts
    return int(sign * (base**exponent + offset))


_SHAPES = {
    "int": lambda a, b: a,
    "tuple": lambda a, b: (a, 1, b),
    "frozenset": lambda a, b: frozenset({a, b}),
    "value object": lambda a, b: Point(a, b),
    "fraction": lambda a, b: Fraction(a, b),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(sorted(_SHAPES)), a=huge_int_parts, b=huge_int_parts)
@example(shape="int", a=(1, (10, 5000), 0), b=(1, (10, 5000), 0))
@example(shape="int", a=(-1, (2, 20000), 0), b=(1, (10, 5000), 0))
@example(shape="tuple", a=(1, (10, 4300), -1), b=(-1, (10, 4300), 0))  # the last decimal one, the first hex one
def test_ints_of_any_size_roundtrip(shape: str, a: Any, b: Any, tmp_path_factory: Any) -> None:
    """Ints past Python's 4,300-digit limit on decimal conversion come back equal through events,
    serialize, and a snapshot reopened -- alone, in values, and in Fractions (on SQLite only: huge ints
    in every place of the graph go through every store below)."""
    value = _SHAPES[shape](_huge(a), _huge(b))
    for back in roundtrip_all(value, sqlite_image(tmp_path_factory)):
        assert same(back, value)


def test_huge_ints_in_every_place_of_the_graph(make_image: Images) -> None:
    """Huge ints as a field, list item, dict key and value, and set member survive events and a snapshot."""
    huge = 10**5000
    with make_image(root=Box) as img:
        img.root.content = {huge: [huge, -huge], "set": {huge, 1}}
        img.snapshot()
        img.root.content[-huge] = "added after"  # an event on an attached dict
        img.root.content["set"].add(-huge)
        img.root.other = -(2**20000)
        replayed = memimg.replay(img.events())
    with make_image(root=Box) as img:
        for root in (img.root, replayed):
            assert root.content[huge] == [huge, -huge] and root.content[-huge] == "added after"
            assert root.content["set"] == {huge, 1, -huge} and root.other == -(2**20000)


def test_big_ints_are_decimal_up_to_4300_digits_and_hex_beyond(make_image: Images) -> None:
    """Ints older memimg processes can read stay in decimal; only those past 4,300 digits are hex,
    and decimal of any length (written where the limit was raised) is read too."""
    img = make_image(root=Box)
    img.root.content = (2**64, 10**4300 - 1, -(10**4300), Fraction(10**4300, 7))
    stored = next(e for e in img.events() if e.kind == "obj.set").data[1][1]
    assert stored[0] == ["i", str(2**64)] and stored[1] == ["i", "9" * 4300]
    assert stored[2] == ["i", hex(-(10**4300))] and stored[3] == ["Q", f"{hex(10**4300)}/7"]
    long_decimal = "-1" + "0" * 6000
    decode = Reader(ObjectTable(SHELL, Codec(memimg.converter, SHELL))).decode
    assert decode(["i", long_decimal]) == -(10**6000)
    assert decode(["Q", "1" + "0" * 6000 + "/3"]) == Fraction(10**6000, 3)


def test_tuples_and_value_objects_may_hold_entities(make_image: Images) -> None:
    """Immutable values may refer to entities; the references stay shared."""
    img = make_image(root=Box)
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
def test_unsupported_values_raise_and_change_nothing(bad: Any, make_image: Images) -> None:
    """UnsupportedValueError (a TypeError) names where and what; graph and log are unchanged."""
    img = make_image(root=Box)
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


def test_unsupported_value_under_a_huge_int_key_is_named_with_the_key_in_hex(make_image: Images) -> None:
    """The path of an unsupported value shows a dict key that repr refuses (past 4,300 digits) in hex."""
    huge = 10**5000
    img = make_image(root=Box)
    with pytest.raises(memimg.UnsupportedValueError) as info:
        img.root.content = {huge: [print]}
    assert info.value.where == f"Box.content[{hex(huge)}][0]"
    with pytest.raises(memimg.UnsupportedValueError) as info:
        img.root.other = {(huge, 1): print}
    assert info.value.where == f"Box.other[({hex(huge)}, 1)]"
    assert img.root.content is None and img.root.other is None


def test_unsupported_deep_inside_a_new_subgraph_undoes_everything(make_image: Images) -> None:
    """A bad value deep in a new subgraph leaves every object of it as it was."""
    img = make_image(root=Box)
    inner = Entry("inner")
    outer = Box(content=[inner, {"k": [1, 2]}], other=lambda: 0)
    seq = img.seq
    with pytest.raises(memimg.UnsupportedValueError, match=r"Box\.content\.other"):
        img.root.content = outer
    assert outer._mi_img is None and inner._mi_img is None
    assert type(outer.content) is list and type(outer.content[1]["k"]) is list
    assert img.seq == seq and img.root.content is None


def test_mutable_container_inside_a_tuple_is_refused(make_image: Images) -> None:
    """A list inside a tuple cannot be tracked, so it is refused with advice."""
    img = make_image(root=Box)
    with pytest.raises(memimg.UnsupportedValueError, match="immutable value"):
        img.root.content = (1, [2])


def test_subclass_of_a_value_type_is_refused(make_image: Images) -> None:
    """Only exact types are stored, so nothing comes back with a different type."""

    class MyDecimal(Decimal):
        pass

    img = make_image(root=Box)
    with pytest.raises(memimg.UnsupportedValueError):
        img.root.content = MyDecimal("1")
    with pytest.raises(memimg.UnsupportedValueError):
        img.root.content = dt.datetime(2020, 1, 1, tzinfo=_OddTz())


class _OddTz(dt.tzinfo):
    def utcoffset(self, d: Any) -> dt.timedelta:
        return dt.timedelta(0)


class Perm(enum.Flag):
    R = 1
    W = 2


class Loose(enum.IntFlag):
    A = 1
    B = 2


@pytest.mark.parametrize("value", [Perm.R | Perm.W, Perm(0)], ids=["R|W", "zero"])
def test_flag_combinations_roundtrip(value: Perm, make_image: Images) -> None:
    """A combination of Flag members, or the empty Flag, comes back as the same member after reopening."""
    with make_image(root=Box) as img:
        img.root.content = value
    with make_image(root=Box) as img:
        assert img.root.content is value


def test_a_flag_value_no_member_names_is_refused_and_nothing_changes(make_image: Images) -> None:
    """A Flag value with bits no member names is refused at the assignment and nothing is logged; a
    combination of members is stored."""
    img = make_image(root=Box)
    seq = img.seq
    with pytest.raises(memimg.UnsupportedValueError, match="no member of Loose names"):
        img.root.content = Loose(8)
    assert img.root.content is None and img.seq == seq
    img.root.content = Loose.A | Loose.B
    assert memimg.replay(img.events()).content == Loose.A | Loose.B


def test_a_flag_combination_read_without_its_enum_is_written_back_unchanged() -> None:
    """A Flag combination decoded into a generic stand-in (by tools without the enum) is hashable and
    encodes back to exactly what was stored."""
    codec = Codec(memimg.converter, SHELL)
    stand_in = codec.decoder(lambda oid: None, lambda x: None, generic=True)(["e", "no.such.Flag", ["R", "W"]])
    assert stand_in.member == ("R", "W") and hash(stand_in) == hash(stand_in)
    assert codec.encoder(lambda obj: 0)(stand_in) == ["e", "no.such.Flag", ["R", "W"]]


def test_generic_decoding_looks_up_a_type_no_class_claims_once(monkeypatch: Any) -> None:
    """Read without their classes, the enum members and user values of one stored type cost one look-up
    of its name per decoder (a tool reads one per object), and each enum member is one stand-in."""
    from memimg.core import _types

    looked_up: list[str] = []
    resolve = _types.resolve

    def counting(name: str, kind: str | None = None) -> Any:
        looked_up.append(name)
        return resolve(name, kind)

    monkeypatch.setattr(_types, "resolve", counting)
    decode = Codec(memimg.converter, SHELL).decoder(lambda oid: None, lambda x: None, generic=True)
    members = [decode(["e", "no.such.Mood", name]) for name in ("OK", "BAD", "OK", "OK")]
    customs = [decode(["x", "no.such.Custom", {"n": n}]) for n in range(3)]
    assert members[0] is members[2] is members[3] and members[1].member == "BAD"
    assert [c.data for c in customs] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert sorted(looked_up) == ["no.such.Custom", "no.such.Mood"]
    assert decode(["e", "tests.models.Color", "RED"]) is Color.RED  # a claimed type: its real member


@attrs.frozen(slots=False, cache_hash=True)
class CachedHash:
    a: int


def test_a_value_class_with_a_cached_hash_is_hashable_after_replay(make_image: Images) -> None:
    """A frozen attrs value class with cache_hash=True (and slots=False) comes back equal and hashable,
    with the hash of an equal new instance."""
    img = make_image(root=Box)
    img.root.content = CachedHash(1)
    got = memimg.replay(img.events()).content
    assert got == CachedHash(1)
    assert hash(got) == hash(CachedHash(1))


def test_a_named_fixed_offset_timezone_keeps_its_name(make_image: Images) -> None:
    """A datetime in ``datetime.timezone(offset, name)`` comes back with that name (tzname())."""
    value = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET"))
    img = make_image(root=Box)
    img.root.content = value
    got = memimg.replay(img.events()).content
    assert got.tzname() == "CET"


def test_a_zoneinfo_without_a_key_is_never_turned_into_a_fixed_offset(make_image: Images) -> None:
    """A ZoneInfo read from a file (its key is None) is either refused or comes back as a ZoneInfo with
    its rules -- never as a fixed offset that loses daylight saving time."""
    with open("/usr/share/zoneinfo/Europe/Paris", "rb") as f:
        tz = zoneinfo.ZoneInfo.from_file(f)
    value = dt.datetime(2024, 1, 1, 12, tzinfo=tz)
    img = make_image(root=Box)
    try:
        img.root.content = value
    except memimg.UnsupportedValueError:
        return  # refusing it is fine too
    got = memimg.replay(img.events()).content
    assert isinstance(got.tzinfo, zoneinfo.ZoneInfo)


def test_a_string_that_is_not_valid_utf8_is_refused_at_the_assignment(make_image: Images) -> None:
    """A str holding a lone surrogate (os.fsdecode of a bad file name) is refused with
    UnsupportedValueError where it is assigned."""
    img = make_image(root=Box)
    with pytest.raises(memimg.UnsupportedValueError):
        img.root.content = "caf\udce9"


def test_strings_that_are_not_valid_utf8_are_refused_everywhere_a_value_enters(make_image: Images) -> None:
    """A str with a lone surrogate is refused as a key, inside a new list, as a collection argument,
    inside a tuple in a set, as a field of a new entity, and in a transaction; nothing changes. Valid
    non-ASCII text is stored."""
    img = make_image(root=dict)
    img.root["l"] = []
    bad = "caf\udce9"
    attempts = [
        lambda: img.root.__setitem__(bad, 1),  # a key
        lambda: img.root.__setitem__("x", [bad]),  # inside a new list
        lambda: img.root["l"].append(bad),  # a collection argument
        lambda: img.root.__setitem__("s", {(1, bad)}),  # inside a tuple in a set
        lambda: img.root.__setitem__("b", Box(content=bad)),  # a field of a new entity
    ]
    for attempt in attempts:
        with pytest.raises(memimg.UnsupportedValueError, match="not valid UTF-8"):
            attempt()
    with pytest.raises(memimg.UnsupportedValueError):
        with img.transaction():
            img.root["k"] = bad
    assert dict(img.root) == {"l": []} and img.root["l"] == []
    img.root["ok"] = "café ☕"  # non-ASCII but valid
    assert memimg.replay(img.events())["ok"] == "café ☕"


@memimg.persistent(name="codec.Cell")
class Cell:
    value: Any = None


def test_field_sets_replay_values_and_references(make_image: Images) -> None:
    """Field-set events (which replay decodes on a path of their own) give back tagged values, tuples and
    references to objects on reopening."""
    with make_image(root=Cell) as img:
        img.root.value = 0
        img.root.value = Decimal("1.50")
        img.root.value = (1, "a")
        img.root.value = Cell(Decimal("-0.0"))
        inner = img.root.value
        inner.value = dt.date(2026, 11, 25)
    with make_image(root=Cell) as again:
        assert type(again.root.value) is Cell
        assert again.root.value.value == dt.date(2026, 11, 25)
        again.root.value = (1, "a")
    with make_image(root=Cell) as third:
        assert third.root.value == (1, "a") and type(third.root.value) is tuple


class Celsius:
    """A user value type, not attrs: registered on a converter."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Celsius) and other.degrees == self.degrees

    def __hash__(self) -> int:
        return hash(self.degrees)


def test_user_registered_value_type(make_image: Images) -> None:
    """Types registered on the image's converter round-trip through the log; the default converter refuses them."""
    conv = memimg.Converter()
    conv.register_value(
        Celsius, name="tests.Celsius", unstructure=lambda c: c.degrees, structure=lambda d, _: Celsius(d)
    )
    with make_image(root=Box, converter=conv) as img:
        img.root.content = (Celsius(21.5), Celsius(-1.0))
        img.root.other = {Celsius(3.0): "cold"}
        assert img.converter is conv
    with make_image(root=Box, converter=conv) as img:
        assert img.root.content == (Celsius(21.5), Celsius(-1.0))
        assert img.root.other == {Celsius(3.0): "cold"}
    with pytest.raises(memimg.UnsupportedValueError):
        memimg.open(root=Box).root.content = Celsius(1.0)


def test_user_type_registered_with_plain_cattrs_hooks(make_image: Images) -> None:
    """register_value may reuse hooks registered with the usual cattrs API."""
    conv = memimg.Converter()
    conv.register_unstructure_hook(Celsius, lambda c: {"c": c.degrees})
    conv.register_structure_hook(Celsius, lambda d, _: Celsius(d["c"]))
    conv.register_value(Celsius)
    img = make_image(root=Box, converter=conv)
    img.root.content = Celsius(4.0)
    assert memimg.replay(img.events(), converter=conv).content == Celsius(4.0)
    assert any(b'["x"' in e.payload for e in img.events())


def test_a_value_class_version_needs_a_value_class() -> None:
    """register_value(version=...) is refused for a class that has no schema: only frozen attrs classes have one."""

    class Opaque:
        pass

    with pytest.raises(memimg.MemimgError, match="only frozen attrs classes have a schema"):
        memimg.Converter().register_value(Opaque, name="x.Opaque", unstructure=str, version=2)


# -- a value tag names a class of another kind ----------------------------------------------------

#: Every run of a class's own code while reading: (class, what ran).
RAN: list[tuple[str, str]] = []


def _noted(kind: str) -> Any:
    def validate(instance: Any, attribute: Any, value: Any) -> None:
        RAN.append((kind, "validator"))

    return validate


@memimg.persistent(name="hostile.Entity")
class HostileEntity:
    x: Any = attrs.field(default=0, validator=_noted("entity"))

    def __attrs_post_init__(self) -> None:
        RAN.append(("entity", "__attrs_post_init__"))


@attrs.frozen
class HostileValue:
    x: Any = attrs.field(default=0, validator=_noted("value"))

    def __attrs_post_init__(self) -> None:
        RAN.append(("value", "__attrs_post_init__"))


class HostileEnum(enum.Enum):
    A = 1

    @classmethod
    def _missing_(cls, value: object) -> Any:
        RAN.append(("enum", "_missing_"))
        return None


class HostileCustom:
    def __init__(self, data: Any) -> None:
        RAN.append(("custom", "__init__"))
        self.data = data


memimg.converter.register_value(HostileValue, name="hostile.Value")
memimg.converter.register_value(
    HostileCustom,
    name="hostile.Custom",
    unstructure=lambda c: c.data,
    structure=lambda data, cls: cls(data),
)
memimg.converter.register_value(HostileEnum, name="hostile.Enum")

_KINDS_BY_NAME = {
    "entity": "hostile.Entity",
    "value": "hostile.Value",
    "enum": "hostile.Enum",
    "custom": "hostile.Custom",
}
_TAG_OF = {"e": "enum", "v": "value", "x": "custom"}
_STORED = {
    "e": lambda name: ["e", name, ["A"]],  # a combination of flags: read with cls(0) before any name
    "v": lambda name: ["v", name, {"x": 1}],
    "x": lambda name: ["x", name, 0],
}


@pytest.mark.parametrize(
    ("tag", "kind"),
    [(tag, kind) for tag in "evx" for kind in _KINDS_BY_NAME if _TAG_OF[tag] != kind],
)
def test_a_value_tag_naming_a_class_of_another_kind_is_corrupt(make_image: Images, tag: str, kind: str) -> None:
    """An enum (e), value object (v) or registered value (x) whose type name is a class of another kind
    is a CorruptLogError naming the seq and the type; no code of the class runs (no __init__,
    validator, __attrs_post_init__, _missing_, structure hook)."""
    name = _KINDS_BY_NAME[kind]
    make_image(root=Box).close()
    seq = append_event(make_image.store(), "obj.set", 1, [["content", _STORED[tag](name)]])
    RAN.clear()
    with pytest.raises(memimg.CorruptLogError, match=f"event seq {seq} .*tagged '{tag}'.*'{name}'") as info:
        make_image(root=Box)
    assert info.value.seq == seq and info.value.table == "memimg_events"
    assert RAN == []


@pytest.mark.parametrize("kind", ["value", "enum", "custom"])
def test_an_object_record_naming_a_class_that_is_no_entity_is_corrupt(make_image: Images, kind: str) -> None:
    """A record ``[oid, type, state]`` is only ever an entity (or list, dict, set): another kind is a
    CorruptLogError naming the seq; nothing of the class runs."""
    name = _KINDS_BY_NAME[kind]
    make_image(root=Box).close()
    seq = append_event(make_image.store(), "obj.set", 1, [["content", ["r", 2]], [[2, name, {"x": 1}]]])
    RAN.clear()
    with pytest.raises(memimg.CorruptLogError, match=f"event seq {seq} .*{name}") as info:
        make_image(root=Box)
    assert info.value.seq == seq and RAN == []


def test_a_mismatched_tag_met_while_catching_up_is_named_by_seq(make_image: Images) -> None:
    """An image catching up with events another writer appended reports a tag naming an entity class
    as a CorruptLogError with the event's seq, and builds no entity."""
    with make_image(root=Box) as img:
        seq = append_event(make_image.store(), "obj.set", 1, [["content", ["x", "hostile.Entity", {"x": 5}]]])
        RAN.clear()
        with pytest.raises(memimg.CorruptLogError, match=f"event seq {seq} .*hostile.Entity") as info:
            img.refresh()
        assert info.value.seq == seq and RAN == [] and img.root.content is None


@attrs.frozen
class Spot:
    x: int


def test_a_value_type_registered_while_the_image_is_open_is_written_the_new_way(make_image: Images) -> None:
    """register_value on an open image's converter applies to every later write, whatever was classified since."""
    conv = memimg.Converter()
    with make_image(converter=conv) as img:
        img.root["a"] = Spot(1)  # written as a value object
        conv.register_value(Spot, name="tests.Spot", unstructure=lambda p: p.x, structure=lambda d, _: Spot(d))
        img.root["c"] = Decimal("1.5")  # a type met for the first time: the codec classifies anew
        img.root["b"] = Spot(2)
        assert list(img.events())[-1].data == ["b", ["x", "tests.Spot", 2]]
