"""Raw ``sqlite3``: the physical limit of an SQLite log, written by hand with no library in between.

It writes **the same rows** memimg writes -- one row per mutation in an
append-only table with memimg's columns ``(seq, tx, ts, kind, target,
payload, checksum)``, the payload a small JSON array and the checksum a
CRC-32 -- as SPEC §8 asks ("raw sqlite3 executemany of the same rows"), but
with no object graph, no conflict checks, no schema, no transactions of
objects. WAL mode, ``synchronous`` NORMAL or FULL as the sync mode asks; one
``INSERT`` per durable commit, ``executemany`` in one transaction for a
batch. Recovery reads every row, parses its payload and folds it into one
dict per object; its "snapshot" is a table of those folded dicts plus the
seq it covers. The graph is the same in-memory graph the other systems save
(plain attrs objects), written as two tables (groups, items): inside the
timed commit, an id per item and a row per object are built from the
objects -- the work every other system's commit does too -- and filled in
by ``executemany``; the insert alone is reported beside it. Two
simplifications a hand-written schema may make and memimg does not: the
tags are one string joined by a separator (no escaping, no types), and the
ids are given inside the timed save, where memimg's snapshot finds its
object ids already given (at the attach commit, timed separately). It is
read back into dicts whose references are resolved to the referenced dicts.
"""

from __future__ import annotations

import gc
import sqlite3
import time
import zlib
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

import orjson

from benchmarks.models import PlainGroup, PlainItem, graph_shape, item_fields, item_ref
from benchmarks.systems._base import System

__all__ = ["SQLiteSystem"]

_LOG = (
    "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, tx INTEGER NOT NULL, ts INTEGER NOT NULL, "
    "kind TEXT NOT NULL, target INTEGER NOT NULL, payload BLOB NOT NULL, checksum INTEGER NOT NULL)"
)
_INSERT = "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)"


def _row(seq: int, tx: int, key: int, field: str, value: Any) -> tuple[Any, ...]:
    payload = orjson.dumps([field, value])
    return (seq, tx, time.time_ns() // 1000, "obj.set", key, payload, zlib.crc32(payload))


_SEP = "\x1f"


def _connect(path: Path, sync: str = "normal") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync.upper()}")
    return conn


class _Accounts:
    def __init__(self, conn: sqlite3.Connection, n: int) -> None:
        self.conn = conn
        self.seq = conn.execute("SELECT coalesce(max(seq), 0) FROM log").fetchone()[0]
        #: the balances, kept in memory by hand (what the application would otherwise read back)
        self.balances = [0] * n

    def update(self, key: int, balance: int) -> None:
        self.seq += 1
        self.conn.execute(_INSERT, _row(self.seq, self.seq, key, "balance", balance))

    def update_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        conn = self.conn
        tx = self.seq + 1
        rows = [_row(tx + i, tx, key, "balance", balance) for i, (key, balance) in enumerate(pairs)]
        self.seq += len(rows)
        conn.execute("BEGIN")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")

    def deposit_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        # one row per deposit, as the issue-23 harness writes them (memimg writes one per account changed:
        # a transaction's repeated assignments of a field are one event, its outcome)
        balances, tx, rows = self.balances, self.seq + 1, []
        for i, (key, amount) in enumerate(pairs):
            balance = balances[key] = balances[key] + amount
            rows.append(_row(tx + i, tx, key, "balance", balance))
        self.seq += len(rows)
        conn = self.conn
        conn.execute("BEGIN")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")

    def deposit_outcome_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        """The same deposits, written as memimg writes them: one row per account changed (its new balance)."""
        balances, tx, changed = self.balances, self.seq + 1, {}
        for key, amount in pairs:
            balances[key] += amount
            changed[key] = None
        rows = [_row(tx + i, tx, key, "balance", balances[key]) for i, key in enumerate(changed)]
        self.seq += len(rows)
        conn = self.conn
        conn.execute("BEGIN")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _create_accounts(conn: sqlite3.Connection, n: int) -> None:
    conn.execute(_LOG)
    conn.execute("BEGIN")
    rows = [_row(1 + key, 1, key, "owner", f"owner-{key}") for key in range(n)]
    rows += [_row(1 + n + key, 1, key, "balance", 0) for key in range(n)]
    conn.executemany(_INSERT, rows)
    conn.execute("COMMIT")


def _fold(rows: Any, state: dict[int, dict[str, Any]]) -> None:
    loads = orjson.loads
    for obj, payload in rows:
        field, value = loads(payload)
        d = state.get(obj)
        if d is None:
            d = state[obj] = {}
        d[field] = value


class SQLiteSystem(System):
    name: ClassVar[str] = "sqlite3"
    sync_modes: ClassVar[tuple[str, ...]] = ("normal", "full")

    def open_accounts(self, where: Path, n: int, sync: str) -> _Accounts:
        conn = _connect(where / "raw.db", sync)
        _create_accounts(conn, n)
        return _Accounts(conn, n)

    def write_history(self, where: Path, n: int, mutations: Sequence[tuple[int, int]], batch: int) -> None:
        conn = _connect(where / "raw.db")
        _create_accounts(conn, n)
        handle = _Accounts(conn, n)
        for start in range(0, len(mutations), batch):
            handle.update_many(mutations[start : start + batch])
        conn.close()

    def add_snapshot(self, where: Path) -> bool:
        conn = _connect(where / "raw.db")
        state: dict[int, dict[str, Any]] = {}
        (seq,) = conn.execute("SELECT max(seq) FROM log").fetchone()
        _fold(conn.execute("SELECT target, payload FROM log ORDER BY seq"), state)
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE snapshot (obj INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)")
        conn.execute("CREATE TABLE snapshot_seq (seq INTEGER)")
        conn.executemany(
            "INSERT INTO snapshot VALUES (?, ?, ?)", [(k, d["owner"], d["balance"]) for k, d in state.items()]
        )
        conn.execute("INSERT INTO snapshot_seq VALUES (?)", (seq,))
        conn.execute("COMMIT")
        conn.close()
        return True

    def recover(self, where: Path) -> int:
        conn = _connect(where / "raw.db")
        state: dict[int, dict[str, Any]] = {}
        after = 0
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'snapshot'").fetchone():
            (after,) = conn.execute("SELECT seq FROM snapshot_seq").fetchone()
            for obj, owner, balance in conn.execute("SELECT obj, owner, balance FROM snapshot"):
                state[obj] = {"owner": owner, "balance": balance}
        _fold(conn.execute("SELECT target, payload FROM log WHERE seq > ? ORDER BY seq", (after,)), state)
        conn.close()
        return sum(d["balance"] for d in state.values())

    def write_graph(self, where: Path, n: int) -> dict[str, float]:
        # The same in-memory graph the other systems save, built before the clock starts as theirs is.
        items = [PlainItem(*item_fields(i)) for i in range(n)]
        for i, item in enumerate(items):
            item.ref = items[item_ref(i, n)]
        groups = [PlainGroup(f"group-{k}", [items[i] for i in r]) for k, r in enumerate(graph_shape(n))]
        conn = _connect(where / "raw.db")
        was_on = gc.isenabled()
        gc.disable()  # as memimg pauses the collector while it snapshots
        try:
            started = time.perf_counter()
            # rows from the objects: an id per item (references may point forward), then a row per item;
            # the items' ids are their positions, in group order
            ids = {id(item): i for i, item in enumerate(chain.from_iterable(g.items for g in groups))}
            group_rows = [(k, g.name) for k, g in enumerate(groups)]
            item_rows = [
                (i, k, item.name, item.value, _SEP.join(item.tags), ids[id(item.ref)])
                for i, (k, item) in enumerate((k, item) for k, g in enumerate(groups) for item in g.items)
            ]
            built = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT)")
            conn.execute(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, grp INTEGER, name TEXT,"
                " value INTEGER, tags TEXT, ref INTEGER)"
            )
            conn.executemany("INSERT INTO groups VALUES (?, ?)", group_rows)
            conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", item_rows)
            conn.execute("COMMIT")
            done = time.perf_counter()
        finally:
            if was_on:
                gc.enable()
        conn.close()
        return {"commit": done - started, "insert": done - built}

    def load_graph(self, where: Path) -> int:
        conn = _connect(where / "raw.db")
        groups: dict[int, dict[str, Any]] = {
            gid: {"name": name, "items": []} for gid, name in conn.execute("SELECT id, name FROM groups")
        }
        items: dict[int, dict[str, Any]] = {}
        for iid, grp, name, value, tags, ref in conn.execute(
            "SELECT id, grp, name, value, tags, ref FROM items ORDER BY id"
        ):
            item = items[iid] = {"name": name, "value": value, "tags": tags.split(_SEP), "ref": ref}
            groups[grp]["items"].append(item)
        for item in items.values():
            item["ref"] = items[item["ref"]]
        conn.close()
        total = 0
        for group in groups.values():
            for item in group["items"]:
                total += item["value"] + item["ref"]["value"] + len(item["tags"])
        return total
