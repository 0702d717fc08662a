"""The store contract: every behaviour a store must have.

Each backend's test module subclasses :class:`StoreContract` and only says
how to build a fresh store (``make_store``), a second handle on the same log
(``reopen``, read-only on request), and how to make the store's database
fail (``broken``), so that every backend's own error translation is
exercised.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import memimg
from memimg.core._rows import event_checksum, snapshot_checksum
from memimg.stores import EventRow, SeqTaken, SnapshotRow, Store
from memimg.stores._protocol import LEASE, Rewrite


def row(seq: int, tx: int | None = None, payload: bytes = b"[[]]", kind: str = "gc", target: int = 0) -> EventRow:
    tx = seq if tx is None else tx
    return EventRow(
        seq, tx, 1000 + seq, kind, target, payload, event_checksum(seq, tx, 1000 + seq, kind, target, payload)
    )


def snap(seq: int, payload: bytes = b"{}") -> SnapshotRow:
    return SnapshotRow(seq, 5, payload, snapshot_checksum(seq, 5, payload))


class StoreContract:
    """Behaviour every store must have."""

    def make_store(self) -> Store:
        raise NotImplementedError

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        """Another handle on the same log (another connection or the same object)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        """Make the store's database fail while the block runs, then bring it back.

        Yields ``False`` for a store that has no database that can fail.
        """
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> Any:
        s = self.make_store()
        yield s
        s.close()

    def test_is_a_store(self, store: Store) -> None:
        """A store satisfies the runtime-checkable Store protocol."""
        assert isinstance(store, Store)

    def test_empty(self, store: Store) -> None:
        """A new store has an empty log, no snapshots and a format version."""
        assert store.head() == 0
        assert store.first_seq() == 1
        assert list(store.read()) == []
        assert store.snapshots() == []
        assert store.meta()["format_version"] == "1"

    def test_append_and_read_back(self, store: Store) -> None:
        """Rows come back exactly as appended, in seq order."""
        rows = [row(1), row(2, 2, b'[["x"]]', "obj.set", 7), row(3, 2)]
        store.append(rows[:1], 0)
        store.append(rows[1:], 1)
        assert store.head() == 3
        assert [EventRow(*r) for r in store.read()] == rows
        assert [EventRow(*r) for r in store.read(after=1)] == rows[1:]
        assert [EventRow(*r) for r in store.read(after=1, limit=1)] == rows[1:2]
        assert list(store.read(after=3)) == []

    @pytest.mark.parametrize("indexed", [0, 12, 30])
    def test_read_target_gives_one_objects_rows_in_order(self, store: Store, indexed: int) -> None:
        """read_target gives the rows of one target, in seq order, within ``after < seq <= until`` -- the same
        whether the target index covers none, part or all of the log, and on a read-only handle."""
        rows = [row(s, target=[0, 7, 3, 7, 7, 9][s % 6]) for s in range(1, 31)]
        store.append(rows[:10], 0)
        store.append(rows[10:], 10)
        if indexed:
            assert store.index_targets(indexed) >= indexed
        sevens = [r for r in rows if r.target == 7]
        readonly = self.reopen(store, readonly=True)
        for handle in (store, readonly):
            assert [EventRow(*r) for r in handle.read_target(7)] == sevens
            assert [EventRow(*r) for r in handle.read_target(7, after=10, until=20)] == [
                r for r in sevens if 10 < r.seq <= 20
            ]
            assert [r[0] for r in handle.read_target(7, after=12, until=13)] == [13]
            assert [r[0] for r in handle.read_target(9, after=0, until=5)] == [5]
            assert list(handle.read_target(4)) == []
            assert list(handle.read_target(7, after=30)) == []

    def test_read_target_refuses_what_is_not_an_object_id(self, store: Store) -> None:
        """Target 0 (events of no object) and negative ids are refused: the index holds objects only."""
        store.append([row(1, target=0)], 0)
        for bad in (0, -1):
            with pytest.raises(ValueError, match="object id"):
                list(store.read_target(bad))

    def test_index_targets_covers_up_to_the_head(self, store: Store) -> None:
        """index_targets covers up to the seq asked (at most the head), never less than before; with fewer than
        *least* events waiting it need not write; read_target answers the same throughout."""
        store.append([row(s, target=s % 4) for s in range(1, 21)], 0)
        assert store.index_targets(12) >= 12
        assert store.index_targets(100) == 20
        assert store.index_targets(5) == 20
        store.append([row(21, target=1)], 20)
        assert store.index_targets(21, least=5) in (20, 21)  # the memory store indexes as it appends
        assert [r[0] for r in store.read_target(1)] == [1, 5, 9, 13, 17, 21]
        assert store.index_targets(21) == 21
        assert [r[0] for r in store.read_target(1)] == [1, 5, 9, 13, 17, 21]

    @pytest.mark.parametrize("indexed", [0, 2, 6])
    def test_read_target_skips_compacted_rows(self, store: Store, indexed: int) -> None:
        """Rows deleted by compaction are not read by target either, however far the index had got."""
        store.append([row(s, target=5) for s in range(1, 7)], 0)
        if indexed:
            store.index_targets(indexed)
        store.write_snapshot(snap(3))
        store.delete_events_before(4)
        assert [r[0] for r in store.read_target(5)] == [4, 5, 6]
        assert [r[0] for r in store.read_target(5, after=1, until=4)] == [4]
        store.index_targets(6)
        assert [r[0] for r in store.read_target(5)] == [4, 5, 6]

    def test_append_refuses_a_stale_head(self, store: Store) -> None:
        """Appending after a head that moved raises SeqTaken and writes nothing."""
        store.append([row(1)], 0)
        store.append([row(2)], 1)
        with pytest.raises(SeqTaken):
            store.append([row(2, payload=b"[[1]]")], 1)
        with pytest.raises(SeqTaken):
            store.append([row(2), row(3)], 1)
        with pytest.raises(SeqTaken):
            store.append([row(1)], 0)
        assert store.head() == 2
        assert [r[5] for r in store.read()] == [b"[[]]", b"[[]]"]

    def test_append_refuses_rows_out_of_seq(self, store: Store) -> None:
        """Rows whose seqs do not run on from the expected head (the first, or one after it) raise ValueError
        naming the seqs; nothing is written."""
        store.append([row(1)], 0)
        for rows in ([row(3)], [row(2), row(4)], [row(1), row(2)]):
            with pytest.raises(ValueError, match="does not follow"):
                store.append(rows, 1)
        assert store.head() == 1 and [r[0] for r in store.read()] == [1]

    def test_a_refused_append_hands_over_only_events_it_missed(self, store: Store) -> None:
        """Events a SeqTaken carries, if any, are the log's events right after the expected head, in order."""
        store.append([row(1)], 0)
        store.append([row(2, 2), row(3, 2)], 1)
        for expected in (0, 1):
            with pytest.raises(SeqTaken) as info:
                store.append([row(expected + 1)], expected)
            missed, more = info.value.missed, info.value.more
            if missed is not None:
                assert list(missed) == list(store.read(after=expected, limit=len(missed)))
                assert more == (missed[-1].seq < 3)

    def test_multi_row_append_is_atomic(self, store: Store) -> None:
        """A transaction's rows land all together or not at all."""
        store.append([row(1)], 0)
        with pytest.raises(SeqTaken):
            store.append([row(1, 1), row(2, 1), row(3, 1)], 0)
        assert store.head() == 1
        store.append([row(2, 2), row(3, 2), row(4, 2)], 1)
        assert [r[0] for r in store.read()] == [1, 2, 3, 4]

    def test_concurrent_appenders_never_share_a_seq(self, store: Store) -> None:
        """Writers racing on one log: every seq is written once, with no gap."""
        other = self.reopen(store)
        won: list[int] = []

        def writer(s: Store, tag: bytes) -> None:
            for _ in range(40):
                while True:
                    head = s.head()
                    try:
                        s.append([row(head + 1, payload=b'[["' + tag + b'"]]')], head)
                        won.append(head + 1)
                        break
                    except SeqTaken:
                        continue

        threads = [threading.Thread(target=writer, args=(s, t)) for s, t in ((store, b"a"), (other, b"b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if other is not store:
            other.close()
        seqs = [r[0] for r in store.read()]
        assert seqs == list(range(1, 81))
        assert sorted(won) == seqs

    def test_snapshots(self, store: Store) -> None:
        """Snapshots are listed newest first and read back whole."""
        store.write_snapshot(snap(3, b'{"a":1}'))
        store.write_snapshot(snap(7, b'{"b":2}'))
        assert [(i.seq, i.size) for i in store.snapshots()] == [(7, 7), (3, 7)]
        assert store.read_snapshot(3) == snap(3, b'{"a":1}')

    def test_meta(self, store: Store) -> None:
        """Meta entries are written and read back, and removed by writing None."""
        store.set_meta("x", "1")
        store.set_meta("x", "2")
        store.set_meta("y", "3")
        assert store.meta()["x"] == "2"
        store.set_meta("x", None)
        store.set_meta("never", None)
        assert "x" not in store.meta() and store.meta()["y"] == "3"

    def test_a_lease_has_one_holder_at_a_time(self, store: Store) -> None:
        """A lease is taken by one holder, on any handle; another holder is refused until it is released;
        its holder may renew it; a release by another holder does nothing."""
        other = self.reopen(store)
        try:
            assert store.lease("job", "a", 30)
            assert not other.lease("job", "b", 30)
            assert other.lease("job", "a", 30)  # renewed by its holder, on another handle
            other.release("job", "b")
            assert not store.lease("job", "b", 30)
            assert store.lease("other job", "b", 30)  # leases are by name
            store.release("job", "a")
            assert other.lease("job", "b", 30)
            assert not store.lease("job", "a", 30)
        finally:
            if other is not store:
                other.close()

    def test_a_lease_expires_by_itself(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        """A lease its holder neither renews nor releases (its process died) is free once it expires.

        The stores' clock (``lease_entry``'s) is set by the test, so a loaded machine cannot let the
        lease expire before the second taker asks.
        """
        from memimg.stores import _protocol

        clock = [time.time_ns()]
        monkeypatch.setattr(_protocol.time, "time_ns", lambda: clock[0])
        assert store.lease("job", "dead", 0.05)
        clock[0] += 40_000_000  # 40 ms later: still held
        assert not store.lease("job", "alive", 30)
        clock[0] += 20_000_000  # 60 ms after it was taken: expired
        assert store.lease("job", "alive", 30)
        assert not store.lease("job", "dead", 30)

    def test_concurrent_takers_of_a_lease_get_it_once(self, store: Store) -> None:
        """Handles racing for a free lease: exactly one gets it."""
        handles = [self.reopen(store) for _ in range(4)]
        got: list[str] = []
        start = threading.Barrier(len(handles))

        def take(i: int, handle: Store) -> None:
            start.wait()
            if handle.lease("race", f"h{i}", 30):
                got.append(f"h{i}")

        threads = [threading.Thread(target=take, args=(i, h)) for i, h in enumerate(handles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in handles:
            if h is not store:
                h.close()
        assert len(got) == 1

    def test_changed_notices_other_writers(self, store: Store) -> None:
        """changed() turns true when another handle appends."""
        other = self.reopen(store)
        store.changed(0)
        other.append([row(1)], 0)
        assert store.changed(0)
        if other is not store:
            other.close()

    def test_compaction(self, store: Store) -> None:
        """Events before a seq can be deleted; the head stays."""
        store.append([row(1), row(2), row(3)], 0)
        assert store.delete_events_before(3) == 2
        assert store.first_seq() == 3
        assert store.head() == 3
        store.append([row(4)], 3)
        assert [r[0] for r in store.read()] == [3, 4]

    def test_snapshot_compaction(self, store: Store) -> None:
        """Older snapshots can be deleted."""
        for seq in (2, 5, 9):
            store.write_snapshot(snap(seq))
        assert store.delete_snapshots_before(9) == 2
        assert [s.seq for s in store.snapshots()] == [9]

    def test_reclaim_after_compaction(self, store: Store) -> None:
        """After compaction, reclaim() gives the space back and the log reads the same; appends go on."""
        big = b'["' + b"x" * 50_000 + b'"]'
        store.append([row(seq, payload=big) for seq in range(1, 41)], 0)
        store.write_snapshot(snap(20, big))
        store.write_snapshot(snap(40))
        store.set_meta("k", "v")
        store.delete_events_before(39)
        store.delete_snapshots_before(40)
        kept = [EventRow(*r) for r in store.read()]
        store.reclaim()
        assert [EventRow(*r) for r in store.read()] == kept == [row(39, payload=big), row(40, payload=big)]
        assert (store.head(), store.first_seq()) == (40, 39)
        assert [i.seq for i in store.snapshots()] == [40] and store.read_snapshot(40) == snap(40)
        assert store.meta()["k"] == "v"
        store.append([row(41)], 40)
        assert store.head() == 41
        store.reclaim()  # again, with nothing to give back
        assert [r[0] for r in store.read()] == [39, 40, 41]

    def test_rewrite_replaces_rows_and_appends_in_one_go(self, store: Store) -> None:
        """rewrite hands the plan the events after its seq, replaces payloads and checksums of events and
        snapshots by seq, skips rows no longer stored, and appends its rows after the head."""
        store.append([row(1), row(2), row(3)], 0)
        store.write_snapshot(snap(2))
        seen: list[list[int]] = []

        def plan(missed: Sequence[EventRow]) -> Rewrite:
            seen.append([r[0] for r in missed])
            return Rewrite([row(2, payload=b'[["new"]]'), row(9)], [snap(2, b'{"new":1}'), snap(8)], [row(4)])

        store.rewrite(plan, 1)
        assert seen == [[2, 3]]
        assert [(r[0], bytes(r[5])) for r in store.read()] == [
            (1, b"[[]]"),
            (2, b'[["new"]]'),
            (3, b"[[]]"),
            (4, b"[[]]"),
        ]
        assert EventRow(*list(store.read())[1]) == row(2, payload=b'[["new"]]')
        assert store.read_snapshot(2) == snap(2, b'{"new":1}')
        assert [i.seq for i in store.snapshots()] == [2]
        assert store.head() == 4

    def test_rewrite_holds_the_write_turn(self, store: Store) -> None:
        """While the plan runs, no other append lands: one made meanwhile from another thread waits for
        the rewrite (and then finds the head moved), so the plan's view of the tail is the whole tail."""
        store.append([row(1)], 0)
        outcome: list[str] = []

        def other() -> None:
            try:
                store.append([row(2)], 1)
                outcome.append("appended")
            except SeqTaken:
                outcome.append("refused")

        def plan(missed: Sequence[EventRow]) -> Rewrite:
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(0.5)  # it cannot append while the turn is held
            assert not outcome
            threads.append(thread)
            return Rewrite([], [], [row(2)])

        threads: list[threading.Thread] = []
        store.rewrite(plan, 1)
        threads[0].join(30)
        assert outcome == ["refused"]
        assert [r[0] for r in store.read()] == [1, 2] and store.head() == 2

    def test_a_plan_that_raises_writes_nothing(self, store: Store) -> None:
        """If the plan raises, the error passes through and nothing is rewritten or appended."""
        store.append([row(1), row(2)], 0)
        store.write_snapshot(snap(1))

        def plan(missed: Sequence[EventRow]) -> Rewrite:
            raise KeyError("plan")

        with pytest.raises(KeyError):
            store.rewrite(plan, 2)
        assert [bytes(r[5]) for r in store.read()] == [b"[[]]", b"[[]]"]
        assert store.read_snapshot(1) == snap(1)
        assert store.head() == 2

    def test_a_snapshot_is_written_only_while_its_holder_holds_the_lease(self, store: Store) -> None:
        """write_snapshot(row, holder) stores the row only if holder holds the snapshot lease (a stalled
        snapshot whose lease another took stores nothing); without a holder it always stores."""
        assert store.lease(LEASE, "a", 30)
        assert store.write_snapshot(snap(1), "a") is True
        assert store.write_snapshot(snap(2), "b") is False
        store.release(LEASE, "a")
        assert store.write_snapshot(snap(3), "a") is False
        assert store.write_snapshot(snap(4)) is True
        assert [i.seq for i in store.snapshots()] == [4, 1]

    def test_large_payload(self, store: Store) -> None:
        """Payloads of several megabytes are kept intact."""
        big = b"[" + b"1," * 2_000_000 + b"1]"
        store.append([row(1, payload=big)], 0)
        assert next(iter(store.read()))[5] == big
        store.write_snapshot(snap(1, big))
        assert store.read_snapshot(1).payload == big

    def test_head_after_every_event_was_compacted(self, store: Store) -> None:
        """With every event compacted away, the head is the newest snapshot's seq, and the next
        append goes at head + 1 (the append rule holds against the snapshot)."""
        store.append([row(1), row(2)], 0)
        store.write_snapshot(snap(2))
        assert store.delete_events_before(3) == 2
        assert store.first_seq() == 3
        assert store.head() == 2
        with pytest.raises(SeqTaken):
            store.append([row(2)], 1)
        store.append([row(3)], 2)
        assert store.head() == 3
        assert [r[0] for r in store.read()] == [3]

    def test_readonly_store_refuses_every_write(self, store: Store) -> None:
        """A store opened read-only refuses append, write_snapshot, set_meta, both deletes and reclaim
        with ReadOnlyError, and the log is left exactly as it was."""
        store.append([row(1), row(2)], 0)
        store.write_snapshot(snap(1))
        store.set_meta("k", "v")
        ro = self.reopen(store, readonly=True)
        try:
            writes: dict[str, Callable[[], object]] = {
                "append": lambda: ro.append([row(3)], 2),
                "write_snapshot": lambda: ro.write_snapshot(snap(2)),
                "set_meta": lambda: ro.set_meta("k", "w"),
                "delete_events_before": lambda: ro.delete_events_before(3),
                "delete_snapshots_before": lambda: ro.delete_snapshots_before(3),
                "lease": lambda: ro.lease("job", "x", 30),
                "release": lambda: ro.release("job", "x"),
                "reclaim": ro.reclaim,
                "rewrite": lambda: ro.rewrite(lambda missed: Rewrite([], [], [row(3)]), 2),
            }
            for name, write in writes.items():
                with pytest.raises(memimg.ReadOnlyError):
                    write()
                for handle in (ro, store):
                    assert handle.head() == 2, name
                    assert [r[0] for r in handle.read()] == [1, 2], name
                    assert [i.seq for i in handle.snapshots()] == [1], name
                    assert handle.meta()["k"] == "v", name
        finally:
            if ro is not store:
                ro.close()

    def test_transactions_of_any_size_are_stored_whole_and_in_order(self, store: Store) -> None:
        """Transactions of 1 to 200 rows (around the sizes a store may group its inserts in) are appended
        whole, in order, each row as given; one appended at a stale head writes none of its rows."""
        seq = 0
        expected: list[tuple[object, ...]] = []
        for n in (1, 2, 7, 8, 9, 63, 64, 65, 73, 200):
            rows = [row(seq + 1 + i, tx=seq + 1, payload=b"[%d]" % i) for i in range(n)]
            store.append(rows, seq)
            expected += [tuple(r) for r in rows]
            seq += n
        assert [tuple(r) for r in store.read()] == expected
        with pytest.raises(SeqTaken):
            store.append([row(seq + i, tx=seq) for i in range(79)], seq - 1)  # a writer one event behind
        assert store.head() == seq
        assert [tuple(r) for r in store.read(after=seq - 1)] == expected[-1:]

    def test_database_failures_are_store_errors(self, store: Store) -> None:
        """While its database fails, every store method raises a StoreError whose __cause__ is the
        driver's error, nothing is written, and the store works again once the database is back."""
        store.append([row(1)], 0)
        store.write_snapshot(snap(1))
        calls: dict[str, Callable[[], object]] = {
            "head": store.head,
            "first_seq": store.first_seq,
            "read": lambda: list(store.read()),
            "changed": lambda: store.changed(0),
            "wait_for_change": lambda: store.wait_for_change(1, 0.01),
            "snapshots": store.snapshots,
            "read_snapshot": lambda: store.read_snapshot(1),
            "meta": store.meta,
            "set_meta": lambda: store.set_meta("k", "v"),
            "write_snapshot": lambda: store.write_snapshot(snap(2)),
            "delete_events_before": lambda: store.delete_events_before(1),
            "delete_snapshots_before": lambda: store.delete_snapshots_before(1),
            "reclaim": store.reclaim,
            "append": lambda: store.append([row(2)], 1),
            "rewrite": lambda: store.rewrite(lambda missed: Rewrite([row(1, payload=b'["x"]')], [], [row(2)]), 1),
            "lease": lambda: store.lease("job", "x", 30),
            "release": lambda: store.release("job", "x"),
        }
        with self.broken(store) as fails:
            for name, call in calls.items() if fails else ():
                with pytest.raises(memimg.StoreError) as info:
                    call()
                assert info.value.__cause__ is not None, name
                assert not isinstance(info.value.__cause__, memimg.MemimgError), name
                assert info.value.store == store.description and info.value.operation, name
        assert store.head() == 1
        assert [r[0] for r in store.read()] == [1]
        assert [i.seq for i in store.snapshots()] == [1]
        assert "k" not in store.meta()
        store.append([row(2)], 1)
        assert store.head() == 2

    def test_a_log_may_start_after_a_snapshot(self, store: Store) -> None:
        """A store with no event and a snapshot at seq N has head N and first seq N + 1, and takes events
        from N + 1 on (how a compacted log is copied: its snapshots first, then its events)."""
        store.write_snapshot(snap(5))
        assert (store.head(), store.first_seq()) == (5, 6)
        with pytest.raises(SeqTaken):
            store.append([row(1)], 0)
        store.append([row(6), row(7)], 5)
        assert (store.head(), store.first_seq()) == (7, 6)
        assert [r[0] for r in store.read()] == [6, 7]
        assert [r[0] for r in store.read(after=6)] == [7]
        reopened = self.reopen(store)
        try:
            assert (reopened.head(), reopened.first_seq()) == (7, 6)
            assert [EventRow(*r) for r in reopened.read()] == [row(6), row(7)]
        finally:
            if reopened is not store:
                reopened.close()
