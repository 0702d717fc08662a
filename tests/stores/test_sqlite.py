"""The SQLite store: the contract, and what only an SQLite file has (WAL, locks, files deleted or
replaced, other applications' tables)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import memimg
from memimg.core import _compiled
from memimg.model._accel import speedups
from memimg.stores import SQLiteStore, Store, _sqlite, _sqlitefiles
from tests.accel import NOT_BUILT
from tests.stores.contract import StoreContract, row


class TestSQLiteStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.path = str(tmp_path / "log.db")

    def make_store(self) -> Store:
        return SQLiteStore(self.path)

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        return SQLiteStore(self.path, readonly=readonly)

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        # sqlite3 raises its own errors (ProgrammingError) on a closed connection
        assert isinstance(store, SQLiteStore)
        conn = store._conn
        dead = sqlite3.connect(":memory:")
        dead.close()
        store._conn = dead
        try:
            yield True
        finally:
            store._conn = conn


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


def test_events_table_without_not_null_tx_is_refused(tmp_path: Any) -> None:
    """A memimg_events table with memimg's columns but a nullable tx (which a stale append's refusal relies
    on) is refused, naming the table, and left as it was."""
    path = str(tmp_path / "x.db")
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE memimg_events (seq INTEGER PRIMARY KEY, tx INTEGER, ts INTEGER NOT NULL, kind TEXT NOT NULL,"
        " target INTEGER NOT NULL, payload BLOB NOT NULL, checksum INTEGER NOT NULL)"
    )
    conn.commit()
    conn.close()
    with pytest.raises(memimg.MemimgError, match="memimg_events whose column tx is not NOT NULL"):
        SQLiteStore(path)
    conn = sqlite3.connect(path)
    assert not conn.execute("PRAGMA table_info(memimg_events)").fetchall()[1][3]
    conn.close()


@pytest.mark.parametrize("n", [1, 3])
def test_a_row_with_a_null_column_at_the_head_is_a_store_error(tmp_path: Any, n: int) -> None:
    """An append at the expected head whose row has a NULL column (a NOT NULL constraint, as a stale append
    breaks) raises StoreError naming the constraint, not SeqTaken (a commit would retry it forever), and
    writes nothing."""
    store = SQLiteStore(str(tmp_path / "n.db"))
    store.append([row(1)], 0)
    rows = [row(2 + i) for i in range(n)]
    rows[-1] = memimg.stores.EventRow(1 + n, 1, 5, "gc", 0, None, 0)  # type: ignore[arg-type]
    with pytest.raises(memimg.StoreError, match="NOTNULL") as info:
        store.append(rows, 1)
    assert not isinstance(info.value, memimg.stores.SeqTaken)
    assert [r[0] for r in store.read()] == [1]
    store.append([row(2)], 1)
    assert store.head() == 2
    store.close()


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


def _remove(path: str, *suffixes: str) -> None:
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


@pytest.mark.parametrize("suffixes", [("", "-wal", "-shm"), ("",), ("-wal",)], ids=["all", "db", "wal"])
def test_commit_into_a_deleted_file_is_refused_as_not_durable(tmp_path: Any, suffixes: tuple[str, ...]) -> None:
    """A commit made after the database file (or its -wal) was deleted under the image raises
    FileGoneError saying it is not durable; it is not applied, and every later write is refused.
    The image's WAL is not left at the path to be replayed into whatever file is created there."""
    path = str(tmp_path / "x.db")
    img = memimg.open(path, root=dict)
    img.root["a"] = 1
    seq = img.seq
    _remove(path, *suffixes)
    with pytest.raises(memimg.FileGoneError) as info:
        img.root["b"] = 2
    err = info.value
    assert err.path == path and err.seq == seq + 1 and err.store == path
    assert "NOT durable" in str(err) and "open the image again" in str(err)
    assert isinstance(err, memimg.StoreError)
    assert img.root == {"a": 1} and img.seq == seq
    with pytest.raises(memimg.FileGoneError) as again:
        img.root["c"] = 3
    assert again.value.seq is None and "nothing was written" in str(again.value)
    with pytest.raises(memimg.FileGoneError):
        img.snapshot()
    assert img.root == {"a": 1}
    img.close()
    with memimg.open(path, root=dict) as reopened:
        if suffixes == ("-wal",):  # the database file stayed: closing copied the stray WAL into it
            assert reopened.root == {"a": 1, "b": 2}
        else:  # a new image: nothing of the old one's WAL is replayed into the new file
            assert reopened.root == {}


def test_commit_into_a_replaced_file_is_refused(tmp_path: Any) -> None:
    """A database file replaced under the image (another file renamed over its path) is found at
    the next commit: FileGoneError, and nothing of the image (its WAL) gets into the other file."""
    path = str(tmp_path / "x.db")
    img = memimg.open(path, root=dict)
    img.root["a"] = 1
    other = str(tmp_path / "other.db")
    with memimg.open(other, root=dict) as o:
        o.root["other"] = True
    os.replace(other, path)
    with pytest.raises(memimg.FileGoneError):
        img.root["b"] = 2
    img.close()
    with memimg.open(path, root=dict) as reopened:
        assert reopened.root == {"other": True}


def test_reclaim_shrinks_the_file_in_place(tmp_path: Any) -> None:
    """reclaim gives the space of compacted rows back to the disk: the file shrinks to about what is
    kept, in place (same inode, the WAL emptied), so an image that has the file open goes on committing;
    a reader in the middle of a read is not blocked, and the WAL is emptied once it is done."""
    path = str(tmp_path / "x.db")
    img = memimg.open(path, root=dict, snapshot_every=None)
    for i in range(200):
        img.root["blob"] = f"{i:05}" + "x" * 20_000
    seq = img.snapshot()
    # the image's checkpoint thread (the commits above wrote 1,000 pages) may be copying the WAL right now:
    # a TRUNCATE checkpoint would wait for it only up to the 0.2 s below, which a loaded machine can exceed
    assert isinstance(img.store, SQLiteStore) and img.store._checkpointer is not None
    img.store._checkpointer.stop()
    store = SQLiteStore(path, busy_timeout=0.2)
    store.delete_events_before(seq)
    store.delete_snapshots_before(seq)
    before, inodes = store.size(), (_sqlite._identity(path), _sqlite._identity(path + "-wal"))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM memimg_events").fetchone() == (1,)
    store.reclaim()  # the reader keeps the WAL
    assert reader.execute("SELECT count(*) FROM memimg_events").fetchone() == (1,)
    reader.execute("COMMIT")
    reader.close()
    store.reclaim()
    after = store.size()
    assert before > 4_000_000 and after < 200_000, (before, after)
    assert os.path.getsize(path + "-wal") == 0
    assert (_sqlite._identity(path), _sqlite._identity(path + "-wal")) == inodes
    img.root["after"] = True  # the open image's file is still the file at the path: no FileGoneError
    img.close()
    store.close()
    with memimg.open(path, root=dict) as reopened:
        assert reopened.root["blob"].startswith("00199") and reopened.root["after"] is True


def test_deleted_wal_is_found_after_the_directory_was_quiet(tmp_path: Any, monkeypatch: Any) -> None:
    """Once the directory has not changed for a while, a commit costs one stat of the directory and
    no look at the files; deleting the -wal then still changes the directory and is found."""
    path = str(tmp_path / "x.db")
    store = SQLiteStore(path)
    store.append([row(1)], 0)
    # the filesystem's clock must move past the directory's last change before it is trusted
    deadline = time.monotonic() + 5
    while time.time_ns() - os.stat(tmp_path).st_ctime_ns < 100_000_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.append([row(2)], 1)  # files checked; the directory is now trusted
    looked: list[str] = []
    real = _sqlite._identity
    monkeypatch.setattr(_sqlite, "_identity", lambda p: looked.append(p) or real(p))
    store.append([row(3)], 2)
    assert looked == []
    (tmp_path / "unrelated.txt").write_text("x")  # another file in the directory: checked, fine
    store.append([row(4)], 3)
    assert looked == [path, path + "-wal"]
    os.remove(path + "-wal")
    with pytest.raises(memimg.FileGoneError):
        store.append([row(5)], 4)
    store.close()


@pytest.mark.parametrize(
    "compiled",
    [
        pytest.param(
            True, id="compiled", marks=[pytest.mark.compiled, pytest.mark.skipif(speedups is None, reason=NOT_BUILT)]
        ),
        pytest.param(False, id="pure"),
    ],
)
def test_a_quiet_directory_is_one_whose_ctime_and_inode_are_as_they_were(
    tmp_path: Any, monkeypatch: Any, compiled: bool
) -> None:
    """The look after each commit -- compiled or not, the same answers: the directory at the path (its file system
    bytes, whatever its name) has the ctime -- not the mtime -- and inode the files last checked out with; not when
    either moved, the path is gone or names a file, or a number cannot be stat's (-1: nothing trusted yet; past
    64 bits). It never raises."""
    if compiled:
        assert _compiled.same_dir is speedups.same_dir  # type: ignore[union-attr]
    else:
        monkeypatch.setattr(_compiled, "same_dir", None)
    quiet = _sqlitefiles.dir_quiet
    for name in (b"d", b"caf\xe9", "caf\u00e9-\u6f22".encode()):  # Latin-1 bytes: no UTF-8 name
        where = os.fsencode(tmp_path) + b"/" + name
        os.mkdir(where)
        os.utime(where, ns=(1_000_000_007, 2_000_000_011))  # an mtime unlike its ctime
        st = os.stat(where)
        assert st.st_mtime_ns != st.st_ctime_ns
        assert quiet(where, st.st_ctime_ns, st.st_ino)
        assert not quiet(where, st.st_mtime_ns, st.st_ino)
        assert not quiet(where, st.st_ctime_ns + 1, st.st_ino)
        assert not quiet(where, st.st_ctime_ns - 1_000_000_000, st.st_ino)
        assert not quiet(where, st.st_ctime_ns, st.st_ino + 1)
        assert not quiet(where, -1, -1)
        assert not quiet(where, 1 << 63, st.st_ino) and not quiet(where, st.st_ctime_ns, 1 << 64)
        assert not quiet(where + b"\0", st.st_ctime_ns, st.st_ino)
        os.rename(where, where + b"-moved")
        assert not quiet(where, st.st_ctime_ns, st.st_ino)
        with open(where, "w") as f:
            f.write("a file at the path now")
        fst = os.stat(where)
        assert quiet(where, fst.st_ctime_ns, fst.st_ino)  # (what stat says of whatever is there)
        assert not quiet(where, st.st_ctime_ns, st.st_ino)


def test_an_image_in_a_directory_whose_name_is_not_utf8_commits(tmp_path: Any) -> None:
    """A directory name of bytes the file system holds but UTF-8 cannot decode (here Latin-1's) is no obstacle:
    commits are made, acknowledged and read back."""
    where = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")
    os.mkdir(where)
    path = os.path.join(where, "x.db")
    with memimg.open(path, root=dict) as img:
        for i in range(3):
            img.root[f"k{i}"] = i
        assert img.root == {"k0": 0, "k1": 1, "k2": 2}
    with memimg.open(path, root=dict) as reopened:
        assert reopened.root == {"k0": 0, "k1": 1, "k2": 2}


def test_directory_is_trusted_only_once_its_timestamp_clock_moved_past_its_ctime() -> None:
    """A directory's ctime is trusted to reveal the next change only once the filesystem's
    timestamp clock has moved past it by the filesystem's granularity: at once for nanosecond
    timestamps a moment old, after two seconds for whole-second (or FAT's even-second) ones."""
    now = time.time_ns()
    assert _sqlite._stamped_after(now - 100_000_007)
    assert not _sqlite._stamped_after(now + 100_000_007)
    second = (now // 1_000_000_000 - 1) * 1_000_000_000  # between one and two seconds ago
    assert not _sqlite._stamped_after(second)
    assert _sqlite._stamped_after(second - 1_000_000_000)


def test_database_locked_at_open_is_a_locked_error(tmp_path: Any) -> None:
    """Opening a file another connection holds an exclusive lock on raises LockedError (a
    StoreError with the sqlite3 error as its cause), not the driver's exception."""
    path = str(tmp_path / "l.db")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("CREATE TABLE t (x)")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(memimg.LockedError) as info:
            SQLiteStore(path, busy_timeout=0.05)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_an_image_opened_by_a_relative_path_commits_after_the_working_directory_changed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path names the file it named at the open: after the process changes its working directory
    (a daemon, ``gunicorn --chdir``) commits go on into that file, acknowledged, and a file of the same name in
    the new directory is neither taken for it nor touched."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    img = memimg.open("c.db", root=dict)
    img.root["before"] = 1
    monkeypatch.chdir(elsewhere)
    img.root["after"] = 2
    img.snapshot()
    img.root["later"] = 3
    assert img.store.size() > 0
    img.close()
    assert (elsewhere / "c.db").read_bytes() == b""
    with memimg.open(str(tmp_path / "c.db"), root=dict) as reopened:
        assert reopened.root == {"before": 1, "after": 2, "later": 3}


def test_an_sqlite_store_at_memory_is_refused_naming_what_to_use() -> None:
    """``SQLiteStore(":memory:")`` would be a file of that name: refused, naming memimg.open(":memory:")."""
    with pytest.raises(ValueError, match=r"memimg\.open\(':memory:'\)"):
        SQLiteStore(":memory:")


@pytest.mark.parametrize("second", ["rw", "ro"])
def test_a_second_image_on_the_file_keeps_the_first_ones_commits_when_another_process_closes(
    tmp_path: Any, second: str
) -> None:
    """Opening a second image on a database this process already has open (read-only or not) leaves the first
    image's hold on the file intact: another process that opens and closes the database takes it for its own
    neither then nor later -- the WAL stays, the first image's next commit lands, and a reopen holds every
    commit."""
    path = str(tmp_path / "shared.db")
    first = memimg.open(path)
    first.root["a"] = 1
    again = memimg.open(path, readonly=second == "ro")
    elsewhere = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1 FROM sqlite_master'); c.close()"
    )
    subprocess.run([sys.executable, "-c", elsewhere, path], check=True)
    assert os.path.exists(path + "-wal")
    first.root["b"] = 2  # refused as not durable (FileGoneError) when the other process deleted the WAL
    again.close()
    first.close()
    with memimg.open(path, readonly=True) as img:
        assert img.root == {"a": 1, "b": 2}
