"""Transaction metadata: ``transaction(meta=...)``, ``annotate(...)``, stored once per transaction, read back."""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

import memimg
from memimg.cli import cli
from memimg.core._meta import read_events
from memimg.stores import EventRow
from tests.conftest import Images
from tests.models import Account, Bank, Box


def _events(img: memimg.MemoryImage, since: int = 0) -> list[memimg.Event]:
    return list(img.events(since))


def _meta_rows(img: memimg.MemoryImage) -> list[memimg.Event]:
    return [e for e in img.events() if e.kind == "tx.meta"]


def _last_tx(img: memimg.MemoryImage) -> list[memimg.Event]:
    """The events of the last transaction in the log."""
    events = _events(img)
    return [e for e in events if e.tx == events[-1].tx]


# -- storage ---------------------------------------------------------------------------


def test_a_transactions_meta_is_its_first_row_and_every_event_of_it_carries_it(make_image: Images) -> None:
    """transaction(meta=...) writes one tx.meta row first in the transaction (seq == tx, target 0, data [meta]);
    every event of the transaction, read back after reopening, carries the meta."""
    img = make_image(root=Box)
    with img.transaction(meta={"user": "ada", "reason": "refund #17", "n": 3, "ok": True, "x": 1.5, "none": None}):
        img.root.content = 1
        img.root.other = [1, 2]
    img.close()
    img = make_image(root=Box)
    first, *rest = _last_tx(img)
    meta = {"user": "ada", "reason": "refund #17", "n": 3, "ok": True, "x": 1.5, "none": None}
    assert (first.kind, first.seq, first.target, first.data) == ("tx.meta", first.tx, 0, [meta])
    assert [e.kind for e in rest] == ["obj.set", "obj.set"]
    assert all(e.meta == meta for e in [first, *rest])
    assert img.root.content == 1 and img.root.other == [1, 2]


def test_a_commit_without_meta_writes_no_meta_row(make_image: Images) -> None:
    """Transactions and single changes without metadata write only their own events; their meta is {}."""
    img = make_image(root=Box)
    before = img.seq
    img.root.content = 1
    with img.transaction():
        img.root.content = 2
        img.root.other = 3
    assert img.seq == before + 3
    assert not _meta_rows(img)
    assert all(e.meta == {} for e in img.events())


def test_each_event_has_its_own_meta(make_image: Images) -> None:
    """Event.meta is a dict of each event's own: changing one event's leaves the other events of its
    transaction (with meta or without) as they were."""
    img = make_image(root=Box)
    with img.transaction(meta={"user": "ada"}):
        img.root.content = 1
        img.root.other = 2
    with img.transaction():
        img.root.content = 3
        img.root.other = 4
    events = _events(img)
    with_meta, without = [e for e in events if e.meta][-2:], events[-2:]
    for first, second in (with_meta, without):
        first.meta["user"] = "mallory"
        assert second.meta != first.meta
    assert [e.meta for e in with_meta] == [{"user": "mallory"}, {"user": "ada"}]
    assert without[1].meta == {}


def test_meta_holds_no_object_references(make_image: Images) -> None:
    """Meta is stored as plain JSON: a str that looks like an encoded value stays that str."""
    img = make_image(root=Box)
    with img.transaction(meta={"r": "r", "tag": "x"}):
        img.root.content = 1
    img.close()
    img = make_image(root=Box)
    assert _meta_rows(img)[0].data == [{"r": "r", "tag": "x"}]
    assert _meta_rows(img)[0].payload == b'[[{"r":"r","tag":"x"}]]'


def test_an_empty_transaction_with_meta_writes_nothing(make_image: Images) -> None:
    """Metadata alone is no change: a transaction that changed nothing writes nothing."""
    img = make_image(root=Box)
    before = img.seq
    with img.transaction(meta={"user": "ada"}):
        pass
    assert img.seq == before


# -- annotate ----------------------------------------------------------------------------


def test_annotate_marks_every_single_change_made_in_the_block(make_image: Images) -> None:
    """A bare field set and a collection call inside annotate() each commit with the annotation; after the
    block, commits carry nothing again."""
    img = make_image(root=Bank)
    with img.annotate(user="ada", request="r-42"):
        img.root.name = "b2"
        img.root.accounts["a"] = Account("a")
    img.root.name = "b3"
    events = _events(img)
    annotated = [e for e in events if e.meta]
    assert [e.kind for e in annotated] == ["tx.meta", "obj.set", "tx.meta", "dict.set"]
    assert all(e.meta == {"user": "ada", "request": "r-42"} for e in annotated)
    assert events[-1].kind == "obj.set" and events[-1].meta == {}


def test_nested_annotations_merge_and_the_inner_wins(make_image: Images) -> None:
    """An inner annotate() merges over the outer (its keys win); leaving it restores the outer one."""
    img = make_image(root=Box)
    with img.annotate(user="ada", request="r-1"):
        with img.annotate(user="bob", step="2"):
            img.root.content = 1
        inner = _last_tx(img)[0].meta
        img.root.content = 2
        outer = _last_tx(img)[0].meta
    assert inner == {"user": "bob", "request": "r-1", "step": "2"}
    assert outer == {"user": "ada", "request": "r-1"}


def test_a_transactions_own_meta_is_merged_over_the_annotation(make_image: Images) -> None:
    """Inside annotate(), transaction(meta=...) commits the annotation with its own meta over it."""
    img = make_image(root=Box)
    with img.annotate(user="ada", request="r-1"), img.transaction(meta={"user": "system", "reason": "import"}):
        img.root.content = 1
    assert _last_tx(img)[0].meta == {"user": "system", "request": "r-1", "reason": "import"}


def test_an_annotation_entered_inside_a_transaction_marks_it(make_image: Images) -> None:
    """annotate() entered while a transaction is open annotates that transaction, under its own meta."""
    img = make_image(root=Box)
    with img.transaction(meta={"user": "ada"}):
        img.root.content = 1
        with img.annotate(reason="cleanup", user="nobody"):
            img.root.other = 2
    assert _last_tx(img)[0].meta == {"user": "ada", "reason": "cleanup"}


def test_a_transaction_carries_the_blocks_active_when_it_made_its_changes(make_image: Images) -> None:
    """A transaction carries the metadata of the annotate blocks active (in the thread or task making the
    change) when it made one of its changes, whenever it commits: a block that ended before its first change,
    or that saw none of its changes, lends it nothing; one active at a change does, even if the transaction
    commits after the block has exited."""
    img = make_image(root=Box)
    tx = img.begin()
    with img.annotate(user="ada"):
        pass  # begun inside nothing, a block with no change in it
    img.root.content = 1
    tx.save()
    assert _last_tx(img)[0].meta == {}
    with img.annotate(user="ada"):
        tx = img.begin()  # begun inside the block...
    img.root.content = 2  # ...its first change after the block ended
    tx.save()
    assert _last_tx(img)[0].meta == {}
    with img.annotate(user="ada"):
        tx = img.begin()
        img.root.content = 3  # a change made inside the block
    with img.annotate(reason="read only"):
        _ = img.root.content  # a block that saw no change
    img.root.other = 4
    tx.save()
    assert _last_tx(img)[0].meta == {"user": "ada"}
    with img.transaction():
        with img.annotate(user="ada"):
            img.root.content = 5
        with img.annotate(user="bob", step="2"):
            img.root.other = 6  # later changes' blocks win on a key they share
    assert _last_tx(img)[0].meta == {"user": "bob", "step": "2"}


def test_a_savepoints_meta_is_kept_with_its_changes(make_image: Images) -> None:
    """A nested transaction's meta joins the transaction's when the savepoint is kept, not when it is
    rolled back."""
    img = make_image(root=Box)
    with img.transaction(meta={"user": "ada"}):
        img.root.content = 1
        with img.transaction(meta={"step": "kept", "user": "bob"}):
            img.root.other = 2
        with pytest.raises(ZeroDivisionError), img.transaction(meta={"dropped": True}):
            img.root.other = 3
            1 / 0
    assert _last_tx(img)[0].meta == {"user": "bob", "step": "kept"}
    assert img.root.other == 2


def test_an_annotation_inside_a_rolled_back_savepoint_is_dropped_with_it(make_image: Images) -> None:
    """An annotate block entered inside a savepoint marks the transaction only if the savepoint is kept;
    so does the meta of a savepoint kept inside one that is then rolled back."""
    img = make_image(root=Box)
    with img.transaction(meta={"outer": 1}):
        img.root.content = "kept"
        sp = img.begin(meta={"sp": "dropped"})
        with img.annotate(who="dropped"):
            img.root.other = "rolled back"
        with img.transaction(meta={"inner": "dropped"}), img.annotate(deep="dropped"):
            img.root.other = "rolled back too"
        sp.discard()
        with img.transaction(), img.annotate(who="kept"):
            img.root.other = "kept"
    assert _last_tx(img)[0].meta == {"outer": 1, "who": "kept"}


def test_begin_takes_meta_too(make_image: Images) -> None:
    """img.begin(meta=...) stores the meta with the commit made by save()."""
    img = make_image(root=Box)
    tx = img.begin(meta={"user": "ada"})
    img.root.content = 1
    tx.save()
    assert _last_tx(img)[0].meta == {"user": "ada"}


def test_an_annotate_block_is_entered_once(make_image: Images) -> None:
    """Entering the same annotate() object twice is refused (call annotate() again)."""
    img = make_image(root=Box)
    block = img.annotate(user="ada")
    with block:
        pass
    with pytest.raises(memimg.MemimgError, match="entered once"), block:
        pass


# -- per thread and per task ---------------------------------------------------------------


def test_annotations_belong_to_their_thread(make_image: Images) -> None:
    """Threads annotating at the same time each commit with their own annotation; a thread without one
    commits with none, and a thread started inside a block does not inherit it."""
    img = make_image(root=Bank)
    for name in ("t0", "t1", "plain", "child"):
        img.root.accounts[name] = Account(name)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def work(name: str, annotated: bool) -> None:
        try:
            acct = img.root.accounts[name]
            if annotated:
                with img.annotate(user=name):
                    barrier.wait()
                    for i in range(20):
                        acct.balance = Decimal(i)
                    child = threading.Thread(target=lambda: setattr(img.root.accounts["child"], "balance", 1))
                    child.start()
                    child.join()
                    barrier.wait()
            else:
                barrier.wait()
                for i in range(20):
                    acct.balance = Decimal(i)
                barrier.wait()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=a) for a in (("t0", True), ("t1", True), ("plain", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    owner = {acct._mi_oid: name for name, acct in img.root.accounts.items()}
    seen: dict[str, set[str | None]] = {}
    for e in img.events():
        if e.kind == "obj.set" and e.target in owner:
            seen.setdefault(owner[e.target], set()).add(e.meta.get("user"))
    assert seen == {"t0": {"t0"}, "t1": {"t1"}, "plain": {None}, "child": {None}}


def test_annotations_belong_to_their_asyncio_task(make_image: Images) -> None:
    """Interleaved asyncio tasks each commit with their own annotation; a task created inside a block
    inherits it."""
    img = make_image(root=Bank)
    for name in ("a", "b", "plain", "child"):
        img.root.accounts[name] = Account(name)

    async def work(name: str, annotated: bool) -> None:
        acct = img.root.accounts[name]
        if annotated:
            with img.annotate(user=name):
                for i in range(10):
                    acct.balance = Decimal(i)
                    await asyncio.sleep(0)
                if name == "a":
                    await asyncio.create_task(child())
        else:
            for i in range(10):
                acct.balance = Decimal(i)
                await asyncio.sleep(0)

    async def child() -> None:
        img.root.accounts["child"].balance = Decimal(1)

    async def main() -> None:
        await asyncio.gather(work("a", True), work("b", True), work("plain", False))

    asyncio.run(main())
    owner = {acct._mi_oid: name for name, acct in img.root.accounts.items()}
    seen: dict[str, set[str | None]] = {}
    for e in img.events():
        if e.kind == "obj.set" and e.target in owner:
            seen.setdefault(owner[e.target], set()).add(e.meta.get("user"))
    assert seen == {"a": {"a"}, "b": {"b"}, "plain": {None}, "child": {"a"}}


def test_a_task_that_outlives_its_block_commits_with_its_own_context_only(make_image: Images) -> None:
    """A task created inside a block keeps the annotation after the block ends, whether or not another
    block is active elsewhere at the time."""
    img = make_image(root=Box)

    async def later(value: int) -> None:
        await asyncio.sleep(0)
        img.root.content = value

    async def main(other_block: bool) -> None:
        with img.annotate(user="ada"):
            task = asyncio.create_task(later(int(other_block)))
        if other_block:
            with img.annotate(unrelated="x"):
                await task
        else:
            await task

    for other_block in (False, True):
        asyncio.run(main(other_block))
        assert _last_tx(img)[0].meta == {"user": "ada"}


def test_a_task_inheriting_a_block_and_a_transaction_notes_the_block_for_its_changes(make_image: Images) -> None:
    """A transaction begun inside a block, written to first where the block is no longer active, still
    carries the block's metadata for the changes a task that inherited both makes."""
    img = make_image(root=Box)

    async def worker(go: asyncio.Event) -> None:
        await go.wait()
        img.root.other = 2  # the block is still active in this task

    async def main() -> memimg.Transaction:
        go = asyncio.Event()
        with img.annotate(user="ada"):
            tx = img.begin()
            task = asyncio.create_task(worker(go))
        img.root.content = 1  # the transaction's first change: no block here
        go.set()
        await task
        return tx

    asyncio.run(main()).save()
    events = _last_tx(img)
    assert [e.kind for e in events] == ["tx.meta", "obj.set", "obj.set"]
    assert events[0].meta == {"user": "ada"}
    assert img.root.content == 1 and img.root.other == 2


def test_blocks_exited_out_of_order_leave_nothing_behind(make_image: Images) -> None:
    """Two blocks exited out of order (two generators in one thread): each takes only its own metadata off,
    and none is left once both have exited, even while another thread is annotating."""
    img = make_image(root=Box)

    def job(tag: str) -> Any:
        with img.annotate(job=tag, **{tag: True}):
            yield
            yield

    g1, g2 = job("g1"), job("g2")
    next(g1)
    next(g2)
    g1.close()
    img.root.content = 1
    assert _last_tx(img)[0].meta == {"job": "g2", "g2": True}
    g2.close()
    inside, done = threading.Event(), threading.Event()

    def other() -> None:
        with img.annotate(user="bob"):
            inside.set()
            done.wait()

    t = threading.Thread(target=other)
    t.start()
    inside.wait()
    try:
        img.root.content = 2
    finally:
        done.set()
        t.join()
    assert _last_tx(img)[0].meta == {}


def test_meta_grown_too_large_after_blocks_exited_out_of_order_is_refused_at_commit(make_image: Images) -> None:
    """A block exited out of order takes its keys off, which can uncover larger values of an outer block: the
    commit made with the remaining blocks is refused, nothing written, when their merged meta is over 4 KiB
    -- a single change and a transaction alike -- and commits again once the blocks are gone."""
    img = make_image(root=Box)
    img.root.content = 0
    before = img.seq

    def block(**meta: Any) -> Any:
        with img.annotate(**meta):
            yield
            yield

    outer, middle, inner = block(a="x" * 3000), block(a="short"), block(b="y" * 3000)
    for g in (outer, middle, inner):
        next(g)
    middle.close()  # out of order: the outer block's 3000-character "a" is back, with the inner's "b"
    with pytest.raises(memimg.UnsupportedValueError, match="more than the 4096"):
        img.root.content = 1
    with pytest.raises(memimg.UnsupportedValueError, match="more than the 4096"), img.transaction():
        img.root.content = 2
    assert img.seq == before and img.root.content == 0
    inner.close()
    outer.close()
    img.root.content = 3
    assert img.seq == before + 1 and _last_tx(img)[0].meta == {}


# -- retries ------------------------------------------------------------------------------------


def test_a_transaction_rerun_after_a_conflict_carries_its_meta(make_image: Images) -> None:
    """@transaction(meta=..., retries=...) reruns after a conflict; the commit that lands carries the meta
    and the annotation, once."""
    img = make_image(root=Box)
    img.root.content = 0
    calls = []

    @img.transaction(meta={"reason": "bump"}, retries=3)
    def bump() -> None:
        calls.append(1)
        img.root.content += 1
        if len(calls) == 1:  # another thread overtakes the first attempt
            other = threading.Thread(target=lambda: setattr(img.root, "content", 10))
            other.start()
            other.join()

    with img.annotate(user="ada"):
        bump()
    assert len(calls) == 2 and img.root.content == 11
    last = _last_tx(img)
    assert [e.kind for e in last] == ["tx.meta", "obj.set"]
    assert last[0].meta == {"user": "ada", "reason": "bump"}
    assert len(_meta_rows(img)) == 1


def test_an_async_transaction_function_carries_its_meta(make_image: Images) -> None:
    """@transaction(meta=...) on an async function commits with the meta."""
    img = make_image(root=Box)

    @img.transaction(meta={"job": "nightly"}, retries=2)
    async def job() -> None:
        img.root.content = 1
        await asyncio.sleep(0)
        img.root.other = 2

    asyncio.run(job())
    last = _last_tx(img)
    assert [e.kind for e in last] == ["tx.meta", "obj.set", "obj.set"] and last[0].meta == {"job": "nightly"}


def test_a_commit_retried_after_another_writer_keeps_its_meta_first(make_image: Images) -> None:
    """A commit that finds another image's commit at its seq catches up and is written again after it (a
    field set as it is, a collection call planned again, a transaction validated again), its meta row still
    first in its transaction."""
    img = make_image(root=Box)
    other = make_image(root=Box)
    img.root.content = []
    other.refresh()
    other.root.other = "theirs"  # img does not know of it yet
    with img.annotate(user="ada"):
        img.root.content.append(1)  # planned again after catching up
        other.root.other = "again"
        tx = img.begin(meta={"step": 2})
        img.root.content.append(2)
        other.root.other = "third"
        tx.save()  # validated again after catching up
        other.root.other = "fourth"
        img.root.content = "done"  # written again after catching up
    img.close()
    other.close()
    img = make_image(root=Box)
    by_tx: dict[int, list[memimg.Event]] = {}
    for e in img.events():
        by_tx.setdefault(e.tx, []).append(e)
    annotated = [evs for evs in by_tx.values() if evs[0].meta]
    assert [[e.kind for e in evs] for evs in annotated] == [
        ["tx.meta", "list.append"],
        ["tx.meta", "list.append"],
        ["tx.meta", "obj.set"],
    ]
    assert [evs[0].meta for evs in annotated] == [{"user": "ada"}, {"user": "ada", "step": 2}, {"user": "ada"}]
    assert all(all(e.meta == evs[0].meta for e in evs) for evs in annotated)
    assert (img.root.content, img.root.other) == ("done", "fourth")


# -- bad meta ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "where", "says"),
    [
        ({"user": object()}, "meta['user']", "not a JSON scalar"),
        ({"user": ["a"]}, "meta['user']", "not a JSON scalar"),
        ({"n": Decimal(1)}, "meta['n']", "not a JSON scalar"),
        ({"n": 2**53}, "meta['n']", "out of range"),
        ({"n": -(2**60)}, "meta['n']", "out of range"),
        ({"x": float("nan")}, "meta['x']", "not a finite number"),
        ({"x": float("inf")}, "meta['x']", "not a finite number"),
        ({1: "a"}, "meta key 1", "keys must be str"),
        ({"s": "\ud800"}, "meta", "cannot be written as JSON"),
        ({"big": "x" * 5000}, "meta", "more than the 4096 allowed"),
        (["user", "ada"], "meta", "must be a dict"),
    ],
)
def test_bad_meta_is_refused_before_anything_is_written(make_image: Images, meta: Any, where: str, says: str) -> None:
    """Meta that is not a dict of str keys and JSON scalars, or over 4 KiB as JSON, is refused with an
    UnsupportedValueError naming the key; nothing is written."""
    img = make_image(root=Box)
    img.root.content = 0
    before = img.seq
    with pytest.raises(memimg.UnsupportedValueError) as info, img.transaction(meta=meta):
        img.root.content = 1
    assert info.value.where == where and says in str(info.value) and "nothing was written" in str(info.value)
    assert img.seq == before and img.root.content == 0
    if isinstance(meta, dict) and all(isinstance(k, str) for k in meta):
        with pytest.raises(memimg.UnsupportedValueError), img.annotate(**meta):
            img.root.content = 1
        assert img.seq == before and img.root.content == 0


def test_meta_too_large_only_once_merged_is_refused_at_commit(make_image: Images) -> None:
    """An annotation and a transaction's meta each small enough but together over 4 KiB: the commit is
    refused, nothing is written and the transaction's changes are discarded; so is an annotation nested
    in one that leaves no room for it."""
    img = make_image(root=Box)
    img.root.content = 0
    before = img.seq
    with img.annotate(a="x" * 3000):
        with pytest.raises(memimg.UnsupportedValueError, match="more than the 4096"):
            with img.transaction(meta={"b": "y" * 3000}):
                img.root.content = 1
        assert img.seq == before and img.root.content == 0
        with pytest.raises(memimg.UnsupportedValueError, match="more than the 4096"), img.annotate(b="y" * 3000):
            pass  # pragma: no cover
    assert img.seq == before


def test_enum_keys_and_values_are_stored_as_plain_scalars(make_image: Images) -> None:
    """A str or int subclass (an enum member) is stored as the plain str or int it is."""
    import enum

    class Role(enum.StrEnum):
        ADMIN = "admin"

    class Level(enum.IntEnum):
        HIGH = 2

    img = make_image(root=Box)
    with img.transaction(meta={Role.ADMIN: Role.ADMIN, "level": Level.HIGH}):
        img.root.content = 1
    meta = _last_tx(img)[0].meta
    assert meta == {"admin": "admin", "level": 2}
    assert [type(v) for v in meta.values()] == [str, int]


# -- readers of the log ------------------------------------------------------------------------


def _annotated_history(img: memimg.MemoryImage) -> None:
    with img.transaction(meta={"user": "ada"}):
        img.root.accounts["a"] = Account("a")
        img.root.accounts["a"].balance = Decimal(5)
    with img.annotate(user="bob"):
        img.root.accounts["a"].tags.add("vip")
        img.root.name = "renamed"


def test_logs_with_meta_replay_reopen_and_follow(make_image: Images) -> None:
    """replay(img.events()), reopening, a second image catching up and events(since=...) in the middle of a
    transaction all read logs holding meta rows."""
    img = make_image(root=Bank)
    follower = make_image(root=Bank)
    _annotated_history(img)
    assert follower.refresh() > 0
    assert follower.root.accounts["a"].balance == 5 and follower.root.accounts["a"].tags == {"vip"}
    rebuilt = memimg.replay(img.events())
    assert rebuilt.accounts["a"].balance == 5 and rebuilt.name == "renamed"
    tx_start = _meta_rows(img)[0].seq
    mid = _events(img, since=tx_start + 1)  # starts inside the transaction: its meta is looked up
    assert mid[0].tx == tx_start and mid[0].meta == {"user": "ada"}
    img.close()
    again = make_image(root=Bank)
    assert again.root.accounts["a"].tags == {"vip"} and again.root.name == "renamed"


def test_time_travel_reads_logs_with_meta(make_image: Images) -> None:
    """img.at(seq) of a tx.meta row's seq is the state before its transaction; at() after it and diff() see the
    transaction's changes."""
    img = make_image(root=Box)
    img.root.content = 1
    with img.transaction(meta={"user": "ada"}):
        img.root.content = 2
        img.root.other = 3
    start = _meta_rows(img)[0].seq
    with img.at(start) as before, img.at(img.seq) as after:
        assert (before.root.content, before.root.other) == (1, None)
        assert (after.root.content, after.root.other) == (2, 3)
    assert {d.path for d in img.diff(start)} == {"root.content", "root.other"}


def test_snapshots_and_compaction_keep_working_with_meta(make_image: Images) -> None:
    """Snapshots taken inside an annotation carry no meta themselves; reopening from the snapshot, and
    after compaction, gives the same state; the meta of kept transactions is still read."""
    img = make_image(root=Bank)
    _annotated_history(img)
    with img.annotate(user="carol"):
        seq = img.snapshot()
        img.root.name = "after"
    snap = next(e for e in img.events() if e.seq == seq)
    assert snap.kind == "snapshot" and snap.meta == {}
    img.close()
    again = make_image(root=Bank)
    assert again.root.name == "after" and again.root.accounts["a"].balance == 5
    assert _last_tx(again)[0].meta == {"user": "carol"}
    again.store.delete_events_before(seq)
    again.store.delete_snapshots_before(seq)
    again.close()
    third = make_image(root=Bank)
    assert third.root.name == "after" and _last_tx(third)[0].meta == {"user": "carol"}


def test_background_snapshots_run_between_annotated_commits(make_image: Images) -> None:
    """Automatic snapshots written while annotated commits go on store the same state the log gives."""
    img = make_image(root=Box, snapshot_every=7)
    img.root.content = []
    for i in range(60):
        with img.annotate(user=f"u{i % 3}"):
            img.root.content.append(i)
            if i % 5 == 0:
                with img.transaction(meta={"i": i}):
                    img.root.other = i
    img.close()
    again = make_image(root=Box)
    assert again.store.snapshots() and list(again.root.content) == list(range(60)) and again.root.other == 55
    assert memimg.replay(again.events()).content == list(range(60))


def test_events_reads_meta_from_a_running_transaction_start_even_if_the_start_is_compacted(
    make_image: Images,
) -> None:
    """events(since) starting inside a transaction whose first row is gone gives its events meta {}."""
    img = make_image(root=Box)
    with img.transaction(meta={"user": "ada"}):
        img.root.content = 1
        img.root.other = 2
    start = _meta_rows(img)[0].seq
    img.store.delete_events_before(start + 1)  # the meta row is gone, the transaction's later rows stay
    rest = _events(img, since=start)
    assert rest and rest[0].tx == start and rest[0].meta == {}


# -- command line --------------------------------------------------------------------------------


def test_memimg_log_shows_each_transactions_meta(tmp_path: Any) -> None:
    """memimg log shows the tx.meta row, and the meta on the first event shown of a transaction whose
    meta row is filtered out; --json gives "meta" on every event of an annotated transaction."""
    path = str(tmp_path / "log.db")
    img = memimg.open(path, root=Box)
    img.root.content = 0
    with img.annotate(user="ada", request="r-42"):
        img.root.content = 1
        img.snapshot()  # verify compares it with the log's state at its seq
        img.root.other = 2
    img.close()
    runner = CliRunner()
    text = runner.invoke(cli, ["log", path])
    assert text.exit_code == 0, text.output
    assert 'tx.meta      #0      [{"user": "ada", "request": "r-42"}]' in text.output
    filtered = runner.invoke(cli, ["log", path, "--kind", "obj.set"]).output.splitlines()
    assert ['meta {"user": "ada", "request": "r-42"}' in line for line in filtered[-3:]] == [False, True, True]
    lines = [json.loads(line) for line in runner.invoke(cli, ["log", path, "--json"]).output.splitlines()]
    meta = {"user": "ada", "request": "r-42"}
    assert [(line["kind"], line.get("meta")) for line in lines[-6:]] == [
        ("obj.set", None),
        ("tx.meta", meta),
        ("obj.set", meta),
        ("snapshot", None),
        ("tx.meta", meta),
        ("obj.set", meta),
    ]
    assert runner.invoke(cli, ["verify", path]).exit_code == 0
    shown = runner.invoke(cli, ["show", path])
    assert shown.exit_code == 0 and "content" in shown.output
    assert runner.invoke(cli, ["info", path]).exit_code == 0


def test_compact_keeps_history_in_whole_transactions(tmp_path: Any) -> None:
    """--keep-events N falling inside a transaction keeps that whole transaction, its meta row first."""
    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = 0
        with img.transaction(meta={"user": "ada"}):
            img.root.content = 1
            img.root.other = 2
            del img.root.content  # (assigned again, content would be one event: a commit writes its outcome)
    r = CliRunner().invoke(cli, ["compact", path, "--keep-events", "3"])
    assert r.exit_code == 0, r.output
    with memimg.open(path, root=Box) as img:
        events = [e for e in img.events() if e.kind != "snapshot"]
        tx = [e for e in events if e.tx == events[-1].tx]
        assert [e.kind for e in tx] == ["tx.meta", "obj.set", "obj.set", "obj.del"]
        assert all(e.meta == {"user": "ada"} for e in tx)


def _append_meta_second(path: str) -> int:
    """Append a transaction whose ``tx.meta`` row is its second; returns that row's seq."""
    from memimg.core._rows import event_checksum

    store = memimg.SQLiteStore(path)
    head = store.head()
    tx, ts = head + 1, 1_700_000_000_000_000
    rows: list[EventRow] = []
    for seq, kind, target, data in ((tx, "obj.set", 1, b'[["content",5]]'), (tx + 1, "tx.meta", 0, b'[[{"u":1}]]')):
        rows.append(EventRow(seq, tx, ts, kind, target, data, event_checksum(seq, tx, ts, kind, target, data)))
    store.append(rows, head)
    store.close()
    return tx + 1


@pytest.mark.parametrize("bad", [[[1]], [[{"a": [1, 2]}]], [[{"a": {"b": 1}}]], "second"])
def test_a_malformed_meta_row_is_refused_by_open_verify_and_events_alike(tmp_path: Any, bad: Any) -> None:
    """A tx.meta row (checksum valid) that is not first in its transaction or holds no flat dict of scalars:
    opening, verify and reading the events all refuse it, naming its seq."""
    from tests.tampering import append_event

    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = 1
    seq = _append_meta_second(path) if bad == "second" else append_event(path, "tx.meta", 0, bad)
    with pytest.raises(memimg.CorruptLogError, match=f"event seq {seq} ") as err:
        memimg.open(path, root=Box)
    assert err.value.seq == seq
    r = CliRunner().invoke(cli, ["verify", path])
    assert r.exit_code != 0 and f"event seq {seq} " in r.output, r.output
    store = memimg.SQLiteStore(path)
    try:
        with pytest.raises(memimg.CorruptLogError, match=f"event seq {seq} "):
            list(read_events(store.read))
    finally:
        store.close()
