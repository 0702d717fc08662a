"""A process killed at any instant loses no committed transaction and leaves no partial one.

A writer subprocess commits transactions (each moves one unit between two
counters and appends to a list) and single mutations as fast as it can,
printing what it committed after each commit returns; frequent automatic
snapshots make kills land inside snapshots too. The test kills it with
SIGKILL at random moments, over and over, reopening the same file each time,
on each store kept in files (SQLite, NDJSON).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

import memimg
from tests.models import Box

WRITER = textwrap.dedent(
    """
    import sys
    import memimg
    from tests.models import Box

    img = memimg.open(sys.argv[1], root=Box, snapshot_every=40)
    root = img.root
    if root.content is None:
        root.content = {"a": 1000, "b": 0, "n": 0, "log": []}
    d = root.content
    print("ready", flush=True)
    while True:
        with img.transaction():
            n = d["n"] + 1
            d["a"] -= 1
            d["b"] += 1
            d["n"] = n
            d["log"].append(n)
        print("tx", n, flush=True)
        root.other = n
        print("set", n, flush=True)
    """
)


def check(path: str) -> int:
    with memimg.open(path, root=Box) as img:
        d = img.root.content
        assert d["a"] + d["b"] == 1000, "a partial transaction was applied"
        assert d["n"] == len(d["log"]) == (d["log"][-1] if d["log"] else 0)
        assert d["log"] == list(range(1, d["n"] + 1))
        replayed = memimg.replay(img.events())
        assert replayed.content == d and replayed.other == img.root.other
        return int(d["n"])


@pytest.mark.parametrize("snapshots", ["snapshot_every=40", "snapshot_every=None"])
@pytest.mark.parametrize("suffix", [".db", ".ndjson"])
@pytest.mark.parametrize("sync", ["normal", "full"])
def test_sigkill_loses_nothing_committed(tmp_path: Any, sync: str, suffix: str, snapshots: str) -> None:
    """A writer killed with SIGKILL at random moments, again and again, loses no commit it reported and
    leaves no partial transaction (on an SQLite file and on an NDJSON log; with frequent automatic snapshots
    and with none)."""
    path = str(tmp_path / f"crash{suffix}")
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(1234)
    last_tx = last_set = 0
    kills = 12 if sync == "normal" else 6
    for _ in range(kills):
        script = WRITER.replace("snapshot_every=40", snapshots + ("" if sync == "normal" else ", sync='full'"))
        proc = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        for line in out.splitlines():
            kind, _, n = line.partition(" ")
            if not n.strip().isdigit():
                continue  # the kill cut this line short
            if kind == "tx":
                last_tx = max(last_tx, int(n))
            elif kind == "set":
                last_set = max(last_set, int(n))
        n = check(path)
        assert n >= last_tx, f"lost committed transactions: recovered {n}, printed {last_tx}"
        with memimg.open(path, root=Box) as img:
            assert (img.root.other or 0) >= last_set
    assert last_tx > 20, "the writer never got going"
