"""MemoryImage: open, recover, snapshot, events, errors.

On every store, except the tests about an SQLite file (rows edited in it, its
locks), a log recorded by another process, or a store double that fails.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
import textwrap
from decimal import Decimal
from typing import Any

import orjson
import pytest

import memimg
from memimg.stores import MemoryStore, SeqTaken
from tests.conftest import Images
from tests.models import Account, Bank, Box, Entry, Node
from tests.stores.contract import row
from tests.tampering import append_event


def test_quick_start_flow(make_image: Images) -> None:
    """The spec's example works on every store and survives reopening."""
    img = make_image(root=Bank)
    bank = img.root
    bank.accounts["ada"] = Account("ada")
    bank.accounts["bob"] = Account("bob")
    with img.transaction():
        bank.accounts["ada"].balance -= 10
        bank.accounts["bob"].balance += 10
    seq = img.snapshot()
    assert seq == img.seq
    bank.accounts["ada"].tags.add("overdrawn")
    img.close()
    again = make_image(root=Bank).root
    assert again.accounts["ada"].balance == Decimal("-10")
    assert again.accounts["bob"].balance == Decimal("10")
    assert again.accounts["ada"].tags == {"overdrawn"}
    assert type(again) is Bank and type(again.accounts["ada"]) is Account


def test_root_factory_runs_only_when_empty(make_image: Images) -> None:
    """root= is called only for an empty store."""
    calls = []

    def factory() -> Box:
        calls.append(1)
        return Box(content="first")

    make_image(root=factory).close()
    assert make_image(root=factory).root.content == "first"
    assert calls == [1]


def test_default_root_is_a_dict(make_image: Images) -> None:
    """Without root=, the root is a tracked dict."""
    img = make_image()
    assert isinstance(img.root, dict) and type(img.root) is memimg.TrackedDict


def test_bad_root(make_image: Images) -> None:
    """A root that is a value, not an object, is refused."""
    with pytest.raises(TypeError, match="root"):
        make_image(root=lambda: 5)


def test_log_begins_with_the_root_event(make_image: Images) -> None:
    """replay(img.events()) rebuilds the whole graph from nothing."""
    img = make_image(root=Bank)
    first = next(img.events())
    assert first.seq == 1 and first.kind == "root" and first.target == 1
    img.root.accounts["x"] = Account("x")
    assert memimg.replay(img.events()).accounts["x"].owner == "x"


def test_event_records(make_image: Images) -> None:
    """Events expose seq, tx, ts, kind, target and data."""
    img = make_image(root=Box)
    before = dt.datetime.now(dt.UTC)
    with img.transaction():
        img.root.content = 1
        img.root.other = "x"
    events = list(img.events(since=1))
    assert [e.seq for e in events] == [2, 3]
    assert {e.tx for e in events} == {2}
    assert events[0].kind == "obj.set" and events[0].target == 1
    assert events[0].data == ["content", 1] and events[1].data == ["other", "x"]
    assert before - dt.timedelta(seconds=1) <= events[0].ts <= dt.datetime.now(dt.UTC)
    assert events[0].as_dict()["kind"] == "obj.set"
    assert memimg.Event.from_row(events[0].to_row()) == events[0]


def test_snapshot_plus_tail_equals_full_replay(make_image: Images) -> None:
    """Recovery from the newest snapshot and its tail gives the same graph as a full replay."""
    img = make_image(root=Bank)
    for i in range(30):
        img.root.accounts[str(i % 7)] = Account(str(i), balance=Decimal(i))
        if i == 12:
            img.snapshot()
    events = list(img.events())
    full = memimg.serialize(memimg.deserialize(memimg.serialize(memimg.replay(events))))
    img.close()
    reopened = make_image(root=Bank)
    assert memimg.serialize(memimg.deserialize(memimg.serialize(reopened.root))) == full


def test_replay_from_a_serialized_snapshot(make_image: Images) -> None:
    """replay(events, root=serialize(...)) continues from a snapshot."""
    img = make_image(root=Bank)
    img.root.accounts["a"] = Account("a")
    snap = memimg.serialize(img.root)
    seq = img.seq
    img.root.accounts["a"].balance = Decimal(5)
    img.root.accounts["b"] = Account("b")
    again = memimg.replay(img.events(since=seq), root=snap)
    assert again.accounts["a"].balance == 5 and set(again.accounts) == {"a", "b"}


def test_snapshot_every_must_be_positive(make_image: Images) -> None:
    """snapshot_every is a positive int, "auto" or None."""
    with pytest.raises(ValueError, match="snapshot_every"):
        make_image(snapshot_every=0)


def test_no_automatic_snapshot_when_disabled(make_image: Images) -> None:
    """With snapshot_every=None, no snapshot is written however many events accumulate."""
    img = make_image(root=Box, snapshot_every=None)
    img.root.content = []
    for i in range(50):
        img.root.content.append(i)
    assert img.store.snapshots() == []


def test_closed_image(make_image: Images) -> None:
    """After close, reads still work and changes raise ClosedError."""
    img = make_image(root=Box)
    img.root.content = [1]
    lst = img.root.content
    img.close()
    img.close()
    assert lst == [1] and img.closed
    with pytest.raises(memimg.ClosedError, match="closed"):
        lst.append(2)
    with pytest.raises(memimg.ClosedError):
        img.root.other = 1
    with pytest.raises(memimg.ClosedError):
        img.transaction().__enter__()
    with pytest.raises(memimg.ClosedError):
        img.snapshot()
    assert lst == [1]


def test_context_manager_closes(make_image: Images) -> None:
    """An image used as a context manager is closed at the end of the block."""
    with make_image() as img:
        img.root["a"] = 1
    assert img.closed


def test_readonly_follower(make_image: Images) -> None:
    """readonly=True reads the image and refuses every write."""
    with make_image(root=Box) as img:
        img.root.content = [1]
    ro = make_image(readonly=True)
    assert ro.root.content == [1] and ro.readonly
    with pytest.raises(memimg.ReadOnlyError):
        ro.root.content.append(2)
    with pytest.raises(memimg.ReadOnlyError):
        ro.snapshot()
    with pytest.raises(memimg.ReadOnlyError):
        with ro.transaction():
            ro.root.other = 1
    assert ro.root.content == [1]
    with make_image(root=Box) as writer:
        writer.root.content.append(2)
    assert ro.refresh() == 1
    assert ro.root.content == [1, 2]
    ro.close()


def test_readonly_on_an_empty_store(make_image: Images) -> None:
    """Opening an empty log read-only is refused: there is no image to read, and none may be made."""
    make_image.store().close()  # the log exists (for SQLite, the file), but holds nothing
    with pytest.raises(memimg.MemimgError, match="read-only"):
        make_image(readonly=True)


class FailingStore(MemoryStore):
    """A memory store whose appends fail on demand (disk full, I/O error...)."""

    fail = False

    def append(self, rows: Any, expected_head: int) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        super().append(rows, expected_head)


def test_failed_write_leaves_memory_unchanged() -> None:
    """A store write that fails raises and leaves the graph exactly as it was."""
    store = FailingStore()
    img = memimg.open(store, root=Bank)
    img.root.accounts["a"] = Account("a", tags={"t"})
    acct = img.root.accounts["a"]
    before = memimg.serialize(img.root)
    store.fail = True
    new = Account("new", entries=[Entry("e")])
    operations = [
        lambda: setattr(acct, "balance", Decimal(3)),
        lambda: acct.tags.add("u"),
        lambda: acct.entries.append(Entry("x")),
        lambda: img.root.accounts.__setitem__("new", new),
        lambda: img.root.accounts.pop("a"),
        lambda: img.snapshot(),
    ]
    for op in operations:
        with pytest.raises(memimg.MemimgError, match="No space left"):
            op()
    with pytest.raises(memimg.MemimgError, match="No space left"):
        with img.transaction():
            acct.balance = Decimal(9)
            img.root.accounts["new"] = new
    assert memimg.serialize(img.root) == before
    assert new._mi_img is None and type(new.entries) is list
    store.fail = False
    acct.balance = Decimal(1)
    assert memimg.replay(img.events()).accounts["a"].balance == 1


def tamper(path: str, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def build(path: str) -> None:
    with memimg.open(path, root=Bank, snapshot_every=None) as img:
        for i in range(5):
            img.root.accounts[str(i)] = Account(str(i))


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE memimg_events SET payload = replace(payload, 'tests', 'TESTS') WHERE seq = 3",
        "UPDATE memimg_events SET payload = substr(payload, 1, 10) WHERE seq = 3",
        "UPDATE memimg_events SET target = 99 WHERE seq = 3",
        "UPDATE memimg_events SET kind = 'dict.del' WHERE seq = 3",
        "UPDATE memimg_events SET ts = ts + 1 WHERE seq = 3",
    ],
    ids=["edited", "truncated", "retargeted", "rekinded", "retimed"],
)
def test_corrupt_row_is_named(sqlite_path: str, sql: str) -> None:
    """A corrupt, truncated or tampered row makes open raise CorruptLogError naming the seq."""
    build(sqlite_path)
    tamper(sqlite_path, sql)
    with pytest.raises(memimg.CorruptLogError, match="seq 3") as info:
        memimg.open(sqlite_path, root=Bank)
    assert info.value.seq == 3


def test_gap_in_the_log_is_named(sqlite_path: str) -> None:
    """A missing event makes open raise CorruptLogError saying which seq is missing."""
    build(sqlite_path)
    tamper(sqlite_path, "DELETE FROM memimg_events WHERE seq = 4")
    with pytest.raises(memimg.CorruptLogError, match="seq 4 is missing"):
        memimg.open(sqlite_path, root=Bank)


def test_a_row_naming_an_object_that_does_not_exist_is_named_by_seq(make_image: Images) -> None:
    """A row (with a valid checksum) referring to an object the log never made is a CorruptLogError
    naming its seq."""
    with make_image(root=dict) as img:
        img.root["a"] = 1
    seq = append_event(make_image.store(), "dict.set", 1, [["b", ["r", 99]]])
    with pytest.raises(memimg.CorruptLogError) as info:
        make_image(root=dict)
    assert info.value.seq == seq


@pytest.mark.parametrize("target", [-1, -2, 0])
def test_a_row_targeting_an_object_id_below_1_is_named_by_seq(make_image: Images, target: int) -> None:
    """A field set (valid checksum) whose target is 0 or negative is a CorruptLogError naming its seq and
    target: never applied to an object counted from the end of the table."""
    with make_image(root=Box) as img:
        img.root.content = Node(1)
    seq = append_event(make_image.store(), "obj.set", target, [["value", 5]])
    with pytest.raises(memimg.CorruptLogError, match=rf"event seq {seq} .*targets object {target}, .*backup") as info:
        make_image(root=Box)
    assert info.value.seq == seq


@pytest.mark.parametrize("oids", [[-1], [7, -2]], ids=["on-an-object", "on-a-free-place"])
def test_an_event_creating_an_object_under_an_id_below_1_is_named_by_seq(make_image: Images, oids: list[int]) -> None:
    """An event (valid checksum) whose records create an object under a negative id is a CorruptLogError naming
    its seq and that id, whether the id counted from the end would fall on an object (-1: the last one) or on a
    free place (-2: 6, left free by 7); no object is placed there."""
    with make_image(root=Box) as img:
        img.root.content = Node(1)  # objects 1 to 4
    records = [[oid, "list", []] for oid in oids]
    seq = append_event(make_image.store(), "obj.set", 1, [["other", ["r", oids[0]]], records])
    message = rf"event seq {seq} creates an object under id {min(oids)} \(object ids run from 1 up\): .*backup"
    with pytest.raises(memimg.CorruptLogError, match=message) as info:
        make_image(root=Box)
    assert info.value.seq == seq


@pytest.mark.parametrize("ref", [["r", True], ["r", 2, 5], ["r", "2"]], ids=["a bool", "extra items", "text"])
def test_a_malformed_reference_is_named_by_seq(make_image: Images, ref: list[Any]) -> None:
    """A stored reference that is not ``["r", id]`` with an int id (True is no object 1; nothing after the
    id) is a CorruptLogError naming the row's seq, not read as some object."""
    with make_image(root=Box) as img:
        img.root.content = Node(1)
    seq = append_event(make_image.store(), "obj.set", 1, [["other", ref]])
    with pytest.raises(memimg.CorruptLogError, match=rf"event seq {seq} .*names object .*backup") as info:
        make_image(root=Box)
    assert info.value.seq == seq


@pytest.mark.parametrize(
    ("root", "kind", "args"),
    [
        (dict, "dict.set", "bX"),
        (dict, "dict.set", ["b", "X", "junk"]),
        (Box, "obj.set", "contentX"),
        (Box, "obj.set", ["content", "X", "junk"]),
        (Box, "obj.set", "ref"),
        (Box, "obj.update", [["cX"]]),
        (Box, "list.append", 7),
    ],
    ids=[
        "a string as a key and value",
        "a third item",
        "a string as a field and value",
        "a third field item",
        "three letters",
        "a string as a pair",
        "no list of items",
    ],
)
def test_stored_arguments_of_the_wrong_shape_are_named_by_seq(
    make_image: Images, root: type, kind: str, args: Any
) -> None:
    """An event whose stored arguments are not the list its kind declares (a string unpacked as a name and
    a value, items too many) is a CorruptLogError naming its seq, with a valid checksum: never read as
    another change."""
    with make_image(root=root) as img:
        if root is Box:
            img.root.other = []
    target = 2 if kind == "list.append" else 1
    seq = append_event(make_image.store(), kind, target, [args])
    with pytest.raises(memimg.CorruptLogError, match=rf"event seq {seq} .*not a list of .*backup") as info:
        make_image(root=root)
    assert info.value.seq == seq


def test_a_row_of_a_kind_this_memimg_does_not_know_is_refused_naming_it(make_image: Images) -> None:
    """A row of an event kind a newer memimg wrote is refused at open, the error naming its seq and kind."""
    with make_image(root=dict) as img:
        img.root["a"] = 1
    seq = append_event(make_image.store(), "dict.frobnicate", 1, [[]])
    with pytest.raises(memimg.MemimgError, match="upgrade memimg") as info:
        make_image(root=dict)
    assert info.value.seq == seq and info.value.kind == "dict.frobnicate"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["content", ["no-such-tag", 1]], "unknown value tag"),
        (["content", ["r", 99]], "names object 99"),
        (["content"], "cannot be read|does not apply"),
        ([], "cannot be read|does not apply"),
    ],
)
def test_a_field_set_row_that_does_not_decode_is_named_by_seq(make_image: Images, args: Any, message: str) -> None:
    """A field-set row (with a valid checksum) holding an unknown value tag, a reference to no object, or
    too few arguments is a CorruptLogError naming its seq -- also after field sets that replay decoded
    on their own path."""
    with make_image(root=Box) as img:
        img.root.content = 1
        img.root.content = 2
    seq = append_event(make_image.store(), "obj.set", 1, [args])
    with pytest.raises(memimg.CorruptLogError, match=message) as info:
        make_image(root=Box)
    assert info.value.seq == seq and f"seq {seq}" in str(info.value)


def test_corrupt_snapshot_falls_back_to_an_older_one(sqlite_path: str) -> None:
    """A damaged snapshot is skipped with a warning when the log still covers it."""
    with memimg.open(sqlite_path, root=Box, snapshot_every=None) as img:
        img.root.content = 1
        img.snapshot()
        img.root.content = 2
        last = img.snapshot()
        img.root.content = 3
    tamper(sqlite_path, "UPDATE memimg_snapshots SET payload = '{}' WHERE seq = ?", last)
    with pytest.warns(UserWarning, match=f"seq {last}"):
        img = memimg.open(sqlite_path, root=Box)
    assert img.root.content == 3
    img.close()


def test_corrupt_snapshot_without_events_behind_it(sqlite_path: str) -> None:
    """A damaged snapshot whose events were compacted away cannot be skipped: open raises CorruptLogError."""
    with memimg.open(sqlite_path, root=Box, snapshot_every=None) as img:
        img.root.content = 1
        last = img.snapshot()
        img.store.delete_events_before(last)
    tamper(sqlite_path, "UPDATE memimg_snapshots SET checksum = checksum + 1")
    with pytest.warns(UserWarning):
        with pytest.raises(memimg.CorruptLogError, match="missing"):
            memimg.open(sqlite_path, root=Box)


def test_unknown_type_names_the_stored_type(sqlite_path: str) -> None:
    """A log naming a class nobody defines raises UnknownTypeError naming it."""
    script = textwrap.dedent(
        f"""
        import memimg, attrs
        @memimg.persistent(name="gone.Coupon")
        class Coupon:
            code: str = "X"
        with memimg.open({sqlite_path!r}) as img:
            img.root["c"] = Coupon()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    with pytest.raises(memimg.UnknownTypeError, match="gone.Coupon") as info:
        memimg.open(sqlite_path)
    assert info.value.type_name == "gone.Coupon"


def test_types_are_found_by_importing_their_module(make_image: Images) -> None:
    """A default-named class is found by importing its module when first needed."""
    with make_image() as img:
        img.root["x"] = Box(content=1)
    from memimg.core import _types

    info = _types.resolve("tests.models.Box")
    assert info.cls is Box


def test_two_images_agree_on_one_root(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two images opening an empty shared store at once agree on one root."""
    store_class = type(make_image.store())
    original = store_class.append
    racer: list[Any] = []

    def append_late(store: Any, rows: Any, expected: int) -> None:
        if not racer:  # the other process gets there between our encode and our append
            racer.append(None)
            racer[0] = make_image(root=lambda: Box(content="other"))
        original(store, rows, expected)

    monkeypatch.setattr(store_class, "append", append_late)
    img = make_image(root=lambda: Box(content="mine"))
    assert img.root.content == "other"
    assert racer[0].root.content == "other"
    assert [e.kind for e in img.events()] == ["root"]


def test_appends_are_checked_against_the_head(make_image: Images) -> None:
    """Another writer's commit is caught up before ours lands."""
    a = make_image(root=Box)
    b = make_image(root=Box)
    a.root.content = [1]
    b.root.other = "b"  # b is behind: it catches up, then appends
    assert b.root.content == [1] and b.seq == a.seq + 1
    a.root.content.append(2)
    assert a.root.other == "b"
    b.refresh()
    assert b.root.content == [1, 2]
    with pytest.raises(SeqTaken):  # the store refuses an append after a head that moved
        a.store.append([row(1)], 0)


def test_progress_callback(sqlite_path: str) -> None:
    """Recovering a long log reports its progress through the callback, ending at the last event.

    On SQLite only: the callback is the image's, and 25,000 single commits are slow on a server.
    """
    with memimg.open(sqlite_path, root=Box, snapshot_every=None) as img:
        img.root.content = []
        for i in range(25_000):
            img.root.content.append(i)
    seen: list[tuple[str, int, int]] = []
    with memimg.open(sqlite_path, root=Box, progress=lambda *a: seen.append(a)) as img:
        assert len(img.root.content) == 25_000
    assert seen[0][0] == "replay" and seen[-1] == ("replay", 25_002, 25_002)


def test_snapshot_payload_is_readable_json(sqlite_path: str) -> None:
    """Snapshots are JSON lines anyone can read with sqlite3: a header, then a directory and a states line per chunk."""
    with memimg.open(sqlite_path, root=Bank) as img:
        img.root.accounts["a"] = Account("a")
        img.snapshot()
    conn = sqlite3.connect(sqlite_path)
    payload = conn.execute("SELECT payload FROM memimg_snapshots").fetchone()[0]
    conn.close()
    header, directory, states = (orjson.loads(line) for line in payload.split(b"\n"))
    assert header["format"] == 2 and header["types"]["tests.Bank"] == [
        1,
        ["accounts", "name"],
        "entity",
        ["dict[str, tests.models.Account]", "str"],
    ]
    assert header["count"] == 5  # the bank, its dict, the account, its set and list
    oids, kinds = directory
    assert len(oids) == len(kinds) == len(states) == 5
    assert (oids[0], header["names"][kinds[0]], states[0]) == (1, "tests.Bank", [["r", 2], "bank"])
    assert header["names"][kinds[1]] == "dict" and states[1] == {"a": ["r", oids[2]]}


def test_snapshot_reports_progress(make_image: Images) -> None:
    """Snapshots of large images report progress through the same callback as recovery."""
    seen: list[tuple[str, int, int]] = []
    with make_image(root=Box, snapshot_every=None, progress=lambda *a: seen.append(a)) as img:
        img.root.content = [Entry(str(i)) for i in range(45_000)]
        img.snapshot()
    snaps = [s for s in seen if s[0] == "snapshot"]
    assert len(snaps) >= 3 and snaps[-1][1] == snaps[-1][2] >= 45_000


def test_locked_database_leaves_memory_unchanged(sqlite_path: str) -> None:
    """A commit blocked by another process's lock raises LockedError and changes nothing."""
    img = memimg.open(sqlite_path, root=Bank, busy_timeout=0.05)
    img.root.accounts["a"] = Account("a")
    before = memimg.serialize(img.root)
    blocker = sqlite3.connect(sqlite_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(memimg.LockedError):
            img.root.accounts["a"].balance = Decimal(1)
        with pytest.raises(memimg.LockedError):
            with img.transaction():
                img.root.accounts["b"] = Account("b")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert memimg.serialize(img.root) == before
    img.root.accounts["a"].balance = Decimal(2)
    img.close()
    with memimg.open(sqlite_path, root=Bank) as again:
        assert again.root.accounts["a"].balance == 2 and "b" not in again.root.accounts
