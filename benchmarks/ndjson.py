"""Workload (l) ``ndjson``: the NDJSON store against the raw writes it is made of, and its replay beside SQLite's.

``sync=full`` -- **durable single-mutation commits on an NDJSON log.**
memimg opens ``image.ndjson`` with ``sync="full"`` over ``accounts``
accounts and commits one balance at a time (as workload (a)); the raw
writer appends *the same lines* -- taken from a log memimg wrote with the
same commits beforehand -- one ``os.write`` and one ``os.fsync`` per line,
to a file opened ``O_APPEND``: the floor for any durable append-only file
log on this disk. The bar (SPEC §8): memimg ≥ 0.7x the raw writer.

``replay`` -- **reopening after a long history, by replay.** The history of
workload (c) (``histories[0]`` mutations over ``history_objects``
accounts, written in transactions of ``batch_size``) in an NDJSON log and
in an SQLite file, each reopened without a snapshot: events/s of each
store's replay, side by side (no bar: SQLite is the reference).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

import memimg
from benchmarks.harness import Context
from benchmarks.models import Account, Bank, history, history_checksum
from benchmarks.systems._memimg import MemimgSystem

__all__ = ["RAW", "ndjson"]

#: The name the raw writer's figures are recorded under.
RAW = "os.write+fsync"


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


class _NDJSONSystem(MemimgSystem):
    name: ClassVar[str] = "memimg NDJSON"
    filename: ClassVar[str] = "image.ndjson"


class _SQLiteSystem(MemimgSystem):
    name: ClassVar[str] = "memimg SQLite"


def _commit(path: Path, n: int, count: int, sync: str) -> float:
    """Seconds memimg takes for *count* single-mutation commits on the log at *path* (accounts made first)."""
    img = memimg.open(path, root=Bank, sync=sync)
    try:
        accounts = img.root.accounts
        accounts.update({key: Account(f"owner-{key}") for key in range(n)})
        started = time.perf_counter()
        for k in range(count):
            accounts[k % n].balance = k + 1
        return time.perf_counter() - started
    finally:
        img.close()


def _raw(path: Path, lines: list[bytes]) -> float:
    """Seconds to append *lines* one ``os.write`` + ``os.fsync`` each."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        started = time.perf_counter()
        for line in lines:
            os.write(fd, line)
            os.fsync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)


def ndjson(ctx: Context) -> None:
    """(l) NDJSON commits vs raw os.write + os.fsync of the same lines; NDJSON replay beside SQLite's."""
    n, count = ctx.sizes.accounts, ctx.sizes.commits_full
    with ctx.sample_dir("ndjson-lines") as where:
        path = where / "image.ndjson"
        _commit(path, n, count, "normal")
        # the commits' own lines (one event each), after the header and the events that made the accounts
        lines = path.read_bytes().splitlines(keepends=True)[-count:]

    def commits(system: Any) -> dict[str, tuple[float, bool]]:
        with ctx.sample_dir(f"ndjson-{system.name}") as where:
            if system.name == RAW:
                took = _raw(where / "raw.ndjson", lines)
            else:
                took = _commit(where / "image.ndjson", n, count, "full")
        return {"commits/s": (count / took, True)}

    ctx.alternate("ndjson", "sync=full", [_Named("memimg"), _Named(RAW)], commits)

    objects, size = ctx.sizes.history_objects, ctx.sizes.histories[0]
    mutations = history(objects, size)
    expected = history_checksum(mutations)
    systems = [_NDJSONSystem(), _SQLiteSystem()]
    dirs = {}
    for system in systems:
        dirs[system.name] = ctx.fresh_dir(f"ndjson-history-{system.name.split()[-1]}")
        system.write_history(dirs[system.name], objects, mutations, ctx.sizes.batch_size)

    def replay(system: Any) -> dict[str, tuple[float, bool]]:
        started = time.perf_counter()
        total = system.recover(dirs[system.name])
        took = time.perf_counter() - started
        if total != expected:
            raise AssertionError(f"replay: {system.name} returned checksum {total}, expected {expected}")
        return {"reopen s": (took, False), "events/s": (size / took, True)}

    ctx.alternate("ndjson", f"replay, {size:,} mutations / {objects:,} objects", systems, replay)
