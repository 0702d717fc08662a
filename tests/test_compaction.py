"""Compaction strands nobody.

An image behind a compaction -- the events right after its seq dropped from
the log -- reloads from the newest snapshot in place, by object id: the
objects the application holds stay valid and show the current state, new
objects appear, objects gone from the log leave the image, and its open
transactions fail with ConflictError. Then it follows the log and writes as
before. ``memimg compact`` keeps the events live processes still need (their
positions, kept in the store while they run) and the history asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner

import memimg
from memimg.cli import cli
from memimg.image import _position
from memimg.stores._protocol import live_positions, position_entry
from tests.conftest import Images
from tests.test_snapshot_format import Holder, Node, _content


def _compact(img: memimg.MemoryImage) -> int:
    """Snapshot *img* and drop every event the snapshot covers (what compaction does past the positions)."""
    seq = img.snapshot()
    img.store.delete_events_before(seq)
    img.store.delete_snapshots_before(seq)
    return seq


def test_an_image_behind_a_compaction_reloads_in_place_and_writes_again(
    make_image: Images, caplog: pytest.LogCaptureFixture
) -> None:
    """The lagging image refreshes: the root, the objects still in the log and their collections are the
    same Python objects with the new state; new objects appear; a removed object leaves the image (it is
    attached anew if assigned again); then it writes, and every image agrees."""
    ahead = make_image(root=Holder, snapshot_every=None)
    ahead.root.nodes.extend([Node("n0", 0, tags=["a"]), Node("n1", 1), Node("n2", 2)])
    ahead.root.keyed["k"] = ahead.root.nodes[1]
    behind = make_image(root=Holder, snapshot_every=None)
    root, nodes, n0, n2 = behind.root, behind.root.nodes, behind.root.nodes[0], behind.root.nodes[2]
    tags, keyed = n0.tags, behind.root.keyed

    ahead.root.nodes[0].label = "changed"
    ahead.root.nodes[0].tags.append("b")
    del ahead.root.nodes[2]
    ahead.root.nodes.append(Node("n3", 3, next=ahead.root.nodes[1]))
    ahead.root.misc = {"new": [1, 2]}
    _compact(ahead)
    ahead.root.misc["after"] = True  # an event after the snapshot, applied after the reload

    with caplog.at_level(logging.WARNING, logger="memimg"):
        assert behind.refresh() > 0
    assert "was compacted past seq" in caplog.text
    assert behind.root is root and behind.root.nodes is nodes and behind.root.keyed is keyed
    assert nodes[0] is n0 and n0.label == "changed" and n0.tags is tags and tags == ["a", "b"]
    assert [n.label for n in nodes] == ["changed", "n1", "n3"] and nodes[2].next is nodes[1]
    assert keyed["k"] is nodes[1]
    assert behind.root.misc == {"new": [1, 2], "after": True}
    assert _content(behind.root) == _content(ahead.root)

    n2.label = "not logged: n2 left the image"  # a plain attribute write on a detached object
    behind.root.nodes.append(n2)  # assigned again: attached anew, with its full state
    behind.root.nodes[0].n = 10
    ahead.refresh()
    assert [n.label for n in ahead.root.nodes] == ["changed", "n1", "n3", "not logged: n2 left the image"]
    assert ahead.root.nodes[0].n == 10
    behind.close()
    ahead.close()
    with make_image(root=Holder) as again:
        assert _content(again.root) == _content(root)


def test_a_transaction_open_across_a_reload_conflicts(make_image: Images) -> None:
    """A transaction begun before the image reloaded after a compaction fails with ConflictError naming the
    reload, and changes nothing; a transaction begun after it commits."""
    ahead = make_image(root=Holder, snapshot_every=None)
    ahead.root.nodes.append(Node("n0", 0))
    behind = make_image(root=Holder, snapshot_every=None)
    tx = behind.begin()
    behind.root.nodes[0].n = 5
    ahead.root.misc = "ahead"
    seq = _compact(ahead)
    behind.refresh()
    with pytest.raises(memimg.ConflictError, match=f"conflicts with the reload of the image at seq {seq}"):
        tx.save()
    assert behind.root.nodes[0].n == 0
    with behind.transaction():
        behind.root.nodes[0].n = 6
    ahead.refresh()
    assert ahead.root.nodes[0].n == 6 and ahead.root.misc == "ahead"


def test_a_commit_behind_a_compaction_reloads_then_commits(make_image: Images) -> None:
    """A mutation made by an image behind a compaction (no refresh first) reloads it and is then committed
    on the current state."""
    ahead = make_image(root=Holder, snapshot_every=None)
    ahead.root.nodes.append(Node("n0", 0))
    behind = make_image(root=Holder, snapshot_every=None)
    node = behind.root.nodes[0]
    ahead.root.nodes[0].label = "from ahead"
    _compact(ahead)
    node.n = 7  # this commit finds the log moved on, and its next events gone
    assert node is behind.root.nodes[0] and node.label == "from ahead" and node.n == 7
    ahead.refresh()
    assert ahead.root.nodes[0].n == 7


def test_every_event_compacted_away_reloads_too(make_image: Images) -> None:
    """When compaction dropped every event (the head is the snapshot's seq), an image behind reloads."""
    ahead = make_image(root=Holder, snapshot_every=None)
    behind = make_image(root=Holder, snapshot_every=None)
    root = behind.root
    ahead.root.misc = "latest"
    ahead.root.nodes.extend([Node("x", 1)])  # nothing unreachable: no event after the snapshot
    seq = _compact(ahead)
    ahead.store.delete_events_before(seq + 1)  # the snapshot's own event too
    assert ahead.store.first_seq() > ahead.store.head() == seq
    behind.refresh()
    assert behind.root is root and root.misc == "latest" and [n.label for n in root.nodes] == ["x"]


def test_a_gap_that_no_snapshot_covers_is_corrupt_and_changes_nothing(make_image: Images) -> None:
    """Events missing after an image's seq with no snapshot past it: CorruptLogError naming the first
    missing seq; the image keeps its state."""
    ahead = make_image(root=Holder, snapshot_every=None)
    behind = make_image(root=Holder, snapshot_every=None)
    ahead.root.misc = 1
    ahead.root.misc = 2
    head = behind.seq
    ahead.store.delete_events_before(ahead.seq)
    with pytest.raises(memimg.CorruptLogError, match=f"events {head + 1}..") as info:
        behind.refresh()
    assert info.value.seq == head + 1 and behind.root.misc is None and not behind.closed


# -- positions ---------------------------------------------------------------------------------------------


def test_an_open_image_keeps_its_position_in_the_store(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writable image records the seq it reached when it first moves (a commit, a transaction begun, or
    catching up on another process's), again as it goes (at most once a beat), and removes it when it closes;
    an image that has not moved, or is read-only, records none."""
    monkeypatch.setattr(_position, "BEAT", 0.0)
    make_image(root=Holder).close()  # created (its root committed)
    img = make_image(root=Holder)
    store = make_image.store()
    assert live_positions(store.meta()) == {}
    img.root.misc = 1
    assert list(live_positions(store.meta()).values()) == [img.seq]
    img.root.misc = 2
    assert list(live_positions(store.meta()).values()) == [img.seq]
    follower = make_image(root=Holder, readonly=True)
    other = make_image(root=Holder)
    img.root.misc = 3
    other.refresh()
    assert sorted(live_positions(store.meta()).values()) == [img.seq, img.seq]
    follower.refresh()
    assert len(live_positions(store.meta())) == 2
    third = make_image(root=Holder)
    with third.transaction():
        assert len(live_positions(store.meta())) == 3
    follower.close()
    other.close()
    third.close()
    img.close()
    assert live_positions(store.meta()) == {}


def _files(where: Any) -> dict[str, tuple[int, int]]:
    return {
        str(f.relative_to(where)): (f.stat().st_size, f.stat().st_mtime_ns) for f in where.rglob("*") if f.is_file()
    }


@pytest.mark.parametrize("name", ["img.db", "img.ndjson"])
def test_opening_and_closing_an_image_writes_nothing(tmp_path: Any, name: str) -> None:
    """Opening an existing image and closing it without a commit leaves every file of its store as it was,
    size and modification time: no position, no schema, no WAL to checkpoint, no metadata rewritten."""
    path = str(tmp_path / name)
    with memimg.open(path, root=Holder, snapshot_every=None) as img:
        img.root.misc = 1
        img.snapshot()
    before = _files(tmp_path)
    time.sleep(0.01)
    with memimg.open(path, root=Holder, snapshot_every=None) as img:
        assert img.root.misc == 1
    assert _files(tmp_path) == before


def test_an_expired_position_is_not_live() -> None:
    """A position past its expiry (its process died) is not counted."""
    key, value = position_entry("dead", 5, -1)
    live_key, live_value = position_entry("alive", 7, 60)
    assert live_positions({key: value, live_key: live_value, "other": "x"}) == {"alive": 7}


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_compact_keeps_the_events_a_live_process_needs(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """memimg compact keeps the events after a live image's position and says so; that image then
    catches up by its events (no reload). With --ignore-positions they are dropped and it reloads."""
    path = str(tmp_path / "img.db")
    memimg.open(path, root=Holder).close()
    ahead = memimg.open(path, root=Holder, snapshot_every=None)
    behind = memimg.open(path, root=Holder, snapshot_every=None)
    behind.root.misc = -1  # its first move records its position
    at = behind.seq
    for i in range(5):
        ahead.root.misc = i
    r = _run("compact", path)
    assert r.exit_code == 0 and f"kept the events from seq {at + 1} on" in r.output, r.output
    with caplog.at_level(logging.WARNING, logger="memimg"):
        assert behind.refresh() > 0
    assert "compacted" not in caplog.text and behind.root.misc == 4

    for i in range(5):
        ahead.root.misc = 10 + i
    r = _run("compact", path, "--ignore-positions")
    assert r.exit_code == 0 and "reload from the snapshot" in r.output, r.output
    with caplog.at_level(logging.WARNING, logger="memimg"):
        behind.refresh()
    assert "compacted past" in caplog.text and behind.root.misc == 14
    ahead.close()
    behind.close()


def test_compact_keeps_the_events_an_open_transaction_may_read(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An image whose first transaction has begun (it has neither committed nor caught up since it opened) has
    its position recorded: memimg compact, run while another process commits, keeps the events after it, and
    the transaction commits over them (no reload, no conflict)."""
    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Holder) as img:
        img.root.misc = 0
    img = memimg.open(path, root=Holder, snapshot_every=None)
    with caplog.at_level(logging.WARNING, logger="memimg"), img.transaction():
        start, value = img.seq, img.root.misc
        with memimg.open(path, root=Holder, snapshot_every=None) as other:
            for k in range(5):
                other.root.index[k] = k
        r = _run("compact", path)
        assert r.exit_code == 0 and f"kept the events from seq {start + 1} on" in r.output, r.output
        img.root.misc = value + 1
    assert "compacted" not in caplog.text and img.root.misc == 1 and img.root.index == {k: k for k in range(5)}
    img.close()
    with memimg.open(path, root=Holder) as img:
        assert img.root.misc == 1 and len(img.root.index) == 5


def test_an_idle_image_compacted_past_reloads_and_writes(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An image that has only opened (no commit, no catch-up, no transaction) has no position: memimg compact
    drops the events after its seq; its next change reloads it from the snapshot in place, with a warning, and
    then lands."""
    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Holder) as img:
        img.root.misc = 0
    idle = memimg.open(path, root=Holder, snapshot_every=None)
    root = idle.root
    with memimg.open(path, root=Holder, snapshot_every=None) as other:
        for k in range(5):
            other.root.index[k] = k
    r = _run("compact", path)
    assert r.exit_code == 0 and "kept the events" not in r.output, r.output
    with caplog.at_level(logging.WARNING, logger="memimg"):
        root.misc = "later"  # an automatic commit: it finds the log compacted past its seq
    assert "compacted past" in caplog.text
    assert idle.root is root and root.misc == "later" and root.index == {k: k for k in range(5)}
    idle.close()
    with memimg.open(path, root=Holder) as img:
        assert img.root.misc == "later" and len(img.root.index) == 5


def test_compact_keeps_the_history_asked_for(tmp_path: Any) -> None:
    """--keep-events N keeps the N newest events the snapshot covers; --keep-days keeps the events of the
    last days; either way the image reopens the same."""
    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Holder, snapshot_every=None) as img:
        for i in range(20):
            img.root.misc = i
    store = memimg.SQLiteStore(path)
    head = store.head()
    r = _run("compact", path, "--keep-events", "5")
    assert r.exit_code == 0, r.output
    snap = max(s.seq for s in store.snapshots())
    assert store.first_seq() == snap - 4 and snap > head
    with memimg.open(path, root=Holder, snapshot_every=None) as img:
        img.root.misc = "later"
    r = _run("compact", path, "--keep-days", "1")
    assert r.exit_code == 0 and "the history asked for" in r.output, r.output
    assert store.first_seq() == snap - 4  # every event is from today
    time.sleep(0.01)
    r = _run("compact", path, "--keep-days", "0")
    assert store.first_seq() == max(s.seq for s in store.snapshots())
    store.close()
    with memimg.open(path, root=Holder) as img:
        assert img.root.misc == "later"


def test_compactions_base_snapshot_is_written_under_the_snapshot_lease(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot compaction writes for kept history to start from is written holding the store's snapshot
    lease, as every snapshot writer does: an erase run by another image while compaction reads that state waits
    for it, then erases the past value from it too (without the lease, the snapshot stored the value after the
    erase had run)."""
    from memimg.cli import _ops
    from tests.test_erase import Person, stored_bytes

    path = str(tmp_path / "img.db")
    with memimg.open(path, root=dict, snapshot_every=None) as img:
        img.root["ada"] = Person(ssn="OLD-SSN")
        for i in range(20):
            img.root["n"] = i
        img.root["ada"].ssn = "NEW-SSN"
        img.root["n"] = "last"
        oid = img.root["ada"]._mi_oid
    other = memimg.open(path, root=dict, snapshot_every=None)
    erased: list[Any] = []
    waited: list[bool] = []

    class Hooked(_ops.SnapshotWriter):  # finish() also starts an erase in another image
        def finish(self) -> Any:
            done = super().finish()
            t = threading.Thread(target=lambda: erased.append(other.erase(oid, "ssn", reason="r")))
            t.start()
            t.join(1.0)  # long enough for an erase that need not wait
            waited.append(t.is_alive())
            erased.append(t)
            return done

    monkeypatch.setattr(_ops, "SnapshotWriter", Hooked)
    try:
        r = _run("compact", path, "--keep-events", "5")
        assert r.exit_code == 0 and "a snapshot written at seq" in r.output, r.output
        thread = next(x for x in erased if isinstance(x, threading.Thread))
        thread.join(30)
        assert not thread.is_alive() and any(isinstance(x, memimg.Erasure) for x in erased)
        store = memimg.SQLiteStore(path)
        data = stored_bytes(store)
        store.close()
        assert b"OLD-SSN" not in data and b"NEW-SSN" in data
        assert waited == [True]
    finally:
        other.close()


def test_a_reader_in_another_thread_waits_for_a_reload_to_finish(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an image reloads after a compaction, a thread reading outside any transaction never sees an
    object emptied and not yet filled: its read waits for the reload, then shows the reloaded state."""
    from memimg.core._reader import Reader

    ahead = make_image(root=Holder, snapshot_every=None)
    ahead.root.nodes.extend([Node("n0", 0, tags=["a"])])
    behind = make_image(root=Holder, snapshot_every=None)
    node, nodes = behind.root.nodes[0], behind.root.nodes
    ahead.root.nodes[0].label = "reloaded"
    _compact(ahead)
    seen: list[Any] = []
    fill = Reader.fill_states

    def filling_while_another_thread_reads(self: Reader, made: Any, states: Any) -> None:
        if not seen:
            reader = threading.Thread(target=lambda: seen.append((node.label, len(nodes), list(node.tags))))
            reader.start()
            reader.join(0.2)
            seen.append(reader.is_alive())  # it waits for the lock
            seen.append(reader)
        fill(self, made, states)

    monkeypatch.setattr(Reader, "fill_states", filling_while_another_thread_reads)
    behind.refresh()
    monkeypatch.undo()
    waited, reader = seen[0], seen[1]
    reader.join(5)
    assert waited is True and seen[2] == ("reloaded", 1, ["a"])


def test_an_image_opened_while_compaction_runs_reads_the_log_again(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that listed the snapshots just before a compaction wrote a new one and dropped the events
    and the older snapshot reads the log again, and opens at the current state."""
    img = make_image(root=Holder, snapshot_every=None)
    img.root.nodes.extend([Node(f"n{i}", i) for i in range(10)])
    img.snapshot()
    for i in range(5):
        img.root.misc = i
    store = make_image.store()
    read = type(store).read_snapshot
    compacted: list[int] = []

    def compaction_then_reading(self: Any, seq: int) -> Any:
        if not compacted:
            compacted.append(_compact(img))  # between the listing of the snapshots and this read
        return read(self, seq)

    monkeypatch.setattr(type(store), "read_snapshot", compaction_then_reading)
    with make_image(root=Holder, snapshot_every=None) as late:
        assert late.root.misc == 4 and late.seq == img.seq and len(late.root.nodes) == 10
    assert compacted


def test_compact_removes_expired_positions(tmp_path: Any) -> None:
    """Positions left by processes that ended without closing their image are removed by memimg compact."""
    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Holder) as img:
        img.root.misc = 1
    store = memimg.SQLiteStore(path)
    key, value = position_entry("gone:1:x", 1, -1)
    store.set_meta(key, value)
    assert _run("compact", path).exit_code == 0
    assert not [k for k in store.meta() if k.startswith("position.")]
    store.close()
