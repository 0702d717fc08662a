"""Extents and find: ``img.all(Cls)`` and ``img.find(Cls, **equalities)`` on every store.

An extent holds the entities of a class (subclasses included) the image
holds: the reachable ones, and the ones made unreachable since the last
snapshot until that snapshot collects them. The property test checks both
halves against a brute-force walk of the reachable graph after random
programs: every reachable instance is always in it, and right after a
snapshot nothing else is.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import memimg
from memimg import persistent
from tests.conftest import Images
from tests.graphs import reachable
from tests.versions import Versions


@persistent
class Item:
    tag: int = 0
    link: Item | None = None


@persistent
class Special(Item):
    extra: str = "x"


@persistent
class Holder:
    items: list[Any] = attrs.field(factory=list)
    named: dict[str, Any] = attrs.field(factory=dict)


class Plain:
    tag = 0


def ids(objs: Any) -> set[int]:
    return {id(o) for o in objs}


def check(img: memimg.MemoryImage, known: set[int], exact: bool) -> None:
    """The extents and find agree with the reachable graph (exactly when nothing was dropped since a snapshot)."""
    reach = [o for o in reachable(img.root) if isinstance(o, Item)]
    for cls in (Item, Special):
        ext = img.all(cls)
        members = list(ext)
        got = ids(members)
        want = ids(o for o in reach if isinstance(o, cls))
        assert len(ext) == len(members) == len(got)
        assert all(isinstance(m, cls) for m in members)
        assert want <= got, "a reachable instance is missing from the extent"
        assert got <= known, "the extent holds an object the program never made"
        if exact:
            assert got == want
        assert all(o in ext for o in reach if isinstance(o, cls))
        for tag in range(3):
            found = img.find(cls, tag=tag)
            assert len(found) == len(ids(found))
            assert ids(found) == ids(m for m in members if m.tag == tag)
            assert ids(o for o in reach if isinstance(o, cls) and o.tag == tag) <= ids(found)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.booleans(), st.integers(0, 2), st.integers(0, 50)),
        st.tuples(st.just("name"), st.integers(0, 50), st.sampled_from("ab")),
        st.tuples(st.just("remove"), st.integers(0, 50)),
        st.tuples(st.just("unname"), st.sampled_from("ab")),
        st.tuples(st.just("tag"), st.integers(0, 50), st.integers(0, 2)),
        st.tuples(st.just("link"), st.integers(0, 50), st.integers(-1, 50)),
        st.tuples(st.just("begin")),
        st.tuples(st.just("commit")),
        st.tuples(st.just("discard")),
        st.tuples(st.just("snapshot")),
        st.tuples(st.just("reopen"), st.booleans()),
        st.tuples(st.just("other"), st.booleans(), st.integers(0, 50)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=ops)
@example(program=[("add", False, 0, 0), ("add", True, 1, 0), ("remove", 0), ("snapshot",), ("tag", 0, 2)])
@example(program=[("begin",), ("add", True, 0, 0), ("link", 0, -1), ("commit",), ("reopen", False), ("snapshot",)])
@example(program=[("add", False, 1, 0), ("other", False, 0), ("other", True, 1), ("begin",), ("tag", 0, 2)])
def test_extents_and_find_equal_a_scan_of_the_reachable_graph(make_image: Images, program: list[Any]) -> None:
    """After every step of a random program -- attaching (also inside linked subgraphs), dropping,
    reassigning, transactions committed and discarded, snapshots and reopening -- ``all`` and ``find``
    hold every reachable instance, each once, and right after a snapshot nothing else."""
    img = make_image(root=Holder, snapshot_every=None)
    img.root.items = []  # one log for every example: start from an empty graph
    img.root.named = {}
    img.snapshot()
    other = make_image(root=Holder, snapshot_every=None)
    pool: list[Any] = []  # every object the program made or read (reachable or not)
    known: set[int] = set()
    exact = True
    tx: memimg.Transaction | None = None
    exact_before_tx = True
    check(img, known, exact)
    for op in program:
        name = op[0]
        if name == "add":
            _, special, tag, link = op
            obj = Special(tag=tag) if special else Item(tag=tag)
            if pool and link % 2:
                obj.link = pool[link % len(pool)]
            pool.append(obj)
            known.add(id(obj))
            img.root.items.append(obj)
        elif name == "name" and pool:
            img.root.named[op[2]] = pool[op[1] % len(pool)]
            exact = False
        elif name == "remove" and img.root.items:
            del img.root.items[op[1] % len(img.root.items)]
            exact = False
        elif name == "unname" and op[1] in img.root.named:
            del img.root.named[op[1]]
            exact = False
        elif name == "tag" and pool:
            obj = pool[op[1] % len(pool)]
            if obj._mi_img is img:  # a collected object is free-standing: its writes are not the image's
                obj.tag = op[2]
        elif name == "link" and pool:
            obj = pool[op[1] % len(pool)]
            if obj._mi_img is img:
                obj.link = None if op[2] < 0 else pool[op[2] % len(pool)]
                exact = False
        elif name == "begin" and tx is None:
            tx = img.begin()
            exact_before_tx = exact
        elif name == "commit" and tx is not None:
            tx.save()
            tx = None
        elif name == "discard" and tx is not None:
            tx.discard()
            tx = None
            exact = exact_before_tx
        elif name == "snapshot" and tx is None:
            img.snapshot()
            exact = True
        elif name == "other" and tx is None:  # another image (process) on the log adds or drops, img catches up
            other.refresh()
            if op[1] or not other.root.items:
                obj = Special(tag=op[2] % 3)
                other.root.items.append(obj)
                known.add(id(obj))
            else:
                del other.root.items[op[2] % len(other.root.items)]
                exact = False
            img.refresh()
            pool = list(img.all(Item))
            known |= ids(pool)
        elif name == "reopen" and tx is None:
            if op[1]:
                img.snapshot()
            exact = exact or op[1]
            img.close()
            img = make_image(root=Holder, snapshot_every=None)
            pool = list(img.all(Item))  # the objects of the new image, unreachable ones not yet collected included
            known = ids(pool)
        check(img, known, exact)
        if tx is None:
            other.refresh()
            check(other, ids(other.all(Item)), exact)
    if tx is not None:
        tx.discard()
        check(img, known, exact)
    img.close()
    other.close()


def test_len_counts_instances_of_a_class_and_its_subclasses(make_image: Images) -> None:
    """``len(img.all(C))`` counts C's instances and its subclasses'; it follows commits, discards and reopening."""
    img = make_image(root=Holder)
    items, specials = img.all(Item), img.all(Special)
    assert len(items) == len(specials) == 0
    img.root.items.extend([Item(), Special(), Item(link=Special(link=Item()))])
    assert (len(items), len(specials)) == (5, 2)
    with img.transaction():
        img.root.items.append(Special())
        assert (len(items), len(specials)) == (6, 3)
    assert (len(items), len(specials)) == (6, 3)
    with pytest.raises(KeyError), img.transaction():
        img.root.items.append(Item(link=Special()))
        assert (len(items), len(specials)) == (8, 4)
        raise KeyError
    assert (len(items), len(specials)) == (6, 3)
    assert len(img.all(Holder)) == 1 and img.root in img.all(Holder)
    img.close()
    img = make_image(root=Holder)
    assert (len(img.all(Item)), len(img.all(Special))) == (6, 3)
    img.snapshot()
    img.close()
    img = make_image(root=Holder)  # from the snapshot this time
    assert (len(img.all(Item)), len(img.all(Special))) == (6, 3)


def test_an_unreachable_object_leaves_the_extent_when_a_snapshot_collects_it(make_image: Images) -> None:
    """A dropped object stays in its extent until the next snapshot, then leaves it (in every image of the log)."""
    img = make_image(root=Holder, snapshot_every=None)
    other = make_image(root=Holder, snapshot_every=None)
    kept, dropped = Item(tag=1), Item(tag=1)
    img.root.items.extend([kept, dropped])
    other.refresh()
    assert len(other.all(Item)) == 2
    img.root.items.remove(dropped)
    assert dropped in img.all(Item) and len(img.find(Item, tag=1)) == 2
    img.snapshot()
    assert list(img.all(Item)) == [kept] and dropped not in img.all(Item)
    assert img.find(Item, tag=1) == [kept]
    other.refresh()
    assert len(other.all(Item)) == 1 and other.find(Item, tag=1) == [other.root.items[0]]


def test_a_second_image_sees_the_others_new_objects_after_refresh(make_image: Images) -> None:
    """Another image (another process) on the log sees new objects in its extents and find at refresh, not before."""
    img = make_image(root=Holder)
    other = make_image(root=Holder)
    ext = other.all(Item)
    assert len(ext) == 0
    img.root.items.extend([Item(tag=2), Special(tag=2)])
    assert len(ext) == 0 and other.find(Item, tag=2) == []
    assert other.refresh() > 0
    assert len(ext) == 2 and len(other.all(Special)) == 1
    assert ids(other.find(Item, tag=2)) == ids(other.root.items)
    # both write new objects without refreshing: the second commit catches up first, and both extents agree
    img.root.items.append(Item(tag=1))
    other.root.items.append(Special(tag=1))
    img.refresh()
    for i in (img, other):
        assert len(i.all(Item)) == 4 and len(i.all(Special)) == 2
        assert ids(i.all(Item)) == ids(i.root.items)
        assert len(i.find(Item, tag=1)) == 2


def test_a_transaction_sees_its_own_objects_and_writes_others_do_not(make_image: Images) -> None:
    """Inside a transaction the extent holds the objects it attached and find sees its writes; other threads
    see the committed state until it commits."""
    img = make_image(root=Holder)
    old = Item(tag=0)
    img.root.items.append(old)
    seen: dict[str, Any] = {}

    def outside() -> None:
        seen["len"] = len(img.all(Item))
        seen["found"] = img.find(Item, tag=1)
        seen["in"] = new in img.all(Item)

    with img.transaction():
        new = Special(tag=1)
        img.root.items.append(new)
        old.tag = 1
        assert len(img.all(Item)) == 2 and new in img.all(Item) and new in img.all(Special)
        assert ids(img.find(Item, tag=1)) == ids([old, new])
        assert img.find(Item, tag=0) == []
        t = threading.Thread(target=outside)
        t.start()
        t.join()
    assert seen == {"len": 1, "found": [], "in": False}
    assert ids(img.find(Item, tag=1)) == ids([old, new])
    with img.transaction():
        with pytest.raises(KeyError), img.transaction():  # a savepoint rolled back takes its objects away
            img.root.items.append(Item(tag=1))
            assert len(img.all(Item)) == 3
            raise KeyError
        assert len(img.all(Item)) == 2


def test_a_transaction_sees_the_extents_as_they_were_when_it_began(make_image: Images) -> None:
    """Objects another thread commits after a transaction began are not in its extents -- ``len``, ``in``,
    iteration, find -- while its own are; after it ends, the extents show both."""
    img = make_image(root=Holder)
    first = Item(tag=1)
    img.root.items.append(first)
    with img.transaction():
        mine = Special(tag=1)
        img.root.named["mine"] = mine
        theirs = [Item(tag=1), Special(tag=1)]
        t = threading.Thread(target=lambda: img.root.items.extend(theirs))
        t.start()
        t.join()
        assert all(o._mi_oid is not None for o in theirs)  # committed
        assert (len(img.all(Item)), len(img.all(Special))) == (2, 1)
        assert ids(img.all(Item)) == ids([first, mine]) and ids(img.all(Special)) == ids([mine])
        assert not any(o in img.all(Item) for o in theirs) and mine in img.all(Item)
        assert ids(img.find(Item, tag=1)) == ids([first, mine])
    assert (len(img.all(Item)), len(img.all(Special))) == (4, 2)
    assert len(img.find(Item, tag=1)) == 4


def test_len_in_a_transaction_reads_its_journal_once(make_image: Images) -> None:
    """``len`` of an extent inside a transaction reads what the transaction attached once: asked after each
    of N attachments, the journal entries read add up to O(N), not O(N^2)."""

    class Journal(list[Any]):
        read = 0

        def __iter__(self) -> Any:
            Journal.read += len(self)
            return super().__iter__()

        def __getitem__(self, i: Any) -> Any:
            got = super().__getitem__(i)
            Journal.read += len(got) if isinstance(i, slice) else 1
            return got

    img = make_image(root=Holder)
    n = 300
    with img.transaction():
        state = img._engine.current_tx()
        state.undo = Journal()
        for i in range(n):
            img.root.items.append(Item(tag=i))
            assert len(img.all(Item)) == i + 1
    assert Journal.read < 5 * n
    assert len(img.all(Item)) == n


def test_len_in_a_transaction_counts_objects_filed_out_of_id_order(make_image: Images) -> None:
    """``len`` of an extent inside a transaction leaves out exactly the objects that entered after it began,
    whatever order they were filed in -- an object placed in a hole of the ids after newer ones were filed
    (as loading a table places them) included: it equals the number of members iterated."""
    img = make_image(root=Holder, snapshot_every=None)
    img.root.items.extend([Item(), Item(), Item()])
    img.root.items.pop(0)
    img.snapshot()  # collects it: its id is a hole
    table = img._engine.table
    hole = next(oid for oid in range(1, len(table.objects)) if table.objects[oid] is None)
    with img.transaction():
        assert len(img.all(Item)) == 2
        t = threading.Thread(target=lambda: img.root.items.append(Item()))
        t.start()
        t.join()
        assert len(img.all(Item)) == 2  # filed, after the others
        filler = Item(tag=7)
        with img._engine.lock:
            table.shell.set_identity(filler, table.owner, hole)
            table.place([(hole, filler)])
        assert len(img.all(Item)) == len(list(img.all(Item))) == 3
        assert filler in img.all(Item)
    assert len(img.all(Item)) == len(list(img.all(Item))) == 4


def test_find_compares_with_equality_and_skips_unset_fields(make_image: Images) -> None:
    """find matches by ``==`` (an entity only itself), on every equality given; no equality lists the extent."""
    img = make_image(root=Holder)
    a, b = Item(tag=1), Item(tag=2)
    c = Special(tag=1, link=a)
    img.root.items.extend([a, b, c])
    assert ids(img.find(Item, tag=1)) == ids([a, c])
    assert img.find(Item, tag=1, link=a) == [c]
    assert img.find(Special, extra="x", tag=1) == [c]
    assert ids(img.find(Item, tag=True)) == ids([a, c])  # True == 1, as for dict keys
    assert ids(img.find(Item)) == ids([a, b, c])
    del c.extra
    assert img.find(Special, extra="x") == []


def test_an_extent_is_read_only(make_image: Images) -> None:
    """Changing an extent raises TypeError naming the class; comparisons and operators give plain sets."""
    img = make_image(root=Holder)
    item = Item()
    img.root.items.append(item)
    ext = img.all(Item)
    for attempt in (
        lambda: ext.add(Item()),  # type: ignore[attr-defined]
        lambda: ext.discard(item),  # type: ignore[attr-defined]
        lambda: ext.clear(),  # type: ignore[attr-defined]
        lambda: ext.update([item]),  # type: ignore[attr-defined]
    ):
        with pytest.raises(TypeError, match=r"img\.all\(Item\) is a read-only view"):
            attempt()
    with pytest.raises(TypeError, match="read-only"):
        ext |= {1}  # type: ignore[misc]
    assert ext == {item} and (ext | {1}) == {item, 1} and type(ext & {item}) is set
    assert repr(ext) == "<extent of Item: 1 objects>"


def test_bad_queries_name_the_class_and_field(make_image: Images) -> None:
    """A class that is not @persistent, or a field the class lacks, is a TypeError saying so."""
    img = make_image(root=Holder)
    with pytest.raises(TypeError, match="img.all takes a @persistent class, not Plain"):
        img.all(Plain)
    with pytest.raises(TypeError, match="img.find takes a @persistent class, not int"):
        img.find(int, real=1)
    with pytest.raises(TypeError, match=r"Item has no field 'extra' \(its fields: tag, link\)"):
        img.find(Item, extra="x")
    with pytest.raises(TypeError, match="not 'Item'"):
        img.all("Item")  # type: ignore[arg-type]
    ext = img.all(Item)
    img.close()
    with pytest.raises(memimg.ClosedError):
        len(ext)
    with pytest.raises(memimg.ClosedError):
        img.find(Item, tag=1)


def test_a_past_image_has_the_extents_of_its_seq(make_image: Images) -> None:
    """``img.at(seq)`` lists the instances held at that seq."""
    img = make_image(root=Holder)
    img.root.items.append(Item(tag=1))
    seq = img.seq
    img.root.items.append(Special(tag=1))
    with img.at(seq) as past:
        assert len(past.all(Item)) == 1 and len(past.all(Special)) == 0
        assert [type(x) for x in past.find(Item, tag=1)] == [Item]
    assert len(img.all(Item)) == 2


def test_extents_hold_objects_read_through_an_upgrader(tmp_path: Any) -> None:
    """Objects whose stored state an upgrader rewrote at open are in their class's extent, found by new fields."""
    v = Versions(tmp_path)
    v.record(
        """
        @persistent(name="{P}.Product")
        class Product:
            title: str
            cents: int = 0

        @persistent(name="{P}.Shop")
        class Shop:
            shelf: list = attrs.field(factory=list)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.shelf.append(models.Product("apple", 120))
            img.snapshot()
            img.root.shelf.append(models.Product("bread", 250))
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Product", version=2)
        class Product:
            title: str
            price: Decimal = Decimal(0)

        @memimg.upgrader("{P}.Product", from_version=1)
        def to_price(state: dict) -> dict:
            state["price"] = Decimal(state.pop("cents", 0)) / 100
            return state

        @persistent(name="{P}.Shop")
        class Shop:
            shelf: list = attrs.field(factory=list)
        """
    )
    with memimg.open(v.path, root=new.Shop) as img:
        assert len(img.all(new.Product)) == 2
        assert [p.title for p in img.find(new.Product, price=Decimal("2.5"))] == ["bread"]


def test_a_read_only_image_has_the_entities_it_fills_in_its_extents(tmp_path: Any) -> None:
    """Entities a new field's default makes for stored objects are in their extent in a read-only image too
    (it fills them in memory only), found by their fields; once a writer logs its own, the read-only image's
    extent holds the writer's after refresh, not both."""
    v = Versions(tmp_path)
    v.record(
        """
        @persistent(name="{P}.Product")
        class Product:
            title: str

        @persistent(name="{P}.Shop")
        class Shop:
            shelf: list = attrs.field(factory=list)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.shelf.extend([models.Product("apple"), models.Product("bread")])
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Label")
        class Label:
            text: str = memimg.field(default="new", index=True)

        @persistent(name="{P}.Product")
        class Product:
            title: str
            label: Label = attrs.field(factory=Label)

        @persistent(name="{P}.Shop")
        class Shop:
            shelf: list = attrs.field(factory=list)
        """
    )
    with memimg.open(v.path, root=new.Shop, readonly=True, snapshot_every=None) as reader:
        labels = reader.all(new.Label)
        assert len(labels) == 2 and ids(labels) == ids(p.label for p in reader.root.shelf)
        assert reader.root.shelf[0].label in labels
        assert ids(reader.find(new.Label, text="new")) == ids(labels)
        with memimg.open(v.path, root=new.Shop, snapshot_every=None) as writer:
            assert len(writer.all(new.Label)) == 2
        assert reader.refresh() > 0
        assert len(labels) == 2 and ids(labels) == ids(p.label for p in reader.root.shelf)
        assert len(reader.find(new.Label, text="new")) == 2


def test_an_image_reloaded_after_a_compaction_has_the_new_extents(make_image: Images) -> None:
    """An image behind a compaction reloads in place; its extents then hold what the snapshot holds."""
    ahead = make_image(root=Holder, snapshot_every=None)
    ahead.root.items.extend([Item(tag=1), Item(tag=1), Special(tag=1)])
    behind = make_image(root=Holder, snapshot_every=None)
    assert len(behind.all(Item)) == 3  # its extents are filed before the reload
    del ahead.root.items[0]
    ahead.root.items.append(Special(tag=2))
    seq = ahead.snapshot()
    ahead.store.delete_events_before(seq)
    ahead.store.delete_snapshots_before(seq)
    assert behind.refresh() > 0
    assert ids(behind.all(Item)) == ids(behind.root.items) and len(behind.all(Special)) == 2
    assert ids(behind.find(Item, tag=1)) == ids(behind.root.items[:2])
