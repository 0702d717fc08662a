"""Transactions: the delta layer, isolation, serializable commits, savepoints."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memimg
from memimg.image._tx import TxState
from memimg.model import _tracking
from tests.conftest import Images
from tests.models import Account, Bank, Box, Entry, Node

# -- the API ---------------------------------------------------------------------


def test_commit_on_exit_discard_on_exception(make_image: Images) -> None:
    """The context manager commits on normal exit and discards (re-raising) on an exception."""
    img = make_image(root=Box)
    with img.transaction():
        img.root.content = 1
    assert img.root.content == 1
    seq = img.seq
    with pytest.raises(KeyError):
        with img.transaction():
            img.root.content = 2
            img.root.other = [1]
            raise KeyError("boom")
    assert img.root.content == 1 and img.root.other is None and img.seq == seq


def test_begin_save_discard(make_image: Images) -> None:
    """begin() opens a transaction that save() commits (once) and discard() rolls back."""
    img = make_image(root=Box)
    tx = img.begin()
    img.root.content = "a"
    assert tx.active and not tx.nested
    tx.save()
    assert not tx.active
    with pytest.raises(memimg.MemimgError, match="already"):
        tx.save()
    tx = img.begin()
    img.root.content = "b"
    tx.discard()
    assert img.root.content == "a"
    assert "transaction" in repr(tx)


def test_one_commit_is_one_transaction_in_the_log(make_image: Images) -> None:
    """All events of a transaction share its tx id and land together."""
    img = make_image(root=Bank)
    with img.transaction():
        img.root.accounts["a"] = Account("a")
        img.root.accounts["a"].balance = Decimal(3)
        img.root.name = "x"
    events = list(img.events(since=1))
    assert len(events) == 3 and {e.tx for e in events} == {events[0].seq}


def test_empty_transaction_logs_nothing(make_image: Images) -> None:
    """A transaction that changes nothing writes nothing to the log."""
    img = make_image(root=Box)
    seq = img.seq
    with img.transaction():
        assert img.root.content is None
    assert img.seq == seq


# -- the delta layer --------------------------------------------------------------


def test_reads_own_writes_through_the_same_references(make_image: Images) -> None:
    """Inside a transaction, the same references read its own writes; the committed objects stay as they
    were until the commit."""
    img = make_image(root=Bank)
    img.root.accounts["ada"] = Account("ada", entries=[Entry("e")])
    acct = img.root.accounts["ada"]
    entries = acct.entries
    with img.transaction():
        acct.balance -= 10
        assert acct.balance == Decimal(-10)
        entries.append(Entry("f"))
        assert len(entries) == 2 and [e.label for e in entries] == ["e", "f"]
        acct.tags.add("x")
        assert "x" in acct.tags and len(acct.tags) == 1
        img.root.accounts["bob"] = Account("bob")
        assert list(img.root.accounts) == ["ada", "bob"]
        assert repr(acct).startswith("Account(owner='ada', balance=Decimal('-10')")
        # the committed objects are untouched until commit
        assert _tracking.raw_slot(Account, "balance").__get__(acct) == 0
        assert list.__len__(entries) == 1
    assert acct.balance == Decimal(-10) and len(entries) == 2


def test_discard_leaves_no_trace_in_memory_or_log(make_image: Images) -> None:
    """A discarded transaction leaves memory and log as they were, and new objects it attached free-standing again."""
    img = make_image(root=Bank)
    img.root.accounts["ada"] = Account("ada")
    before = memimg.serialize(img.root)
    seq = img.seq
    new = Account("new", entries=[Entry("x")], tags={"t"})
    plain_entries = new.entries
    with img.transaction() as tx:
        img.root.accounts["new"] = new
        new.balance = Decimal(5)
        img.root.accounts["ada"].entries.append(Entry("y"))
        del img.root.accounts["ada"]
        tx.discard()
    assert memimg.serialize(img.root) == before and img.seq == seq
    # the free-standing object is as it was: not attached, its own plain list back
    assert new._mi_img is None and new.entries is plain_entries and new.balance == 0
    new.balance = Decimal(1)  # an ordinary attrs object again
    assert img.seq == seq


def test_new_objects_exist_for_others_only_after_commit(make_image: Images) -> None:
    """Objects a transaction adds are not visible to other threads until it commits."""
    img = make_image(root=Bank)
    seen: list[Any] = []
    with img.transaction():
        img.root.accounts["new"] = Account("new")
        t = threading.Thread(target=lambda: seen.append(dict(img.root.accounts)))
        t.start()
        t.join()
    assert seen == [{}]
    assert "new" in img.root.accounts


def test_large_collections_are_not_copied() -> None:
    """Writing one key of a big dict in a transaction does not copy the dict.

    On the memory store only: copying is the image's concern, and a time bound is not fair to a server.
    """
    img = memimg.open(root=Box)
    img.root.content = {str(i): i for i in range(200_000)}
    img.root.other = set(range(200_000))
    d, s = img.root.content, img.root.other
    start = time.perf_counter()
    for _ in range(100):
        with img.transaction():
            d["x"] = 1
            s.add(-1)
            assert d["x"] == 1 and -1 in s and d["5"] == 5
    assert time.perf_counter() - start < 2.0  # a copy per transaction would take far longer
    with img.transaction():
        assert len(d) == 200_001 and len(s) == 200_001
        del d["0"]
        d["0"] = "back"
        assert list(d)[-1] == "0" and len(d) == 200_001


# -- isolation ------------------------------------------------------------------------


def test_other_threads_read_committed_state(make_image: Images) -> None:
    """No dirty reads: a reader thread sees only committed values while a writer is mid-transaction."""
    img = make_image(root=Bank)
    img.root.accounts["a"] = Account("a", balance=Decimal(100), entries=[Entry("0")], tags={"t"})
    acct = img.root.accounts["a"]
    in_tx = threading.Event()
    go_on = threading.Event()
    observed: list[Any] = []

    def writer() -> None:
        with img.transaction():
            acct.balance = Decimal(0)
            acct.entries.append(Entry("1"))
            acct.tags.clear()
            img.root.accounts["b"] = Account("b")
            in_tx.set()
            go_on.wait()

    t = threading.Thread(target=writer)
    t.start()
    in_tx.wait()
    observed.append((acct.balance, len(acct.entries), set(acct.tags), sorted(img.root.accounts)))
    go_on.set()
    t.join()
    observed.append((acct.balance, len(acct.entries), set(acct.tags), sorted(img.root.accounts)))
    assert observed == [(Decimal(100), 1, {"t"}, ["a"]), (Decimal(0), 2, set(), ["a", "b"])]


def test_readers_never_see_a_partial_commit(make_image: Images) -> None:
    """While transactions move money between accounts, a reading transaction always sees the same total."""
    img = make_image(root=Bank)
    for name in "abcd":
        img.root.accounts[name] = Account(name, balance=Decimal(100))
    accounts = list(img.root.accounts.values())
    stop = threading.Event()
    totals: set[Decimal] = set()

    @img.transaction(retries=100_000)
    def total() -> Decimal:
        return sum((a.balance for a in accounts), Decimal(0))

    def reader() -> None:
        while not stop.is_set():
            totals.add(total())

    @img.transaction(retries=1000)
    def move(i: int) -> None:
        src, dst = accounts[i % 4], accounts[(i + 1) % 4]
        src.balance -= 1
        dst.balance += 1

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    for i in range(400):
        move(i)
    stop.set()
    for r in readers:
        r.join()
    assert totals == {Decimal(400)}


@pytest.mark.parametrize("kind", ["field", "dict item"])
def test_a_commit_landing_between_a_reads_check_and_the_read_is_not_missed(
    kind: str, monkeypatch: pytest.MonkeyPatch, make_image: Images
) -> None:
    """Another thread commits a move right after a reading transaction checked the seq for its second
    read: that read still gives the value from before the move (or raises ConflictError), never half
    of the move."""
    img = make_image(root=Bank)
    img.root.accounts["a"] = Account("a", balance=Decimal(100))
    img.root.accounts["b"] = Account("b", balance=Decimal(100))
    accounts = img.root.accounts
    a, b = accounts["a"], accounts["b"]
    b_oid = b._mi_oid if kind == "field" else accounts._mi_oid
    b_sub = "balance" if kind == "field" else "b"

    def move() -> None:
        with img.transaction():
            a.balance -= 1
            if kind == "field":
                b.balance += 1
            else:
                accounts["b"] = Account("b", balance=Decimal(101))

    original = TxState.note_read
    fired: list[bool] = []

    def note_read_then_commit(self: TxState, oid: int, sub: Any) -> None:
        original(self, oid, sub)
        if (oid, sub) == (b_oid, b_sub) and not fired:
            fired.append(True)
            writer = threading.Thread(target=move)
            writer.start()
            writer.join()

    monkeypatch.setattr(TxState, "note_read", note_read_then_commit)
    with img.transaction():
        first = a.balance
        second = accounts["b"].balance if kind == "dict item" else b.balance
    assert fired
    assert first + second == Decimal(200)
    assert (a.balance, accounts["b"].balance) == (Decimal(99), Decimal(101))


def test_a_commit_landing_just_before_a_read_raises_conflict(
    monkeypatch: pytest.MonkeyPatch, make_image: Images
) -> None:
    """The other side of the window: a commit that lands after the reading transaction began and
    before its second read is caught by the check that follows the read (ConflictError)."""
    img = make_image(root=Bank)
    img.root.accounts["a"] = Account("a", balance=Decimal(100))
    img.root.accounts["b"] = Account("b", balance=Decimal(100))
    a, b = img.root.accounts["a"], img.root.accounts["b"]

    def move() -> None:
        with img.transaction():
            a.balance -= 1
            b.balance += 1

    original = TxState.read_field
    fired: list[bool] = []

    def commit_then_read(self: TxState, obj: Any, name: str, getter: Any) -> Any:
        def racing_getter(o: Any) -> Any:
            if o is b and not fired:
                fired.append(True)  # once, and not for the writer's own reads
                writer = threading.Thread(target=move)
                writer.start()
                writer.join()
            return getter(o)

        return original(self, obj, name, racing_getter)

    monkeypatch.setattr(TxState, "read_field", commit_then_read)
    with pytest.raises(memimg.ConflictError), img.transaction():
        total = a.balance + b.balance
        pytest.fail(f"read a total of {total} across a concurrent move")
    monkeypatch.undo()
    assert fired and (a.balance, b.balance) == (Decimal(99), Decimal(101))


def test_asyncio_tasks_have_their_own_transactions(make_image: Images) -> None:
    """Each asyncio task has its own transaction: it sees its own writes, not another task's pending ones."""
    img = make_image(root=Box)
    img.root.content = {"n": 0}
    log: list[Any] = []

    async def task(name: str, delay: float, fail: bool, peek: str) -> None:
        try:
            with img.transaction():
                img.root.content[name] = True
                await asyncio.sleep(delay)
                # a task sees its own write, and not another task's pending one
                log.append((name, name in img.root.content, peek in img.root.content))
                if fail:
                    raise RuntimeError(name)
        except RuntimeError:
            pass

    async def main() -> None:
        await asyncio.gather(task("a", 0.01, True, "b"), task("b", 0.02, False, "c"), task("c", 0.03, False, "c"))

    asyncio.run(main())
    assert sorted(log) == [("a", True, False), ("b", True, False), ("c", True, True)]
    assert sorted(img.root.content) == ["b", "c", "n"]


def test_async_function_with_retries(make_image: Images) -> None:
    """An async function decorated with transaction(retries=...) is rerun on conflicts until every increment lands."""
    img = make_image(root=Box)
    img.root.content = 0

    @img.transaction(retries=50)
    async def bump() -> None:
        v = img.root.content
        await asyncio.sleep(0)
        img.root.content = v + 1

    async def main() -> None:
        await asyncio.gather(*(bump() for _ in range(20)))

    asyncio.run(main())
    assert img.root.content == 20


# -- serializable commits --------------------------------------------------------------


def test_lost_updates_are_prevented(make_image: Images) -> None:
    """N threads x M read-modify-write increments end at exactly N x M, on every store."""
    img = make_image(root=Box)
    img.root.content = {"count": 0}
    counter = img.root.content
    n_threads, per_thread = 4, 25

    @img.transaction(retries=10_000)
    def increment() -> None:
        counter["count"] += 1

    def work() -> None:
        for _ in range(per_thread):
            increment()

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter["count"] == n_threads * per_thread
    img.close()
    assert make_image(root=Box).root.content["count"] == n_threads * per_thread


def test_conflict_without_retries_names_object_and_field(make_image: Images) -> None:
    """A conflicting commit without retries raises ConflictError naming the object, the field and the seq."""
    img = make_image(root=Bank)
    img.root.accounts["a"] = Account("a")
    acct = img.root.accounts["a"]
    tx = img.begin()
    acct.balance += 1  # read then write
    t = threading.Thread(target=lambda: setattr(acct, "balance", Decimal(50)))
    t.start()
    t.join()
    with pytest.raises(memimg.ConflictError) as info:
        tx.save()
    err = info.value
    assert err.target == acct._mi_oid and err.key == "balance" and err.seq == img.seq
    assert "Account" in str(err) and "balance" in str(err) and "retries" in str(err)
    assert acct.balance == Decimal(50)


def test_conflict_on_a_key_too_long_for_repr_names_it_in_hex(make_image: Images) -> None:
    """A conflict on a dict key that repr refuses (an int past 4,300 digits) is still a ConflictError,
    naming the key in hex."""
    huge = 10**5000
    img = make_image(root=Box)
    img.root.content = {huge: 1}
    d = img.root.content
    tx = img.begin()
    d[huge] += 1
    t = threading.Thread(target=lambda: d.__setitem__(huge, 50))
    t.start()
    t.join()
    with pytest.raises(memimg.ConflictError, match=f"Dict #{d._mi_oid}\\[{hex(huge)}\\]") as info:
        tx.save()
    assert info.value.key == huge and d[huge] == 50


def test_reading_overwritten_data_fails_at_once(make_image: Images) -> None:
    """A transaction never sees a mix of old and new state: a stale read raises."""
    img = make_image(root=Box)
    img.root.content = Node(1)
    img.root.other = Node(1)
    a, b = img.root.content, img.root.other
    with pytest.raises(memimg.ConflictError):
        with img.transaction():
            assert a.value == 1
            t = threading.Thread(target=lambda: (setattr(a, "value", 2), setattr(b, "value", 2)))
            t.start()
            t.join()
            b.value  # would be the new value next to the old a.value
    assert a.value == b.value == 2


def test_write_skew_is_prevented(make_image: Images) -> None:
    """Each transaction reads what the other writes: the second to commit conflicts."""
    img = make_image(root=Box)
    img.root.content = {"alice": True, "bob": True}
    oncall = img.root.content
    first, second = img.begin(), None
    assert oncall["bob"]
    oncall["alice"] = False
    errors = []

    def other() -> None:
        with img.begin() as tx:
            assert oncall["alice"]
            oncall["bob"] = False
            tx.save()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    with pytest.raises(memimg.ConflictError):
        first.save()
    assert oncall == {"alice": True, "bob": False}
    assert not errors and second is None


def test_unrelated_transactions_both_commit(make_image: Images) -> None:
    """No global 'head moved' failure: disjoint reads and writes both commit."""
    img = make_image(root=Bank)
    for name in "ab":
        img.root.accounts[name] = Account(name)
    a, b = img.root.accounts["a"], img.root.accounts["b"]
    tx = img.begin()
    a.balance += 1
    t = threading.Thread(target=lambda: img.transaction()(lambda: setattr(b, "balance", b.balance + 5))())
    t.start()
    t.join()
    tx.save()
    assert (a.balance, b.balance) == (1, 5)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda r: r.content["lst"].append("ours"), lambda r: r.content["lst"].append("theirs")),
        (lambda r: r.content["lst"].extend(["o1", "o2"]), lambda r: r.content["lst"].append("theirs")),
        (lambda r: r.content["d"].__setitem__("x", 1), lambda r: r.content["d"].__setitem__("y", 2)),
        (lambda r: r.content["d"].update(x=1), lambda r: r.content["d"].pop("k")),
        (lambda r: r.content["s"].add("x"), lambda r: r.content["s"].add("y")),
        (lambda r: setattr(r, "other", 1), lambda r: r.content["d"].__setitem__("y", 2)),
    ],
    ids=["append+append", "extend+append", "dict keys", "update+pop other key", "set members", "field+dict"],
)
def test_commuting_changes_merge(ours: Any, theirs: Any, make_image: Images) -> None:
    """Appends to one list and writes to different keys or members merge instead of conflicting."""
    img = make_image(root=Box)
    img.root.content = {"lst": [0], "d": {"k": 0}, "s": {"m"}}
    tx = img.begin()
    ours(img.root)
    t = threading.Thread(target=theirs, args=(img.root,))
    t.start()
    t.join()
    tx.save()
    replayed = memimg.replay(img.events())
    assert memimg.serialize(memimg.deserialize(memimg.serialize(replayed))) == memimg.serialize(
        memimg.deserialize(memimg.serialize(img.root))
    )
    if "theirs" in img.root.content["lst"] and len(img.root.content["lst"]) > 2:
        assert img.root.content["lst"][1] == "theirs"  # applied in commit order


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda r: r.content["lst"].insert(0, "o"), lambda r: r.content["lst"].append("t")),
        (lambda r: r.content["lst"].append(len(r.content["lst"])), lambda r: r.content["lst"].append("t")),
        (lambda r: r.content["d"].__setitem__("k", 1), lambda r: r.content["d"].__setitem__("k", 2)),
        (lambda r: r.content["d"].__setitem__("n", len(r.content["d"])), lambda r: r.content["d"].__setitem__("y", 2)),
        (lambda r: r.content["d"].clear(), lambda r: r.content["d"].__setitem__("y", 2)),
        (lambda r: r.content["s"].discard("m"), lambda r: r.content["s"].discard("m")),
        (lambda r: r.content["d"].setdefault("y", 0), lambda r: r.content["d"].__setitem__("y", 2)),
    ],
    ids=[
        "insert vs append",
        "append after len",
        "same key",
        "len vs insert",
        "clear vs set",
        "same member",
        "setdefault",
    ],
)
def test_non_commuting_changes_conflict(ours: Any, theirs: Any, make_image: Images) -> None:
    """Changes that depend on each other's order (inserts vs appends, the same key or member, reads of a
    length) conflict."""
    img = make_image(root=Box)
    img.root.content = {"lst": [0], "d": {"k": 0}, "s": {"m"}}
    tx = img.begin()
    ours(img.root)
    t = threading.Thread(target=theirs, args=(img.root,))
    t.start()
    t.join()
    with pytest.raises(memimg.ConflictError):
        tx.save()


def test_implicit_mutation_is_checked_like_a_transaction(make_image: Images) -> None:
    """A mutation outside a transaction commits by itself and overtakes open transactions."""
    img = make_image(root=Box)
    img.root.content = {"n": 1}
    tx = img.begin()
    img.root.content["n"] += 1
    other = threading.Thread(target=lambda: img.root.content.__setitem__("n", 10))
    other.start()
    other.join()  # the other thread's mutation committed by itself, while our transaction is open
    with pytest.raises(memimg.ConflictError):
        tx.save()
    assert img.root.content["n"] == 10


def test_retries_give_up_after_n(make_image: Images) -> None:
    """transaction(retries=n) runs the function at most n + 1 times, then raises the ConflictError."""
    img = make_image(root=Box)
    img.root.content = 0
    calls = []

    @img.transaction(retries=2)
    def always_conflicts() -> None:
        calls.append(1)
        img.root.content += 1
        other = threading.Thread(target=lambda: setattr(img.root, "content", -1))
        other.start()
        other.join()

    with pytest.raises(memimg.ConflictError):
        always_conflicts()
    assert len(calls) == 3


# -- savepoints --------------------------------------------------------------------


def test_nested_transaction_is_a_savepoint(make_image: Images) -> None:
    """A nested transaction is a savepoint: rolling it back keeps the outer transaction's changes."""
    img = make_image(root=Box)
    img.root.content = []
    lst = img.root.content
    with img.transaction():
        lst.append(1)
        with pytest.raises(ValueError):
            with img.transaction():
                lst.append(2)
                img.root.other = Entry("gone")
                assert lst == [1, 2]
                raise ValueError
        assert lst == [1] and img.root.other is None
        with img.transaction() as inner:
            lst.append(3)
            assert inner.nested
        assert lst == [1, 3]
        sp = img.begin()
        lst.append(4)
        sp.discard()
    assert lst == [1, 3]
    assert memimg.replay(img.events()).content == [1, 3]


def test_a_transaction_reads_its_latest_write_of_a_field_however_each_was_made(make_image: Images) -> None:
    """Plain scalar sets (the fast path), sets that attach a value, deletes and counter-free reads interleave on
    one field: the transaction reads its latest write at every step, commits them in order, and replay agrees."""
    img = make_image(root=Box)
    box = img.root
    start = img.seq
    with img.transaction():
        box.content = 1
        assert box.content == 1
        box.content = 2
        box.other = 5
        box.content = [3]  # attaches a list: the full path, after two fast sets not yet in the overlay
        assert (box.content, box.other) == ([3], 5)
        box.content = "four"
        del box.content
        with pytest.raises(AttributeError):
            box.content
        box.content = 6.0
        assert (box.content, box.other) == (6.0, 5)
    assert (box.content, box.other) == (6.0, 5)
    kinds = [(e.kind, e.data[0]) for e in img.events(since=start)]
    # the outcome is written: the two scalars the list replaced are not (see test_tx_outcome)
    assert kinds == [("obj.set", "other")] + [("obj.set", "content")] * 2 + [
        ("obj.del", "content"),
        ("obj.set", "content"),
    ]
    replayed = memimg.replay(img.events())
    assert (replayed.content, replayed.other) == (6.0, 5)


def test_rolled_back_savepoint_keeps_the_outer_events_in_order(make_image: Images) -> None:
    """Field sets, deletes and collection events of the outer transaction survive an inner rollback, in order."""
    img = make_image(root=Box)
    img.root.content = []
    img.root.other = Entry("x")
    lst, entry = img.root.content, img.root.other
    start = img.seq
    tx = img.begin()
    entry.label = "a"
    lst.append(1)
    with pytest.raises(ValueError):
        with img.transaction():
            entry.label = "inner"
            lst.append(2)
            del img.root.other
            raise ValueError
    assert img.root.other is entry and entry.label == "a" and lst == [1]
    del entry.amount
    lst.append(3)
    assert "4 events" in repr(tx)
    tx.save()
    logged = [(e.kind, e.data) for e in img.events(since=start)]
    assert logged == [
        ("obj.set", ["label", "a"]),
        ("list.append", [[1]]),
        ("obj.del", ["amount"]),
        ("list.append", [[3]]),
    ]
    assert memimg.replay(img.events()).content == [1, 3]


def test_exceptions_inside_collection_operations_in_a_transaction(make_image: Images) -> None:
    """Collection operations that raise inside a transaction change nothing; the transaction goes on and commits."""
    img = make_image(root=Box)
    img.root.content = [1, 2]
    lst = img.root.content
    with img.transaction():
        lst.append(3)
        with pytest.raises(ValueError):
            lst.remove(99)
        with pytest.raises(memimg.UnsupportedValueError):
            lst.append(lambda: 0)
        with pytest.raises(IndexError):
            lst[10] = 0
        assert lst == [1, 2, 3]
    assert lst == [1, 2, 3]


def test_transaction_survives_a_discarded_attach_of_a_shared_object(make_image: Images) -> None:
    """A savepoint that stored an object the outer transaction already attached leaves it attached when rolled back."""
    img = make_image(root=Box)
    e = Entry("e")
    with img.transaction():
        img.root.content = [e]
        with pytest.raises(RuntimeError):
            with img.transaction():
                img.root.other = e
                raise RuntimeError
    assert img.root.content[0] is e and e._mi_img is img and img.root.other is None


# -- read tracking comes and goes --------------------------------------------------------


def test_read_hooks_come_and_go(make_image: Images) -> None:
    """Hooks are installed while transactions are open and leave after idle reads."""
    img = make_image(root=Box)
    img.root.content = Node(1)
    node = img.root.content
    _tracking.disable_now()
    assert not _tracking.enabled()
    with img.transaction():
        assert _tracking.enabled()
        node.value = 2
    for _ in range(_tracking.IDLE_READS + 10):
        node.value
    assert not _tracking.enabled()
    assert type(Node.__dict__["value"]).__name__ == "member_descriptor"


# -- the law: transactions = applying only the committed ones to a plain copy -------------


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "append", "del", "dict", "commit", "discard", "nest_ok", "nest_fail"]),
        st.integers(0, 5),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(program=ops)
def test_random_transactions_match_a_plain_model(program: list[tuple[str, int]]) -> None:
    """Random transactions with random commit/discard give what applying only the committed ones gives.

    On the memory store only: the delta layer does not depend on the store, and hypothesis runs many programs.
    """
    img = memimg.open(root=Box)
    img.root.content = {"lst": [], "d": {}, "n": 0}
    live = img.root.content
    committed = {"lst": [], "d": {}, "n": 0}
    model = copy.deepcopy(committed)
    tx = img.begin()
    savepoint: Any = None

    def apply(target: Any, op: str, x: int) -> None:
        if op == "set":
            target["n"] = x
        elif op == "append":
            target["lst"].append(x)
        elif op == "del" and target["lst"]:
            del target["lst"][0]
        elif op == "dict":
            target["d"][x % 3] = x

    for op, x in program:
        if op == "commit":
            tx.save()
            committed = copy.deepcopy(model)
            tx = img.begin()
        elif op == "discard":
            tx.discard()
            model = copy.deepcopy(committed)
            tx = img.begin()
        elif op in ("nest_ok", "nest_fail"):
            before = copy.deepcopy(model)
            savepoint = img.begin()
            apply(live, "append", x)
            apply(model, "append", x)
            if op == "nest_fail":
                savepoint.discard()
                model = before
            else:
                savepoint.save()
        else:
            apply(live, op, x)
            apply(model, op, x)
        assert {"lst": list(live["lst"]), "d": dict(live["d"]), "n": live["n"]} == model
    tx.discard()
    assert {"lst": list(live["lst"]), "d": dict(live["d"]), "n": live["n"]} == committed
    again = memimg.replay(img.events()).content
    assert {"lst": list(again["lst"]), "d": dict(again["d"]), "n": again["n"]} == committed


def test_commit_is_published_atomically(monkeypatch: Any, make_image: Images) -> None:
    """While a commit is being applied, readers elsewhere already see all of it."""
    img = make_image(root=Box)
    img.root.content, img.root.other = Node(0), Node(0)
    a, b = img.root.content, img.root.other
    seen: list[Any] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        if target is b and not seen:  # a is in the base now, b not yet
            t = threading.Thread(target=lambda: seen.append((a.value, b.value)))
            t.start()
            t.join()

    monkeypatch.setattr(img._engine, "before_apply", hook)
    with img.transaction():
        a.value = 1
        b.value = 1
    assert seen == [(1, 1)]


def test_iterating_inside_a_transaction_survives_a_concurrent_commit(make_image: Images) -> None:
    """A transaction iterating a collection another thread changes gets a ConflictError, not a RuntimeError."""
    img = make_image(root=Box)
    img.root.content = {str(i): i for i in range(10)}
    d = img.root.content
    with pytest.raises(memimg.ConflictError):
        with img.transaction():
            for i, key in enumerate(d):
                if i == 3:
                    t = threading.Thread(target=lambda: d.__setitem__("new", 1))
                    t.start()
                    t.join()
            d["after"] = len(list(d.items()))
    assert "new" in d and "after" not in d

    @img.transaction(retries=5)
    def count() -> int:
        n = 0
        for _ in d:
            if n == 3 and "late" not in d:
                t = threading.Thread(target=lambda: d.__setitem__("late", 1))
                t.start()
                t.join()
            n += 1
        return n

    # a read-only transaction saw one consistent state -- the dict as it was when it began --
    # so it commits, and its answer is that state's size (serializable before the insert)
    assert count() == 11 and len(d) == 12


# -- user code that memimg runs must not change the image -------------------------------

_MEDDLE: list[Any] = []  # what a Meddler's __hash__ or __eq__ does besides hashing or comparing


def _meddle() -> None:
    for fn in _MEDDLE:
        fn()


@attrs.frozen(eq=False)
class Meddler:
    """A key whose __hash__ runs _MEDDLE."""

    code: str

    def __hash__(self) -> int:
        _meddle()
        return hash(self.code)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Meddler) and other.code == self.code


@attrs.frozen(eq=False)
class EqMeddler:
    """A key whose __eq__ runs _MEDDLE; its hash is that of ``"x"``, so it is compared with that key."""

    code: str

    def __hash__(self) -> int:
        return hash("x")

    def __eq__(self, other: object) -> bool:
        _meddle()
        return isinstance(other, EqMeddler) and other.code == self.code


CHANGES = {
    "a dict key's __hash__": ({"y": 1}, lambda c: c.__setitem__(Meddler("k"), 1), "Meddler.__hash__"),
    "a set member's __hash__": ({"y"}, lambda c: c.add(Meddler("k")), "Meddler.__hash__"),
    "a dict key's __eq__": ({"x": 1}, lambda c: c.update([(EqMeddler("k"), 2)]), "EqMeddler.__eq__"),
    "a sort key": ([3, 1, 2], lambda c: c.sort(key=lambda v: (_meddle(), v)[1]), "<lambda>"),
}


@pytest.fixture
def meddling() -> Any:
    yield _MEDDLE
    _MEDDLE.clear()


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("in_tx", [False, True], ids=["outside a transaction", "in a transaction"])
def test_a_change_made_by_hash_eq_or_sort_key_code_is_refused_before_anything_is_written(
    make_image: Images, meddling: list[Any], change: str, in_tx: bool
) -> None:
    """User code that memimg runs while planning a change (a key's __hash__ or __eq__, a sort key)
    and that changes the image fails the change with an error naming that code: the image stays open,
    nothing is logged, memory is as it was."""
    start, mutate, culprit = CHANGES[change]
    img = make_image(root=Box)
    img.root.content = copy.copy(start)
    victim = img.root.other = Box(0)
    seq = img.seq
    meddling.append(lambda: setattr(victim, "content", victim.content + 1))
    with pytest.raises(memimg.MemimgError, match=f"{culprit}.* tried to change the image") as info:
        with img.transaction() if in_tx else contextlib.nullcontext():
            mutate(img.root.content)
    assert info.value.culprit.endswith(culprit) and "nothing of it was written" in str(info.value)
    assert not img.closed and img.seq == seq
    assert img.root.content == start and victim.content == 0
    meddling.clear()
    mutate(img.root.content)  # the image is still usable
    img.root.other.content = 5
    replayed = memimg.replay(img.events())
    assert replayed.content == img.root.content and replayed.other.content == 5


def test_a_change_made_by_a_key_only_while_a_commit_is_applied_is_refused(
    meddling: list[Any], make_image: Images
) -> None:
    """The last resort: a key whose __hash__ changes the image only when the commit applies it (not
    while the change is planned). That change is refused and not written; the commit it interrupted
    is in the log, so the image closes, and opening it again gives the logged state."""
    img = make_image(root=Box)
    img.root.content = {}
    victim = img.root.other = Box(0)
    seq = img.seq
    calls = []

    def on_second_call() -> None:
        calls.append(1)
        if len(calls) == 2:
            victim.content = 1

    meddling.append(on_second_call)
    with pytest.raises(memimg.MemimgError, match="applying committed events") as info:
        img.root.content[Meddler("k")] = 1
    refused = info.value.__cause__
    assert isinstance(refused, memimg.MemimgError) and refused.culprit == "Meddler.__hash__"
    assert "applying committed events" in refused.during
    assert img.closed and len(calls) == 2
    meddling.clear()
    with make_image(root=Box) as again:
        assert again.seq == seq + 1 and again.root.content == {Meddler("k"): 1} and again.root.other.content == 0


def test_a_transaction_opened_by_key_code_while_a_change_is_planned_does_not_catch_up(
    tmp_path: Any, meddling: list[Any]
) -> None:
    """A transaction opened by a key's __eq__ while memimg plans a change (``lst.remove(key)``) starts
    at the image's seq: another process's commit is not applied under the plan (which would remove the
    wrong item); memory and log stay equal, and an explicit refresh there is refused."""
    path = str(tmp_path / "img.db")
    a, b = memimg.open(path, root=Box), memimg.open(path, root=Box)
    a.root.content = [EqMeddler("k1"), EqMeddler("k2")]
    b.refresh()

    def meddle() -> None:
        meddling.clear()
        b.root.content.insert(0, "from b")  # another process commits meanwhile
        with a.transaction():  # and the key reads the image in a transaction
            pass
        with pytest.raises(memimg.MemimgError, match="tried to change the image"):
            a.refresh()

    meddling.append(meddle)
    a.root.content.remove(EqMeddler("k1"))
    a.refresh()
    with memimg.open(path, root=Box) as c:
        assert c.root.content == a.root.content == ["from b", EqMeddler("k2")]
    a.close()
    b.close()


def test_a_transaction_opened_by_key_code_while_a_commit_is_applied_does_not_catch_up(
    tmp_path: Any, meddling: list[Any]
) -> None:
    """A transaction opened by a key's __hash__ while memimg applies a commit starts at the image's seq:
    a later commit of another process to the same key is not applied before this one (which would
    leave memory holding this commit's value and the log the other's)."""
    path = str(tmp_path / "img.db")
    a, b = memimg.open(path, root=Box), memimg.open(path, root=Box)
    a.root.content = {}
    b.refresh()
    calls: list[Any] = []

    def meddle() -> None:
        calls.append(1)
        if len(calls) == 2:  # the commit is being applied
            meddling.clear()
            b.refresh()
            b.root.content[Meddler("k")] = "from b"  # another process overwrites the key after it
            with a.transaction():
                pass

    meddling.append(meddle)
    a.root.content[Meddler("k")] = "from a"
    a.refresh()
    with memimg.open(path, root=Box) as c:
        assert c.root.content == a.root.content == {Meddler("k"): "from b"}
    a.close()
    b.close()
