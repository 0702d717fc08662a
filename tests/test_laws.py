"""The laws of the system, checked on random programs (hypothesis state machines).

* the live graph equals ``replay(img.events())`` after every step;
* it equals the graph recovered by reopening (newest snapshot + tail);
* snapshot + tail equals the full replay;
* a discarded transaction leaves the committed graph as it was; a committed
  one equals what replay gives;

with types, sharing and cycles included (the graphs below are built from
references to existing nodes, so every cycle shape turns up).

The machine runs on an SQLite file only: the laws are the image's, whatever
the store, and hypothesis runs many programs (reopening is one of its rules;
the tests that reopen on every store are in test_image and test_identity).
"""

from __future__ import annotations

import shutil
import tempfile
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import memimg
from memimg import TrackedDict, TrackedList, TrackedSet
from tests.graphs import reachable
from tests.models import Color, Money, Node


def canonical(root: Any) -> Any:
    """A description of the graph that does not depend on object ids or set order."""
    data = memimg.serialize(memimg.deserialize(memimg.serialize(root)))
    for record in data["objects"]:
        if record[1] == "set":
            record[2] = sorted(record[2], key=repr)
    data["objects"].sort(key=lambda r: r[0])
    data.pop("seq")
    data.pop("types")
    return data


def walk(root: Any) -> list[Any]:
    """Every node and tracked collection reachable from *root*."""
    return [o for o in reachable(root) if isinstance(o, (Node, TrackedList, TrackedDict, TrackedSet))]


scalars = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.text(max_size=3),
    st.sampled_from([Decimal("1.10"), Color.RED, Money(Decimal("2")), (1, "a"), frozenset({1, 2}), 2**70, -0.0]),
)


class ImageLaws(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = f"{self.dir}/laws.db"
        self.img = memimg.open(self.path, root=Node, snapshot_every=None)
        self.tx: memimg.Transaction | None = None
        self.before_tx: Any = None

    def teardown(self) -> None:
        if self.tx is not None:
            self.tx.discard()
        self.img.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- drawing targets and values ------------------------------------------------

    def objects(self, cls: type) -> list[Any]:
        return [o for o in walk(self.img.root) if isinstance(o, cls)]

    def value(self, data: st.DataObject) -> Any:
        kind = data.draw(
            st.sampled_from(["scalar", "scalar", "existing", "new_node", "new_list", "new_dict", "new_set"])
        )
        if kind == "scalar":
            return data.draw(scalars)
        if kind == "existing":
            return data.draw(st.sampled_from(walk(self.img.root)))
        if kind == "new_node":
            return Node(value=data.draw(scalars), next=data.draw(st.sampled_from(self.objects(Node))))
        if kind == "new_list":
            return [data.draw(scalars), data.draw(st.sampled_from(self.objects(Node)))]
        if kind == "new_dict":
            return {"k": data.draw(scalars), "n": Node()}
        return {data.draw(st.integers(0, 3)), "s"}

    # -- rules ----------------------------------------------------------------------

    @rule(data=st.data(), field=st.sampled_from(["value", "next", "children", "meta"]))
    def set_field(self, data: st.DataObject, field: str) -> None:
        node = data.draw(st.sampled_from(self.objects(Node)))
        value = self.value(data)
        if field in ("children", "meta"):
            value = [value] if field == "children" else {"v": value}
        setattr(node, field, value)

    @rule(data=st.data())
    def list_op(self, data: st.DataObject) -> None:
        lists = self.objects(TrackedList)
        if not lists:
            return
        lst = data.draw(st.sampled_from(lists))
        op = data.draw(st.sampled_from(["append", "insert", "set", "del", "pop", "sort", "reverse", "splice", "clear"]))
        n = len(lst)
        if op == "append":
            lst.append(self.value(data))
        elif op == "insert":
            lst.insert(data.draw(st.integers(-2, n + 1)), self.value(data))
        elif op == "set" and n:
            lst[data.draw(st.integers(0, n - 1))] = self.value(data)
        elif op == "del" and n:
            del lst[data.draw(st.integers(0, n - 1))]
        elif op == "pop" and n:
            lst.pop()
        elif op == "sort":
            lst.sort(key=repr)
        elif op == "reverse":
            lst.reverse()
        elif op == "splice":
            lst[1:3] = [self.value(data)]
        elif op == "clear":
            lst.clear()

    @rule(data=st.data())
    def dict_op(self, data: st.DataObject) -> None:
        dicts = self.objects(TrackedDict)
        if not dicts:
            return
        d = data.draw(st.sampled_from(dicts))
        key = data.draw(st.sampled_from(["a", "b", 1, (2, "x")]))
        op = data.draw(st.sampled_from(["set", "set", "del", "update", "setdefault", "popitem", "clear"]))
        if op == "set":
            d[key] = self.value(data)
        elif op == "del" and key in d:
            del d[key]
        elif op == "update":
            d.update({key: self.value(data), "z": 0})
        elif op == "setdefault":
            d.setdefault(key, self.value(data))
        elif op == "popitem" and d:
            d.popitem()
        elif op == "clear":
            d.clear()

    @rule(data=st.data())
    def set_op(self, data: st.DataObject) -> None:
        sets = self.objects(TrackedSet)
        if not sets:
            return
        s = data.draw(st.sampled_from(sets))
        m = data.draw(st.sampled_from([0, 1, 2, "s", (1, 2)]))
        op = data.draw(st.sampled_from(["add", "discard", "ixor", "iand", "clear"]))
        if op == "add":
            s.add(m)
        elif op == "discard":
            s.discard(m)
        elif op == "ixor":
            s ^= {m, 9}
        elif op == "iand":
            s &= {m, 0, 1}
        else:
            s.clear()

    @precondition(lambda self: self.tx is None)
    @rule()
    def snapshot(self) -> None:
        self.img.snapshot()

    @precondition(lambda self: self.tx is None)
    @rule()
    def reopen(self) -> None:
        before = canonical(self.img.root)
        self.img.close()
        self.img = memimg.open(self.path, root=Node, snapshot_every=None)
        assert canonical(self.img.root) == before

    @precondition(lambda self: self.tx is None)
    @rule()
    def begin(self) -> None:
        self.before_tx = canonical(self.img.root)
        self.tx = self.img.begin()

    @precondition(lambda self: self.tx is not None)
    @rule()
    def commit(self) -> None:
        inside = canonical(self.img.root)
        assert self.tx is not None
        self.tx.save()
        self.tx = None
        assert canonical(self.img.root) == inside

    @precondition(lambda self: self.tx is not None)
    @rule()
    def discard(self) -> None:
        assert self.tx is not None
        self.tx.discard()
        self.tx = None
        assert canonical(self.img.root) == self.before_tx

    @invariant()
    def live_equals_replay(self) -> None:
        if self.tx is None:
            assert canonical(self.img.root) == canonical(memimg.replay(self.img.events()))


ImageLaws.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("MEMIMG_LAW_EXAMPLES", 150)),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestImageLaws = ImageLaws.TestCase
