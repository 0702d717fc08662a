"""Workload (k) ``history``: ``img.history(obj)`` of one object among a long log (memimg only: no peer keeps one).

An SQLite image of ``history_accounts`` accounts gets ``history_events``
balance updates in transactions of ``batch_size`` (with automatic
snapshots, as an application would have them); one account -- created
first, so its birth is at the very start of the log -- gets about 100 of
those updates, spread evenly over the whole log. Reported: the time of
``history(account)`` (median of several calls) on the image that wrote the
log, and again after reopening it (from its newest snapshot: the account's
birth is then read from the snapshot's header). Every call must return the
100 changes with ``old`` chained to the previous ``new``. The bar (SPEC §8):
at most 50 ms for an object among 1,000,000 events.

Commits do not write the target index history reads by: each snapshot fills
it up to itself, and history scans the events past it. Also reported, on
the same log: one fill of the ``SNAPSHOT_EVERY`` events a snapshot covers
(``index_targets``); the first ``history()`` of an image whose log was never
indexed (a log made before the index: that call fills the whole log once);
and ``history()`` on a read-only image of such a log (it cannot fill it, so
it scans the whole log -- the worst case, when no writer ever snapshots).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

from benchmarks.harness import Context

__all__ = ["history_workload"]

#: Changes of the observed account.
CHANGES = 100
#: Calls timed per sample.
CALLS = 15
#: The events one automatic snapshot covers on this log (memimg's default: 10,000, or the object count).
SNAPSHOT_EVERY = 10_000


class _Memimg:
    name = "memimg"


def _build(path: str, accounts: int, events: int, batch: int) -> Any:
    """Write the log; the image (still open) and its observed account."""
    import memimg
    from benchmarks.models import Account, Bank

    img = memimg.open(path, root=Bank)
    with img.transaction():
        for k in range(accounts):
            img.root.accounts[k] = Account(f"owner-{k}")
    observed = img.root.accounts[0]
    others = list(img.root.accounts.values())[1:]
    every = max(events // CHANGES, 1)
    done = 0
    while done < events:
        with img.transaction():
            for i in range(done, min(done + batch, events)):
                target = observed if i % every == every - 1 else others[i % len(others)]
                target.balance = i
        done += batch
    return img, observed


def _time(img: Any, obj: Any) -> float:
    """Median seconds of one history(obj) call, checking what it returns."""
    took = []
    for _ in range(CALLS):
        started = time.perf_counter()
        changes = img.history(obj)
        took.append(time.perf_counter() - started)
        if len(changes) != CHANGES or any(a.new != b.old for a, b in itertools.pairwise(changes)):
            raise AssertionError(f"history returned {len(changes)} changes, expected {CHANGES} chained ones")
    return statistics.median(took)


def _unindex(path: str, keep: int) -> int:
    """Empty the target index past seq *keep* (as if it were never filled past it); the log's head."""
    import sqlite3

    from memimg.stores._protocol import TARGETS_KEY

    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("DELETE FROM memimg_targets WHERE seq > ?", (keep,))
            conn.execute("UPDATE memimg_meta SET value = ? WHERE key = ?", (str(keep), TARGETS_KEY))
        return int(conn.execute("SELECT max(seq) FROM memimg_events").fetchone()[0])
    finally:
        conn.close()


def _backlog(path: str) -> dict[str, tuple[float, bool]]:
    """The costs of filling the index (see the module docstring), on the closed log at *path*."""
    import memimg

    head = _unindex(path, 0)
    img = memimg.open(path, readonly=True)
    try:
        started = time.perf_counter()
        img.history(img.root.accounts[0])
        scan = time.perf_counter() - started
    finally:
        img.close()
    img = memimg.open(path, snapshot_every=None)
    try:
        started = time.perf_counter()
        img.history(img.root.accounts[0])
        first = time.perf_counter() - started
    finally:
        img.close()
    _unindex(path, head - SNAPSHOT_EVERY)
    store = memimg.SQLiteStore(path)
    try:
        started = time.perf_counter()
        store.index_targets(head)
        fill = time.perf_counter() - started
    finally:
        store.close()
    return {
        f"index fill ms, {SNAPSHOT_EVERY:,} events": (fill * 1000, False),
        "first history ms, log never indexed (fills it)": (first * 1000, False),
        "history ms read-only, log never indexed (scans it)": (scan * 1000, False),
    }


def history_workload(ctx: Context) -> None:
    """(k) history(obj) of an object with 100 changes among ``history_events`` events."""
    import memimg

    events, accounts = ctx.sizes.history_events, ctx.sizes.history_accounts

    def sample(system: Any) -> dict[str, tuple[float, bool]]:
        with ctx.sample_dir("history") as where:
            path = str(where / "history.db")
            started = time.perf_counter()
            img, observed = _build(path, accounts, events, ctx.sizes.batch_size)
            ctx.progress(f"history: {img.seq:,} events written in {time.perf_counter() - started:.1f}s")
            live = _time(img, observed)
            img.close()
            started = time.perf_counter()
            img = memimg.open(path, snapshot_every=None)
            reopen = time.perf_counter() - started
            try:
                reopened = _time(img, img.root.accounts[0])
                waiting = img.seq - img._engine.store.index_targets(0)
            finally:
                img.close()
            backlog = _backlog(path)
        return {
            "history ms": (live * 1000, False),
            "history ms after reopening": (reopened * 1000, False),
            "events past the index": (waiting, False),
            "reopen s": (reopen, False),
            **backlog,
        }

    ctx.alternate("history", f"{CHANGES} changes among {events:,} events", [_Memimg()], sample, reps=1)
