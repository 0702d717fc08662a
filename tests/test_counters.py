"""Counters: ``memimg.field(merge="add")`` fields, on every store.

``obj.f += n`` on a counter is recorded as an ``obj.add`` event carrying
``n``: concurrent adds (threads of one image, images on one log) never
conflict and all count; replay adds; a transaction reads the committed value
plus its own adds. An assignment is an ordinary write and conflicts as one,
with another assignment or with an add. Numbers read from a counter are
plain numbers to everything but the assignment back to that counter.
"""

from __future__ import annotations

import contextlib
import copy
import decimal
import json
import pickle
import threading
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest

import memimg
from memimg import persistent
from memimg.core._kinds import KINDS
from tests.conftest import Images
from tests.models import Box, Point, Tally
from tests.versions import Versions


def kinds(img: memimg.MemoryImage, since: int) -> list[str]:
    """The kinds of the events after seq *since*."""
    return [e.kind for e in img.events(since)]


def fields_written(img: memimg.MemoryImage, since: int) -> list[tuple[str, str, Any]]:
    """``(kind, field, value as stored)`` of the field events after seq *since*."""
    return [(e.kind, e.data[0], e.data[1]) for e in img.events(since) if e.kind in ("obj.set", "obj.add")]


def start(make_image: Images) -> tuple[memimg.MemoryImage, Tally]:
    img = make_image(root=Box)
    img.root.content = Tally()
    return img, img.root.content


def run_threads(n: int, work: Any) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# -- concurrency ---------------------------------------------------------------------------------------------


def test_threads_adding_in_transactions_never_conflict(make_image: Images) -> None:
    """6 threads each commit 50 transactions of ``+= 1`` (no retries): none conflicts, the counter ends at 300,
    and so does every number type's."""
    img, t = start(make_image)

    def work() -> None:
        for _ in range(50):
            with img.transaction():  # retries=0: a conflict would raise
                t.hits += 1
                t.total += Decimal("0.5")
                t.share -= Fraction(1, 3)

    run_threads(6, work)
    assert (t.hits, t.total, t.share) == (300, Decimal("150.0"), Fraction(-100))
    img.close()
    again = make_image(root=Box).root.content
    assert (again.hits, again.total, again.share) == (300, Decimal("150.0"), Fraction(-100))


def test_two_overlapping_transactions_adding_to_one_counter_both_commit(make_image: Images) -> None:
    """Two threads' transactions each read and add to the same counters, both before either commits (forced by
    a barrier): both commit without a conflict and without retries, and every add counts."""
    img, t = start(make_image)
    barrier = threading.Barrier(2, timeout=10)

    def work() -> None:
        with img.transaction():
            t.hits += 1
            t.total += Decimal("0.5")
            assert t.hits == 1
            barrier.wait()  # both have added; neither has committed
        barrier.wait()  # both committed

    run_threads(2, work)
    assert (t.hits, t.total) == (2, Decimal("1.0"))
    assert kinds(img, 2).count("obj.add") == 4


def test_threads_adding_outside_transactions_lose_nothing(make_image: Images) -> None:
    """``obj.f += 1`` outside a transaction is one atomic add: 6 threads of 50 end at 300."""
    img, t = start(make_image)

    def work() -> None:
        for _ in range(50):
            t.hits += 1

    run_threads(6, work)
    assert t.hits == 300
    assert set(kinds(img, 2)) == {"obj.add"}


def test_two_images_on_one_log_merge_their_adds(make_image: Images) -> None:
    """Transactions of two images on one log (another process, as far as each can tell) that add to the same
    counter from the same start both commit: the second catches up and appends without a conflict."""
    img, t = start(make_image)
    other = make_image(root=Box)
    t2 = other.root.content
    with img.transaction():
        t.hits += 2
        with other.transaction():  # begun before the first commits: its append is refused once, then merged
            t2.hits += 5
            assert t2.hits == 5
    # the inner one committed first (it ended first); the outer one's append found it and merged
    assert t.hits == 7
    other.refresh()
    assert t2.hits == 7


# -- reading ------------------------------------------------------------------------------------------------


def test_a_transaction_reads_the_committed_value_plus_its_own_adds(make_image: Images) -> None:
    """Inside a transaction a counter reads as committed now (another thread's commit made meanwhile included)
    plus this transaction's adds; the other thread sees none of them until the commit."""
    img, t = start(make_image)
    t.hits = 10
    seen: list[int] = []
    with img.transaction():
        t.hits += 2
        assert t.hits == 12

        def other() -> None:
            seen.append(t.hits)  # outside the transaction: the committed value
            with img.transaction():
                t.hits += 5

        run_threads(1, other)
        assert t.hits == 17  # 10 + 5 committed meanwhile + 2 of its own
        t.hits -= 1
        assert t.hits == 16
    assert seen == [10]
    assert t.hits == 16


def test_an_assignment_then_adds_in_one_transaction_read_as_assigned_plus_added(make_image: Images) -> None:
    """After an assignment in a transaction, its adds go on top of the assigned value."""
    img, t = start(make_image)
    with img.transaction():
        t.hits = 5
        t.hits += 1
        assert t.hits == 6
    assert t.hits == 6
    img.close()
    assert make_image(root=Box).root.content.hits == 6


def test_a_rolled_back_savepoint_drops_its_adds(make_image: Images) -> None:
    """Adds made in a savepoint that is rolled back are gone; those before it stay."""
    img, t = start(make_image)
    with img.transaction():
        t.hits += 1
        with pytest.raises(RuntimeError), img.transaction():
            t.hits += 10
            assert t.hits == 11
            raise RuntimeError
        assert t.hits == 1
    assert t.hits == 1


def test_a_reader_outside_sees_all_of_a_commit_with_adds_or_none(monkeypatch: Any, make_image: Images) -> None:
    """While a commit of two adds and an assignment is being applied, a reader in another thread sees the
    counter with both adds (and the other field assigned), before or after each event is applied."""
    img, t = start(make_image)
    t.hits = 10
    seen: list[Any] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        run_threads(1, lambda: seen.append((t.hits, t.note)))

    monkeypatch.setattr(img._engine, "before_apply", hook)
    with img.transaction():
        t.hits += 2
        t.note = "x"
        t.hits += 3
    assert seen == [(15, "x")] * 3
    assert t.hits == 15


def test_a_transaction_reading_counters_sees_all_of_a_commit_being_applied_or_none(
    monkeypatch: Any, make_image: Images
) -> None:
    """A transaction begun before a commit that moves 10 from one counter to another, reading both while that
    commit is being applied (between its two events), sees the commit whole: 90 and 10."""
    img, t = start(make_image)
    other = Tally()
    img.root.content = [t, other]
    t.hits = 100
    begun, between, read = threading.Event(), threading.Event(), threading.Event()
    seen: list[Any] = []

    def reader() -> None:
        with img.transaction():
            t.note  # begun before the commit
            begun.set()
            between.wait(10)
            seen.append((t.hits, other.hits))
            read.set()

    calls: list[str] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        calls.append(kind)
        if len(calls) == 2:  # the first add applied, the second not yet
            between.set()
            read.wait(10)

    thread = threading.Thread(target=reader)
    thread.start()
    begun.wait(10)
    monkeypatch.setattr(img._engine, "before_apply", hook)
    with img.transaction():
        t.hits -= 10
        other.hits += 10
    thread.join()
    assert calls == ["obj.add", "obj.add"]
    assert seen == [(90, 10)]


# -- conflicts ----------------------------------------------------------------------------------------------


def _commit_in_thread(img: memimg.MemoryImage, change: Any) -> None:
    def run() -> None:
        with img.transaction():
            change()

    run_threads(1, run)


def test_an_assignment_conflicts_with_an_add_committed_meanwhile(make_image: Images) -> None:
    """A transaction assigning a counter cannot commit over another's add: the add would be lost."""
    img, t = start(make_image)
    with pytest.raises(memimg.ConflictError, match=r"Tally #\d+\.hits"):
        with img.transaction():
            t.hits = 10

            def add() -> None:
                t.hits += 1

            _commit_in_thread(img, add)
    assert t.hits == 1


def test_an_add_conflicts_with_an_assignment_committed_meanwhile(make_image: Images) -> None:
    """A transaction adding to a counter cannot commit over another's assignment to it."""
    img, t = start(make_image)
    with pytest.raises(memimg.ConflictError, match=r"Tally #\d+\.hits"):
        with img.transaction():
            t.hits += 1

            def assign() -> None:
                t.hits = 10

            _commit_in_thread(img, assign)
    assert t.hits == 10


def test_an_add_conflicts_with_an_assignment_from_another_image(make_image: Images) -> None:
    """Between images on one log too: an add caught up with an assignment made since is refused."""
    img, t = start(make_image)
    other = make_image(root=Box)
    t2 = other.root.content
    with pytest.raises(memimg.ConflictError), img.transaction():
        t.hits += 1
        t2.hits = 10  # another image, outside a transaction: committed at once
    assert t.hits == 10


def test_two_assignments_still_conflict(make_image: Images) -> None:
    """Assignments to a counter are ordinary writes: two concurrent ones conflict."""
    img, t = start(make_image)
    with pytest.raises(memimg.ConflictError), img.transaction():
        t.hits = 1

        def assign() -> None:
            t.hits = 2

        _commit_in_thread(img, assign)
    assert t.hits == 2


# -- what is an add -----------------------------------------------------------------------------------------


def test_what_is_recorded_as_an_add_and_what_as_an_assignment(make_image: Images) -> None:
    """``+=``, ``-=``, ``f = f + n`` and ``x = f; f = x + n`` are adds of the numbers added; ``*``, a constant,
    a value read in another transaction or from another object, and ``f + f`` are assignments."""
    img, t = start(make_image)
    other = Tally()
    img.root.content = [t, other]
    with img.transaction():
        seq = img.seq
        t.hits += 3
        t.hits -= 1
        t.hits = t.hits + 4
        t.hits = 2 + t.hits
        x = t.hits
        t.hits = x + 10 - 5
        t.hits = t.hits * 2  # a plain write
        t.hits = 7
        t.hits = other.hits + 1  # read from another object
        t.hits = t.hits + t.hits  # two reads combined: no increment
        t.total += 1  # an int added to a Decimal counter: an add of a Decimal
        t.total = t.total  # assigned as read: an add of 0
    assert fields_written(img, seq) == [
        ("obj.add", "hits", 3),
        ("obj.add", "hits", -1),
        ("obj.add", "hits", 4),
        ("obj.add", "hits", 2),
        ("obj.add", "hits", 5),
        ("obj.set", "hits", 26),
        ("obj.set", "hits", 7),
        ("obj.set", "hits", 1),
        ("obj.set", "hits", 2),
        ("obj.add", "total", ["D", "1"]),
        ("obj.add", "total", ["D", "0"]),
    ]
    with img.transaction():
        kept = t.hits
    seq = img.seq
    with img.transaction():
        t.hits = kept + 1  # read in an earlier transaction: an assignment
    assert fields_written(img, seq) == [("obj.set", "hits", 3)]


@pytest.mark.parametrize("in_tx", [False, True], ids=["outside", "in-transaction"])
def test_a_number_read_before_an_assignment_of_the_counter_is_assigned_as_it_is(
    make_image: Images, in_tx: bool
) -> None:
    """``x = f; f = 0; f = x + 1`` assigns ``x + 1`` (the number, as Python would), not an add to the 0: a
    plain write of the counter -- here, by another thread, or by another image -- makes every number read from
    it before a plain number again. Adds in between do not."""
    img, t = start(make_image)
    t.hits = 5
    seq = img.seq
    with img.transaction() if in_tx else contextlib.nullcontext():
        x = t.hits
        t.hits = 0
        t.hits = x + 1
    assert t.hits == 6
    assert fields_written(img, seq) == [("obj.set", "hits", 0), ("obj.set", "hits", 6)]
    seq = img.seq
    with img.transaction() if in_tx else contextlib.nullcontext():
        x = t.hits
        t.hits += 1  # an add: x still adds
        t.hits = x + 2
    assert t.hits == 9
    assert fields_written(img, seq) == [("obj.add", "hits", 1), ("obj.add", "hits", 2)]
    if not in_tx:  # a plain write committed by another thread, then by another image
        other = make_image(root=Box)
        for reset in (
            lambda: run_threads(1, lambda: setattr(t, "hits", 0)),
            lambda: setattr(other.root.content, "hits", 0),
        ):
            x = t.hits
            reset()
            img.refresh()
            seq = img.seq
            t.hits = x + 1
            assert t.hits == 10
            assert fields_written(img, seq) == [("obj.set", "hits", 10)]
            t.hits = 9


def test_numbers_read_from_a_counter_are_plain_numbers_everywhere_else(make_image: Images) -> None:
    """A number read from a counter compares, hashes, prints, pickles, copies and JSON-encodes as the plain
    number; stored anywhere else (a field, a list, a tuple, a value object) it is stored as the plain number."""
    img, t = start(make_image)
    t.hits += 5
    t.total += Decimal("1.5")
    t.share += Fraction(1, 3)
    with img.transaction():
        for v, plain in ((t.hits, 5), (t.total, Decimal("1.5")), (t.share, Fraction(1, 3))):
            assert v == plain and hash(v) == hash(plain) and {v: 1}[plain] == 1
            assert repr(v) == repr(plain) and str(v) == str(plain) and f"{v}" == f"{plain}"
            for back in (pickle.loads(pickle.dumps(v)), copy.copy(v), copy.deepcopy(v)):
                assert back == plain and type(back) is type(plain)
            assert type(v * 2) is type(plain)  # anything but + and - gives the plain type
        assert json.dumps(t.hits) == "5"
        img.root.content = [t.hits, (t.hits, t.total), Point(t.hits, 2), {"k": t.share}, t]
    stored = img.root.content
    assert type(stored[0]) is int
    assert [type(x) for x in stored[1]] == [int, Decimal]
    assert type(stored[2].x) is int
    assert type(stored[3]["k"]) is Fraction
    t.note = "x"
    img.close()
    again = make_image(root=Box).root.content
    assert again[:4] == [5, (5, Decimal("1.5")), Point(5, 2), {"k": Fraction(1, 3)}]


def test_a_past_state_and_metadata_show_plain_number_types(make_image: Images) -> None:
    """A counter read from a past state (``img.at``), which is read-only, is the plain number itself; and
    refusing a counter's Decimal as transaction metadata names the type ``Decimal``."""
    img, t = start(make_image)
    t.hits += 2
    t.total += Decimal("1.5")
    past = img.at(img.seq).root.content
    assert (type(past.hits), type(past.total)) == (int, Decimal)
    with pytest.raises(memimg.UnsupportedValueError, match=r"meta\['n'\]: Decimal is not a JSON scalar"):
        with img.transaction(meta={"n": t.total}):
            t.note = "x"


def test_a_free_standing_object_holds_plain_numbers(make_image: Images) -> None:
    """An object not yet in an image reads and stores plain numbers; attached, its counter counts from there."""
    img = make_image(root=Box)
    attached = Tally(hits=4)
    img.root.content = attached
    loose = Tally(hits=attached.hits)
    assert type(loose.hits) is int
    loose.hits += 1
    assert loose.hits == 5 and type(loose.hits) is int
    img.root.content = loose
    loose.hits += 1
    assert loose.hits == 6


def test_decimal_counters_add_in_one_fixed_context(make_image: Images) -> None:
    """Decimal adds do not depend on the thread's decimal context: 28 significant digits, half-even, always."""
    img, t = start(make_image)
    with decimal.localcontext(prec=3):
        t.total += Decimal("1.23456")
        with img.transaction():
            t.total += Decimal("0.00001")
            assert t.total == Decimal("1.23457")
    assert t.total == Decimal("1.23457")
    img.close()
    assert make_image(root=Box).root.content.total == Decimal("1.23457")


# -- durability, history ------------------------------------------------------------------------------------


def test_adds_replay_reopen_and_survive_snapshots(make_image: Images) -> None:
    """Reopening replays the adds; a snapshot stores the sum; adds after it replay on top; ``memimg.replay``
    of the events gives the same."""
    img, t = start(make_image)
    for _ in range(3):
        t.hits += 2
    img.snapshot()
    t.hits += 1
    with img.transaction():
        t.ranked += 4
        t.share += Fraction(1, 2)
    assert memimg.replay(img.events()).content.hits == 7
    img.close()
    img = make_image(root=Box)
    t = img.root.content
    assert (t.hits, t.ranked, t.share) == (7, 4, Fraction(1, 2))
    t.hits += 1
    img.close()
    assert make_image(root=Box).root.content.hits == 8


def test_a_log_written_with_assignments_only_reads_and_counts_on(make_image: Images) -> None:
    """A log without any ``obj.add`` (written before counters, or only assigned) reads as before, and the
    counter adds from the stored value."""
    img = make_image(root=Box)
    store = img._engine.store
    img.root.content = Tally()
    seq = img.seq
    img.root.content.hits = 41  # an obj.set, as any old log has
    assert [e.kind for e in img.events(seq)] == ["obj.set"]
    assert store is not None
    img.close()
    img = make_image(root=Box)
    img.root.content.hits += 1
    img.close()
    assert make_image(root=Box).root.content.hits == 42


def test_a_subscription_to_one_counter_gets_its_adds_only(make_image: Images) -> None:
    """A subscription to one counter field, alone on the image, is delivered the adds to that field, not those
    to the object's other counters, nor commits that add only to them."""
    img, t = start(make_image)
    got: list[list[tuple[Any, ...]]] = []
    img.subscribe(lambda commit: got.append([(c.kind, c.field, c.old, c.new) for c in commit.changes]), to=(t, "hits"))
    t.total += 1
    t.hits += 2
    with img.transaction():
        t.share += 1
        t.hits += 3
        t.total += 4
    assert got == [[("obj.add", "hits", 0, 2)], [("obj.add", "hits", 2, 5)]]


def test_history_feeds_and_diff_show_each_add_with_the_values_before_and_after(make_image: Images) -> None:
    """``history`` gives each add as a Change of kind ``obj.add`` with the value before and the sum after;
    a subscription to the field gets the same; ``diff`` shows the sums."""
    img, t = start(make_image)
    got: list[memimg.Change] = []
    sub = img.subscribe(lambda commit: got.extend(commit.changes), to=(t, "hits"))
    before = img.seq
    t.hits += 2
    t.hits = 10
    with img.transaction():
        t.hits -= 3
    sub.close()
    changes = img.history(t, "hits")
    assert [(c.kind, c.old, c.new) for c in changes] == [
        ("obj.add", 0, 2),
        ("obj.set", 2, 10),
        ("obj.add", 10, 7),
    ]
    assert [(c.kind, c.old, c.new) for c in got] == [(c.kind, c.old, c.new) for c in changes]
    assert [(d.old, d.new) for d in img.diff(before)] == [(0, 7)]


def test_an_indexed_counter_is_found_by_its_sum(make_image: Images) -> None:
    """``index=True`` on a counter: ``find`` answers by the sum, in a transaction too, and after reopening."""
    img, t = start(make_image)
    t.ranked += 3
    assert img.find(Tally, ranked=3) == [t]
    with img.transaction():
        t.ranked += 1
        assert img.find(Tally, ranked=4) == [t]
        assert img.find(Tally, ranked=3) == []
    assert img.find(Tally, ranked=4) == [t]
    img.close()
    img = make_image(root=Box)
    assert img.find(Tally, ranked=4) == [img.root.content]


def test_find_in_a_transaction_follows_a_counter_other_threads_add_to(make_image: Images) -> None:
    """A transaction that added to an indexed counter finds the object by the value it reads now, also after
    another thread's add committed: neither by the value it read before nor by the committed one."""
    img, t = start(make_image)
    t.ranked += 5
    with img.transaction():
        t.ranked += 1
        assert img.find(Tally, ranked=6) == [t]

        def add() -> None:
            t.ranked += 10

        other = threading.Thread(target=add)
        other.start()
        other.join()
        assert t.ranked == 16
        assert img.find(Tally, ranked=16) == [t]
        assert img.find(Tally, ranked=6) == [] and img.find(Tally, ranked=15) == []
    assert img.find(Tally, ranked=16) == [t] and img.find(Tally, ranked=15) == []


def test_erasing_a_counters_past_keeps_the_log_replayable(make_image: Images) -> None:
    """Erasing a counter's past values erases the adds made to them too, and keeps the value it has now and the
    adds that make it: the log still replays to it."""
    img, t = start(make_image)
    t.hits = 5
    t.hits += 1
    t.hits = 100
    t.hits += 2
    img.erase(t, "hits", reason="test")
    # the adds to a replaced value are past with it; those to the current value are current
    assert [e.data[1] for e in img.events() if e.kind == "obj.add"] == [["erased"], 2]
    img.close()
    img = make_image(root=Box)
    assert img.root.content.hits == 102
    assert memimg.replay(img.events()).content.hits == 102


# -- a counter always holds a number ------------------------------------------------------------------------

_REFUSED = [
    ("hits", None, "NoneType"),
    ("hits", 1.5, "float"),
    ("hits", True, "bool"),
    ("hits", "3", "str"),
    ("hits", Decimal(3), "Decimal"),
    ("total", 1.5, "float"),
    ("total", Decimal("Infinity"), "Decimal"),
    ("total", Decimal("NaN"), "Decimal"),
    ("share", 0.5, "float"),
    ("share", None, "NoneType"),
]


@pytest.mark.parametrize("in_tx", [False, True], ids=["outside", "in-transaction"])
def test_a_counter_refuses_anything_but_a_finite_number_of_its_type(make_image: Images, in_tx: bool) -> None:
    """Assigning a counter anything but a finite number of its declared type (an int is converted exactly for a
    Decimal or Fraction counter) raises an UnsupportedValueError (a TypeError) naming class and field; nothing
    is written, the transaction goes on, and the log reopens."""
    img, t = start(make_image)
    t.hits = 4
    seq = img.seq
    for name, value, tname in _REFUSED:
        before = getattr(t, name)
        with img.transaction() if in_tx else contextlib.nullcontext():
            with pytest.raises(memimg.UnsupportedValueError, match=rf"Tally\.{name} is an? \w+ counter.*\({tname}\)"):
                setattr(t, name, value)
            assert getattr(t, name) == before
    with pytest.raises(TypeError, match=r"Tally\.hits is an int counter.*assigning 5\.5 \(float\) is refused.*float"):
        t.hits += 1.5  # the sum is a float: never stored in an int counter
    assert img.seq == seq
    with img.transaction() if in_tx else contextlib.nullcontext():
        t.total = 2  # an int for a Decimal counter, exactly
        t.share = 10**30
    assert fields_written(img, seq) == [("obj.set", "total", ["D", "2"]), ("obj.set", "share", ["Q", str(10**30)])]
    img.close()
    again = make_image(root=Box).root.content
    assert (again.hits, again.total, again.share) == (4, Decimal(2), Fraction(10**30))


def test_a_free_standing_object_refuses_a_counter_value_of_another_type() -> None:
    """Construction and assignment on an object not in an image check the counter's type as well."""
    with pytest.raises(memimg.UnsupportedValueError, match=r"Tally\.hits is an int counter.*None"):
        Tally(hits=None)  # type: ignore[arg-type]
    t = Tally(total=3)  # type: ignore[arg-type]
    assert type(t.total) is Decimal
    with pytest.raises(TypeError, match=r"Tally\.share is a Fraction counter.*float"):
        t.share = 0.25  # type: ignore[assignment]


def test_a_counter_cannot_be_deleted(make_image: Images) -> None:
    """``del obj.counter`` raises a TypeError naming class and field, in and out of transactions, attached or
    not: an add would have nothing to apply to. Nothing is written."""
    img, t = start(make_image)
    seq = img.seq
    with pytest.raises(TypeError, match=r"Tally\.hits is a counter.*cannot be deleted"):
        del t.hits
    with img.transaction(), pytest.raises(TypeError, match=r"Tally\.total is a counter.*cannot be deleted"):
        del t.total
    free = Tally()
    with pytest.raises(TypeError, match=r"Tally\.share is a counter"):
        del free.share
    assert img.seq == seq
    t.hits += 1
    assert t.hits == 1


@pytest.mark.parametrize("in_tx", [False, True], ids=["outside", "in-transaction"])
def test_an_add_whose_sum_would_not_be_finite_is_refused_before_it_is_written(make_image: Images, in_tx: bool) -> None:
    """Two images add to a Decimal counter near the largest exponent, each from the same start: the second
    add, once caught up, would overflow, so its commit is refused (naming class, field and seq) and nothing
    is written; the log reopens with the first add."""
    img, t = start(make_image)
    other = make_image(root=Box)
    t2 = other.root.content
    big = Decimal("6E+999999")
    with pytest.raises(memimg.UnsupportedValueError, match=r"Tally\.total is a Decimal counter: adding .* at seq"):
        if in_tx:
            with other.transaction():
                t2.total += big  # finite on what this transaction reads
                t.total += big  # committed meanwhile by the other image
        else:
            t.total += big
            t2.total += big  # finite on what this image saw; not on the log's value
    assert t2.total == big
    img.close()
    other.close()
    assert make_image(root=Box).root.content.total == big


def test_an_add_onto_something_else_left_in_the_log_is_refused(make_image: Images) -> None:
    """An image adds to a counter that another process (an older memimg) has meanwhile set to no number: the
    commit, caught up, is refused naming class, field and seq, nothing is written, and the log reopens."""
    img, t = start(make_image)
    other = make_image(root=Box)
    t2 = other.root.content
    engine = img._engine
    with engine.lock:  # an assignment as an older memimg could write it, past today's checks
        engine.commit([(KINDS["obj.set"], t, ("hits", None))])
    seq = img.seq
    with pytest.raises(memimg.UnsupportedValueError, match=rf"Tally\.hits .*adding 1 to the None .* seq {seq}"):
        t2.hits += 1
    assert t2.hits is None
    assert other.seq == seq
    t2.hits = 2
    t2.hits += 1
    img.close()
    other.close()
    assert make_image(root=Box).root.content.hits == 3


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "why"),
    [
        ("str", "not str"),
        ("list[int]", "not list"),
        ("bool", "a bool is no counter"),
        ("int | None", "not"),
        ("float", "not float"),
    ],
)
def test_merge_on_a_field_that_is_no_number_is_refused(annotation: str, why: str) -> None:
    """``merge="add"`` needs an int, Decimal or Fraction field: anything else is refused naming class and field."""
    ns: dict[str, Any] = {"memimg": memimg, "persistent": persistent}
    with pytest.raises(TypeError, match=rf"Bad\.f: memimg\.field\(merge=\"add\"\) needs an int.*{why}"):
        exec(
            f"@persistent\nclass Bad:\n    f: {annotation} = memimg.field(default=None, merge='add')\n",
            ns,
        )


def test_an_unknown_merge_or_merge_with_unique_is_refused() -> None:
    """An unknown ``merge=`` value, or a counter that is also unique, is refused at class definition."""
    with pytest.raises(TypeError, match=r"Bad1\.f: memimg\.field\(merge='max'\) is not a merge"):

        @persistent
        class Bad1:
            f: int = memimg.field(default=0, merge="max")

    with pytest.raises(TypeError, match=r"Bad2\.f: .*cannot be unique=True"):

        @persistent
        class Bad2:
            f: int = memimg.field(default=0, merge="add", unique=True)


def test_a_counter_of_a_subclass_counts() -> None:
    """A counter declared on a base class counts on its subclasses' instances too."""

    @persistent
    class Base:
        n: int = memimg.field(default=0, merge="add")

    @persistent
    class Sub(Base):
        extra: str = ""

    img = memimg.open(":memory:", root=Sub)
    img.root.n += 2
    with img.transaction():
        img.root.n += 1
    assert img.root.n == 3
    assert [e.kind for e in img.events(1)] == ["obj.add", "obj.add"]
    assert attrs.fields(Sub).n.default == 0


def test_a_renamed_counter_reads_its_adds_under_the_new_name(tmp_path: Any) -> None:
    """Adds logged under a counter's old name are read into the field renamed from it (``renamed_from``)."""
    v = Versions(tmp_path)
    v.record(
        """
        @persistent(name="{P}.Page")
        class Page:
            visits: int = memimg.field(default=0, merge="add")
        """,
        """
        with memimg.open(path, root=models.Page) as img:
            img.root.visits += 2
            img.snapshot()
            img.root.visits += 3
            with img.transaction():
                img.root.visits += 4
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Page")
        class Page:
            hits: int = memimg.field(default=0, merge="add", renamed_from="visits")
        """
    )
    with memimg.open(v.path, root=new.Page) as img:
        assert img.root.hits == 9
        assert [(c.kind, c.old, c.new) for c in img.history(img.root, "hits")][-2:] == [
            ("obj.add", 2, 5),
            ("obj.add", 5, 9),
        ]
        img.root.hits += 1
    with memimg.open(v.path, root=new.Page) as img:
        assert img.root.hits == 10
