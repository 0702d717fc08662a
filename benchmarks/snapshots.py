"""Workload (g) ``snapshots``: snapshots do not stall commits (memimg only; the peers have no snapshots to stall).

* **One process.** A graph of N items (each with its tags list, in groups of
  100: about 2N objects) is committed to an SQLite image; then a thread
  commits single-field changes in a loop (``sync="normal"``) while the main
  thread writes a snapshot. Reported: the snapshot's duration, the commits
  made during it, and their median and longest latency. The bar: the longest
  commit during the snapshot is at most 100 ms and 0.3x the snapshot.
* **Four writer processes with automatic snapshots.** Four processes on one
  SQLite log (and PostgreSQL when configured) each commit single-field
  changes 250 times a second -- a busy web worker's pace; in a tight loop
  the latency would be queueing for the database's write lock -- for a few
  seconds, with ``snapshot_every`` small enough that several snapshots of a
  graph of N/4 items are written meanwhile (by whichever process holds the
  lease, in its background thread), and once without snapshots, to show
  what contention alone costs; beside that run, four raw writers (one
  ``INSERT`` per commit: sqlite3 in WAL NORMAL, psycopg with
  ``synchronous_commit = off``) at the same pace on the same database, the
  spread the machine itself gives. Reported: the latency of every commit of
  every process -- median, p99, longest -- and the snapshots written. The
  bar: the longest at most 1 s, p99 at most 5x the median.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Context
from benchmarks.writers import POSTGRES_ENV

__all__ = ["snapshot_writer_main", "snapshots"]

#: Commits per second of each writer process (a busy web worker's pace).
RATE = 250
#: Writer processes on one log.
WRITERS = 4


#: Writer kinds of the raw peers (see :func:`benchmarks.writers._open_writer`).
RAW_KINDS = ("sqlite3", "psycopg")


class _Memimg:
    name = "memimg"


class _Raw:
    def __init__(self, name: str) -> None:
        self.name = name


def _run_paced(kind: str, target: str, seconds: float, every: int | None) -> list[float]:
    """Start 4 paced writer processes of *kind* on *target*, let them go together; every commit's latency."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    args = [str(seconds), str(every or 0), str(RATE)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.child", "snapshot-writer", kind, target, str(w), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    latencies: list[float] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a snapshot writer process did not start")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 300)
            latencies += json.loads(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return sorted(latencies)


def _spread(latencies: list[float]) -> dict[str, tuple[float, bool]]:
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99)]
    return {
        "median commit ms": (p50 * 1e3, False),
        "p99 commit ms": (p99 * 1e3, False),
        "longest commit ms": (latencies[-1] * 1e3, False),
        "p99 / median": (p99 / p50, False),
    }


def _build(img: Any, n: int) -> list[Any]:
    """Commit an *n*-item graph under ``img.root.groups`` (a Forest); its items."""
    from benchmarks.models import Group, Item, graph_shape, item_fields, item_ref

    items = [Item(*item_fields(i)) for i in range(n)]
    for i, item in enumerate(items):
        item.ref = items[item_ref(i, n)]
    img.root.groups = [Group(f"group-{k}", [items[i] for i in r]) for k, r in enumerate(graph_shape(n))]
    return list(img.root.groups[0].items)


def _in_process(ctx: Context, n: int) -> None:
    import memimg
    from benchmarks.models import Forest

    def sample(system: Any) -> dict[str, tuple[float, bool]]:
        with ctx.sample_dir("snapshot-in-process") as where:
            img = memimg.open(where / "image.db", root=Forest, snapshot_every=None)
            targets = _build(img, n)
            objects = img._engine.table.live_count()
            stop = threading.Event()
            timings: list[tuple[float, float]] = []

            def commit_loop() -> None:
                i = 0
                while not stop.is_set():
                    started = time.perf_counter()
                    targets[i % len(targets)].value += 1
                    timings.append((started, time.perf_counter() - started))
                    i += 1

            committer = threading.Thread(target=commit_loop)
            committer.start()
            time.sleep(0.2)  # the loop is running
            began = time.perf_counter()
            img.snapshot()
            ended = time.perf_counter()
            stop.set()
            committer.join()
            img.close()
        during = [took for started, took in timings if started + took >= began and started <= ended]
        took = ended - began
        longest = max(during) if during else took  # no commit at all during it: it waited the whole snapshot
        return {
            "objects": (objects, True),
            "snapshot s": (took, False),
            "commits during the snapshot": (len(during), True),
            "median commit ms during": (statistics.median(during) * 1e3 if during else took * 1e3, False),
            "longest commit ms during": (longest * 1e3, False),
            "longest commit / snapshot": (longest / took, False),
        }

    ctx.alternate("snapshots", f"one process, {n:,}-item graph, commits from another thread", [_Memimg()], sample)


def snapshot_writer_main(kind: str, where: str, wid: str, seconds: str, every: str, rate: str) -> None:
    """One writer process: open, say ``ready``, wait for ``go``, commit *rate* times a second for *seconds*
    (as a web worker would, not in a tight loop, where latency is queueing), print the latencies."""
    import memimg
    from benchmarks.models import Forest

    if kind in RAW_KINDS:  # the floor: one INSERT per commit at the same pace, no library
        from benchmarks.writers import _open_writer

        insert, close = _open_writer(kind, where, int(wid), 4)
        key = int(wid)

        def commit(i: int) -> None:
            insert(key, i)

    else:
        if kind == "sqlite":
            img = memimg.open(where, root=Forest, snapshot_every=int(every) or None)
        else:
            from memimg.stores._sqlalchemy import SQLAlchemyStore

            url, schema = where.split("|")
            img = memimg.open(SQLAlchemyStore(url, schema=schema), root=Forest, snapshot_every=int(every) or None)
        items = list(img.root.groups[int(wid)].items)
        close = img.close

        def commit(i: int) -> None:
            items[i % len(items)].value += 1

    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    begun = time.perf_counter()
    count = int(float(seconds) * float(rate))
    for i in range(count):
        wait = begun + i / float(rate) - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        started = time.perf_counter()
        commit(i)
        latencies.append(time.perf_counter() - started)
    close()
    print(json.dumps(latencies), flush=True)


def _writers(ctx: Context, n: int, backend: str, where: str, kind: str, every: int | None) -> None:
    import memimg
    from benchmarks.models import Forest

    seconds = max(ctx.sizes.writer_seconds * 2, 3.0)

    def sample(system: Any) -> dict[str, tuple[float, bool]]:
        if system.name != "memimg":
            return _raw_sample(system.name, where, seconds)
        target = where if kind == "sqlite" else where + f"_{uuid.uuid4().hex[:6]}"
        if kind == "sqlite":
            Path(target).unlink(missing_ok=True)
            img = memimg.open(target, root=Forest, snapshot_every=None)
        else:
            from memimg.stores._sqlalchemy import SQLAlchemyStore

            url, schema = target.split("|")
            img = memimg.open(SQLAlchemyStore(url, schema=schema), root=Forest, snapshot_every=None)
        _build(img, n)
        before = len(img.store.snapshots())
        img.close()
        latencies = _run_paced(kind, target, seconds, every)
        if kind == "sqlite":
            with memimg.open(target, root=Forest, snapshot_every=None, readonly=True) as img:
                written = len(img.store.snapshots()) - before
        else:
            from memimg.stores._sqlalchemy import SQLAlchemyStore

            url, schema = target.split("|")
            with memimg.open(SQLAlchemyStore(url, schema=schema, readonly=True), root=Forest) as img:
                written = len(img.store.snapshots()) - before
            _drop_schema(url, schema)
        return {"snapshots written": (written, True), **_spread(latencies)}

    load = f"4 writers x {RATE} commits/s, {backend}"
    case = f"{load}, {n:,}-item graph, snapshot_every={every:,}" if every else f"{load}, no snapshots"
    # without snapshots, the same pace of raw writers (one INSERT per commit) beside memimg: the machine's floor
    peers = [_Raw(RAW_KINDS[0] if kind == "sqlite" else RAW_KINDS[1])] if not every else []
    ctx.alternate("snapshots", case, [_Memimg(), *peers], sample)


def _raw_sample(kind: str, where: str, seconds: float) -> dict[str, tuple[float, bool]]:
    """Latencies of raw writers at the memimg writers' pace on a fresh table of the same database."""
    from benchmarks.writers import _libpq, _prepare_sqlite

    if kind == "sqlite3":
        target = where + f"-raw-{uuid.uuid4().hex[:6]}.db"
        _prepare_sqlite(Path(target))
        try:
            return _spread(_run_paced(kind, target, seconds, None))
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(target + suffix).unlink(missing_ok=True)
    import psycopg

    url = where.split("|")[0]
    schema = f"bench_snapraw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(url), autocommit=True) as pg:
        pg.execute(f'CREATE SCHEMA "{schema}"')
        pg.execute(
            f'CREATE TABLE "{schema}".log (seq BIGSERIAL PRIMARY KEY, obj INTEGER NOT NULL, '
            "field TEXT NOT NULL, value BIGINT)"
        )
    try:
        return _spread(_run_paced(kind, f"{url}|{schema}", seconds, None))
    finally:
        _drop_schema(url, schema)


def _drop_schema(url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def snapshots(ctx: Context) -> None:
    """(g) commit latency while snapshots are written: from another thread, and across four processes."""
    if not any(s.name == "memimg" for s in ctx.systems):
        return
    n = ctx.sizes.snapshot_items
    _in_process(ctx, n)
    where = ctx.fresh_dir("snapshot-writers")
    every = max(500, n // 40)
    url = os.environ.get(POSTGRES_ENV)
    for snapshot_every in (None, every):  # contention alone, then with snapshots
        _writers(ctx, n // 4, "SQLite", str(where / "image.db"), "sqlite", snapshot_every)
        if url:
            _writers(ctx, n // 4, "PostgreSQL", f"{url}|bench_snap", "postgres", snapshot_every)
    if not url:
        ctx.results.notes.append(f"snapshots: PostgreSQL not measured ({POSTGRES_ENV} is not set)")
