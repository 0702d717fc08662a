"""A transaction's commit writes its outcome: a field assigned several times in it is written once.

Nothing uncommitted is ever visible, so the log need not record the values a
field held only inside a transaction: each scalar assignment that a later
assignment of the same field replaces (with nothing else of that field in
between) is left out of the commit, and the last one is written where it was
made. History, the change feed and replay see that one change. Counters,
deletions, adds and objects assigned keep every event.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memimg
from memimg.image import _tx
from tests.accel import compiled
from tests.conftest import Images
from tests.models import Box, Color, Level, Node, Tally
from tests.test_indexes import User, Users


def _written(img: memimg.MemoryImage, since: int) -> list[tuple[str, object]]:
    return [(e.kind, e.data[:2] if e.kind.startswith("obj.") else e.data) for e in img.events(since)]


def test_a_field_assigned_several_times_is_written_once_with_its_last_value(make_image: Images) -> None:
    """``n.value = 1; ...; n.value = 3`` in one transaction is one ``obj.set`` of 3, where the last assignment
    was made; history and the feed show that one change, and the image reopens to the same state."""
    img = make_image(root=Box)
    img.root.content = n = Node(value=0)
    seq = img.seq
    changes: list[memimg.Change] = []
    img.subscribe(lambda commit: changes.extend(commit.changes), to=(n, "value"))
    with img.transaction():
        n.value = 1
        n.children.append("x")
        n.value = 2
        n.meta["k"] = "v"
        n.value = 3
    assert _written(img, seq) == [
        ("list.append", [["x"]]),
        ("dict.set", ["k", "v"]),
        ("obj.set", ["value", 3]),
    ]
    assert [(c.old, c.new) for c in img.history(n, "value", since=seq + 1)] == [(0, 3)]
    assert [(c.old, c.new) for c in changes] == [(0, 3)]
    img.close()
    again = make_image(root=Box)
    assert (again.root.content.value, again.root.content.children, again.root.content.meta) == (3, ["x"], {"k": "v"})


def test_only_assignments_replaced_by_an_assignment_are_left_out(make_image: Images) -> None:
    """A delete between two assignments keeps all three events; assignments of different fields or objects
    are all kept."""
    img = make_image(root=Box)
    img.root.content = n = Node(value=0)
    img.root.other = m = Node(value=0)
    seq = img.seq
    with img.transaction():
        n.value = 1
        del n.value
        n.value = 2
        n.next = 5
        m.value = 7
    assert _written(img, seq) == [
        ("obj.set", ["value", 1]),
        ("obj.del", ["value"]),
        ("obj.set", ["value", 2]),
        ("obj.set", ["next", 5]),
        ("obj.set", ["value", 7]),
    ]


def test_an_object_assigned_and_then_replaced_is_still_written(make_image: Images) -> None:
    """An object assigned to a field and replaced later in the transaction keeps its event (and gets its
    id): it may be reachable from elsewhere, and what was attached is logged."""
    img = make_image(root=Box)
    box = img.root
    seq = img.seq
    with img.transaction():
        child = Node(value="kept")
        box.content = child
        box.other = child
        box.content = None
    assert [e.kind for e in img.events(seq)] == ["obj.set", "obj.set", "obj.set"]
    img.close()
    again = make_image(root=Box)
    assert again.root.content is None and again.root.other.value == "kept"


def test_a_counters_assignments_are_all_written(make_image: Images) -> None:
    """A counter (``merge="add"``) keeps every assignment and add, in order: an assignment of it means
    something else than an add to concurrent writers."""
    img = make_image(root=Box)
    img.root.content = t = Tally()
    seq = img.seq
    with img.transaction():
        t.hits = 5
        t.hits = 6
        t.note = "a"
        t.note = "b"
    assert _written(img, seq) == [
        ("obj.set", ["hits", 5]),
        ("obj.set", ["hits", 6]),
        ("obj.set", ["note", "b"]),
    ]
    assert t.hits == 6 and t.note == "b"


def test_a_transaction_writing_a_field_twice_still_conflicts(make_image: Images) -> None:
    """Conflict checks see the field written, however many times the transaction assigned it."""
    img = make_image(root=Box)
    img.root.content = n = Node(value=0)
    other = make_image(root=Box)
    tx = img.begin()
    n.value = 1
    n.value = 2
    other.root.content.value = 10
    with pytest.raises(memimg.ConflictError):
        tx.save()
    img.refresh()
    assert n.value == 10


def test_a_savepoint_rolled_back_after_a_second_write_keeps_the_first(make_image: Images) -> None:
    """``n.value = 1``, then in a savepoint rolled back ``n.value = 2``: the commit writes the first
    assignment (the one the rollback went back to), and the image reopens with it."""
    img = make_image(root=Box)
    img.root.content = n = Node(value=0)
    seq = img.seq
    with img.transaction():
        n.value = 1
        with pytest.raises(RuntimeError), img.transaction():
            n.value = 2
            raise RuntimeError
        assert n.value == 1
    assert n.value == 1
    assert _written(img, seq) == [("obj.set", ["value", 1])]
    assert [(c.old, c.new) for c in img.history(n, "value", since=seq)] == [(0, 1)]
    img.close()
    assert make_image(root=Box).root.content.value == 1


def test_an_object_a_scalar_and_an_object_assigned_in_turn(make_image: Images) -> None:
    """``box.content = a; box.content = 5; box.content = b`` in one transaction: both objects are written
    (attached, with their ids), the scalar replaced in between is not, and the image reopens with *b*."""
    img = make_image(root=Box)
    box = img.root
    seq = img.seq
    with img.transaction():
        box.content = Node(value="a")
        box.content = 5
        box.content = Node(value="b")
    kinds = [(kind, data[0]) for kind, data in _written(img, seq) if kind == "obj.set"]  # type: ignore[index]
    assert kinds == [("obj.set", "content"), ("obj.set", "content")]
    assert box.content.value == "b"
    img.close()
    assert make_image(root=Box).root.content.value == "b"


def test_swapping_unique_values_leaves_nothing_shadowed(make_image: Images) -> None:
    """Swapping two holders' unique values in one transaction (through a third value) commits both, finds
    each by its new value, and leaves no value shadowed: later commits do no unique check of them."""
    img = make_image(root=Users)
    a, b = User(email="A"), User(email="B")
    img.root.users.extend([a, b])
    assert img.get(User, email="A") is a  # the index is built
    with img.transaction():
        a.email = "tmp"
        b.email = "A"
        a.email = "B"
    assert (img.get(User, email="A"), img.get(User, email="B"), img.get(User, email="tmp")) == (b, a, None)
    assert img._engine.table.extent_index().shadowed == {}
    img.close()
    again = make_image(root=Users)
    assert [u.email for u in again.root.users] == ["B", "A"]


def _run(ops: list[tuple[str, int, str, object]]) -> tuple[list[tuple[str, object]], list[object]]:
    """What a transaction of *ops* writes, and the state after it, on an in-memory image."""
    img = memimg.open(root=Box)
    img.root.content = [Node(value=0), Node(value=0), Tally()]
    objs = list(img.root.content)
    seq = img.seq
    with img.transaction():
        for op, i, name, value in ops:
            obj = objs[i if name in ("value", "next") else 2]
            if op == "set" and name == "hits":  # a counter holds an int
                obj.hits = value if type(value) is int else 7
            elif op == "set":
                setattr(obj, name, Node(value=value) if value == "node" else value)
            elif op == "del" and name in ("value", "next") and hasattr(obj, name):
                delattr(obj, name)
            elif op == "add" and name == "hits":
                obj.hits += value if type(value) is int else 1
    written = _written(img, seq)
    plain = [getattr(o, f, None) for o in objs for f in ("value", "next", "hits", "note")]
    state = [(type(v).__name__, v.value if isinstance(v, Node) else v) for v in plain]
    img.close()
    return written, state


@compiled
@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "set", "set", "del", "add"]),
            st.integers(0, 1),
            st.sampled_from(["value", "next", "hits", "note"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-3, 3),
                st.text(max_size=3),
                st.floats(allow_nan=False),
                st.sampled_from([Level.LOW, Color.RED]),  # an int subclass and an enum: not native
                st.just("node"),
            ),
        ),
        max_size=14,
    )
)
def test_the_compiled_outcome_leaves_out_what_the_python_loop_does(ops: list[tuple[str, int, str, object]]) -> None:
    """Any transaction of assignments (scalars, enum members, new objects), deletes and counter adds on a few
    objects writes the same events, and leaves the same state, with the compiled outcome as with the Python
    loop."""
    compiled_run = _run(ops)
    saved = _tx._outcome
    _tx._outcome = None
    try:
        pure_run = _run(ops)
    finally:
        _tx._outcome = saved
    assert compiled_run == pure_run
