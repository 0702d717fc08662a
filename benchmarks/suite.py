"""``python -m benchmarks``: run the workloads, print the table and the SPEC §8 bars.

Usage::

    python -m benchmarks            # full sizes (takes a long while)
    python -m benchmarks --quick    # small sizes, under two minutes on 2 cores
    python -m benchmarks --only commit,batch --json results.json

Workloads (``--only`` names): ``commit`` (a), ``batch`` (b), ``recovery``
(c), ``graph`` (d), ``inmemory`` (e), ``writers`` (f), ``snapshots`` (g),
``web`` (h), ``timetravel`` (i), ``tools`` (j), ``history`` (k), ``ndjson``
(l), ``feeds`` (m), ``protection`` (n); see :mod:`benchmarks.workloads`, :mod:`benchmarks.inmemory`,
:mod:`benchmarks.writers`, :mod:`benchmarks.snapshots`, :mod:`benchmarks.web`,
:mod:`benchmarks.timetravel`, :mod:`benchmarks.tools`, :mod:`benchmarks.history`,
:mod:`benchmarks.ndjson`, :mod:`benchmarks.feeds` and :mod:`benchmarks.protection` for what each
measures. Progress goes to stderr,
the report to stdout. Nothing is installed at run time: the peers come from
the ``bench`` extra (``pip install 'memimg[bench]'``) and are skipped, with
the reason, when missing. Every file lives in one temporary directory,
removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from benchmarks.bars import check_bars, render_bars
from benchmarks.feeds import feeds_workload
from benchmarks.harness import FULL, QUICK, TINY, Context, Results, Sizes, scratch_dir
from benchmarks.history import history_workload
from benchmarks.inmemory import inmemory
from benchmarks.ndjson import ndjson
from benchmarks.protection import protection_workload
from benchmarks.report import render_table
from benchmarks.snapshots import snapshots
from benchmarks.systems import SYSTEMS, load_systems
from benchmarks.timetravel import timetravel
from benchmarks.tools import tools
from benchmarks.web import web
from benchmarks.workloads import batch, commit, graph, recovery
from benchmarks.writers import writers

__all__ = ["WORKLOADS", "machine_info", "main", "run"]

WORKLOADS: dict[str, Callable[[Context], None]] = {
    "commit": commit,
    "batch": batch,
    "recovery": recovery,
    "graph": graph,
    "inmemory": inmemory,
    "writers": writers,
    "snapshots": snapshots,
    "web": web,
    "timetravel": timetravel,
    "tools": tools,
    "history": history_workload,
    "ndjson": ndjson,
    "feeds": feeds_workload,
    "protection": protection_workload,
}
SIZES = {"quick": QUICK, "full": FULL, "tiny": TINY}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    ram = _ram_gb()
    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gb": None if ram is None else round(ram, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "memimg": _version("memimg"),
        "ZODB": _version("ZODB"),
        "eventsourcing": _version("eventsourcing"),
    }


def run(sizes: Sizes, only: list[str] | None = None, *, systems: list[str] | None = None) -> Results:
    """Run the chosen workloads at *sizes*; return every sample."""
    results = Results()
    loaded, results.skipped = load_systems(systems)
    results.info = {**machine_info(), "sizes": sizes.name, "reps": sizes.reps}
    with scratch_dir() as scratch:
        ctx = Context(sizes, loaded, results, scratch)
        ctx.progress(f"{sizes.name} run: {', '.join(s.name for s in loaded)}; scratch directory {scratch}")
        for name in only or list(WORKLOADS):
            started = time.perf_counter()
            WORKLOADS[name](ctx)
            ctx.progress(f"{name} done in {time.perf_counter() - started:.1f}s")
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions (under two minutes)")
    parser.add_argument("--size", choices=sorted(SIZES), help="full (default), quick, or tiny (smoke test)")
    parser.add_argument("--only", help=f"comma-separated workloads: {','.join(WORKLOADS)}")
    parser.add_argument("--systems", help="comma-separated systems to run (default: all installed)")
    parser.add_argument("--reps", type=int, help="repetitions (overrides the size's default)")
    parser.add_argument("--json", metavar="PATH", help="also save every sample, the table's medians and the bars")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if a bar fails")
    args = parser.parse_args(argv)
    if args.only:
        unknown = [w for w in args.only.split(",") if w not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.systems:
        unknown = [s for s in args.systems.split(",") if s not in SYSTEMS]
        if unknown:  # (a misspelt peer, "zodb" for "ZODB", silently ran without it)
            parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)} (case matters)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sizes = SIZES[args.size or ("quick" if args.quick else "full")]
    if args.reps:
        sizes = dataclasses.replace(sizes, reps=args.reps)
    started = time.perf_counter()
    only = args.only.split(",") if args.only else None
    systems = (["memimg", *args.systems.split(",")]) if args.systems else None
    results = run(sizes, only, systems=systems)
    wall = time.perf_counter() - started
    bars = list(check_bars(results))
    info = results.info
    print(f"# memimg benchmarks ({sizes.name} run, {sizes.reps} repetitions, {wall:.0f}s wall)")
    print()
    print(
        f"Machine: {info['cpus']} CPUs, {info['cpu']}, {info['ram_gb']} GB RAM; Python {info['python']}, "
        f"SQLite {info['sqlite']}; memimg {info['memimg']}, ZODB {info['ZODB']}, "
        f"eventsourcing {info['eventsourcing']}"
    )
    print()
    print(render_table(results, sizes.reps))
    print()
    print("### SPEC §8 bars (ratios from this run)")
    print()
    print(render_bars(bars))
    if args.json:
        data = results.to_json()
        data["wall_seconds"] = wall
        data["bars"] = [b.__dict__ for b in bars]
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    if args.strict and any(b.passed is False for b in bars):
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
