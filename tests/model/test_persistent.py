"""@persistent keeps attrs semantics and adds tracking without polluting objects."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal
from typing import Any

import attrs
import pytest

import memimg
from memimg import persistent
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


def test_decorating_a_non_class() -> None:
    """@persistent on a function is a TypeError."""
    with pytest.raises(TypeError):
        persistent(lambda: 0)  # type: ignore[type-var]


def test_class_access_returns_the_slot() -> None:
    """Account.owner is the member descriptor, as on a plain attrs class."""
    assert type(Account.owner).__name__ == "member_descriptor"


def _unused(x: Any) -> Any:  # pragma: no cover
    return x
