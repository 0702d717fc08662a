"""memimg under the common interface: the library this suite is about.

Accounts live in ``Bank.accounts`` (a tracked dict); one update outside a
transaction is one durable commit, ``update_many`` is one
``with img.transaction():``. The graph workload attaches the whole graph with
one assignment (one event carrying every new object's state) and then writes
a snapshot, the form reopening loads fastest. Automatic snapshots are left
at their default for commits (that is what users run) and switched off
(``snapshot_every=None``) where the workload controls snapshots itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import memimg
from benchmarks.harness import peak_rss
from benchmarks.models import Account, Bank, Forest, Group, Item, graph_shape, item_fields, item_ref
from benchmarks.systems._base import System

__all__ = ["MemimgSystem"]


class _Accounts:
    def __init__(self, img: memimg.MemoryImage) -> None:
        self.img = img
        self.accounts = img.root.accounts

    def update(self, key: int, balance: int) -> None:
        self.accounts[key].balance = balance

    def update_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        accounts = self.accounts
        with self.img.transaction():
            for key, balance in pairs:
                accounts[key].balance = balance

    def deposit_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        accounts = self.accounts
        with self.img.transaction():
            for key, amount in pairs:
                accounts[key].balance += amount

    def close(self) -> None:
        self.img.close()


def _create_accounts(img: memimg.MemoryImage, n: int) -> None:
    img.root.accounts.update({key: Account(f"owner-{key}") for key in range(n)})


class MemimgSystem(System):
    name: ClassVar[str] = "memimg"
    sync_modes: ClassVar[tuple[str, ...]] = ("normal", "full")
    #: the image's file in a sample's directory (its suffix picks the store)
    filename: ClassVar[str] = "image.db"

    def open_accounts(self, where: Path, n: int, sync: str) -> _Accounts:
        img = memimg.open(where / self.filename, root=Bank, sync=sync)
        _create_accounts(img, n)
        return _Accounts(img)

    def write_history(self, where: Path, n: int, mutations: Sequence[tuple[int, int]], batch: int) -> None:
        with memimg.open(where / self.filename, root=Bank, snapshot_every=None) as img:
            _create_accounts(img, n)
            handle = _Accounts(img)
            for start in range(0, len(mutations), batch):
                handle.update_many(mutations[start : start + batch])

    def add_snapshot(self, where: Path) -> bool:
        with memimg.open(where / self.filename, root=Bank, snapshot_every=None) as img:
            img.snapshot()
        return True

    def recover(self, where: Path) -> int:
        with memimg.open(where / self.filename, root=Bank, snapshot_every=None) as img:
            return sum(a.balance for a in img.root.accounts.values())

    def write_graph(self, where: Path, n: int) -> dict[str, float]:
        items = [Item(*item_fields(i)) for i in range(n)]
        for i, item in enumerate(items):
            item.ref = items[item_ref(i, n)]
        groups = [Group(f"group-{k}", [items[i] for i in r]) for k, r in enumerate(graph_shape(n))]
        with memimg.open(where / self.filename, root=Forest, snapshot_every=None) as img:
            started = time.perf_counter()
            img.root.groups = groups
            committed = time.perf_counter()
            attach_peak = peak_rss()  # the graph, attached and committed (before the snapshot adds its own)
            img.snapshot()
            snapshotted = time.perf_counter()
        return {
            "commit": committed - started,
            "snapshot": snapshotted - committed,
            "attach peak RSS MB": attach_peak / 1e6,
        }

    def load_graph(self, where: Path) -> int:
        with memimg.open(where / self.filename, root=Forest, snapshot_every=None) as img:
            return _graph_sum(img.root)


def _graph_sum(forest: Any) -> int:
    total = 0
    for group in forest.groups:
        for item in group.items:
            total += item.value + item.ref.value + len(item.tags)
    return total
