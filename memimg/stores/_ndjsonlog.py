"""The NDJSON log file as a store sees it: the file open, the index of its lines, the lock file.

:class:`LogFile` is the part of :class:`~memimg.stores.NDJSONStore` that
knows where each event line is (its byte offset, 8 bytes an event, from the
oldest kept seq -- the header's ``first`` -- on) and keeps that index up to
the file at the path: a ``stat`` tells whether anything changed (another
inode: compaction or erase renamed a new file over the log; a larger size:
others appended). Writers index under the lock file's exclusive lock and
cut what follows the last whole transaction; readers take no lock and
index whole transactions only (see :meth:`LogFile._refresh`). Lines are
parsed and verified only when they are read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import threading
from array import array
from collections.abc import Iterator

from memimg._errors import CorruptLogError, FileGoneError, LockedError, MemimgError, ReadOnlyError, StoreError
from memimg.core._rows import EventRow
from memimg.stores._ndjsonformat import (
    END,
    NDJSON_VERSION,
    header_line,
    parse_header,
    parse_line,
    parse_lines,
    write_atomically,
)
from memimg.stores._waits import lock_waits

__all__ = ["LogFile"]

log = logging.getLogger("memimg")

#: Bytes read at a time when indexing or copying the log.
CHUNK = 8 << 20


class LogFile:
    """The log file open, its lines indexed, and the write turn (the base of :class:`NDJSONStore`)."""

    def __init__(self, path: str, *, full: bool, readonly: bool, busy_timeout: float) -> None:
        self.path = path
        self.description = self.path
        self.readonly = readonly
        self._full = full
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._fd = -1
        self._lock_fd = -1
        self._lock_ident: tuple[int, int] = (-1, -1)
        self._ident: tuple[int, int] = (0, 0)
        self._version = NDJSON_VERSION
        self._first = 1
        #: byte offset of each event line kept (seq first + i); _end: the offset after the last complete line
        self._offsets = array("q")
        self._end = 0
        #: (size, mtime) of the file when the last look found a torn tail after _end (see _same_torn_tail)
        self._torn = (-1, 0)
        #: the target index (built when history first asks): target -> seqs, covering seqs up to _targets_upto
        self._targets: dict[int, list[int]] = {}
        self._targets_upto = 0
        #: why this store writes no more (an fsync failed: what the disk holds is not known), or None
        self._failed: str | None = None

    @contextlib.contextmanager
    def _io(self, doing: str, *, write: bool = False) -> Iterator[None]:
        """Translate OS errors into :class:`StoreError` (:class:`FileGoneError` when the log left its path)."""
        try:
            yield
        except OSError as err:
            raise self._os_error(doing, err, write=write) from err

    def _os_error(self, doing: str, err: OSError, *, write: bool = False) -> StoreError:
        """The error to raise for *err* (see :meth:`_io`)."""
        if write and isinstance(err, FileNotFoundError) and err.filename == self.path:
            return FileGoneError(
                f"{doing} in {self.path!r} failed: the log file is no longer at its path (deleted or moved); "
                "nothing was written",
                path=self.path,
                seq=None,
                store=self.description,
                operation=doing,
            )
        return StoreError(f"{doing} in {self.path!r} failed: {err}", store=self.description, operation=doing)

    def _check_writable(self, doing: str) -> None:
        if self.readonly:
            raise ReadOnlyError(
                f"{doing} in {self.path!r} was refused: the store is open read-only; nothing was written"
            )
        if self._failed is not None:
            raise StoreError(
                f"{doing} in {self.path!r} was refused: {self._failed}; nothing was written. Open the image "
                "again once the disk is sound (it reads what the log holds)",
                store=self.path,
                operation=doing,
            )

    @contextlib.contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        """Hold the write turn: this store's thread lock and the lock file's lock, the log indexed and whole."""
        with self._lock, self._io(doing, write=True):
            self._check_writable(doing)  # under the lock: another thread's failed fsync is seen
            self._take_turn(doing)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _take_turn(self, doing: str) -> None:
        """Take the lock file's lock and bring the index up to the file at the path (this store's lock is held).

        Per commit this is a ``flock``, a ``stat`` of the lock file's path and
        a ``stat`` of the log: when the log is the file this store has open
        and its size is the offset after the last line indexed -- nothing
        appended, nothing torn -- there is nothing to read. Otherwise
        (another file at the path: a compaction or erase renamed a new one
        over the log; a larger size: others appended, or a crash left a
        torn tail) the log is reopened or read on, and a torn tail cut.
        The caller releases the lock file's lock.
        """
        self._flock(doing)
        try:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                if self._fd >= 0:
                    raise  # the log left its path: FileGoneError
                st = None
            if self._fd >= 0 and st is not None and (st.st_dev, st.st_ino) == self._ident and st.st_size == self._end:
                return
            if st is None or (st.st_size == 0 and self._fd < 0):
                self._create()
                st = os.stat(self.path)
            self._catch_up(st, cut=True)
        except BaseException:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            raise

    def _flock(self, doing: str) -> None:
        """Take the lock file's exclusive lock, waiting up to busy_timeout (at the pace of :func:`lock_waits`).

        The lock taken must be on the file the path names: one deleted,
        replaced or renamed away since this store opened it excludes no one
        (a ``stat`` of the path names another file, or none), so the lock
        file is opened again -- created if need be -- and the lock taken on
        that one.
        """
        waits: Iterator[bool] | None = None  # (from the first time the lock is found held)
        while True:
            if self._lock_fd < 0:
                self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                lock_st = os.fstat(self._lock_fd)
                self._lock_ident = (lock_st.st_dev, lock_st.st_ino)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waits is None:
                    waits = lock_waits(self._busy_timeout)
                if not next(waits, False):
                    raise LockedError(
                        f"{doing} in {self.path!r}: another writer held the lock for more than "
                        f"{self._busy_timeout:g} s; nothing was written",
                        store=self.description,
                        operation=doing,
                    ) from None
                continue
            try:
                try:
                    named = os.stat(self.path + ".lock")
                except FileNotFoundError:
                    named = None
                if named is not None and (named.st_dev, named.st_ino) == self._lock_ident:
                    return
            except BaseException:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                raise
            log.warning(
                "%s: the lock file was deleted, replaced or renamed; taking the lock on the one at its path", self.path
            )
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _create(self) -> None:
        """Write a new log's header line (atomically; the lock is held)."""
        write_atomically(self.path, [header_line(NDJSON_VERSION, 1)], sync=self._full)

    def _load(self) -> None:
        """Open the file at the path and index it from its header on (the lock is held by writers)."""
        fd = os.open(self.path, os.O_RDONLY if self.readonly else os.O_RDWR | os.O_APPEND)
        try:
            st = os.fstat(fd)
            first_line = os.pread(fd, 4096, 0)
            end = first_line.find(b"\n")
            if end < 0:
                parse_header(first_line, self.path)  # raises: no header line
            version, first = parse_header(first_line[:end], self.path)
            self._check_version(version)
        except BaseException:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        self._version, self._first = version, first
        self._offsets = array("q")
        self._end = end + 1
        self._targets, self._targets_upto = {}, first - 1

    def _check_version(self, version: int) -> None:
        if version < NDJSON_VERSION:
            raise MemimgError(
                f"{self.path!r} is in memimg NDJSON format {version}, which only a development build wrote: "
                "its lines carry no transaction end marks, so a transaction a crash cut short cannot be told "
                "from a whole one, and this memimg does not read it. Copy it to another store with the build "
                "that wrote it (memimg copy). The file was left untouched"
            )
        if version > NDJSON_VERSION:
            raise MemimgError(
                f"{self.path!r} was written in memimg NDJSON format {version}; this memimg reads "
                f"format {NDJSON_VERSION} and older: upgrade memimg. The file was left untouched"
            )

    def _refresh(self, *, cut: bool = False) -> None:
        """Bring the index up to the file at the path: reopen a replaced file, index appended transactions.

        Readers take no lock: they index whole transactions only (up to the
        last end mark), so a write under way -- or cut short -- is never
        read, and a writer busy for long (a compaction) never holds them up.
        With *cut* (a writer holding the lock), what follows the last whole
        transaction is cut off.

        A file replaced (compaction, erase) is reopened and the old one's
        descriptor closed, so that its blocks -- and erased values -- are
        given back once every process has looked.
        """
        st = os.stat(self.path)
        if (
            self._fd >= 0
            and (st.st_dev, st.st_ino) == self._ident
            and (st.st_size == self._end or (not cut and self._same_torn_tail(st)))
        ):
            return
        self._catch_up(st, cut=cut)

    def _same_torn_tail(self, st: os.stat_result) -> bool:
        """Whether the file (*st*, the one open) still ends in the partial transaction seen at the last look.

        A reader cuts nothing, so a transaction a crash cut short stays after
        the last one indexed until a writer comes: reading it again at every
        look would find nothing new. It is the same tail if the file's size
        and modification time are unchanged and the file does not end a
        transaction (a writer that cut the tail and appended whole
        transactions up to the same size leaves an end mark last).
        """
        return (st.st_size, st.st_mtime_ns) == self._torn and os.pread(self._fd, len(END), st.st_size - len(END)) != END

    def _catch_up(self, st: os.stat_result, *, cut: bool) -> None:
        """Index the whole transactions the file at the path (*st*) holds past the index (see :meth:`_refresh`).

        Lines are indexed up to the last end mark; a line may be of any
        length. With *cut*, what
        follows -- lines of a transaction a crash cut short, and a partial
        last line -- is cut off and logged.
        """
        if self._fd < 0 or (st.st_dev, st.st_ino) != self._ident:
            self._load()
            st = os.fstat(self._fd)
        size = st.st_size
        if size < self._end:
            raise OSError(errno.EIO, f"the log shrank to {size} bytes under this store (it had {self._end})")
        want = CHUNK
        while self._end < size:
            data = os.pread(self._fd, min(want, size - self._end), self._end)
            last = data.rfind(END)
            if last < 0:
                if self._end + len(data) >= size or not data:
                    break  # the rest is a transaction not whole (yet)
                want *= 2  # a transaction longer than what was read: read on to its end
                continue
            lines = data[: last + len(END) - 1].split(b"\n")
            self._offsets.extend(itertools.accumulate((len(line) + 1 for line in lines[:-1]), initial=self._end))
            self._end += last + len(END)
            want = CHUNK
        if cut and size > self._end:
            self._check_torn(size)
            torn = os.pread(self._fd, min(size - self._end, 200), self._end)
            log.warning(
                "%s: cut off %d bytes after event seq %d (%d whole lines of a transaction with no end mark, then "
                "%s), starting %r: a write that a crash cut short, never acknowledged",
                self.path,
                size - self._end,
                self._head(),
                self._count_lines(self._end, size),
                "a partial line" if os.pread(self._fd, 1, size - 1) != b"\n" else "no partial line",
                torn,
            )
            os.ftruncate(self._fd, self._end)
            if self._full:
                os.fsync(self._fd)
            size = self._end
        self._torn = (size, st.st_mtime_ns) if size > self._end else (-1, 0)

    def _check_torn(self, size: int) -> None:
        """Raise :class:`CorruptLogError` unless the whole lines after the last end mark are sound event lines.

        A write cut short leaves a prefix of its own sound lines; a line that
        fails there was damaged -- an end mark changed, say, which would
        otherwise have an acknowledged commit cut off as never finished.
        """
        seq, pos, rest = self._head() + 1, self._end, b""
        while pos < size:
            data = rest + os.pread(self._fd, min(CHUNK, size - pos), pos)
            if len(data) == len(rest):
                break
            pos += len(data) - len(rest)
            *whole, rest = data.split(b"\n")
            for line in whole:
                parse_line(line, seq - self._first + 2, seq, self.path)
                seq += 1

    def _count_lines(self, start: int, stop: int) -> int:
        n = 0
        while start < stop:
            data = os.pread(self._fd, min(CHUNK, stop - start), start)
            if not data:
                break
            n += data.count(b"\n")
            start += len(data)
        return n

    def _head(self) -> int:
        return self._first - 1 + len(self._offsets)

    def _rows(self, start: int, stop: int) -> list[EventRow]:
        """The rows of seqs *start* to *stop* (kept, complete lines), verified (the lock is held)."""
        if start > stop:
            return []
        first, offsets = self._first, self._offsets
        begin = offsets[start - first]
        end = offsets[stop + 1 - first] if stop + 1 - first < len(offsets) else self._end
        data = os.pread(self._fd, end - begin, begin)
        if data.count(b"\n") != stop - start + 1 or not data.endswith(b"\n"):
            raise OSError(errno.EIO, f"short read of events {start}..{stop}")
        lineno = start - first + 2
        path = self.path
        rows, ends = parse_lines(data, start, lineno, path)
        for i in range(len(rows) - 1):
            if rows[i + 1][1] != rows[i][1] and not ends[i]:
                raise CorruptLogError(
                    f"{path!r} line {lineno + i} (event seq {start + i}) is the last of transaction "
                    f"{rows[i][1]} but has no end mark: the transaction is incomplete (lines of it are "
                    "missing, or a write was cut short and others went on after it); restore the log "
                    "from a backup",
                    seq=start + i,
                    table="memimg_events",
                    line=lineno + i,
                )
        return rows

    def _line_bytes(self, start: int, stop: int) -> Iterator[bytes]:
        """The raw lines of seqs *start* to *stop*, in chunks (the lock is held)."""
        if start > stop:
            return
        first, offsets = self._first, self._offsets
        pos = offsets[start - first]
        end = offsets[stop + 1 - first] if stop + 1 - first < len(offsets) else self._end
        while pos < end:
            data = os.pread(self._fd, min(CHUNK, end - pos), pos)
            if not data:
                raise OSError(errno.EIO, "the log ended early while it was being copied")
            pos += len(data)
            yield data

    def _replace(self, first: int, chunks: Iterator[bytes]) -> None:
        """Write a new log (header *first*, then *chunks*) beside the path and rename it over (the lock is held)."""
        write_atomically(self.path, itertools.chain([header_line(self._version, first)], chunks))
        self._refresh(cut=True)
