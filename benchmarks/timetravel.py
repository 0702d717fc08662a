"""Workload (i) ``timetravel``: ``img.at(seq)`` against opening the image at that seq (memimg only).

An SQLite image of ``history_objects`` accounts and the largest history of
the recovery workload (1,000,000 mutations at full size), written in
batches, with a snapshot every quarter of the log. The seq looked at lies
60% into the log, between two snapshots, so both sides load the snapshot
before it and replay the events up to it.

* ``at(seq)``: the image is open at its head; the time of ``img.at(seq)``
  (and closing it).
* ``open at seq``: a copy of the log with every event and snapshot after the
  seq deleted; the time of ``memimg.open`` on it (and closing it) -- what
  ``at`` stands in for.

Both return the sum of the balances, which must agree. The bar (SPEC §9):
``at`` costs at most 1.5x the open.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Context

__all__ = ["timetravel"]


class _Memimg:
    name = "memimg"


def _build(where: Path, n_objects: int, n_mutations: int, batch: int) -> int:
    """Write the log at *where*; the seq to look at."""
    import memimg
    from benchmarks.models import Account, Bank, history

    mutations = history(n_objects, n_mutations)
    quarter = max(1, len(mutations) // 4)
    with memimg.open(where, root=Bank, snapshot_every=None) as img:
        with img.transaction():
            for k in range(n_objects):
                img.root.accounts[k] = Account(f"owner-{k}")
        accounts = img.root.accounts
        for start in range(0, len(mutations), batch):
            with img.transaction():
                for key, balance in mutations[start : start + batch]:
                    accounts[key].balance = balance
            if start // quarter != (start + batch) // quarter:
                img.snapshot()
        head = img.seq
    return max(2, int(head * 0.6))


def _cut_copy(source: Path, target: Path, seq: int) -> None:
    """A copy of the log at *source* holding nothing after *seq*: the image as it was at that seq."""
    shutil.copyfile(source, target)
    conn = sqlite3.connect(target)
    with conn:
        conn.execute("DELETE FROM memimg_events WHERE seq > ?", (seq,))
        conn.execute("DELETE FROM memimg_snapshots WHERE seq > ?", (seq,))
    conn.close()


def _balances(root: Any) -> int:
    return sum(a.balance for a in root.accounts.values())


def timetravel(ctx: Context) -> None:
    """(i) the cost of ``img.at(seq)`` against opening the image at that seq."""
    import memimg

    n_objects, n_mutations = ctx.sizes.history_objects, ctx.sizes.histories[-1]
    where = ctx.fresh_dir("timetravel")
    log, cut = where / "image.db", where / "cut.db"
    seq = _build(log, n_objects, n_mutations, ctx.sizes.batch_size)
    _cut_copy(log, cut, seq)
    parent = memimg.open(log, root=dict, snapshot_every=None, readonly=True)
    turn = [0]

    def sample(system: Any) -> dict[str, tuple[float, bool]]:
        def at() -> tuple[float, int]:
            started = time.perf_counter()
            with parent.at(seq) as past:
                took = time.perf_counter() - started
                return took, _balances(past.root)

        def opened() -> tuple[float, int]:
            started = time.perf_counter()
            with memimg.open(cut, root=dict, snapshot_every=None, readonly=True) as img:
                took = time.perf_counter() - started
                return took, _balances(img.root)

        turn[0] += 1
        first, second = (at, opened) if turn[0] % 2 else (opened, at)
        results = {first: first(), second: second()}
        (t_at, sum_at), (t_open, sum_open) = results[at], results[opened]
        if sum_at != sum_open:
            raise AssertionError(f"timetravel: at({seq}) sums {sum_at}, the image opened at it {sum_open}")
        return {"at(seq) s": (t_at, False), "open at seq s": (t_open, False), "at / open": (t_at / t_open, False)}

    try:
        ctx.alternate("timetravel", f"{n_mutations:,} mutations, at seq {seq:,}", [_Memimg()], sample)
    finally:
        parent.close()
        shutil.rmtree(where, ignore_errors=True)
