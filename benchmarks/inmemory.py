"""Workload (e): what tracking costs in memory, with no I/O at all.

A memory image is only worth having if the objects in it are nearly as cheap
to use as plain Python objects; these figures put memimg next to a plain
``attrs.define`` class with the same fields (the ``attrs`` column, the
baseline of the ratios) and, for context, ZODB ``Persistent`` objects and
eventsourcing aggregates.

* **read** -- ns per read of an entity field. "outside a transaction" is the
  bar's case: memimg installs read hooks while transactions are open and
  removes them after a couple of thousand idle reads, so the measurement
  calls ``memimg.model._tracking.disable_now()`` first; two informational
  cases show the hooked paths: reading while another thread holds a
  transaction open, and reading inside a transaction.
* **set in a transaction** -- ns per field assignment inside an open
  transaction that is then discarded (memimg: planning the event and writing
  the delta layer; ZODB: registering the object with its transaction, then
  ``abort``; eventsourcing: one decorated method call, i.e. one domain
  event). Plain attrs is a slot store.
* **memory per object** -- bytes of Python heap held per item of the graph
  of :mod:`benchmarks.models` (items with a list and a reference, in groups),
  measured with ``tracemalloc`` as the growth from before the objects were
  built to after they are committed and every temporary is gone. For memimg
  and ZODB it includes the library's bookkeeping (object ids, identity maps,
  caches, indexes), which is the point.

Per-op times use loops with the operation unrolled ten times, minus the
time of the same empty loop, fastest of three trials per sample.
eventsourcing's set (one domain event, ~10 µs) runs a twentieth of the
operations of the others, to keep the quick run short.
"""

from __future__ import annotations

import gc
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import memimg
from benchmarks.harness import Context
from benchmarks.models import (
    Account,
    Bank,
    Forest,
    Group,
    Item,
    PlainAccount,
    PlainGroup,
    PlainItem,
    graph_shape,
    item_fields,
    item_ref,
)
from memimg.model import _tracking

__all__ = ["inmemory"]

UNROLL = 10


def _loop(body: str) -> Callable[[Any, int], None]:
    lines = "".join(f"        {body}\n" for _ in range(UNROLL))
    namespace: dict[str, Any] = {}
    exec(f"def run(o, n):\n    for i in range(n):\n{lines}", namespace)
    return namespace["run"]  # type: ignore[no-any-return]


#: inner trials per sample; the fastest is kept (as ``timeit`` does), the rest is noise
TRIALS = 3


def _ns_per_op(body: str, obj: Any, ops: int, trial: Callable[[], Any] = nullcontext) -> float:
    """ns per *body* on *obj*: the fastest of a few timed loops, minus the same empty loop.

    Each call compiles its own loops, so CPython's specialisation of one
    subject's loop never carries over to another's. Each timed loop runs
    inside ``with trial():`` (a fresh transaction, for instance).
    """
    run, empty = _loop(body), _loop("pass")
    n = max(ops // UNROLL, 1)
    best = best_empty = float("inf")
    for _ in range(TRIALS):
        with trial():
            started = time.perf_counter()
            run(obj, n)
            best = min(best, time.perf_counter() - started)
        started = time.perf_counter()
        empty(obj, n)
        best_empty = min(best_empty, time.perf_counter() - started)
    return max(best - best_empty, 0.0) / (n * UNROLL) * 1e9


_READ, _SET, _CALL = "o.balance", "o.balance = i", "o.set_balance(i)"


def _retained(build: Callable[[], Any]) -> int:
    """Bytes of Python heap still held after ``build()`` returned (its result is dropped first)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def _items(n: int, item: Any, group: Any) -> list[Any]:
    items = [item(*item_fields(i)) for i in range(n)]
    for i, it in enumerate(items):
        it.ref = items[item_ref(i, n)]
    return [group(f"group-{k}", [items[i] for i in r]) for k, r in enumerate(graph_shape(n))]


class _Memimg:
    name = "memimg"

    def __init__(self) -> None:
        self.img = memimg.open(":memory:", root=Bank)
        self.img.root.accounts[0] = Account("owner-0")
        self.account = self.img.root.accounts[0]

    def read(self, ops: int, mode: str) -> float:
        if mode == "hooks off":
            _tracking.disable_now()
            return _ns_per_op(_READ, self.account, ops)
        if mode == "other thread in a transaction":
            started, finish = threading.Event(), threading.Event()

            def hold() -> None:
                tx = self.img.begin()
                started.set()
                finish.wait()
                tx.discard()

            thread = threading.Thread(target=hold)
            thread.start()
            started.wait()
            try:
                return _ns_per_op(_READ, self.account, ops)
            finally:
                finish.set()
                thread.join()
        tx = self.img.begin()
        try:
            return _ns_per_op(_READ, self.account, ops)
        finally:
            tx.discard()

    @contextmanager
    def _discarded(self) -> Iterator[None]:
        tx = self.img.begin()
        try:
            yield
        finally:
            tx.discard()

    def set(self, ops: int) -> float:
        try:
            return _ns_per_op(_SET, self.account, ops, self._discarded)
        finally:
            _tracking.disable_now()

    def bytes_per_object(self, n: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            img = memimg.open(Path(tmp) / "image.db", root=Forest, snapshot_every=None)

            def build() -> Any:
                img.root.groups = _items(n, Item, Group)
                return None

            used = _retained(build)
            img.close()
        return used / n


class _Attrs:
    name = "attrs"

    def __init__(self) -> None:
        self.account = PlainAccount("owner-0")

    def read(self, ops: int, mode: str) -> float:
        return _ns_per_op(_READ, self.account, ops)

    def set(self, ops: int) -> float:
        return _ns_per_op(_SET, self.account, ops)

    def bytes_per_object(self, n: int) -> float:
        return _retained(lambda: _items(n, PlainItem, PlainGroup)) / n


class _ZODB:
    name = "ZODB"

    def __init__(self) -> None:
        import transaction
        import ZODB

        from benchmarks.systems._zodb import ZAccount

        self.db = ZODB.DB(None)
        self.tm = transaction.TransactionManager()
        self.conn = self.db.open(transaction_manager=self.tm)
        self.conn.root()["account"] = self.account = ZAccount("owner-0")
        self.tm.commit()

    def read(self, ops: int, mode: str) -> float:
        return _ns_per_op(_READ, self.account, ops)

    @contextmanager
    def _aborted(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.tm.abort()

    def set(self, ops: int) -> float:
        return _ns_per_op(_SET, self.account, ops, self._aborted)

    def bytes_per_object(self, n: int) -> float:
        import transaction
        import ZODB
        from ZODB.FileStorage import FileStorage

        from benchmarks.systems._zodb import ZForest, ZGroup, ZItem

        with tempfile.TemporaryDirectory() as tmp:
            db = ZODB.DB(FileStorage(str(Path(tmp) / "data.fs")), cache_size=2 * n + 100)
            tm = transaction.TransactionManager()
            conn = db.open(transaction_manager=tm)

            def build() -> Any:
                conn.root()["forest"] = ZForest(_items(n, ZItem, ZGroup))
                tm.commit()
                return None

            used = _retained(build)
            conn.close()
            db.close()
        return used / n


class _EventSourcing:
    name = "eventsourcing"

    def __init__(self) -> None:
        from benchmarks.systems._eventsourcing import EsAccount

        self.account = EsAccount(key=0, owner="owner-0")

    def read(self, ops: int, mode: str) -> float:
        return _ns_per_op(_READ, self.account, ops)

    def set(self, ops: int) -> float:
        try:
            return _ns_per_op(_CALL, self.account, max(ops // 20, UNROLL))
        finally:
            self.account.collect_events()

    def bytes_per_object(self, n: int) -> None:
        return None


def inmemory(ctx: Context) -> None:
    """(e) ns per tracked read and per in-transaction set; bytes per tracked object."""
    names = {s.name for s in ctx.systems}
    subjects: list[Any] = [_Memimg(), _Attrs()]
    if "ZODB" in names:
        subjects.append(_ZODB())
    if "eventsourcing" in names:
        subjects.append(_EventSourcing())
    ops = ctx.sizes.ops

    ctx.alternate(
        "in-memory",
        "read a field outside a transaction",
        subjects,
        lambda s: {"ns/read": (s.read(ops, "hooks off"), False)},
    )
    for mode in ("other thread in a transaction", "inside a transaction"):
        ctx.alternate(
            "in-memory",
            f"read a field, {mode} (memimg hooks on)",
            subjects[:2],
            lambda s, mode=mode: {"ns/read": (s.read(ops, mode), False)},
        )
    ctx.alternate(
        "in-memory",
        "set a field in a transaction (no I/O)",
        subjects,
        lambda s: {"ns/set": (s.set(ops), False)},
    )
    n = ctx.sizes.memory_objects
    ctx.alternate(
        "in-memory",
        f"memory per object ({n:,} graph items)",
        [s for s in subjects if s.name != "eventsourcing"],
        lambda s: {"bytes/object": (s.bytes_per_object(n), False)},
    )
