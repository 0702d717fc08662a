from __future__ import annotations

import sqlite3
from typing import Any

import pytest

import memimg
from memimg.stores import SQLiteStore, Store
from tests.stores.contract import StoreContract, row


class TestSQLiteStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.path = str(tmp_path / "log.db")

    def make_store(self) -> Store:
        return SQLiteStore(self.path)

    def reopen(self, store: Store) -> Store:
        return SQLiteStore(self.path)


def test_wal_and_sync_modes(tmp_path: Any) -> None:
    """The file is in WAL mode; sync picks the synchronous level."""
    path = str(tmp_path / "a.db")
    full = SQLiteStore(path, sync="full")
    assert full._pragma("journal_mode") == "wal"
    assert full._pragma("synchronous") == 2
    full.close()
    normal = SQLiteStore(path)
    assert normal._pragma("synchronous") == 1
    normal.close()
    with pytest.raises(ValueError, match="sync"):
        SQLiteStore(path, sync="sometimes")


def test_garbage_file_is_refused_and_untouched(tmp_path: Any) -> None:
    """A file that is not SQLite raises a clear error and is not modified."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(memimg.MemimgError, match="not an SQLite database"):
        memimg.open(str(path))
    assert path.read_bytes() == before
    assert not (tmp_path / "notes.txt-wal").exists()


def test_other_applications_tables_are_kept(tmp_path: Any) -> None:
    """memimg's tables go beside an application's own tables."""
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    with memimg.open(path) as img:
        img.root["x"] = 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "memimg_events", "memimg_snapshots", "memimg_meta"} <= tables
    conn.close()
    with memimg.open(path) as img:
        assert img.root == {"x": 1}


def test_foreign_memimg_table_is_refused(tmp_path: Any) -> None:
    """A memimg_events table memimg did not make is refused, not altered."""
    path = str(tmp_path / "x.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE memimg_events (id INTEGER, body TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(memimg.MemimgError, match="not made by memimg"):
        memimg.open(path)
    conn = sqlite3.connect(path)
    assert [r[1] for r in conn.execute("PRAGMA table_info(memimg_events)")] == ["id", "body"]
    conn.close()


def test_newer_format_is_refused(tmp_path: Any) -> None:
    """A store written by a newer storage format is refused and left as it was."""
    path = str(tmp_path / "new.db")
    with memimg.open(path) as img:
        img.root["a"] = 1
    conn = sqlite3.connect(path)
    conn.execute("UPDATE memimg_meta SET value = '99' WHERE key = 'format_version'")
    conn.commit()
    head = conn.execute("SELECT max(seq) FROM memimg_events").fetchone()
    conn.close()
    with pytest.raises(memimg.MemimgError, match="format 99"):
        memimg.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT max(seq) FROM memimg_events").fetchone() == head
    conn.close()


def test_locked_database_raises_locked_error(tmp_path: Any) -> None:
    """A writer blocked past busy_timeout gets LockedError and nothing is appended."""
    path = str(tmp_path / "l.db")
    store = SQLiteStore(path, busy_timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(memimg.LockedError, match="locked"):
            store.append([row(1)], 0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.head() == 0
    store.close()


def test_missing_directory(tmp_path: Any) -> None:
    """A path in a directory that does not exist fails with a clear error."""
    with pytest.raises(memimg.MemimgError, match="cannot open"):
        memimg.open(str(tmp_path / "nope" / "x.db"))


def test_readonly_missing_file(tmp_path: Any) -> None:
    """readonly=True on a file that does not exist says so."""
    with pytest.raises(memimg.MemimgError, match="does not exist"):
        memimg.open(str(tmp_path / "x.db"), readonly=True)
