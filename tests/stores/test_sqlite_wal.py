"""The SQLite store's waiting for another connection's write lock, and its checkpoints off the commit path."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import memimg
from memimg.stores import SeqTaken, SQLiteStore, _sqlitecheckpoints, _sqlitewal, _waits
from memimg.stores._protocol import poll
from tests.stores.contract import row


def _held(path: str) -> sqlite3.Connection:
    """Another connection holding the database's write lock (``BEGIN IMMEDIATE``)."""
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_commit_waits_for_the_lock_in_short_steps(tmp_path: Any, monkeypatch: Any) -> None:
    """An append that finds another connection's write lock waits for it in steps of 50 µs doubling to 2 ms
    (not SQLite's own steps of up to 100 ms), and goes through once the lock is released."""
    path = str(tmp_path / "w.db")
    store = SQLiteStore(path, busy_timeout=10)
    waits: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(_waits.time, "sleep", lambda s: waits.append(s) or real_sleep(s))
    blocker = _held(path)
    releaser = threading.Timer(0.3, lambda: blocker.execute("COMMIT"))
    releaser.start()
    try:
        store.append([row(1)], 0)
    finally:
        releaser.join()
        blocker.close()
    assert store.head() == 1
    steps = [min(_waits.FIRST_WAIT * 2**i, _waits.MAX_WAIT) for i in range(len(waits))]
    assert waits == pytest.approx(steps), waits[:8]
    assert len(waits) > 10 and waits[-1] == _waits.MAX_WAIT  # 0.3 s in steps of at most 2 ms
    store.close()


def _busy_error() -> sqlite3.OperationalError:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return busy


def test_waiting_for_the_lock_keeps_nothing_it_was_given_alive() -> None:
    """retry_busy, having met busy errors before its statement went through, keeps no reference to what it was
    given (an append's row and cursor): with the collector paused, as it is during commits, they are freed as soon
    as the caller lets go of them."""

    class Payload:
        pass

    payload = Payload()
    freed = weakref.ref(payload)
    tries: list[Payload] = []

    def statement(given: Payload) -> str:
        tries.append(given)
        if len(tries) < 3:
            raise _busy_error()  # (not a local of this frame: the error's traceback holds the frame)
        return "done"

    gc.disable()
    try:
        assert _sqlitewal.retry_busy(1.0, statement, payload) == "done"
        tries.clear()
        del payload
        assert freed() is None
    finally:
        gc.enable()


def test_a_commit_blocked_past_busy_timeout_says_which_store(tmp_path: Any) -> None:
    """Waiting in short steps keeps the bound: past busy_timeout the append raises LockedError naming the
    store and the operation, nothing appended."""
    path = str(tmp_path / "w.db")
    store = SQLiteStore(path, busy_timeout=0.3)
    blocker = _held(path)
    began = time.monotonic()
    try:
        with pytest.raises(memimg.LockedError, match="stayed locked by another writer") as info:
            store.append([row(1), row(2)], 0)  # BEGIN IMMEDIATE waits the same way
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    took = time.monotonic() - began
    assert 0.3 <= took < 3, took
    assert info.value.store == path and path in str(info.value)
    assert info.value.operation == "appending events 1..2"
    assert store.head() == 0
    store.close()


def test_a_writer_behind_the_head_finds_out_without_the_write_lock(tmp_path: Any) -> None:
    """A writer behind the head that finds the write lock held reads whether others committed before it waits:
    it gets SeqTaken at once, with the events it missed, while a third connection holds the write lock
    (rather than queueing for the lock to find out); a writer that lost the race is handed the events alike."""
    path = str(tmp_path / "w.db")
    a, b = SQLiteStore(path), SQLiteStore(path, busy_timeout=0.5)
    a.append([row(1)], 0)
    with pytest.raises(SeqTaken) as lost:
        b.append([row(1)], 0)  # lost the race: handed the event it missed
    assert lost.value.missed == list(a.read())
    a.append([row(2)], 1)
    blocker = _held(path)
    try:
        began = time.monotonic()
        with pytest.raises(SeqTaken) as info:
            b.append([row(2)], 1)
        assert time.monotonic() - began < 0.4
        assert info.value.missed == list(a.read(after=1)) and not info.value.more  # handed over, read once
        assert info.value.__suppress_context__  # refused: not shown as "database is locked" in a traceback
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    b.append([row(3)], 2)  # caught up: appends as usual
    assert a.head() == 3
    a.append([row(4)], 3)
    blocker = _held(path)
    try:
        with pytest.raises(SeqTaken) as info:
            b.append([row(4), row(5)], 3)  # several rows (their transaction's begin finds the lock held): alike
        assert [r[0] for r in info.value.missed or []] == [4]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    a.close()
    b.close()


def test_an_append_with_the_write_lock_free_reads_nothing_first(tmp_path: Any) -> None:
    """With the write lock free, an append is its one INSERT -- even right after losing a race: no read of the
    events past the head first (each would be a read transaction more on every commit of busy writers)."""
    path = str(tmp_path / "w.db")
    a, b = SQLiteStore(path), SQLiteStore(path)
    a.append([row(1)], 0)
    with pytest.raises(SeqTaken):
        b.append([row(1)], 0)
    statements: list[str] = []
    b._conn.set_trace_callback(statements.append)
    b.append([row(2)], 1)
    b._conn.set_trace_callback(None)
    assert [s.split()[0] for s in statements] == ["INSERT"], statements
    assert a.head() == 2
    a.close()
    b.close()


def _checkpointed_pages(path: str) -> int:
    """Pages in the database file itself (what checkpoints copied there from the WAL)."""
    return os.path.getsize(path) // 4096


def test_checkpoints_run_in_a_thread_of_their_own(tmp_path: Any, monkeypatch: Any) -> None:
    """The WAL is copied into the database file by the store's checkpoint thread once the commits wrote
    about 1,000 pages; the committing connection never checkpoints (SQLite's automatic checkpoint off). The
    thread syncs the database file beside the writers (a DatabaseSync of that file)."""
    syncs: list[Any] = []
    real_checkpoint = _sqlitecheckpoints.checkpoint

    def checkpoint(conn: sqlite3.Connection, own: Any = None, database: Any = None) -> Any:
        syncs.append(database)
        return real_checkpoint(conn, own, database)

    monkeypatch.setattr(_sqlitecheckpoints, "checkpoint", checkpoint)
    path = str(tmp_path / "c.db")
    with memimg.open(path, root=dict, snapshot_every=None) as img:
        store = img.store
        assert isinstance(store, SQLiteStore)
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        checkpointer = store._checkpointer
        assert checkpointer is not None
        before = _checkpointed_pages(path)
        for i in range(_sqlitecheckpoints.CHECKPOINT_PAGES - 50):
            img.root["n"] = i
        time.sleep(0.05)
        assert checkpointer.runs == 0 and _checkpointed_pages(path) == before
        for i in range(100):
            img.root["n"] = i
        poll(lambda: checkpointer.runs != 0, 10, 0.01)
        assert checkpointer.runs == 1
        assert _checkpointed_pages(path) > before
        assert [type(d) for d in syncs] == [_sqlitecheckpoints.DatabaseSync]
        assert syncs[0]._db_id == _sqlitewal.identity(path)


_FRAME = 4096 + 24  # a WAL frame: a page and its header


def test_a_writer_that_never_pauses_keeps_its_wal_bounded(tmp_path: Any) -> None:
    """Under commits without a pause, each checkpoint leaves the WAL to start over from its beginning (it
    copies the frames appended while it ran, holding the write lock only for those): the WAL file stays
    within a few checkpoints' worth of pages instead of growing by a page per commit."""
    path = str(tmp_path / "c.db")
    rounds = 10
    with memimg.open(path, root=dict, snapshot_every=None) as img:
        store = img.store
        assert isinstance(store, SQLiteStore) and store._checkpointer is not None
        for i in range(rounds * _sqlitecheckpoints.CHECKPOINT_PAGES):
            img.root["n"] = i
        frames = os.path.getsize(path + "-wal") // _FRAME  # the most the WAL ever held: it is not truncated
        assert store._checkpointer.restarted >= 1
    assert frames < rounds * _sqlitecheckpoints.CHECKPOINT_PAGES / 2, frames


def test_a_writer_alone_never_waits_for_its_own_checkpoints(tmp_path: Any) -> None:
    """A process writing alone with ``busy_timeout=0`` commits without fail while its checkpoint thread takes
    the write lock to start the WAL over: its commits wait for that on the store's own lock, never on SQLite's."""
    path = str(tmp_path / "c.db")
    with memimg.open(path, root=dict, snapshot_every=None, busy_timeout=0) as img:
        for i in range(10 * _sqlitecheckpoints.CHECKPOINT_PAGES):
            img.root["n"] = i
        assert img.store._checkpointer.restarted >= 1
    with memimg.open(path, root=dict) as reopened:
        assert reopened.root == {"n": 10 * _sqlitecheckpoints.CHECKPOINT_PAGES - 1}


def test_a_checkpoint_leaves_a_reader_in_the_wal_alone(tmp_path: Any) -> None:
    """A checkpoint that cannot start the WAL over because another connection is reading in it gives up
    after a short wait (the next one tries again); the reader and the writer go on meanwhile."""
    path = str(tmp_path / "c.db")
    store = SQLiteStore(path)
    for seq in range(1, 51):
        store.append([row(seq)], seq - 1)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM memimg_events").fetchone() == (50,)
    store.append([row(51)], 50)  # past the reader's snapshot
    checkpointing = sqlite3.connect(path, isolation_level=None, timeout=0)
    started = time.monotonic()
    assert _sqlitecheckpoints.checkpoint(checkpointing) is False
    assert time.monotonic() - started < 1
    store.append([row(52)], 51)
    assert reader.execute("SELECT count(*) FROM memimg_events").fetchone() == (50,)
    reader.execute("COMMIT")
    assert _sqlitecheckpoints.checkpoint(checkpointing) is True
    store.append([row(53)], 52)
    log_frames = checkpointing.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    assert log_frames <= 2  # the commit after it wrote the WAL from its beginning
    checkpointing.close()
    reader.close()
    store.close()


def test_close_stops_the_checkpoint_thread_and_empties_the_wal(tmp_path: Any) -> None:
    """close() ends the checkpoint thread and closes its connection before the store's own, so the store's
    connection is the last one and SQLite checkpoints the WAL into the database and removes it."""
    path = str(tmp_path / "c.db")
    img = memimg.open(path, root=dict, snapshot_every=None)
    for i in range(_sqlitecheckpoints.CHECKPOINT_PAGES + 10):
        img.root["n"] = i
    checkpointer = img.store._checkpointer
    thread = checkpointer._thread
    assert thread is not None and thread.is_alive()
    img.root["last"] = "x"
    img.close()
    assert not thread.is_alive()
    assert not os.path.exists(path + "-wal")
    with sqlite3.connect(path) as conn:  # everything is in the database file
        assert conn.execute("SELECT count(*) FROM memimg_events").fetchone()[0] > _sqlitecheckpoints.CHECKPOINT_PAGES
    with memimg.open(path, root=dict) as reopened:
        assert reopened.root == {"n": _sqlitecheckpoints.CHECKPOINT_PAGES + 9, "last": "x"}


def test_a_store_dropped_unclosed_ends_its_checkpoint_thread(tmp_path: Any) -> None:
    """A store that is garbage-collected without close() does not leave its checkpoint thread (and that
    thread's connection) behind."""
    store = SQLiteStore(str(tmp_path / "c.db"))
    for seq in range(1, _sqlitecheckpoints.CHECKPOINT_PAGES + 1):
        store.append([row(seq)], seq - 1)
    assert store._checkpointer is not None
    thread = store._checkpointer._thread
    assert thread is not None and thread.is_alive()
    del store
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("replaced", [False, True])
def test_the_checkpoint_thread_never_opens_another_file(tmp_path: Any, replaced: bool) -> None:
    """A checkpoint thread started after the database file was moved away from the path creates no file
    there, and after it was replaced by another database checkpoints nothing: it checks that the path
    still names the store's database."""
    path = str(tmp_path / "c.db")
    store = SQLiteStore(path)
    store.append([row(1)], 0)
    os.rename(path, path + ".moved")
    if replaced:
        with sqlite3.connect(path) as other:
            other.execute("PRAGMA journal_mode=WAL")
            other.execute("CREATE TABLE t (x)")
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.kick()
    assert checkpointer._thread is not None
    checkpointer._thread.join(10)
    assert checkpointer.runs == 0 and os.path.exists(path) == replaced
    store.close()


def _statements(conn: sqlite3.Connection) -> list[str]:
    """The statements *conn* runs from now on, in order."""
    ran: list[str] = []
    conn.set_trace_callback(ran.append)
    return ran


def _filled(path: str, rows: int = 50) -> SQLiteStore:
    store = SQLiteStore(path)
    for seq in range(1, rows + 1):
        store.append([row(seq)], seq - 1)
    return store


def test_every_checkpoint_starts_right_after_a_commit_of_its_own(tmp_path: Any, monkeypatch: Any) -> None:
    """Each checkpoint (the PASSIVE one and every RESTART try) runs right after its connection committed a change
    of its own, so it never starts on a WAL whose every frame is already copied (SQLite's WAL-reset bug); the
    change is one row of memimg_meta, and the events are untouched."""
    monkeypatch.setattr(_sqlitecheckpoints, "FEW_FRAMES", 10**9)  # one PASSIVE
    path = str(tmp_path / "c.db")
    store = _filled(path)
    checkpointing = sqlite3.connect(path, isolation_level=None, timeout=0)
    ran = _statements(checkpointing)
    assert _sqlitecheckpoints.checkpoint(checkpointing) is True
    pragmas = [i for i, sql in enumerate(ran) if sql.startswith("PRAGMA wal_checkpoint")]
    assert [ran[i] for i in pragmas] == ["PRAGMA wal_checkpoint(PASSIVE)", "PRAGMA wal_checkpoint(RESTART)"]
    assert all(ran[i - 1] == _sqlitecheckpoints.MARK for i in pragmas)
    marks = checkpointing.execute("SELECT value FROM memimg_meta WHERE key = 'checkpoint.mark'").fetchone()
    assert marks == ("2",)
    assert store.head() == 50 and [r[0] for r in store.read(after=0)] == list(range(1, 51))
    checkpointing.close()
    store.close()


def _pinned(path: str, store: SQLiteStore) -> sqlite3.Connection:
    """A reader holding a snapshot from before the store's next 20 appends (made here): a PASSIVE checkpoint then
    cannot copy every frame."""
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM memimg_events").fetchone()
    head = store.head()
    for seq in range(head + 1, head + 21):
        store.append([row(seq)], seq - 1)
    return reader


def _checkpoints(ran: list[str]) -> list[str]:
    return [sql for sql in ran if sql.startswith("PRAGMA wal_checkpoint") or sql == "fdatasync"]


_NO_PROC = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc/self/fd")


def test_a_long_passive_checkpoint_runs_again_while_writers_append(tmp_path: Any, monkeypatch: Any) -> None:
    """A PASSIVE checkpoint runs again (each after a commit of its own), up to PASSIVE_ROUNDS in all, while the
    WAL grew by more than FEW_FRAMES since the one before, so that the RESTART one, which holds the write lock, is
    left only what was appended during the last; one that finds it grown by fewer is the last."""
    monkeypatch.setattr(_sqlitecheckpoints, "FEW_FRAMES", -1)  # every PASSIVE counts as run beside many appends
    path = str(tmp_path / "c.db")
    store = _filled(path)
    checkpointing = sqlite3.connect(path, isolation_level=None, timeout=0)
    ran = _statements(checkpointing)
    reader = _pinned(path, store)
    assert _sqlitecheckpoints.checkpoint(checkpointing) is False  # (the reader keeps the WAL from starting over)
    pragmas = [i for i, sql in enumerate(ran) if sql.startswith("PRAGMA wal_checkpoint")]
    passive = ["PRAGMA wal_checkpoint(PASSIVE)"] * _sqlitecheckpoints.PASSIVE_ROUNDS
    assert [ran[i] for i in pragmas[: len(passive) + 1]] == [*passive, "PRAGMA wal_checkpoint(RESTART)"]
    assert set(ran[i] for i in pragmas[len(passive) :]) == {"PRAGMA wal_checkpoint(RESTART)"}
    assert all(ran[i - 1] == _sqlitecheckpoints.MARK for i in pragmas)
    reader.close()
    reader = _pinned(path, store)  # (the WAL cannot start over: its frame count only grows)
    monkeypatch.setattr(_sqlitecheckpoints, "FEW_FRAMES", 5)
    ran.clear()
    # the first finds over 20 frames; the second only its own mark's more: no third
    assert _sqlitecheckpoints.checkpoint(checkpointing) is False
    pragmas = [sql for sql in ran if sql.startswith("PRAGMA wal_checkpoint")]
    assert pragmas[:3] == ["PRAGMA wal_checkpoint(PASSIVE)"] * 2 + ["PRAGMA wal_checkpoint(RESTART)"]
    assert set(pragmas[3:]) <= {"PRAGMA wal_checkpoint(RESTART)"}
    reader.execute("ROLLBACK")
    assert store.head() == 90 and [r[0] for r in store.read(after=0)] == list(range(1, 91))
    reader.close()
    checkpointing.close()
    store.close()


def test_a_passive_checkpoints_mark_that_cannot_be_made_leaves_the_rest_to_the_restart(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """When the commit before another PASSIVE round cannot be made, there is no such round: the RESTART tries
    follow, each right after a commit of its own as ever."""
    monkeypatch.setattr(_sqlitecheckpoints, "FEW_FRAMES", -1)
    path = str(tmp_path / "c.db")
    store = _filled(path)
    checkpointing = sqlite3.connect(path, isolation_level=None, timeout=0)
    ran = _statements(checkpointing)
    real_mark, marks = _sqlitecheckpoints._mark, []

    def mark(conn: sqlite3.Connection, own: Any) -> bool:
        marks.append(conn)
        return len(marks) == 1 and real_mark(conn, own)  # the first one only

    monkeypatch.setattr(_sqlitecheckpoints, "_mark", mark)
    reader = _pinned(path, store)
    _sqlitecheckpoints.checkpoint(checkpointing)
    pragmas = [i for i, sql in enumerate(ran) if sql.startswith("PRAGMA wal_checkpoint")]
    assert [ran[i] for i in pragmas[:2]] == ["PRAGMA wal_checkpoint(PASSIVE)", "PRAGMA wal_checkpoint(RESTART)"]
    assert len(marks) == 2 and all(ran[i - 1] == _sqlitecheckpoints.MARK for i in pragmas)
    reader.close()
    checkpointing.close()
    store.close()


@_NO_PROC
def test_a_checkpoint_syncs_the_database_file_beside_the_writers_before_the_restart(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """After a PASSIVE checkpoint (whose copies SQLite leaves unsynced when writers appended meanwhile) the
    database file is synced beside the writers, so the RESTART one, under the write lock, syncs only what it
    copies itself."""
    monkeypatch.setattr(_sqlitecheckpoints, "FEW_FRAMES", 10**9)  # one PASSIVE
    path = str(tmp_path / "c.db")
    store = _filled(path)
    checkpointing = sqlite3.connect(path, isolation_level=None, timeout=0)
    ran = _statements(checkpointing)
    database_id = _sqlitewal.identity(path)
    real_sync = _sqlitecheckpoints._fdatasync

    def fdatasync(fd: int) -> None:
        if _sqlitewal.identity(fd) == database_id:  # (another test's thread may sync another file)
            ran.append("fdatasync")
        real_sync(fd)

    monkeypatch.setattr(_sqlitecheckpoints, "_fdatasync", fdatasync)
    database = _sqlitecheckpoints.DatabaseSync(database_id)
    reader = _pinned(path, store)
    assert _sqlitecheckpoints.checkpoint(checkpointing, None, database) is False
    steps = _checkpoints(ran)
    assert steps[:3] == ["PRAGMA wal_checkpoint(PASSIVE)", "fdatasync", "PRAGMA wal_checkpoint(RESTART)"]
    assert "fdatasync" not in steps[3:]
    reader.execute("ROLLBACK")
    ran.clear()
    assert _sqlitecheckpoints.checkpoint(checkpointing, None, database) is True
    assert _checkpoints(ran) == ["PRAGMA wal_checkpoint(PASSIVE)", "fdatasync", "PRAGMA wal_checkpoint(RESTART)"]
    reader.close()
    checkpointing.close()
    store.close()


@_NO_PROC
def test_a_database_sync_leaves_sqlites_hold_on_the_file(tmp_path: Any) -> None:
    """Syncing the database file goes through a descriptor this process has open already, never one of its own:
    closing one would end SQLite's locks on the file, and another process closing the database would then take
    it for its own and delete the WAL under this process's connections."""
    path = str(tmp_path / "held.db")
    store = _filled(path, rows=3)
    database = _sqlitecheckpoints.DatabaseSync(_sqlitewal.identity(path))
    assert database.sync() is True and database.sync() is True
    elsewhere = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM sqlite_master'); c.close()"
    )
    subprocess.run([sys.executable, "-c", elsewhere, path], check=True)
    assert os.path.exists(path + "-wal")
    store.append([row(4)], 3)  # durable: the WAL is still the store's
    assert store.head() == 4
    store.close()


def test_a_database_sync_without_a_descriptor_to_sync_through_does_nothing(tmp_path: Any, monkeypatch: Any) -> None:
    """No descriptor of the file open in this process, no file, or no /proc: nothing is synced (the RESTART
    checkpoint syncs the file as it always did), and nothing fails."""
    path = tmp_path / "closed.db"
    path.write_bytes(b"")
    assert _sqlitecheckpoints.DatabaseSync(_sqlitewal.identity(str(path))).sync() is False
    assert _sqlitecheckpoints.DatabaseSync(None).sync() is False
    store = _filled(str(tmp_path / "open.db"), rows=1)
    monkeypatch.setattr(_sqlitecheckpoints, "_FDS", str(tmp_path / "no-proc"))
    assert _sqlitecheckpoints.DatabaseSync(_sqlitewal.identity(str(tmp_path / "open.db"))).sync() is False
    store.close()


@_NO_PROC
def test_a_database_sync_that_the_disk_fails_raises_and_no_restart_follows(tmp_path: Any, monkeypatch: Any) -> None:
    """A sync the disk fails (EIO) may have been the one to hear of it: the checkpoint raises before its RESTART,
    which would start the WAL over on pages not on the disk; a descriptor closed meanwhile (EBADF) is no failure,
    and the connection checkpoints again once syncs succeed."""
    path = str(tmp_path / "c.db")
    store = _filled(path)
    checkpointing = sqlite3.connect(path, isolation_level=None, timeout=0)
    ran = _statements(checkpointing)
    database = _sqlitecheckpoints.DatabaseSync(_sqlitewal.identity(path))
    failure = [errno.EIO]

    def fdatasync(fd: int) -> None:
        raise OSError(failure[0], os.strerror(failure[0]))

    real_sync = _sqlitecheckpoints._fdatasync
    monkeypatch.setattr(_sqlitecheckpoints, "_fdatasync", fdatasync)
    with pytest.raises(OSError):
        _sqlitecheckpoints.checkpoint(checkpointing, None, database)
    assert "PRAGMA wal_checkpoint(RESTART)" not in ran
    failure[0] = errno.EBADF
    assert database.sync() is False
    monkeypatch.setattr(_sqlitecheckpoints, "_fdatasync", real_sync)
    assert _sqlitecheckpoints.checkpoint(checkpointing, None, database) is True
    assert store.head() == 50 and [r[0] for r in store.read(after=0)] == list(range(1, 51))
    checkpointing.close()
    store.close()


def test_a_checkpoint_whose_commit_finds_the_write_lock_held_is_not_run(tmp_path: Any) -> None:
    """While another connection holds the write lock, a checkpoint cannot commit its change first: it runs no
    checkpoint at all (not one beside that writer) and gives up within a short wait; the next one runs."""
    path = str(tmp_path / "c.db")
    store = _filled(path)
    checkpointing = sqlite3.connect(path, isolation_level=None, timeout=0)
    ran = _statements(checkpointing)
    blocker = _held(path)
    started = time.monotonic()
    assert _sqlitecheckpoints.checkpoint(checkpointing) is None  # (none ran)
    assert time.monotonic() - started < 1
    assert not [sql for sql in ran if sql.startswith("PRAGMA wal_checkpoint")]
    blocker.execute("ROLLBACK")
    assert _sqlitecheckpoints.checkpoint(checkpointing) is True
    blocker.close()
    checkpointing.close()
    store.close()


@contextlib.contextmanager
def _checkpoint_lock_held(path: str, where: str) -> Iterator[None]:
    """The database's checkpoint lock held by another connection, in this process or another one."""
    if where == "here":
        with _sqlitecheckpoints.checkpoints_alone(path, 0) as alone:
            assert alone
            yield
        return
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("")


_HOLD = """
import sys
from memimg.stores._sqlitecheckpoints import checkpoints_alone
with checkpoints_alone(sys.argv[1], 5) as alone:
    print("held" if alone else "not held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("where", ["here", "elsewhere"])
def test_only_one_connection_checkpoints_a_database_at_a_time(tmp_path: Any, where: str) -> None:
    """While another connection (in this process or another one) holds the database's checkpoint lock, the
    store's checkpoint thread runs none (it is not needed: that one copies the WAL); once the lock is free it
    does. reclaim() waits for the lock up to busy_timeout, then raises LockedError, changing nothing."""
    path = str(tmp_path / "c.db")
    store = _filled(path)
    store._busy_timeout = 0.2
    checkpointer = store._checkpointer
    assert checkpointer is not None
    with _checkpoint_lock_held(path, where):
        with _sqlitecheckpoints.checkpoints_alone(path, 0.05) as again:
            assert not again
        checkpointer.kick()
        poll(lambda: checkpointer.skipped != 0, 10, 0.01)
        assert checkpointer.skipped == 1 and checkpointer.runs == 0
        size, meta = os.path.getsize(path), store.meta()
        with pytest.raises(memimg.LockedError, match="another connection kept checkpointing"):
            store.reclaim()
        assert (os.path.getsize(path), store.meta(), store.head()) == (size, meta, 50)
    checkpointer.kick()
    poll(lambda: checkpointer.runs != 0, 10, 0.01)
    assert checkpointer.runs == 1 and checkpointer.skipped == 1
    assert store.reclaim() is True
    assert store.head() == 50
    store.close()


def test_reclaim_checkpoints_right_after_commits_of_its_own(tmp_path: Any) -> None:
    """reclaim()'s checkpoints (before and after its VACUUM) each start right after the store's connection
    committed its mark, as the checkpoint thread's do."""
    path = str(tmp_path / "c.db")
    store = _filled(path)
    ran = _statements(store._conn)
    assert store.reclaim() is True
    pragmas = [i for i, sql in enumerate(ran) if sql.startswith("PRAGMA wal_checkpoint")]
    assert len(pragmas) == 2 and all(ran[i - 1] == _sqlitecheckpoints.MARK for i in pragmas)
    assert "VACUUM" in ran[pragmas[0] : pragmas[1]]
    store.close()


def test_a_child_forked_while_the_checkpoint_lock_is_held_does_not_keep_it(tmp_path: Any) -> None:
    """A process forked while this one holds the checkpoint lock (gunicorn, multiprocessing) does not go on
    holding it: once this process lets go, the next checkpoint takes it while the child still runs."""
    path = str(tmp_path / "c.db")
    store = _filled(path)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    with _sqlitecheckpoints.checkpoints_alone(path, 0) as alone:
        assert alone
        child = os.fork()
        if child == 0:  # the child: still alive until the parent has tried
            os.write(ready_w, b"x")
            os.read(done_r, 1)
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        with _sqlitecheckpoints.checkpoints_alone(path, 0.5) as again:
            assert again
    finally:
        os.write(done_w, b"x")
        os.waitpid(child, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
    store.close()


def test_an_adopted_connection_leaves_its_checkpoints_to_the_store(tmp_path: Any) -> None:
    """A connection another library opened to the store's file, once adopted, runs with SQLite's automatic
    checkpoints off, and the store's checkpoint thread copies what it commits within a few seconds, with no
    commit of the store's own; a connection to another file, or a read-only store, is not adopted."""
    path = str(tmp_path / "c.db")
    store = _filled(path)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    app = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    elsewhere = sqlite3.connect(str(tmp_path / "other.db"), isolation_level=None)
    readonly = SQLiteStore(path, readonly=True)
    assert not store.adopt(elsewhere, str(tmp_path / "other.db"))
    assert not readonly.adopt(app, path)
    assert elsewhere.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
    assert app.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
    assert store.adopt(app, os.path.relpath(path))
    assert app.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    poll(lambda: checkpointer.runs != 0, 10, 0.01)
    runs, pages = checkpointer.runs, _checkpointed_pages(path)
    another = sqlite3.connect(path)
    assert store.adopt(another, path)  # adopting one more (a connection per request) forces no checkpoint
    time.sleep(0.3)
    assert checkpointer.runs == runs
    another.close()
    app.execute("CREATE TABLE app_blobs (b BLOB)")
    for _ in range(200):
        app.execute("INSERT INTO app_blobs VALUES (zeroblob(16000))")  # 800 pages of the app's own
    poll(lambda: _checkpointed_pages(path) >= pages + 700 and checkpointer.runs > runs, 10, 0.05)
    assert _checkpointed_pages(path) >= pages + 700 and checkpointer.runs > runs
    assert store.head() == 50
    for conn in (app, elsewhere):
        conn.close()
    readonly.close()
    store.close()
    late = sqlite3.connect(path)
    assert not store.adopt(late, path)  # closed: nobody would checkpoint for it
    late.close()


def test_images_that_copy_other_connections_commits_do_not_set_each_other_off(tmp_path: Any) -> None:
    """Several stores (processes) that each copy other connections' commits do not keep checkpointing an idle
    database in turn: a checkpoint's own commit moves the others' data_version, but also the mark, and the
    others take that as a checkpoint already done. A commit of another connection is still copied."""
    path = str(tmp_path / "c.db")
    stores = [_filled(path)] + [SQLiteStore(path) for _ in range(2)]
    app = sqlite3.connect(path, isolation_level=None)
    for store in stores:
        assert store.adopt(app, path)
    checkpointers = [store._checkpointer for store in stores]
    time.sleep(3 * _sqlitecheckpoints.OTHERS_EVERY)  # the first looks, and their marks
    settled = [c.runs for c in checkpointers if c is not None]
    time.sleep(4 * _sqlitecheckpoints.OTHERS_EVERY)
    assert [c.runs for c in checkpointers if c is not None] == settled
    app.execute("CREATE TABLE app_rows (x)")
    poll(lambda: sum(c.runs for c in checkpointers if c is not None) != sum(settled), 10, 0.05)
    assert sum(c.runs for c in checkpointers if c is not None) > sum(settled)
    app.close()
    for store in stores:
        store.close()
