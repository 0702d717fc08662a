"""Time travel: ``img.at`` (a read-only image of a past state) and ``img.diff`` (what changed between two).

The laws, on random programs of mutations, transactions and snapshots
(hypothesis): ``at(s)`` equals the state observed live right after seq
``s``, for every ``s``, before and after reopening; every seq's state equals
the replay of the events up to it; applying ``diff(a, b)`` to the state at
``a`` gives the state at ``b``. They run on the memory store: each example
opens an image per seq (a few hundred per example), which on SQLite and
PostgreSQL costs seconds per example without testing anything the store
decides -- the stores' part (reading up to a seq, the snapshots listed) is
tested on every store by the image-level tests below.
"""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memimg
from memimg.image import _past
from tests.conftest import Images, log_meta
from tests.history_model import apply_diff, program, project, run
from tests.models import Account, Bank, Entry

LAWS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@LAWS
@given(prog=program)
def test_at_every_seq_is_the_state_seen_live_then(prog: list[Any]) -> None:
    """at(s) equals the state observed live right after each commit s, before and after reopening, across
    snapshots; every seq (inside a transaction too) gives the replay of the events up to it."""
    store = memimg.MemoryStore()
    img = memimg.open(store, root=Bank)
    seen = run(img, prog)
    for seq, state in seen.items():
        with img.at(seq) as past:
            assert past.seq == seq and project(past.root) == state
    events = list(img.events())
    for seq in range(1, img.seq + 1):
        with img.at(seq) as past:
            assert project(past.root) == project(memimg.replay(e for e in events if e.seq <= seq))
    img.close()
    with memimg.open(store, root=Bank) as again:
        for seq, state in seen.items():
            with again.at(seq) as past:
                assert project(past.root) == state


@LAWS
@given(prog=program, data=st.data())
def test_applying_a_diff_to_the_state_at_a_gives_the_state_at_b(prog: list[Any], data: st.DataObject) -> None:
    """diff(a, b) applied to the state at a (a plain projection) gives the state at b, both ways."""
    img = memimg.open(memimg.MemoryStore(), root=Bank)
    seen = run(img, prog)
    seqs = sorted(seen)
    for _ in range(4):
        a, b = data.draw(st.sampled_from(seqs)), data.draw(st.sampled_from(seqs))
        diff = img.diff(a, b)
        assert (diff.a, diff.b) == (a, b)
        assert apply_diff(seen[a], diff) == seen[b]
        assert bool(diff) == (seen[a] != seen[b])
    assert img.diff(seqs[0]) == img.diff(seqs[0], img.seq)
    img.close()


# -- at() on every store -------------------------------------------------------------


def _bank(make_image: Images) -> tuple[memimg.MemoryImage, dict[str, int]]:
    img = make_image(root=Bank)
    marks = {}
    img.root.accounts["ada"] = Account("ada", entries=[Entry("in", Decimal(1))])
    marks["opened"] = img.seq
    img.root.accounts["ada"].balance += 5
    marks["deposit"] = img.seq
    marks["snapshot"] = img.snapshot()
    with img.transaction():
        img.root.accounts["bob"] = Account("bob")
        img.root.accounts["ada"].balance -= 2
    marks["tx"] = img.seq
    return img, marks


def test_at_is_a_frozen_read_only_image_of_the_past(make_image: Images) -> None:
    """at(seq) has the same classes and distinct objects, stays at its seq while the parent goes on, refuses
    writes (nothing is written), and closing it leaves the parent open."""
    img, marks = _bank(make_image)
    head = img.store.head()
    past = img.at(marks["deposit"])
    ada = past.root.accounts["ada"]
    assert type(ada) is Account and ada is not img.root.accounts["ada"]
    assert ada.balance == 5 and "bob" not in past.root.accounts and past.readonly
    with pytest.raises(memimg.ReadOnlyError):
        ada.balance = 100
    with pytest.raises(memimg.ReadOnlyError):
        past.root.accounts["zed"] = Account("zed")
    with pytest.raises(memimg.ReadOnlyError):
        past.snapshot()
    assert img.store.head() == head and ada.balance == 5
    img.root.accounts["ada"].balance = 42  # the parent goes on; the past stays
    assert past.refresh() == 0 and past.seq == marks["deposit"] and ada.balance == 5
    with past.transaction():
        assert past.root.accounts["ada"].balance == 5
    past.close()
    img.root.accounts["ada"].balance += 1
    assert img.root.accounts["ada"].balance == 43 and img.store.head() == head + 2


def test_at_registers_no_position_takes_no_lease_and_starts_no_thread(make_image: Images) -> None:
    """Opening and closing a past image writes nothing to the store's meta (no position, no lease) and runs no
    snapshot or follower thread."""
    img, marks = _bank(make_image)
    meta = log_meta(img.store)
    threads = {t.name for t in threading.enumerate()}
    with img.at(marks["opened"]) as past:
        assert log_meta(img.store) == meta
        assert {t.name for t in threading.enumerate()} <= threads
        past.root.accounts["ada"].owner
    assert log_meta(img.store) == meta


def test_at_defaults_to_the_parent_seq_and_follows_snapshots(make_image: Images) -> None:
    """at() is the parent's state now; each seq before and after a snapshot is its own state."""
    img, marks = _bank(make_image)
    with img.at() as now:
        assert now.seq == img.seq and now.root.accounts["ada"].balance == 3
    expected = {"opened": (0, False), "deposit": (5, False), "snapshot": (5, False), "tx": (3, True)}
    for mark, (balance, has_bob) in expected.items():
        with img.at(marks[mark]) as past:
            assert past.root.accounts["ada"].balance == balance
            assert ("bob" in past.root.accounts) is has_bob


def test_at_a_time_is_the_last_commit_at_or_before_it(make_image: Images) -> None:
    """at(time=t) is the state after the last commit whose time is at or before t."""
    img, _marks = _bank(make_image)
    times = {e.seq: e.ts for e in img.events()}
    for seq, ts in times.items():
        with img.at(time=ts) as past:
            assert times[past.seq] == ts and all(t > ts for s, t in times.items() if s > past.seq)
    later = dt.datetime.now(dt.UTC)
    with img.at(time=later.astimezone(dt.timezone(dt.timedelta(hours=-5)))) as past:  # any offset
        assert past.seq == img.seq


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        ((0,), memimg.HistoryError, "before the first commit"),
        ((10_000,), memimg.HistoryError, "past the head"),
        ((-1,), ValueError, "negative"),
        ((True,), TypeError, "not bool"),
        (("3",), TypeError, "not str"),
        ((), TypeError, "not both"),
    ],
)
def test_bad_seqs_are_refused_naming_the_problem(
    make_image: Images, monkeypatch: pytest.MonkeyPatch, args: Any, error: type, words: str
) -> None:
    """A seq of 0, past the head, negative, not an int, or with a time too: a clear error; nothing is written,
    and diff() checks both seqs before it reads either state."""
    img, _ = _bank(make_image)
    before = (img.store.head(), log_meta(img.store))

    def no_open(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a past state was read before both seqs were checked")

    monkeypatch.setattr(_past, "PastStore", no_open)
    if not args:
        with pytest.raises(error, match=words):
            img.at(1, time=dt.datetime.now(dt.UTC))
    else:
        with pytest.raises(error, match=words):
            img.at(*args)
        with pytest.raises(error, match=words):
            img.diff(*args)
        with pytest.raises(error, match=words):
            img.diff(1, *args)
    assert (img.store.head(), log_meta(img.store)) == before


@pytest.mark.parametrize(
    ("when", "error", "words"),
    [
        (dt.datetime(2020, 1, 1), ValueError, "naive"),
        (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), memimg.HistoryError, "in the future"),
        (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), memimg.HistoryError, "before the first commit"),
        ("2020-01-01", TypeError, "must be a datetime"),
    ],
)
def test_bad_times_are_refused_naming_the_problem(make_image: Images, when: Any, error: type, words: str) -> None:
    """A naive time, one in the future or before the first commit, or not a datetime: a clear error."""
    img, _ = _bank(make_image)
    before = (img.store.head(), log_meta(img.store))
    with pytest.raises(error, match=words) as info:
        img.at(time=when)
    if error is memimg.HistoryError:
        assert info.value.time == when and info.value.oldest == 1 and info.value.head == img.seq
    assert (img.store.head(), log_meta(img.store)) == before


def test_a_compacted_seq_raises_history_error_naming_the_oldest(make_image: Images) -> None:
    """After the events before a snapshot were dropped, a seq before it raises HistoryError naming the oldest
    available seq (the snapshot's); from there on every seq works."""
    img, marks = _bank(make_image)
    store = make_image.store()
    cut = marks["snapshot"]
    store.delete_events_before(cut)
    store.delete_snapshots_before(cut)
    with pytest.raises(memimg.HistoryError, match=f"the oldest available seq is {cut}") as info:
        img.at(marks["deposit"])
    assert (info.value.seq, info.value.oldest, info.value.head) == (marks["deposit"], cut, img.seq)
    with pytest.raises(memimg.HistoryError, match=f"oldest available seq is {cut}"):
        img.diff(marks["opened"])
    for seq in range(cut, img.seq + 1):
        with img.at(seq) as past:
            assert past.root.accounts["ada"].balance == (5 if seq < marks["tx"] else 3)
    events = list(img.events())
    with pytest.raises(memimg.HistoryError, match=f"before the oldest kept event \\(seq {cut}\\)"):
        img.at(time=events[0].ts - dt.timedelta(microseconds=1))


# -- diff() on every store -----------------------------------------------------------


def test_diff_lists_each_change_at_its_shortest_path(make_image: Images) -> None:
    """One Difference per changed field, dict key, list and set member, at the shortest path from the root;
    objects created or dropped appear once, as the value of the slot that holds them."""
    img = make_image(root=Bank)
    img.root.accounts["ada"] = ada = Account("ada", tags={"a"}, entries=[Entry("in")])
    img.root.accounts["old"] = Account("old")
    a = img.seq
    with img.transaction():
        ada.balance = Decimal(7)
        ada.tags.discard("a")
        ada.tags.add("b")
        ada.entries.append(Entry("out"))
        img.root.accounts["zz"] = ada  # shared: reached at 'ada' first
        img.root.accounts["new"] = new = Account("new")
        del img.root.accounts["old"]
    diff = img.diff(a)
    old_acct = next(d.old for d in diff if d.path == "root.accounts['old']")
    assert [(d.path, d.old, d.new) for d in diff] == [
        ("root.accounts['zz']", memimg.MISSING, diff[0].new),
        ("root.accounts['new']", memimg.MISSING, diff[1].new),
        ("root.accounts['old']", old_acct, memimg.MISSING),
        ("root.accounts['ada'].balance", Decimal(0), Decimal(7)),
        ("root.accounts['ada'].tags", "a", memimg.MISSING),
        ("root.accounts['ada'].tags", memimg.MISSING, "b"),
        ("root.accounts['ada'].entries", diff[6].old, diff[6].new),
    ]
    assert diff[0].new._mi_oid == ada._mi_oid and diff[1].new._mi_oid == new._mi_oid
    assert type(old_acct) is Account and old_acct.owner == "old"
    assert [e.label for e in diff[6].old] == ["in"] and [e.label for e in diff[6].new] == ["in", "out"]
    assert str(diff).splitlines() == [
        "root.accounts['zz']: MISSING → Account #3",
        f"root.accounts['new']: MISSING → Account #{new._mi_oid}",
        f"root.accounts['old']: Account #{old_acct._mi_oid} → MISSING",
        "root.accounts['ada'].balance: Decimal('0') → Decimal('7')",
        "root.accounts['ada'].tags: 'a' → MISSING",
        "root.accounts['ada'].tags: MISSING → 'b'",
        f"root.accounts['ada'].entries: [Entry #{diff[6].old[0]._mi_oid}] → "
        f"[Entry #{diff[6].old[0]._mi_oid}, Entry #{diff[6].new[1]._mi_oid}]",
    ]
    assert str(img.diff(img.seq)) == f"no differences between seq {img.seq} and seq {img.seq}"


def test_difference_and_diff_are_public_frozen_records() -> None:
    """Difference and Diff are memimg's, frozen, compared by value."""
    d = memimg.Difference("root.x", 1, memimg.MISSING)
    assert memimg.Difference.__module__ == memimg.Diff.__module__ == memimg.HistoryError.__module__ == "memimg"
    assert d == memimg.Difference("root.x", 1, memimg.MISSING) and str(d) == "root.x: 1 → MISSING"
    with pytest.raises(AttributeError):
        d.path = "root.y"  # type: ignore[misc]
    diff = memimg.Diff(1, 2, (d,))
    assert list(diff) == [d] and len(diff) == 1 and diff[0] is d and str(diff) == str(d)
    assert issubclass(memimg.HistoryError, memimg.MemimgError)


def test_diff_tells_values_of_other_types_and_nan_apart(make_image: Images) -> None:
    """Values are compared by type and value: 1 -> True and 1 -> 1.0 are changes; NaN -> NaN is not."""
    img = make_image(root=dict)
    img.root["n"], img.root["f"], img.root["nan"] = 1, 1, float("nan")
    a = img.seq
    img.root["n"], img.root["f"], img.root["nan"] = True, 1.0, float("nan")
    assert [(d.path, d.old, d.new) for d in img.diff(a)] == [("root['n']", 1, True), ("root['f']", 1, 1.0)]


def test_at_inside_a_transaction_sees_the_committed_state_and_a_closed_image_refuses(make_image: Images) -> None:
    """at() in an open transaction is the committed state (not the transaction's writes); on a closed image
    at() and diff() raise ClosedError."""
    img, marks = _bank(make_image)
    with img.transaction():
        img.root.accounts["ada"].balance = Decimal(99)
        with img.at() as past:
            assert past.seq == marks["tx"] and past.root.accounts["ada"].balance == 3
    img.close()
    with pytest.raises(memimg.ClosedError):
        img.at(1)
    with pytest.raises(memimg.ClosedError):
        img.diff(1)


def test_a_seq_whose_events_are_kept_without_a_snapshot_before_says_so(make_image: Images) -> None:
    """Events kept with no snapshot at or before them (a log compacted by hand, or by an older memimg): the
    error says the events are kept but nothing to start from is, and names the oldest available seq."""
    img, marks = _bank(make_image)
    store = make_image.store()
    store.delete_events_before(marks["deposit"])
    store.delete_snapshots_before(marks["deposit"])
    with pytest.raises(memimg.HistoryError, match="its events are kept .* but no snapshot at or before it") as info:
        img.at(marks["deposit"])
    assert info.value.oldest == marks["snapshot"] and "dropped" not in str(info.value)
