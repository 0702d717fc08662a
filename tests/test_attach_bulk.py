"""An assignment outside a transaction attaches and numbers its new graph in one walk (``_bulk``).

The one walk writes the same records -- the same ids, in the same order --
as the general path (attach walk, then the commit's walk), which a
transaction's assignment takes; a value it does not know goes through the
general path with nothing left of the one walk; a commit that fails leaves
every new object free-standing and every plain list in its field.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import threading
from collections.abc import Callable
from typing import Any, Final

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import memimg
from memimg import persistent
from memimg.image import _attach, _bulk
from memimg.image._encode import EncodeSession
from tests.accel import compiled
from tests.conftest import Images
from tests.test_snapshot_format import _content
from tests.versions import Versions


@persistent(name="bulk.Item")
class Item:
    name: str
    value: Any = 0
    tags: Any = attrs.field(factory=list)
    ref: Any = None


@persistent(name="bulk.Group")
class Group:
    name: str
    items: Any = attrs.field(factory=list)
    other: Any = None


class Color(enum.StrEnum):
    RED = "red"


class Name(str):
    """A str subclass: not storable (neither a str nor a registered value class)."""


@persistent(name="bulk.Root")
class Root:
    groups: Any = None
    kept: Any = None


def _graph(n: int = 300) -> list[Group]:
    """Lists, shared and cyclic references, forward references, every value the one walk writes inline."""
    items = [Item(f"item-{i}", i, ["red" if i % 2 else "blue", f"t{i % 7}", i, None, True]) for i in range(n)]
    for i, item in enumerate(items):
        item.ref = items[(i * 37 + 11) % n]
    items[1].value, items[2].value, items[3].value = 2**70, -0.0, 1.5  # encoded, not written inline
    items[4].ref = items[4]  # a cycle of one
    shared = ["shared"]
    items[5].tags = items[6].tags = shared  # one plain list met twice is one tracked list
    items[7].value = {"k": items[8], "n": 3, "s": "x", "none": None, "f": 0.5}
    items[9].value = items[10].value = {}  # one plain dict met twice is one tracked dict
    groups = [Group(f"g{k}", items[k * 50 : (k + 1) * 50]) for k in range(n // 50)]
    groups[0].other = groups[-1]
    return groups


def _records(store: memimg.Store) -> list[Any]:
    """The records of the last event."""
    rows = list(store.read(after=0))
    return list(orjson.loads(rows[-1][5])[1])


def _general_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Counts the general path's attach walks (one per call of ``Attacher._prepare``)."""
    calls: list[Any] = []
    prepare = _attach.Attacher._prepare

    def counting(self: Any, value: Any, *args: Any) -> Any:
        calls.append(value)
        return prepare(self, value, *args)

    monkeypatch.setattr(_attach.Attacher, "_prepare", counting)
    return calls


@pytest.mark.parametrize("in_tx", [False, True], ids=["one walk", "general path"])
def test_one_walk_writes_the_records_of_the_general_path(make_image: Images, in_tx: bool) -> None:
    """A graph of every shape the one walk knows, assigned outside or inside a transaction, replays to itself."""
    with make_image(root=Root, snapshot_every=None) as img:
        img.root.kept = Item("kept")  # an object with an id the new graph refers to
        groups = _graph()
        groups[1].items[0].ref = img.root.kept
        with img.transaction() if in_tx else contextlib.nullcontext():
            img.root.groups = groups
        expected = _content(img.root)
        assert type(groups[0].items[0].tags) is memimg.TrackedList
        assert groups[0].items[5].tags is groups[0].items[6].tags
        assert type(groups[0].items[9].value) is memimg.TrackedDict
        assert groups[0].items[9].value is groups[0].items[10].value
    with make_image(root=Root) as img:
        assert _content(img.root) == expected


def test_the_same_graph_gives_the_same_records_on_both_paths(make_image: Images) -> None:
    """Two graphs alike, one assigned outside a transaction and one inside: records alike but for the ids' offset."""
    with make_image(root=Root, snapshot_every=None) as img:
        img.root.groups = _graph()
        first = _records(img.store)
        with img.transaction():
            img.root.groups = _graph()
        second = _records(img.store)
    offset = second[0][0] - first[0][0]

    def shifted(v: Any) -> Any:
        if type(v) is list and len(v) == 2 and v[0] == "r":
            return ["r", v[1] + offset]
        if type(v) is list:
            return [shifted(x) for x in v]
        if type(v) is dict:
            return {k: shifted(x) for k, x in v.items()}
        return v

    assert [[oid + offset, name, shifted(state)] for oid, name, state in first] == second


def test_the_common_shapes_take_one_walk_and_the_others_the_general_path(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entities, plain lists and dicts, scalars: no general attach walk; a dict with an int key deep inside
    (found when its record is written, after every other object was numbered): the general path, alone."""
    with make_image(root=Root, snapshot_every=None) as img:
        calls = _general_path_calls(monkeypatch)  # (the root was attached by the general path)
        img.root.groups = _graph()
        assert calls == []
        groups = _graph()
        groups[-1].items[-1].value = {1: "int key"}
        img.root.groups = groups
        assert calls == [groups]
        expected = _content(img.root)
        n = len(img._engine.table.objects)
    with make_image(root=Root) as img:
        assert _content(img.root) == expected
        assert len(img._engine.table.objects) == n  # no id taken by the one walk's attempt


@pytest.mark.parametrize(
    "bad",
    [
        lambda: lambda: 0,
        lambda: "\ud800",
        lambda: ["é", "\ud800"],
        lambda: {"é": 1, "\ud800": 2},
        lambda: [[object()]],
        lambda: {"k": [object()]},
    ],
    ids=[
        "a function",
        "a lone surrogate",
        "one in a list of strs",
        "one in a dict key",
        "a list in a list",
        "a list in a dict",
    ],
)
def test_a_refused_value_deep_in_the_graph_leaves_nothing(make_image: Images, bad: Any) -> None:
    """The one walk gives up, the general path refuses the value naming where it is: nothing is attached,
    every plain list is back in its field, no event is written, and the next commit numbers from where it was."""
    with make_image(root=Root, snapshot_every=None) as img:
        groups = _graph()
        plain_tags = [item.tags for g in groups for item in g.items]
        groups[-1].items[-1].value = bad()
        seq, n = img.seq, len(img._engine.table.objects)
        with pytest.raises(memimg.UnsupportedValueError, match=r"Group\.items\[49\]\.value|Root\.groups"):
            img.root.groups = groups
        assert img.seq == seq and len(img._engine.table.objects) == n
        for g in groups:
            assert g._mi_img is None and g._mi_oid is None and type(g.items) is list
            for item in g.items:
                assert item._mi_img is None and item._mi_oid is None
        assert [item.tags for g in groups for item in g.items] == plain_tags
        assert all(type(t) is list for t in plain_tags)
        assert type(groups[0].items[7].value) is dict and type(groups[0].items[9].value) is dict
        img.root.kept = Item("after")
        assert img.root.kept._mi_oid == n
        expected = _content(img.root)
    with make_image(root=Root) as img:
        assert _content(img.root) == expected


def test_a_failed_commit_of_the_one_walk_leaves_nothing(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store fails the append: no object keeps an owner or an id, plain lists are back, the image goes on."""
    with make_image(root=Root, snapshot_every=None) as img:
        groups = _graph()
        plain_tags = [item.tags for g in groups for item in g.items]
        seq, n = img.seq, len(img._engine.table.objects)

        def broken(*args: Any, **kwargs: Any) -> None:
            raise OSError("disk on fire")

        with monkeypatch.context() as m:
            m.setattr(img._engine.store, "append", broken)
            with pytest.raises(memimg.MemimgError, match="disk on fire"):
                img.root.groups = groups
        assert img.seq == seq and len(img._engine.table.objects) == n and img.root.groups is None
        assert all(item._mi_img is None and item._mi_oid is None for g in groups for item in g.items)
        assert [item.tags for g in groups for item in g.items] == plain_tags
        img.root.groups = groups  # the same graph, now committed
        expected = _content(img.root)
    with make_image(root=Root) as img:
        assert _content(img.root) == expected


def test_a_commit_behind_another_writer_is_numbered_again_at_the_new_head(make_image: Images) -> None:
    """Another writer attached objects meanwhile: the one walk's ids are taken back and the commit is
    encoded again after them; both images and a replay hold the same graph."""
    a = make_image(root=Root, snapshot_every=None)
    b = make_image(root=Root, snapshot_every=None)
    a.root.kept = Item("from a", tags=["a"])  # b is behind: its ids would collide with these
    b.root.groups = _graph()
    assert b.root.kept.name == "from a"
    a.refresh()
    expected = _content(b.root)
    assert _content(a.root) == expected
    oids = sorted(o._mi_oid for g in b.root.groups for o in (g, g.items, *g.items))
    assert oids[0] > a.root.kept._mi_oid and len(set(oids)) == len(oids)
    with make_image(root=Root) as img:
        assert _content(img.root) == expected


def test_strings_not_ascii_take_the_one_walk(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """Strings that are not ASCII (but valid UTF-8) in fields, lists, lists of strs and dict keys: stored as
    they are by the one walk, no general attach walk."""
    with make_image(root=Root, snapshot_every=None) as img:
        calls = _general_path_calls(monkeypatch)
        groups = _graph()
        groups[0].name = "grüße"
        groups[1].items[0].tags = ["ascii", "日本語", 3]
        groups[1].items[1].tags = ["é", "ü"]
        groups[1].items[2].value = {"clé": "valeur €", "k": "ö"}
        img.root.groups = groups
        assert calls == []
        expected = _content(img.root)
    with make_image(root=Root) as img:
        assert _content(img.root) == expected
        assert img.root.groups[1].items[1].tags == ["é", "ü"]
        assert img.root.groups[1].items[2].value["clé"] == "valeur €"


@pytest.mark.parametrize(
    "tags",
    [lambda: ["x", Color.RED], lambda: [Color.RED, "x"], lambda: {Color.RED: 1}, lambda: {"x": 1, Color.RED: 2}],
    ids=["list item", "first list item", "dict key", "second dict key"],
)
def test_str_subclass_members_are_stored_as_themselves(make_image: Images, tags: Any) -> None:
    """An ``enum.StrEnum`` member among strs in a list or as a dict key reads back as the member, not a str."""
    with make_image(root=Root, snapshot_every=None) as img:
        img.root.kept = Item("k", tags=tags())
        expected = _content(img.root)
    with make_image(root=Root) as img:
        assert _content(img.root) == expected
        stored = list(img.root.kept.tags)
        assert Color.RED in stored and all(type(x) is Color for x in stored if x == "red")


@pytest.mark.parametrize(
    ("tags", "where"),
    [(lambda: ["x", Name("y")], r"kept\.tags\[1\]"), (lambda: {"x": 1, Name("y"): 2}, r"kept\.tags\['y'\] \(key\)")],
    ids=["list item", "dict key"],
)
def test_a_str_subclass_is_refused_as_on_the_general_path(make_image: Images, tags: Any, where: str) -> None:
    """A str subclass that is not a registered value among strs: refused naming where it is, nothing saved."""
    with make_image(root=Root, snapshot_every=None) as img:
        seq = img.seq
        item = Item("k", tags=tags())
        with pytest.raises(memimg.UnsupportedValueError, match=rf"cannot store a .*Name at Root\.{where}"):
            img.root.kept = item
        assert img.seq == seq and item._mi_oid is None and img.root.kept is None


def test_a_class_that_made_the_walk_give_up_takes_the_general_path_at_once(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one walk gave up on an object of a class (here, an int key in its dict): the next value of that
    class goes to the general path without a walk, and the walk of a graph holding that class gives up where
    it first meets it -- after numbering a few objects, not the whole graph."""
    walks: list[Any] = []
    walk = _bulk.BulkAttacher._walk
    monkeypatch.setattr(_bulk.BulkAttacher, "_walk", lambda self, *a: walks.append(a[0]) or walk(self, *a))
    numbered: list[int] = []  # how many objects a walk had numbered when it gave up
    rollback = EncodeSession.rollback

    def counting(self: EncodeSession) -> None:
        numbered.append(len(self.table.objects) - self.first_new)
        rollback(self)

    monkeypatch.setattr(EncodeSession, "rollback", counting)
    with make_image(root=Root, snapshot_every=None) as img:
        calls = _general_path_calls(monkeypatch)
        groups = _graph()
        groups[-1].items[-1].tags = {1: "int key"}
        img.root.groups = groups
        assert len(walks) == 1 and numbered[0] > 300 and calls == [groups]  # given up at the last object
        groups = _graph()
        groups[-1].items[-1].tags = {2: "int key"}
        img.root.groups = groups
        assert len(walks) == 2 and numbered[1] < 20 and calls[1] is groups
        item = Item("alone", tags={3: "int key"})
        img.root.kept = item
        assert len(walks) == 2 and calls[2] is item
        expected = _content(img.root)
    with make_image(root=Root) as img:
        assert _content(img.root) == expected


_EVOLVING = """
from typing import Any

@persistent(name="{P}.Kept")
class Kept:
    name: str = "k"
    EXTRA

@persistent(name="{P}.Holder")
class Holder:
    ref: Any = None
    tags: Any = attrs.field(factory=list)

@persistent(name="{P}.Shop")
class Shop:
    kept: Any = None
    new: Any = None
"""


def test_an_object_saved_before_is_referred_to_without_declaring_its_class(tmp_path: Any) -> None:
    """A new graph refers to an object saved by an older version of its class: the event declares the new
    classes only, as the general path does (the saved object's class is declared when it is written)."""
    v = Versions(tmp_path)
    v.record(
        _EVOLVING.replace("EXTRA", ""),
        """
        with memimg.open(path, root=models.Shop, snapshot_every=None) as img:
            img.root.kept = models.Kept("old")
        """,
    )
    new = v.load(_EVOLVING.replace("EXTRA", "extra: int = 0"))
    with v.open(new, snapshot_every=None) as img:
        img.root.new = new.Holder(ref=img.root.kept, tags=["x"])
        rows = list(img.store.read(after=0))
        declared = orjson.loads(rows[-1][5])[2]
        assert sorted(declared) == [f"{v.prefix}.Holder"]
        expected = _content(img.root)
    with v.open(new) as img:
        assert _content(img.root) == expected and img.root.new.ref is img.root.kept


# -- the compiled loop (``bulk_records``) writes what the Python walk writes ----------------------------------------

#: the values the compiled loop writes as they are: ASCII strs, ints of 64 bits (and just past them), bools, None
_PLAIN = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=4),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1]),  # the bounds, and just past them
    st.booleans(),
    st.none(),
)
#: and those it hands back: strs not ASCII (valid UTF-8), ints past 64 bits, floats
_SCALARS = st.one_of(
    _PLAIN, st.text(max_size=3), st.integers(min_value=-(2**64), max_value=2**64), st.floats(allow_nan=False)
)
_ITEM_REF = st.tuples(st.just("item"), st.integers(0, 7))
#: how one field of an item is filled in the common case: a value written as it is, a reference to an item (by
#: index; the same item may be met twice in one object), a plain list of those (long ones too), one list shared
#: between two items, or the tracked list or the item saved before the graph
_COMMON_FIELD = st.one_of(
    st.tuples(st.just("scalar"), _PLAIN),
    _ITEM_REF,
    st.tuples(st.just("list"), st.lists(st.one_of(_PLAIN, _ITEM_REF), max_size=4)),
    st.tuples(st.just("long"), st.integers(250, 300)),
    st.tuples(st.just("shared"), st.integers(0, 1)),
    st.tuples(st.just("kept"), st.sampled_from(["item", "tags"])),
)
#: and besides: any scalar, lists of any scalars, dicts, a list in a list, a field left unset
_FIELD = st.one_of(
    _COMMON_FIELD,
    st.tuples(st.just("scalar"), _SCALARS),
    st.tuples(st.just("list"), st.lists(st.one_of(_SCALARS, _ITEM_REF), max_size=4)),
    st.tuples(st.just("dict"), st.dictionaries(st.text(max_size=2), _SCALARS, max_size=2)),
    st.tuples(st.just("nested"), st.none()),
    st.tuples(st.just("unset"), st.none()),
)
_FIELDS: Final = ("value", "tags", "ref")


def _build(spec: list[tuple[Any, Any, Any]], kept: Item) -> list[Item]:
    """Eight items whose value, tags and ref fields are filled as *spec* says (see _FIELD); the first is assigned."""
    items = [Item(f"i{i}") for i in range(8)]
    shared: list[list[Any]] = [["s0"], [1, "s1"]]

    def value(how: str, arg: Any) -> Any:
        if how == "scalar":
            return arg
        if how == "item":
            return items[arg]
        if how == "list":
            return [items[x[1]] if type(x) is tuple else x for x in arg]
        if how == "long":  # past the compiled loop's stack buffer of 256 items
            return [items[i % 8] if i % 3 == 0 else i for i in range(arg)]
        if how == "shared":
            return shared[arg]
        if how == "dict":
            return dict(arg)
        if how == "nested":
            return [[1]]
        return kept if arg == "item" else kept.tags  # "kept"

    for item, fields in zip(items, spec):
        for name, (how, arg) in zip(_FIELDS, fields):
            if how == "unset":
                object.__delattr__(item, name)
            else:
                setattr(item, name, value(how, arg))
    return items


def _attach_with(
    tmp_path: Any, build: Callable[[Item], Any], compiled_loop: Any, then: Callable[[], None] = lambda: None
) -> tuple[Any, ...]:
    """Assign the graph *build* makes (given the item saved before) outside a transaction, with the walk's compiled
    loop set to *compiled_loop*, then call *then*: the payloads written, the error's text, each new object's id and
    the type of each of its fields, and the image's content."""
    saved = _bulk._bulk_records
    _bulk._bulk_records = compiled_loop
    path = tmp_path / f"{'c' if compiled_loop else 'p'}.db"
    try:
        with memimg.open(path, root=Root, snapshot_every=None) as img:
            img.root.kept = Item("kept", tags=["k"])
            graph = build(img.root.kept)
            error = None
            try:
                img.root.groups = graph
            except memimg.MemimgError as err:
                error = str(err)
            then()
            objects = graph if type(graph) is list else [graph]
            # (a tracked list's size too: its storage the exact size, as the Python walk's list.extend makes it)
            ids = [(o._mi_oid, *(_kind(getattr(o, f, None)) for f in _FIELDS)) for o in objects]
            payloads = [bytes(r[5]) for r in img.store.read(after=0)]
            content = _content(img.root)
    finally:
        _bulk._bulk_records = saved
        path.unlink()
    return payloads, error, ids, content


def _kind(v: Any) -> Any:
    return (type(v).__name__, sys.getsizeof(v)) if type(v) is memimg.TrackedList else type(v).__name__


def _same_on_both_paths(tmp_path: Any, build: Callable[[Item], Any], then: Callable[[], None] = lambda: None) -> None:
    assert _attach_with(tmp_path, build, _bulk._bulk_records, then) == _attach_with(tmp_path, build, None, then)


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.lists(st.tuples(_COMMON_FIELD, _COMMON_FIELD, _COMMON_FIELD), min_size=8, max_size=8))
@example(spec=[(("item", 1), ("item", 1), ("list", [("item", 1), ("item", 1)]))] + [(("scalar", 0),) * 3] * 7)
def test_the_compiled_loop_writes_what_the_python_walk_writes(tmp_path: Any, spec: Any) -> None:
    """Any graph of items whose fields hold ASCII strs, ints of 64 bits and just past them, bools, None, new items
    (one met twice in an object, in its fields or its list), plain lists of those (long ones, shared ones), the
    tracked list or the item saved before: the same event bytes, the same ids, the same fields replaced and the
    same content, with the compiled loop as with the Python walk alone."""
    _same_on_both_paths(tmp_path, lambda kept: _build(spec, kept)[0])


@compiled
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.lists(st.tuples(_FIELD, _FIELD, _FIELD), min_size=8, max_size=8))
def test_the_compiled_loop_hands_back_what_it_does_not_write(tmp_path: Any, spec: Any) -> None:
    """The same graphs with anything else among them -- strs not ASCII, ints past 64 bits, floats, dicts, a list in
    a list, an unset field -- the same bytes, error, ids, fields and content on both paths: what the loop hands
    back is written by the Python walk, or the whole graph by the general path."""
    _same_on_both_paths(tmp_path, lambda kept: _build(spec, kept)[0])


@compiled
def test_the_compiled_loop_writes_a_common_graph_in_one_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A graph of the common case (the benchmark's shape: items with a name, an int, a list of strs and a reference,
    in groups' lists) is written by the compiled loop alone, once the first object of each class was met."""
    calls: list[tuple[int, int, int]] = []
    loop = _bulk._bulk_records
    assert loop is not None

    def spy(queue: list[Any], at: int, *args: Any) -> int:
        reached = loop(queue, at, *args)
        calls.append((at, reached, len(queue)))
        return reached

    monkeypatch.setattr(_bulk, "_bulk_records", spy)
    with memimg.open(tmp_path / "g.db", root=Root, snapshot_every=None) as img:
        items = [Item(f"i{i}", i, ["a", f"t{i}"]) for i in range(200)]
        for i, item in enumerate(items):
            item.ref = items[(i * 7) % 200]
        img.root.groups = [Group(f"g{k}", items[k * 50 : (k + 1) * 50]) for k in range(4)]
        objects = len(img._engine.table.objects)
    # the assigned list (a tracked list: no plan needed), then its first group (a class met first: Python), then
    # that group's list and first item (Python declares Item), then everything else in C
    assert calls[-1][1] == calls[-1][2] and len(calls) <= 4
    assert sum(reached - at for at, reached, _ in calls) >= objects - 2 - 10


@compiled
def test_an_object_attached_by_another_threads_open_transaction_is_the_same_on_both_paths(tmp_path: Any) -> None:
    """An entity of this image with no id yet (attached by a transaction another thread has open) met by the walk:
    what happens (here: the general path's answer) is the same with the compiled loop as without it."""
    threads: list[tuple[threading.Thread, threading.Event]] = []

    def build(kept: Item) -> Any:
        img, pending = kept._mi_img, Item("pending")
        opened, done = threading.Event(), threading.Event()

        def other() -> None:
            with contextlib.suppress(KeyError), img.transaction():
                img.root.kept.ref = pending
                opened.set()
                done.wait(10)
                raise KeyError("rolled back")

        thread = threading.Thread(target=other)
        thread.start()
        threads.append((thread, done))
        assert opened.wait(10) and pending._mi_img is img and pending._mi_oid is None
        return Item("new", 1, ["a"], pending)

    def end_the_other_transaction() -> None:
        thread, done = threads[-1]
        done.set()
        thread.join(10)

    _same_on_both_paths(tmp_path, build, end_the_other_transaction)
    assert len(threads) == 2 and not any(thread.is_alive() for thread, _ in threads)


@compiled
def test_the_compiled_loop_refuses_arguments_it_does_not_know() -> None:
    """Arguments of other types than the walk's raise TypeError, and nothing is written."""
    from memimg.model._accel import speedups

    assert speedups is not None
    records: list[Any] = []
    with pytest.raises(TypeError, match="bad arguments"):
        speedups.bulk_records([], 0, {}, records, None, set(), {}, [], dict, {}, [])  # not a list type
    with pytest.raises(TypeError, match="bad arguments"):
        speedups.bulk_records([], -1, {}, records, None, set(), {}, [], memimg.TrackedList, {}, [])
    with pytest.raises(TypeError, match="takes 11 arguments"):
        speedups.bulk_records([], 0)
    item = Item("i")
    for plan in [("n", ("name",), ["x"], ("s",)), ("n", ("name",), (), ()), ("n",), "plan"]:
        with pytest.raises(TypeError, match="bad plan for <class 'tests.test_attach_bulk.Item'>"):
            speedups.bulk_records([item], 0, {Item: plan}, records, None, set(), {}, [], memimg.TrackedList, {}, [])
    assert records == []
