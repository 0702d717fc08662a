"""The NDJSON store: the log as one append-only file of JSON lines (``memimg.open("shop.ndjson")``).

Files, for a log at ``shop.ndjson``:

- ``shop.ndjson`` -- a header line (``{"format":"memimg-ndjson","version":2,"first":1}``:
  the file's format and the seq of the oldest event kept), then one line per
  event, in seq order, appended and never changed in place (see
  :mod:`memimg.stores._ndjsonformat` for a line's layout);
- ``shop.ndjson.snapshots/SEQ.ndjson`` -- one file per snapshot, each written
  atomically (a temp file, fsync, rename, fsync of the directory);
- ``shop.ndjson.meta`` -- ``memimg_meta`` (leases, image positions) as one
  JSON object, replaced atomically (temp file and rename) under the lock;
- ``shop.ndjson.lock`` -- the lock file writers take (``fcntl.flock``).

**Append rule.** Every write takes the lock file's exclusive lock (on the
lock file the path names: one that lost its name is reopened), then
brings the store's view of the log up to date: if the path names another
file than the one open (compaction or erase replaced it), the new file is
opened; the transactions other writers appended are indexed (nothing is
read when the file's size is the end of what is indexed); and what
follows the last whole transaction (its last line carries the end mark) --
a write a crash cut short, since no writer holding the lock is mid-write --
is cut off (and logged). Only then is the head compared with the seq the
writer expected (:class:`SeqTaken`, with the events it missed, otherwise),
and a transaction's lines go in one ``os.write`` on a file opened
``O_APPEND``. ``sync="full"`` fsyncs the file after each commit (and the
directory when the file is created); ``"normal"`` leaves the flushing to
the OS: a crash of the process loses nothing written, a power loss may.
The fsync runs once the lock file's lock is released (see
:meth:`NDJSONStore._sync`).

**Readers** never wait for a writer, take no lock and never modify the
file (a read-only store opens it ``O_RDONLY``): they index whole
transactions only -- up to the last line with the end mark -- so a write
under way, or one a crash cut short, is never read, and a long compaction
holds no one up. Lines are verified as they are read: a line that does not
parse, holds another seq than its place says, or fails its checksum, or a
transaction without its end mark before the tail, raises
:class:`CorruptLogError` naming the line and seq.
``changed``/``wait_for_change`` look at the file's identity and size (a
``stat``), so followers poll a cheap call; it is exact (a torn tail no
reader can cut is not a change), and it reopens a replaced file, so
followers let go of the old one within a poll. Leases and image positions live
in the meta file, so the log itself is only ever appended to.

**What is kept in memory**: the byte offset of every event line (8 bytes an
event), and, once history asks by object (:meth:`NDJSONStore.read_target`),
the seqs of each object's events. Rewrites (compaction, erase) write a new
file beside the log and rename it over the path: processes that had the old
file open notice at their next stat and reopen.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import orjson

from memimg._errors import CommitUnknownError, MemimgError
from memimg.stores._ndjsonformat import (
    END,
    encode_line,
    encode_rows,
    header_line,
    line_ends,
    parse_header,
    read_snapshot_file,
    snapshot_bytes,
    snapshot_header,
    sync_directory,
    write_atomically,
)
from memimg.stores._ndjsonlog import LogFile
from memimg.stores._protocol import (
    FORMAT_VERSION,
    LEASE,
    EventRow,
    Rewrite,
    SeqTaken,
    SnapshotInfo,
    SnapshotRow,
    check_aligned,
    check_target,
    lease_entry,
    poll,
    read_in_chunks,
)

__all__ = ["NDJSONStore"]

log = logging.getLogger("memimg")
_SNAPSHOT_NAME = re.compile(r"^(\d{20})\.ndjson$")
#: A temp file of write_atomically / write_snapshot: NAME.PID.HEX.tmp
_TEMP_NAME = re.compile(r"^.+\.(\d+)\.[0-9a-f]+\.tmp$")


def _alive(pid: int) -> bool:
    """Whether process *pid* runs (on this host, as the log's processes do)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # no such process (or no such pid at all)
        return False
    except PermissionError:
        return True
    return True


#: A temp file younger than this (seconds since it was last written) is never removed: its process may run
#: on another host, or in another pid namespace, where its pid says nothing.
_STALE_SECONDS = 600.0


#: Most events a refused append hands over (SeqTaken.missed).
_MISSED = 1000


class NDJSONStore(LogFile):
    """The log in an NDJSON file (see the module docstring for the files and the rules).

    Args:
        path: the log file (``*.ndjson``; created if missing, unless *readonly*).
        sync: ``"normal"`` or ``"full"`` (an fsync per commit).
        readonly: open the log read-only; writes raise :class:`ReadOnlyError`.
        busy_timeout: seconds to wait for another writer's lock before
            raising :class:`LockedError`.
        keep_segments: compaction moves the events it drops to a segment
            file instead of deleting them (see :meth:`delete_events_before`).

    Raises:
        MemimgError: the file is not an NDJSON memimg log (it is left
            untouched), is in a newer storage format, or does not exist
            (read-only).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "normal",
        readonly: bool = False,
        busy_timeout: float = 10.0,
        keep_segments: bool = False,
    ) -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
        # one log, one lock file: whatever path it is opened by (a symlink, a relative path), resolved once
        super().__init__(
            os.path.realpath(os.fspath(path)), full=sync == "full", readonly=readonly, busy_timeout=busy_timeout
        )
        #: compaction keeps the events it drops as a segment file (see :meth:`delete_events_before`)
        self.keep_segments = keep_segments
        if os.path.isdir(self.path):
            raise MemimgError(f"{self.path!r} is a directory, not an NDJSON log file")
        if readonly and not os.path.exists(self.path):
            raise MemimgError(f"{self.path!r} does not exist (opened read-only)")
        try:
            if readonly:
                with self._lock, self._io("opening the log"):
                    self._refresh()
                return
            with self._io("opening the log"):
                self._check_file()
            with self._writing("opening the log"):
                self._remove_stale_temps()  # _writing created the file, cut a torn tail, and indexed it
            if self._full:
                # the log's directory entry made durable (a process writing with sync="normal" may have
                # created it without): once per open, not per commit
                sync_directory(os.path.dirname(self.path))
        except BaseException:
            self.close()
            raise

    def _check_file(self) -> None:
        """Refuse, before a lock file is made beside it, a file that is not a log this memimg writes, or a log
        with more than one name (hard links: compaction and erase rename a new file over one name only, and
        each name would get a lock file of its own)."""
        try:
            with open(self.path, "rb") as f:
                links = os.fstat(f.fileno()).st_nlink
                first_line = f.readline(4096)
        except FileNotFoundError:
            return
        if first_line:
            self._check_version(parse_header(first_line.rstrip(b"\n"), self.path)[0])
        if links > 1:
            raise MemimgError(
                f"{self.path!r} has {links} hard links; a log must have one name (each name would get its "
                "own lock file, and a compaction or erase replaces the file under one name only): remove the "
                "other links, or copy the log (memimg copy). The file was left untouched"
            )

    def _remove_stale_temps(self) -> None:
        """Delete the temp files that processes no longer running left beside the log, its snapshots and
        segments (a crash between writing one and renaming it); a live process's are left alone."""
        base = os.path.basename(self.path)
        for directory, prefix in (
            (os.path.dirname(self.path), base + "."),
            (self.path + ".snapshots", ""),
            (self.path + ".segments", ""),
        ):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                m = _TEMP_NAME.match(name)
                if m is None or not name.startswith(prefix) or _alive(int(m.group(1))):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.stat(os.path.join(directory, name)).st_mtime < _STALE_SECONDS:
                        continue
                    os.unlink(os.path.join(directory, name))
                    log.info("%s: removed %s, a temp file left by process %s", self.path, name, m.group(1))

    # -- events -----------------------------------------------------------------------------

    def _log_head(self) -> int:
        """The last event's seq; with no event kept, the newest snapshot's if it is further (as in the SQL stores)."""
        if self._offsets:
            return self._head()
        return max(self._head(), max((s.seq for s in self.snapshots()), default=0))

    def head(self) -> int:
        with self._lock, self._io("reading the head of the log"):
            self._refresh()
            return self._log_head()

    def first_seq(self) -> int:
        with self._lock, self._io("reading the first seq of the log"):
            self._refresh()
            return self._first if self._offsets else self._log_head() + 1

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        doing = f"appending events {rows[0][0]}..{rows[-1][0]}"
        check_aligned(rows, expected_head)
        data = encode_rows(rows)
        # the write turn by hand (as _writing does), a commit's hot path
        with self._lock:
            self._check_writable(doing)  # under the lock: another thread's failed fsync is seen
            try:
                self._take_turn(doing)
                try:
                    self._append_whole(rows, data, expected_head)
                finally:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            except OSError as err:
                raise self._os_error(doing, err, write=True) from err
            if self._full:
                self._sync(rows, doing)

    def _append_whole(self, rows: Sequence[EventRow], data: bytes, expected_head: int) -> None:
        """Write *data* (the lines of *rows*) if the head is *expected_head* (the write turn is held)."""
        last = self._first - 1 + len(self._offsets)  # the last event kept
        head = last if self._offsets else self._log_head()
        if head != expected_head:
            if self._first - 1 <= expected_head < last:
                stop = min(last, expected_head + _MISSED)
                raise SeqTaken(expected_head, self._rows(expected_head + 1, stop), more=stop < head)
            raise SeqTaken(expected_head)
        if head > last:  # no event kept, a snapshot further: the log goes on after it
            self._replace(head + 1, iter(()))
        start = self._end
        try:
            written = os.write(self._fd, data)
        except OSError:
            # the write itself failed, nothing written: nothing of it stays. (Not on any exception: a signal's
            # KeyboardInterrupt landing after os.write returned would cut rows readers may have read.)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        if written != len(data):
            # a short write (a full disk): the transactions whole in what reached the file stay -- a
            # reader may have read them -- the rest is cut (one transaction's rows: nothing of it stays)
            keep = data.rfind(END, 0, written)
            keep = 0 if keep < 0 else keep + len(END)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start + keep)
            self._note_written(rows, data[:keep], start)
            raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes were written")
        # the rows are in the file, where other processes may have read them already: they stay, whatever
        # happens from here on (the image that wrote them finds them at its next catch-up)
        if len(rows) == 1:
            self._offsets.append(start)
            self._end = start + written
        else:
            self._note_written(rows, data, start)

    def _sync(self, rows: Sequence[EventRow], doing: str) -> None:
        """fsync the log after a commit's write (``sync="full"``); a failure makes the commit's outcome unknown.

        The fsync runs after the lock file's lock is released: the lines are
        in the file already (in the order the lock gave), and a writer next in
        turn need not wait for this disk flush -- its own fsync flushes these
        lines too (a compaction that renames a new file over the log meanwhile
        wrote them into it, fsynced, from the page cache). This store's thread
        lock is held, so that this store writes nothing more before the
        outcome is known.
        """
        try:
            os.fsync(self._fd)
        except OSError as err:
            self._failed = f"an fsync of {self.path!r} failed ({err}), so what its disk holds is not known"
            raise CommitUnknownError(
                f"{doing} in {self.path!r}: the events were written but the fsync that makes them "
                f"durable failed ({err}): the commit's outcome is UNKNOWN (it was not applied to this "
                "image, and this store writes no more). Open the image again once the disk is sound: "
                f"the commit is in the log if event seq {rows[0][0]} is there",
                commit_id=0,
                first_seq=rows[0][0],
                seq=rows[-1][0],
                store=self.path,
                operation=doing,
            ) from err

    def _note_written(self, rows: Sequence[EventRow], data: bytes, start: int) -> None:
        """Index the lines of *rows* that *data* (written at offset *start*) holds whole."""
        offsets, pos = self._offsets, 0
        for _ in rows:
            if pos >= len(data):
                break
            offsets.append(start + pos)
            pos = data.index(b"\n", pos) + 1
        self._end = start + len(data)

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        return read_in_chunks(self._fetch, after, limit)  # type: ignore[return-value]

    def _fetch(self, after: int, n: int) -> list[EventRow]:
        with self._lock, self._io(f"reading events after seq {after}"):
            self._refresh()
            start = max(after + 1, self._first)
            stop = min(start + n - 1, self._head())
            if start > self._first and start <= stop:
                # from the event before: whether its transaction ended is checked against this chunk's first
                return self._rows(start - 1, stop)[1:]
            return self._rows(start, stop)

    def read_target(self, target: int, after: int = 0, until: int | None = None) -> Iterator[EventRow]:
        check_target(target)
        with self._lock, self._io(f"reading the events of object {target}"):
            self._refresh()
            self._index_upto(self._head())
            seqs = self._targets.get(target, [])
            lo = bisect.bisect_right(seqs, max(after, self._first - 1))
            hi = len(seqs) if until is None else bisect.bisect_right(seqs, until)
            rows = [self._rows(s, s)[0] for s in seqs[lo:hi]]
        return iter(rows)

    def _index_upto(self, upto: int) -> None:
        """Extend the in-memory target index to seq *upto* (the lock is held)."""
        after = self._targets_upto
        while after < upto:
            stop = min(upto, after + 20_000)
            for row in self._rows(after + 1, stop):
                self._targets.setdefault(row[4], []).append(row[0])
            after = self._targets_upto = stop

    def index_targets(self, upto: int, *, least: int = 1) -> int:
        """The head: the target index is kept in memory, built as history reads by object; nothing is written."""
        return self.head()

    def changed(self, seen: int) -> bool:
        """Whether the head is past *seen*: a ``stat`` when nothing was appended, else the new lines indexed.

        Exact: ``False`` when the log holds no whole transaction past what
        this store indexed -- a torn transaction at the end (a crash's, or a
        write under way) included. A file replaced by compaction or erase is
        reopened here (the old one's descriptor closed), so a process that
        polls -- :meth:`~memimg.Image.wait`, :meth:`~memimg.Image.follow` --
        lets go of the old file within one poll.
        """
        with self._lock:
            try:
                self._refresh()
                return (self._head() if self._offsets else self._log_head()) != seen
            except OSError as err:  # (not self._io: a context manager costs at each transaction's start)
                raise self._os_error("checking for other writers' commits", err) from err

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        """Block until the head moves past *seen* (polls the file every 10 ms), or *timeout* passes."""
        return poll(lambda: self.changed(seen), timeout, 0.01)

    def delete_events_before(self, seq: int) -> int:
        """Drop events before *seq*: the kept lines go to a new file renamed over the log (space given back).

        With :attr:`keep_segments`, the dropped lines are first written (atomically) to a segment,
        ``NAME.ndjson.segments/FIRST-LAST.ndjson`` (seqs zero-padded to 20 digits): a log of its own in
        the same format, whose header says its first seq -- a segment that starts at seq 1 opens
        read-only as the image at its last seq.
        """
        doing = f"deleting events before seq {seq}"
        with self._writing(doing):
            self._remove_stale_temps()
            first = self._first
            n = max(0, min(len(self._offsets), seq - first))
            if n:
                if self.keep_segments:
                    directory = self.path + ".segments"
                    os.makedirs(directory, exist_ok=True)
                    segment = os.path.join(directory, f"{first:020d}-{first + n - 1:020d}.ndjson")
                    lines = self._line_bytes(first, first + n - 1)
                    write_atomically(segment, itertools.chain([header_line(self._version, first)], lines))
                self._replace(first + n, self._line_bytes(first + n, self._head()))
            return n

    def reclaim(self) -> bool:
        """Nothing left to give back: :meth:`delete_events_before` rewrote the file already."""
        with self._writing("reclaiming the space of deleted rows"):
            return True

    def rewrite(self, plan: Callable[[Sequence[EventRow]], Rewrite], after: int) -> None:
        """See :meth:`Store.rewrite`: the log is written anew beside the path and renamed over it.

        The old file is unlinked (its blocks are freed, not overwritten: a
        process that still has it open reads the old lines until it notices
        the new file, at its next read). Replaced snapshots are rewritten
        first, one file at a time, each atomically; the rename of the new
        log -- which holds the erase's audit event -- is the commit point. A
        crash before it leaves the old log (no audit event, the values still
        in it) with some snapshots already erased: erasing again finishes
        the job. The audit event is in the log only once every copy is
        erased. Segment files kept by compaction are not rewritten.
        """
        doing = "rewriting rows (erase)"
        with self._writing(doing):
            head = self._log_head()
            events, snapshots, rows = plan(self._rows(max(after + 1, self._first), self._head()))
            for i, row in enumerate(rows):
                if row[0] != head + 1 + i:
                    raise ValueError(f"row seq {row[0]} does not follow {head + i}")
            replaced = {r[0]: r for r in events if self._first <= r[0] <= self._head()}
            first = self._first if self._offsets else head + 1
            for snap in snapshots:
                path = self._snapshot_path(snap[0])
                if os.path.exists(path):
                    write_atomically(path, [snapshot_bytes(SnapshotRow(*snap))])
            self._replace(first, self._rewritten(replaced, self._head(), encode_rows(rows)))

    def _rewritten(self, replaced: dict[int, EventRow], head: int, tail: bytes) -> Iterator[bytes]:
        """The log's lines with the rows of *replaced* in place of theirs, then *tail*."""
        done = self._first - 1
        for seq in sorted(replaced):
            yield from self._line_bytes(done + 1, seq - 1)
            old = b"".join(self._line_bytes(seq, seq))
            yield encode_line(replaced[seq], line_ends(old[:-1]))
            done = seq
        yield from self._line_bytes(done + 1, head)
        yield tail

    # -- snapshots --------------------------------------------------------------------------

    def _snapshot_path(self, seq: int) -> str:
        return os.path.join(self.path + ".snapshots", f"{seq:020d}.ndjson")

    def write_snapshot(self, row: SnapshotRow, holder: str | None = None) -> bool:
        """Write the snapshot's file (a temp file, fsync -- off the lock), then rename it in under the lock.

        With *holder*, the rename happens only if *holder* holds the snapshot
        lease (checked under the lock); otherwise the temp file is removed.
        """
        doing = f"writing the snapshot at seq {row.seq}"
        self._check_writable(doing)
        path = self._snapshot_path(row.seq)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident():x}.tmp"
        with self._io(doing):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    data = memoryview(snapshot_bytes(row))
                    while data:
                        data = data[os.write(fd, data) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                with self._writing(doing):
                    if holder is not None and self._read_meta().get(f"lease.{LEASE}", "")[21:] != holder:
                        return False
                    os.replace(tmp, path)
                    sync_directory(os.path.dirname(path))
                    return True
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def snapshots(self) -> list[SnapshotInfo]:
        directory = self.path + ".snapshots"
        with self._io("listing snapshots"):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                return []
            infos = []
            for name in names:
                m = _SNAPSHOT_NAME.match(name)
                if m is None:
                    continue
                seq = int(m.group(1))
                try:
                    path = os.path.join(directory, name)
                    infos.append(SnapshotInfo(seq, *snapshot_header(path)))
                except FileNotFoundError:
                    continue  # deleted meanwhile
        return sorted(infos, reverse=True)

    def read_snapshot(self, seq: int) -> SnapshotRow:
        with self._io(f"reading the snapshot at seq {seq}"):
            try:
                return read_snapshot_file(self._snapshot_path(seq), seq)
            except FileNotFoundError:
                raise KeyError(seq) from None

    def delete_snapshots_before(self, seq: int) -> int:
        doing = f"deleting snapshots before seq {seq}"
        with self._writing(doing):
            old = [s.seq for s in self.snapshots() if s.seq < seq]
            for s in old:
                os.unlink(self._snapshot_path(s))
            return len(old)

    # -- meta and leases --------------------------------------------------------------------

    def _read_meta(self) -> dict[str, str]:
        try:
            with open(self.path + ".meta", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        try:
            meta = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise OSError(errno.EIO, f"{self.path + '.meta'!r} is not a JSON object ({err})") from err
        if not isinstance(meta, dict):
            raise OSError(errno.EIO, f"{self.path + '.meta'!r} is not a JSON object")
        return meta

    def _write_meta(self, meta: dict[str, str]) -> None:
        write_atomically(self.path + ".meta", [orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)], sync=self._full)

    def meta(self) -> dict[str, str]:
        with self._io("reading memimg_meta"):
            meta = self._read_meta()
        meta["format_version"] = str(FORMAT_VERSION)
        return meta

    def set_meta(self, key: str, value: str | None) -> None:
        with self._writing(f"writing memimg_meta[{key!r}]"):
            meta = self._read_meta()
            if value is None:
                if meta.pop(key, None) is None:
                    return
            else:
                meta[key] = value
            self._write_meta(meta)

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        key, value, now = lease_entry(name, holder, seconds)
        with self._writing(f"taking the {name} lease"):
            meta = self._read_meta()
            current = meta.get(key)
            if current is not None and current >= now and current[21:] != holder:
                return False
            meta[key] = value
            self._write_meta(meta)
            return True

    def release(self, name: str, holder: str) -> None:
        with self._writing(f"releasing the {name} lease"):
            meta = self._read_meta()
            if meta.get(f"lease.{name}", "")[21:] == holder:
                del meta[f"lease.{name}"]
                self._write_meta(meta)

    def size(self) -> int:
        """Bytes on disk (the log, its snapshots and its meta)."""
        total = 0
        for path in [self.path, self.path + ".meta"] + [self._snapshot_path(s.seq) for s in self.snapshots()]:
            with contextlib.suppress(OSError):
                total += os.path.getsize(path)
        return total

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._lock_fd = -1

    def __repr__(self) -> str:
        return f"NDJSONStore({self.path!r})"
