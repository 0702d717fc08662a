"""Workloads (a)-(d): durable commits, batches, recovery and big graphs, on every system.

Each workload is written once, against :class:`benchmarks.systems.System`,
and run by :meth:`benchmarks.harness.Context.alternate` (repetitions,
alternating systems, medians).

(a) ``commit`` -- **durable single-mutation commits.** 1,000 accounts; each
    commit changes one balance and returns only once it is durable. This is
    the latency-bound case of an interactive application: the cost is
    dominated by the fsync (``sync="full"``) or by the write path around it
    (``sync="normal"``). Raw sqlite3 does one ``INSERT`` per commit in WAL
    mode with the same ``synchronous`` setting, the floor for any SQLite log.
    ZODB and eventsourcing have no such switch (both fsync every commit) and
    are measured in both cases.

(b) ``batch`` -- **1,000 mutations per transaction.** The throughput-bound
    case (imports, bulk updates): per-mutation CPU cost dominates, the single
    fsync is amortised. Two cases: 1,000 balances set on consecutive accounts,
    and 1,000 read-modify-write deposits (``balance += amount``) on random
    accounts of the 1,000, repeats allowed. Raw sqlite3 is ``executemany`` in
    one transaction: of the same rows memimg writes for the sets; for the
    deposits, from balances it keeps in a list, of one row per deposit, as the
    harness of issue 23 writes them (memimg writes one event per account
    changed: a transaction's repeated assignments of one field are written
    once, as their outcome). Raw sqlite3 also writes the deposits as one
    row per account changed (metric :data:`OUTCOME_ROWS`, its own sample):
    the report prints memimg's ratio against that too, beside the bar.
    After the deposits every system is reopened and the sum of the balances
    checked.

(c) ``recovery`` -- **reopen after a long history.** 5,000 accounts and
    N mutations scattered over them, written in batches; then the time to
    reopen and have every account in memory. Without a snapshot memimg
    replays every event (events/s is the figure of merit); with one it loads
    the snapshot. Raw sqlite3 folds all rows into dicts (or reads a folded
    table and the rows after it); ZODB simply loads current object states
    (it keeps no history to replay); eventsourcing reconstructs each
    aggregate from its events (or its snapshot).

(d) ``graph`` -- **a big graph of small objects.** N items with a short list
    of tags and a reference to another item, in groups of 100: the cost of
    making a fresh graph durable (commit; for memimg also the snapshot) and
    the peak RSS of doing it (graph included; for memimg also the peak
    before the snapshot, of the attach), the file size, and the reload
    time and peak RSS; writing and reloading each run in a clean child
    process.

Every recovery and reload returns a checksum that must equal the expected
one, so a system cannot win by loading less.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Context, dir_size, run_child
from benchmarks.models import graph_checksum, history, history_checksum

__all__ = ["OUTCOME_ROWS", "batch", "commit", "deposits", "graph", "recovery"]

#: raw sqlite3's deposits written as one row per account changed (memimg's outcome rows), not one per deposit
OUTCOME_ROWS = "updates/s, one row per account changed"


def _check(what: str, system: str, got: int, expected: int) -> None:
    if got != expected:
        raise AssertionError(f"{what}: {system} returned checksum {got}, expected {expected}; the benchmark is wrong")


def commit(ctx: Context) -> None:
    """(a) durable single-mutation commits per second, per sync mode."""
    n = ctx.sizes.accounts
    for sync, count in (("full", ctx.sizes.commits_full), ("normal", ctx.sizes.commits_normal)):

        def sample(system: Any, sync: str = sync, count: int = count) -> dict[str, tuple[float, bool]]:
            if sync not in system.sync_modes:  # it fsyncs every commit whatever the case says
                count = ctx.sizes.commits_full
            with ctx.sample_dir(f"commit-{system.name}") as where:
                accounts = system.open_accounts(where, n, sync)
                try:
                    started = time.perf_counter()
                    for k in range(count):
                        accounts.update(k % n, k + 1)
                    took = time.perf_counter() - started
                finally:
                    accounts.close()
            return {"updates/s": (count / took, True)}

        ctx.alternate("commit", f"sync={sync}", ctx.systems, sample)


def deposits(n: int, size: int, batches: int, seed: int = 23) -> list[list[tuple[int, int]]]:
    """*batches* lists of *size* ``(key, amount)`` deposits on random accounts of *n* (repeats allowed)."""
    rng = random.Random(seed)
    return [[(rng.randrange(n), rng.randrange(1, 100)) for _ in range(size)] for _ in range(batches)]


def batch(ctx: Context) -> None:
    """(b) mutations per second in transactions of ``batch_size`` mutations: sets, then random deposits."""
    n, size, batches = ctx.sizes.accounts, ctx.sizes.batch_size, ctx.sizes.batches
    sets = [[(k % n, b * size + k + 1) for k in range(size)] for b in range(batches)]
    adds = deposits(n, size, batches)
    expected = sum(amount for work in adds for _key, amount in work)

    for label, work, method in (
        (f"{size:,} per transaction", sets, "update_many"),
        (f"{size:,} random deposits per transaction", adds, "deposit_many"),
    ):

        def timed(system: Any, work: list[list[tuple[int, int]]], method: str) -> float:
            with ctx.sample_dir(f"batch-{system.name}") as where:
                accounts = system.open_accounts(where, n, "normal")
                try:
                    apply = getattr(accounts, method)
                    started = time.perf_counter()
                    for pairs in work:
                        apply(pairs)
                    took = time.perf_counter() - started
                finally:
                    accounts.close()
                if method != "update_many":
                    _check("random deposits", system.name, system.recover(where), expected)
            return took

        def sample(system: Any, work: list[list[tuple[int, int]]] = work, method: str = method) -> dict[str, Any]:
            values = {"updates/s": (size * batches / timed(system, work, method), True)}
            if method == "deposit_many" and system.name == "sqlite3":
                values[OUTCOME_ROWS] = (size * batches / timed(system, work, "deposit_outcome_many"), True)
            return values

        ctx.alternate("batch", label, ctx.systems, sample)


def recovery(ctx: Context) -> None:
    """(c) seconds to reopen after N mutations over ``history_objects`` objects, with and without a snapshot."""
    objects = ctx.sizes.history_objects
    for size in ctx.sizes.histories:
        mutations = history(objects, size)
        expected = history_checksum(mutations)
        plain: dict[str, Path] = {}
        snapped: dict[str, Path] = {}
        for system in ctx.systems:
            where = ctx.fresh_dir(f"history-{system.name}")
            started = time.perf_counter()
            system.write_history(where, objects, mutations, ctx.sizes.batch_size)
            plain[system.name] = where
            copy = where.with_name(where.name + "-snapshot")
            # without a snapshot to add, the system always loads current states (ZODB)
            snapped[system.name] = copy if system.copy_with_snapshot(where, copy) else where
            ctx.progress(f"recovery [{size:,}] {system.name}: history written in {time.perf_counter() - started:.2f}s")

        for label, dirs in (("no snapshot", plain), ("with snapshot", snapped)):

            def sample(system: Any, dirs: dict[str, Path] = dirs) -> dict[str, tuple[float, bool]]:
                started = time.perf_counter()
                total = system.recover(dirs[system.name])
                took = time.perf_counter() - started
                _check(f"recovery of {size:,} mutations", system.name, total, expected)
                return {"reopen s": (took, False), "events/s": (size / took, True)}

            ctx.alternate("recovery", f"{size:,} mutations / {objects:,} objects, {label}", ctx.systems, sample)
        for path in {*plain.values(), *snapped.values()}:
            shutil.rmtree(path, ignore_errors=True)


def graph(ctx: Context) -> None:
    """(d) commit/snapshot time, file size, reload time and peak RSS of an N-item graph."""
    for n in ctx.sizes.graphs:
        expected = graph_checksum(n)

        def sample(system: Any, n: int = n, expected: int = expected) -> dict[str, tuple[float, bool]]:
            with ctx.sample_dir(f"graph-{system.name}") as where:
                written = run_child(["write-graph", system.name, str(where), str(n)])
                phases = written["phases"]
                size = dir_size(where)
                child = run_child(["load-graph", system.name, str(where)])
            _check(f"reload of the {n:,}-item graph", system.name, child["checksum"], expected)
            # a phase's seconds, or a figure already named with its unit (memimg's attach peak RSS MB)
            values = {phase if phase.endswith(" MB") else f"{phase} s": (v, False) for phase, v in phases.items()}
            values["write peak RSS MB"] = (written["peak_rss"] / 1e6, False)
            values["file MB"] = (size / 1e6, False)
            values["reload s"] = (child["seconds"], False)
            values["reload peak RSS MB"] = (child["peak_rss"] / 1e6, False)
            return values

        ctx.alternate("graph", f"{n:,} items", ctx.systems, sample)
