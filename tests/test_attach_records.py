"""A new subgraph is written as one event holding a record per new object; replaying the log rebuilds it.

Attach records are encoded by compiled per-class encoders (entity states as
dicts of their set fields, references to objects that already have an id
written inline, new objects given ids as they are met). Each test reopens
the image by replaying its events -- no snapshot is ever taken -- and
compares the whole graph with the one that was committed.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import attrs
import orjson
import pytest

import memimg
from memimg import persistent
from memimg.core import _encoders
from memimg.model._tracking import disable_now
from tests.conftest import Images
from tests.test_snapshot_format import Computed, Holder, Node, _content, _fill


def _no_snapshots(store: memimg.Store) -> None:
    assert store.snapshots() == []


def _attach_payloads(store: memimg.Store) -> list[Any]:
    """The records of every event after the root's creation that attached objects, in seq order."""
    return [parts[1] for row in store.read(after=1) if len(parts := orjson.loads(row[5])) > 1]


@pytest.mark.parametrize("in_tx", [False, True], ids=["outside a transaction", "inside a transaction"])
def test_every_kind_of_state_survives_replay_of_its_attach(make_image: Images, in_tx: bool) -> None:
    """Every kind of value and reference, a cycle, and an object with an unset field, attached and replayed.

    Inside a transaction read hooks are installed, so the encoders read
    fields through the raw slot getters; outside one (hooks removed first)
    through plain attribute loads.
    """
    hooks_off = disable_now()
    assert hooks_off
    with make_image(root=Holder, snapshot_every=None) as img:
        old = Node("committed before")
        img.root.misc = old  # given an id now; _fill replaces it, and only half_set refers to it after
        with img.transaction() if in_tx else contextlib.nullcontext():
            _fill(img.root)
            half_set = Node("half set", next=old)  # references an object that already has an id
            del half_set.label  # unset before it is attached
            img.root.nodes.append(half_set)
        expected = _content(img.root)
    _no_snapshots(make_image.store())
    with make_image(root=Holder) as img:
        assert _content(img.root) == expected
        last = img.root.nodes[-1]
        assert not hasattr(last, "label") and last.next.label == "committed before"
        assert img.root.nodes[0].next is img.root.nodes[7]


def test_an_unset_field_of_a_class_with_getattr_is_not_recorded(make_image: Images) -> None:
    """A class whose __getattr__ computes missing attributes: the attach record holds only the set fields."""
    obj = Computed("x")
    del obj.label
    hooks_off = disable_now()  # no read hooks: the encoder may use plain attribute loads, but not on this class
    assert hooks_off
    with make_image(root=Holder, snapshot_every=None) as img:
        img.root.misc = obj
    (records,) = _attach_payloads(make_image.store())
    assert [state for _oid, name, state in records if name == "fmt.Computed"] == [{}]
    with make_image(root=Holder) as img:
        assert "label" not in memimg.serialize(img.root.misc)["objects"][0][2]


def test_records_write_fields_by_name_in_declared_order(make_image: Images) -> None:
    """An entity's record state is the dict of its fields in declared order; references are ``["r", oid]``."""
    with make_image(root=Holder, snapshot_every=None) as img:
        img.root.misc = Node("a", 5, tags=["t", 1])
        oid = img.root.misc._mi_oid  # its object id (internal)
    (records,) = _attach_payloads(make_image.store())
    states = {o: (name, state) for o, name, state in records}
    name, state = states[oid]
    assert name == "fmt.Node" and list(state) == ["label", "n", "next", "tags", "extra"]
    assert state["label"] == "a" and state["n"] == 5 and state["next"] is None and state["extra"] is None
    tag_oid = state["tags"][1]
    assert state["tags"][0] == "r" and states[tag_oid] == ("list", ["t", 1])


@persistent(name="enc.Once")
class Once:
    label: str = ""
    other: Any = None


def test_serialize_compiles_a_class_encoder_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each free-standing ``serialize`` builds a new graph; the class's compiled encoder is kept across them."""
    compiled: list[str] = []
    real = _encoders._state_encoder

    def counting(info: Any, *args: Any) -> Any:
        compiled.append(info.name)
        return real(info, *args)

    monkeypatch.setattr(_encoders, "_state_encoder", counting)
    for _ in range(3):
        data = memimg.serialize(Once("a", other=Once("b")))
        assert [state["label"] for _oid, _name, state in data["objects"]] == ["a", "b"]
    assert compiled.count("enc.Once") <= 1  # zero if an earlier test compiled it already


@persistent(name="enc.Late")
class Late:
    label: str = ""


def test_a_getattr_added_to_a_class_after_encoding_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder compiled for plain attribute loads is not reused once the class computes missing attributes."""
    hooks_off = disable_now()  # no read hooks: plain attribute loads allowed
    assert hooks_off
    obj = Late("x")
    del obj.label
    assert memimg.serialize(obj)["objects"][0][2] == {}
    monkeypatch.setattr(Late, "__getattr__", lambda self, name: f"computed {name}", raising=False)
    assert obj.label == "computed label"
    assert memimg.serialize(obj)["objects"][0][2] == {}  # still unset, not the computed value


@attrs.frozen
class Fragile:
    text: str


def test_an_attribute_error_of_a_value_hook_propagates_and_the_hook_runs_once() -> None:
    """An AttributeError raised while encoding a value is the hook's error, not an unset field to re-read."""
    calls: list[str] = []

    def unstructure(value: Fragile) -> Any:
        calls.append(value.text)
        raise AttributeError(f"no encoding for {value.text!r}")

    conv = memimg.Converter()
    conv.register_value(Fragile, name="enc.Fragile", unstructure=unstructure, structure=lambda d, t: Fragile(d))
    with pytest.raises(AttributeError, match="no encoding for 'boom'") as caught:
        memimg.serialize(Once("a", other=Fragile("boom")), converter=conv)
    assert calls == ["boom"]
    assert caught.value.__context__ is None  # raised once, not again while handling a first one


class _Key:
    """A dict key whose hash notes whether the collector is on, and may fail."""

    def __init__(self, name: str, log: list[tuple[str, bool]], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def __hash__(self) -> int:
        self.log.append((self.name, gc.isenabled()))
        if self.fail:
            raise RuntimeError(f"no hash for {self.name}")
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and other.name == self.name


def test_the_collector_is_paused_from_the_first_attached_value_of_a_mutation(make_image: Images) -> None:
    """A generator that ``extend`` reads runs with the collector on (it is read before planning); a
    planner's user code (a key's ``__hash__``) too until a value needs attaching, with it off after;
    on again after the commit, and after a plan that fails once the collector is paused."""
    pulled: list[bool] = []

    def items() -> Any:
        for item in ("plain", 7, Once("new"), "after"):
            pulled.append(gc.isenabled())
            yield item

    hashed: list[tuple[str, bool]] = []
    conv = memimg.Converter()
    conv.register_value(_Key, name="enc.Key", unstructure=lambda k: k.name, structure=lambda d, t: _Key(d, []))
    assert gc.isenabled()
    with make_image(root=Holder, snapshot_every=None, converter=conv) as img:
        img.root.nodes.extend(items())
        assert gc.isenabled() and pulled == [True] * 4
        assert [n if not isinstance(n, Once) else n.label for n in img.root.nodes] == ["plain", 7, "new", "after"]
        img.root.index.update([(_Key("first", hashed), Once("a")), (_Key("second", hashed), 1)])
        assert gc.isenabled()
        assert hashed[:2] == [("first", True), ("second", False)]  # later hashes are the dict's own
        hashed.clear()
        with pytest.raises(RuntimeError, match="no hash for bad"):
            img.root.index.update([(_Key("third", hashed), Once("b")), (_Key("bad", hashed, fail=True), 2)])
        assert gc.isenabled()
        assert hashed == [("third", True), ("bad", False)]
        assert sorted(k.name for k in img.root.index) == ["first", "second"]


@persistent
class HalfSet:
    price: Any
    note: Any = attrs.field()


def test_an_attribute_error_of_a_value_hook_refuses_the_commit_of_an_entity_with_an_unset_field(
    make_image: Images,
) -> None:
    """An entity with an unset field is written by field name; a value of it whose hook raises AttributeError
    refuses the commit (the field is not taken for unset and left out), and nothing is changed."""

    def unstructure(value: Fragile) -> Any:
        raise AttributeError("Fragile has no attribute 'amount'")

    conv = memimg.Converter()
    conv.register_value(Fragile, name="enc.Fragile", unstructure=unstructure, structure=lambda d, t: Fragile(d))
    item = HalfSet.__new__(HalfSet)
    object.__setattr__(item, "price", Fragile("5"))
    with make_image(converter=conv) as img:
        head = img.seq
        with pytest.raises((AttributeError, memimg.MemimgError), match="amount"):
            img.root["item"] = item
        assert img.seq == head and "item" not in img.root
