"""@persistent keeps attrs semantics and adds tracking without polluting objects."""

from __future__ import annotations

import copy
import enum
import pickle
from decimal import Decimal
from typing import Any

import attrs
import pytest

import memimg
from memimg import persistent
from memimg.core import _types
from tests.conftest import Images
from tests.models import Account, Bank, Entry, Validated


def test_attrs_semantics_are_kept() -> None:
    """Annotations are fields; defaults, factories, validators and converters work."""
    a = Account("ada")
    assert a.balance == Decimal("0") and a.tags == set() and a.entries == []
    assert [f.name for f in attrs.fields(Account)] == ["owner", "balance", "tags", "entries"]
    assert attrs.asdict(Account("bob", Decimal("2"))) == {
        "owner": "bob",
        "balance": Decimal("2"),
        "tags": set(),
        "entries": [],
    }
    assert repr(Entry("x")) == "Entry(label='x', amount=Decimal('0'))"
    with pytest.raises(ValueError):
        Validated(count=-1)
    assert Validated(label=5).label == "5"
    assert isinstance(a, Account)


def test_identity_semantics() -> None:
    """Entities compare and hash by identity, so they can be dict keys and set members."""
    a, b = Account("ada"), Account("ada")
    assert a != b and a == a
    assert len({a, b}) == 2
    assert {a: 1}[a] == 1


def test_slots_no_dict_and_no_visible_extras() -> None:
    """Instances have no __dict__; memimg's bookkeeping is not a field."""
    a = Account("ada")
    assert not hasattr(a, "__dict__")
    with pytest.raises(AttributeError):
        a.nope = 1  # type: ignore[attr-defined]
    assert "_mi_img" not in [f.name for f in attrs.fields(Account)]


def test_deepcopy_and_pickle_give_free_standing_copies(make_image: Images) -> None:
    """copy.deepcopy and pickle of attached objects give plain, untracked copies."""
    img = make_image(root=Bank)
    img.root.accounts["ada"] = Account("ada", tags={"x"}, entries=[Entry("e")])
    a = img.root.accounts["ada"]
    for clone in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert clone is not a and clone.owner == "ada"
        assert clone._mi_img is None
        assert type(clone.tags) is set and type(clone.entries) is list
        assert clone.entries[0] is not a.entries[0]
        seq = img.seq
        clone.balance = Decimal("5")
        clone.tags.add("y")
        assert img.seq == seq
    assert a.balance == 0 and a.tags == {"x"}


def test_name_and_aliases() -> None:
    """name= fixes the stored name; aliases are accepted when reading."""
    from memimg.core import _types

    @persistent(name="shop.Item2", aliases=("shop.OldItem",))
    class Item:
        title: str = ""

    assert _types.resolve("shop.Item2").cls is Item
    assert _types.resolve("shop.OldItem").cls is Item
    assert _types.info_of(Bank).name == "tests.Bank"


def test_default_name_is_module_qualname() -> None:
    """Without name=, the stored name is module.QualName."""
    from memimg.core import _types

    assert _types.info_of(Account).name == "tests.models.Account"


def test_forbidden_options() -> None:
    """Options that contradict entity semantics are rejected."""
    for option in ({"frozen": True}, {"eq": True}, {"slots": False}):
        with pytest.raises(TypeError, match="does not accept"):

            @persistent(**option)
            class X:
                a: int = 0


def test_super_and_methods_keep_working() -> None:
    """Methods using super() and __class__ still work after the class is rebuilt."""

    class Base:
        def hello(self) -> str:
            return "base"

    @persistent
    class Child(Base):
        x: int = 0

        def hello(self) -> str:
            return "child+" + super().hello() + "+" + __class__.__name__  # type: ignore[name-defined]

        @property
        def double(self) -> int:
            return self.x * 2

    c = Child(3)
    assert c.hello() == "child+base+Child"
    assert c.double == 6
    assert isinstance(c, Base)


def test_persistent_subclass(make_image: Images) -> None:
    """A persistent class may extend another; inherited fields are tracked too."""

    @persistent
    class Animal:
        name: str = ""

    @persistent
    class Dog(Animal):
        tricks: list[str] = attrs.field(factory=list)

    img = make_image(root=dict)
    img.root["d"] = Dog("rex")
    dog = img.root["d"]
    dog.name = "max"
    dog.tricks.append("sit")
    again = memimg.replay(img.events())
    assert again["d"].name == "max" and again["d"].tricks == ["sit"]
    assert type(again["d"]) is Dog


def test_validators_and_converters_run_on_attached_objects(make_image: Images) -> None:
    """A failing validator raises before anything is logged."""
    img = make_image(root=Validated)
    v = img.root
    seq = img.seq
    with pytest.raises(ValueError):
        v.count = -5
    assert v.count == 0 and img.seq == seq
    v.label = 12
    assert v.label == "12"
    assert memimg.replay(img.events()).label == "12"


def test_no_init_runs_on_replay(make_image: Images) -> None:
    """Replay builds objects without calling __init__ or __attrs_post_init__."""
    calls: list[str] = []

    @persistent
    class Watched:
        x: int = 0

        def __attrs_post_init__(self) -> None:
            calls.append("init")

    img = make_image(root=dict)
    img.root["w"] = Watched(4)
    assert calls == ["init"]
    assert memimg.replay(img.events())["w"].x == 4
    assert calls == ["init"]


def test_delete_field_is_tracked(make_image: Images) -> None:
    """del obj.field is an event; the field stays unset after replay."""
    img = make_image(root=dict)
    img.root["e"] = Entry("x")
    del img.root["e"].amount
    with pytest.raises(AttributeError):
        img.root["e"].amount
    assert [e.kind for e in img.events()][-1] == "obj.del"
    again = memimg.replay(img.events())
    with pytest.raises(AttributeError):
        again["e"].amount
    with pytest.raises(AttributeError):
        del img.root["e"].amount


@pytest.mark.parametrize(
    ("thing", "named"),
    [(lambda: 0, "the function <lambda>"), (3, "int 3"), ("Item", "str 'Item'")],
    ids=["function", "int", "str"],
)
def test_decorating_a_non_class(thing: Any, named: str) -> None:
    """@persistent on something that is not a class is a TypeError naming it and the kinds of class it
    takes."""
    with pytest.raises(TypeError, match="decorates a class") as info:
        persistent(thing)
    assert named in str(info.value) and "enum.Enum subclass" in str(info.value)


def test_class_access_returns_the_slot() -> None:
    """Account.owner is the member descriptor, as on a plain attrs class."""
    assert type(Account.owner).__name__ == "member_descriptor"


def _unused(x: Any) -> Any:  # pragma: no cover
    return x


# -- enums and frozen value classes: named, not rebuilt -------------------------------------------


def test_an_enum_is_named_not_rebuilt() -> None:
    """@persistent(name=..., aliases=...) on an Enum registers the class itself (same class, same
    members) under the stable name and its aliases; bare @persistent gives the default name."""

    class Plain(enum.Enum):
        A = "a"

    original = Plain
    Named = persistent(name="enums.Status", aliases=("enums.OldStatus",))(Plain)
    assert Named is original and Named.A.value == "a" and list(Named) == [Named.A]
    assert _types.resolve("enums.Status").cls is Named
    assert _types.resolve("enums.OldStatus").cls is Named
    assert _types.info_of(Named).kind == _types.ENUM  # type: ignore[union-attr]

    @persistent
    class Flag(enum.IntFlag):
        R = 1
        W = 2

    assert _types.info_of(Flag).name == f"{__name__}.{Flag.__qualname__}"  # type: ignore[union-attr]
    assert Flag.R | Flag.W == 3


def test_a_frozen_value_class_is_named_not_rebuilt() -> None:
    """@persistent(name=..., aliases=..., version=..., removed=...) on a frozen attrs class registers it
    as a value class with that name and schema; the class is unchanged (still frozen, still equal by
    value)."""

    @attrs.frozen
    class Money:
        cents: int = 0

    original = Money
    Named = persistent(name="values.Money", aliases=("values.Cash",), version=2, removed=("currency",))(Money)
    info = _types.info_of(Named)
    assert Named is original and Named(5) == Named(5) and attrs.fields(Named)[0].name == "cents"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Named(1).cents = 2  # type: ignore[misc]
    assert info is not None and info.kind == _types.VALUE and info.name == "values.Money"
    assert (info.aliases, info.version, info.removed) == (("values.Cash",), 2, ("currency",))
    assert _types.resolve("values.Cash") is info


def test_register_value_and_persistent_name_a_class_alike() -> None:
    """converter.register_value(cls, name=..., aliases=...) and @persistent(name=..., aliases=...) are one
    path: either gives an enum the same registration, and the later one renames it."""

    class Colour(enum.Enum):
        RED = 1

    memimg.converter.register_value(Colour, name="colours.Colour", aliases=("colours.Old",))
    first = _types.info_of(Colour)
    persistent(name="colours.Colour2", aliases=("colours.Colour",))(Colour)
    assert _types.info_of(Colour) is first and first is not None
    assert (first.name, first.aliases) == ("colours.Colour2", ("colours.Colour",))
    assert _types.resolve("colours.Colour") is first and _types.resolve("colours.Colour2") is first


def test_enum_and_value_class_options_that_mean_nothing_are_refused() -> None:
    """An enum has no fields to version or drop, and a value class is not rebuilt, so attrs options do
    not apply: each is a TypeError naming the class and what to do instead; nothing is registered."""

    class Mode(enum.Enum):
        ON = 1

    with pytest.raises(TypeError, match=r"enum .*Mode: an enum has no fields.*alias member") as info:
        persistent(name="modes.Mode", version=2)(Mode)
    with pytest.raises(TypeError, match="enum .*Mode: an enum has no fields"):
        persistent(removed=("x",))(Mode)
    with pytest.raises(TypeError, match=r"frozen attrs class \(.*Pair\) takes only.*not repr.*@attrs.frozen"):

        @persistent(repr=False)
        @attrs.frozen
        class Pair:
            a: int = 0

    assert "@persistent(version=..., removed=...)" in str(info.value)
    with pytest.raises(memimg.UnknownTypeError):
        _types.resolve("modes.Mode")


def test_an_enum_and_an_entity_may_not_share_a_stable_name() -> None:
    """Two classes of different kinds claiming one stable name are refused at definition time, whichever
    comes first, naming both classes and what to do; the first keeps the name."""

    @persistent(name="clash.Status")
    class Status(enum.Enum):
        OPEN = 1

    with pytest.raises(TypeError, match=r"entity .*Order and enum .*Status both claim .*'clash.Status'") as info:

        @persistent(name="clash.Status")
        class Order:
            n: int = 0

    assert "Give one of them another name" in str(info.value)
    assert _types.resolve("clash.Status").cls is Status

    @persistent(name="clash.Ticket")
    class Ticket:
        n: int = 0

    with pytest.raises(TypeError, match=r"enum .*Kind and entity .*Ticket both claim .*'clash.Ticket'"):
        persistent(name="clash.Ticket")(enum.Enum("Kind", "A B"))
    with pytest.raises(TypeError, match=r"value class .*Point and entity .*Ticket both claim"):

        @persistent(name="clash.Ticket")
        @attrs.frozen
        class Point:
            x: int = 0

    assert _types.resolve("clash.Ticket").cls is Ticket


def test_colliding_aliases_are_refused() -> None:
    """An alias that another live class has as its name, or lists in its aliases, is refused at definition
    time naming both classes and what to do (replay could not say which class reads the old states)."""

    @persistent(name="al.Item", aliases=("al.OldItem",))
    class Item:
        n: int = 0

    with pytest.raises(TypeError, match=r"alias 'al.Item' of .*Product is claimed.*Item still has that name"):

        @persistent(name="al.Product", aliases=("al.Item",))
        class Product:
            n: int = 0

    with pytest.raises(TypeError, match=r"alias 'al.OldItem' of .*Grade is claimed.*already lists it"):

        @persistent(name="al.Grade", aliases=("al.OldItem",))
        class Grade(enum.Enum):
            A = 1

    with pytest.raises(TypeError, match=r"alias 'al.OldItem' .*already lists it"):
        memimg.converter.register_value(Decimal, name="al.Money", aliases=("al.OldItem",))
    assert _types.resolve("al.OldItem").cls is Item
    with pytest.raises(memimg.UnknownTypeError):
        _types.resolve("al.Product")


def test_a_class_defined_again_at_the_same_place_takes_its_names_over() -> None:
    """A class defined again under the same module and qualified name (a reloaded module, a function run
    twice) is the same class again, not a clash: it takes its name and aliases over."""
    made = []
    for kind in ("entity", "enum", "entity"):  # a reload may even change its kind
        if kind == "entity":

            @persistent(name="again.Thing", aliases=("again.Old",))
            class Thing:
                n: int = 0

        else:

            @persistent(name="again.Thing", aliases=("again.Old",))
            class Thing(enum.Enum):  # type: ignore[no-redef]
                A = 1

        made.append(Thing)
    assert _types.resolve("again.Thing").cls is made[-1] and _types.resolve("again.Old").cls is made[-1]
