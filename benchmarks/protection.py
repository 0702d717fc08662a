"""Workload (n) ``protection``: what encryption at rest costs (memimg only; SPEC §8, issue 21).

The same work timed on a plain image and on an encrypted one (AES-256-GCM,
``encryption_key``), alternating, on SQLite with ``sync="normal"``:

* single-mutation commits (one balance changed per commit, as workload (a));
* snapshot and reload of a graph of ``snapshot_items`` items (in groups
  of 100) (``img.snapshot()``, then opening the image from that
  snapshot).

A third variant adds the integrity chain (``integrity_key``) to the
encryption, reported beside them (no bar). The bars: an encrypted commit
costs at most 1.3x a plain one; snapshot and reload at most 1.5x.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness import Context

__all__ = ["CHAINED", "COMMIT_CASE", "ENCRYPTED", "GRAPH_CASE", "PLAIN", "protection_workload"]

COMMIT_CASE = 'single-mutation commits, SQLite sync="normal"'
GRAPH_CASE = "snapshot and reload of a graph, SQLite"
PLAIN = "memimg"
ENCRYPTED = "memimg encrypted"
CHAINED = "memimg encrypted + integrity chain"
_KEY = bytes(range(32))
_MAC_KEY = bytes(range(32, 64))


class _Variant:
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options


VARIANTS = [
    _Variant(PLAIN, {}),
    _Variant(ENCRYPTED, {"encryption_key": _KEY}),
    _Variant(CHAINED, {"encryption_key": _KEY, "integrity_key": _MAC_KEY}),
]


def protection_workload(ctx: Context) -> None:
    """(n) commits/s, snapshot s and reload s, plain vs encrypted."""
    import memimg
    from benchmarks.models import Account, Bank, Forest, Group, Item

    n, count, items = ctx.sizes.accounts, ctx.sizes.commits_normal, ctx.sizes.snapshot_items

    def commits(variant: _Variant) -> dict[str, tuple[float, bool]]:
        with ctx.sample_dir("protection") as where:
            img = memimg.open(str(where / "p.db"), root=Bank, sync="normal", snapshot_every=None, **variant.options)
            try:
                with img.transaction():
                    for k in range(n):
                        img.root.accounts[k] = Account(f"owner-{k}")
                acct = img.root.accounts[n // 2]
                started = time.perf_counter()
                for k in range(count):
                    acct.balance = k + 1
                took = time.perf_counter() - started
            finally:
                img.close()
        return {"updates/s": (count / took, True)}

    def graph(variant: _Variant) -> dict[str, tuple[float, bool]]:
        with ctx.sample_dir("protection") as where:
            path = str(where / "g.db")
            img = memimg.open(path, root=Forest, snapshot_every=None, **variant.options)
            try:
                with img.transaction():
                    for g in range(0, items, 100):
                        img.root.groups.append(
                            Group(f"g{g}", [Item(f"item-{k}", k, [f"t{k}"]) for k in range(g, g + 100)])
                        )
                started = time.perf_counter()
                img.snapshot()
                snap = time.perf_counter() - started
            finally:
                img.close()
            started = time.perf_counter()
            again = memimg.open(path, root=Forest, snapshot_every=None, **variant.options)
            reload = time.perf_counter() - started
            assert len(again.root.groups) == (items + 99) // 100
            again.close()
        return {"snapshot s": (snap, False), "reload s": (reload, False)}

    ctx.alternate("protection", COMMIT_CASE, VARIANTS, commits)
    ctx.alternate("protection", GRAPH_CASE, VARIANTS, graph)
