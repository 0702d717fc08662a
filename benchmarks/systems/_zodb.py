"""ZODB with FileStorage: the classic persistent-object database for Python.

Accounts are ``Persistent`` objects in an ``IOBTree`` (the idiomatic ZODB
container for many objects); each durable update is one
``transaction.commit()`` (FileStorage fsyncs every commit; it has no
NORMAL/FULL switch), a batch is one commit of many changes. Recovery opens
the storage again (with its saved index) and loads every account: ZODB
stores current object states, so there is nothing to replay and no snapshot
to add. The graph's items and groups are ``Persistent`` objects (one record
each); ``tags`` and the group's item list are plain lists pickled inside
their owner's record. The connection cache is sized to hold the whole graph,
so reloading really keeps every object in memory, as memimg does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import transaction
import ZODB
from BTrees.IOBTree import IOBTree
from persistent import Persistent
from ZODB.FileStorage import FileStorage

from benchmarks.models import graph_shape, item_fields, item_ref
from benchmarks.systems._base import System

__all__ = ["ZAccount", "ZForest", "ZGroup", "ZItem", "ZODBSystem"]

logging.getLogger("ZODB").setLevel(logging.ERROR)
logging.getLogger("txn").setLevel(logging.ERROR)

_CACHE = 2_000_000


class ZAccount(Persistent):
    def __init__(self, owner: str, balance: int = 0) -> None:
        self.owner = owner
        self.balance = balance


class ZItem(Persistent):
    def __init__(self, name: str, value: int, tags: list[str]) -> None:
        self.name = name
        self.value = value
        self.tags = tags
        self.ref: Any = None


class ZGroup(Persistent):
    def __init__(self, name: str, items: list[ZItem]) -> None:
        self.name = name
        self.items = items


class ZForest(Persistent):
    def __init__(self, groups: list[ZGroup]) -> None:
        self.groups = groups


class _Open:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.db = ZODB.DB(FileStorage(str(path), read_only=read_only), cache_size=_CACHE)
        self.tm = transaction.TransactionManager()
        self.conn = self.db.open(transaction_manager=self.tm)
        self.root = self.conn.root()

    def close(self) -> None:
        self.tm.abort()
        self.conn.close()
        self.db.close()


class _Accounts:
    def __init__(self, opened: _Open) -> None:
        self.opened = opened
        self.accounts = opened.root["accounts"]
        self.tm = opened.tm

    def update(self, key: int, balance: int) -> None:
        self.accounts[key].balance = balance
        self.tm.commit()

    def update_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        accounts = self.accounts
        for key, balance in pairs:
            accounts[key].balance = balance
        self.tm.commit()

    def deposit_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        accounts = self.accounts
        for key, amount in pairs:
            accounts[key].balance += amount
        self.tm.commit()

    def close(self) -> None:
        self.opened.close()


def _create_accounts(opened: _Open, n: int) -> None:
    accounts = opened.root["accounts"] = IOBTree()
    for key in range(n):
        accounts[key] = ZAccount(f"owner-{key}")
    opened.tm.commit()


class ZODBSystem(System):
    name: ClassVar[str] = "ZODB"

    def open_accounts(self, where: Path, n: int, sync: str) -> _Accounts:
        opened = _Open(where / "data.fs")
        _create_accounts(opened, n)
        return _Accounts(opened)

    def write_history(self, where: Path, n: int, mutations: Sequence[tuple[int, int]], batch: int) -> None:
        opened = _Open(where / "data.fs")
        _create_accounts(opened, n)
        handle = _Accounts(opened)
        for start in range(0, len(mutations), batch):
            handle.update_many(mutations[start : start + batch])
        opened.close()

    def recover(self, where: Path) -> int:
        opened = _Open(where / "data.fs", read_only=True)
        total = sum(a.balance for a in opened.root["accounts"].values())
        opened.close()
        return total

    def write_graph(self, where: Path, n: int) -> dict[str, float]:
        items = [ZItem(*item_fields(i)) for i in range(n)]
        for i, item in enumerate(items):
            item.ref = items[item_ref(i, n)]
        forest = ZForest([ZGroup(f"group-{k}", [items[i] for i in r]) for k, r in enumerate(graph_shape(n))])
        opened = _Open(where / "data.fs")
        started = time.perf_counter()
        opened.root["forest"] = forest
        opened.tm.commit()
        took = time.perf_counter() - started
        opened.close()
        return {"commit": took}

    def load_graph(self, where: Path) -> int:
        opened = _Open(where / "data.fs", read_only=True)
        total = 0
        for group in opened.root["forest"].groups:
            for item in group.items:
                total += item.value + item.ref.value + len(item.tags)
        opened.close()
        return total
