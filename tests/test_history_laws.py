"""The law of history, on random programs: ``history(o)`` retells what was observed of ``o``, live.

A program mutates one entity field, a list, a dict and a set, alone or in
transactions (some discarded), takes snapshots and compacts the log.
After every commit the live state of each is recorded with the image's
seq. Then, starting from the state at the oldest point the log still
holds, applying each change's ``new`` in place of its ``old`` must give
the recorded state at every seq -- and each ``old`` must be what was there
just before. Checked on the image that ran the program, and again after
reopening it (the state then comes from the newest snapshot and the tail).
Every first state counts as read from a big event (remembered: each history
is asked twice, the second from what the first remembered), a dict key may be
None, and the entity's field may be deleted before it is attached (a first
state without it).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memimg
from memimg import MISSING
from memimg.image import _history
from tests.models import Box, Node

values = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "b", (1, "x")]), st.just(("new",)))
keys = st.sampled_from(["k", "l", None])
members = st.sampled_from([1, 2, 3, "z"])
index = st.integers(0, 4)

ops = st.one_of(
    st.tuples(st.just("set"), values),
    st.tuples(st.just("del")),
    st.tuples(st.just("self")),
    st.tuples(st.just("append"), values),
    st.tuples(st.just("extend"), st.lists(values, max_size=3)),
    st.tuples(st.just("insert"), index, values),
    st.tuples(st.just("setitem"), index, values),
    st.tuples(st.just("delitem"), index),
    st.tuples(st.just("splice"), index, index, st.lists(values, max_size=2)),
    st.tuples(st.just("sort")),
    st.tuples(st.just("reverse")),
    st.tuples(st.just("lclear")),
    st.tuples(st.just("dset"), keys, values),
    st.tuples(st.just("ddel"), keys),
    st.tuples(st.just("dupdate"), st.dictionaries(keys, values, max_size=2)),
    st.tuples(st.just("dclear")),
    st.tuples(st.just("sadd"), members),
    st.tuples(st.just("sdiscard"), members),
    st.tuples(st.just("sor"), st.sets(members, max_size=2)),
    st.tuples(st.just("sclear")),
)
steps = st.one_of(
    ops,
    st.tuples(st.just("tx"), st.lists(ops, min_size=1, max_size=4), st.booleans()),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("compact")),
)


class Discard(Exception):
    """Raised in a transaction to discard it."""


def value(v: Any) -> Any:
    return Node(value="fresh") if v == ("new",) else v


def run(n: Node, op: tuple[Any, ...]) -> None:
    name, *args = op
    lst, d, s = n.children, n.meta, n.next
    if name == "set":
        n.value = value(args[0])
    elif name == "del":
        if hasattr(n, "value"):
            del n.value
    elif name == "self":
        n.value = n
    elif name == "append":
        lst.append(value(args[0]))
    elif name == "extend":
        lst.extend([value(v) for v in args[0]])
    elif name == "insert":
        lst.insert(args[0], value(args[1]))
    elif name in ("setitem", "delitem") and args[0] < len(lst):
        if name == "setitem":
            lst[args[0]] = value(args[1])
        else:
            del lst[args[0]]
    elif name == "splice":
        lst[args[0] : args[1]] = [value(v) for v in args[2]]
    elif name == "sort":
        lst.sort(key=repr)
    elif name == "reverse":
        lst.reverse()
    elif name == "lclear":
        lst.clear()
    elif name == "dset":
        d[args[0]] = value(args[1])
    elif name == "ddel":
        d.pop(args[0], None)
    elif name == "dupdate":
        d.update({k: value(v) for k, v in args[0].items()})
    elif name == "dclear":
        d.clear()
    elif name == "sadd":
        s.add(args[0])
    elif name == "sdiscard":
        s.discard(args[0])
    elif name == "sor":
        s |= args[0]
    elif name == "sclear":
        s.clear()


def canon(v: Any) -> Any:
    """A value, with objects of the graph as their ids (so states of two images compare)."""
    oid = getattr(v, "_mi_oid", None)
    if oid is not None and hasattr(type(v), "_mi_oid"):
        return ("obj", oid)
    if isinstance(v, memimg.Collected):
        return ("obj", v.oid)
    if type(v) is tuple:
        return tuple(canon(x) for x in v)
    return v


def observe(img: memimg.MemoryImage, n: Node) -> tuple[int, dict[str, Any]]:
    return img.seq, {
        "value": canon(getattr(n, "value", MISSING)),
        "list": [canon(x) for x in n.children],
        "dict": {k: canon(v) for k, v in n.meta.items()},
        "set": {canon(x) for x in n.next},
    }


def compact(img: memimg.MemoryImage) -> int:
    seq = img.snapshot()
    img.store.delete_events_before(seq)
    img.store.delete_snapshots_before(seq)
    return seq


def retell(img: memimg.MemoryImage, n: Node, seen: list[tuple[int, dict[str, Any]]], first: int) -> None:
    """Check the history of *n* and its collections against *seen* (the states from seq *first* on)."""
    base = max(i for i, (seq, _) in enumerate(seen) if seq <= first)
    state = {k: copy.copy(v) for k, v in seen[base][1].items()}
    changes = {
        "value": img.history(n, "value"),
        "list": img.history(n.children),
        "dict": img.history(n.meta),
        "set": img.history(n.next),
    }
    # asked again: from the first states remembered now, the same
    assert changes["value"] == img.history(n, "value") and changes["list"] == img.history(n.children)
    assert changes["dict"] == img.history(n.meta) and changes["set"] == img.history(n.next)
    assert [c for c in img.history(n) if c.field == "value"] == changes["value"]
    for part, found in changes.items():
        assert [c.seq for c in found] == sorted(c.seq for c in found)
        assert all(c.seq > first for c in found), f"{part}: a change from before seq {first}"
    pending = sorted((c.seq, i, part, c) for part, found in changes.items() for i, c in enumerate(found))
    at = 0
    for seq, want in seen[base + 1 :]:
        while at < len(pending) and pending[at][0] <= seq:
            _, _, part, c = pending[at]
            apply(state, part, c)
            at += 1
        assert state == want, f"at seq {seq}"
    assert at == len(pending)


def apply(state: dict[str, Any], part: str, c: memimg.Change) -> None:
    old, new = canon(c.old), canon(c.new)
    if part == "value":
        assert state["value"] == old, (c, state["value"])
        state["value"] = new
    elif part == "list":
        lst = state["list"]
        assert tuple(lst[c.index : c.index + len(old)]) == old, (c, lst)
        lst[c.index : c.index + len(old)] = new
    elif part == "dict":
        assert state["dict"].get(c.key, MISSING) == old, (c, state["dict"])
        if new is MISSING:
            del state["dict"][c.key]
        else:
            state["dict"][c.key] = new
    else:
        assert set(old) <= state["set"] or not old, (c, state["set"])
        state["set"] -= set(old)
        state["set"] |= set(new)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(steps, max_size=14), unset=st.booleans())
def test_history_retells_what_was_observed(program: list[tuple[Any, ...]], unset: bool) -> None:
    """history(o, f) gives, change by change, exactly the states observed of o live, before and after reopening
    (read-only too), across snapshots -- each fills the target index up to it -- and compaction (from the oldest
    state the log still holds); asked twice, the same (the second from the first states remembered)."""
    folder = tempfile.mkdtemp()
    try:
        with mock.patch.object(_history, "BIG", 0):  # every first state is remembered
            _retell_program(f"{folder}/h.db", program, unset)
    finally:
        shutil.rmtree(folder)


def _retell_program(path: str, program: list[tuple[Any, ...]], unset: bool) -> None:
    """Run *program* on a new image at *path* (its entity's value deleted before it is attached if *unset*),
    then check history retells it (see :func:`test_history_retells_what_was_observed`)."""
    img = memimg.open(path, root=Box, snapshot_every=None)
    with img.transaction():
        n = Node(value="init", children=[1, "a"], meta={"k": 1, None: 2})
        if unset:
            del n.value  # the first state lacks it: at() shows it unset, and so does history
        img.root.content = n
        n.next = {1, 2}
    seen = [observe(img, n)]
    first = img.seq
    for step in program:
        if step[0] == "tx":
            try:
                with img.transaction():
                    for op in step[1]:
                        run(n, op)
                    if not step[2]:
                        raise Discard
            except Discard:
                pass
        elif step[0] == "snapshot":
            img.snapshot()
        elif step[0] == "compact":
            first = compact(img)
        else:
            run(n, step)
        seen.append(observe(img, n))
    retell(img, n, seen, first)
    img.close()
    img = memimg.open(path, root=Box, snapshot_every=None)
    n = img.root.content
    assert observe(img, n)[1] == seen[-1][1]
    retell(img, n, seen, first)
    readonly = memimg.open(path, root=Box, readonly=True)  # cannot fill the target index: scans past it
    retell(readonly, readonly.root.content, seen, first)
    readonly.close()
    img.close()
