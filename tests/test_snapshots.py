"""Snapshots are written without stalling commits.

A snapshot is the state after its ``snapshot`` event; it is written a slice
at a time with the image's lock held for each slice only, so commits from
other threads go on in between, and what they change keeps its state at
the snapshot's seq (copy-on-update). Objects unreachable then are forgotten
by a ``gc.drop`` event, except those the events since name. Automatic
snapshots run in a background thread, never in the committing call; the
processes sharing a log take turns through the store's ``snapshot`` lease.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
import weakref
from typing import Any

import pytest

import memimg
from memimg import persistent
from memimg.core import _gc, _snapshotter
from memimg.core._codec import Codec
from memimg.core._reader import Reader
from memimg.core._snapshot import load_snapshot
from memimg.core._table import ObjectTable
from memimg.image import _snapshots
from memimg.model import SHELL
from tests.conftest import Images
from tests.tampering import append_event
from tests.test_snapshot_format import Holder, Node, _content


def _snapshot_alone(store: memimg.Store, seq: int) -> Any:
    """The root of the snapshot at *seq*, read by itself."""
    row = next(s for s in store.snapshots() if s.seq == seq)
    reader = Reader(ObjectTable(SHELL, Codec(memimg.converter, SHELL)))
    load_snapshot(reader, store.read_snapshot(row.seq).payload)
    return reader.table.root


def _state_at(img: memimg.MemoryImage, seq: int) -> Any:
    """The root after event *seq*, by replaying the log up to it."""
    return memimg.replay([e for e in img.events() if e.seq <= seq])


def _between_slices(steps: list[Any]) -> Any:
    """A progress callback running the next of *steps* after each slice of a snapshot (the lock not held)."""
    return lambda phase, done, total: phase == "snapshot" and steps and steps.pop(0)()


def _small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of one batch of 64 objects (and chunks of 64): many slices, with commits in between, in a small graph."""
    monkeypatch.setattr(_snapshots, "SLICE_SECONDS", 0.0)
    monkeypatch.setattr(_snapshotter, "BATCH", 64)
    monkeypatch.setattr(_snapshotter, "CHUNK", 64)


def _chain(n: int) -> list[Node]:
    nodes = [Node(f"n{i}", i) for i in range(n)]
    for a, b in itertools.pairwise(nodes):
        a.next = b
    return nodes


def test_a_snapshot_is_the_state_at_its_seq_while_commits_change_the_graph(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits between the slices change objects not written yet, unlink some, and link again (and unlink
    again) an object unreachable at the snapshot's seq: the snapshot holds the state at its seq, and the
    image reopened from the snapshot and the events after it is the image as it is now."""
    _small_slices(monkeypatch)
    changes: list[Any] = []
    img = make_image(root=Holder, snapshot_every=None, progress=_between_slices(changes))
    img.root.nodes.extend(_chain(3_000))
    detached = Node("detached", -1, tags=[Node("inside", -2)])
    img.root.misc = detached
    img.root.misc = None  # unreachable from here on
    nodes = img.root.nodes

    def relink_and_unlink() -> None:
        img.root.keyed["x"] = detached  # named by an event after the seq: kept
        del img.root.keyed["x"]

    changes.extend(
        [
            lambda: setattr(nodes[2_900], "label", "changed late"),
            lambda: nodes[2_950].tags.append("tag"),
            relink_and_unlink,
            lambda: nodes.append(Node("new", 1, tags=[detached.tags[0]])),  # a new object naming an old one
            lambda: setattr(nodes[2_998], "next", None),  # the last node unlinked
            lambda: nodes.__delitem__(10),
        ]
    )
    seq = img.snapshot()
    assert not changes  # every change ran between two slices
    assert _content(_snapshot_alone(img.store, seq)) == _content(_state_at(img, seq))
    now = _content(img.root)
    img.close()
    from tests.test_snapshot_format import _only_the_snapshot

    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder, snapshot_every=None) as again:
        assert _content(again.root) == now


def test_another_threads_commit_goes_on_while_a_snapshot_is_written(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit from another thread completes between two slices of a snapshot, not after it."""
    _small_slices(monkeypatch)
    committed = threading.Event()
    seen: list[bool] = []

    def between_slices(phase: str, done: int, total: int) -> None:
        if phase == "snapshot" and not seen:
            seen.append(committed.wait(timeout=10))

    img = make_image(root=Holder, snapshot_every=None, progress=between_slices)
    img.root.nodes.extend(_chain(1_000))

    def commit() -> None:
        while img._engine.snapshot_writer is None:
            threading.Event().wait(0.001)
        img.root.misc = "from another thread"
        committed.set()

    other = threading.Thread(target=commit)
    other.start()
    seq = img.snapshot()
    other.join(timeout=10)
    assert seen == [True]
    assert img.root.misc == "from another thread" and img.seq > seq


@pytest.mark.parametrize("other_thread", [False, True])
def test_a_snapshot_hands_the_interpreter_over_between_slices_only_to_a_thread_that_may_commit(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, other_thread: bool
) -> None:
    """Between two slices a snapshot lets another thread in (``sleep(0)``, a wait of the timer slack) when one
    that may commit exists, and not when the only other thread is memimg's checkpoint thread."""
    _small_slices(monkeypatch)
    img = memimg.open(str(tmp_path / "s.db"), root=Holder, snapshot_every=None)
    img.root.nodes.extend(_chain(1_000))
    checkpointer = img.store._checkpointer
    checkpointer.kick()
    assert checkpointer._thread is not None and checkpointer._thread.is_alive()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    if other_thread:
        other.start()
    me = threading.current_thread()
    # the threads of this test only (another test's leftover thread would be one that may commit)
    ours = {me, checkpointer._thread, other}
    every_thread = threading.enumerate
    monkeypatch.setattr(_snapshots.threading, "enumerate", lambda: [t for t in every_thread() if t in ours])
    handed_over: list[float] = []
    monkeypatch.setattr(_snapshots, "_sleep", lambda s: handed_over.append(s) or time.sleep(s))
    try:
        img.snapshot()
    finally:
        monkeypatch.undo()
        stop.set()
        img.close()
    assert bool(handed_over) is other_thread
    assert set(handed_over) <= {0}


def test_another_threads_commit_goes_on_while_a_snapshot_retries_its_last_commit(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process's commits keep coming before the snapshot's closing ``gc.drop``, the image's lock
    is let go between its attempts: a commit from another thread goes on in between, not after the snapshot."""
    img = make_image(root=Holder, snapshot_every=None)
    img.root.nodes.extend(_chain(200))
    img.root.misc = Node("detached", -1)
    img.root.misc = None  # unreachable: the snapshot ends with a gc.drop
    store, root_oid = img.store, img.root._mi_oid
    append = store.append
    committed = threading.Event()
    attempts: list[bool] = []  # per attempt at the gc.drop: whether the other thread's commit had landed
    cap = 500  # attempts lost to the other process at most (the lock is not fair: a few may pass it by)

    def commit() -> None:
        img.root.keyed["t"] = "from another thread"
        committed.set()

    def racing(rows: Any, expected_head: int) -> None:
        if rows[0][3] == "gc.drop" and not (attempts and attempts[-1]) and len(attempts) < cap:
            if not attempts:
                threading.Thread(target=commit, daemon=True).start()
                time.sleep(0.2)  # it waits for the image's lock, held here
            attempts.append(committed.is_set())
            if not attempts[-1]:  # the other process comes first, until the other thread's commit has landed
                append_event(store, "obj.set", root_oid, [["misc", f"elsewhere {len(attempts)}"]])
        append(rows, expected_head)

    monkeypatch.setattr(store, "append", racing)
    seq = img.snapshot()
    # the other thread committed between two attempts (the image's lock held by none), not after the snapshot
    assert not attempts[0] and attempts[-1] and len(attempts) < cap
    assert img.root.keyed["t"] == "from another thread" and img.root.misc == f"elsewhere {len(attempts) - 1}"
    assert _content(_snapshot_alone(make_image.store(), seq)) == _content(_state_at(img, seq))


def test_automatic_snapshots_are_written_in_the_background(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot_every has snapshots written as events accumulate, by another thread than the committing
    one, each at a ``snapshot`` event and at least snapshot_every events after the one before."""
    img = make_image(root=Holder, snapshot_every=10)
    writers: list[int] = []
    write = img.store.write_snapshot

    def recording(row: Any, holder: str | None = None) -> bool:
        writers.append(threading.get_ident())
        return write(row, holder)

    monkeypatch.setattr(img.store, "write_snapshot", recording)
    for i in range(60):
        img.root.nodes.append(i)
        img._engine.snapshots.join()  # each due snapshot is written before the next commit
    img.close()
    snaps = sorted(s.seq for s in make_image.store().snapshots())
    assert len(snaps) >= 3 and threading.get_ident() not in writers
    kinds = {e.seq: e.kind for e in memimg.open(make_image.store(), readonly=True).events()}
    assert all(kinds[seq] == "snapshot" for seq in snaps)
    assert all(b - a >= 10 for a, b in itertools.pairwise(snaps))
    with make_image(root=Holder, snapshot_every=None) as again:
        assert list(again.root.nodes) == list(range(60))


@pytest.mark.parametrize("kind", ["gc", "snapshot"])
def test_a_snapshot_gives_way_to_another_processs_snapshot_or_collection(
    make_image: Images, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A ``snapshot`` event of another process (this one lost its lease) or a ``gc`` event (memimg before
    0.3) arriving while a snapshot is written abandons the snapshot with an error saying so; the commit
    that brought it stands, nothing is stored, and the next snapshot is not put off."""
    _small_slices(monkeypatch)
    steps: list[Any] = []
    img = make_image(root=Holder, snapshot_every=None, progress=_between_slices(steps))
    img.root.nodes.extend(_chain(1_000))
    store = make_image.store()

    def old_process_collects() -> None:
        append_event(store, kind, 0, [[]])
        img.root.misc = "after the gc"  # catches up with it first

    steps.append(old_process_collects)
    abandoned = rf"snapshot at seq \d+ .* was abandoned: another process wrote a '{kind}' event"
    with pytest.raises(memimg.MemimgError, match=abandoned):
        img.snapshot()
    assert img.root.misc == "after the gc" and img.store.snapshots() == []
    img.root.misc = "still writable"
    seq = img.snapshot()
    img.close()
    with make_image(root=Holder) as again:
        assert again.root.misc == "still writable" and again.store.snapshots()[-1].seq == seq


def test_a_snapshot_waits_for_another_processs_lease(make_image: Images) -> None:
    """While another holder has the snapshot lease, snapshot() waits for it, and fails naming the lease
    if it is held past the wait; an automatic one is skipped."""
    img = make_image(root=Holder, snapshot_every=None)
    store = make_image.store()
    assert store.lease(_snapshots.LEASE, "elsewhere", 30)
    with pytest.raises(memimg.LockedError, match="holds the snapshot lease"):
        img._engine.snapshots.take(wait=0.2)
    assert img._engine.snapshots.take(wait=0, automatic=True) is None
    store.release(_snapshots.LEASE, "elsewhere")
    assert img.snapshot() == img.store.snapshots()[-1].seq


def test_the_lease_is_kept_however_long_a_leased_block_runs(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an image holds the snapshot lease for a long piece of work (an erase's rewrite, compaction's
    base snapshot), it renews the lease: another holder cannot take it, even well past the lease's time;
    after the block, it can."""
    monkeypatch.setattr(_snapshots, "LEASE_SECONDS", 0.3)
    img = make_image(root=Holder, snapshot_every=None)
    store = make_image.store()
    with img._engine.snapshots.held("a test"):
        for _ in range(6):  # 1.2 s: four times the lease
            time.sleep(0.2)
            assert not store.lease(_snapshots.LEASE, "another process", 30)
    assert store.lease(_snapshots.LEASE, "another process", 30)


def test_a_copy_kept_for_a_snapshot_is_the_committed_state_not_a_transactions(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that catches up with another image's change to an object it wrote, while a snapshot
    is written: the state kept for the snapshot is the committed one, never the transaction's own write."""
    _small_slices(monkeypatch)
    steps: list[Any] = []
    img = make_image(root=Holder, snapshot_every=None, progress=_between_slices(steps))
    img.root.nodes.extend([Node(f"n{i}", i) for i in range(1_000)])
    other = make_image(root=Holder, snapshot_every=None)
    target = img.root.nodes[999]

    class Rollback(Exception):
        pass

    def write_catch_up_and_roll_back() -> None:
        img.root.nodes[998].n = -1  # a commit outside any transaction first
        with contextlib.suppress(Rollback), img.transaction():
            target.label = "never committed"
            other.refresh()
            other.root.nodes[999].n = 12_345
            img.refresh()  # applies the other image's change while this thread's transaction is open
            raise Rollback

    steps.append(write_catch_up_and_roll_back)
    seq = img.snapshot()
    assert not steps and target.label == "n999" and target.n == 12_345
    assert _snapshot_alone(img.store, seq).nodes[999].label == "n999"
    assert _content(_snapshot_alone(img.store, seq)) == _content(_state_at(img, seq))


@persistent(name="tests.snapshots.Trimmed", removed=("old",))
class Trimmed:
    label: str = ""


def test_a_row_this_code_skips_still_keeps_what_it_names_in_the_snapshot(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (older code, say) writes a field this code removed, naming an object unreachable at
    the snapshot's seq: this code skips the event, but the snapshot keeps the object, so a reader starting
    from the snapshot decodes the event."""
    _small_slices(monkeypatch)
    steps: list[Any] = []
    img = make_image(root=Holder, snapshot_every=None, progress=_between_slices(steps))
    img.root.nodes.extend([Trimmed(f"t{i}") for i in range(300)])
    loose = Trimmed("unreachable at the snapshot's seq")
    img.root.misc = loose
    img.root.misc = None
    store = make_image.store()

    def old_code_writes_the_removed_field() -> None:
        declared = {"tests.snapshots.Trimmed": [1, ["label", "old"]]}  # as the older code declares it
        append_event(store, "obj.set", img.root.nodes[0]._mi_oid, [["old", ["r", loose._mi_oid]], [], declared])
        img.refresh()

    steps.append(old_code_writes_the_removed_field)
    seq = img.snapshot()
    assert not steps
    img.close()
    from tests.test_snapshot_format import _only_the_snapshot

    _only_the_snapshot(make_image.store(), seq)
    with make_image(root=Holder, snapshot_every=None) as again:
        assert [n.label for n in again.root.nodes][:2] == ["t0", "t1"]


def test_a_snapshot_that_loses_its_lease_is_abandoned(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot whose lease expired and was taken by another process (a pause longer than the lease) is
    abandoned with an error saying so, storing nothing; the image stays writable."""
    _small_slices(monkeypatch)
    monkeypatch.setattr(_snapshots, "LEASE_SECONDS", 0.3)
    steps: list[Any] = []
    img = make_image(root=Holder, snapshot_every=None, progress=_between_slices(steps))
    img.root.nodes.extend(_chain(500))
    store = make_image.store()

    def stall_and_lose_the_lease() -> None:
        time.sleep(0.35)
        assert store.lease(_snapshots.LEASE, "another process", 30)

    steps.append(stall_and_lose_the_lease)
    previous = img._engine.snapshot_seq
    with pytest.raises(memimg.MemimgError, match="lost its lease"):
        img.snapshot()
    assert img.store.snapshots() == [] and img._engine.snapshot_seq == previous
    img.root.misc = "still writable"


def test_a_snapshot_keeps_its_lease_while_its_first_commit_loses_races(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another image commits before every attempt of a snapshot's first commit, for four times the lease's
    time: the snapshot renews its lease meanwhile (no other process can take it), then is written and
    stored."""
    # a lease long enough that a loaded machine's stall between two renewals (a third of it apart) stays inside it
    monkeypatch.setattr(_snapshots, "LEASE_SECONDS", 0.6)
    img = make_image(root=Holder, snapshot_every=None)
    img.root.nodes.extend(_chain(50))
    other = make_image(root=Holder, snapshot_every=None)
    store = make_image.store()
    engine = img._engine
    commit = engine.commit
    until = time.monotonic() + 4 * _snapshots.LEASE_SECONDS
    lost: list[int] = []

    def another_commits_first(events: Any, *args: Any, **kwargs: Any) -> bool:
        if events[0][0].name == "snapshot" and time.monotonic() < until:
            other.root.misc = len(lost)
            lost.append(engine.seq)
            assert not store.lease(_snapshots.LEASE, "another process", 30)
        return bool(commit(events, *args, **kwargs))

    monkeypatch.setattr(engine, "commit", another_commits_first)
    seq = img.snapshot()
    assert len(lost) > 3 and seq in [s.seq for s in img.store.snapshots()]
    assert img.root.misc == len(lost) - 1
    img.close()
    other.close()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_change_to_an_object_already_written_keeps_no_early_copy(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit between slices that changes objects the snapshot has already written keeps no copy of
    their earlier state (they are in the snapshot already): every early copy a snapshot keeps is used."""
    _small_slices(monkeypatch)
    left: list[dict[int, Any]] = []
    complete = _snapshotter.SnapshotWriter.complete

    def completing(self: Any) -> Any:
        out = complete(self)
        left.append(dict(self.early))
        return out

    monkeypatch.setattr(_snapshotter.SnapshotWriter, "complete", completing)
    steps: list[Any] = []
    img = make_image(root=Holder, snapshot_every=None, progress=_between_slices(steps))
    img.root.nodes.extend(_chain(1_000))
    nodes = img.root.nodes
    steps.extend([lambda: None] * 4)  # four slices walk the first nodes of the chain
    steps.append(lambda: setattr(nodes[1], "label", "changed after written"))
    steps.append(lambda: setattr(nodes[2], "label", "changed after written"))
    seq = img.snapshot()
    assert not steps
    assert _content(_snapshot_alone(img.store, seq)) == _content(_state_at(img, seq))
    assert left == [{}]


def test_other_threads_cyclic_garbage_is_collected_between_the_slices_of_a_snapshot(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector stays paused from a snapshot's first slice to its last, but cyclic garbage made
    meanwhile (by another thread, or the application between slices) is collected between slices once
    enough new objects piled up -- while the pause is still on."""
    _small_slices(monkeypatch)
    monkeypatch.setattr(_gc, "YOUNG_LIMIT", 0)
    refs: list[Any] = []
    seen: list[tuple[bool, bool]] = []  # (garbage collected, collector paused) after each later slice

    def make_garbage() -> None:
        refs.append(weakref.ref(_Cycle()))

    steps: list[Any] = [make_garbage] + [lambda: seen.append((refs[0]() is None, not gc.isenabled()))] * 5
    img = make_image(root=Holder, snapshot_every=None, progress=_between_slices(steps))
    img.root.nodes.extend(_chain(3_000))
    assert gc.isenabled()
    img.snapshot()
    assert len(seen) == 5 and all(paused for _, paused in seen)
    assert any(collected for collected, _ in seen)
    assert gc.isenabled()


def test_a_snapshot_interrupted_as_it_pauses_the_collector_leaves_no_writer_behind(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt as the snapshot pauses the collector for its slices: no writer is left
    installed, the next automatic snapshot is not put off, and the collector is on."""
    img = make_image(root=Holder, snapshot_every=None)
    img.root.nodes.extend(_chain(10))
    engine = img._engine
    before = engine.snapshot_seq
    real = _gc.paused_gc

    class interrupted(real):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def __enter__(self) -> None:
            super().__enter__()
            if engine.snapshot_writer is not None:  # the first pause after the writer is installed
                raise KeyboardInterrupt

    monkeypatch.setattr(_snapshots, "paused_gc", interrupted)
    with pytest.raises(KeyboardInterrupt):
        img.snapshot()
    assert engine.snapshot_writer is None and engine.snapshot_seq == before
    assert gc.isenabled()
    monkeypatch.setattr(_snapshots, "paused_gc", real)
    img.root.nodes.append(Node("after", 1))
    assert img.snapshot() is not None
