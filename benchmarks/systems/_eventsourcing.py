"""The ``eventsourcing`` library with its SQLite persistence module.

Each account is an ``Aggregate`` whose ``set_balance`` method triggers one
domain event; a durable update is ``app.save(account)``, a batch is one
``app.save(*accounts)`` (one SQLite transaction). Recovery reconstructs every
aggregate through ``app.repository.get``; the snapshot variant first takes a
snapshot of every aggregate (what ``app.take_snapshot`` does, all saved in
one transaction to keep the setup short) and reopens with
snapshotting enabled, so each aggregate starts from its snapshot. In the
graph workload every item and group is an aggregate created by one event;
references are aggregate ids (event-sourced aggregates do not hold object
references), resolved through a dict after loading. Ids are deterministic
(``uuid5`` of the key) so a reload knows them without an index.

eventsourcing's SQLite recorder switches the database to WAL and leaves
``synchronous`` at SQLite's default (FULL): it fsyncs every commit and has no
switch, so the sync mode is ignored.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.models import graph_shape, item_fields, item_ref
from benchmarks.systems._base import System

__all__ = ["EventSourcingSystem"]

_NS = uuid.UUID("6f1c2f4e-3b1a-4d57-9a3e-5d0b8f0c2a11")


def _id(kind: str, key: int) -> uuid.UUID:
    return uuid.uuid5(_NS, f"{kind}/{key}")


class EsAccount(Aggregate):
    @staticmethod
    def create_id(key: int) -> uuid.UUID:
        return _id("account", key)

    def __init__(self, key: int, owner: str) -> None:
        self.key = key
        self.owner = owner
        self.balance = 0

    @event("BalanceSet")
    def set_balance(self, balance: int) -> None:
        self.balance = balance


class EsItem(Aggregate):
    @staticmethod
    def create_id(key: int) -> uuid.UUID:
        return _id("item", key)

    def __init__(self, key: int, name: str, value: int, tags: list[str], ref: uuid.UUID) -> None:
        self.key = key
        self.name = name
        self.value = value
        self.tags = tags
        self.ref = ref


class EsGroup(Aggregate):
    @staticmethod
    def create_id(key: int) -> uuid.UUID:
        return _id("group", key)

    def __init__(self, key: int, name: str, items: list[uuid.UUID]) -> None:
        self.key = key
        self.name = name
        self.items = items


class EsForest(Aggregate):
    @staticmethod
    def create_id(key: int) -> uuid.UUID:
        return _id("forest", key)

    def __init__(self, key: int, groups: list[uuid.UUID]) -> None:
        self.key = key
        self.groups = groups


class BenchApp(Application):  # type: ignore[type-arg]
    pass


def _app(where: Path, *, snapshots: bool = False) -> BenchApp:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(where / "es.db"),
        "IS_SNAPSHOTTING_ENABLED": "y" if snapshots else "n",
    }
    return BenchApp(env=env)


def _close(app: BenchApp) -> None:
    app.close()


class _Accounts:
    def __init__(self, app: BenchApp, accounts: list[EsAccount]) -> None:
        self.app = app
        self.accounts = accounts

    def update(self, key: int, balance: int) -> None:
        account = self.accounts[key]
        account.set_balance(balance)
        self.app.save(account)

    def update_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        accounts = self.accounts
        touched: dict[int, EsAccount] = {}
        for key, balance in pairs:
            account = touched[key] = accounts[key]
            account.set_balance(balance)
        self.app.save(*touched.values())

    def deposit_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        accounts = self.accounts
        touched: dict[int, EsAccount] = {}
        for key, amount in pairs:
            account = touched[key] = accounts[key]
            account.set_balance(account.balance + amount)
        self.app.save(*touched.values())

    def close(self) -> None:
        _close(self.app)


def _create_accounts(app: BenchApp, n: int) -> list[EsAccount]:
    accounts = [EsAccount(key=key, owner=f"owner-{key}") for key in range(n)]
    app.save(*accounts)
    return accounts


class EventSourcingSystem(System):
    name: ClassVar[str] = "eventsourcing"

    def open_accounts(self, where: Path, n: int, sync: str) -> _Accounts:
        app = _app(where)
        (where / "n").write_text(str(n))  # for recover()
        return _Accounts(app, _create_accounts(app, n))

    def __init__(self) -> None:
        self._written: tuple[Path, list[EsAccount]] | None = None

    def write_history(self, where: Path, n: int, mutations: Sequence[tuple[int, int]], batch: int) -> None:
        app = _app(where)
        (where / "n").write_text(str(n))
        handle = _Accounts(app, _create_accounts(app, n))
        for start in range(0, len(mutations), batch):
            handle.update_many(mutations[start : start + batch])
        _close(app)
        self._written = (where, handle.accounts)

    def add_snapshot(self, where: Path) -> bool:
        app = _app(where, snapshots=True)
        get = app.repository.get
        self._put_snapshots(app, [get(_id("account", key)) for key in range(int((where / "n").read_text()))])
        _close(app)
        (where / "snapshots").write_text("y")
        return True

    def copy_with_snapshot(self, where: Path, copy: Path) -> bool:
        if self._written is None or self._written[0] != where:
            return super().copy_with_snapshot(where, copy)
        # the aggregates just saved are the stored state: snapshot them without reconstructing
        shutil.copytree(where, copy)
        app = _app(copy, snapshots=True)
        self._put_snapshots(app, self._written[1])
        _close(app)
        (copy / "snapshots").write_text("y")
        self._written = None
        return True

    @staticmethod
    def _put_snapshots(app: BenchApp, accounts: list[EsAccount]) -> None:
        # what app.take_snapshot does, written in one transaction instead of one per aggregate
        assert app.snapshots is not None
        app.snapshots.put([EsAccount.Snapshot.take(a) for a in accounts])

    def recover(self, where: Path) -> int:
        app = _app(where, snapshots=(where / "snapshots").exists())
        get = app.repository.get
        accounts = [get(_id("account", key)) for key in range(int((where / "n").read_text()))]
        _close(app)
        return sum(a.balance for a in accounts)

    def write_graph(self, where: Path, n: int) -> dict[str, float]:
        items = []
        for i in range(n):
            name, value, tags = item_fields(i)
            items.append(EsItem(key=i, name=name, value=value, tags=tags, ref=_id("item", item_ref(i, n))))
        groups = [
            EsGroup(key=k, name=f"group-{k}", items=[_id("item", i) for i in r]) for k, r in enumerate(graph_shape(n))
        ]
        forest = EsForest(key=0, groups=[g.id for g in groups])
        app = _app(where)
        started = time.perf_counter()
        app.save(forest, *groups, *items)
        took = time.perf_counter() - started
        _close(app)
        return {"commit": took}

    def load_graph(self, where: Path) -> int:
        app = _app(where)
        get = app.repository.get
        forest = get(_id("forest", 0))
        groups = [get(gid) for gid in forest.groups]
        items: dict[Any, Any] = {}
        for group in groups:
            for iid in group.items:
                items[iid] = get(iid)
        _close(app)
        total = 0
        for group in groups:
            for iid in group.items:
                item = items[iid]
                total += item.value + items[item.ref].value + len(item.tags)
        return total
