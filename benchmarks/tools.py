"""Workload (j) ``tools``: the ``memimg`` command line on a big image whose classes it does not import.

An image of the ledger application (:mod:`benchmarks.toolsapp`: accounts,
each with a list of entries holding a datetime, an enum member and a frozen
attrs value) is written with ``tools_objects`` objects and ``tools_events``
events (full: 300,000 and 500,000), with a snapshot 1% of the events before
the head, and a copy of it without its snapshot. Then, each in a fresh
process timed whole (interpreter start, imports and exit included, as a user
waits for it), in an order rotated from one repetition to the next:

* ``app open`` -- the application opens its image (its classes imported),
  from the snapshot and the events after it;
* ``app open, whole log`` -- the same open of the copy without a snapshot,
  which replays every event;
* ``info`` and ``show`` (of one account, path ``accounts.owner-K``) --
  ``memimg info`` / ``memimg show`` without ``--import``: stand-ins for the
  application's classes;
* ``verify`` -- ``memimg verify`` without ``--import``: every checksum, the
  whole log replayed, the snapshot compared with the replay at its seq.

Each reports its peak resident set size. Every command must succeed and
print what it found (verify "ok", info the number of objects, show the
account), so none can win by doing less. The bars (:mod:`benchmarks.bars`):
info and show within 2x the app's open, verify within 3x it, and verify's
peak RSS within 1.5x the open's (see ``docs/performance.md`` for why 1.5x).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Context, run_child

__all__ = ["COMMANDS", "tools"]

#: The commands of each sample, in the order of the first repetition.
COMMANDS = ("app open", "app open, whole log", "info", "show", "verify")


class _Memimg:
    name = "memimg"


def _without_snapshots(path: Path, copy: Path) -> None:
    """Copy the SQLite image at *path* to *copy*, its snapshots deleted (an open then replays the whole log)."""
    shutil.copy(path, copy)
    conn = sqlite3.connect(copy)
    try:
        conn.execute("DELETE FROM memimg_snapshots")
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()


def _checks(built: dict[str, int], account: str) -> dict[str, Callable[[dict[str, Any]], bool]]:
    """What each command's child must have reported: the work was done, not skipped."""
    return {
        "app open": lambda r: r["accounts"] > 0,
        "app open, whole log": lambda r: r["accounts"] > 0,
        "info": lambda r: r["status"] == 0 and f"objects:    {built['objects']}" in r["output"],
        "show": lambda r: r["status"] == 0 and f"owner: '{account}'" in r["output"],
        "verify": lambda r: (
            r["status"] == 0
            and r["output"].startswith("ok:")
            and f"{built['events']} event(s) verified" in r["output"]
            and "1 snapshot(s) equal the replayed state" in r["output"]
        ),
    }


def tools(ctx: Context) -> None:
    """(j) info, show and verify without the application's classes, against the application's own open."""
    if not any(s.name == "memimg" for s in ctx.systems):
        return
    from benchmarks.toolsapp import build, owner

    where = ctx.fresh_dir("tools")
    path, whole = where / "ledger.db", where / "ledger-whole-log.db"
    started = time.perf_counter()
    built = build(str(path), ctx.sizes.tools_objects, ctx.sizes.tools_events)
    _without_snapshots(path, whole)
    ctx.progress(
        f"tools: {built['objects']:,} objects, {built['events']:,} events, snapshot at seq "
        f"{built['snapshot_seq']:,}, written in {time.perf_counter() - started:.1f}s"
    )
    account = owner(17)
    args = {
        "app open": ["tools-open", str(path)],
        "app open, whole log": ["tools-open", str(whole)],
        "info": ["tool", "info", str(path)],
        "show": ["tool", "show", str(path), f"accounts.{account}"],
        "verify": ["tool", "verify", str(path)],
    }
    checks = _checks(built, account)
    rep = [0]

    def sample(system: Any) -> dict[str, tuple[float, bool]]:
        k = rep[0] % len(COMMANDS)
        rep[0] += 1
        values: dict[str, tuple[float, bool]] = {}
        for name in COMMANDS[k:] + COMMANDS[:k]:
            began = time.perf_counter()
            child = run_child(args[name])
            took = time.perf_counter() - began
            if not checks[name](child):
                raise AssertionError(f"tools: {name} did not do its work: {child}; the benchmark is wrong")
            values[f"{name} s"] = (took, False)
            values[f"{name} peak RSS MB"] = (child["peak_rss"] / 1e6, False)
        return {m: values[m] for m in sorted(values, key=_metric_order)}

    case = f"{built['objects']:,} objects, {built['events']:,} events, classes not imported"
    ctx.alternate("tools", case, [_Memimg()], sample, bounded=True)
    shutil.rmtree(where, ignore_errors=True)


def _metric_order(metric: str) -> tuple[int, int]:
    """Times first, then peak RSS; each in :data:`COMMANDS` order."""
    if metric.endswith(" s"):
        return 0, COMMANDS.index(metric[:-2])
    return 1, COMMANDS.index(metric.removesuffix(" peak RSS MB"))
