"""The memory image: the live graph, its log, and the commit protocol between them.

:class:`MemoryImage` orchestrates the other parts. It is the *owner* of every
attached object (``obj._mi_img``): tracked writes come here, and here they
become commits.

**One commit** (a transaction's events, or a single mutation made outside any
transaction) goes, under the image's lock:

1. *validate* -- compare what the transaction read and wrote with every
   commit since it began (:meth:`_validate`); a stale view raises
   :class:`ConflictError` and nothing happens;
2. *encode* -- give new objects their ids and turn the events into rows;
3. *append* -- the store appends the rows at ``seq + 1`` only if nobody else
   did; if somebody did, *catch up* (apply their commits), validate again
   (a single mutation is simply planned again on the new state) and retry;
4. *apply* -- only now change the committed objects, through the same event
   kinds replay uses. While a multi-event transaction is being applied it is
   *published*: readers in other threads see either none of it or all of it.

So a failed append leaves memory exactly as it was, and the log and the
graph never disagree.

Planning and applying run user code: the ``__hash__`` and ``__eq__`` of
keys and set members, sort keys. A change of the image made by that code
would be a commit nested inside another one (before it, or between its
events), so while this thread is doing either, ``_mi_busy`` (a transaction's
``busy`` while it plans) says what it is doing, and every way to change the
image checks it and refuses (see :func:`memimg.image._tx.reentered`). Planning
runs a key's hash and lookup as the commit will, so that code is refused
there, before anything is written; the check while applying is the last
resort.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import orjson

from memimg import _errors as memimg_errors
from memimg._errors import (
    ClosedError,
    ConflictError,
    CorruptLogError,
    MemimgError,
    ReadOnlyError,
    SchemaError,
    UnknownTypeError,
    value_repr,
)
from memimg.core import _codec, _types
from memimg.core._gc import lazy_pause, paused_gc
from memimg.core._graph import Graph, Pending, split_snapshot
from memimg.core._kinds import APPEND, FIELD, KEY, KINDS, MEMBERS, NONE, PAIRS, WHOLE
from memimg.core._rows import Event, snapshot_checksum, verify_event, verify_snapshot
from memimg.core._schema import SchemaReport
from memimg.image import _generic
from memimg.image._tx import Savepoint, Transaction, TxScope, TxState, _raw, reentered, where_coll, where_field
from memimg.image._views import ListView
from memimg.model import _tracking
from memimg.model._base import ABSENT, SELF, Planner
from memimg.model._base import WHOLE as WHOLE_KEY
from memimg.model._collections import reusable_args
from memimg.stores._protocol import EventRow, SeqTaken, SnapshotRow, Store

__all__ = ["DEFAULT_SNAPSHOT_EVERY", "MemoryImage", "snapshot_past_head"]

log = logging.getLogger("memimg")

#: ``snapshot_every="auto"``: snapshot when the events since the last snapshot
#: reach this many, or the number of live objects if that is larger (so the
#: cost of snapshots stays proportional to the cost of the events).
DEFAULT_SNAPSHOT_EVERY: Final = 10_000

_OBJ_SET = KINDS["obj.set"]
_OBJ_DEL = KINDS["obj.del"]
_ROOT = KINDS["root"]
_GC = KINDS["gc"]
# stored as themselves; a non-ASCII str goes through Graph.prepare, which checks it is valid UTF-8
_NATIVE = frozenset({str, int, float, bool, type(None)})


def _phase_reporter(progress: Callable[[str, int, int], None], phase: str, total: int) -> Callable[[int], None]:
    def report(done: int) -> None:
        progress(phase, done, total)

    return report


def snapshot_past_head(description: str, seq: int, head: int) -> CorruptLogError:
    """The error for a snapshot at *seq*, past the head *head* of its log.

    A snapshot is written after the event of its seq (the ``gc`` event), and
    compaction keeps that event -- a store whose events were all dropped
    takes its newest snapshot's seq as its head -- so no snapshot memimg
    wrote into a log is ever past its head.
    """
    return CorruptLogError(
        f"snapshot at seq {seq} is past the last event of {description} (seq {head}): events "
        f"{head + 1}..{seq} are missing from the log, or the snapshot was written into another image's store; "
        "nothing was changed. Restore the log from a backup, or, to keep the state the events give and lose "
        f"what the snapshot holds beyond it, delete the snapshot rows past seq {head}",
        seq=seq,
        table="memimg_snapshots",
    )


def _now_us() -> int:
    return time.time_ns() // 1000


def _sizeable(planned: Sequence[tuple[str, tuple[Any, ...]]]) -> bool:
    """Whether a plan's events carry enough items that pausing the collector through their
    commit (~0.7 µs) pays: encoding and applying them makes a container per item."""
    n = 0
    for _name, eargs in planned:
        for a in eargs:
            if type(a) is list:
                n += len(a)
    return n > 256


class MemoryImage:
    """A live object graph kept durable by a log of its mutations.

    Create one with :func:`memimg.open`. The root object is :attr:`root`;
    every object reachable from it is part of the image, and every change to
    them is committed to the log before the mutating call returns (or at the
    end of the enclosing :meth:`transaction`).
    """

    def __init__(
        self,
        store: Store,
        *,
        root: Callable[[], Any] = dict,
        converter: _codec.Converter | None = None,
        snapshot_every: int | str | None = "auto",
        readonly: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        removed_types: Iterable[str] = (),
        on_schema_drift: str = "raise",
        generic_types: bool = False,
    ) -> None:
        if on_schema_drift not in ("raise", "drop"):
            raise ValueError(f"on_schema_drift must be 'raise' or 'drop', not {on_schema_drift!r}")
        if snapshot_every not in (None, "auto") and (not isinstance(snapshot_every, int) or snapshot_every < 1):
            raise ValueError(f"snapshot_every must be a positive int, 'auto' or None, not {snapshot_every!r}")
        self._store = store
        self._readonly = readonly
        self._snapshot_every = snapshot_every
        self._progress = progress
        self._lock = threading.RLock()
        self._closed = False
        self._follower: threading.Thread | None = None
        self._mi_current: contextvars.ContextVar[TxState | None] = contextvars.ContextVar(
            f"memimg_tx_{id(self):x}", default=None
        )
        self._mi_publishing: list[TxState] = []
        self._mi_savepoint: contextvars.ContextVar[Savepoint | None] = contextvars.ContextVar(
            f"memimg_savepoint_{id(self):x}", default=None
        )
        self._mi_scopes: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
            f"memimg_scopes_{id(self):x}", default=()
        )
        self._graph = Graph(converter or _codec.converter, owner=self)
        self._graph.removed_types = frozenset(removed_types)
        self._graph.generic = self._graph.codec.generic = generic_types
        self._on_schema_drift = on_schema_drift
        self._stripping = False
        self._filling = False
        #: what this thread is doing while it holds the lock and runs user code (keys' __hash__ and
        #: __eq__, sort keys), or None: a change of the image from that code is refused (see reentered)
        self._mi_busy: str | None = None
        self._seq = 0
        self._snapshot_seq = 0
        # conflict detection: what commits wrote, while transactions are open
        self._open_txs: set[TxState] = set()
        self._last: dict[tuple[int, Any], int] = {}
        self._last_obj: dict[int, int] = {}
        self._recent: deque[tuple[int, int, list[tuple[int, Any]]]] = deque()
        started = time.perf_counter()
        if generic_types:
            _generic.prepare(store, self._graph.removed_types)
        with paused_gc():
            self._mi_busy = "reading the log"  # replay hashes and compares keys
            try:
                self._recover()
            finally:
                self._mi_busy = None
        self._check_schema()
        if self._graph.has_gone:
            if readonly and self._graph.strip_gone():
                store.close()
                raise MemimgError(
                    f"{store.description} holds objects or values of removed types "
                    f"({', '.join(sorted(self._graph.report.removed_objects or self._graph.removed_types))}) that "
                    "a read-only image cannot clean out of its collections without the log saying "
                    "so; open it once writable with the same removed_types (or run memimg.migrate), "
                    "which logs the clean-up, then open it read-only"
                )
            self._strip_removed()
        self._attach_fills()
        if self._graph.root is None:
            self._create_root(root)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "opened %s at seq %d (%d objects) in %.3fs",
                store.description,
                self._seq,
                self._graph.live_count(),
                time.perf_counter() - started,
            )

    # -- public API -------------------------------------------------------------

    @property
    def root(self) -> Any:
        """The root object."""
        return self._graph.root

    @property
    def seq(self) -> int:
        """The seq of the last event applied to this image (0 when empty)."""
        return self._seq

    @property
    def store(self) -> Store:
        """The store holding the log."""
        return self._store

    @property
    def converter(self) -> _codec.Converter:
        """The cattrs converter that encodes this image's values."""
        return self._graph.codec.converter

    @property
    def schema_report(self) -> SchemaReport:
        """What reading the log under the current classes found and did (see schema evolution)."""
        return self._graph.report

    @property
    def readonly(self) -> bool:
        """Whether writes are refused (``open(..., readonly=True)``)."""
        return self._readonly

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def transaction(self, retries: int = 0) -> TxScope:
        """A transaction, as a context manager or a decorator.

        ``with img.transaction():`` commits on normal exit and discards on an
        exception (which propagates). Nested, it is a savepoint. As a
        decorator (``@img.transaction(retries=5)``) it runs the function in a
        transaction and reruns it, up to *retries* times with a short
        randomized backoff, when the commit raises :class:`ConflictError`.
        """
        return TxScope(self, retries)

    def begin(self) -> Transaction:
        """Open a transaction (a savepoint if one is already open in this thread or task).

        Commit it with ``save()``, roll it back with ``discard()``.
        """
        self._check_open()
        current = self._mi_current.get()
        if current is not None and not current.done:
            sp = current.savepoint(self._mi_savepoint.get())
            self._mi_savepoint.set(sp)
            return Transaction(self, current, sp)
        if self._store.changed(self._seq):
            with self._lock:
                self._catch_up()
        with self._lock:  # never start in the middle of another commit being applied
            state = TxState(self, self._seq)
            self._open_txs.add(state)
        _tracking.tx_opened()
        self._mi_current.set(state)
        self._mi_savepoint.set(None)
        return Transaction(self, state)

    def _current_tx(self) -> TxState | None:
        """The transaction of this thread or task, if one is open."""
        tx = self._mi_current.get()
        return tx if tx is not None and not tx.done else None

    def snapshot(self) -> int:
        """Write a snapshot of the committed state now; returns the seq it covers.

        Objects no longer reachable from the root are forgotten first (a
        ``gc`` event), so the snapshot holds exactly the reachable graph.
        """
        self._check_writable()
        with self._lock, paused_gc():
            if self._mi_busy is not None:
                raise reentered(self._mi_busy)
            started = time.perf_counter()
            graph = self._graph
            while True:
                # Describe the reachable graph first: it is the state after the gc event
                # (which forgets only unreachable objects), so one traversal serves both.
                if graph.has_gone:
                    self._strip_removed()  # placeholders a refresh met: a snapshot holds no dangling ids
                seq = self._seq + 1
                report = None
                if self._progress is not None:
                    report = _phase_reporter(self._progress, "snapshot", graph.live_count())
                payload, count, reachable = graph.snapshot_payload(seq, report)
                # the gc event's collection forgets what the snapshot did not reach (nothing if it reached all)
                graph.collect_hint = reachable if count < graph.live_count() else bytearray()
                try:
                    if self._commit_events([(_GC, None, ())], None, replan=True, auto_snapshot=False):
                        break
                finally:
                    graph.collect_hint = None
            ts = _now_us()
            self._store.write_snapshot(SnapshotRow(seq, ts, payload, snapshot_checksum(seq, ts, payload)))
            self._snapshot_seq = seq
            if self._progress is not None:
                count = graph.live_count()
                self._progress("snapshot", count, count)
            log.info("snapshot at seq %d: %d bytes in %.3fs", seq, len(payload), time.perf_counter() - started)
            return seq

    def refresh(self) -> int:
        """Apply events appended by other processes since the last read; returns how many."""
        self._check_open()
        with self._lock:
            if self._mi_busy is not None:
                raise reentered(self._mi_busy)
            return self._catch_up()

    def wait(self, timeout: float | None = None) -> int:
        """Block until another process commits, then apply its events; returns how many.

        Returns 0 if *timeout* seconds pass first. On PostgreSQL the wait is
        woken by LISTEN/NOTIFY; other stores poll cheaply.
        """
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return 0
            if self._store.wait_for_change(self._seq, left):
                applied = self.refresh()
                if applied:
                    return applied

    def follow(self) -> threading.Thread:
        """Apply other processes' commits in a background thread, as they happen.

        The thread stops when the image is closed. Readers never see a
        partially applied transaction.
        """
        self._check_open()
        if self._follower is not None and self._follower.is_alive():
            return self._follower

        def run() -> None:
            while not self._closed:
                try:
                    self.wait(0.5)
                except memimg_errors.ClosedError:
                    return
                except Exception as err:  # keep following; report once per failure
                    if self._closed:
                        return
                    log.warning("follower of %s: %s", self._store.description, err)
                    time.sleep(0.5)

        self._follower = threading.Thread(target=run, name=f"memimg-follow-{id(self):x}", daemon=True)
        self._follower.start()
        return self._follower

    def events(self, since: int = 0) -> Iterator[Event]:
        """The committed events with ``seq > since``, in log order (checksums verified)."""
        self._check_open()
        for row in self._store.read(after=since):
            r = EventRow(*row)
            verify_event(r)
            yield Event.from_row(r)

    def close(self) -> None:
        """Close the store. Objects stay readable; changing them raises :class:`ClosedError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            follower = self._follower
        if follower is not None and follower is not threading.current_thread():
            follower.join(timeout=5)
        with self._lock:
            self._store.close()

    def __enter__(self) -> MemoryImage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"seq {self._seq}"
        return f"<memimg.MemoryImage {self._store.description} {state}>"

    # -- checks -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the image {self._store.description} is closed; open it again with memimg.open")

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise ReadOnlyError(
                f"the image {self._store.description} was opened with readonly=True; nothing was changed"
            )

    # -- recovery ---------------------------------------------------------------

    def _recover(self) -> None:
        store, graph = self._store, self._graph
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
                warnings.warn(f"skipping snapshot at seq {info.seq}: {err}", stacklevel=3)
                skipped.append(f"snapshot at seq {info.seq} was skipped: {err}")
                continue
            snap = None  # type: ignore[assignment]  # the records hold what is still needed
            try:
                graph.load_snapshot({**header, "objects": records})
            except CorruptLogError as err:
                if err.seq is not None:
                    raise
                raise CorruptLogError(
                    f"snapshot at seq {info.seq} cannot be loaded: {err}", seq=info.seq, table="memimg_snapshots"
                ) from err
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
        self._seq = self._snapshot_seq = loaded
        head = store.head()
        progress = self._progress
        report = None if progress is None else (lambda seq: progress("replay", seq - loaded, head - loaded))
        expected, last_gc = graph.replay_rows(store.read(after=loaded), loaded + 1, report, store.description)
        if last_gc:
            self._snapshot_seq = last_gc
        self._seq = expected - 1
        if progress is not None:
            progress("replay", self._seq - loaded, self._seq - loaded)

    def _check_schema(self) -> None:
        report = self._graph.report
        if not report.differences:
            return
        if self._on_schema_drift == "drop":
            for line in report.differences:
                log.warning("schema drift in %s, dropped: %s", self._store.description, line)
            return
        lines = "\n".join(f"  - {d}" for d in report.differences)
        message = (
            f"the schema stored in {self._store.description} differs from the code in ways the code does "
            f"not declare; nothing was changed:\n{lines}\nDeclare each change as shown, or open with "
            'on_schema_drift="drop" to drop what the code does not declare.'
        )
        if report.unknown_types:
            raise UnknownTypeError(message, type_name=report.unknown_types[0], differences=list(report.differences))
        raise SchemaError(message, differences=list(report.differences))

    def _strip_removed(self) -> None:
        """Clean placeholders of removed types out of the graph, as events, so later replays agree.

        Read-only, placeholders met by a refresh stay until a writer logs
        their clean-up: cleaning them in memory alone would make later events
        (list indexes) land on the wrong elements.
        """
        if self._readonly or self._stripping:
            return
        with self._lock, paused_gc():
            self._stripping = True
            try:
                while True:
                    events = self._graph.strip_gone()
                    try:
                        if not events or self._commit_events(events, None, replan=True, auto_snapshot=False):
                            break
                    except BaseException:
                        self._graph.has_gone = True  # still there: try again after the next refresh
                        raise
            finally:
                self._stripping = False

    def _attach_fills(self) -> None:
        """Attach the objects replay filled in where the log stored no value, logging them.

        A field added to a class since its objects were stored gets its
        default when they are read, and an upgrader may make new values; when
        such a value holds objects (a factory's ``list``, a new entity), they
        are attached like any assigned value -- by an ``obj.set`` event per
        field, so they get ids in log order and every reader, follower and
        later snapshot agrees. A read-only image cannot log: it attaches them
        in memory only (tracked, without ids), so writing to them raises
        :class:`ReadOnlyError` like any write, and a writer's events replace
        them.
        """
        graph = self._graph
        if not graph.fills or self._filling:
            return
        with self._lock, paused_gc():
            self._filling = True
            try:
                while True:
                    fills = graph.pending_fills()
                    if not fills:
                        break
                    undo: list[Any] = []
                    try:
                        events: list[Pending] = [
                            (_OBJ_SET, obj, (f, graph.prepare(v, where_field(obj, f), undo))) for obj, f, v in fills
                        ]
                        if self._readonly:  # attached in memory only (entities keep no id): once
                            for _, obj, (f, v) in events:
                                graph.field_set(obj, f, v)
                            graph.fills.clear()
                            break
                        done = self._commit_events(events, None, replan=True, auto_snapshot=False)
                    except BaseException:
                        graph.undo(undo)
                        raise
                    if not done:
                        graph.undo(undo)  # another writer came first: its events may have replaced some
            finally:
                self._filling = False

    def _create_root(self, factory: Callable[[], Any]) -> None:
        if self._readonly:
            raise MemimgError(f"{self._store.description} holds no image yet, and it was opened read-only")
        obj = factory() if callable(factory) else factory
        shape = self._graph.codec.classify(type(obj))
        if shape not in (_codec.ENTITY, _codec.PLAIN, _codec.TRACKED):
            raise TypeError(
                f"the root must be a @persistent object or a dict, list or set, not {type(obj).__qualname__}"
            )
        with self._lock, paused_gc():
            undo: list[Any] = []
            obj = self._graph.prepare(obj, "root", undo)
            try:
                done = self._commit_events([(_ROOT, obj, ())], None, replan=True)
            except BaseException:
                self._graph.undo(undo)
                raise
            if not done:  # another process created the root first: use theirs
                self._graph.undo(undo)

    # -- the owner protocol (called by tracked objects) ---------------------------

    def _mi_set_field(self, obj: Any, name: str, value: Any) -> None:
        """A field set outside any transaction: its own committed transaction.

        Inside one, the entity's ``__setattr__`` hands the set to the
        transaction directly (the hot path) and never calls this.
        """
        with self._lock:
            if self._mi_busy is not None:
                raise reentered(self._mi_busy)
            self._check_writable()
            if type(value) in _NATIVE and (type(value) is not str or value.isascii()):
                self._commit_events([(_OBJ_SET, obj, (name, value))], None)
                return
            # one pause of the collector for attaching and committing: what they create is
            # traversed by one collection afterwards, not by one after each
            with paused_gc():
                undo: list[Any] = []
                self._mi_busy = "attaching a value"
                try:
                    v = self._graph.prepare(value, where_field(obj, name), undo)
                finally:
                    self._mi_busy = None
                try:
                    self._commit_events([(_OBJ_SET, obj, (name, v))], None)
                except BaseException:
                    self._graph.undo(undo)
                    raise

    def _mi_del_field(self, obj: Any, name: str) -> None:
        info_getter = self._graph_getter(obj, name)
        tx = self._mi_current.get()
        if tx is not None and not tx.done:
            tx.del_field(obj, name, info_getter)
            return
        with self._lock:
            if self._mi_busy is not None:
                raise reentered(self._mi_busy)
            self._check_writable()
            while True:
                info_getter(obj)  # AttributeError when unset (again after catching up), as for any attribute
                if self._commit_events([(_OBJ_DEL, obj, (name,))], None, replan=True):
                    return

    def _graph_getter(self, obj: Any, name: str) -> Callable[[Any], Any]:
        return _types.info_of(type(obj)).getters[name]  # type: ignore[union-attr]

    def _mi_mutate(self, coll: Any, planner: Planner, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tx = self._mi_current.get()
        if tx is not None and not tx.done:
            return tx.mutate(coll, planner, args, kwargs)
        graph = self._graph
        # the collector is paused from the first value that needs attaching through the commit
        # (one collection afterwards, see _mi_set_field), or for the commit of a big plan; not
        # around the planner's work before (a user's sort key or __eq__ may make cyclic garbage),
        # nor across a replan
        with self._lock, lazy_pause() as pause:
            if self._mi_busy is not None:
                raise reentered(self._mi_busy)
            self._check_writable()
            args = reusable_args(planner, args, kwargs)  # a replan must see the same items again
            while True:
                undo: list[Any] = []

                def prep(value: Any, where: str, undo: list[Any] = undo) -> Any:
                    if type(value) in _NATIVE and (type(value) is not str or value.isascii()):
                        return value
                    pause.start()
                    return graph.prepare(value, where_coll(coll) + where, undo)

                try:
                    self._mi_busy = "planning a change"  # the planner runs keys' __hash__ and __eq__, sort keys
                    try:
                        planned, result = planner(coll, prep, *args, **kwargs)
                    finally:
                        self._mi_busy = None
                    if not planned:
                        graph.undo(undo)
                        break
                    if not pause.on and _sizeable(planned):
                        pause.start()
                    events: list[Pending] = [(KINDS[name], coll, eargs) for name, eargs in planned]
                    done = self._commit_events(events, None, replan=True)
                except BaseException:
                    graph.undo(undo)
                    raise
                if done:
                    break
                graph.undo(undo)  # another process committed first: plan again on its state
                pause.stop()  # the replan's own work runs with the collector on
        return coll if result is SELF else result

    def _mi_published_field(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any:
        for state in list(self._mi_publishing):
            v = state.published_field(obj, name)
            if v is not ABSENT:
                return v
        return getter(obj)

    def _mi_published_coll(self, coll: Any, method: str, args: tuple[Any, ...]) -> Any:
        for state in list(self._mi_publishing):
            view = state.views.get(id(coll))
            if view is not None:
                return view.call(method, args)
        return _raw(type(coll), method)(coll, *args)

    # -- ending transactions ----------------------------------------------------

    def _end_tx(self, state: TxState, *, commit: bool) -> None:
        if state.busy is not None:  # ended by user code the transaction runs while it plans a change
            raise reentered(state.busy)
        if self._mi_current.get() is state:
            self._mi_current.set(None)
            self._mi_savepoint.set(None)
        try:
            if commit and state.events:
                with self._lock:
                    if self._mi_busy is not None:
                        raise reentered(self._mi_busy)
                    self._check_writable()
                    events = state.pending()
                    self._validate(state, events)
                    try:
                        self._commit_events(events, state)
                    except BaseException:
                        state.discard()
                        raise
                state.clear()
            else:
                state.discard()
        finally:
            if not state.done:
                state.discard()
            with self._lock:
                self._open_txs.discard(state)
                self._prune()
            _tracking.tx_closed()

    # -- the commit protocol --------------------------------------------------------

    def _commit_events(
        self, events: list[Pending], state: TxState | None, *, replan: bool = False, auto_snapshot: bool = True
    ) -> bool:
        """Append *events* and apply them; see the module docstring.

        With *replan*, returns ``False`` instead of retrying when another
        writer got there first (the caller plans again on the new state).
        Must be called with the lock held.

        A transaction's commit pauses the collector (its records and applied
        events may be many); a mutation outside one does not pay for a pause
        here (~0.7 µs): its caller holds one whenever it attaches objects.
        """
        if state is None:
            return self._commit_loop(events, state, replan, auto_snapshot)
        with paused_gc():
            return self._commit_loop(events, state, replan, auto_snapshot)

    def _commit_loop(self, events: list[Pending], state: TxState | None, replan: bool, auto_snapshot: bool) -> bool:
        graph, store = self._graph, self._store
        while True:
            ts = _now_us()
            try:
                rows = graph.encode_events(events, self._seq + 1, ts)
                store.append(rows, self._seq)
            except SeqTaken:
                graph.rollback_encode()
                graph.collect_hint = None  # describes this graph before the catch-up, not another writer's gc
                if not self._catch_up() and (head := store.head()) < self._seq:
                    # nothing to catch up with and never the expected head: retrying would loop for ever
                    raise CorruptLogError(
                        f"the log of {store.description} ends at seq {head}, before this image's seq "
                        f"{self._seq}: events were removed from it while the image was open; nothing was "
                        "written. Open the image again (or restore the log from a backup)",
                        seq=self._seq,
                        table="memimg_events",
                    ) from None
                if replan:
                    return False
                if state is not None:
                    self._validate(state, events)
                continue
            except BaseException as err:
                graph.rollback_encode()
                if isinstance(err, MemimgError):
                    raise
                if isinstance(err, Exception):
                    raise MemimgError(f"writing to {store.description} failed: {err}; nothing was changed") from err
                raise
            break
        self._apply(events, rows, state)
        if auto_snapshot:
            self._after_commit()
        return True

    def _apply(
        self, events: list[Pending], rows: list[Any], state: TxState | None, last_seq: int | None = None
    ) -> None:
        """Apply appended events to the committed graph, all at once for every reader.

        The writes are recorded for conflict checks and the seq moved *first*,
        so a transaction elsewhere that reads what is being changed gets a
        ConflictError rather than half of it; readers outside transactions are
        shown the finished result (publishing) while the objects change.
        """
        graph = self._graph
        open_txs = self._open_txs
        # from here on the builtin dict and set operations run keys' __hash__ and __eq__
        busy, self._mi_busy = self._mi_busy, "applying committed events"
        published: TxState | None = None
        opened = False
        try:
            if open_txs and (len(open_txs) > 1 or state not in open_txs):
                self._record_writes(events, rows)
            self._seq = rows[-1][0] if last_seq is None else last_seq
            if len(events) > 1:
                if state is None:  # a single mutation of several events, or another process's commit
                    _tracking.tx_opened()
                    opened = True
                    state = TxState(self, self._seq)
                    for k, target, args in events:
                        k.apply(state, target, *args)
                if _tracking.enabled():
                    for view in state.views.values():
                        if type(view) is ListView:
                            view.freeze()  # its base is about to grow under it
                    self._mi_publishing.append(state)
                    published = state
            for k, target, args in events:
                k.apply(graph, target, *args)
        except BaseException as err:  # the log has it; memory must not silently differ
            self._closed = True
            if isinstance(err, Exception):
                raise MemimgError(
                    f"applying committed events {rows[0][0]}..{rows[-1][0]} failed ({err!r}); the "
                    "log is intact but this image is now closed: open it again"
                ) from err
            raise
        finally:
            self._mi_busy = busy
            if published is not None:
                self._mi_publishing.remove(published)
            if opened:
                _tracking.tx_closed()

    def _after_commit(self) -> None:
        every = self._snapshot_every
        if every is None or self._readonly:
            return
        if every == "auto":
            every = max(DEFAULT_SNAPSHOT_EVERY, len(self._graph.objects))
        if self._seq - self._snapshot_seq >= every:  # type: ignore[operator]
            self._snapshot_seq = self._seq  # no second attempt if this one fails
            try:
                self.snapshot()
            except MemimgError as err:
                log.warning("automatic snapshot failed: %s", err)

    def _catch_up(self) -> int:
        """Apply what other writers appended; returns how many events."""
        busy, self._mi_busy = self._mi_busy, "applying other processes' commits"  # decoding hashes keys
        try:
            count = self._catch_up_rows()
        finally:
            self._mi_busy = busy
        if count:
            self._check_schema()
            if self._graph.has_gone:
                self._strip_removed()
            self._attach_fills()
        return count

    def _catch_up_rows(self) -> int:
        batch: list[EventRow] = []
        count = 0
        with lazy_pause() as pause:  # the collector paused only if there is something to apply
            for row in self._store.read(after=self._seq):
                pause.start()
                r = EventRow(*row)
                expected = self._seq + len(batch) + 1
                if r.seq != expected:
                    raise CorruptLogError(
                        f"event seq {expected} is missing (the next is {r.seq})", seq=expected, table="memimg_events"
                    )
                verify_event(r)
                if batch and r.tx != batch[0].tx:
                    self._apply_remote(batch)
                    count += len(batch)
                    batch = []
                batch.append(r)
            if batch:
                self._apply_remote(batch)
                count += len(batch)
        return count

    def _apply_remote(self, rows: list[EventRow]) -> None:
        graph = self._graph
        decoded = [(graph.decode_row(r.kind, r.target, r.payload, r.seq), r) for r in rows]
        kept = [(e, r) for e, r in decoded if e is not None]
        last_seq = rows[-1].seq
        if kept:
            self._apply([e for e, _ in kept], [r for _, r in kept], None, last_seq)
        else:
            self._seq = last_seq
        if any(r.kind == "gc" for r in rows):
            self._snapshot_seq = last_seq

    # -- conflict detection ---------------------------------------------------------

    def _record_writes(self, events: list[Pending], rows: list[EventRow]) -> None:
        last, last_obj = self._last, self._last_obj
        for (k, _target, args), row in zip(events, rows):
            rule = k.conflict
            if rule == NONE:
                continue
            oid, seq = row[4], row[0]
            keys: list[tuple[int, Any]]
            if rule in (FIELD, KEY):
                keys = [(oid, args[0])]
            elif rule == PAIRS:
                keys = [(oid, p[0]) for p in args[0]]
            elif rule == MEMBERS:
                keys = [(oid, m) for m in args[0]]
            elif rule == WHOLE:
                keys = [(oid, WHOLE_KEY)]
            else:
                keys = []
            for key in keys:
                last[key] = seq
            last_obj[oid] = seq
            self._recent.append((seq, oid, keys))

    def _prune(self) -> None:
        if not self._open_txs:
            self._last.clear()
            self._last_obj.clear()
            self._recent.clear()
            return
        horizon = min(t.start_seq for t in self._open_txs)
        recent, last, last_obj = self._recent, self._last, self._last_obj
        while recent and recent[0][0] <= horizon:
            seq, oid, keys = recent.popleft()
            for key in keys:
                if last.get(key) == seq:
                    del last[key]
            if last_obj.get(oid) == seq:
                del last_obj[oid]

    def _conflict(self, oid: int, key: Any, seq: int, what: str) -> ConflictError:
        obj = self._graph.objects[oid] if oid < len(self._graph.objects) else None
        name = type(obj).__qualname__ if obj is not None else "object"
        if key is WHOLE_KEY:
            part = f"{name} #{oid}"
        elif isinstance(key, str) and obj is not None and not isinstance(obj, (list, dict, set)):
            part = f"{name} #{oid}.{key}"
        else:
            part = f"{name} #{oid}[{value_repr(key)}]"
        return ConflictError(
            f"transaction conflicts with the commit at seq {seq}: it {what} {part}, which that "
            "commit changed; nothing was applied. Run it again (@img.transaction(retries=...) does)",
            target=oid,
            key=None if key is WHOLE_KEY else key,
            seq=seq,
        )

    def _check_read(self, state: TxState, oid: int, sub: Any) -> None:
        start = state.start_seq
        if sub is WHOLE_KEY:
            seq = self._last_obj.get(oid, 0)
        else:
            seq = max(self._last.get((oid, sub), 0), self._last.get((oid, WHOLE_KEY), 0))
        if seq > start:
            raise self._conflict(oid, sub, seq, "read")

    def _validate(self, state: TxState, events: list[Pending]) -> None:
        start = state.start_seq
        if self._seq == start:
            return
        busy, self._mi_busy = self._mi_busy, "checking a transaction for conflicts"  # keys are hashed and compared
        try:
            self._check_against(state, events, start)
        finally:
            self._mi_busy = busy

    def _check_against(self, state: TxState, events: list[Pending], start: int) -> None:
        for oid, sub in state.reads:
            self._check_read(state, oid, sub)
        last, last_obj = self._last, self._last_obj
        for k, target, args in events:
            if target is None:
                continue
            oid = target._mi_oid
            if oid is None:
                continue
            rule = k.conflict
            if rule == FIELD:
                seq = last.get((oid, args[0]), 0)
                key = args[0]
            elif rule in (KEY, PAIRS, MEMBERS):
                subs = [args[0]] if rule == KEY else [p[0] for p in args[0]] if rule == PAIRS else args[0]
                whole = last.get((oid, WHOLE_KEY), 0)
                seq, key = whole, WHOLE_KEY
                for sub in subs:
                    s = last.get((oid, sub), 0)
                    if s > seq:
                        seq, key = s, sub
            elif rule == APPEND:
                seq, key = last.get((oid, WHOLE_KEY), 0), WHOLE_KEY
            elif rule == WHOLE:
                seq, key = last_obj.get(oid, 0), WHOLE_KEY
            else:
                continue
            if seq > start:
                raise self._conflict(oid, key, seq, "wrote")
