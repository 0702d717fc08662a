"""Entry points of the benchmark's child processes: ``python -m benchmarks.child MODE ARGS``.

A child gives a clean measurement that the parent process cannot:

* ``load-graph SYSTEM DIR`` -- reload a stored graph in a fresh interpreter
  and report the seconds it took, the checksum, and the process's peak
  resident set size (what loading that graph really costs in memory,
  without the parent's leftovers). The system's library is imported before
  the clock starts.
* ``write-graph SYSTEM DIR N`` -- build the N-item graph and make it
  durable (workload (d)) in a fresh interpreter: the seconds of each phase
  and the peak RSS of the process, the graph itself included.
* ``writer KIND WHERE WID WRITERS`` -- one of several concurrent writers of
  workload (f); see :mod:`benchmarks.writers`.
* ``tools-open PATH`` -- the ledger application of workload (i) opens its
  image (its classes imported); ``tool COMMAND ARGS`` -- the ``memimg``
  command line run in this process, without the application's classes; see
  :mod:`benchmarks.tools`. Both report the peak RSS; the parent times the
  whole process, interpreter start included.

The result is one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.harness import peak_rss

__all__ = ["main"]


def load_graph(system_name: str, where: str) -> dict[str, float]:
    from benchmarks.systems import load_system

    system = load_system(system_name)
    started = time.perf_counter()
    checksum = system.load_graph(Path(where))
    took = time.perf_counter() - started
    return {"seconds": took, "checksum": checksum, "peak_rss": peak_rss()}


def write_graph(system_name: str, where: str, n: str) -> dict[str, object]:
    from benchmarks.systems import load_system

    system = load_system(system_name)
    phases = system.write_graph(Path(where), int(n))
    return {"phases": phases, "peak_rss": peak_rss()}


def run_tool(args: list[str]) -> dict[str, object]:
    """``memimg ARGS`` in this process: its exit status and what it printed."""
    import contextlib
    import io

    from memimg.cli import cli

    out = io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out):
        try:
            cli.main(args, prog_name="memimg", standalone_mode=False)
        except SystemExit as end:
            status = end.code if isinstance(end.code, int) else 1
    return {"status": status, "output": out.getvalue()[-2000:]}


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "load-graph":
        print(json.dumps(load_graph(*args)), flush=True)
    elif mode == "write-graph":
        print(json.dumps(write_graph(*args)), flush=True)
    elif mode == "writer":
        from benchmarks.writers import writer_main

        writer_main(*args)
    elif mode == "tools-open":
        from benchmarks.toolsapp import open_app

        print(json.dumps({"accounts": open_app(*args), "peak_rss": peak_rss()}), flush=True)
    elif mode == "tool":
        print(json.dumps({**run_tool(args), "peak_rss": peak_rss()}), flush=True)
    elif mode == "snapshot-writer":
        from benchmarks.snapshots import snapshot_writer_main

        snapshot_writer_main(*args)
    else:
        raise SystemExit(f"unknown child mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
