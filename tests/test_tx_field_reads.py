"""A tracked field's read inside a transaction: the value it sees and the read it records.

With the compiled accelerator, ``TxState.read_field``'s common case -- the overlay brought up to date with
the fast path's sets, the transaction's own write, or the committed slot with the read recorded -- runs in
C (``memimg/model/_speedups.c``); every other case in Python. The pure-Python code
(``MEMIMG_PURE_PYTHON=1``, run by CI on this file too) must behave the same in every test here."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import memimg
from memimg.image import _tx
from memimg.image._tx import TxState
from memimg.model._accel import speedups
from tests.conftest import Images
from tests.models import Account, Bank


def _bank(make_image: Images) -> memimg.MemoryImage:
    img = make_image(root=Bank)
    img.root.accounts.update({k: Account(k, balance=Decimal(10)) for k in "abc"})
    return img


def _state(img: memimg.MemoryImage) -> TxState:
    state = img._engine.current_tx()
    assert state is not None
    return state


def _python_calls(fn: Callable[[], Any], *names: str) -> int:
    """How many times TxState's methods *names* run as Python code while *fn* runs."""
    codes = {getattr(TxState, name).__code__ for name in names}
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code in codes:
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_the_common_reads_of_a_transaction_run_no_python_with_the_accelerator(make_image: Images) -> None:
    """A field read (after the fast path's sets too) and a dict's ``d[k]`` inside a transaction: no Python code
    of the transaction with the accelerator; the Python methods without it."""
    img = _bank(make_image)
    accounts = img.root.accounts

    def work() -> None:
        for key in "abca":
            accounts[key].balance += 1

    with img.transaction():
        calls = _python_calls(work, "read_field", "sync", "note_read", "read_coll")
    assert calls == 0 if speedups is not None else calls > 0
    assert [accounts[k].balance for k in "abc"] == [Decimal(12), Decimal(11), Decimal(11)]


def test_a_transaction_reads_its_own_writes_and_records_committed_reads(make_image: Images) -> None:
    """Its own writes (several, of several objects, made by the fast path) are read back; a committed value
    read is recorded as ``(oid, field)``; a field written first and then read is not recorded."""
    img = _bank(make_image)
    a, b, c = (img.root.accounts[k] for k in "abc")
    with img.transaction():
        a.balance = Decimal(1)
        b.owner = "bee"
        a.balance = Decimal(2)
        assert (a.balance, b.owner, b.balance) == (Decimal(2), "bee", Decimal(10))
        c.owner = "sea"
        assert c.owner == "sea"
        reads = _state(img).reads
        assert (b._mi_oid, "balance") in reads
        assert (a._mi_oid, "balance") not in reads
    assert (a.balance, b.owner, c.owner) == (Decimal(2), "bee", "sea")


def test_a_deleted_or_unset_field_raises_attribute_error(make_image: Images) -> None:
    """A field this transaction deleted, and one never set, raise AttributeError when read."""
    img = _bank(make_image)
    a = img.root.accounts["a"]
    with img.transaction():
        del a.owner
        with pytest.raises(AttributeError):
            a.owner
        a.owner = "back"
        assert a.owner == "back"


def test_a_read_after_another_commit_changed_the_field_raises_conflict(make_image: Images) -> None:
    """A commit since the transaction began that changed a field: reading it raises ConflictError; a field it
    did not change reads as committed."""
    img = _bank(make_image)
    a, b = img.root.accounts["a"], img.root.accounts["b"]

    def change() -> None:
        b.balance = Decimal(99)

    with pytest.raises(memimg.ConflictError), img.transaction():
        assert a.balance == Decimal(10)
        thread = threading.Thread(target=change)
        thread.start()
        thread.join()
        assert a.owner == "a"
        b.balance
    assert b.balance == Decimal(99)


def test_reads_in_a_savepoint_and_after_its_rollback(make_image: Images) -> None:
    """Inside a savepoint (no fast path) reads see its writes; rolled back, they see the transaction's."""
    img = _bank(make_image)
    a = img.root.accounts["a"]
    with img.transaction():
        a.balance = Decimal(5)
        sp = img.begin()
        a.balance = Decimal(6)
        assert a.balance == Decimal(6)
        sp.discard()
        assert a.balance == Decimal(5)
    assert a.balance == Decimal(5)


def test_a_replaced_read_field_is_honoured(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """``TxState.read_field`` replaced (as tests do to inject a commit) is called for every field read."""
    img = _bank(make_image)
    a = img.root.accounts["a"]
    seen: list[str] = []
    original = TxState.read_field

    def spy(self: TxState, obj: Any, name: str, getter: Any) -> Any:
        seen.append(name)
        return original(self, obj, name, getter)

    monkeypatch.setattr(TxState, "read_field", spy)
    with img.transaction():
        a.balance = Decimal(3)
        assert a.balance == Decimal(3)
        assert a.owner == "a"
    assert seen == ["balance", "owner"]


def test_the_overlay_is_brought_up_to_date_with_the_fast_paths_sets(make_image: Images) -> None:
    """``TxState.sync`` (compiled with the accelerator) puts the sets the fast path journaled into the overlay,
    the last of each field winning, and marks them synced."""
    img = _bank(make_image)
    a, b = img.root.accounts["a"], img.root.accounts["b"]
    with img.transaction():
        a.balance = Decimal(1)
        b.owner = "bee"
        a.balance = Decimal(2)
        state = _state(img)
        if speedups is not None:
            assert _tx._sync is not None
            assert _tx._sync(state) is True
        else:
            state.sync()
        assert state.synced == len(state.events) == 9
        assert state.fields[id(a)] == {"balance": Decimal(2)}
        assert state.fields[id(b)] == {"owner": "bee"}
