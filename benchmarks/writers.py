"""Workload (f): 1, 2, 4 writer processes committing to one shared log.

Each writer is a separate OS process (``python -m benchmarks.child writer``)
with its own full image of the same log. It makes single-mutation durable
commits (``sync="normal"``) on its own disjoint slice of the 1,000 accounts,
so no commit ever conflicts: what is measured is the cost of sharing the log
-- the database's write lock, and for memimg the optimistic append that,
when another process got there first, catches up on that process's events
and retries. The figure is total updates/s of all writers together.

On SQLite the baseline is raw ``sqlite3`` writers doing one ``INSERT`` per
commit in WAL NORMAL on one file. When ``MEMIMG_TEST_POSTGRES_URL`` is set the
same runs on PostgreSQL (each run in a schema of its own, dropped
afterwards), against raw ``psycopg`` writers inserting one row per commit
with ``synchronous_commit = off`` (what memimg's ``sync="normal"`` sets).

Beside them, for the largest writer count, raw writers keeping **the log's
own rule** (column ``gap-free raw``): each appends at the seq after the head
it knows with one conditional ``INSERT`` (taken only if that is still the
head), and when refused reads the rows it missed, keeps their values and
tries again -- what any writer of a gap-free, ordered log shared by processes
that each keep the whole state must do, with no memimg code at all. It is the
ceiling of memimg's figure on that store; the bars print memimg against it
too.

Processes are started once per writer count and kept waiting on stdin; each
repetition sends ``go SECONDS`` to one system's writers at a time (systems
alternate) and sums the counts they report, so process start-up and imports
are never timed.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Context

__all__ = ["GAP_FREE", "POSTGRES_ENV", "writer_main", "writers"]

POSTGRES_ENV = "MEMIMG_TEST_POSTGRES_URL"
#: The system name (a column of the table) of the raw writers keeping the log's rule (see the module docstring).
GAP_FREE = "gap-free raw"


# -- the child side ------------------------------------------------------------------


def _libpq(url: str) -> str:
    """A libpq conninfo from a SQLAlchemy URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


def _open_writer(kind: str, where: str, wid: int, writers: int) -> tuple[Any, Any]:
    """``(update(key, value), close())`` for one writer of *kind*."""
    if kind in ("memimg", "memimg-pg"):
        import memimg
        from benchmarks.models import Bank

        if kind == "memimg":
            img = memimg.open(where, root=Bank)
        else:
            from memimg.stores._sqlalchemy import SQLAlchemyStore

            url, schema = where.split("|")
            img = memimg.open(SQLAlchemyStore(url, schema=schema), root=Bank)
        accounts = img.root.accounts

        def update(key: int, value: int) -> None:
            accounts[key].balance = value

        return update, img.close
    if kind == "sqlite3":
        import sqlite3

        conn = sqlite3.connect(where, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

        def insert(key: int, value: int) -> None:
            conn.execute("INSERT INTO log (obj, field, value) VALUES (?, 'balance', ?)", (key, value))

        return insert, conn.close
    if kind == "sqlite3-gapfree":
        import sqlite3

        conn = sqlite3.connect(where, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        at_head = (
            "INSERT INTO log (seq, obj, field, value) SELECT ?, ?, 'balance', ? "
            "WHERE coalesce((SELECT max(seq) FROM log), 0) = ?"
        )
        update = _gap_free(
            lambda seq, key, value: conn.execute(at_head, (seq, key, value, seq - 1)).rowcount == 1,
            lambda after: conn.execute(_MISSED, (after,)).fetchall(),
        )
        return update, conn.close
    if kind == "psycopg-gapfree":
        import psycopg

        url, schema = where.split("|")
        pg = psycopg.connect(_libpq(url), autocommit=True)
        pg.execute("SET synchronous_commit = off")
        at_head_pg = (
            f'INSERT INTO "{schema}".log (seq, obj, field, value) SELECT %s, %s, %s, %s '
            f'WHERE coalesce((SELECT max(seq) FROM "{schema}".log), 0) = %s'
        )
        missed_pg = _MISSED.replace("FROM log", f'FROM "{schema}".log').replace("?", "%s")

        def insert_at(seq: int, key: int, value: int) -> bool:
            try:
                return bool(pg.execute(at_head_pg, (seq, key, "balance", value, seq - 1)).rowcount == 1)
            except psycopg.errors.UniqueViolation:  # another writer's insert of the seq committed meanwhile
                return False

        return _gap_free(insert_at, lambda after: pg.execute(missed_pg, (after,)).fetchall()), pg.close
    if kind == "psycopg":
        import psycopg

        url, schema = where.split("|")
        pg = psycopg.connect(_libpq(url), autocommit=True)
        pg.execute("SET synchronous_commit = off")
        statement = f'INSERT INTO "{schema}".log (obj, field, value) VALUES (%s, %s, %s)'

        def insert_pg(key: int, value: int) -> None:
            pg.execute(statement, (key, "balance", value))

        return insert_pg, pg.close
    raise SystemExit(f"unknown writer kind {kind!r}")


_MISSED = "SELECT seq, obj, value FROM log WHERE seq > ? ORDER BY seq LIMIT 1000"


def _gap_free(insert_at: Any, missed: Any) -> Any:
    """``update(key, value)`` of a raw writer keeping the log's rule: *insert_at(seq, key, value)* appends only at
    the head's next seq; refused, *missed(after)* gives the rows past the head it knew, whose values it keeps."""
    state: dict[int, int] = {}
    head = max((row[0] for row in missed(0)), default=0)  # (the table starts empty: one read)

    def update(key: int, value: int) -> None:
        nonlocal head
        while not insert_at(head + 1, key, value):
            for seq, obj, val in missed(head):
                state[obj] = val
                head = seq
        head += 1
        state[key] = value

    return update


def writer_main(kind: str, where: str, wid: str, writers: str, accounts: str) -> None:
    """Run one writer: open, say ``ready``, then for each ``go SECONDS`` line commit for that long."""
    w, n = int(wid), int(writers)
    keys = list(range(w, int(accounts), n))
    update, close = _open_writer(kind, where, w, n)
    value = w * 1_000_000_000
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        seconds = float(command[1])
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(8):  # check the clock every few commits
                value += 1
                update(keys[count % len(keys)], value)
                count += 1
        print(json.dumps({"count": count, "seconds": time.perf_counter() - started}), flush=True)
    close()


# -- the parent side -----------------------------------------------------------------


class _Pool:
    """The running writer processes of one system, for one writer count."""

    def __init__(self, name: str, kind: str, where: str, writers: int, accounts: int) -> None:
        self.name = name
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.child", "writer", kind, where, str(w), str(writers), str(accounts)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for w in range(writers)
        ]
        for proc in self.procs:
            self._expect(proc, "ready")

    def _expect(self, proc: subprocess.Popen[str], what: str, timeout: float = 120.0) -> str:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line or (what and line.strip() != what):
            self.close()
            raise RuntimeError(f"writer process did not say {what or 'its result'!r} (got {line.strip()!r})")
        return line

    def run(self, seconds: float) -> float:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {seconds}\n")
            proc.stdin.flush()
        total = 0.0
        for proc in self.procs:
            result = json.loads(self._expect(proc, "", timeout=seconds + 120))
            total += result["count"] / result["seconds"]
        return total

    def close(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _prepare_memimg(target: Any, accounts: int) -> None:
    import memimg
    from benchmarks.models import Account, Bank

    with memimg.open(target, root=Bank) as img:
        img.root.accounts.update({key: Account(f"owner-{key}") for key in range(accounts)})


def _prepare_sqlite(path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, obj INTEGER NOT NULL, field TEXT NOT NULL, value)")
    conn.close()


def _postgres_setup(url: str, accounts: int) -> tuple[str, str, str, Any]:
    """Three fresh schemas (memimg's, raw psycopg's, the gap-free raw writers') and a function dropping them."""
    import psycopg

    from memimg.stores._sqlalchemy import SQLAlchemyStore

    tag = uuid.uuid4().hex[:10]
    mem_schema, raw_schema, gap_schema = f"bench_mi_{tag}", f"bench_raw_{tag}", f"bench_gap_{tag}"
    _prepare_memimg(SQLAlchemyStore(url, schema=mem_schema), accounts)
    with psycopg.connect(_libpq(url), autocommit=True) as pg:
        pg.execute(f'CREATE SCHEMA "{raw_schema}"')
        pg.execute(
            f'CREATE TABLE "{raw_schema}".log (seq BIGSERIAL PRIMARY KEY, obj INTEGER NOT NULL, '
            "field TEXT NOT NULL, value BIGINT)"
        )
        pg.execute(f'CREATE SCHEMA "{gap_schema}"')
        pg.execute(
            f'CREATE TABLE "{gap_schema}".log (seq BIGINT PRIMARY KEY, obj INTEGER NOT NULL, '
            "field TEXT NOT NULL, value BIGINT)"
        )

    def drop() -> None:
        with psycopg.connect(_libpq(url), autocommit=True) as pg:
            for schema in (mem_schema, raw_schema, gap_schema):
                pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return f"{url}|{mem_schema}", f"{url}|{raw_schema}", f"{url}|{gap_schema}", drop


def writers(ctx: Context) -> None:
    """(f) total updates/s of 1, 2, 4 concurrent writer processes on one log."""
    accounts, seconds = ctx.sizes.accounts, ctx.sizes.writer_seconds
    names = {s.name for s in ctx.systems}
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        ctx.results.notes.append(f"writers: PostgreSQL not measured ({POSTGRES_ENV} is not set)")
    for count in ctx.sizes.writers:
        backends: list[tuple[str, list[tuple[str, str, str]], Any]] = []
        where = ctx.fresh_dir(f"writers-{count}")
        _prepare_memimg(str(where / "image.db"), accounts)
        _prepare_sqlite(where / "raw.db")
        gap_free = count == max(ctx.sizes.writers) and count > 1  # (the bars' count; one writer is never refused)
        sqlite_kinds = [("memimg", "memimg", str(where / "image.db")), ("sqlite3", "sqlite3", str(where / "raw.db"))]
        sqlite_kinds = [k for k in sqlite_kinds if k[0] in names]
        if gap_free and "sqlite3" in names:
            _prepare_sqlite(where / "gapfree.db")
            sqlite_kinds.append((GAP_FREE, "sqlite3-gapfree", str(where / "gapfree.db")))
        backends.append(("SQLite", sqlite_kinds, None))
        if url and "memimg" in names:
            mem_where, raw_where, gap_where, drop = _postgres_setup(url, accounts)
            pg_kinds = [("memimg", "memimg-pg", mem_where), ("psycopg", "psycopg", raw_where)]
            if gap_free:
                pg_kinds.append((GAP_FREE, "psycopg-gapfree", gap_where))
            backends.append(("PostgreSQL", pg_kinds, drop))
        for backend, kinds, drop in backends:
            pools: list[_Pool] = []
            try:
                for name, kind, target in kinds:
                    pools.append(_Pool(name, kind, target, count, accounts))
                ctx.progress(f"writers [{count}, {backend}]: {len(pools) * count} writer processes ready")
                ctx.alternate(
                    "writers",
                    f"{count} writer{'s' if count > 1 else ''}, {backend}",
                    pools,
                    lambda pool: {"updates/s": (pool.run(seconds), True)},
                    reps=max(ctx.sizes.reps, 1),
                )
            finally:
                for pool in pools:
                    pool.close()
                if drop is not None:
                    drop()
