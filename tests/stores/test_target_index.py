"""The index on target that history reads by: made with new logs, and added to older logs when opened writable."""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlalchemy as sa

import memimg
from memimg.stores import SQLiteStore
from tests.conftest import StoreFactory
from tests.stores.contract import row


def _sqlite_has_index(path: str) -> bool:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'memimg_events_target'").fetchone() is not None
    finally:
        conn.close()


def test_sqlite_index_is_added_to_an_older_log(tmp_path: Any) -> None:
    """A log made before the index gets it when a writable store opens it; a read-only store reads it
    without one (scanning), and the query plan uses the index once it exists."""
    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    store.append([row(s, target=s % 3) for s in range(1, 10)], 0)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX memimg_events_target")
    conn.commit()
    conn.close()
    assert not _sqlite_has_index(path)
    readonly = SQLiteStore(path, readonly=True)
    assert [r[0] for r in readonly.read_target(1)] == [1, 4, 7]
    readonly.close()
    assert not _sqlite_has_index(path)
    SQLiteStore(path).close()
    assert _sqlite_has_index(path)
    conn = sqlite3.connect(path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT seq FROM memimg_events WHERE target = 1 AND seq > 0 AND seq <= 9 ORDER BY seq"
    ).fetchall()
    conn.close()
    assert "memimg_events_target" in str(plan)


def test_postgres_index_is_added_to_an_older_log(postgres: StoreFactory) -> None:
    """On PostgreSQL too: dropped, then made again by the next writable open."""
    img = memimg.open(postgres.target(), root=dict)
    img.root["a"] = 1
    img.close()
    engine = sa.create_engine(postgres.target().engine.url)
    index = f'"{postgres.schema}".memimg_events_target'

    def exists() -> bool:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": index}).scalar() is not None

    try:
        assert exists()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP INDEX {index}"))
        assert not exists()
        readonly = postgres.target(readonly=True)
        assert [r[3] for r in readonly.read_target(1)] == ["root", "dict.set"]
        assert not exists()
        postgres.target()
        assert exists()
    finally:
        engine.dispose()
