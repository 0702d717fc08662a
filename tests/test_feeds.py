"""Change feeds: ``img.subscribe(callback, to=...)`` -- what is delivered, when, once, and to whom.

Every test runs on every store (the ``make_image`` fixture); a second image
opened on the same log stands for another process -- but for the law on
random programs, where the other process is a real one
(``tests/feeds_worker.py``), on every store that processes share.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import multiprocessing
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import memimg
from memimg import MISSING
from memimg.core._rows import EventRow, event_checksum
from memimg.image._feeds import first_noted
from tests import feeds_worker
from tests.conftest import POSTGRES_URL, Images, StoreFactory
from tests.models import Account, Bank, Box, Entry, Node
from tests.test_history_laws import ops


@memimg.persistent
class Savings(Account):
    rate: int = 0


class Collect:
    """A callback that keeps what it is given."""

    def __init__(self) -> None:
        self.commits: list[memimg.Commit] = []

    def __call__(self, commit: memimg.Commit) -> None:
        self.commits.append(commit)

    @property
    def changes(self) -> list[memimg.Change]:
        return [c for commit in self.commits for c in commit.changes]

    def said(self) -> list[tuple[str, str | None, Any, Any, Any]]:
        return [(c.kind, c.field, c.key, c.old, c.new) for c in self.changes]


def eventually(condition: Any, timeout: float = 20.0) -> None:
    """Wait until *condition()* holds (a delivery made by another thread), failing after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not delivered in time"
        time.sleep(0.01)


def bank_image(make_image: Images) -> tuple[memimg.MemoryImage, Account]:
    img = make_image(root=Bank)
    img.root.accounts["ada"] = acct = Account("ada", balance=Decimal(5))
    return img, acct


# -- what is delivered ------------------------------------------------------------------------------------------


def test_a_field_subscription_gets_old_and_new_of_that_field_only(make_image: Images) -> None:
    """A subscription to (obj, field) gets a Commit per commit changing that field, holding only those changes,
    with the value before and after; commits changing other things are not delivered."""
    img, acct = bank_image(make_image)
    got = Collect()
    img.subscribe(got, to=(acct, "balance"))
    acct.balance += 10
    acct.owner = "Ada"  # another field: no delivery
    acct.tags.add("vip")  # its collection: another object
    with img.transaction():
        acct.owner = "ada"
        acct.balance -= 3
    del acct.balance
    assert got.said() == [
        ("obj.set", "balance", None, Decimal(5), Decimal(15)),
        ("obj.set", "balance", None, Decimal(15), Decimal(12)),
        ("obj.del", "balance", None, Decimal(12), MISSING),
    ]
    assert all(c.target is acct for c in got.changes)
    assert [len(c.changes) for c in got.commits] == [1, 1, 1]


def test_an_object_subscription_gets_every_change_whose_target_it_is(make_image: Images) -> None:
    """Subscribing to an entity follows its fields; subscribing to a tracked collection follows its items
    (each with what it took out and put in)."""
    img, acct = bank_image(make_image)
    fields, tags, entries = Collect(), Collect(), Collect()
    img.subscribe(fields, to=acct)
    img.subscribe(tags, to=acct.tags)
    img.subscribe(entries, to=acct.entries)
    acct.owner = "Ada"
    acct.tags.add("a")
    acct.tags.update({"b"})
    acct.tags.discard("a")
    e = Entry("x", Decimal(1))
    acct.entries.append(e)
    acct.entries.insert(0, Entry("y", Decimal(2)))
    acct.entries.reverse()
    assert fields.said() == [("obj.set", "owner", None, "ada", "Ada")]
    assert tags.said() == [
        ("set.add", None, None, (), ("a",)),
        ("set.add", None, None, (), ("b",)),
        ("set.discard", None, None, ("a",), ()),
    ]
    kinds = [(c.kind, c.index, len(c.old), len(c.new)) for c in entries.changes]
    assert kinds == [("list.append", 0, 0, 1), ("list.insert", 0, 0, 1), ("list.reverse", 0, 2, 2)]
    assert entries.changes[0].new == (e,)
    assert entries.changes[2].new == tuple(acct.entries)


def test_a_class_subscription_follows_every_instance_subclasses_included(make_image: Images) -> None:
    """to=SomeClass gets the changes of every object of that class and of its subclasses, and no others."""
    img = make_image(root=Bank)
    img.root.accounts["ada"] = ada = Account("ada")
    img.root.accounts["sam"] = sam = Savings("sam")
    got = Collect()
    img.subscribe(got, to=Account)
    ada.owner = "Ada"
    sam.rate = 2
    img.root.name = "bank"  # a Bank: not followed
    assert [(c.target, c.field, c.new) for c in got.changes] == [(ada, "owner", "Ada"), (sam, "rate", 2)]


def test_an_all_subscription_gets_every_change_with_the_commit_facts(make_image: Images) -> None:
    """subscribe(cb) follows everything; each Commit says first_seq, seq, tx, time, meta and local, and each
    change carries the same seq range, tx, time and meta."""
    img, acct = bank_image(make_image)
    got = Collect()
    img.subscribe(got)
    start = img.seq
    before = time.time()
    with img.transaction(meta={"user": "ada"}):
        acct.balance = Decimal(1)
        acct.tags.add("t")
    (commit,) = got.commits
    assert (commit.first_seq, commit.seq, commit.tx) == (start + 1, img.seq, start + 1)
    assert commit.meta == {"user": "ada"}
    assert commit.local is True
    assert before - 1 <= commit.time.timestamp() <= time.time() + 1
    assert [c.kind for c in commit.changes] == ["obj.set", "set.add"]
    assert all(c.tx == commit.tx and c.time == commit.time and c.meta == commit.meta for c in commit.changes)
    assert all(commit.first_seq < c.seq <= commit.seq for c in commit.changes)  # the first is the tx.meta event


def test_delivered_changes_are_what_history_says(make_image: Images) -> None:
    """A feed's changes are the image's history of the same events: Change records equal to history()'s."""
    img = make_image(root=Box)
    img.root.content = n = Node()
    got = Collect()
    img.subscribe(got)
    start = img.seq
    n.value = 1
    n.children.extend([1, 2, 3])
    n.children[1:3] = ["x"]
    n.children.sort(key=str)
    n.meta.update({"a": 1, "b": 2})
    n.meta.clear()
    with img.transaction():
        n.value = 2
        n.value = n
        n.meta["c"] = 3
        del n.meta["c"]
    expected = sorted(
        (c for obj in (n, n.children, n.meta) for c in img.history(obj, since=start)), key=lambda c: c.seq
    )
    assert got.changes == expected


def test_old_values_are_those_before_each_event_of_a_transaction(make_image: Images) -> None:
    """In a commit of several events, each change's old value is the state just before that event -- not the
    transaction's final state, which readers are shown while the commit is applied."""
    img = make_image(root=Box)
    img.root.content = n = Node(next={1})
    n.meta["a"] = 1
    got = Collect()
    img.subscribe(got)
    with img.transaction():
        n.meta["a"] = 2
        n.children.append("x")
        n.children.append("y")
        n.meta["a"] = 3
        n.next.clear()
        n.value = 1
        del n.value  # (two assignments in a row would be one change: see test_tx's outcome tests)
        n.value = 2
    assert got.said() == [
        ("dict.set", None, "a", 1, 2),
        ("list.append", None, None, (), ("x",)),
        ("list.append", None, None, (), ("y",)),
        ("dict.set", None, "a", 2, 3),
        ("set.clear", None, None, (1,), ()),
        ("obj.set", "value", None, None, 1),
        ("obj.del", "value", None, 1, memimg.MISSING),
        ("obj.set", "value", None, memimg.MISSING, 2),
    ]
    assert [c.index for c in got.changes if c.kind == "list.append"] == [0, 1]


def test_a_closed_subscription_gets_nothing_more(make_image: Images) -> None:
    """close(), or leaving its with block, stops a subscription; the others go on."""
    img, acct = bank_image(make_image)
    a, b = Collect(), Collect()
    sub = img.subscribe(a, to=acct)
    with img.subscribe(b):
        acct.owner = "x"
    sub.close()
    sub.close()  # twice is fine
    acct.owner = "y"
    assert [c.new for c in a.changes] == ["x"]
    assert [c.new for c in b.changes] == ["x"]
    assert "closed" in repr(sub)


def test_a_lone_field_subscription_gets_no_other_fields_deletion_or_update(make_image: Images) -> None:
    """A subscription to (obj, field), the only one: deleting another field of obj, or an obj.update (several
    fields at once, from another process) of other fields, is not delivered; an update of its field and others
    gives it that field's change alone."""
    img = make_image(root=Box)
    box = img.root
    box.content, box.other = 1, "x"
    got = Collect()
    img.subscribe(got, to=(box, "content"))
    del box.other
    store = make_image.store()

    def update(*pairs: tuple[str, Any]) -> None:
        seq = img.seq + 1
        payload = orjson.dumps([[[list(p) for p in pairs]]])
        row = EventRow(seq, seq, 5, "obj.update", 1, payload, event_checksum(seq, seq, 5, "obj.update", 1, payload))
        store.append([row], seq - 1)
        img.refresh()

    update(("other", "y"))
    assert box.other == "y" and got.commits == []
    update(("content", 2), ("other", "z"))
    assert (box.content, box.other) == (2, "z")
    assert got.said() == [("obj.update", "content", None, 1, 2)]


def test_delivery_follows_the_subscriptions_a_commit_was_noted_for(make_image: Images) -> None:
    """A commit made in a callback is delivered to the subscriptions there were when it was made, though some
    close before it is delivered: a field subscription is given its field's changes only, even when it is the
    last one left."""
    img, acct = bank_image(make_image)
    s0_got: list[int] = []
    s1, s2 = Collect(), Collect()
    subs: dict[str, memimg.Subscription] = {}

    def s0(commit: memimg.Commit) -> None:
        s0_got.append(commit.seq)
        if len(s0_got) == 1:
            with img.transaction():  # queued behind this delivery, noted for s0, s1 and s2
                acct.owner = "o"
                acct.balance = Decimal(5)
            subs["s2"].close()
            subs["s0"].close()

    subs["s0"] = img.subscribe(s0)
    img.subscribe(s1, to=(acct, "balance"))
    subs["s2"] = img.subscribe(s2)
    acct.balance = Decimal(1)
    assert len(s0_got) == 1 and s2.commits == []  # closed before its turn came
    assert [[(c.field, c.new) for c in commit.changes] for commit in s1.commits] == [
        [("balance", Decimal(1))],
        [("balance", Decimal(5))],
    ]


def test_only_commits_after_the_subscription_are_delivered(make_image: Images) -> None:
    """A subscription starts at the image's seq when it is made: earlier commits are never delivered to it."""
    img, acct = bank_image(make_image)
    acct.owner = "before"
    got = Collect()
    img.subscribe(got)
    acct.owner = "after"
    assert [c.new for c in got.changes] == ["after"]


def test_a_noted_commit_is_made_from_any_row_a_store_gives() -> None:
    """The first change noted of a commit makes its Commit from the event's row -- a tuple, an EventRow, or any
    sequence a driver gives (a row of SQLAlchemy's) -- with the seq, tx and time of the row, compiled or not."""

    class DriverRow:
        def __init__(self, *items: Any) -> None:
            self.items = items

        def __getitem__(self, at: int) -> Any:
            return self.items[at]

    target, meta = object(), {"user": "ada"}
    rows = [(7, 6, 1_700_000_000_000_000, "obj.set"), EventRow(7, 6, 1_700_000_000_000_000, "obj.set", 1, b"", 0)]
    for row in [*rows, DriverRow(7, 6, 1_700_000_000_000_000)]:
        commit = first_noted(row, meta, (), target, "obj.set", "balance", None, 1, 2, None)
        commit.seq, commit.local = 7, True
        assert (commit.tx, commit.seq, commit.meta, commit.time) == (6, 7, meta, commit.changes[0].time)
        assert commit.changes == [
            memimg.Change(7, 6, 1_700_000_000_000_000, meta, target, "obj.set", "balance", None, 1, 2, None)
        ]
        assert commit.meta is commit.changes[0].meta
    with pytest.raises(IndexError):
        first_noted((7, 6), meta, (), target, "obj.set", "balance", None, 1, 2, None)


# -- other processes' commits --------------------------------------------------------------------------------------


def test_other_processes_commits_are_delivered_when_applied(make_image: Images) -> None:
    """Commits of another process are delivered (local=False, with their metadata and old values) when refresh(),
    the start of a transaction, or a commit that had to catch up applies them."""
    img, acct = bank_image(make_image)
    other = make_image(root=Bank)
    theirs = other.root.accounts["ada"]
    got = Collect()
    img.subscribe(got, to=(acct, "balance"))
    with other.transaction(meta={"by": "other"}):
        theirs.balance = Decimal(7)
    assert got.commits == []  # not applied here yet
    assert img.refresh() > 0
    (commit,) = got.commits
    assert commit.local is False and commit.meta == {"by": "other"}
    assert [(c.old, c.new, c.target) for c in commit.changes] == [(Decimal(5), Decimal(7), acct)]
    theirs.balance = Decimal(8)
    with img.transaction():  # its start catches up
        assert [c.new for c in got.changes] == [Decimal(7), Decimal(8)]
    theirs.balance = Decimal(9)
    acct.owner = "Ada"  # this commit catches up first
    assert [c.new for c in got.changes] == [Decimal(7), Decimal(8), Decimal(9)]
    assert [c.local for c in got.commits] == [False, False, False]


def test_other_processes_single_field_sets_applied_together_are_delivered_one_commit_each(make_image: Images) -> None:
    """Another process's single field sets applied by one refresh() are delivered as one Commit each, in order,
    each with its own seq and the old value before it."""
    img, acct = bank_image(make_image)
    other = make_image(root=Bank)
    theirs = other.root.accounts["ada"]
    got = Collect()
    img.subscribe(got, to=(acct, "balance"))
    for n in (6, 7, 8):
        theirs.balance = Decimal(n)
    assert img.refresh() == 3
    assert [[(c.old, c.new) for c in commit.changes] for commit in got.commits] == [
        [(Decimal(5), Decimal(6))],
        [(Decimal(6), Decimal(7))],
        [(Decimal(7), Decimal(8))],
    ]
    seqs = [commit.seq for commit in got.commits]
    assert seqs == sorted(set(seqs)) and seqs[-1] == other._engine.seq


def test_follow_delivers_other_processes_commits(make_image: Images) -> None:
    """An image following the log (follow()) delivers other processes' commits as its thread applies them."""
    img, acct = bank_image(make_image)
    other = make_image(root=Bank)
    arrived = threading.Event()
    got: list[memimg.Commit] = []

    def on_commit(commit: memimg.Commit) -> None:
        got.append(commit)
        arrived.set()

    img.subscribe(on_commit, to=acct)
    img.follow()
    other.root.accounts["ada"].owner = "from afar"
    assert arrived.wait(20)
    assert [(c.field, c.new) for c in got[0].changes] == [("owner", "from afar")]
    assert got[0].local is False


# -- delivery -----------------------------------------------------------------------------------------------------


def test_callbacks_run_outside_the_lock_and_may_write(make_image: Images) -> None:
    """A callback runs without the image's lock (another thread can commit while it runs) and may write to the
    image; its own commit is delivered after the current delivery finishes, never inside it."""
    img, acct = bank_image(make_image)
    trace: list[str] = []

    def on_commit(commit: memimg.Commit) -> None:
        (change,) = commit.changes
        trace.append(f"enter {change.new}")
        if change.new == "a":
            assert not img._engine.lock._is_owned()
            t = threading.Thread(target=setattr, args=(img.root, "name", "from a thread"))
            t.start()
            t.join(20)
            assert not t.is_alive(), "another thread could not commit while a callback ran"
            acct.owner = "b"  # a write from the callback
            assert acct.owner == "b"
        trace.append(f"leave {change.new}")

    img.subscribe(on_commit, to=(acct, "owner"))
    acct.owner = "a"
    assert trace == ["enter a", "leave a", "enter b", "leave b"]
    assert img.root.name == "from a thread"


def test_a_failing_callback_is_logged_and_harms_nothing(make_image: Images, caplog: pytest.LogCaptureFixture) -> None:
    """An exception in a callback is logged on logger memimg, naming the subscription and seq; the commit stands,
    the other subscriptions get it, and the failing one gets later commits."""
    img, acct = bank_image(make_image)
    calls: list[int] = []

    def broken(commit: memimg.Commit) -> None:
        calls.append(commit.seq)
        raise RuntimeError("boom")

    first, last = Collect(), Collect()
    img.subscribe(first, to=acct)
    sub = img.subscribe(broken, to=acct)
    img.subscribe(last, to=acct)
    with caplog.at_level(logging.ERROR, logger="memimg"):
        acct.owner = "x"
        acct.owner = "y"
    assert acct.owner == "y"
    assert len(calls) == 2 and len(first.commits) == 2 and len(last.commits) == 2
    records = [r for r in caplog.records if r.name == "memimg" and "change feed" in r.getMessage()]
    assert len(records) == 2
    assert repr(sub) in records[0].getMessage() and f"seq {calls[0]}" in records[0].getMessage()
    assert records[0].exc_info is not None and "boom" in str(records[0].exc_info[1])
    img.close()
    assert make_image(root=Bank).root.accounts["ada"].owner == "y"


def test_each_commit_is_delivered_once_in_order_from_many_threads(make_image: Images) -> None:
    """With several threads committing, each subscription gets every commit exactly once, in seq order."""
    img = make_image(root=Box)
    img.root.content = n = Node()
    got = Collect()
    img.subscribe(got, to=n.meta)

    def work(i: int) -> None:
        for j in range(20):
            n.meta[f"{i}-{j}"] = j

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seqs = [c.seq for c in got.commits]
    assert seqs == sorted(set(seqs)) and len(seqs) == 60
    assert {c.key for c in got.changes} == set(n.meta)


def test_a_keyboard_interrupt_in_a_callback_loses_no_delivery(make_image: Images) -> None:
    """A BaseException from a callback reaches the writer after its commit; the subscriptions not yet called get
    that commit all the same (from a helper thread, at once), and none gets it twice."""
    img, acct = bank_image(make_image)
    first, last = Collect(), Collect()
    interrupt = [True]

    def stop(commit: memimg.Commit) -> None:
        if interrupt.pop():
            raise KeyboardInterrupt

    img.subscribe(first, to=acct)
    img.subscribe(stop, to=acct)
    img.subscribe(last, to=acct)
    with pytest.raises(KeyboardInterrupt):
        acct.owner = "x"
    assert acct.owner == "x"
    eventually(lambda: len(last.commits) == 1)
    assert [c.new for c in first.changes] == [c.new for c in last.changes] == ["x"]
    interrupt.append(False)
    acct.owner = "y"
    eventually(lambda: len(last.commits) == 2)
    assert [c.new for c in first.changes] == ["x", "y"]
    assert [c.new for c in last.changes] == ["x", "y"]


# -- bad input ----------------------------------------------------------------------------------------------------


class InterruptedAfterRelease:
    """A feed's delivery token whose release, once armed, is followed by a KeyboardInterrupt (as a signal
    arriving right after it would raise)."""

    def __init__(self, token: Any) -> None:
        self.token = token
        self.armed = False

    def acquire(self, blocking: bool = True) -> bool:
        return bool(self.token.acquire(blocking))

    def release(self) -> None:
        self.token.release()
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def _is_owned(self) -> bool:
        return bool(self.token._is_owned())


def test_a_keyboard_interrupt_after_a_delivery_leaves_nothing_queued(make_image: Images) -> None:
    """A KeyboardInterrupt reaching the writer just as it gives back the delivery token still hands another
    thread's commit, queued meanwhile, on to be delivered (not left until some later commit)."""
    img, acct = bank_image(make_image)
    got: list[int] = []

    def on_commit(commit: memimg.Commit) -> None:
        got.append(commit.seq)
        if len(got) == 1:  # another thread commits while this one delivers: its commit waits in the queue
            other = threading.Thread(target=setattr, args=(acct, "owner", "other"))
            other.start()
            other.join(20)
            token.armed = True

    img.subscribe(on_commit)
    feed = img._engine.writer.feed
    assert feed is not None
    token = feed.delivering = InterruptedAfterRelease(feed.delivering)
    with pytest.raises(KeyboardInterrupt):
        acct.balance = Decimal(1)
    eventually(lambda: len(got) == 2)
    assert got == sorted(got)


def test_bad_subscriptions_are_refused_clearly(make_image: Images) -> None:
    """An object of another image, an object not attached yet, a field the class lacks, a field of a collection,
    a class that is not persistent, a non-callable, and a closed image are refused with errors saying so."""
    img, acct = bank_image(make_image)
    with memimg.open(":memory:", root=Bank) as elsewhere:
        elsewhere.root.accounts["x"] = foreign = Account("x")
        with pytest.raises(memimg.MemimgError, match="not an object of the image .*another image"):
            img.subscribe(print, to=foreign)
    with pytest.raises(memimg.MemimgError, match="not part of the image .* attach it and commit first"):
        img.subscribe(print, to=Account("loose"))
    with pytest.raises(memimg.MemimgError, match="has no field 'balanse'.*balance") as err:
        img.subscribe(print, to=(acct, "balanse"))
    assert err.value.field == "balanse"  # type: ignore[attr-defined]
    with pytest.raises(memimg.MemimgError, match="has no fields"):
        img.subscribe(print, to=(acct.tags, "x"))
    with pytest.raises(memimg.MemimgError, match="not a @persistent class"):
        img.subscribe(print, to=int)
    with pytest.raises(memimg.MemimgError, match="not a persistent object"):
        img.subscribe(print, to="ada")
    with pytest.raises(TypeError, match="callback must be callable"):
        img.subscribe("print", to=acct)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="object, 'field name'"):
        img.subscribe(print, to=(acct,))
    img.close()
    with pytest.raises(memimg.ClosedError):
        img.subscribe(print)


# -- the law: an all-subscription retells the log, in two processes ---------------------------------------------

who = st.sampled_from("AB")
feed_steps = st.one_of(
    st.tuples(st.just("op"), who, ops),
    st.tuples(st.just("tx"), who, st.lists(ops, min_size=1, max_size=4), st.booleans(), st.booleans()),
    st.tuples(st.just("refresh"), who),
    st.tuples(st.just("subscribe"), who),
)


class OtherProcessLost(BaseException):  # not an Exception: Hypothesis neither shrinks nor retries it
    """The other process died, hung or answered out of turn: the law cannot go on with it (every example after
    would fail alike, for minutes)."""


class OtherProcess:
    """A process of its own serving an image on the logs a test opens (``tests/feeds_worker.py``), asked one
    numbered command at a time; lost (killed, and failing every ask) once it dies, hangs or answers out of
    turn."""

    #: seconds an answer may take (a step of the worker takes well under one)
    timeout = 20.0

    def __init__(self) -> None:
        self.conn, theirs = multiprocessing.Pipe()
        self.proc = multiprocessing.get_context("spawn").Process(target=feeds_worker.serve, args=(theirs,), daemon=True)
        self.proc.start()
        theirs.close()
        self.number = 0
        self.lost: str | None = None

    def ask(self, *command: Any) -> Any:
        """Send *command* and return its answer (failing on its error); :class:`OtherProcessLost` if the
        process is lost, or is lost now."""
        if self.lost is None:
            self.number += 1
            try:
                self.conn.send((self.number, *command))
                if not self.conn.poll(self.timeout):
                    raise TimeoutError(f"no answer in {self.timeout} s")
                number, status, answer = self.conn.recv()
                if number != self.number:
                    raise RuntimeError(f"the answer to command #{number}, not #{self.number}")
            except (OSError, EOFError, TimeoutError, RuntimeError) as err:
                self.stop()
                self.lost = (
                    f"the other process (tests/feeds_worker.py) was lost on {command!r}: {err!r}; "
                    f"its exit code: {self.proc.exitcode}"
                )
            else:
                assert status == "ok", f"the other process failed on {command!r}:\n{answer}"
                return answer
        raise OtherProcessLost(self.lost)

    def stop(self) -> None:
        """End the process: ask it to, then kill it if it has not ended in a few seconds."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.conn.close()


@pytest.fixture(params=["sqlite", "ndjson"] + (["postgres"] if POSTGRES_URL else []))
def other_process(request: pytest.FixtureRequest) -> Iterator[tuple[str, OtherProcess]]:
    """The other process of the law, for all the examples of one store kind."""
    other = OtherProcess()
    try:
        yield request.param, other
    finally:
        if other.lost is None:
            other.stop()


def check_retold(since: int, delivered: list[Any], history: list[Any], txs: dict[int, int], local: Any) -> None:
    """What an all-subscription made at seq *since* was *delivered* (plain data, see ``tests/feeds_worker``),
    concatenated, is the *history* of the log after it, commit by commit, each once, in seq order; each commit
    says its seqs, transaction (*txs*: its last seq), time and metadata, and whether it was made here
    (*local(tx)*)."""
    assert [c for _, changes in delivered for c in changes] == history
    seqs = [commit[1] for commit, _ in delivered]
    assert seqs == sorted(set(seqs)) and all(s > since for s in seqs)
    for (first_seq, seq, tx, time_, meta, was_local), changes in delivered:
        assert tx == first_seq and txs[tx] == seq and was_local is local(tx)
        assert changes and all(c[1] == tx and c[2] == time_ and c[3] == meta for c in changes)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(program=st.lists(feed_steps, max_size=16))
@example(program=[("tx", "B", [("del",)], False, False), ("op", "A", ("del",))])  # A deletes what B just did
def test_an_all_subscription_retells_the_log_and_filters_take_their_part(
    other_process: tuple[str, OtherProcess], program: list[tuple[Any, ...]]
) -> None:
    """For random programs of two processes on one log -- this one (A) and another (B), each with an image
    (single mutations, transactions committed or discarded, refreshes, subscriptions made along the way): what
    an all-subscription in either process was delivered, concatenated, is the history of the log after it
    subscribed, in order, each commit once, each told whether its process made it; a field, an object and a
    class subscription were delivered exactly the matching part, commit by commit."""
    kind, other = other_process
    folder = tempfile.mkdtemp()
    stores = StoreFactory(kind, Path(folder))
    a: memimg.MemoryImage | None = None
    opened = False
    try:
        a = stores.open(root=Box, snapshot_every=None)
        a.root.content = Node(next=set())
        b_seq = other.ask("open", kind, folder, stores.schema)
        opened = True
        n = a.root.content
        everything: list[tuple[int, Collect]] = []  # A's all-subscriptions
        made_by: dict[int, str] = {}  # tx -> the process that committed it

        def subscribe_all(whom: str) -> int:
            if whom == "B":
                return int(other.ask("subscribe"))
            assert a is not None
            got = Collect()
            a.subscribe(got)
            everything.append((a.seq, got))
            return b_seq

        subscribe_all("A")
        subscribe_all("B")
        field, obj, cls = Collect(), Collect(), Collect()
        a.subscribe(field, to=(n, "value"))
        a.subscribe(obj, to=n.children)
        a.subscribe(cls, to=Node)
        for step in program:
            name, whom, *args = step
            head = max(a.seq, b_seq)  # each image applies its own commits at once, and they take turns
            if whom == "B":
                b_seq = subscribe_all("B") if name == "subscribe" else other.ask(name, *args)
            elif name == "subscribe":
                subscribe_all("A")
            else:
                feeds_worker.take(a, name, args, by="A")
            made_by.update((e.tx, whom) for e in a.events(since=head))
        a.refresh()
        for since, got in everything:
            delivered = [(feeds_worker.told(c), [feeds_worker.said(x) for x in c.changes]) for c in got.commits]
            history = [feeds_worker.said(x) for x in feeds_worker.retold(a, since)]
            txs = {e.tx: e.seq for e in a.events(since=since)}
            check_retold(since, delivered, history, txs, lambda tx: made_by[tx] == "A")
        theirs = other.ask("finish")
        assert len(theirs) == 1 + sum(step[:2] == ("subscribe", "B") for step in program)
        for since, delivered, history, txs in theirs:
            check_retold(since, delivered, history, txs, lambda tx: made_by[tx] == "B")
        _, all_a = everything[0]
        for sub, wanted in (
            (field, lambda c: c.target is n and c.field == "value"),
            (obj, lambda c: c.target is n.children),
            (cls, lambda c: type(c.target) is Node),
        ):
            assert sub.changes == [c for c in all_a.changes if wanted(c)]
            assert [c.seq for c in sub.commits] == [c.seq for c in all_a.commits if any(map(wanted, c.changes))]
    finally:
        try:
            if a is not None:
                a.close()
        finally:
            try:
                if opened and other.lost is None:
                    other.ask("close")
            finally:
                try:
                    stores.cleanup()
                finally:
                    shutil.rmtree(folder, ignore_errors=True)


# -- changes(since=...): the blocking iterator ---------------------------------------------------------------------


def test_changes_replays_the_log_after_since_then_follows(make_image: Images) -> None:
    """changes(since=s) gives every commit after s -- first those in the log, with old values and this image's
    objects, then new ones as they are made -- and stops after `timeout` seconds without one."""
    img, acct = bank_image(make_image)
    since = img.seq
    acct.balance = Decimal(6)
    with img.transaction(meta={"by": "ada"}):
        acct.tags.add("x")
        acct.balance = Decimal(7)
    stream = img.changes(since=since, timeout=0.5)
    first = next(stream)
    assert [(c.target, c.field, c.old, c.new) for c in first.changes] == [(acct, "balance", Decimal(5), Decimal(6))]
    second = next(stream)
    assert second.meta == {"by": "ada"} and second.local is False
    assert [(c.target, c.old, c.new) for c in second.changes] == [
        (acct.tags, (), ("x",)),
        (acct, Decimal(6), Decimal(7)),
    ]
    acct.owner = "Ada"  # after the call: followed
    third = next(stream)
    assert third.local is True and [(c.field, c.new) for c in third.changes] == [("owner", "Ada")]
    assert list(stream) == []  # no commit within the timeout: the iteration ends
    assert [c.seq for c in (first, second, third)] == [since + 1, second.seq, img.seq]


def test_changes_resumes_from_a_stored_seq_without_loss_or_repeat(make_image: Images) -> None:
    """A consumer that stores the seq of the last commit it handled and starts again from it gets exactly the
    commits after it, whatever was committed in between (by this process or another), across reopening."""
    img, acct = bank_image(make_image)
    handled: list[int] = []
    stream = img.changes(since=img.seq, timeout=0.2)
    acct.balance = Decimal(1)
    acct.balance = Decimal(2)
    for commit in stream:
        handled.append(commit.seq)
        if len(handled) == 1:
            break  # the consumer stops (a restart), having stored handled[-1]
    other = make_image(root=Bank)
    other.root.accounts["ada"].balance = Decimal(3)
    img.close()
    img = make_image(root=Bank)
    rest = list(img.changes(since=handled[-1], timeout=0.2))
    assert [c.changes[0].new for c in rest] == [Decimal(2), Decimal(3)]
    assert handled[-1] < rest[0].seq < rest[1].seq


def test_changes_from_other_processes_arrive_while_waiting(make_image: Images) -> None:
    """While the iterator blocks, another process's commit is applied (the image follows the log) and given."""
    img, acct = bank_image(make_image)
    other = make_image(root=Bank)
    stream = img.changes(since=img.seq, timeout=20)
    threading.Timer(0.2, setattr, (other.root.accounts["ada"], "owner", "far")).start()
    commit = next(stream)
    assert commit.local is False and [(c.target, c.new) for c in commit.changes] == [(acct, "far")]
    stream.close()


def test_changes_refuses_a_seq_past_the_head_or_compacted_away(make_image: Images) -> None:
    """since past the head of the log, or behind a compaction, is a HistoryError at the call; a negative or
    non-int since a ValueError."""
    img, acct = bank_image(make_image)
    with pytest.raises(memimg.HistoryError, match="past the head") as err:
        img.changes(since=img.seq + 5)
    assert err.value.head == img.seq  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="since"):
        img.changes(since=-1)
    acct.balance = Decimal(1)
    seq = img.snapshot()
    acct.balance = Decimal(2)
    img.store.delete_events_before(seq)
    with pytest.raises(memimg.HistoryError, match="no longer kept"):
        img.changes(since=1)
    assert [c.changes[0].new for c in img.changes(since=seq, timeout=0.1)] == [Decimal(2)]


def test_changes_resumes_from_the_oldest_seq_a_compaction_error_names(make_image: Images) -> None:
    """The HistoryError of a since behind a compaction names in ``oldest`` a seq changes() resumes from: it
    replays the commits after it, and the message says which seqs are lost."""
    img, acct = bank_image(make_image)
    acct.balance = Decimal(1)
    acct.balance = Decimal(2)
    seq = img.snapshot()
    acct.balance = Decimal(3)
    img.store.delete_events_before(seq)  # the event at *seq* goes too: the state there is the snapshot's
    with pytest.raises(memimg.HistoryError, match=r"resume from is \d+") as err:
        img.changes(since=1)
    oldest = err.value.oldest  # type: ignore[attr-defined]
    assert [c.changes[0].new for c in img.changes(since=oldest, timeout=0.1)] == [Decimal(3)]
    with pytest.raises(memimg.HistoryError):
        img.changes(since=oldest - 1)


def test_a_compaction_during_a_replay_is_a_history_error(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process compacting the log while changes() replays it (between reading the past state and the
    events after it) gives HistoryError naming the seq to resume from, not a corrupt-log error."""
    img, acct = bank_image(make_image)
    since = img.seq
    acct.balance = Decimal(1)
    acct.balance = Decimal(2)
    real_at = memimg.MemoryImage.at

    def at_then_compact(self: memimg.MemoryImage, *args: Any, **kwargs: Any) -> Any:
        past = real_at(self, *args, **kwargs)
        seq = img.snapshot()
        img.store.delete_events_before(seq)
        return past

    monkeypatch.setattr(memimg.MemoryImage, "at", at_then_compact)
    with pytest.raises(memimg.HistoryError, match="no longer kept") as err:
        next(img.changes(since=since, timeout=0.1))
    monkeypatch.undo()
    oldest = err.value.oldest  # type: ignore[attr-defined]
    assert err.value.seq == since  # type: ignore[attr-defined]
    assert oldest > since
    assert list(img.changes(since=oldest, timeout=0.1)) == []


# -- changes_async(since=...) ----------------------------------------------------------------------------------------


def test_changes_async_replays_then_follows_without_polling(make_image: Images) -> None:
    """async for over changes_async(since=s) gives the commits in the log after s, then new ones -- from this
    process and, through the follower, from another -- as they are delivered."""
    img, acct = bank_image(make_image)
    other = make_image(root=Bank)
    since = img.seq
    acct.balance = Decimal(6)

    async def consume() -> list[memimg.Commit]:
        got: list[memimg.Commit] = []
        async for commit in img.changes_async(since=since):
            got.append(commit)
            if len(got) == 1:
                acct.owner = "here"
            elif len(got) == 2:
                threading.Timer(0.1, setattr, (other.root.accounts["ada"], "owner", "there")).start()
            else:
                break
        return got

    got = asyncio.run(asyncio.wait_for(consume(), 30))
    assert [(c.changes[0].field, c.changes[0].new) for c in got] == [
        ("balance", Decimal(6)),
        ("owner", "here"),
        ("owner", "there"),
    ]
    assert [c.local for c in got] == [False, True, False]
    assert all(c.changes[0].target is acct for c in got)


def test_a_slow_async_consumer_is_told_and_resumes_from_its_seq(
    make_image: Images, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer never waits for an async consumer: past its buffer, commits are not kept for it; the consumer
    is told (a warning) and reads those it missed back from the log -- every commit once, in order."""
    img, acct = bank_image(make_image)

    async def consume() -> list[int]:
        seqs: list[int] = []
        async for commit in img.changes_async(since=img.seq, buffer=2):
            if not seqs:
                for k in range(6):  # the consumer is busy: these pile up past its buffer
                    acct.balance = Decimal(k)
            seqs.append(commit.seq)
            if len(seqs) == 7:
                break
        return seqs

    with caplog.at_level(logging.WARNING, logger="memimg"):
        seqs = asyncio.run(asyncio.wait_for(consume_after_first_commit(acct, consume), 30))
    assert seqs == sorted(set(seqs)) and seqs[-1] == img.seq
    assert any("fell over 2 commits behind" in r.getMessage() for r in caplog.records)


async def consume_after_first_commit(acct: Account, consume: Any) -> Any:
    """Start *consume* and make one commit once its iterator is subscribed."""
    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.2)
    acct.owner = "go"
    return await task


def test_changes_async_refuses_bad_arguments(make_image: Images) -> None:
    """since past the head is a HistoryError, and a buffer below one a ValueError, at the first iteration."""
    img, _ = bank_image(make_image)

    async def first(**kw: Any) -> Any:
        async for commit in img.changes_async(**kw):
            return commit
        return None

    with pytest.raises(memimg.HistoryError, match="past the head"):
        asyncio.run(first(since=img.seq + 1))
    with pytest.raises(ValueError, match="buffer"):
        asyncio.run(first(since=img.seq, buffer=0))


def test_a_callback_may_snapshot_or_erase_when_a_snapshot_delivers_to_it(make_image: Images) -> None:
    """Commits of another image that a snapshot catches up with are delivered once the snapshot is done: a
    callback taking a snapshot or erasing (both need the snapshot's own lease) runs then, and nothing hangs."""
    img = make_image(root=Bank, snapshot_every=None)
    img.root.accounts["ada"] = acct = Account("ada")
    other = make_image(root=Bank, snapshot_every=None)
    done: list[int] = []

    def on_commit(commit: memimg.Commit) -> None:
        img.erase(acct, "owner", reason="a test")
        img.snapshot()
        done.append(commit.seq)

    img.subscribe(on_commit, to=(acct, "balance"))
    other.root.accounts["ada"].balance = Decimal(7)
    worker = threading.Thread(target=img.snapshot, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "a snapshot delivering to a callback that snapshots or erases hung"
    assert len(done) == 1 and acct.balance == Decimal(7)


# -- delivery under contention, failures, closing ------------------------------------------------------------------


def test_a_writer_delivers_only_what_was_queued_when_it_began(make_image: Images) -> None:
    """A thread delivering is never kept delivering other threads' commits: those made while its callback runs
    are delivered by another thread (every commit once, in order), and its write returns after its own."""
    img, acct = bank_image(make_image)
    release, first_called = threading.Event(), threading.Event()
    delivered: list[tuple[int, str]] = []

    def on_commit(commit: memimg.Commit) -> None:
        delivered.append((commit.seq, threading.current_thread().name))
        if len(delivered) == 1:
            first_called.set()
            assert release.wait(20)

    img.subscribe(on_commit, to=(acct, "balance"))
    writer = threading.Thread(target=setattr, args=(acct, "balance", Decimal(1)), name="first-writer")
    writer.start()
    assert first_called.wait(20)
    for k in range(5):  # queued while the first writer's callback runs: that thread delivers them, not this one
        acct.balance = Decimal(10 + k)
    release.set()
    writer.join(20)
    assert not writer.is_alive()
    eventually(lambda: len(delivered) == 6)
    assert [seq for seq, _ in delivered] == sorted({seq for seq, _ in delivered})
    assert [name for _, name in delivered].count("first-writer") == 1


def test_commits_caught_up_by_a_failing_operation_or_an_erase_are_delivered_at_once(make_image: Images) -> None:
    """Another process's commits that an operation catches up with are delivered when it returns, also when it
    fails, and an erase's catching up and its own commit too -- not at some later commit."""
    img, acct = bank_image(make_image)
    acct.owner = "ada"
    other = make_image(root=Bank)
    got = Collect()
    img.subscribe(got)
    del other.root.accounts["ada"].owner
    with pytest.raises(AttributeError):
        del acct.owner  # catches up (the other process deleted it first), then fails
    assert [(c.field, c.old, c.new) for c in got.changes] == [("owner", "ada", MISSING)]
    other.root.accounts["ada"].balance = Decimal(9)
    img.erase(acct, "balance", reason="a test")  # catches up first
    assert [(c.field, c.new) for c in got.changes][1] == ("balance", Decimal(9))


def test_a_transaction_failing_with_a_conflict_delivers_the_commit_it_caught_up_with(make_image: Images) -> None:
    """A transaction whose commit catches up with another process's commit, then fails with ConflictError,
    has delivered that commit when the error reaches the caller."""
    img, acct = bank_image(make_image)
    other = make_image(root=Bank)
    got = Collect()
    img.subscribe(got)
    with pytest.raises(memimg.ConflictError), img.transaction():
        seen = acct.balance
        other.root.accounts["ada"].balance = Decimal(7)
        acct.balance = seen + 1
    assert [(c.field, c.new) for c in got.changes] == [("balance", Decimal(7))]


def test_a_collection_mutation_failing_after_catching_up_delivers_what_it_caught_up_with(
    make_image: Images,
) -> None:
    """A collection mutation that catches up with another process's commit and then fails (the key it deletes
    is gone) has delivered that commit when its error reaches the caller."""
    img, _ = bank_image(make_image)
    other = make_image(root=Bank)
    got = Collect()
    img.subscribe(got)
    del other.root.accounts["ada"]
    with pytest.raises(KeyError):
        del img.root.accounts["ada"]
    assert [(c.kind, c.key) for c in got.changes] == [("dict.del", "ada")]


@pytest.mark.parametrize("operation", ["begin", "refresh"])
def test_beginning_or_refreshing_delivers_what_it_caught_up_with_though_it_fails(
    make_image: Images, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """A transaction's start or a refresh() that applies another process's commit and then fails has delivered
    that commit when its error reaches the caller."""
    img, _ = bank_image(make_image)
    other = make_image(root=Bank)
    got = Collect()
    img.subscribe(got)
    other.root.accounts["ada"].balance = Decimal(7)
    engine = img._engine
    catch_up = engine.catch_up

    def catch_up_then_fail(*args: Any, **kwargs: Any) -> Any:
        catch_up(*args, **kwargs)
        raise OSError("the store went away after the catch-up")

    monkeypatch.setattr(engine, "catch_up", catch_up_then_fail)
    with pytest.raises(OSError, match="went away"):
        if operation == "begin":
            img.begin()
        else:
            img.refresh()
    assert [(c.field, c.new) for c in got.changes] == [("balance", Decimal(7))]


def test_close_delivers_what_is_queued(make_image: Images) -> None:
    """Commits queued behind a callback running in another thread are delivered by the time close() returns."""
    img, acct = bank_image(make_image)
    release, first_called = threading.Event(), threading.Event()
    seqs: list[int] = []

    def on_commit(commit: memimg.Commit) -> None:
        seqs.append(commit.seq)
        if len(seqs) == 1:
            first_called.set()
            assert release.wait(20)

    img.subscribe(on_commit, to=(acct, "balance"))
    threading.Thread(target=setattr, args=(acct, "balance", Decimal(1))).start()
    assert first_called.wait(20)
    for k in range(3):
        acct.balance = Decimal(2 + k)
    threading.Timer(0.3, release.set).start()
    img.close()
    assert len(seqs) == 4 and seqs == sorted(seqs)


def test_callbacks_delivered_at_close_may_still_write(make_image: Images, caplog: pytest.LogCaptureFixture) -> None:
    """The commits queued at close() are delivered while the image is still open: a callback writing derived
    data for each of them commits it, and only then is the image closed."""
    img, acct = bank_image(make_image)
    release, first_called = threading.Event(), threading.Event()
    wrote: list[int] = []

    def derive(commit: memimg.Commit) -> None:
        if not first_called.is_set():
            first_called.set()
            assert release.wait(20)
        img.root.accounts[f"derived-{commit.seq}"] = Account("derived", balance=commit.changes[0].new)
        wrote.append(commit.seq)

    img.subscribe(derive, to=(acct, "balance"))
    writer = threading.Thread(target=setattr, args=(acct, "balance", Decimal(1)))
    writer.start()
    assert first_called.wait(20)
    for k in range(3):
        acct.balance = Decimal(2 + k)  # queued behind the callback the writer thread runs
    threading.Timer(0.3, release.set).start()
    with caplog.at_level(logging.ERROR, logger="memimg"):
        img.close()
    writer.join(20)
    assert len(wrote) == 4
    assert sorted(k for k in img.root.accounts if k.startswith("derived-")) == sorted(f"derived-{s}" for s in wrote)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_close_waits_for_a_blocked_callback_no_longer_than_its_bound(
    make_image: Images, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """close() waits for a callback blocked in the follower thread at most CLOSE_SECONDS in all, then returns
    with a warning naming what still runs; the callback finishes in its thread."""
    from memimg.image import _image

    monkeypatch.setattr(_image, "CLOSE_SECONDS", 0.2)
    img, _ = bank_image(make_image)
    other = make_image(root=Bank)
    release, called = threading.Event(), threading.Event()

    def blocked(commit: memimg.Commit) -> None:
        called.set()
        release.wait(30)

    img.subscribe(blocked)
    img.follow()
    other.root.accounts["ada"].balance = Decimal(1)
    assert called.wait(20)
    other.root.accounts["ada"].balance = Decimal(2)  # the follower is in the callback: it waits
    closing = threading.Thread(target=img.close)
    with caplog.at_level(logging.WARNING, logger="memimg"):
        closing.start()
        closing.join(4)  # far past the bound: without one, close() waits for the callback (30 s)
        done = not closing.is_alive()
        release.set()
        closing.join(30)
    assert done
    assert any("still running after 0.2 s" in r.getMessage() for r in caplog.records)


def test_a_base_exception_in_a_callback_never_stops_the_follower(
    make_image: Images, caplog: pytest.LogCaptureFixture
) -> None:
    """A KeyboardInterrupt raised by a callback run by the follower thread is logged; the follower goes on and
    delivers the next commits."""
    img, acct = bank_image(make_image)
    other = make_image(root=Bank)
    got: list[int] = []

    def on_commit(commit: memimg.Commit) -> None:
        got.append(commit.seq)
        if len(got) == 1:
            raise KeyboardInterrupt

    img.subscribe(on_commit, to=(acct, "balance"))
    follower = img.follow()
    with caplog.at_level(logging.ERROR, logger="memimg"):
        other.root.accounts["ada"].balance = Decimal(1)
        eventually(lambda: len(got) == 1)
        other.root.accounts["ada"].balance = Decimal(2)
        eventually(lambda: len(got) == 2)
    assert follower.is_alive()
    assert any("BaseException" in r.getMessage() for r in caplog.records)


def test_a_commits_seqs_time_and_meta_do_not_depend_on_its_changes(make_image: Images) -> None:
    """A callback may empty a Commit's list of changes: its tx, first_seq, time and meta are still told; a
    Commit made with no changes tells what it was made with."""
    img, acct = bank_image(make_image)
    told: list[tuple[Any, ...]] = []

    def emptying(commit: memimg.Commit) -> None:
        commit.changes.clear()
        told.append((commit.tx, commit.first_seq, commit.seq, commit.time, commit.meta))

    img.subscribe(emptying, to=(acct, "balance"))  # alone: delivered as noted
    img.subscribe(emptying, to=acct)  # two: filtered
    with img.transaction(meta={"by": "me"}):
        acct.balance = Decimal(3)
    last = img.history(acct)[-1]
    assert last.tx < img.seq  # its metadata came first
    assert told == [(last.tx, last.tx, img.seq, last.time, {"by": "me"})] * 2
    when = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    made = memimg.Commit(7, 9, when, {"a": 1}, False, [])
    assert (made.tx, made.first_seq, made.seq, made.time, made.meta, made.local, made.changes) == (
        7,
        7,
        9,
        when,
        {"a": 1},
        False,
        [],
    )
    assert memimg.Commit(7, 9, 0, {}, True, []).time == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def test_a_commit_holds_only_what_it_exposes(make_image: Images) -> None:
    """A delivered Commit refers to its changes' values and metadata, not to the stored rows of the commit."""
    img, acct = bank_image(make_image)
    got = Collect()
    img.subscribe(got, to=acct)
    acct.balance = Decimal(3)
    commit = got.commits[0]
    assert commit.changes[0].new == Decimal(3)
    held = [r for r in gc.get_referents(commit) if type(r) is list and r]
    # a stored row is (seq, tx, ts, kind, ...), as an EventRow or a plain tuple
    assert not any(type(r[0]) is EventRow or (type(r[0]) is tuple and r[0][3:4] == ("obj.set",)) for r in held)
    assert all(type(c) is memimg.Change for r in held for c in r)


def test_a_kept_commit_keeps_no_closed_subscription_alive(make_image: Images) -> None:
    """An application keeping the Commits it was given keeps neither the subscription, once closed, nor its
    callback or the image's feed: a Commit holds its facts and changes only (also one delivered to a lone
    subscription)."""
    img, acct = bank_image(make_image)
    kept: list[memimg.Commit] = []

    class Keep:
        def __call__(self, commit: memimg.Commit) -> None:
            kept.append(commit)

    sub = img.subscribe(Keep(), to=(acct, "balance"))
    acct.balance = Decimal(6)
    callback, feed = weakref.ref(sub.callback), weakref.ref(sub._feed)
    sub.close()
    del sub
    gc.collect()
    assert [c.new for c in kept[0].changes] == [Decimal(6)]
    assert callback() is None and feed() is None


# -- the iterators: subscribing, since, compaction, closed loops ------------------------------------------------


def test_an_iterator_never_started_holds_no_subscription(make_image: Images) -> None:
    """changes() subscribes at its first next(): an iterator made and dropped unstarted leaves the image with
    no subscription (its commits pay nothing), and one started and dropped is unsubscribed when collected."""
    img, acct = bank_image(make_image)
    stream = img.changes(since=img.seq, timeout=0.1)
    assert img._engine.writer.feed is None
    acct.balance = Decimal(1)
    del stream
    gc.collect()
    assert img._engine.writer.feed is None
    stream = img.changes(since=img.seq - 1, timeout=0.1)
    assert next(stream).changes[0].new == Decimal(1)
    assert img._engine.writer.feed is not None
    del stream
    gc.collect()
    assert img._engine.writer.feed is None


def test_since_between_this_images_seq_and_the_head_delivers_each_commit_once(make_image: Images) -> None:
    """since past what this image has applied, but within the log (another process wrote it), gives exactly
    the commits after since -- none of those up to it again -- by changes() and changes_async()."""
    img, _ = bank_image(make_image)
    other = make_image(root=Bank)
    theirs = other.root.accounts["ada"]
    theirs.balance = Decimal(1)
    since = other.seq
    theirs.balance = Decimal(2)
    assert img.seq < since
    got = [c.changes[0].new for c in img.changes(since=since, timeout=0.5)]
    assert got == [Decimal(2)]

    async def consume() -> list[Any]:
        async for commit in fresh.changes_async(since=since):
            return [commit.seq, commit.changes[0].new]
        return []

    fresh = make_image(root=Bank)
    other.root.accounts["ada"].owner = "later"
    fresh.refresh()
    fresh.close()
    behind = make_image(root=Bank)
    assert asyncio.run(asyncio.wait_for(consume_with(behind, since), 30)) == [since + 1, Decimal(2)]


async def consume_with(img: memimg.MemoryImage, since: int) -> list[Any]:
    async for commit in img.changes_async(since=since):
        return [commit.seq, commit.changes[0].new]
    return []


def test_an_iterator_behind_a_compaction_raises_history_error(make_image: Images) -> None:
    """An iterator following an image that falls behind a compaction (it reloads from the snapshot, skipping
    commits) raises HistoryError naming the last seq it gave and the oldest one kept -- it never skips silently."""
    img, _ = bank_image(make_image)
    other = make_image(root=Bank)
    stream = img.changes(since=img.seq, timeout=20)
    theirs = other.root.accounts["ada"]
    theirs.balance = Decimal(1)
    first = next(stream)
    with img._engine.lock:  # the follower cannot catch up meanwhile
        theirs.balance = Decimal(2)
        seq = other.snapshot()
        theirs.balance = Decimal(3)
        other.store.delete_events_before(seq)
    with pytest.raises(memimg.HistoryError, match=f"after seq {first.seq}.*resume from is {seq}") as err:
        next(stream)
    assert err.value.seq == first.seq  # type: ignore[attr-defined]
    assert err.value.oldest == seq  # type: ignore[attr-defined]
    assert [c.changes[0].new for c in img.changes(since=seq, timeout=0.1)] == [Decimal(3)]


def test_an_iterator_whose_image_reloads_reads_the_skipped_commits_still_kept(make_image: Images) -> None:
    """An iterator whose since is past its image's seq, the image then reloading after a compaction that kept
    the commits after since, gives those commits from the log: none skipped, none twice -- changes() and
    changes_async() alike."""
    img, _ = bank_image(make_image)
    other = make_image(root=Bank)
    behind = make_image(root=Bank)  # (for changes_async: it applies nothing until its iterator starts)
    theirs = other.root.accounts["ada"]
    with img._engine.lock:  # the follower cannot catch up meanwhile
        theirs.balance = Decimal(1)
        since = other.snapshot()
        theirs.balance = Decimal(2)
        theirs.balance = Decimal(3)
        other.store.delete_events_before(since)
        stream = img.changes(since=since, timeout=0.5)
    assert img.seq < since and behind.seq < since
    expected = [(since + 1, Decimal(2)), (since + 2, Decimal(3))]
    assert [(c.seq, c.changes[0].new) for c in stream] == expected

    async def consume() -> list[Any]:
        got: list[Any] = []
        async for commit in behind.changes_async(since=since):
            got.append((commit.seq, commit.changes[0].new))
            if len(got) == len(expected):
                break
        return got

    assert asyncio.run(asyncio.wait_for(consume(), 30)) == expected


def test_changes_async_stops_when_its_event_loop_is_closed(
    make_image: Images, caplog: pytest.LogCaptureFixture
) -> None:
    """An async iterator whose event loop was closed without finishing it stops following: later commits are
    not handed to the dead loop (no error logged for each), and its subscription is closed."""
    img, acct = bank_image(make_image)
    loop = asyncio.new_event_loop()
    stream = img.changes_async(since=img.seq)
    task = loop.create_task(stream.__anext__())  # type: ignore[attr-defined]
    loop.call_later(0.2, setattr, acct, "balance", Decimal(1))
    assert loop.run_until_complete(task).changes[0].new == Decimal(1)
    loop.close()  # the generator is left suspended
    with caplog.at_level(logging.ERROR, logger="memimg"):
        for k in range(3):
            acct.balance = Decimal(2 + k)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert img._engine.writer.feed is None
