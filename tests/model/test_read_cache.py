"""What a read remembers between reads never outlives what it depends on.

The compiled accelerator answers "may this read take the slot directly?" from
a per-thread cache (memimg/model/_speedups.c, "the quiet cache"): an answer
is kept for one image's writer in one context and is forgotten when a
transaction opens or closes, when this context's writer changes, when the
thread enters another context, or while a commit is being published. Each
test here reads in a loop first (so that an answer is cached), then changes
one of those things and checks that the next read sees it. The pure-Python
code caches nothing: the same tests hold there too.
"""

from __future__ import annotations

import contextvars
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import memimg
from memimg.image._tx import TxState
from memimg.model import _tracking
from memimg.model._accel import speedups


@memimg.persistent(name="readcache.Cell")
class Cell:
    value: Any = 0


def _reads(cell: Cell, n: int = 5) -> list[Any]:
    return [cell.value for _ in range(n)]


class _Thread:
    """A thread that runs what it is given, one call at a time, and stays alive in between (its reads
    keep what they cached)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self.results: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (call := self.calls.get()) is not None:
            self.results.put(call())

    def run(self, call: Callable[[], Any]) -> Any:
        self.calls.put(call)
        return self.results.get(timeout=10)

    def stop(self) -> None:
        self.calls.put(None)
        self.thread.join(10)


@pytest.fixture
def img() -> Iterator[Any]:
    image = memimg.open(root=dict)
    image.root["a"], image.root["b"] = Cell(1), Cell(2)
    yield image
    image.close()
    _tracking.disable_now()


@pytest.fixture
def other_tx(img: Any) -> Iterator[None]:
    """Another thread holds a transaction open: the read hooks are on, and reads here are plain."""
    holder = _Thread()
    tx = holder.run(img.begin)
    yield
    holder.run(tx.discard)
    holder.stop()


@pytest.mark.usefixtures("other_tx")
def test_a_transaction_opened_after_plain_reads_shows_its_own_writes(img: Any) -> None:
    """Reads outside a transaction, then one opened in this thread: its reads show its writes, and once it
    is discarded the committed value is read again."""
    a = img.root["a"]
    assert _reads(a) == [1] * 5
    tx = img.begin()
    a.value = 5
    assert _reads(a) == [5] * 5
    tx.discard()
    assert _reads(a) == [1] * 5


@pytest.mark.usefixtures("other_tx")
def test_a_transaction_opened_after_plain_reads_records_its_reads_without_python(img: Any) -> None:
    """Plain reads cached, then a transaction in this thread: the cache does not answer for it -- its reads
    are recorded and show its writes, by the compiled ``TxState.read_field`` (no Python code of it runs)
    with the accelerator, by the Python one without."""
    a, b = img.root["a"], img.root["b"]
    assert _reads(a) + _reads(b) == [1] * 5 + [2] * 5
    read_field = TxState.read_field.__code__
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code is read_field:
            calls += 1

    with img.transaction():
        state = img._engine.current_tx()
        a.value = 5
        sys.setprofile(profile)
        try:
            seen = _reads(a) + _reads(b)
        finally:
            sys.setprofile(None)
        assert seen == [5] * 5 + [2] * 5
        assert (b._mi_oid, "value") in state.reads
        assert (a._mi_oid, "value") not in state.reads
    assert calls == 0 if speedups is not None else calls > 0
    assert _reads(a) + _reads(b) == [5] * 5 + [2] * 5


def test_reads_after_the_last_transaction_closed_remove_the_hooks(img: Any) -> None:
    """A transaction open (the hooks on, reads plain), then none: the reads that follow count as idle and
    remove the hooks."""
    a = img.root["a"]
    _tracking.tx_opened()
    try:
        assert _reads(a) == [1] * 5
    finally:
        _tracking.tx_closed()
    assert _tracking.enabled()
    _reads(a, _tracking.IDLE_READS + 10)
    assert not _tracking.enabled()


@pytest.mark.usefixtures("other_tx")
def test_reads_in_two_contexts_of_one_thread_each_see_their_writer(img: Any) -> None:
    """A transaction open in a copied context of this thread: reads there show its write, reads here the
    committed value, alternately."""
    a = img.root["a"]
    ctx = contextvars.copy_context()
    tx = ctx.run(img.begin)
    ctx.run(setattr, a, "value", 7)
    for _ in range(3):
        assert _reads(a) == [1] * 5
        assert ctx.run(_reads, a) == [7] * 5
    ctx.run(tx.discard)
    assert _reads(a) == [1] * 5


@pytest.mark.usefixtures("other_tx")
def test_a_reader_that_read_before_a_commit_sees_all_of_it_or_none_while_it_is_applied(img: Any) -> None:
    """A thread that has been reading (plain reads, another transaction open) reads again while a commit of
    two fields is half applied: it sees both new values or both old ones."""
    a, b = img.root["a"], img.root["b"]
    reader = _Thread()
    try:
        assert reader.run(lambda: _reads(a) + _reads(b)) == [1] * 5 + [2] * 5
        seen: list[Any] = []

        def hook(kind: str, target: Any, args: Any) -> None:
            if target is b and not seen:  # a is applied, b not yet
                seen.append(reader.run(lambda: [a.value, b.value, a.value, b.value]))

        img._engine.before_apply = hook
        try:
            with img.transaction():
                a.value, b.value = 10, 20
        finally:
            img._engine.before_apply = None
        assert seen in ([[1, 2, 1, 2]], [[10, 20, 10, 20]])
        assert reader.run(lambda: _reads(a) + _reads(b)) == [10] * 5 + [20] * 5
    finally:
        reader.stop()


@pytest.mark.usefixtures("other_tx")
def test_reads_of_two_images_in_one_thread_each_see_their_writer(img: Any) -> None:
    """Reads alternating between two images, a transaction open on one of them in this thread: each image's
    reads go by its own writer."""
    a = img.root["a"]
    with memimg.open(root=dict) as second:
        second.root["c"] = Cell(3)
        c = second.root["c"]
        with second.transaction():
            c.value = 30
            for _ in range(3):
                assert _reads(a) == [1] * 5
                assert _reads(c) == [30] * 5
