"""The target index history reads by (``memimg_targets``): commits never write it, ``index_targets`` fills it,
compaction removes its entries, and a log made before it gets it when a writable store opens it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import Any

import pytest
import sqlalchemy as sa

import memimg
from memimg.stores import SQLiteStore, _sqlitetargets, _waits
from memimg.stores._protocol import TARGETS_KEY
from memimg.stores._sqlalchemy import SQLAlchemyStore
from tests.conftest import POSTGRES_URL, StoreFactory
from tests.stores.contract import row, snap


def _sqlite(path: str, sql: str, *params: Any) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _entries(path: str) -> list[tuple[int, int]]:
    return [tuple(r) for r in _sqlite(path, "SELECT target, seq FROM memimg_targets ORDER BY seq")]


def _covered(path: str) -> int:
    return int(_sqlite(path, "SELECT value FROM memimg_meta WHERE key = ?", TARGETS_KEY)[0][0])


def test_sqlite_commits_leave_the_index_alone_and_index_targets_fills_it(tmp_path: Any) -> None:
    """A new log has the table (WITHOUT ROWID) covering seq 0; appends add no entry; index_targets adds one per
    event of an object (none for target 0) up to the seq asked, and moves the meta entry there."""
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    sql = _sqlite(path, "SELECT sql FROM sqlite_master WHERE name = 'memimg_targets'")[0][0]
    assert "WITHOUT ROWID" in sql and "PRIMARY KEY (target, seq)" in sql
    store.append([row(s, target=s % 3) for s in range(1, 10)], 0)
    assert _entries(path) == [] and _covered(path) == 0
    assert store.index_targets(6) == 6
    assert _entries(path) == [(s % 3, s) for s in range(1, 7) if s % 3]
    assert _covered(path) == 6
    assert store.index_targets(9, least=4) == 6  # 3 waiting: nothing written
    assert _covered(path) == 6
    assert store.index_targets(9) == 9
    assert _entries(path) == [(s % 3, s) for s in range(1, 10) if s % 3]
    store.close()


def test_sqlite_fill_takes_the_write_lock_one_chunk_at_a_time(tmp_path: Any, monkeypatch: Any) -> None:
    """A long fill is written a chunk of events per transaction, the write lock given up between chunks: another
    connection commits between any two chunks (waiting at most for a checkpoint the chunk set off: were the lock
    held across chunks, it would wait for the fill, which waits for it), and the index ends up whole."""
    monkeypatch.setattr(_sqlitetargets, "CHUNK", 10)
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=s % 3) for s in range(1, 46)], 0)
    other = sqlite3.connect(path, timeout=5, isolation_level=None)
    spans: list[tuple[int, int]] = []
    advance = _sqlitetargets.advance

    def spy(*args: Any) -> tuple[int, int, float]:
        before, done, _ = advance(*args)
        spans.append((before, done))
        other.execute("INSERT OR REPLACE INTO memimg_meta (key, value) VALUES ('between', ?)", (str(done),))
        return before, done, 1.0  # each chunk as slow as can be: the next is no larger

    monkeypatch.setattr(_sqlitetargets, "advance", spy)
    assert store.index_targets(45) == 45
    assert spans == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 45)]
    assert _entries(path) == [(s % 3, s) for s in range(1, 46) if s % 3]
    assert _covered(path) == 45
    other.close()
    store.close()


def test_sqlite_fill_sizes_its_chunks_by_the_time_they_hold_the_write_lock(tmp_path: Any, monkeypatch: Any) -> None:
    """Each chunk is sized by how long the last whole one held the write lock: chunks that take a quarter of
    CHUNK_SECONDS grow fourfold (never by more), one that takes twice as long halves, none goes below CHUNK nor
    above MOST; a chunk cut short by the events waiting leaves the size alone. The index ends up whole."""
    monkeypatch.setattr(_sqlitetargets, "CHUNK", 10)
    monkeypatch.setattr(_sqlitetargets, "MOST", 100)
    second = _sqlitetargets.CHUNK_SECONDS
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=s % 5) for s in range(1, 401)], 0)
    spans: list[tuple[int, int]] = []
    advance = _sqlitetargets.advance
    tooks = iter([second / 4, second / 16, second / 4, second * 2, second / 1000, second * 100, second / 1000])

    def spy(*args: Any) -> tuple[int, int, float]:
        before, done, _ = advance(*args)
        spans.append((before, done))
        return before, done, next(tooks)

    monkeypatch.setattr(_sqlitetargets, "advance", spy)
    assert store.index_targets(325) == 325
    # 10 (a quarter: x4) -> 40 (a sixteenth: x4 only, 160, capped at MOST) -> 100 (a quarter: capped) -> 100
    # (twice as long: halved) -> 50 (fast: x4, capped) -> 100, cut short at 325 (size unchanged)
    assert spans == [(0, 10), (10, 50), (50, 150), (150, 250), (250, 300), (300, 325)]
    assert store.index_targets(400) == 400  # a chunk of 100 takes the rest
    assert spans[6:] == [(325, 400)]
    assert _entries(path) == [(s % 5, s) for s in range(1, 401) if s % 5]
    assert [_sqlitetargets.resize(10, 10, 100.0), _sqlitetargets.resize(40, 19, 1e-9)] == [10, 40]
    store.close()


def test_sqlite_fill_leaves_the_stores_connection_free_and_an_append_waits_for_its_chunk(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A fill writes on a connection of its own: while one of its chunks holds the write lock, the store's own
    connection answers whether others committed and reads events at once, and an append (one row, or several in a
    transaction) waits for that chunk's end, then goes in; the index ends up whole."""
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=s % 3) for s in range(1, 21)], 0)
    in_chunk, release = threading.Event(), threading.Event()
    immediate = _sqlitetargets.immediate

    @contextlib.contextmanager
    def held(conn: Any, timeout: float) -> Any:
        with immediate(conn, timeout):
            assert conn is not store._conn  # the fill's own connection
            in_chunk.set()
            assert release.wait(10)
            yield

    monkeypatch.setattr(_sqlitetargets, "immediate", held)
    filled: list[int] = []
    fill = threading.Thread(target=lambda: filled.append(store.index_targets(20)))
    fill.start()
    assert in_chunk.wait(10)
    answers: list[Any] = []
    asking = threading.Thread(target=lambda: answers.extend([store.changed(20), [r[0] for r in store.read(after=18)]]))
    asking.start()
    asking.join(5)
    assert answers[1:] == [[19, 20]]  # answered while the chunk holds the write lock
    slept = _polls(monkeypatch)
    appended: list[int] = []
    append = threading.Thread(target=lambda: (store.append([row(21, target=1)], 20), appended.append(21)))
    append.start()
    append.join(0.3)
    assert appended == [] and append.is_alive()  # waiting for the chunk
    release.set()
    append.join(10)
    fill.join(10)
    assert appended == [21] and filled == [20]
    assert slept.get(append) is None  # it waited for the chunk's end, not in polls
    store.append([row(s, target=2) for s in (22, 23)], 21)  # several rows: BEGIN IMMEDIATE, the lock free
    assert _entries(path) == [(s % 3, s) for s in range(1, 21) if s % 3] and _covered(path) == 20
    assert [r[0] for r in store.read(after=20)] == [21, 22, 23]
    store.close()


def test_sqlite_append_of_several_rows_waits_for_a_fill_chunk(tmp_path: Any, monkeypatch: Any) -> None:
    """An append of several rows (one transaction) that finds a fill's chunk holding the write lock waits for its
    end, then commits all its rows."""
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=1) for s in range(1, 11)], 0)
    in_chunk, release = threading.Event(), threading.Event()
    immediate = _sqlitetargets.immediate

    @contextlib.contextmanager
    def held(conn: Any, timeout: float) -> Any:
        with immediate(conn, timeout):
            in_chunk.set()
            assert release.wait(10)
            yield

    monkeypatch.setattr(_sqlitetargets, "immediate", held)
    fill = threading.Thread(target=store.index_targets, args=(10,))
    fill.start()
    assert in_chunk.wait(10)
    slept = _polls(monkeypatch)
    done: list[bool] = []
    append = threading.Thread(
        target=lambda: (store.append([row(s, target=2) for s in (11, 12, 13)], 10), done.append(True))
    )
    append.start()
    append.join(0.3)
    assert done == [] and append.is_alive()
    release.set()
    append.join(10)
    fill.join(10)
    assert done == [True] and [r[0] for r in store.read(after=10)] == [11, 12, 13] and _covered(path) == 10
    assert slept.get(append) is None  # it waited for the chunk's end, not in polls
    store.close()


def _polls(monkeypatch: Any) -> dict[threading.Thread, list[float]]:
    """The waits of retry_busy (and the checkpointer's) from now on, by thread."""
    slept: dict[threading.Thread, list[float]] = {}
    real_sleep = _waits.time.sleep

    def sleep(seconds: float) -> None:
        slept.setdefault(threading.current_thread(), []).append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(_waits.time, "sleep", sleep)
    return slept


@pytest.mark.parametrize("how", ["moved away", "replaced"])
def test_sqlite_fill_never_writes_to_a_file_that_is_no_longer_the_stores(tmp_path: Any, how: str) -> None:
    """A fill after the database file was moved away or replaced by another image raises FileGoneError: no file
    is made at the path, and the one put there is left byte for byte as it was."""
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=1 + s % 50) for s in range(1, 2001)], 0)
    other_path = str(tmp_path / "other.db")
    other = SQLiteStore(other_path)
    other.append([row(1, target=1)], 0)
    other.close()
    os.rename(path, str(tmp_path / "moved.db"))
    if how == "replaced":
        os.rename(other_path, path)
    before = open(path, "rb").read() if how == "replaced" else None
    with pytest.raises(memimg.FileGoneError):
        store.index_targets(2000)
    if how == "moved away":
        assert not os.path.exists(path)
    else:
        assert open(path, "rb").read() == before
    store.close()
    if how == "replaced":  # the other image, as it was: one event, nothing indexed
        assert _sqlite(path, "SELECT count(*) FROM memimg_events") == [(1,)] and _entries(path) == []


def test_sqlite_query_plan_reads_the_index_by_its_primary_key(tmp_path: Any) -> None:
    """The indexed part of read_target is a range of memimg_targets' primary key, joined to the events by seq."""
    path = str(tmp_path / "log.db")
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    try:
        plan = str(conn.execute("EXPLAIN QUERY PLAN " + _sqlitetargets._INDEXED, (1, 0, 9, 5)).fetchall())
        tail = str(conn.execute("EXPLAIN QUERY PLAN " + _sqlitetargets._TAIL, (0, 9, 1, 5)).fetchall())
    finally:
        conn.close()
    assert "SEARCH t USING PRIMARY KEY (target=? AND seq>? AND seq<?)" in plan
    assert "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)" in plan
    assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in tail  # the tail: a range of seqs, not the log


def test_sqlite_compaction_leaves_no_entries(tmp_path: Any) -> None:
    """Deleting events deletes their entries (in one transaction), whether the index had got past them or not."""
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=1 + s % 2) for s in range(1, 21)], 0)
    store.index_targets(15)
    store.write_snapshot(snap(10))
    assert store.delete_events_before(11) == 10
    assert _entries(path) == [(1 + s % 2, s) for s in range(11, 16)]
    assert store.delete_events_before(18) == 7
    assert _entries(path) == []
    store.index_targets(20)
    assert _entries(path) == [(1 + s % 2, s) for s in range(18, 21)]
    store.close()


def test_sqlite_index_is_added_to_an_older_log(tmp_path: Any) -> None:
    """A log made before the index: a read-only store answers by scanning and creates nothing; a writable store
    creates the table, empty and covering seq 0, and the first index_targets fills it."""
    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    store.append([row(s, target=s % 3) for s in range(1, 10)], 0)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE memimg_targets")
    conn.execute("DELETE FROM memimg_meta WHERE key = ?", (TARGETS_KEY,))
    conn.commit()
    conn.close()
    readonly = SQLiteStore(path, readonly=True)
    assert [r[0] for r in readonly.read_target(1)] == [1, 4, 7]
    assert readonly.index_targets(0) == 0  # nothing waits below seq 0: nothing refused
    readonly.close()
    assert _sqlite(path, "SELECT name FROM sqlite_master WHERE name = 'memimg_targets'") == []
    store = SQLiteStore(path)
    assert _entries(path) == [] and _covered(path) == 0
    assert [r[0] for r in store.read_target(1)] == [1, 4, 7]
    assert store.index_targets(9) == 9
    assert [r[0] for r in store.read_target(1)] == [1, 4, 7]
    assert len(_entries(path)) == 6
    store.close()


def test_sqlite_readonly_store_refuses_to_index(tmp_path: Any) -> None:
    """A read-only store with events waiting raises ReadOnlyError, and writes nothing."""
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=1) for s in range(1, 4)], 0)
    readonly = SQLiteStore(path, readonly=True)
    try:
        try:
            readonly.index_targets(3)
        except memimg.ReadOnlyError as err:
            assert "read-only" in str(err)
        else:
            raise AssertionError("index_targets on a read-only store wrote")
        assert _covered(path) == 0
    finally:
        readonly.close()
        store.close()


def test_sqlite_two_stores_indexing_at_once_fill_each_entry_once(tmp_path: Any) -> None:
    """Several handles advancing together (threads, one connection each) all succeed; every entry once."""
    path = str(tmp_path / "log.db")
    store = SQLiteStore(path)
    store.append([row(s, target=1 + s % 5) for s in range(1, 2001)], 0)
    handles = [SQLiteStore(path) for _ in range(4)]
    errors: list[BaseException] = []

    def advance(handle: SQLiteStore, upto: int) -> None:
        try:
            handle.index_targets(upto)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=advance, args=(h, 500 * (i + 1))) for i, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _entries(path) == sorted(((1 + s % 5, s) for s in range(1, 2001)), key=lambda e: e[1])
    assert _covered(path) == 2000
    for h in (store, *handles):
        h.close()


def _pg(postgres: StoreFactory, sql: str) -> list[Any]:
    engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql.replace("S.", f'"{postgres.schema}".')))
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def test_postgres_index_fill_compaction_and_upgrade(postgres: StoreFactory) -> None:
    """On PostgreSQL: appends add no entry, index_targets fills, compaction removes the entries of what it deletes,
    and a log without the table gets it, empty, from the next writable open (a read-only one answers by scanning)."""
    store = postgres.target()
    store.append([row(s, target=1 + s % 2) for s in range(1, 21)], 0)
    assert _pg(postgres, "SELECT count(*) FROM S.memimg_targets") == [(0,)]
    assert store.index_targets(15) == 15
    assert _pg(postgres, "SELECT count(*), max(seq) FROM S.memimg_targets") == [(15, 15)]
    store.write_snapshot(snap(10))
    assert store.delete_events_before(11) == 10
    assert _pg(postgres, "SELECT min(seq), count(*) FROM S.memimg_targets") == [(11, 5)]
    _pg(postgres, f"DROP TABLE S.memimg_targets; DELETE FROM S.memimg_meta WHERE key = '{TARGETS_KEY}'")
    readonly = postgres.target(readonly=True)
    assert [r[0] for r in readonly.read_target(1)] == [12, 14, 16, 18, 20]
    assert _pg(postgres, "SELECT to_regclass('S.memimg_targets') IS NULL") == [(True,)]
    store = postgres.target()
    assert _pg(postgres, f"SELECT value FROM S.memimg_meta WHERE key = '{TARGETS_KEY}'") == [("0",)]
    assert store.index_targets(20) == 20
    assert [r[0] for r in store.read_target(1)] == [12, 14, 16, 18, 20]
    assert _pg(postgres, "SELECT count(*) FROM S.memimg_targets") == [(10,)]


def test_postgres_an_advance_that_lost_the_race_writes_nothing(postgres: StoreFactory, monkeypatch: Any) -> None:
    """Two stores read the same covered seq: the second to claim the range finds it moved, inserts nothing (no
    duplicate key) and answers the seq the winner covered."""
    first, second = postgres.target(), postgres.target()
    assert isinstance(second, SQLAlchemyStore)
    first.append([row(s, target=1) for s in range(1, 11)], 0)
    stale = second._covered("test")
    assert first.index_targets(10) == 10
    real = SQLAlchemyStore._covered
    calls: list[int] = []

    def once_stale(self: SQLAlchemyStore, doing: str) -> int:
        calls.append(1)
        return stale if len(calls) == 1 else real(self, doing)

    monkeypatch.setattr(SQLAlchemyStore, "_covered", once_stale)
    assert second.index_targets(10) == 10
    assert len(calls) == 2  # it read the covered seq again after losing
    assert _pg(postgres, "SELECT count(*) FROM S.memimg_targets") == [(10,)]


def test_postgres_a_new_log_gets_its_index_entry_with_its_tables(postgres: StoreFactory, monkeypatch: Any) -> None:
    """The target table and the meta entry saying how far it is filled are made in the same transaction: a store
    that dies right after making a new log's tables leaves a log whose index still fills."""
    from memimg.stores._sqlsetup import Setup

    def dies(self: Setup) -> None:
        raise RuntimeError("the process died here")

    with monkeypatch.context() as patch:
        patch.setattr(Setup, "_create_targets", dies)
        try:
            postgres.target()
        except RuntimeError:
            pass
    store = postgres.target()
    store.append([row(s, target=1) for s in range(1, 6)], 0)
    assert store.index_targets(5) == 5
    assert _pg(postgres, "SELECT count(*) FROM S.memimg_targets") == [(5,)]
