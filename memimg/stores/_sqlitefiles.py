"""The SQLite store's files at their path: opening the one that is there, whether their directory changed since
they last checked out, and when the store can trust a directory's ctime to tell that its files were not replaced.

See the SQLite store's module docstring: after each write the store checks
that its path still names the database and WAL it opened.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import urllib.parse
from typing import Final

from memimg._errors import FileGoneError
from memimg.core import _compiled

__all__ = ["connect_existing", "dir_quiet", "gone_error", "stamped_after"]

# The clock inode timestamps are read from on Linux (CLOCK_REALTIME_COARSE: it moves once a tick).
_COARSE_CLOCK: Final = 5 if sys.platform.startswith("linux") else None
_TICK_NS: Final = 50_000_000  # elsewhere: a bound on the timestamp clock's step


def connect_existing(path: str, mode: str, timeout: float) -> sqlite3.Connection:
    """A connection to the database file at *path* (absolute), opened in *mode* (``"ro"`` or ``"rw"``): never one
    made where no file is (``sqlite3.OperationalError``), with no implicit transactions, usable from any thread."""
    uri = "file:" + urllib.parse.quote(path) + "?mode=" + mode
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=timeout)


def dir_quiet(path: bytes, ctime_ns: int, ino: int) -> bool:
    """Whether the directory at *path* (``os.fsencode``'s bytes, so that any name the file system holds is looked
    at as ``os.stat`` would) still has ctime *ctime_ns* and inode *ino* (the files checked out then).

    After every commit, once its row is written: compiled when the accelerator is loaded (``stat()`` with no result
    object; ``os.stat``'s was half the cost of this look, which is about a tenth of a single-field commit's). It
    never raises: an answer it cannot give is "not quiet", and the files are looked at the long way.
    """
    same = _compiled.same_dir
    if same is not None:
        return same(path, ctime_ns, ino)
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # (ValueError: a NUL in the path)
        return False
    return st.st_ctime_ns == ctime_ns and st.st_ino == ino


def stamped_after(ctime: int) -> bool:
    """Whether every later change of the directory is sure to get a ctime other than *ctime*.

    A change made within the same step of the filesystem's timestamp clock
    (a kernel tick; a whole second or two on filesystems that keep no
    fraction) could get the same ctime, so the directory is trusted only once
    that clock has moved past *ctime* by the filesystem's granularity (read
    from *ctime*'s trailing zeros).
    """
    grain = 1
    while grain < 1_000_000_000 and ctime % (grain * 10) == 0:
        grain *= 10
    if grain == 1_000_000_000:
        grain *= 2  # FAT keeps even seconds
    if _COARSE_CLOCK is not None:
        return time.clock_gettime_ns(_COARSE_CLOCK) >= ctime + grain
    return time.time_ns() - _TICK_NS >= ctime + grain


def gone_error(path: str, gone: str | None, doing: str, seq: int | None) -> FileGoneError:
    """The error of a write to a database file that is no longer at *path* (*gone* says what happened to it)."""
    if seq is None:
        what = f"{doing} was refused: nothing was written"
    elif gone is not None and "-wal" in gone:
        what = (
            f"{doing}: the events up to seq {seq} (back to the last checkpoint) went into a -wal file that "
            "is no longer at the path, so they are NOT durable: they are lost if this process dies, and "
            "are not applied to this image. Close the image now: SQLite then copies them into the "
            "database file, which is still in place, and the reopened image shows them"
        )
    else:
        what = (
            f"{doing}: the events up to seq {seq} went into a file that is no longer at the path, so "
            "they are NOT durable there and are not applied to this image (a moved file holds them)"
        )
    return FileGoneError(
        f"{path!r} no longer holds the database this image writes ({gone}); {what}. This "
        "image refuses every further write: put the database back at that path (from a backup) if it "
        "was lost, then open the image again",
        path=path,
        seq=seq,
        store=path,
        operation=doing,
    )
