"""Tracked collections: the canary tests.

Every mutating operation is run on a tracked collection and on a plain shadow
copy; after each one the two must be equal (contents, return value, raised
exception), and at the end the log must replay to the same contents -- both
when each operation commits by itself and inside a transaction, where the
transaction must read its own writes while the committed state stays put.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memimg
from memimg import TrackedDict, TrackedList, TrackedSet
from tests.conftest import Images
from tests.models import Box, Entry

small = st.integers(-3, 6)
items = st.lists(small, max_size=4)
index = st.integers(-6, 8)

LIST_OPS: dict[str, Any] = {
    "append": (lambda c, x: c.append(x), st.tuples(small)),
    "extend": (lambda c, xs: c.extend(xs), st.tuples(items)),
    "extend_gen": (lambda c, xs: c.extend(x for x in xs), st.tuples(items)),
    "insert": (lambda c, i, x: c.insert(i, x), st.tuples(index, small)),
    "setitem": (lambda c, i, x: c.__setitem__(i, x), st.tuples(index, small)),
    "setslice": (lambda c, i, j, xs: c.__setitem__(slice(i, j), xs), st.tuples(index, index, items)),
    "setstep": (lambda c, xs: c.__setitem__(slice(None, None, 2), xs), st.tuples(items)),
    "delitem": (lambda c, i: c.__delitem__(i), st.tuples(index)),
    "delslice": (lambda c, i, j, k: c.__delitem__(slice(i, j, k or None)), st.tuples(index, index, st.integers(-2, 2))),
    "pop": (lambda c: c.pop(), st.tuples()),
    "pop_i": (lambda c, i: c.pop(i), st.tuples(index)),
    "remove": (lambda c, x: c.remove(x), st.tuples(small)),
    "clear": (lambda c: c.clear(), st.tuples()),
    "sort": (lambda c: c.sort(), st.tuples()),
    "sort_rev_key": (lambda c: c.sort(key=lambda v: v % 3, reverse=True), st.tuples()),
    "reverse": (lambda c: c.reverse(), st.tuples()),
    "iadd": (lambda c, xs: c.__iadd__(xs), st.tuples(items)),
    "imul": (lambda c, n: c.__imul__(n), st.tuples(st.integers(-1, 3))),
}

keys = st.sampled_from(["a", "b", "c", 1, 2, (1, "x")])
DICT_OPS: dict[str, Any] = {
    "setitem": (lambda c, k, v: c.__setitem__(k, v), st.tuples(keys, small)),
    "delitem": (lambda c, k: c.__delitem__(k), st.tuples(keys)),
    "pop": (lambda c, k: c.pop(k), st.tuples(keys)),
    "pop_default": (lambda c, k: c.pop(k, "dflt"), st.tuples(keys)),
    "popitem": (lambda c: c.popitem(), st.tuples()),
    "setdefault": (lambda c, k, v: c.setdefault(k, v), st.tuples(keys, small)),
    "update": (lambda c, d: c.update(d), st.tuples(st.dictionaries(keys, small, max_size=3))),
    "update_kw": (lambda c, v: c.update([("a", v)], b=v), st.tuples(small)),
    "ior": (lambda c, d: c.__ior__(d), st.tuples(st.dictionaries(keys, small, max_size=3))),
    "clear": (lambda c: c.clear(), st.tuples()),
}

members = st.sampled_from([0, 1, 2, 3, "x", (1, 2)])
msets = st.frozensets(members, max_size=4)
SET_OPS: dict[str, Any] = {
    "add": (lambda c, m: c.add(m), st.tuples(members)),
    "discard": (lambda c, m: c.discard(m), st.tuples(members)),
    "remove": (lambda c, m: c.remove(m), st.tuples(members)),
    "pop": (lambda c: c.pop(), st.tuples()),
    "clear": (lambda c: c.clear(), st.tuples()),
    "update": (lambda c, a, b: c.update(a, b), st.tuples(msets, msets)),
    "difference_update": (lambda c, a: c.difference_update(a), st.tuples(msets)),
    "intersection_update": (lambda c, a, b: c.intersection_update(a, b), st.tuples(msets, msets)),
    "symmetric_difference_update": (lambda c, a: c.symmetric_difference_update(a), st.tuples(msets)),
    "ior": (lambda c, a: c.__ior__(set(a)), st.tuples(msets)),
    "isub": (lambda c, a: c.__isub__(set(a)), st.tuples(msets)),
    "iand": (lambda c, a: c.__iand__(set(a)), st.tuples(msets)),
    "ixor": (lambda c, a: c.__ixor__(set(a)), st.tuples(msets)),
}

TABLES = {list: LIST_OPS, dict: DICT_OPS, set: SET_OPS}


def ops_for(kind: type) -> st.SearchStrategy[list[tuple[str, tuple[Any, ...]]]]:
    table = TABLES[kind]
    return st.lists(st.one_of([st.tuples(st.just(name), args) for name, (_, args) in table.items()]), max_size=12)


def run(op: Callable[..., Any], target: Any, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        result = op(target, *args)
    except Exception as err:  # the same exception type must come from both
        return "raise", type(err)
    return "ok", result


def same_result(kind: type, tracked: Any, tr: tuple[str, Any], plain: Any, pr: tuple[str, Any]) -> bool:
    if tr[0] != pr[0]:
        return False
    if tr[0] == "raise":
        return bool(tr[1] is pr[1])
    if pr[1] is plain:
        return bool(tr[1] is tracked)
    if kind is set and tr[1] is not None and pr[1] is not None and not isinstance(pr[1], bool):
        return True  # set.pop returns an arbitrary member; contents are compared below
    return bool(tr[1] == pr[1])


def initial(kind: type) -> Any:
    return {list: [1, 2, 3, 2], dict: {"a": 1, 1: 2}, set: {0, 1, "x"}}[kind]


def check_program(kind: type, program: list[tuple[str, tuple[Any, ...]]], in_tx: bool) -> None:
    img = memimg.open(root=Box)
    img.root.content = initial(kind)
    tracked = img.root.content
    assert type(tracked) is {list: TrackedList, dict: TrackedDict, set: TrackedSet}[kind]
    plain = copy.deepcopy(initial(kind))
    table = TABLES[kind]
    if in_tx:
        tx = img.begin()
    for name, args in program:
        op = table[name][0]
        pr = run(op, plain, args)
        if kind is set and name == "pop" and pr[0] == "ok":
            # the tracked set may pop another member; make the shadow follow it
            plain.add(pr[1])
            tr = run(op, tracked, args)
            plain.discard(tr[1])
        else:
            tr = run(op, tracked, args)
        assert same_result(kind, tracked, tr, plain, pr), (name, args, tr, pr)
        assert tracked == plain, (name, args)
        if kind is dict:
            assert list(tracked.items()) == list(plain.items())
        assert len(tracked) == len(plain)
        assert sorted(map(repr, tracked)) == sorted(map(repr, plain))
    if in_tx:
        tx.save()
    assert tracked == plain
    replayed = memimg.replay(img.events()).content
    assert replayed == plain
    if kind is dict:
        assert list(replayed) == list(plain)
    if kind is list:
        assert list(replayed) == plain


@pytest.mark.parametrize("kind", [list, dict, set], ids=["list", "dict", "set"])
@pytest.mark.parametrize("in_tx", [False, True], ids=["each-commits", "in-transaction"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_canary(kind: type, in_tx: bool, data: st.DataObject) -> None:
    """Every operation gives what the builtin gives, and the log replays to it.

    On the memory store only: tracking does not depend on the store, and hypothesis runs many programs
    (the tests below run single operations on every store).
    """
    check_program(kind, data.draw(ops_for(kind)), in_tx)


@pytest.mark.parametrize("kind", [list, dict, set], ids=["list", "dict", "set"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_discarded_transaction_leaves_no_trace(kind: type, data: st.DataObject) -> None:
    """Whatever a transaction did to a collection, discarding it restores the committed state (on the
    memory store only, as the canary above)."""
    program = data.draw(ops_for(kind))
    img = memimg.open(root=Box)
    img.root.content = initial(kind)
    tracked = img.root.content
    seq = img.seq
    tx = img.begin()
    for name, args in program:
        run(TABLES[kind][name][0], tracked, args)
    tx.discard()
    assert tracked == initial(kind)
    assert img.seq == seq


def test_every_listed_mutator_is_tracked() -> None:
    """The spec's list of mutating operations are all in the tables."""
    from memimg.model._collections import DICT_MUTATORS, LIST_MUTATORS, SET_MUTATORS

    assert set(
        "append extend insert pop remove clear sort reverse __setitem__ __delitem__ __iadd__ __imul__".split()
    ) <= set(LIST_MUTATORS)
    assert set("__setitem__ __delitem__ update setdefault pop popitem clear __ior__".split()) <= set(DICT_MUTATORS)
    assert set(
        "add discard remove pop clear update difference_update intersection_update symmetric_difference_update "
        "__ior__ __iand__ __isub__ __ixor__".split()
    ) <= set(SET_MUTATORS)


def test_each_mutation_is_one_event_of_its_kind(make_image: Images) -> None:
    """Operations map to the documented event kinds."""
    img = make_image(root=Box)
    img.root.content = []
    lst = img.root.content

    def kinds_of(fn: Callable[[], Any]) -> list[str]:
        seq = img.seq
        fn()
        return [e.kind for e in img.events(since=seq)]

    assert kinds_of(lambda: lst.append(1)) == ["list.append"]
    assert kinds_of(lambda: lst.extend([3, 2])) == ["list.append"]
    assert kinds_of(lambda: lst.insert(0, 9)) == ["list.insert"]
    assert kinds_of(lambda: lst.__setitem__(1, 5)) == ["list.set"]
    assert kinds_of(lambda: lst.pop(0)) == ["list.del"]
    assert kinds_of(lambda: lst.sort()) == ["list.reorder"]
    assert kinds_of(lambda: lst.reverse()) == ["list.reverse"]
    assert kinds_of(lambda: lst.__setitem__(slice(0, 2), [7])) == ["list.splice"]
    lst.sort()
    assert kinds_of(lambda: lst.sort()) == []  # already sorted: nothing happened, nothing logged
    assert kinds_of(lambda: lst.clear()) == ["list.clear"]
    img.root.content = {}
    d = img.root.content
    assert kinds_of(lambda: d.__setitem__("k", 1)) == ["dict.set"]
    assert kinds_of(lambda: d.update(a=1, b=2)) == ["dict.update"]
    assert kinds_of(lambda: d.pop("a")) == ["dict.del"]
    assert kinds_of(lambda: d.clear()) == ["dict.clear"]
    img.root.content = set()
    s = img.root.content
    assert kinds_of(lambda: s.add(1)) == ["set.add"]
    assert kinds_of(lambda: s.add(1)) == []
    assert kinds_of(lambda: s.discard(1)) == ["set.discard"]
    assert kinds_of(lambda: s.update({1, 2})) == ["set.add"]
    assert kinds_of(lambda: s.clear()) == ["set.clear"]


def test_sort_records_the_outcome_not_the_call(make_image: Images) -> None:
    """Replaying a sort never calls the key function again."""
    calls = []

    def key(v: int) -> int:
        calls.append(v)
        return -v

    img = make_image(root=Box)
    img.root.content = [3, 1, 2]
    img.root.content.sort(key=key)
    assert img.root.content == [3, 2, 1]
    n = len(calls)
    assert memimg.replay(img.events()).content == [3, 2, 1]
    assert len(calls) == n


def test_still_instances_of_the_builtins(make_image: Images) -> None:
    """Tracked collections are list/dict/set instances and look like them."""
    img = make_image(root=Box)
    img.root.content = {"l": [1], "s": {2}, "d": {"x": 3}}
    c = img.root.content
    assert isinstance(c, dict) and isinstance(c["l"], list) and isinstance(c["s"], set)
    assert repr(c["s"]) == "{2}" and repr(c["l"]) == "[1]"
    assert json.loads(json.dumps({"l": c["l"], "d": c["d"]})) == {"l": [1], "d": {"x": 3}}
    assert type(c["l"].copy()) is list and type(c["s"] | {3}) is set and type(c["d"].copy()) is dict
    assert type(copy.copy(c["l"])) is list and type(pickle.loads(pickle.dumps(c))["l"]) is list


def test_nested_plain_containers_are_converted(make_image: Images) -> None:
    """Plain containers anywhere in an assigned value become tracked, recursively."""
    img = make_image(root=Box)
    value = {"a": [1, {"b": {2, 3}}], "e": Entry("x")}
    img.root.content = value
    c = img.root.content
    assert type(c) is TrackedDict and type(c["a"]) is TrackedList and type(c["a"][1]) is TrackedDict
    assert type(c["a"][1]["b"]) is TrackedSet
    assert value["a"].__class__ is list  # the caller's own containers are left alone
    c["a"][1]["b"].add(4)
    assert memimg.replay(img.events()).content["a"][1]["b"] == {2, 3, 4}


def test_shared_plain_container_stays_shared(make_image: Images) -> None:
    """The same plain list assigned twice in one value becomes one tracked list."""
    img = make_image(root=Box)
    shared = [1]
    img.root.content = {"x": shared, "y": shared}
    c = img.root.content
    assert c["x"] is c["y"]
    again = memimg.replay(img.events()).content
    assert again["x"] is again["y"]


def test_dict_order_survives_replay(make_image: Images) -> None:
    """Insertion order, updates in place, and delete-then-reinsert all replay exactly."""
    img = make_image(root=Box)
    img.root.content = {}
    d = img.root.content
    for k in "cab":
        d[k] = k
    d["c"] = "again"
    del d["a"]
    d["a"] = "back"
    d.update(z=1, b=2)
    assert list(memimg.replay(img.events()).content.items()) == list(d.items())


def test_unattached_tracked_collection_is_a_plain_collection() -> None:
    """A tracked collection belonging to no image behaves like the builtin."""
    t = TrackedList([1, 2])
    t.append(3)
    t.sort(reverse=True)
    assert t == [3, 2, 1]
    d = TrackedDict(a=1)
    d["b"] = 2
    assert d == {"a": 1, "b": 2}


def test_failed_operation_changes_nothing(make_image: Images) -> None:
    """An operation that raises leaves the collection and the log as they were."""
    img = make_image(root=Box)
    img.root.content = [1, 2]
    lst = img.root.content
    seq = img.seq
    for bad in (lambda: lst.remove(9), lambda: lst.pop(7), lambda: lst.__setitem__(5, 0), lambda: lst.index(9)):
        with pytest.raises((ValueError, IndexError)):
            bad()
    with pytest.raises(memimg.UnsupportedValueError):
        lst.extend([3, lambda: 0])
    with pytest.raises(TypeError):
        lst.sort(key=lambda v: None if v == 1 else "x")
    assert lst == [1, 2] and img.seq == seq


def test_entities_as_keys_and_members(make_image: Images) -> None:
    """Entities hash by identity and survive replay as dict keys and set members."""
    img = make_image(root=Box)
    a, b = Entry("a"), Entry("b")
    img.root.content = {a: "first", b: "second"}
    img.root.other = {a}
    again = memimg.replay(img.events())
    keys = list(again.content)
    assert [k.label for k in keys] == ["a", "b"]
    assert next(iter(again.other)) is keys[0]
