"""``memimg.copy``: an image's log from any store to any other, row for row, verified."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from memimg._api import protection_for, store_for
from memimg._errors import MemimgError
from memimg.core._protect import PROTECTION_KEY, Protection
from memimg.core._rows import EventRow, SnapshotRow, snapshot_checksum, verify_event, verify_snapshot
from memimg.stores._protected import PENDING_KEY, ProtectedStore
from memimg.stores._protocol import PROCESS_KEYS, TARGETS_KEY, SeqTaken, Store

__all__ = ["copy"]

#: Rows a copy appends at a time (whole transactions: one larger than this goes in one append of its own).
BATCH = 5000
#: Meta entries that belong to the store or to processes that have it open, not to the image: never copied.
_NOT_COPIED = ("format_version", TARGETS_KEY, PROTECTION_KEY, PENDING_KEY)


def copy(
    src: str | os.PathLike[str] | Store,
    dst: str | os.PathLike[str] | Store,
    *,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    src_options: Mapping[str, Any] | None = None,
    dst_options: Mapping[str, Any] | None = None,
) -> int:
    """Copy the image stored at *src* to *dst*, any store to any store; returns how many events were copied.

    *src* and *dst* are anything :func:`memimg.open` takes (a path -- an
    SQLite file, or an NDJSON log when it ends in ``.ndjson`` --, a
    SQLAlchemy URL, ``":memory:"``, a :class:`Store`). The rows are copied as
    stored, never decoded (no class of the image needs to be importable):
    every event with its seq, transaction, time, kind, target, payload and
    checksum (a transaction's metadata is its ``tx.meta`` event), every
    snapshot, and the meta entries of the image -- not the leases and
    positions of processes that have *src* open, nor a store's own
    bookkeeping. A compacted log is copied as it is: it starts at the same
    seq, after the same snapshot.

    *src* is read as it is when the copy starts (processes may go on
    writing to it; their later commits are not copied). A transaction's
    events go to *dst* in one append, so a copy that stops half-way leaves
    whole transactions. At the end the copy is verified: *dst* reads back
    every row and snapshot of *src*, byte for byte.

    Args:
        overwrite: replace a *dst* that already holds a log. Only a path can
            be overwritten: its files are deleted first (an SQLite file and
            its ``-wal``/``-shm``; an NDJSON log and the files beside it).
        progress: called as ``progress("copy", done, total)`` as events are
            copied.
        src_options: the protection options *src* is opened with
            (``encryption_key``, ``integrity_key``, ``compression``; see
            :func:`memimg.open`).
        dst_options: the protection options of *dst* (default: the same as
            *src*'s; ``{}`` for a plain copy). The rows are sealed anew for
            *dst* -- a copy under other options is how ``memimg rekey``'s
            result can be had in another store.

    Raises:
        MemimgError: *src* holds no image; *dst* is not empty (and
            *overwrite* was not given, or *dst* is not a path); another
            process wrote to *dst* meanwhile; the verification found a
            difference.
        CorruptLogError: a row of *src* fails its checksum (nothing after
            it is copied).
    """
    src_protection, failure = protection_for(**_protection_options(src_options))
    if failure is None:
        dst_protection, failure = (
            (src_protection, None) if dst_options is None else protection_for(**_protection_options(dst_options))
        )
    if (
        dst_options is None
        and src_protection is None
        and isinstance(src, ProtectedStore)
        and not isinstance(dst, Store)
    ):
        dst_protection = src.protection  # a protected log given as a store: its copy is protected alike
    del src_options, dst_options  # no key in this frame's locals when a later error's traceback shows them
    if failure is not None:
        raise failure.with_traceback(None)
    with contextlib.ExitStack() as stack:
        source = _open(stack, src, readonly=True, protection=src_protection)
        # the snapshots before the head: a live writer may commit and snapshot between the two looks, and a
        # snapshot past the head copied would be one the copy's log does not reach
        listed = sorted(info.seq for info in source.snapshots())
        first, head = source.first_seq(), source.head()
        snapshots = [s for s in listed if s <= head]
        if head == 0 and not snapshots:
            raise MemimgError(f"{source.description!r} holds no memimg image (its log is empty); nothing was copied")
        target = _open(stack, dst, readonly=False, protection=dst_protection)
        if _identity(target) == _identity(source):
            raise MemimgError(
                f"{target.description!r} is the log the copy reads from ({source.description!r}): a log cannot be "
                "copied onto itself; nothing was copied or changed"
            )
        if target.head() != 0 or target.snapshots():
            target = _replace(stack, dst, target, overwrite, dst_protection)
        # a compacted log starts after seq 1: the target's log must start at the same seq -- after the
        # source's snapshot at first - 1 if it has one, else after a stand-in removed once the events are in
        early = [s for s in snapshots if s < first] if first - 1 in snapshots else []
        for seq in early:
            target.write_snapshot(_snapshot(source, seq))
        stand_in = first > 1 and not early
        if stand_in:
            target.write_snapshot(SnapshotRow(first - 1, 0, b"", snapshot_checksum(first - 1, 0, b"")))
        if target.head() != first - 1:
            raise MemimgError(
                f"{target.description!r} would take the log of {source.description!r} at seq "
                f"{target.head() + 1}, not at its first seq, {first}; nothing more was copied"
            )
        copied = 0
        for rows in _transactions(source, first, head):
            try:
                target.append(rows, rows[0].seq - 1)
            except SeqTaken as err:
                raise MemimgError(
                    f"another process wrote to {target.description!r} while the copy was appending events "
                    f"{rows[0].seq}..{rows[-1].seq}; the copy is incomplete (seqs {first}..{rows[0].seq - 1})"
                ) from err
            copied += len(rows)
            if progress is not None:
                progress("copy", copied, head - first + 1)
        if stand_in:
            target.delete_snapshots_before(first)
        for seq in (s for s in snapshots if s not in early):
            target.write_snapshot(_snapshot(source, seq))
        for key, value in source.meta().items():
            if key not in _NOT_COPIED and not key.startswith(PROCESS_KEYS):
                target.set_meta(key, value)
        _verify(source, target, first, head, snapshots)
        return copied
    raise AssertionError("unreachable")  # pragma: no cover - (mypy: ExitStack may swallow exceptions)


def _protection_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unexpected = set(options) - {"encryption_key", "integrity_key", "compression"}
    if unexpected:
        raise TypeError(f"unexpected protection options: {', '.join(sorted(unexpected))}")
    return {
        "encryption_key": options.get("encryption_key"),
        "integrity_key": options.get("integrity_key"),
        "compression": options.get("compression"),
    }


def _open(
    stack: contextlib.ExitStack[Any],
    where: str | os.PathLike[str] | Store,
    *,
    readonly: bool,
    protection: Protection | None = None,
) -> Store:
    """The store at *where*, closed with *stack* if it was opened here."""
    path = os.fspath(where) if isinstance(where, (str, os.PathLike)) else None
    if readonly and path is not None and "://" not in path and path != ":memory:" and not os.path.exists(path):
        raise MemimgError(f"{path!r} does not exist; nothing was copied")
    store = store_for(where, readonly=readonly, protection=protection)
    if getattr(store, "inner", store) is not where and store is not where:
        stack.callback(store.close)
    return store


def _replace(
    stack: contextlib.ExitStack[Any], dst: Any, target: Store, overwrite: bool, protection: Protection | None
) -> Store:
    """*dst*'s store, empty: its files deleted if it is a path and *overwrite* was given (else refused)."""
    where = target.description
    if not overwrite:
        raise MemimgError(
            f"{where!r} already holds a memimg log (head seq {target.head()}); nothing was copied. "
            "Pass overwrite=True (memimg copy --overwrite) to replace it"
        )
    path = os.fspath(dst) if isinstance(dst, (str, os.PathLike)) else None
    if path is None or "://" in path or path == ":memory:":
        raise MemimgError(
            f"{where!r} already holds a memimg log and only a path can be overwritten; empty it first "
            "(drop its memimg_* tables); nothing was copied"
        )
    target.close()
    path = os.path.realpath(path)  # the files of the log a symlink names, not the symlink
    # never the lock file: a process with the log open would lock a file no longer at its path
    for name in (path, path + "-wal", path + "-shm", path + ".meta"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    for name in (path + ".snapshots", path + ".segments"):
        shutil.rmtree(name, ignore_errors=True)
    return _open(stack, dst, readonly=False, protection=protection)


def _identity(store: Store) -> tuple[Any, ...]:
    """What tells one log from another: the file (followed through links) of a path, a database's URL with
    the schema and table prefix, else the store object itself."""
    store = getattr(store, "inner", store)  # a protected log: the store it is in
    path = getattr(store, "path", None)
    if isinstance(path, str) and path != ":memory:":
        try:
            st = os.stat(path)
        except OSError:
            return ("path", os.path.realpath(path))
        return ("file", st.st_dev, st.st_ino)
    engine = getattr(store, "engine", None)
    if engine is not None:
        url = engine.url.render_as_string(hide_password=False)
        return ("database", url, getattr(store, "schema", None), getattr(store, "prefix", None))
    return ("store", id(store))


def _read_snapshot(store: Store, seq: int) -> SnapshotRow:
    """The snapshot at *seq* (listed a moment ago), or a clear error if it is gone meanwhile."""
    try:
        return SnapshotRow(*store.read_snapshot(seq))
    except KeyError:
        raise MemimgError(
            f"the snapshot at seq {seq} of {store.description!r} was deleted while the copy ran (a compaction?); "
            "the copy is incomplete: run it again"
        ) from None


def _snapshot(source: Store, seq: int) -> SnapshotRow:
    row = _read_snapshot(source, seq)
    row = row._replace(payload=bytes(row.payload))
    verify_snapshot(row)
    return row


def _transactions(source: Store, first: int, head: int) -> Iterator[list[EventRow]]:
    """The events *first*..*head* of *source*, verified, in batches of whole transactions."""
    batch: list[EventRow] = []
    for raw in source.read(after=first - 1, limit=head - first + 1):
        row = EventRow(*raw)
        row = row._replace(payload=bytes(row.payload))
        verify_event(row)
        if len(batch) >= BATCH and row.tx != batch[-1].tx:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _verify(source: Store, target: Store, first: int, head: int, snapshots: list[int]) -> None:
    """Raise unless *target* reads back what was copied from *source*: every event and snapshot, byte for byte."""
    where = target.description
    if (target.first_seq(), target.head()) != (first, head):
        raise MemimgError(
            f"the copy in {where!r} holds seqs {target.first_seq()}..{target.head()}, not {first}..{head}"
        )
    theirs = source.read(after=first - 1, limit=head - first + 1)
    ours = target.read(after=first - 1, limit=head - first + 1)
    for a, b in zip(theirs, ours, strict=False):
        if _row(a) != _row(b):
            raise MemimgError(f"the copy in {where!r} differs from the source at event seq {a[0]}")
    held = sorted(info.seq for info in target.snapshots())
    if held != snapshots or any(s > head for s in held):
        raise MemimgError(
            f"the copy in {where!r} holds the snapshots {held}, not {snapshots} (each at or before seq {head})"
        )
    for seq in snapshots:
        if _row(_read_snapshot(source, seq)) != _row(_read_snapshot(target, seq)):
            raise MemimgError(f"the copy in {where!r} differs from the source in the snapshot at seq {seq}")


def _row(row: Any) -> tuple[Any, ...]:
    """A row's columns, payloads as bytes (drivers may give memoryviews)."""
    return tuple(bytes(c) if isinstance(c, (bytes, bytearray, memoryview)) else c for c in row)
