"""The measuring machinery shared by every workload: sizes, results, repetitions, progress, children.

Rules every workload follows, so that the numbers of one run can be compared
with each other:

* **Alternation.** A workload runs ``reps`` repetitions; each repetition runs
  one sample of every system, in an order rotated from one repetition to the
  next (:meth:`Context.alternate`). Slow drift of the machine (thermal,
  page cache, other tenants) then touches every system alike.
* **Medians.** Each sample is recorded; the report shows the median. In
  ``--quick`` runs a (system, case) whose first sample takes longer than
  ``Sizes.once_after`` (quick: 1 s, full: 30 s) is not repeated (the
  report marks it), so the quick run stays under two minutes and the full
  run's biggest samples (eventsourcing reloading a million aggregates) run
  once.
* **Fresh state.** Each sample works in a new temporary directory unless
  the workload says otherwise (recovery reuses one prepared log per system,
  since building it is not what is measured).
* **Honest clocks.** ``time.perf_counter`` around exactly the measured calls;
  setup and teardown are outside.
* **Progress.** Every sample prints one line to stderr, so a long run is
  never silent.

Workloads that need a clean process (peak RSS of a reload, concurrent
writers) run ``python -m benchmarks.child`` through :func:`run_child`, which
returns the JSON the child printed.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FULL",
    "QUICK",
    "ROOT",
    "TINY",
    "Context",
    "Result",
    "Results",
    "Sizes",
    "dir_size",
    "peak_rss",
    "run_child",
    "scratch_dir",
]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """How big each workload is, and how often it is repeated."""

    name: str
    reps: int
    accounts: int = 1000
    #: single-mutation commits per sample, with sync="full" and "normal"
    commits_full: int = 100
    commits_normal: int = 2000
    batch_size: int = 1000
    #: transactions of ``batch_size`` mutations per sample
    batches: int = 10
    history_objects: int = 5000
    histories: tuple[int, ...] = (20_000, 100_000)
    graphs: tuple[int, ...] = (50_000, 100_000)
    #: tracked reads / in-transaction sets per sample
    ops: int = 200_000
    memory_objects: int = 50_000
    writers: tuple[int, ...] = (1, 2, 4)
    writer_seconds: float = 0.4
    #: items of the graph snapshotted while commits go on (about two objects each)
    snapshot_items: int = 50_000
    #: workload (h): gunicorn workers, client threads, requests per sample
    web_workers: int = 4
    web_clients: int = 16
    web_requests: int = 2000
    #: workload (i): the ledger image the command line reads (objects, events)
    tools_objects: int = 30_000
    tools_events: int = 50_000
    #: workload (k): events of the log and accounts they update (one account gets 100 of them)
    history_events: int = 200_000
    history_accounts: int = 10_000
    #: a (system, case) whose first sample took longer (wall seconds) is not
    #: repeated; ``None`` repeats everything
    once_after: float | None = None


QUICK = Sizes(
    name="quick", reps=3, commits_full=100, ops=100_000, memory_objects=5000, writer_seconds=0.3, once_after=1.0
)
FULL = Sizes(
    name="full",
    reps=5,
    commits_full=1000,
    commits_normal=20_000,
    batches=30,
    histories=(200_000, 1_000_000),
    graphs=(50_000, 100_000, 1_000_000),
    history_events=1_000_000,
    ops=1_000_000,
    memory_objects=200_000,
    writer_seconds=3.0,
    snapshot_items=150_000,
    web_requests=10_000,
    tools_objects=300_000,
    tools_events=500_000,
    once_after=30.0,
)
TINY = Sizes(
    name="tiny",
    reps=1,
    accounts=20,
    commits_full=5,
    commits_normal=5,
    batch_size=10,
    batches=2,
    history_objects=20,
    histories=(60,),
    graphs=(250,),
    history_events=2_000,
    history_accounts=50,
    ops=200,
    memory_objects=200,
    writers=(2,),
    writer_seconds=0.2,
    snapshot_items=2_000,
    web_workers=2,
    web_clients=4,
    web_requests=40,
    tools_objects=600,
    tools_events=1_000,
)


@dataclass
class Result:
    """Every sample of one metric of one system in one case of a workload."""

    workload: str
    case: str
    metric: str
    system: str
    higher_is_better: bool
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


class Results:
    """All results of a run, keyed by ``(workload, case, metric, system)``, in insertion order."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str, str, str], Result] = {}
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.info: dict[str, Any] = {}

    def add(self, workload: str, case: str, metric: str, system: str, value: float, *, higher: bool) -> None:
        key = (workload, case, metric, system)
        result = self.items.get(key)
        if result is None:
            result = self.items[key] = Result(workload, case, metric, system, higher)
        result.samples.append(value)

    def median(self, workload: str, case: str, metric: str, system: str) -> float | None:
        result = self.items.get((workload, case, metric, system))
        return None if result is None else result.median

    def rows(self) -> Iterator[tuple[str, str, str, dict[str, Result]]]:
        """``(workload, case, metric, {system: result})`` in the order they were first measured."""
        grouped: dict[tuple[str, str, str], dict[str, Result]] = {}
        for (w, c, m, s), r in self.items.items():
            grouped.setdefault((w, c, m), {})[s] = r
        for (w, c, m), by_system in grouped.items():
            yield w, c, m, by_system

    def to_json(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "skipped": self.skipped,
            "notes": self.notes,
            "results": [
                {
                    "workload": r.workload,
                    "case": r.case,
                    "metric": r.metric,
                    "system": r.system,
                    "higher_is_better": r.higher_is_better,
                    "median": r.median,
                    "samples": r.samples,
                }
                for r in self.items.values()
            ],
        }


class Context:
    """What a workload gets: the sizes, the systems, a scratch directory, the results."""

    def __init__(self, sizes: Sizes, systems: Sequence[Any], results: Results, scratch: Path) -> None:
        self.sizes = sizes
        self.systems = list(systems)
        self.results = results
        self.scratch = scratch
        self._started = time.perf_counter()
        self._count = 0

    def progress(self, message: str) -> None:
        """One line on stderr, with the time since the run began."""
        print(f"[{time.perf_counter() - self._started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def fresh_dir(self, label: str) -> Path:
        """A new empty directory under the scratch directory."""
        self._count += 1
        path = self.scratch / f"{self._count:04d}-{label}"
        path.mkdir(parents=True)
        return path

    @contextmanager
    def sample_dir(self, label: str) -> Iterator[Path]:
        """A fresh directory removed after the sample (disk stays small during long runs)."""
        path = self.fresh_dir(label)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def alternate(
        self,
        workload: str,
        case: str,
        systems: Sequence[Any],
        sample: Callable[[Any], dict[str, tuple[float, bool]]],
        *,
        reps: int | None = None,
        bounded: bool = False,
    ) -> None:
        """Run ``sample(system)`` for every system, ``reps`` times, rotating the order.

        *sample* returns ``{metric: (value, higher_is_better)}``; each value is
        recorded under ``(workload, case, metric, system.name)``. *bounded*:
        the workload bounds each sample itself, so every sample is repeated
        (``Sizes.once_after`` does not apply).
        """
        reps = self.sizes.reps if reps is None else reps
        once_after = None if bounded else self.sizes.once_after
        systems = list(systems)
        done: set[str] = set()
        for rep in range(reps):
            k = rep % len(systems) if systems else 0
            for system in systems[k:] + systems[:k]:
                if system.name in done:
                    continue
                gc.collect()  # no collection of an earlier sample's garbage inside this one
                started = time.perf_counter()
                values = sample(system)
                took = time.perf_counter() - started
                if rep == 0 and reps > 1 and once_after is not None and took > once_after:
                    done.add(system.name)
                    self.results.notes.append(
                        f"{workload} [{case}] {system.name}: one sample only (it took {took:.1f}s, "
                        f"over the {self.sizes.name} run's {once_after:g}s budget for repeating)"
                    )
                shown = ", ".join(f"{m} {_fmt(v)}" for m, (v, _) in values.items())
                self.progress(f"{workload} [{case}] rep {rep + 1}/{reps} {system.name}: {shown} ({took:.2f}s)")
                for metric, (value, higher) in values.items():
                    self.results.add(workload, case, metric, system.name, value, higher=higher)


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def dir_size(path: Path) -> int:
    """Total bytes of the files under *path*."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_child(args: Sequence[str], *, timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``python -m benchmarks.child ARGS`` in a clean process; return the JSON it printed last."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"benchmark child {' '.join(args)} printed no result:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """The run's temporary directory, removed at the end whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="memimg-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def peak_rss() -> int:
    """Peak resident set size of this process in bytes.

    Linux's ``VmHWM`` belongs to the process image started by ``exec``;
    ``getrusage``'s ``ru_maxrss`` would also count the parent's memory at
    ``fork`` time, so it is only the fallback.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except ImportError:  # pragma: no cover - Windows
        import psutil

        return int(psutil.Process().memory_info().rss)
