"""``img.history(obj, field=None, *, since, until)``: the changes of one object, every kind, on every store."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import pickle
from decimal import Decimal
from typing import Any

import attrs
import orjson
import pytest

import memimg
from memimg import MISSING, Change, Collected
from memimg.core import _firststates, _kinds
from memimg.core._rows import SnapshotRow, event_checksum, snapshot_checksum
from memimg.image import _history
from memimg.stores import EventRow
from tests.conftest import Images
from tests.models import Account, Bank, Box, Entry, Node


def parts(changes: list[Change]) -> list[tuple[Any, ...]]:
    return [(c.kind, c.field, c.key, c.old, c.new, c.index) for c in changes]


def test_entity_field_changes(make_image: Images) -> None:
    """Field sets and deletes of an entity, each with the value before it; history(o, f) keeps that field's."""
    img = make_image(root=Bank)
    acct = img.root.accounts["ada"] = Account("ada")
    acct.balance = Decimal("10")
    acct.owner = "Ada"
    del acct.balance
    acct.balance = Decimal("3")
    assert parts(img.history(acct)) == [
        ("obj.set", "balance", None, Decimal("0"), Decimal("10"), None),
        ("obj.set", "owner", None, "ada", "Ada", None),
        ("obj.del", "balance", None, Decimal("10"), MISSING, None),
        ("obj.set", "balance", None, MISSING, Decimal("3"), None),
    ]
    assert [(c.old, c.new) for c in img.history(acct, "owner")] == [("ada", "Ada")]
    changes = img.history(acct)
    assert all(c.target is acct for c in changes)
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    assert all(c.time.tzinfo is dt.UTC and c.meta == {} and c.tx == c.seq for c in changes)


def test_a_change_is_a_record_of_its_fields(make_image: Images) -> None:
    """A Change unpacks, indexes and converts like a named tuple of its fields in ``_fields`` order (its time a
    datetime everywhere), is copied with ``_replace``, equals only a Change with the same fields (a subclass
    too, both ways), is never ordered, never a plain tuple, and pickles."""
    img = make_image(root=Bank)
    acct = img.root.accounts["ada"] = Account("ada")
    got: list[memimg.Commit] = []
    img.subscribe(got.append, to=acct)
    acct.balance = Decimal(4)
    fed = got[0].changes[0]
    (told,) = img.history(acct, "balance")
    for c in (fed, told):
        assert c == told and fed == c
        assert c._fields == ("seq", "tx", "time", "meta", "target", "kind", "field", "key", "old", "new", "index")
        assert len(c) == len(c._fields) and list(c) == [getattr(c, f) for f in c._fields]
        seq, tx, time, meta, target, kind, field, key, old, new, index = c
        assert (seq, tx, meta, key, index) == (c.seq, c.tx, {}, None, None)
        assert type(time) is dt.datetime and c[2] == c[-9] == c.time and time.tzinfo is dt.UTC
        assert c[1:3] == (c.tx, c.time) and tuple(c)[2] == c.time and c.time in c
        with pytest.raises(TypeError, match="datetime is not JSON serializable"):
            json.dumps(c._replace(target=None, old=0, new=1))  # never an array with the time as a number
        assert c._asdict() == {f: getattr(c, f) for f in c._fields}
        assert (target, kind, field, old, new) == (acct, "obj.set", "balance", Decimal(0), Decimal(4))
    moved = told._replace(new=Decimal(5))
    assert type(moved) is Change and moved.new == Decimal(5) and moved.seq == told.seq and moved != told
    with pytest.raises(TypeError, match="no field 'value'"):
        told._replace(value=1)
    with pytest.raises(TypeError, match="not ordered"):
        assert told < moved
    with pytest.raises(TypeError, match="not ordered"):
        sorted([told, moved])
    assert told != tuple(told) and tuple(told) != told
    micros = (told.time - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    assert Change(*told) == told and Change(*told[:2], micros, *told[3:]) == told  # the time as the log stores it

    class Sub(Change):
        __slots__ = ()

    assert Sub(*told) == told and told == Sub(*told) and Sub(*told) == Sub(*told)
    plain = told._replace(target=Collected(1))  # (a persistent object pickles as a copy, not equal)
    assert pickle.loads(pickle.dumps(plain)) == plain and copy.copy(told) == told
    with pytest.raises(TypeError, match="aware datetime"):
        Change(*told[:2], told.time.replace(tzinfo=None), *told[3:])


def test_list_changes(make_image: Images) -> None:
    """Every list kind: old is what it took out, new what it put in, index where."""
    img = make_image(root=Box)
    img.root.content = [1, 2]
    lst = img.root.content
    lst.append(3)  # [1, 2, 3]
    lst.insert(0, 0)  # [0, 1, 2, 3]
    lst[1] = 10  # [0, 10, 2, 3]
    del lst[0]  # [10, 2, 3]
    lst[1:3] = ["a"]  # [10, "a"]
    lst.sort(key=str, reverse=True)  # ["a", 10]
    lst.reverse()  # [10, "a"]
    lst.clear()
    assert parts(img.history(lst)) == [
        ("list.append", None, None, (), (3,), 2),
        ("list.insert", None, None, (), (0,), 0),
        ("list.set", None, None, (1,), (10,), 1),
        ("list.del", None, None, (0,), (), 0),
        ("list.splice", None, None, (2, 3), ("a",), 1),
        ("list.reorder", None, None, (10, "a"), ("a", 10), 0),
        ("list.reverse", None, None, ("a", 10), (10, "a"), 0),
        ("list.clear", None, None, (10, "a"), (), 0),
    ]


def test_dict_changes(make_image: Images) -> None:
    """Every dict kind, one change per key: update gives one per pair, clear one per key it removed."""
    img = make_image(root=Box)
    img.root.content = {"a": 1}
    d = img.root.content
    d["b"] = 2
    d["a"] = 3
    del d["b"]
    d.update({"a": 4, "c": 5})
    d.clear()
    assert parts(img.history(d)) == [
        ("dict.set", None, "b", MISSING, 2, None),
        ("dict.set", None, "a", 1, 3, None),
        ("dict.del", None, "b", 2, MISSING, None),
        ("dict.update", None, "a", 3, 4, None),
        ("dict.update", None, "c", MISSING, 5, None),
        ("dict.clear", None, "a", 4, MISSING, None),
        ("dict.clear", None, "c", 5, MISSING, None),
    ]
    seqs = [c.seq for c in img.history(d)]
    assert seqs[3] == seqs[4] and seqs[5] == seqs[6]


def test_set_changes(make_image: Images) -> None:
    """Every set kind: old the members it took out, new those it put in."""
    img = make_image(root=Box)
    img.root.content = {1}
    s = img.root.content
    s.add(2)
    s.discard(1)
    s.clear()
    assert parts(img.history(s)) == [
        ("set.add", None, None, (), (2,), None),
        ("set.discard", None, None, (1,), (), None),
        ("set.clear", None, None, (2,), (), None),
    ]


def test_update_of_several_fields(make_image: Images) -> None:
    """An obj.update event (several fields at once) gives one change per field."""
    img = make_image(root=Box)
    box = img.root
    box.content = 1
    store = make_image.store()
    seq = img.seq + 1
    payload = orjson.dumps([[[["content", 2], ["other", "x"]]]])
    store.append(
        [EventRow(seq, seq, 5, "obj.update", 1, payload, event_checksum(seq, seq, 5, "obj.update", 1, payload))],
        seq - 1,
    )
    img.refresh()
    assert (box.content, box.other) == (2, "x")
    assert parts(img.history(box))[1:] == [
        ("obj.update", "content", None, 1, 2, None),
        ("obj.update", "other", None, None, "x", None),
    ]


def test_since_and_until(make_image: Images) -> None:
    """Only changes with since < seq <= until; the values before them are still computed."""
    img = make_image(root=Box)
    for i in range(1, 6):
        img.root.content = i
    seqs = [c.seq for c in img.history(img.root)]
    found = img.history(img.root, "content", since=seqs[1], until=seqs[3])
    assert [(c.old, c.new) for c in found] == [(2, 3), (3, 4)]
    assert img.history(img.root, until=seqs[0]) == img.history(img.root)[:1]
    assert img.history(img.root, until=10**9) == img.history(img.root)


def test_references_are_live_objects_or_collected(make_image: Images) -> None:
    """A value that refers to an object is that object of this image; one collected since is a Collected."""
    img = make_image(root=Box)
    kept, dropped = Node(value="kept"), Node(value="dropped")
    img.root.content = kept
    img.root.content = dropped
    img.root.content = kept
    img.snapshot()  # collects `dropped`: unreachable
    changes = img.history(img.root, "content")
    assert changes[0].new is kept
    assert changes[1].old is kept
    assert isinstance(changes[1].new, Collected) and changes[1].new == changes[2].old
    assert changes[2].new is kept


def test_history_survives_reopening_and_compaction(make_image: Images) -> None:
    """Reopened (from a snapshot), the history is the same; compacted, it starts from the oldest snapshot."""
    img = make_image(root=Bank)
    acct = img.root.accounts["ada"] = Account("ada")
    for i in range(5):
        acct.balance += 1
        acct.entries.append(Entry(f"e{i}"))
    before = parts(img.history(acct, "balance"))
    img.snapshot()
    img.close()
    img = make_image(root=Bank)
    acct = img.root.accounts["ada"]
    assert parts(img.history(acct, "balance")) == before
    assert [c.new[0].label for c in img.history(acct.entries)] == [f"e{i}" for i in range(5)]
    acct.balance += 1
    seq = img.snapshot()
    store = make_image.store()
    store.delete_events_before(seq)
    store.delete_snapshots_before(seq)
    acct.balance += 1
    img.close()
    img = make_image(root=Bank)
    acct = img.root.accounts["ada"]
    assert parts(img.history(acct, "balance")) == [("obj.set", "balance", None, Decimal("6"), Decimal("7"), None)]


def test_history_starts_from_a_snapshot_the_kept_events_follow(make_image: Images) -> None:
    """With events deleted up to a seq but an older snapshot kept, history starts from a snapshot the kept events
    follow without a gap, never from the older one (whose state the missing events changed)."""
    img = make_image(root=Box)
    img.root.content = node = Node(value=0)
    node.value = 1
    node.children.append("a")
    img.snapshot()
    node.value = 2
    node.children.append("b")
    node.value = 3
    node.children.append("c")
    newer = img.snapshot()
    node.value = 4
    node.children.append("d")
    make_image.store().delete_events_before(newer - 1)
    img.close()
    img = make_image(root=Box)
    node = img.root.content
    assert [(c.old, c.new) for c in img.history(node, "value")] == [(3, 4)]
    assert [(c.old, c.new, c.index) for c in img.history(node.children)] == [((), ("d",), 3)]


def test_history_from_a_snapshot_written_before_born(make_image: Images) -> None:
    """An image opened from a snapshot without its "born" entries (memimg < 0.4) learns them from the log."""
    img = make_image(root=Box)
    img.root.content = Node(value=1)
    img.root.content.value = 2
    seq = img.snapshot()
    img.root.content.value = 3
    img.close()
    store = make_image.store()
    row = SnapshotRow(*store.read_snapshot(seq))
    header, _, rest = row.payload.partition(b"\n")
    data = orjson.loads(header)
    del data["born"]
    payload = orjson.dumps(data) + b"\n" + rest
    store.write_snapshot(SnapshotRow(seq, row.ts, payload, snapshot_checksum(seq, row.ts, payload)))
    img = make_image(root=Box)
    assert img._engine.table.born.seq_of(2) < 0
    assert [(c.old, c.new) for c in img.history(img.root.content, "value")] == [(1, 2), (2, 3)]
    assert img._engine.table.born.seq_of(2) > 0


def test_transaction_meta(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """A change's meta is its transaction's first row's data when that row is a tx.meta row, else {}."""
    monkeypatch.setitem(
        _kinds.KINDS, "tx.meta", _kinds.Kind("tx.meta", "s", _kinds.NONE, lambda a, obj, meta: None, "test")
    )
    img = make_image(root=Box)
    img.root.content = 1
    store = make_image.store()
    tx = img.seq + 1
    rows = [
        (tx, "tx.meta", 0, orjson.dumps([[{"user": "ada"}]])),
        (tx + 1, "obj.set", 1, orjson.dumps([["content", 2]])),
    ]
    store.append([EventRow(s, tx, 7, k, t, p, event_checksum(s, tx, 7, k, t, p)) for s, k, t, p in rows], tx - 1)
    img.refresh()
    img.root.content = 3
    assert [(c.new, c.meta) for c in img.history(img.root)] == [(1, {}), (2, {"user": "ada"}), (3, {})]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda img, box: img.history(object()), "not a persistent object"),
        (lambda img, box: img.history(Node()), "not part of the image"),
        (lambda img, box: img.history(box, "nope"), "has no field 'nope'"),
        (lambda img, box: img.history(box.content, "x"), "has no fields"),
        (lambda img, box: img.history(box, since=5, until=2), "since is past until"),
        (lambda img, box: img.history(box, since=-1), "ints >= 0"),
    ],
)
def test_bad_input_is_refused(make_image: Images, call: Any, message: str) -> None:
    """Bad arguments raise a clear error and change nothing."""
    img = make_image(root=Box)
    img.root.content = [1]
    seq = img.seq
    with pytest.raises((memimg.MemimgError, ValueError), match=message):
        call(img, img.root)
    assert img.seq == seq == img.store.head()


def test_an_object_of_another_image_is_refused(make_image: Images, tmp_path: Any) -> None:
    """history() of another image's object names it and says which image to ask."""
    img = make_image(root=Box)
    other = memimg.open(str(tmp_path / "other.db"), root=Box)
    try:
        with pytest.raises(memimg.MemimgError, match="not an object of the image"):
            img.history(other.root)
    finally:
        other.close()


def _covered(img: memimg.MemoryImage) -> int:
    """The seq the store's target index covers (index_targets(0) writes nothing; the memory and NDJSON stores
    cover their head)."""
    return img._engine.store.index_targets(0)


def test_history_is_the_same_whatever_the_target_index_covers(make_image: Images) -> None:
    """The index empty, partly filled, full, and on a read-only image (which cannot fill it): the same changes."""
    img = make_image(root=Bank, snapshot_every=None)
    ada = img.root.accounts["ada"] = Account("ada")
    bob = img.root.accounts["bob"] = Account("bob")
    for i in range(1, 31):
        (ada if i % 3 else bob).balance += i
    want = [(c.old, c.new) for c in img.history(ada, "balance")]
    assert want == list(itertools.pairwise(itertools.accumulate((i for i in range(1, 31) if i % 3), initial=0)))
    store = make_image.store()
    seqs = [c.seq for c in img.history(ada)]
    answers = {}
    for upto in (0, seqs[5], seqs[5] + 1, img.seq):
        if upto:
            store.index_targets(upto)
        answers[upto] = [(c.seq, c.old, c.new) for c in img.history(ada, "balance", since=seqs[3])]
        readonly = make_image(root=Bank, readonly=True)
        ro_ada = readonly.root.accounts["ada"]
        assert [(c.seq, c.old, c.new) for c in readonly.history(ro_ada, "balance", since=seqs[3])] == answers[upto]
        readonly.close()
    assert all(a == answers[0] for a in answers.values())
    assert [(c.old, c.new) for c in img.history(ada, "balance")] == want


def test_snapshots_and_long_tails_fill_the_target_index(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot fills the index up to its seq; history fills it first when over TAIL events wait, not otherwise;
    a read-only image's history fills nothing (the memory and NDJSON stores keep the index in memory: it always
    covers their head)."""
    monkeypatch.setattr(_history, "TAIL", 5)
    img = make_image(root=Box, snapshot_every=None)
    store = getattr(img._engine.store, "inner", img._engine.store)  # under MEMIMG_TEST_PROTECTION: the store inside
    as_appended = isinstance(store, (memimg.MemoryStore, memimg.NDJSONStore))
    img.root.content = 0
    seq = img.snapshot()
    assert _covered(img) >= seq
    for i in range(4):
        img.root.content = i
    covered = _covered(img)
    img.history(img.root)  # 4 events past the index: scanned
    assert _covered(img) == (img.seq if as_appended else covered)
    for i in range(4):
        img.root.content = i
    readonly = make_image(root=Box, readonly=True)
    assert len(readonly.history(readonly.root)) == 9
    assert _covered(img) == (img.seq if as_appended else covered)
    readonly.close()
    assert len(img.history(img.root)) == 9  # 8 waiting: indexed first
    assert _covered(img) == img.seq


def _reads(img: memimg.MemoryImage, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the payloads *img*'s store reads and orjson parses from now on (appended to the list returned)."""
    sizes: list[int] = []
    store = img._engine.store
    read, loads = store.read, orjson.loads

    def counted_read(*args: Any, **kwargs: Any) -> Any:
        for row in read(*args, **kwargs):
            sizes.append(len(row[5]))
            yield row

    def counted_loads(data: Any) -> Any:
        sizes.append(len(data))
        return loads(data)

    monkeypatch.setattr(store, "read", counted_read)
    monkeypatch.setattr(orjson, "loads", counted_loads)
    return sizes


def test_an_object_born_in_a_big_attach_is_read_from_it_once(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """history() of an object born in a big attach (one assignment of a large new subgraph) reads that event's
    payload once: later calls start from the first state found then, not from the whole payload again."""
    img = make_image(root=Box)
    img.root.content = [Node(value=f"{i}" * 2_000) for i in range(300)]  # one event of ~600 kB
    node = img.root.content[150]
    node.value = "changed"
    with img.transaction(meta={"user": "ada"}):
        node.value = "again"
    first = img.history(node)
    assert [(c.old[:3], c.new) for c in first] == [("150", "changed"), ("cha", "again")]
    sizes = _reads(img, monkeypatch)
    assert img.history(node) == first
    assert img.history(node, "value", since=first[0].seq) == first[1:]
    assert sum(sizes) < 10_000, sizes


def test_an_erasure_reaches_the_first_state_history_remembers(make_image: Images) -> None:
    """After erase() -- in this image or another on the same store -- history shows ERASED where the first state
    held the erased value, though an earlier call read that state already."""
    img = make_image(root=Box)
    img.root.content = [Node(value=f"{i}" * 2_000) for i in range(300)]
    a, b = img.root.content[1], img.root.content[2]
    a.value = b.value = "changed"
    assert img.history(a)[0].old.startswith("1") and img.history(b)[0].old.startswith("2")
    img.erase(a, "value", reason="test")
    assert img.history(a)[0].old is memimg.ERASED
    assert img.history(b)[0].old.startswith("2")
    other = make_image(root=Box)
    other.erase(other.root.content[2], "value", reason="test")
    other.close()
    img.refresh()
    assert img.history(b)[0].old is memimg.ERASED


def test_meta_is_read_only_from_a_transaction_that_may_have_it(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change's metadata costs no read when its event is the first of its transaction (then there is no
    tx.meta row), and the meta row alone when there is one: not a big first row of its transaction."""
    img = make_image(root=Box)
    img.root.content = node = Node()
    for i in range(3):
        node.value = i
    with img.transaction():
        img.root.other = [Node(value="x" * 2_000) for _ in range(100)]  # a big first row, without meta
        node.value = "big"
    with img.transaction(meta={"user": "ada"}):
        node.value = "ada"
    sizes = _reads(img, monkeypatch)
    changes = img.history(node, "value")
    assert [(c.new, c.meta) for c in changes] == [(0, {}), (1, {}), (2, {}), ("big", {}), ("ada", {"user": "ada"})]
    assert sum(sizes) < 10_000, sizes


def test_a_field_added_since_starts_at_its_default_as_at_shows_it(make_image: Images) -> None:
    """For objects stored before a field with a default was added to their class, history() starts that field at
    the default -- what img.at() shows there -- not MISSING; a field deleted before the object was attached stays
    MISSING, as at() shows it unset (the declaration in effect tells them apart, whether the object's event
    makes it or an earlier one)."""

    @memimg.persistent(name="thistory.Added")
    class Before:
        name: str = ""

    img = make_image(root=Box)
    img.root.content = [Before("a")]  # the event declares the class
    img.root.content.append(Before("b"))  # this one does not
    img.close()

    @memimg.persistent(name="thistory.Added")
    class After:
        name: str = ""
        flag: int = 7
        note: Any = attrs.field(default=None)

    img = make_image(root=Box)
    old = img.seq
    fresh = After("c")
    del fresh.note
    img.root.other = fresh  # the event declares the class again, with the field
    fresh.note = "set"
    a, b = img.root.content
    a.flag = b.flag = 8
    later = After("d")
    del later.note
    img.root.content.append(later)  # declared already: the event does not declare it again
    appended = img.seq
    later.note = "set"
    with img.at(old) as past:
        assert [(x.flag, x.note) for x in past.root.content] == [(7, None), (7, None)]
    with img.at(appended) as past:
        assert not hasattr(past.root.content[2], "note")
    for obj in (a, b):
        assert [(c.old, c.new) for c in img.history(obj, "flag")] == [(7, 8)]
        assert img.history(obj, "note") == []
    for obj in (fresh, later):
        assert [(c.old, c.new) for c in img.history(obj, "note")] == [(MISSING, "set")]


def test_a_field_added_since_starts_at_its_default_in_a_snapshot_too(make_image: Images) -> None:
    """An object whose first state history reads from a snapshot (the events before it compacted away) starts a
    field added to its class since at the default too."""

    @memimg.persistent(name="thistory.AddedSnap")
    class Before:
        name: str = ""

    img = make_image(root=Box)
    img.root.content = Before("a")
    seq = img.snapshot()
    img.root.other = 1
    img.close()
    make_image.store().delete_events_before(seq)

    @memimg.persistent(name="thistory.AddedSnap")
    class After:
        name: str = ""
        flag: int = 7

    img = make_image(root=Box)
    img.root.content.flag = 8
    assert [(c.old, c.new) for c in img.history(img.root.content, "flag")] == [(7, 8)]


def test_a_none_key_is_a_key_and_none_a_value(make_image: Images) -> None:
    """In a dict's history and diff, the key None is a key like any (shown as [None]), and a key absent (MISSING)
    is not a key present with the value None -- from the events and from a snapshot alike."""
    img = make_image(root=Box)
    img.root.content = {"a": None}
    d = img.root.content
    start = img.seq
    d[None] = None
    d[None] = 2
    del d[None]
    d.update({None: None})
    img.snapshot()
    d["a"] = 1
    d.clear()
    want = [
        ("dict.set", None, None, MISSING, None, None),
        ("dict.set", None, None, None, 2, None),
        ("dict.del", None, None, 2, MISSING, None),
        ("dict.update", None, None, MISSING, None, None),
        ("dict.set", None, "a", None, 1, None),
        ("dict.clear", None, "a", 1, MISSING, None),
        ("dict.clear", None, None, None, MISSING, None),
    ]
    assert parts(img.history(d)) == want
    assert repr(img.history(d)[0]).endswith("[None]: MISSING -> None>")
    assert [(x.path, x.old, x.new) for x in img.diff(start, start + 1)] == [("root.content[None]", MISSING, None)]
    assert [(x.path, x.old, x.new) for x in img.diff(start + 1, start + 2)] == [("root.content[None]", None, 2)]
    assert [(x.path, x.old, x.new) for x in img.diff(start + 2, start + 3)] == [("root.content[None]", 2, MISSING)]
    assert str(img.diff(start, start + 1)) == "root.content[None]: MISSING → None"
    img.close()
    img = make_image(root=Box)
    assert parts(img.history(img.root.content)) == want


@memimg.persistent(name="thistory.Coupon")
class _Coupon:
    code: str = ""


def test_an_object_of_a_removed_type_is_shown_as_such_not_as_collected(make_image: Images) -> None:
    """Where a past value is an object of a type removed since (removed_types), history shows its placeholder,
    naming its type and id -- not Collected, which it is not (the image holds it until it is collected)."""
    img = make_image(root=Box)
    img.root.content = ["a", _Coupon("c")]
    items = img.root.content
    coupon = items[1]._mi_oid
    img.close()
    img = make_image(root=Box, removed_types=("thistory.Coupon",))
    items = img.root.content
    assert items == ["a"]
    (dropped,) = img.history(items)  # the clean-up the image logged
    (gone,) = dropped.old
    assert not isinstance(gone, Collected)
    assert (gone.oid, gone.type_name) == (coupon, "thistory.Coupon")
    assert repr(gone) == f"<removed thistory.Coupon #{coupon}>"


def test_the_declaration_found_before_a_first_state_is_remembered(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the event an object was born in does not declare its type, history() reads back to the event that
    did once: the next call, for that object or another born between the two, reads no events before them."""

    @memimg.persistent(name="thistory.Declared")
    class Before:
        name: str = ""

    img = make_image(root=Box)
    img.root.content = [Before("a")]
    for i in range(5):
        img.root.content.append(Before(str(i)))
    img.close()

    @memimg.persistent(name="thistory.Declared")
    class After:
        name: str = ""
        flag: int = 7

    img = make_image(root=Box)
    objs = list(img.root.content)
    for obj in objs:
        obj.flag = 8
    reads: list[int] = []
    read = img._engine.store.read
    monkeypatch.setattr(
        img._engine.store, "read", lambda after=0, limit=None: reads.append(after) or read(after, limit)
    )
    assert [(c.old, c.new) for c in img.history(objs[5], "flag")] == [(7, 8)]
    born = reads[0] + 1
    assert min(reads) < born - 1  # read back
    for obj in (objs[5], *objs[2:5]):
        reads.clear()
        assert [(c.old, c.new) for c in img.history(obj, "flag")] == [(7, 8)]
        assert len(reads) == 1 and reads[0] + 1 == img._engine.table.born.seq_of(obj._mi_oid)


def test_a_remembered_first_state_is_read_as_the_first_time(make_image: Images) -> None:
    """A second history() call, starting from the first state remembered from a big attach, shows what the first
    showed: a field deleted before the object was attached stays MISSING (img.at() shows it unset), not its
    default."""
    img = make_image(root=Box)
    nodes = [Node(value=f"{i}" * 2_000) for i in range(100)]
    odd = nodes[50]
    del odd.next
    img.root.content = nodes  # one event of ~200 kB
    attached = img.seq
    odd.next = None
    with img.at(attached) as past:
        assert not hasattr(past.root.content[50], "next")
    first = [(c.old, c.new) for c in img.history(odd, "next")]
    assert first == [(MISSING, None)]
    assert [(c.old, c.new) for c in img.history(odd, "next")] == first


def test_an_erasure_reaches_the_history_of_a_past_image(make_image: Images) -> None:
    """history() on a past image (img.at()) shows ERASED where an erase() since excised the value, though that
    past image read the object's first state before the erasure."""
    img = make_image(root=Box)
    img.root.content = [Node(value=f"{i}" * 2_000) for i in range(100)]
    a = img.root.content[1]
    a.value = "changed"
    with img.at(img.seq) as past:
        pa = past.root.content[1]
        assert past.history(pa)[0].old.startswith("1")
        img.erase(a, "value", reason="test")
        assert img.history(a)[0].old is memimg.ERASED
        assert past.history(pa)[0].old is memimg.ERASED


def test_an_erasure_forgets_remembered_first_states_though_applying_it_fails(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once erase() has rewritten the stored rows, what history() remembers of them is forgotten, even if
    applying the audit commit to the image then fails."""
    img = make_image(root=Box)
    img.root.content = [Node(value=f"{i}" * 2_000) for i in range(100)]
    a = img.root.content[1]
    a.value = "changed"
    assert img.history(a)[0].old.startswith("1")
    assert img._engine.reader.first_states.get(a._mi_oid) is not None

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("applying failed")

    monkeypatch.setattr(img._engine, "apply", fail)
    with pytest.raises(RuntimeError, match="applying failed"):
        img.erase(a, "value", reason="test")
    assert len(img._engine.reader.first_states) == 0


def test_a_state_an_upgrader_reads_is_not_filled_with_defaults(make_image: Images) -> None:
    """Where upgraders read a first state (its declaration is of an older version), history() does not fill the
    fields it lacks with the class's defaults (history runs no upgrader): they are MISSING up to the change that
    sets them, not a default img.at() never shows."""

    @memimg.persistent(name="thistory.Priced")
    class V1:
        title: str = ""
        cents: int = 0

    img = make_image(root=Box)
    img.root.content = V1("x", 250)
    img.close()

    @memimg.persistent(name="thistory.Priced", version=2)
    class V2:
        title: str = ""
        price: Decimal = Decimal("0")

    @memimg.upgrader("thistory.Priced", from_version=1)
    def cents_to_price(state: dict[str, Any]) -> dict[str, Any]:
        if "cents" in state:
            state["price"] = Decimal(state.pop("cents")) / 100
        return state

    img = make_image(root=Box)
    before = img.seq
    img.root.content.price = Decimal("3")
    with img.at(before) as past:
        assert past.root.content.price == Decimal("2.5")
    assert [(c.old, c.new) for c in img.history(img.root.content, "price")] == [(MISSING, Decimal("3"))]


def test_reordered_fields_are_the_same_declaration(make_image: Images) -> None:
    """A class whose fields were only reordered since reads its stored states as they are: a field deleted before
    the object was attached stays MISSING in history(), as img.at() shows it unset."""

    @memimg.persistent(name="thistory.Ordered")
    class Before:
        name: str = ""
        note: Any = None

    img = make_image(root=Box)
    obj = Before("a")
    del obj.note
    img.root.content = [obj]
    attached = img.seq
    img.close()

    @memimg.persistent(name="thistory.Ordered")
    class After:
        note: Any = None
        name: str = ""

    img = make_image(root=Box)
    (obj,) = img.root.content
    obj.note = "set"
    with img.at(attached) as past:
        assert not hasattr(past.root.content[0], "note")
    assert [(c.old, c.new) for c in img.history(obj, "note")] == [(MISSING, "set")]


def test_history_runs_no_default_factory(make_image: Images) -> None:
    """A field added since with a factory default is MISSING in history() until a change sets it: history runs
    no factory (one returning another value each call, or failing, changes nothing)."""

    @memimg.persistent(name="thistory.Factory")
    class Before:
        name: str = ""

    img = make_image(root=Box)
    img.root.content = Before("a")
    img.close()
    calls: list[int] = []

    def make_token() -> str:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("factory ran again")
        return "fresh"

    @memimg.persistent(name="thistory.Factory")
    class After:
        name: str = ""
        token: str = attrs.field(factory=make_token)

    img = make_image(root=Box)
    img.root.content.token = "mine"
    ran = len(calls)
    for _ in range(2):
        assert [(c.old, c.new) for c in img.history(img.root.content, "token")] == [(MISSING, "mine")]
    assert len(calls) == ran


def test_remembered_first_states_are_capped_by_size(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """history() remembers first states up to a total size, forgetting the oldest first: many big objects do
    not pile up; the states still remembered are the latest read, and history() is the same either way."""
    monkeypatch.setattr(_firststates, "FIRST_STATES_BYTES", 50_000)
    img = make_image(root=Box)
    img.root.content = [Node(value=f"{i:02}" * 10_000) for i in range(20)]  # each state ~20 kB
    for node in img.root.content:
        node.value = "changed"
    remembered = img._engine.reader.first_states
    for node in img.root.content:
        assert img.history(node)[0].old.startswith(f"{img.root.content.index(node):02}")
    big = [n for n in img.root.content if remembered.get(n._mi_oid) is not None]
    assert remembered.size <= 50_000 and len(big) == 2  # two ~20 kB states fit, not twenty
    last = img.root.content[-1]
    assert remembered.get(last._mi_oid) is not None
    assert img.history(last)[0].old == "19" * 10_000


def test_the_objects_of_one_big_event_are_read_from_it_once(make_image: Images) -> None:
    """history() of the objects born together in one big attach reads and parses that event once for all of
    them (it remembers every state it holds, within the size cap), and every history is right."""
    img = make_image(root=Box)
    img.root.content = [Node(value=f"{i:03}" * 300) for i in range(200)]
    for node in img.root.content:
        node.value = "changed"
    reads: list[int] = []
    real = img.store.read

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(*args, **kwargs)

    img._engine.store.read = counting  # type: ignore[method-assign]
    try:
        for i, node in enumerate(img.root.content):
            assert [(c.old, c.new) for c in img.history(node, "value")] == [(f"{i:03}" * 300, "changed")]
    finally:
        del img._engine.store.read
    assert len(reads) <= 2, len(reads)


def test_declarations_found_are_not_read_again(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """Looking back for the declaration in effect at each object's first state, repeated history() calls read
    each event at most once in all (a later call stops where an earlier one's finding ends), not once per
    call."""

    @memimg.persistent(name="thistory.Spans")
    class Before:
        name: str = ""

    img = make_image(root=Box, snapshot_every=None)
    img.root.content = []
    for t in range(4):
        with img.transaction():
            for i in range(250):
                img.root.content.append(Before(f"{t}.{i}"))
    img.close()

    @memimg.persistent(name="thistory.Spans")
    class After:
        name: str = ""
        flag: int = 7

    img = make_image(root=Box, snapshot_every=None)
    objs = list(img.root.content)
    rows = [0]
    read = img._engine.store.read

    def counted(after: int = 0, limit: int | None = None) -> Any:
        for row in read(after, limit):
            rows[0] += 1
            yield row

    monkeypatch.setattr(img._engine.store, "read", counted)
    for obj in objs[::50] + objs[::-50]:
        assert [(c.old, c.new) for c in img.history(obj, "flag")] == []
    assert rows[0] < len(objs) + 200, rows[0]
    assert len(img._engine.reader.declared_spans["thistory.Spans"]) == 1  # one span, merged


def test_remembered_first_states_are_kept_as_stored_and_safe_from_several_threads() -> None:
    """What history() remembers is kept as stored: a caller changing a state it was given changes nothing
    remembered, and the size counted is the bytes held; threads remembering at once keep the count exact."""
    import threading

    states = _firststates.FirstStates()
    states.limit = 2_000
    states.remember(1, 10, "t.N", {"v": [1, 2, 3]}, None)
    got = states.get(1)
    assert got is not None
    got[2]["v"].append(4)
    assert states.get(1) == (10, "t.N", {"v": [1, 2, 3]}, None)

    def work(base: int) -> None:
        for i in range(2_000):
            states.remember(base + i, 1, "t.N", {"v": "x" * (i % 50)}, None)

    threads = [threading.Thread(target=work, args=(k * 10_000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [states.get(oid) for oid in range(40_000)]
    import orjson

    assert states.size == sum(len(orjson.dumps(h[2])) for h in held if h is not None) <= 2_000
