"""The stored snapshot format: what it holds, that every kind of state survives it, and what reads it.

Snapshots are written in format 2 (a header, then per chunk of objects a
directory line and a states line, entity states as field lists). Images
written before it hold format-1 snapshots (a line per object), which must
still open. Tests of what a snapshot holds reopen from the snapshot alone:
the events it covers are deleted first, so nothing but the snapshot can give
the state back. Damaged snapshots keep valid checksums, so only memimg's
reading of their content can tell.

On every store, except the tests that run `memimg verify` on the file or
edit an SQLite file's rows in ways no store method can (a snapshot moved
past the log, an event deleted from under an open image).
"""

from __future__ import annotations

import datetime as dt
import enum
import sqlite3
import threading
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memimg
from memimg import persistent
from memimg.cli._verify import _canonical_state
from memimg.core import _compiled, _types
from memimg.core._codec import Codec
from memimg.core._snapshot import split_snapshot
from memimg.core._snapshotter import SnapshotWriter
from memimg.core._table import ObjectTable
from memimg.model import SHELL
from memimg.model._accel import speedups
from memimg.model._base import PersistentBase
from memimg.model._tracking import disable_now
from tests.accel import compiled
from tests.conftest import Images
from tests.models import Box, Color, Money
from tests.tampering import edit_snapshot, format_1, move_snapshot, rewrite_snapshot


class Colour(enum.Enum):
    RED = "red"


@attrs.frozen
class Point:
    x: int
    y: Any = None


@persistent(name="fmt.Node")
class Node:
    label: str = ""
    n: Any = 0
    next: Any = None
    tags: list = attrs.field(factory=list)
    extra: Any = None


@persistent(name="fmt.Holder")
class Holder:
    nodes: list = attrs.field(factory=list)
    index: dict = attrs.field(factory=dict)
    keyed: dict = attrs.field(factory=dict)
    members: set = attrs.field(factory=set)
    misc: Any = None


def _only_the_snapshot(where: str | memimg.Store, seq: int) -> None:
    """Delete the events *seq* covers from *where* (a store, or an SQLite file's path), so reopening can
    only use the snapshot."""
    store = memimg.SQLiteStore(where) if isinstance(where, str) else where
    store.delete_events_before(seq + 1)
    if isinstance(where, str):
        store.close()


def _fill(root: Holder) -> None:
    nodes = [Node(f"n{i}", i, tags=["a", i, 2**70, -0.0]) for i in range(5_000)]
    for i, node in enumerate(nodes):
        node.next = nodes[(i * 31 + 7) % len(nodes)]
    nodes[3].extra = (nodes[4], Point(1, nodes[5]), frozenset({1, 2}))
    nodes[6].extra = {"deep": [nodes[7], b"\x00\xff"]}
    nodes[8].n = 2**80
    nodes[9].n = float("nan")
    root.nodes = nodes
    root.index = {node.label: node for node in nodes[:100]}
    root.keyed = {1: "int key", (1, "t"): nodes[10], Colour.RED: Decimal("1.50"), nodes[11]: "entity key"}
    root.members = {1, "s", nodes[12], dt.date(2024, 2, 29)}
    root.misc = [None, True, 1.5, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), Colour.RED]
    del nodes[13].label  # an unset field: stored as a dict state


def _content(root: Any) -> bytes:
    """The graph under *root*, independent of set and frozenset iteration order."""
    data = memimg.serialize(root)
    records = sorted([oid, name, _canonical_state(name, state)] for oid, name, state in data["objects"])
    return orjson.dumps({"root": data["root"], "objects": records}, option=orjson.OPT_SORT_KEYS)


def _snapshot_of_everything(open_image: Callable[..., memimg.MemoryImage]) -> tuple[int, bytes]:
    """An image filled by :func:`_fill` and snapshotted: the snapshot's seq and the graph's content."""
    with open_image(root=Holder, snapshot_every=None) as img:
        _fill(img.root)
        return img.snapshot(), _content(img.root)


def test_every_kind_of_state_survives_a_snapshot_alone(make_image: Images) -> None:
    """A graph of several chunks, with references everywhere a value can hold one, reopens from its snapshot."""
    seq, expected = _snapshot_of_everything(make_image)
    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder) as img:
        got = _content(img.root)
        root = img.root
        assert not hasattr(root.nodes[13], "label")
        assert root.nodes[3].extra[1].y is root.nodes[5]
        assert root.nodes[0].next is root.nodes[7]
        assert root.keyed[root.nodes[11]] == "entity key"
    assert got == expected


def test_payload_lays_out_chunks_of_directory_and_states(make_image: Images) -> None:
    """Format 2: a header naming types, then chunks whose directory lines list oids and type indexes."""
    with make_image(root=Holder, snapshot_every=None) as img:
        _fill(img.root)
        seq = img.snapshot()
        live = img._engine.table.live_count()
    payload = make_image.store().read_snapshot(seq).payload
    header, *lines = payload.split(b"\n")
    head = orjson.loads(header)
    assert head["format"] == 2 and head["names"][:3] == ["list", "dict", "set"]
    assert head["types"]["fmt.Node"][1] == ["label", "n", "next", "tags", "extra"]
    assert len(lines) % 2 == 0 and len(lines) >= 6  # ~10,000 objects: several chunks
    oids: list[int] = []
    for directory, states in zip(lines[::2], lines[1::2]):
        ids, kinds = orjson.loads(directory)
        assert len(ids) == len(kinds) == len(orjson.loads(states)) <= 2048
        oids += ids
    assert len(oids) == len(set(oids)) == head["count"] == live
    node = next(s for s in orjson.loads(lines[1]) if isinstance(s, list) and s[:1] == ["n0"])
    assert node[1] == 0 and node[2][0] == "r"  # label, n, then a reference


def test_snapshot_inside_an_open_transaction_holds_the_committed_state(make_image: Images) -> None:
    """While read hooks are on, the snapshot reads raw slots: a transaction's pending writes are not in it."""
    with make_image(root=Holder, snapshot_every=None) as img:
        img.root.nodes = [Node("committed", 1)]
        with img.transaction() as tx:
            img.root.nodes[0].label = "pending"
            seq = img.snapshot()
            tx.discard()
    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder) as img:
        assert img.root.nodes[0].label == "committed"


def test_snapshot_while_another_thread_holds_a_transaction(make_image: Images) -> None:
    """Another thread's open transaction (hooks on for every class) does not leak into the snapshot."""
    with make_image(root=Holder, snapshot_every=None) as img:
        img.root.nodes = [Node("committed", 1)]
        opened, release = threading.Event(), threading.Event()

        def writer() -> None:
            with img.transaction() as tx:
                img.root.nodes[0].label = "pending"
                opened.set()
                release.wait(10)
                tx.discard()

        thread = threading.Thread(target=writer)
        thread.start()
        assert opened.wait(10)
        try:
            seq = img.snapshot()
        finally:
            release.set()
            thread.join()
    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder) as img:
        assert img.root.nodes[0].label == "committed"


def test_format_1_snapshots_still_open(make_image: Images) -> None:
    """An image whose newest snapshot is in the previous format opens to the same graph."""
    seq, expected = _snapshot_of_everything(lambda **options: make_image(**options))
    edit_snapshot(make_image.store(), format_1)
    payload = make_image.store().read_snapshot(seq).payload
    assert orjson.loads(payload.split(b"\n", 1)[0])["format"] == 1
    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder) as img:
        assert _content(img.root) == expected
        img.root.misc = "written after"  # and the image goes on
        img.snapshot()
    with make_image(root=Holder) as img:
        assert img.root.misc == "written after"


def test_cli_verify_compares_format_2_snapshots_with_the_log(tmp_path: Any) -> None:
    """`memimg verify` reads a format-2 snapshot back into records and finds it equal to the replayed log."""
    from click.testing import CliRunner

    from memimg.cli import cli

    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Holder, snapshot_every=None) as img:
        _fill(img.root)
        img.snapshot()
        img.root.misc = "after"
    result = CliRunner().invoke(cli, ["verify", path])
    assert result.exit_code == 0, result.output
    assert "1 snapshot(s) equal the replayed state" in result.output


# -- damage ------------------------------------------------------------------------


def _small(where: str | Images, *, garbage: bool = True) -> int:
    """A snapshot of two nodes in the image *where* (``make_image``, or an SQLite file's path); its seq.

    With *garbage*, the root's first nodes list (object 2) is replaced, unreachable at the snapshot (and
    dropped by the ``gc.drop`` event after it); without, the snapshot is the log's last event.
    """
    open_image = (lambda **options: memimg.open(where, **options)) if isinstance(where, str) else where
    with open_image(root=Holder, snapshot_every=None) as img:
        if garbage:
            img.root.nodes = [Node("a", 1), Node("b", 2)]
        else:
            img.root.nodes.extend([Node("a", 1), Node("b", 2)])
        return img.snapshot()


def _fewer_kinds(oids: list[Any], kinds: list[Any]) -> list[Any]:
    return [oids, kinds[:-1]]  # not as many types as oids


def _text_oid(oids: list[Any], kinds: list[Any]) -> list[Any]:
    return [["x", *oids[1:]], kinds]  # an oid that is not a positive int


@pytest.mark.parametrize("damage", [_fewer_kinds, _text_oid], ids=["fewer-kinds", "text-oid"])
def test_a_malformed_directory_line_skips_the_snapshot_with_a_warning(make_image: Images, damage: Any) -> None:
    """A directory line that does not list a valid oid and a type for each object: the snapshot is
    skipped with a warning, and the log behind it replayed."""
    _small(make_image)

    def edit(payload: bytes) -> bytes:
        header, directory, states = payload.split(b"\n")
        return b"\n".join([header, orjson.dumps(damage(*orjson.loads(directory))), states])

    seq = edit_snapshot(make_image.store(), edit)
    with pytest.warns(UserWarning, match=f"skipping snapshot at seq {seq}: .*malformed directory line in chunk 0"):
        img = make_image(root=Holder)
    with img:
        assert [n.label for n in img.root.nodes] == ["a", "b"]


def _below_1_in_format_2(payload: bytes) -> bytes:
    header, directory, states = payload.split(b"\n")
    oids, kinds = orjson.loads(directory)
    return b"\n".join([header, orjson.dumps([[*oids[:-1], -3], kinds]), states])


def _below_1_in_format_1(payload: bytes) -> bytes:
    last = orjson.loads(payload.split(b"\n")[1])[0][-1]
    return format_1(payload, lambda oid: -3 if oid == last else oid)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_below_1_in_format_2, "malformed directory line in chunk 0"),
        (_below_1_in_format_1, "has object id -3 on object line \\d+ \\(object ids run from 1 up\\)"),
    ],
    ids=["format-2", "format-1"],
)
def test_an_object_id_below_1_skips_the_snapshot_in_either_format(
    make_image: Images, damage: Any, message: str
) -> None:
    """A snapshot holding an object under an id below 1 (its last, here) is skipped with a warning naming its
    seq, in format 1 as in format 2, and the log behind it replayed: no object is counted from the end."""
    _small(make_image)
    seq = edit_snapshot(make_image.store(), damage)
    with pytest.warns(UserWarning, match=f"skipping snapshot at seq {seq}: .*{message}"):
        img = make_image(root=Holder)
    with img:
        assert [n.label for n in img.root.nodes] == ["a", "b"]


def test_a_chunk_with_too_few_states_is_named_by_seq(make_image: Images) -> None:
    """A states line shorter than its directory cannot be loaded: CorruptLogError naming the snapshot."""
    _small(make_image)

    def edit(payload: bytes) -> bytes:
        header, directory, states = payload.split(b"\n")
        return b"\n".join([header, directory, orjson.dumps(orjson.loads(states)[:-1])])

    seq = edit_snapshot(make_image.store(), edit)
    match = f"snapshot at seq {seq} .*its states line does not hold as many"
    with pytest.raises(memimg.CorruptLogError, match=match) as info:
        make_image(root=Holder)
    assert info.value.seq == seq and info.value.table == "memimg_snapshots"


def test_an_entity_state_with_a_missing_field_value_is_named_by_seq(make_image: Images) -> None:
    """An entity state with fewer values than its declaration lists: CorruptLogError naming the object and seq."""
    _small(make_image)

    def edit(payload: bytes) -> bytes:
        return payload.replace(b'["a",1,', b'["a",', 1)

    seq = edit_snapshot(make_image.store(), edit)
    with pytest.raises(memimg.CorruptLogError, match=f"snapshot at seq {seq} .*fmt.Node.* 4 field values") as info:
        make_image(root=Holder)
    assert info.value.seq == seq


@pytest.mark.parametrize("what", ["list", "fmt.Node"])
def test_a_state_that_does_not_fit_its_object_is_named(make_image: Images, what: str) -> None:
    """A state of the wrong shape (here an int) is a CorruptLogError naming the object, its type and the seq."""
    _small(make_image)
    target: list[int] = []

    def edit(payload: bytes) -> bytes:
        header, directory, states = payload.split(b"\n")
        names = orjson.loads(header)["names"]
        oids, kinds = orjson.loads(directory)
        listed = orjson.loads(states)
        index = next(i for i, k in enumerate(kinds) if names[k] == what)
        target.append(oids[index])
        listed[index] = 7
        return b"\n".join([header, directory, orjson.dumps(listed)])

    seq = edit_snapshot(make_image.store(), edit)
    with pytest.raises(
        memimg.CorruptLogError, match=rf"snapshot at seq {seq} .*stored object {target[0]} \({what}\) has a state"
    ) as info:
        make_image(root=Holder)
    assert info.value.seq == seq and info.value.table == "memimg_snapshots"


@pytest.mark.parametrize("ref", [-1, 0, 2, 11], ids=["negative", "zero", "a hole", "past the end"])
def test_a_reference_to_an_object_the_snapshot_does_not_hold_is_named_by_seq(make_image: Images, ref: int) -> None:
    """A stored reference to an id the snapshot holds no object at -- below 1, a collected object's, past its
    last -- is a CorruptLogError naming it and the seq: never read as another object (one counted from the end)."""
    _small(make_image)

    def edit(payload: bytes) -> bytes:
        assert b'["a",1,null,' in payload  # node "a": its next field, in a run of nodes loaded at once
        return payload.replace(b'["a",1,null,', b'["a",1,["r",%d],' % ref, 1)

    seq = edit_snapshot(make_image.store(), edit)
    with pytest.raises(
        memimg.CorruptLogError, match=rf"snapshot at seq {seq} .*names object {ref}, which does not"
    ) as info:
        make_image(root=Holder)
    assert info.value.seq == seq


def test_two_classes_of_one_name_in_one_snapshot_keep_their_fields(make_image: Images) -> None:
    """A class redefined under the same stored name (fields reordered) while objects of the first are
    still in the graph: the header declares one field order, so the other class's states go by name."""

    @persistent(name="fmt.Twin")
    class First:
        x: int = 0
        y: int = 0

    with make_image(root=Holder, snapshot_every=None) as img:
        img.root.nodes = [Node("a", extra=First(1, 2))]

        @persistent(name="fmt.Twin")
        class Second:
            y: int = 0
            x: int = 0

        img.root.misc = Second(y=20, x=10)
        seq = img.snapshot()
    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder) as img:
        first, second = img.root.nodes[0].extra, img.root.misc
        assert (first.x, first.y) == (1, 2)
        assert (second.x, second.y) == (10, 20)


def test_a_states_line_that_is_not_json_is_named_by_seq(make_image: Images) -> None:
    """A states line cut short (not JSON) is a CorruptLogError naming the snapshot's seq."""
    _small(make_image)
    seq = edit_snapshot(make_image.store(), lambda payload: payload[:-3])
    with pytest.raises(memimg.CorruptLogError, match=f"snapshot at seq {seq} .*states line") as info:
        make_image(root=Holder)
    assert info.value.seq == seq


def test_a_snapshot_in_a_newer_format_is_refused_not_misread(make_image: Images) -> None:
    """A snapshot whose header gives a format this memimg does not know is refused, naming the format."""
    _small(make_image)
    edit_snapshot(make_image.store(), lambda payload: payload.replace(b'"format":2', b'"format":3', 1))
    with pytest.raises(memimg.MemimgError, match="unknown snapshot format 3: written by a newer memimg") as info:
        make_image(root=Holder)
    assert info.value.format == 3  # type: ignore[attr-defined]


def test_a_snapshot_holding_an_unknown_value_tag_is_named_by_seq(make_image: Images) -> None:
    """A snapshot with a valid checksum holding a value tag no codec knows is a CorruptLogError naming
    the snapshot's seq and table."""
    with make_image(root=dict) as img:
        img.root["a"] = Decimal("1.5")
        seq = img.snapshot()
    assert rewrite_snapshot(make_image.store(), b'["D","1.5"]', b'["no-such-tag","1.5"]') == seq
    with pytest.raises(memimg.CorruptLogError, match=f"snapshot at seq {seq} .*unknown value tag") as info:
        make_image(root=dict)
    assert info.value.seq == seq and info.value.table == "memimg_snapshots"


@persistent(name="fmt.Computed")
class Computed:
    label: str = ""

    def __getattr__(self, name: str) -> Any:  # computes missing attributes: must not be stored
        if name.startswith("_"):
            raise AttributeError(name)
        return f"computed {name}"


def test_a_class_with_getattr_is_read_through_raw_slots(make_image: Images) -> None:
    """An unset field of a class with __getattr__ stays unset in the snapshot, not the computed value."""
    hooks_off = disable_now()  # no read hooks (an earlier test's may linger): plain loads allowed, not on this class
    assert hooks_off
    with make_image(root=Holder, snapshot_every=None) as img:
        img.root.misc = Computed("x")
        del img.root.misc.label
        seq = img.snapshot()
    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder) as img:
        assert "label" not in memimg.serialize(img.root.misc)["objects"][0][2]


# -- snapshots that do not fit their log ------------------------------------------------------------


def _in_thread(work: Any, timeout: float = 20.0) -> Any:
    """Run *work* in a thread, waiting at most *timeout* seconds: its result or the exception it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as err:  # handed to the test
            out.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    return out[0]


def _open_and_commit(path: str) -> int:
    with memimg.open(path, root=Holder) as img:
        img.root.misc = "after"
        return img.seq


def test_a_snapshot_past_the_last_event_is_corrupt_not_a_hang(tmp_path: Any) -> None:
    """A snapshot whose seq is past every event (events lost, or a snapshot of another log) is a
    CorruptLogError naming its seq when opening; the first commit never spins retrying."""
    path = str(tmp_path / "img.db")
    _small(path)
    with memimg.open(path, root=Holder) as img:
        img.root.misc = "an event after the snapshot"
        head = img.seq
    move_snapshot(path, 50)
    err = _in_thread(lambda: _open_and_commit(path))
    assert isinstance(err, memimg.CorruptLogError), err
    assert err.seq == 50 and err.table == "memimg_snapshots"
    assert f"snapshot at seq 50 is past the last event of {path} (seq {head})" in str(err)
    verified = _cli_verify(path)
    assert verified.exit_code == 1 and "snapshot at seq 50 is past the last event" in verified.output


def test_a_compacted_log_whose_head_is_its_snapshot_opens_and_goes_on(tmp_path: Any) -> None:
    """After compaction dropped every event, the head is the snapshot's seq: it opens, commits follow it,
    and verify agrees."""
    path = str(tmp_path / "img.db")
    seq = _small(path, garbage=False)
    _only_the_snapshot(path, seq)
    assert _in_thread(lambda: _open_and_commit(path)) == seq + 1
    with memimg.open(path, root=Holder) as img:
        assert img.root.misc == "after" and [n.label for n in img.root.nodes] == ["a", "b"]
    assert _cli_verify(path).exit_code == 0


def test_a_write_after_compaction_removed_every_event_commits(make_image: Images) -> None:
    """With every event compacted away (the head is the newest snapshot's seq), a reopened image's first
    write commits at once, after the snapshot, instead of retrying for ever."""
    with make_image(root=dict) as img:
        img.root["a"] = 1
        seq = img.snapshot()
        img.store.delete_events_before(seq + 1)

    def write() -> int:
        with make_image(root=dict) as img:
            img.root["b"] = 2
            return img.seq

    assert _in_thread(write) == seq + 1
    with make_image(root=dict) as img:
        assert img.root == {"a": 1, "b": 2}


@persistent(name="fmt.odd\tname")
class TabName:
    v: Any = None


def test_a_type_name_holding_a_tab_survives_a_snapshot(make_image: Images) -> None:
    """A stored type name with a tab in it is written into the snapshot and read back: the image reopens
    from that snapshot without a warning."""
    with make_image(root=Holder) as img:
        img.root.nodes.append(TabName("x"))
        seq = img.snapshot()
    _only_the_snapshot(make_image.store(), seq)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with make_image(root=Holder) as img:
            assert img.root.nodes[0].v == "x"


def test_the_snapshot_payload_of_an_empty_graph_reads_back() -> None:
    """The snapshot payload of a graph without objects splits into a header counting none and no records."""
    payload, count, _ = SnapshotWriter(ObjectTable(SHELL, Codec(memimg.converter, SHELL)), 0).finish()
    header, records = split_snapshot(payload)
    assert header["count"] == count == 0 and records == []


def test_a_commit_after_events_vanished_under_an_open_image_is_corrupt_not_a_hang(tmp_path: Any) -> None:
    """Events removed from the log while an image is open (its seq is past the log's head): the next
    commit raises CorruptLogError instead of retrying for ever, and changes nothing."""
    path = str(tmp_path / "img.db")
    img = memimg.open(path, root=Holder, snapshot_every=None)
    img.root.misc = 1
    img.root.misc = 2
    seq = img.seq
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM memimg_events WHERE seq = ?", (seq,))
    conn.commit()
    conn.close()

    def commit() -> None:
        img.root.misc = 3

    err = _in_thread(commit)  # the image is closed only if the commit ended: a spinning one holds its lock
    img.close()
    assert isinstance(err, memimg.CorruptLogError), err
    assert err.seq == seq and f"ends at seq {seq - 1}, before this image's seq {seq}" in str(err)
    assert img.root.misc == 2


def _set_header(**changes: Any) -> Any:
    def edit(payload: bytes) -> bytes:
        header, sep, rest = payload.partition(b"\n")
        return orjson.dumps({**orjson.loads(header), **changes}) + sep + rest

    return edit


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"root": 999}, "names object 999 as its root, but holds no object 999"),
        ({"root": 2}, "names object 2 as its root, but holds no object 2"),  # the root's first, replaced nodes list
        ({"root": None}, "header names no root object"),
        ({"seq": 1}, "header gives seq 1, not the seq of its row"),
    ],
    ids=["root-past-next-oid", "root-not-held", "no-root", "other-seq"],
)
def test_a_header_that_does_not_fit_its_row_skips_the_snapshot(tmp_path: Any, changes: Any, message: str) -> None:
    """A header whose root is not an object it holds, or whose seq is not its row's: the snapshot is
    skipped with a warning naming its seq (the log behind it replayed instead); verify reports it; with
    the events behind it gone, opening is a CorruptLogError that names it."""
    path = str(tmp_path / "img.db")
    _small(path)
    with memimg.open(path, root=Holder) as img:
        img.root.misc = [1]  # an event after the snapshot
    seq = edit_snapshot(path, _set_header(**changes))
    with pytest.warns(UserWarning, match=f"skipping snapshot at seq {seq}: .*{message}"):
        img = memimg.open(path, root=Holder)
    with img:
        assert [n.label for n in img.root.nodes] == ["a", "b"] and img.root.misc == [1]
    verified = _cli_verify(path)
    assert verified.exit_code == 1 and message in verified.output
    _only_the_snapshot(path, seq)
    with pytest.warns(UserWarning), pytest.raises(memimg.CorruptLogError) as info:
        memimg.open(path, root=Holder)
    assert f"snapshot at seq {seq} was skipped: " in str(info.value) and message in str(info.value)


def test_deserialize_of_data_without_its_root_is_corrupt() -> None:
    """Snapshot data whose root is not one of its objects: CorruptLogError, not an IndexError."""
    data = memimg.serialize(Holder(nodes=[Node("a")]))
    for root in (99, 0, "1"):
        with pytest.raises(memimg.CorruptLogError, match=f"names object {root!r} as its root"):
            memimg.deserialize({**data, "root": root})


def test_deserialize_of_data_holding_an_object_id_below_1_is_corrupt() -> None:
    """Snapshot data holding an object under a negative id: CorruptLogError naming the id, even where the id
    counted from the end would fall on a free place (-2: 8, left free by 9)."""
    data = memimg.serialize(Holder(nodes=[Node("a")]))  # objects 1 to 7
    renumbered = {5: 9, 7: -2}
    objects = [[renumbered.get(oid, oid), name, state] for oid, name, state in data["objects"]]
    with pytest.raises(memimg.CorruptLogError, match=r"snapshot data has object id -2 \(object ids run from 1 up\)"):
        memimg.deserialize({**data, "next_oid": 10, "objects": objects})


def _cli_verify(path: str) -> Any:
    from click.testing import CliRunner

    from memimg.cli import cli

    return CliRunner().invoke(cli, ["verify", path])


def test_history_and_erase_read_format_1_snapshots(make_image: Images) -> None:
    """history() starts from a format-1 snapshot (the events before it compacted away), and erase() rewrites the
    values one holds."""
    img = make_image(root=Holder)
    img.root.misc = Node(label="secret")
    seq = img.snapshot()
    img.root.misc.label = "public"
    img.close()
    store = make_image.store()
    edit_snapshot(store, format_1)
    store.delete_events_before(seq)
    img = make_image(root=Holder)
    node = img.root.misc
    assert [(c.old, c.new) for c in img.history(node, "label")] == [("secret", "public")]
    img.erase(node, "label", reason="test")
    assert [(c.old, c.new) for c in img.history(node, "label")] == [(memimg.ERASED, "public")]
    payload = make_image.store().read_snapshot(seq).payload
    assert b"secret" not in payload and orjson.loads(payload.split(b"\n", 1)[0])["format"] == 1


# -- the compiled walk (memimg.model._speedups.encode_states) ---------------------------------------------------


@persistent(name="tests.snapshot_format.Cell")
class Cell:
    a: Any = None
    b: Any = None
    c: Any = None


class Tag(enum.StrEnum):
    """A str subclass: not stored as a str."""

    T = "t"


_CELL_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.sampled_from([Color.RED, Money(Decimal("1.5")), Tag.T, dt.date(2026, 1, 2), (1, "x"), frozenset({3})]),
    st.sampled_from(["cell", "same cell", "list", "dict", "set", "unset"]),
)


def _snapshot_with(img: memimg.MemoryImage, compiled_walk: Any) -> tuple[bytes, int]:
    """The payload of a snapshot of *img* (not stored), written with *compiled_walk* (None: the Python walk)."""
    saved = _compiled.encode_states
    _compiled.encode_states = compiled_walk
    try:
        writer = SnapshotWriter(img._engine.table, img.seq)
        while not writer.step():
            pass
        writer.complete()
        return writer.payload(writer.header())
    finally:
        _compiled.encode_states = saved


def _walked(shape: list[tuple[Any, Any, Any]], compiled_walk: Any) -> tuple[str, Any]:
    """The payload of a snapshot of a graph of cells shaped by *shape* (or what the walk raised), with the given
    compiled walk (None: the Python one)."""
    img = memimg.open(root=Box)
    cells = [Cell() for _ in shape]
    for cell, values in zip(cells, shape):
        for name, v in zip("abc", values):
            if v == "cell":
                v = Cell(a=len(cells))
            elif v == "same cell":
                v = cells[0]
            elif v == "list":
                v = [1, "x", cells[-1], None, 2**65, Tag.T, [2]]
            elif v == "dict":
                v = {"k": cells[0], "n": 1.5}
            elif v == "set":
                v = {1, 2}
            if v != "unset":
                setattr(cell, name, v)
    img.root.content = cells
    for cell, values in zip(cells, shape):
        for name, v in zip("abc", values):
            if v == "unset":
                delattr(cell, name)
    try:
        return "written", _snapshot_with(img, compiled_walk)
    except Exception as err:
        return "raised", (type(err), str(err))
    finally:
        img.close()


@compiled
@settings(max_examples=120, deadline=None)
@given(shape=st.lists(st.tuples(_CELL_VALUES, _CELL_VALUES, _CELL_VALUES), min_size=1, max_size=6))
def test_the_compiled_walk_writes_the_snapshot_the_python_walk_writes(shape: list[tuple[Any, Any, Any]]) -> None:
    """A snapshot of entities holding any values -- stored as themselves, references (new, shared, to
    themselves), values written by the codec, str subclasses, lists (of anything, nested), dicts, sets, fields
    left unset -- is the same bytes with the compiled walk as with the Python one."""
    assert speedups is not None
    assert _walked(shape, speedups.encode_states) == _walked(shape, None)


_SET_OID = PersistentBase.__dict__["_mi_oid"].__set__


@attrs.frozen
class Fragile:
    """A value class whose encoding (a value hook) may fail, or change the entity being written."""

    text: str


_HOOK: dict[str, Any] = {"calls": [], "fail": None, "mutate": None}


def _fragile_text(v: Fragile) -> str:
    _HOOK["calls"].append(v.text)
    if _HOOK["mutate"] is not None and v.text == "x":
        _types.info_of(Cell).setters["b"](_HOOK["mutate"], "changed by the hook")  # a raw write: no event
    if _HOOK["fail"] is not None and v.text == "x":
        raise _HOOK["fail"]
    return v.text


def _hooked_walk(compiled_walk: Any, *, fail: BaseException | None = None, mutate: bool = False) -> Any:
    """What a snapshot of two cells, one holding a Fragile whose hook fails or mutates, writes or raises, and the
    hook's calls."""
    conv = memimg.Converter()
    conv.register_value(Fragile, name="tests.Fragile", unstructure=_fragile_text, structure=lambda d, t: Fragile(d))
    img = memimg.open(root=Box, converter=conv, snapshot_every=None)
    first, cell = Cell(a=Fragile("w"), b="first"), Cell(a=Fragile("x"), b="orig", c=[Fragile("y")])
    img.root.content = [first, cell]
    _HOOK.update(calls=[], fail=fail, mutate=cell if mutate else None)
    try:
        out: Any = ("written", _snapshot_with(img, compiled_walk))
    except BaseException as err:
        out = ("raised", type(err), str(err))
    finally:
        _HOOK.update(fail=None, mutate=None)
        img.close()
    return out, list(_HOOK["calls"])


@compiled
@pytest.mark.parametrize(
    "case",
    ["fails", "interrupted", "mutates"],
)
def test_the_compiled_walk_runs_value_hooks_once_and_reads_fields_before_encoding(case: str) -> None:
    """A value's hook runs once per value on both walks: one that raises (an Exception, or a KeyboardInterrupt)
    raises from the snapshot, never retried; one that changes a later field of the entity being written does
    not change what is written of it (every field is read first, as the generated encoders read them)."""
    assert speedups is not None
    options: dict[str, Any] = {
        "fails": {"fail": ValueError("no text for x")},
        "interrupted": {"fail": KeyboardInterrupt()},
        "mutates": {"mutate": True},
    }[case]
    compiled_run, python_run = _hooked_walk(speedups.encode_states, **options), _hooked_walk(None, **options)
    assert compiled_run == python_run
    assert python_run[1].count("x") == 1


@compiled
@pytest.mark.parametrize("oid", [None, -1, -2, "the table's length", 10**6, "3", 2**70])
def test_the_compiled_walk_meets_a_reference_whose_id_is_not_one_as_the_python_walk(oid: Any) -> None:
    """A reference to an object whose id is None, negative, past the table, not an int: the same bytes or the
    same error on both walks (a bytearray indexed as Python indexes it)."""
    assert speedups is not None
    outcomes = []
    for walk in (speedups.encode_states, None):
        img = memimg.open(root=Box, snapshot_every=None)
        odd, plain = Cell(a=1), Cell(a=2)
        img.root.content = [Cell(a=odd, b=plain), Cell(a=plain, b=odd)]
        kept = odd._mi_oid
        _SET_OID(odd, len(img._engine.table.objects) if oid == "the table's length" else oid)
        try:
            outcomes.append(("written", _snapshot_with(img, walk)))
        except Exception as err:
            outcomes.append(("raised", type(err), str(err)))
        finally:
            _SET_OID(odd, kept)
            img.close()
    assert outcomes[0] == outcomes[1]
