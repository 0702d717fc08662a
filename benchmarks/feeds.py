"""Workload (m) ``feeds``: what one change-feed subscriber adds to a durable single-mutation commit (memimg only).

The commit of workload (a) -- one balance changed per commit, SQLite,
``sync="normal"``, among ``accounts`` accounts -- timed on an image with no
subscription, and on one with a subscription to that account's ``balance``
field (every commit is delivered) whose callback reads the delivered change
(``commit.changes``, so the :class:`memimg.Change` records are made: the
cost a real subscriber pays). The two variants alternate. The bar (SPEC §8): one subscriber on a
field adds at most 10% to a single-mutation commit.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness import Context

__all__ = ["CASE", "NO_SUBSCRIBER", "SUBSCRIBER", "feeds_workload"]

CASE = 'single-mutation commits, SQLite sync="normal"'
NO_SUBSCRIBER = "memimg"
SUBSCRIBER = "memimg + field subscriber"


class _Variant:
    def __init__(self, name: str) -> None:
        self.name = name


def feeds_workload(ctx: Context) -> None:
    """(m) single-mutation commits/s without and with one field subscriber."""
    import memimg
    from benchmarks.models import Account, Bank

    n, count = ctx.sizes.accounts, ctx.sizes.commits_normal

    def sample(variant: Any) -> dict[str, tuple[float, bool]]:
        with ctx.sample_dir("feeds") as where:
            img = memimg.open(str(where / "feeds.db"), root=Bank, sync="normal", snapshot_every=None)
            try:
                with img.transaction():
                    for k in range(n):
                        img.root.accounts[k] = Account(f"owner-{k}")
                acct = img.root.accounts[n // 2]
                seen = [0]
                if variant.name == SUBSCRIBER:

                    def on_commit(commit: memimg.Commit) -> None:
                        seen[0] += len(commit.changes)

                    img.subscribe(on_commit, to=(acct, "balance"))
                started = time.perf_counter()
                for k in range(count):
                    acct.balance = k + 1
                took = time.perf_counter() - started
            finally:
                img.close()
            if variant.name == SUBSCRIBER and seen[0] != count:
                raise AssertionError(f"the subscriber saw {seen[0]} changes of {count} commits")
        return {"updates/s": (count / took, True)}

    ctx.alternate("feeds", CASE, [_Variant(NO_SUBSCRIBER), _Variant(SUBSCRIBER)], sample)
