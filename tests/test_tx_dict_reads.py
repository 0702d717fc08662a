"""``d[k]`` on a tracked dict inside a transaction: the value it sees and the read it records.

With the compiled accelerator the common case -- an attached dict the transaction has not written, a key
that is there, no commit since the transaction began -- is read and recorded by ``DictRead``
(``memimg/model/_speedups.c``); every other case by the Python reader it wraps. The pure-Python code
(``MEMIMG_PURE_PYTHON=1``, run by CI on this file too) must behave the same in every test here."""

from __future__ import annotations

import os
import threading

import pytest

import memimg
from memimg.image._tx import TxState
from memimg.model import _tracking
from memimg.model._accel import speedups
from memimg.model._collections import TrackedDict
from tests.conftest import Images
from tests.models import Account
from tests.txreads import bank, open_elsewhere, open_state


def test_a_dicts_read_in_a_transaction_is_the_compiled_one_with_the_accelerator(make_image: Images) -> None:
    """While read tracking is on, a tracked dict's ``__getitem__`` is the compiled ``DictRead`` wrapping the
    Python reader (the pure-Python reader itself without the accelerator)."""
    img = bank(make_image)
    with img.transaction():
        assert _tracking.enabled()
        getitem = TrackedDict.__dict__["__getitem__"]
        if speedups is not None:
            assert type(getitem) is speedups.DictRead
            assert getitem.__wrapped__.__qualname__ == "TrackedDict.__getitem__"
        elif os.environ.get("MEMIMG_REQUIRE_ACCEL"):  # pragma: no cover - CI builds the extension
            pytest.fail("the accelerator is required but not loaded")
        assert getitem.__name__ == "__getitem__"


def test_a_read_returns_the_committed_value_and_is_recorded(make_image: Images) -> None:
    """``d[k]`` gives the committed value and records ``(oid of d, k)``; a missing key raises KeyError and is
    recorded too."""
    img = bank(make_image)
    accounts = img.root.accounts
    with img.transaction():
        assert accounts["a"].owner == "a"
        with pytest.raises(KeyError):
            accounts["zz"]
        reads = open_state(img).reads
        assert (accounts._mi_oid, "a") in reads
        assert (accounts._mi_oid, "zz") in reads


def test_a_transaction_reads_its_own_writes_of_the_dict(make_image: Images) -> None:
    """After the transaction writes ``d[k]`` (its view of the dict), reads see its writes, not the committed
    dict; other keys still read through."""
    img = bank(make_image)
    accounts = img.root.accounts
    with img.transaction():
        accounts["d"] = Account("d")
        del accounts["b"]
        assert accounts["d"].owner == "d"
        assert accounts["a"].owner == "a"
        with pytest.raises(KeyError):
            accounts["b"]
    assert sorted(accounts) == ["a", "c", "d"]


def test_a_read_after_another_commit_changed_the_key_raises_conflict(make_image: Images) -> None:
    """A commit since the transaction began that replaced ``d[k]``: reading ``d[k]`` raises ConflictError; a key
    it did not touch reads as committed and is recorded."""
    img = bank(make_image)
    accounts = img.root.accounts

    def replace() -> None:
        accounts["b"] = Account("b2")

    with pytest.raises(memimg.ConflictError), img.transaction():
        accounts["a"]
        thread = threading.Thread(target=replace)
        thread.start()
        thread.join()
        assert accounts["c"].owner == "c"
        assert (accounts._mi_oid, "c") in open_state(img).reads
        accounts["b"]
    assert accounts["b"].owner == "b2"


def test_reads_outside_a_transaction_and_of_a_detached_dict_are_plain(make_image: Images) -> None:
    """While another thread's transaction keeps tracking on, a read here outside any transaction, and a read
    of a dict not attached, are plain reads (nothing recorded anywhere)."""
    img = bank(make_image)
    accounts = img.root.accounts
    with open_elsewhere(img):
        assert accounts["a"].owner == "a"
        loose = TrackedDict({"x": 1})
        assert loose["x"] == 1
        with pytest.raises(KeyError):
            loose["y"]


def test_a_replaced_note_read_is_honoured(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads are recorded through ``TxState.note_read``: replaced (as tests do to inject a commit), it is
    called for every dict read."""
    img = bank(make_image)
    accounts = img.root.accounts
    seen: list[object] = []
    original = TxState.note_read

    def spy(self: TxState, oid: int, sub: object) -> None:
        seen.append(sub)
        original(self, oid, sub)

    monkeypatch.setattr(TxState, "note_read", spy)
    with img.transaction():
        accounts["a"]
        accounts["c"]
    assert seen == ["a", "c"]
