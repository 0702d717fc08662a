"""SQLite checkpoints off the commit path, and kept clear of SQLite's WAL-reset bug.

**Checkpoints.** SQLite copies the WAL back into the database file
(checkpoints) inside whichever commit takes the WAL past 1,000 pages, adding
milliseconds (the copy and its fsyncs) to that one commit. The store turns
that off on its connection and a :class:`Checkpointer` runs the same
checkpoint from a thread of its own, on a connection of its own, when the
store's commits have written about as much: a ``PASSIVE`` one beside the
writers (and the database file synced, and again while they appended much
meanwhile), then a ``RESTART`` one that holds the write lock while it copies
the frames appended meanwhile and syncs, so that the next commit writes the
WAL from its beginning again (see :func:`checkpoint`; without it the WAL of a busy
writer never starts over and grows without end). A checkpoint only copies
committed pages, so a crash at any point loses nothing (the WAL is replayed
at the next open, as before).

**SQLite's WAL-reset bug** (3.7.0 to 3.51.2; fixed in 3.51.3). A checkpoint
that starts while every frame of the WAL is already copied can, if another
connection's commit starts the WAL over at that moment, record frames as
copied that are not: readers then read those pages from the database file,
and the commits in them are gone from every reader's view. Seen here once:
4 writer processes on one log, 42 acknowledged commits vanished (memimg
refused to go on, naming the seqs). It needs a checkpoint to *start* on a
fully copied WAL, which two rules rule out (:func:`checkpoint`): only one
connection checkpoints a database at a time, across processes
(:func:`checkpoints_alone`, an ``flock`` on the -wal file), and that
connection commits a one-row change of its own (:data:`MARK`) right before
each checkpoint -- a frame not yet copied, which only a checkpoint can copy,
so the WAL is not fully copied when its checkpoint starts, and no commit
can start it over until that checkpoint ends. memimg's own connections run
with SQLite's automatic checkpoints off; another program's connection to
the file should too (or link SQLite >= 3.51.3).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Final

from memimg.stores._sqlitefiles import connect_existing
from memimg.stores._sqlitewal import identity, is_busy, retry_busy
from memimg.stores._waits import lock_waits

__all__ = [
    "CHECKPOINT_PAGES",
    "FEW_FRAMES",
    "MARK",
    "MARK_WAIT",
    "OTHERS_EVERY",
    "PASSIVE_ROUNDS",
    "RESTART_WAIT",
    "Checkpointer",
    "DatabaseSync",
    "checkpoint",
    "checkpoints_alone",
    "marked_checkpoint",
]

log = logging.getLogger("memimg")

#: WAL pages the store's commits write between checkpoints (SQLite's own default threshold).
CHECKPOINT_PAGES: Final = 1000
#: How long a checkpoint tries to take the write lock to copy the last frames, so the WAL starts over (seconds).
RESTART_WAIT: Final = 0.01
#: The commit a checkpointing connection makes right before each checkpoint: one row of memimg_meta changed (a
#: value written as it was is no change to SQLite, and no frame), so the WAL holds a frame not yet copied.
MARK: Final = (
    "INSERT INTO memimg_meta (key, value) VALUES ('checkpoint.mark', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)
#: How long a checkpoint's :data:`MARK` waits for the write lock other processes hold (seconds).
MARK_WAIT: Final = 0.05
#: The most ``PASSIVE`` checkpoints one checkpoint runs (see :func:`checkpoint`).
PASSIVE_ROUNDS: Final = 4
#: A ``PASSIVE`` checkpoint that finds the WAL grown by more frames than this since the one before (the first: a
#: WAL of more) runs again: writers appending that fast appended as many while it copied.
FEW_FRAMES: Final = 64
#: How often a checkpoint thread that copies other connections' pages too looks for their commits (seconds).
OTHERS_EVERY: Final = 1.0
_PAGE: Final = 4096


@contextlib.contextmanager
def checkpoints_alone(path: str, wait: float) -> Iterator[bool]:
    """Hold the checkpoint lock of the database at *path* (absolute): an exclusive ``flock`` on its -wal file,
    tried for up to *wait* seconds; yields whether it is held (also when there is no -wal to lock: then no one
    else holds it either).

    Every checkpoint memimg runs holds it, so across processes only one
    connection checkpoints a database at a time (see the module's note on
    the WAL-reset bug). The -wal, because SQLite takes no POSIX locks on it:
    opening and closing it here ends none of this process's SQLite locks (as
    a descriptor of the database or its -shm closed would), and an
    ``flock`` is not a POSIX lock. A new descriptor each time, and a child
    forked while one is open closes its copy at once (:func:`_forked`): the
    lock belongs to the open file, which the copy shares, so a child that
    kept it would hold the parent's lock for as long as it lives.
    """
    try:
        fd = os.open(path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True
        return
    _LOCK_FDS.add(fd)
    pid = os.getpid()
    try:
        yield _flock(fd) or any(_flock(fd) for _ in lock_waits(wait))
    finally:
        if os.getpid() == pid:  # (in a forked child the copy is closed already, its number maybe reused)
            _LOCK_FDS.discard(fd)
            os.close(fd)  # (the flock ends with it)


def _flock(fd: int) -> bool:
    """Take the exclusive ``flock`` on *fd* if no one holds it; whether it is taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


#: the descriptors :func:`checkpoints_alone` has open (a forked child closes its copies)
_LOCK_FDS: set[int] = set()


def _forked() -> None:
    """In a forked child: close the copies of the parent's checkpoint-lock descriptors, without unlocking them
    (``LOCK_UN`` on a copy would end the parent's lock)."""
    for fd in list(_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_forked)


def checkpoint(
    conn: sqlite3.Connection, own_commits: threading.RLock | None = None, database: DatabaseSync | None = None
) -> bool | None:
    """Copy the WAL into the database on *conn* (whose busy timeout is 0) so that the next commit writes the WAL
    from its beginning again; whether it will (``None``: no checkpoint ran). The caller holds
    :func:`checkpoints_alone`.

    A ``PASSIVE`` checkpoint copies what is committed beside the writers,
    but never the frames they append while it runs: under steady commits it
    never catches up, the next commit never starts the WAL over, and the
    WAL grows by a page or more per commit for as long as they go on
    (hundreds of MB, each new page zeroed by the kernel). Even when it
    copied every frame, a commit that began meanwhile goes on in the WAL.
    So a ``RESTART`` checkpoint follows: it holds the write
    lock while it copies the frames appended meanwhile and syncs the WAL and
    the database file (a median 0.6 ms, up to 4 ms, on the SSD this was
    measured on; longer on a slow disk). *own_commits*, the lock this
    process's commits on the database hold, is held around it, so those
    commits wait for it there and never find SQLite's lock taken by their
    own process (with a short ``busy_timeout`` that would fail them). It is
    tried again in short waits while another process holds the write lock,
    for up to :data:`RESTART_WAIT`; once every frame is copied but a reader
    is still in the WAL, it gives up at once (the next checkpoint tries
    again; nothing waits on it).

    The ``RESTART`` holds the write lock, and this process's commits, so
    it is left as little as can be. A ``PASSIVE`` checkpoint during which
    writers appended frames leaves what it copied to the database file
    unsynced (SQLite syncs the file only when the WAL has no frame past
    the last it copied), and the ``RESTART`` synced it all under the lock:
    so the database file is synced after each ``PASSIVE`` one, beside the
    writers (*database*, :class:`DatabaseSync`). And the ``PASSIVE`` one
    runs again (up to :data:`PASSIVE_ROUNDS` in all) while the WAL it found
    held more than :data:`FEW_FRAMES` frames past those the one before
    found (for the first: more than that many), so that what the writers
    appended while it copied is copied beside them too. (By frames, not
    time: a checkpoint thread's statement waits for the interpreter as long
    as a busy thread holds it, ~5 ms.) (Right after a large attach, with
    a thread committing in a loop: 5,000 frames copied by one ``PASSIVE``,
    2,000 more appended meanwhile, and the ``RESTART`` held the lock
    50-120 ms, mostly syncing the database file; the thread's commit waited
    as long.)

    Each of them starts right after a commit of :data:`MARK` (the module's note: a
    ``RESTART`` that finds the write lock held runs as a ``PASSIVE`` one,
    beside the writers, right after one that may have copied everything).
    A mark that cannot take the write lock (or the store's lock) within
    :data:`MARK_WAIT` skips the checkpoint it was for: the checkpoint lock
    is never held long by a checkpoint that is not running.
    """
    if not _mark(conn, own_commits):
        return None
    before = 0
    for rounds in range(1, PASSIVE_ROUNDS + 1):
        busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy:  # (another connection is checkpointing: SQLite's own, not one of memimg's)
            break
        if database is not None:
            database.sync()
        if (
            rounds == PASSIVE_ROUNDS
            # the WAL grew by so little since the one before (or started over since: fewer than none) that as
            # little can have been appended while this one copied
            or frames - before <= FEW_FRAMES
            or not _mark(conn, own_commits)  # (a mark that cannot be made now: the RESTART tries make their own)
        ):
            break
        before = frames
    deadline = time.monotonic() + RESTART_WAIT
    for _ in itertools.chain((None,), lock_waits(RESTART_WAIT)):  # (the first try, then one after each wait)
        if own_commits is None or own_commits.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            try:
                busy, frames, copied = marked_checkpoint(conn, "RESTART")
            except sqlite3.Error as err:
                if not is_busy(err):
                    raise
                busy, frames, copied = 1, 1, 0  # the mark found the write lock held: as a RESTART would
            finally:
                if own_commits is not None:
                    own_commits.release()
            if not busy:
                return True
            if copied == frames:  # all copied: a reader in the WAL keeps it from starting over, for now
                return False
    return False


def marked_checkpoint(conn: sqlite3.Connection, mode: str) -> tuple[int, int, int]:
    """Commit :data:`MARK` on *conn*, then checkpoint in *mode* (``RESTART``, ``TRUNCATE``) right after it: SQLite's
    ``(busy, frames, copied)``. The rule every checkpoint memimg runs keeps (the module's note); the caller holds
    :func:`checkpoints_alone`, and whatever this process's commits take first."""
    conn.execute(MARK)
    return conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()  # type: ignore[no-any-return]


class DatabaseSync:
    """Syncs a database file (``fdatasync``) through a descriptor this process already has open on it (SQLite's,
    or any other), found in ``/proc/self/fd`` -- never through one of its own: closing a descriptor of the database
    would end every POSIX lock the process holds on it (SQLite's; see :class:`~memimg.stores.SQLiteStore`). Where
    there is no ``/proc`` (or no descriptor of the file is open), it does nothing: the ``RESTART`` checkpoint
    syncs the file as before, under the write lock. A descriptor found is checked (device and inode) before each
    sync, so one closed and reused for another file meanwhile is looked up again (a sync of the wrong file, in the
    moment between the check and the sync, syncs another file of this process's). A sync that fails with the
    disk's error is logged and raises: :func:`checkpoint` then runs no ``RESTART``."""

    __slots__ = ("_db_id", "_fd")

    def __init__(self, db_id: tuple[int, int] | None) -> None:
        self._db_id = db_id
        self._fd: int | None = None

    def sync(self) -> bool:
        """Sync the database file; whether it was (``False``: no descriptor of it, or one closed meanwhile)."""
        if self._db_id is None:
            return False
        fd = self._fd
        if fd is None or not self._is_database(fd):
            fd = self._fd = self._find()
            if fd is None:
                return False
        try:
            _fdatasync(fd)
        except OSError as err:
            self._fd = None
            if err.errno in (errno.EBADF, errno.EINVAL):  # closed meanwhile, or a file that cannot be synced
                return False  # (the RESTART syncs the database, as it always did)
            # the disk failed: SQLite's own sync may not hear of it again, and the RESTART would then start the WAL
            # over on pages not on the disk; so no RESTART now (what a PASSIVE marked copied stays so: a disk
            # failing syncs needs attention, as it does for SQLite alone)
            log.warning("syncing the database file %s failed: %s (no checkpoint now)", self._db_id, err)
            raise
        return True

    def _is_database(self, fd: int) -> bool:
        return identity(fd) == self._db_id

    def _find(self) -> int | None:
        try:
            names = os.listdir(_FDS)
        except OSError:  # no /proc
            return None
        for name in names:
            if name.isdigit() and self._is_database(int(name)):
                return int(name)
        return None


#: where Linux lists the process's open descriptors
_FDS: Final = "/proc/self/fd"
#: (``fsync`` where there is no ``fdatasync``)
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _mark(conn: sqlite3.Connection, own_commits: threading.RLock | None) -> bool:
    """Commit :data:`MARK` on *conn* before a checkpoint, waiting at most :data:`MARK_WAIT` for *own_commits* and
    for the write lock; whether it was committed (if not, the checkpoint must not run now)."""
    if own_commits is not None and not own_commits.acquire(timeout=MARK_WAIT):
        return False  # a commit of this process is waiting for another process's write lock: not now
    try:
        retry_busy(MARK_WAIT, conn.execute, MARK)
    except sqlite3.Error as err:
        if not is_busy(err):
            raise
        return False
    finally:
        if own_commits is not None:
            own_commits.release()
    return True


class Checkpointer:
    """Checkpoints one database's WAL from a daemon thread, on a connection of its own.

    The store calls :meth:`wrote` after each commit; once about
    :data:`CHECKPOINT_PAGES` pages were written, the thread (started then,
    or again in a forked child) runs :func:`checkpoint` holding the
    database's checkpoint lock (:func:`checkpoints_alone`; it skips the
    checkpoint if another connection holds it), and *own_commits* (the
    store's lock) only around its own commits and the ``RESTART`` tries.
    :meth:`stop` ends the thread and closes its connection, so that the
    store's own connection, closed last, checkpoints and removes the WAL as
    SQLite does for the last connection to a database.
    """

    def __init__(self, path: str, db_id: tuple[int, int] | None, own_commits: threading.RLock | None = None) -> None:
        self.path = path  # absolute: the thread may start after the working directory changed
        self._db_id = db_id
        self._own_commits = own_commits
        self._pages = 0
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: checkpoints run, how many of them left the WAL to start over, and how many were not run because another
        #: connection was checkpointing the database (for tests and diagnostics)
        self.runs = 0
        self.restarted = 0
        self.skipped = 0
        self._others = False
        self._starting = threading.Lock()
        self._pid = os.getpid()

    def wrote(self, payload_bytes: int, rows: int) -> None:
        """Count the WAL pages a commit of *rows* rows holding *payload_bytes* bytes wrote (about); wake the
        thread when enough were. Called with the store's lock."""
        self._pages += 1 + (payload_bytes + 32 * rows) // _PAGE
        if self._pages >= CHECKPOINT_PAGES:
            self._pages = 0
            self.kick()

    def copy_others(self) -> None:
        """Also copy what other connections of this process commit to the database without checkpointing it
        themselves (see :meth:`SQLiteStore.adopt`): from now on the thread (started now) also looks every
        :data:`OTHERS_EVERY` seconds, and checkpoints if the database changed since its last checkpoint."""
        thread = self._thread
        if self._others and thread is not None and thread.is_alive():
            return  # (a connection a request opens must not cost a checkpoint each)
        self._others = True
        self.kick()

    def kick(self) -> None:
        """Have a checkpoint run now (the thread started if it is not running)."""
        if self._stopped:
            return
        if self._pid != os.getpid():  # forked: the lock may have been held by a thread the child has not
            self._starting, self._pid = threading.Lock(), os.getpid()
        with self._starting:  # (kicked from other threads than the store's, by copy_others)
            if self._stopped:
                return
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._run, name=f"memimg checkpoints {self.path}", daemon=True)
                thread.never_waits_for_an_image = True  # type: ignore[attr-defined]  # (a snapshot need not yield)
                self._thread = thread
                thread.start()
        self._wake.set()

    @property
    def stopped(self) -> bool:
        """Whether no checkpoint will run any more (stopped, or the thread found no database to connect to)."""
        return self._stopped

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (a checkpoint running finishes first) and close its connection."""
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _connect(self) -> sqlite3.Connection | None:
        """A connection to the database the store opened; ``None`` if the path no longer names it."""
        try:
            conn = connect_existing(self.path, "rw", 0)
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # (its marks are commits)
            conn.execute("PRAGMA synchronous = NORMAL")  # a mark is no commit to wait an fsync for
        except sqlite3.Error as err:
            log.debug("no checkpoints of %s: %s", self.path, err)
            return None
        if identity(self.path) != self._db_id:  # opened after the file was replaced: not the store's database
            conn.close()
            return None
        return conn

    def _run(self) -> None:
        conn = self._connect()
        if conn is None:
            self._stopped = True
            return
        database = DatabaseSync(self._db_id)
        try:
            seen = None  # (data_version, mark) as of the last checkpoint or look (for copy_others)
            while True:
                woken = self._wake.wait(OTHERS_EVERY if self._others else None)
                self._wake.clear()
                if self._stopped:
                    return
                try:
                    look = _look(conn) if self._others else None
                except sqlite3.Error as err:  # the next look tries again
                    log.debug("looking for commits to %s failed: %s", self.path, err)
                    continue
                if not woken and seen is not None and look is not None and (look[0] == seen[0] or look[1] != seen[1]):
                    # no commit since, or another connection checkpointed meanwhile (its mark): it copied what was
                    # committed before it (and looking on would set the processes off in turn)
                    seen = look
                    continue
                try:
                    with checkpoints_alone(self.path, 0) as alone:
                        if not alone:  # another connection is checkpointing: this one is not needed
                            self.skipped += 1
                            continue
                        restarted = checkpoint(conn, self._own_commits, database)
                        if restarted is None:
                            continue
                        self.restarted += restarted
                        if look is not None:  # commits during it: a later look finds the version moved
                            seen = look[0], _look(conn)[1]
                except (sqlite3.Error, OSError) as err:  # busy, or the disk: the next one tries again
                    log.debug("checkpoint of %s failed: %s", self.path, err)
                self.runs += 1
        finally:
            conn.close()


def _look(conn: sqlite3.Connection) -> tuple[int, str | None]:
    """The database's ``data_version`` for *conn* (it moves with every other connection's commit) and its
    checkpoint mark (it moves with every checkpoint memimg runs)."""
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    row = conn.execute("SELECT value FROM memimg_meta WHERE key = 'checkpoint.mark'").fetchone()
    return version, None if row is None else row[0]
