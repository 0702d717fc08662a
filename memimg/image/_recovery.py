"""Recovery and upkeep: opening an image from its log, and what the log must say afterwards.

Opening loads the newest valid snapshot and folds the events after it
(:func:`recover`). What reading found may then have to be written to the
log, so that every later reader agrees with this one -- logged, never done
in memory alone:

* placeholders of removed types are cleaned out (:func:`strip_removed`;
  a past image, ``img.at``, which never reads a later event, cleans them in
  memory only);
* objects filled in for fields added since (a factory's list, an
  upgrader's entity) are attached and get ids (:func:`attach_fills`);
* an empty log gets its root (:func:`create_root`).

Snapshots are written by :mod:`memimg.image._snapshots`.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson

from memimg._errors import CorruptLogError, MemimgError, SchemaError, UnknownTypeError
from memimg.core._codec import ENTITY, PLAIN, TRACKED
from memimg.core._fold import fold
from memimg.core._gc import paused_gc
from memimg.core._gone import Gone, strip_gone
from memimg.core._kinds import KINDS
from memimg.core._reader import Pending, Reader
from memimg.core._rows import SnapshotRow, verify_snapshot
from memimg.core._snapshot import load_snapshot, split_snapshot
from memimg.core._table import ObjectTable
from memimg.image import _generic
from memimg.image._attach import Attacher, attached_by, where_field
from memimg.image._past import PastStore
from memimg.stores._protocol import Store

__all__ = [
    "Host",
    "attach_fills",
    "check_schema",
    "create_root",
    "gone_events",
    "open_image",
    "recover",
    "snapshot_past_head",
    "strip_removed",
]


class Host(Protocol):
    """What recovery and upkeep need of an image's engine (:class:`~memimg.image._engine.Engine`)."""

    store: Store
    table: ObjectTable
    reader: Reader
    attacher: Attacher
    lock: threading.RLock
    readonly: bool
    stripping: bool
    filling: bool
    seq: int
    snapshot_seq: int
    last_ts: int
    closed: bool
    progress: Callable[[str, int, int], None] | None
    on_schema_drift: str
    busy: str | None

    def commit(
        self, events: list[Pending], state: Any = None, *, replan: bool = False, auto_snapshot: bool = True
    ) -> bool: ...

    def check_writable(self) -> None: ...

    def refuse_if_busy(self) -> None: ...


log = logging.getLogger("memimg")

_OBJ_SET = KINDS["obj.set"]
_ROOT = KINDS["root"]


def snapshot_past_head(description: str, seq: int, head: int) -> CorruptLogError:
    """The error for a snapshot at *seq*, past the head *head* of its log.

    A snapshot is written after the event of its seq (the ``snapshot`` event;
    ``gc`` before memimg 0.3), and compaction keeps that event -- a store
    whose events were all dropped takes its newest snapshot's seq as its
    head -- so no snapshot memimg wrote into a log is ever past its head.
    """
    return CorruptLogError(
        f"snapshot at seq {seq} is past the last event of {description} (seq {head}): events "
        f"{head + 1}..{seq} are missing from the log, or the snapshot was written into another image's store; "
        "nothing was changed. Restore the log from a backup, or, to keep the state the events give and lose "
        f"what the snapshot holds beyond it, delete the snapshot rows past seq {head}",
        seq=seq,
        table="memimg_snapshots",
    )


def open_image(engine: Host, root: Callable[[], Any] | Any, *, generic_types: bool) -> None:
    """Bring a new engine's image up from its log: recover, then log what reading found (see the module docstring).

    Raises:
        MemimgError: a read-only image holds placeholders of removed types that only a writer may clean.
    """
    store, reader = engine.store, engine.reader
    started = time.perf_counter()
    if generic_types:
        _generic.prepare(store, reader.removed_types)
    with paused_gc():
        engine.busy = "reading the log"  # replay hashes and compares keys
        try:
            recover(engine)
        finally:
            engine.busy = None
    check_schema(engine)
    if reader.has_gone:
        if isinstance(store, PastStore):  # frozen: no later event will ever be read, so clean in memory
            _strip_in_memory(engine)
        elif engine.readonly and gone_events(engine):
            store.close()
            raise MemimgError(
                f"{store.description} holds objects or values of removed types "
                f"({', '.join(sorted(reader.report.removed_objects or reader.removed_types))}) "
                "that a read-only image cannot clean out of its collections without the log saying "
                "so; open it once writable with the same removed_types (or run memimg.migrate), "
                "which logs the clean-up, then open it read-only",
                store=store.description,
                type_names=sorted(reader.report.removed_objects or reader.removed_types),
            )
        strip_removed(engine)
    attach_fills(engine)
    if engine.table.root is None:
        create_root(engine, root)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "opened %s at seq %d (%d objects) in %.3fs",
            store.description,
            engine.seq,
            engine.table.live_count(),
            time.perf_counter() - started,
        )


def recover(engine: Host, reuse: list[Any] | None = None) -> None:
    """Rebuild the engine's (empty) table: the newest valid snapshot, then the events after it.

    With *reuse* (the objects the table held, by id), the snapshot's objects
    are those objects again wherever id and type agree (see :func:`rebase`).
    A compaction running meanwhile (a listed snapshot vanishes, or events
    after the one loaded are dropped and a newer snapshot covers them) makes
    it read the log again, a few times at most.
    """
    store = engine.store
    for attempt in range(_ATTEMPTS):
        first, newest = store.first_seq(), _newest(store)
        try:
            _recover_once(engine, reuse)
            if not engine.readonly:  # what its next commit is stamped at least (a reader commits nothing)
                engine.last_ts = _ts_at(store, engine.seq)
            return
        except (CorruptLogError, KeyError) as err:
            compacted = isinstance(err, KeyError) or (store.first_seq(), _newest(store)) != (first, newest)
            if not compacted or attempt == _ATTEMPTS - 1:
                if isinstance(err, KeyError):
                    raise CorruptLogError(
                        f"the snapshot at seq {err.args[0]} of {store.description} vanished while it was read, "
                        f"{_ATTEMPTS} times: is a compaction running in a loop? Open the image again",
                        seq=err.args[0],
                        table="memimg_snapshots",
                    ) from err
                raise
            log.info("%s was compacted while it was read: reading it again", store.description)
            held = engine.table.detach_all()
            engine.reader.fills = []
            if reuse is not None:  # what the attempt took back is to be taken back again
                for oid, obj in enumerate(held):
                    if obj is not None and oid < len(reuse) and reuse[oid] is None:
                        reuse[oid] = obj


_ATTEMPTS: Final = 3


def _ts_at(store: Store, seq: int) -> int:
    """The commit time of event *seq* (0 if it is not kept)."""
    for row in store.read(after=seq - 1, limit=1) if seq else ():
        return int(row[2])
    return 0


def _newest(store: Store) -> int:
    return max((info.seq for info in store.snapshots()), default=0)


def _recover_once(engine: Host, reuse: list[Any] | None) -> None:
    """One attempt of :func:`recover`."""
    store, reader = engine.store, engine.reader
    loaded = 0
    snapshots = store.snapshots()
    # read after the list: a snapshot is written after its event, so a listed one is at or before it
    head = store.head()
    skipped: list[str] = []
    for info in snapshots:
        if info.seq > head:
            # not skipped: it may hold commits the log lost, and loading an older state would let new
            # events take seqs that mean other changes to it
            raise snapshot_past_head(store.description, info.seq, head)
        try:
            snap = SnapshotRow(*store.read_snapshot(info.seq))
            verify_snapshot(snap)
            header, records = split_snapshot(snap.payload, info.seq)
        except (CorruptLogError, orjson.JSONDecodeError, ValueError) as err:
            if getattr(err, "tampered", False):
                raise  # an integrity chain's failure is an edit, not an accident to work around
            warnings.warn(f"skipping snapshot at seq {info.seq}: {err}", stacklevel=5)
            skipped.append(f"snapshot at seq {info.seq} was skipped: {err}")
            continue
        snap = None  # type: ignore[assignment]  # the records hold what is still needed
        reader.reuse = reuse
        try:
            load_snapshot(reader, {**header, "objects": records})
        except CorruptLogError as err:
            if err.seq is not None:
                raise
            raise CorruptLogError(
                f"snapshot at seq {info.seq} cannot be loaded: {err}", seq=info.seq, table="memimg_snapshots"
            ) from err
        finally:
            reader.reuse = None
        records = []
        loaded = info.seq
        break
    first = store.first_seq()
    if first > loaded + 1:
        raise CorruptLogError(
            f"events {loaded + 1}..{first - 1} are missing from {store.description} and no valid "
            f"snapshot covers them: restore the log from a backup{''.join(f' ({s})' for s in skipped)}",
            seq=loaded + 1,
            table="memimg_events",
        )
    engine.seq = engine.snapshot_seq = loaded
    head = store.head()
    progress = engine.progress
    report = None if progress is None else (lambda seq: progress("replay", seq - loaded, head - loaded))
    expected, last_gc = fold(
        store.read(after=loaded), reader, expected=loaded + 1, where=store.description, progress=report
    )
    if last_gc:
        engine.snapshot_seq = last_gc
    engine.seq = expected - 1
    if progress is not None:
        progress("replay", engine.seq - loaded, engine.seq - loaded)


def compacted_past(engine: Host) -> bool:
    """Whether the log no longer holds the events right after this image's seq (compacted away)."""
    return engine.store.first_seq() > engine.seq + 1


def rebase(engine: Host) -> None:
    """The log was compacted past this image's seq: reload it from the newest snapshot, in place, by id.

    Every object the image holds whose id and type the snapshot holds too
    is that object again, with the snapshot's state (the application's
    references stay valid and show the current state); the snapshot's other
    objects are new; the image's other objects leave it (as if collected).
    Then the events after the snapshot are applied as usual. The caller
    holds the lock, and makes the open transactions fail.

    Raises:
        CorruptLogError: no snapshot covers the missing events; nothing was changed.
        MemimgError: the snapshot failed to load; the image is closed (open it again).
    """
    store, table = engine.store, engine.table
    first, head = store.first_seq(), store.head()
    if not any(engine.seq < info.seq <= head and info.seq >= first - 1 for info in store.snapshots()):
        raise CorruptLogError(
            f"events {engine.seq + 1}..{first - 1} this image needs were dropped from {store.description} "
            "and no snapshot covers them; nothing was changed. Restore the log from a backup",
            seq=engine.seq + 1,
            table="memimg_events",
        )
    started = time.perf_counter()
    was = engine.seq
    held = table.detach_all()
    engine.reader.fills = []
    try:
        recover(engine, reuse=held)
    except BaseException as err:
        engine.closed = True  # half-loaded: nothing may be written from it
        if isinstance(err, MemimgError):
            err.add_note("Reloading after the log was compacted, this image was closed: open it again.")
            raise
        raise MemimgError(
            f"reloading {store.description} after the log was compacted failed ({err!r}); "
            "the image is closed: open it again",
            store=store.description,
        ) from err
    set_identity = table.shell.set_identity
    left = 0
    for obj in held:
        if obj is not None and type(obj) is not Gone:
            set_identity(obj, None, None)  # not in the log any more: attached anew if assigned again
            left += 1
    log.warning(
        "the log of %s was compacted past seq %d: reloaded from its snapshot to seq %d in %.3fs "
        "(%d objects left the image)",
        store.description,
        was,
        engine.seq,
        time.perf_counter() - started,
        left,
    )


def check_schema(engine: Host) -> None:
    """Raise :class:`SchemaError` listing what the stored schema and the code disagree on (or log it, with drop)."""
    report = engine.reader.report
    if not report.differences:
        return
    description = engine.store.description
    if engine.on_schema_drift == "drop":
        for line in report.differences:
            log.warning("schema drift in %s, dropped: %s", description, line)
        return
    lines = "\n".join(f"  - {d}" for d in report.differences)
    message = (
        f"the schema stored in {description} differs from the code in ways the code does "
        f"not declare; nothing was changed:\n{lines}\nDeclare each change as shown, or open with "
        'on_schema_drift="drop" to drop what the code does not declare.'
    )
    if report.unknown_types:
        raise UnknownTypeError(message, type_name=report.unknown_types[0], differences=list(report.differences))
    raise SchemaError(message, differences=list(report.differences))


def strip_removed(engine: Host) -> None:
    """Clean placeholders of removed types out of the graph, as events, so later replays agree.

    Read-only, placeholders met by a refresh stay until a writer logs their
    clean-up: cleaning them in memory alone would make later events (list
    indexes) land on the wrong elements.
    """
    if engine.readonly or engine.stripping:
        return
    reader = engine.reader
    with engine.lock, paused_gc():
        engine.stripping = True
        try:
            while True:
                events = gone_events(engine)
                try:
                    if not events or engine.commit(events, replan=True, auto_snapshot=False):
                        break
                except BaseException:
                    reader.has_gone = True  # still there: try again after the next refresh
                    raise
        finally:
            engine.stripping = False


def _strip_in_memory(engine: Host) -> None:
    """Clean placeholders of removed types out of a past image (``img.at``), without logging.

    A live read-only image must leave them to a writer (see
    :func:`strip_removed`); a past image reads no event after its seq, so no
    later event can land on the wrong element, and it writes nothing.
    """
    table = engine.table
    with paused_gc():
        for k, target, args in gone_events(engine):
            k.apply(table, target, *args)


def gone_events(engine: Host) -> list[Pending]:
    """The events that clean every placeholder of a removed type out of the engine's objects."""
    reader = engine.reader
    events = strip_gone(engine.table.objects, engine.table.shell, engine.table.codec.is_value, reader.report)
    reader.has_gone = False
    return events


def attach_fills(engine: Host) -> None:
    """Attach the objects replay filled in where the log stored no value, logging them.

    A field added to a class since its objects were stored gets its default
    when they are read, and an upgrader may make new values; when such a
    value holds objects (a factory's ``list``, a new entity), they are
    attached like any assigned value -- by an ``obj.set`` event per field, so
    they get ids in log order and every reader, follower and later snapshot
    agrees. A read-only image cannot log: it attaches them in memory only
    (tracked, without ids), so writing to them raises :class:`ReadOnlyError`
    like any write, and a writer's events replace them.

    If logging fails (the store is locked, say), the objects stay attached
    without ids and the fills pending: every write path and snapshot tries
    again first, so a change to them is never lost untracked, and the
    failure is the writer's to see.
    """
    reader = engine.reader
    if not reader.fills or engine.filling:
        return
    with engine.lock, paused_gc():
        engine.filling = True
        try:
            while True:
                fills = reader.pending_fills()
                if not fills:
                    break
                events: list[Pending] = []
                for obj, f, v in fills:
                    # attached in place before the commit, and kept if it fails: writes to them then go
                    # through the image, which logs them first (so none is lost untracked)
                    journal: list[Any] = []
                    tracked = engine.attacher.prepare(v, where_field(obj, f), journal)
                    if tracked is not v:
                        engine.table.field_set(obj, f, tracked)
                    events.append((_OBJ_SET, obj, (f, tracked)))
                    if engine.readonly:  # its entities are in the extents all the same, until replaced
                        engine.table.add_unlogged(obj, f, tracked, list(attached_by(journal)))
                reader.fills = [(obj, args[0], args[1]) for _, obj, args in events]
                if engine.readonly:  # in memory only (entities keep no id): once
                    reader.fills.clear()
                    break
                # committed, or another writer came first (its events may have replaced some): either
                # way the next round logs what is still pending
                engine.commit(events, replan=True, auto_snapshot=False)
        finally:
            engine.filling = False


def create_root(engine: Host, factory: Callable[[], Any] | Any) -> None:
    """Create the root of an empty log (or find the one another process created meanwhile)."""
    description = engine.store.description
    if engine.readonly:
        raise MemimgError(f"{description} holds no image yet, and it was opened read-only")
    obj = factory() if callable(factory) else factory
    if engine.table.codec.classify(type(obj)) not in (ENTITY, PLAIN, TRACKED):
        raise TypeError(f"the root must be a @persistent object or a dict, list or set, not {type(obj).__qualname__}")
    attacher = engine.attacher
    with engine.lock, paused_gc():
        undo: list[Any] = []
        obj = attacher.prepare(obj, "root", undo)
        try:
            done = engine.commit([(_ROOT, obj, ())], replan=True)
        except BaseException:
            attacher.undo(undo)
            raise
        if not done:  # another process created the root first: use theirs
            attacher.undo(undo)
            if engine.table.root is None:
                raise CorruptLogError(
                    f"{description} holds events (its head is seq {engine.store.head()}) but this image "
                    "found no root event among them: the log does not begin with one, or the store writes "
                    "to other tables than it reads (check the connection's search_path); nothing was written",
                    seq=1,
                    table="memimg_events",
                )
