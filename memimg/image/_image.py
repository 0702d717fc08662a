"""The memory image: a live object graph kept durable by a log of its mutations.

:class:`MemoryImage` is what ``memimg.open`` returns: the public face of an
image. The machinery -- the object table, the commit protocol, recovery --
is its :class:`~memimg.image._engine.Engine`; see that module for how one
commit goes, and :mod:`memimg.image._recovery` for how an image is opened.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Set
from typing import Any, Final, TypeVar

from memimg._errors import ClosedError, CorruptLogError, SchemaError, UnknownTypeError
from memimg.core import _types
from memimg.core._diff import Diff, compare
from memimg.core._history import Change
from memimg.core._meta import check_meta, read_events
from memimg.core._rows import Event
from memimg.core._schema import SchemaReport
from memimg.core._values import Converter
from memimg.core._values import converter as default_converter
from memimg.image import _changes, _erase, _feeds, _history, _past, _query, _recovery
from memimg.image._annotate import Annotation
from memimg.image._engine import Engine
from memimg.image._erase import Erasure
from memimg.image._feeds import Commit, Subscription
from memimg.image._transaction import Transaction, TxScope, begin
from memimg.stores._protocol import Store

__all__ = ["MemoryImage", "diff_past", "open_past"]

log = logging.getLogger("memimg")

#: ``close()`` waits this long at most, in all, for change-feed callbacks running in other threads and for the
#: image's threads (the follower, a background snapshot once it is written) to stop.
CLOSE_SECONDS: Final = 5.0

T = TypeVar("T")


class MemoryImage:
    """A live object graph kept durable by a log of its mutations.

    Create one with :func:`memimg.open`. The root object is :attr:`root`;
    every object reachable from it is part of the image, and every change to
    them is committed to the log before the mutating call returns (or at the
    end of the enclosing :meth:`transaction`).
    """

    __module__ = "memimg"
    #: _mi_current in a slot: the compiled accelerator reads it where it is (memimg/model/_speedups.c)
    __slots__ = ("__dict__", "__weakref__", "_mi_current")

    def __init__(
        self,
        store: Store,
        *,
        root: Callable[[], Any] = dict,
        converter: Converter | None = None,
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
        engine = self._engine = Engine(
            store,
            self,
            converter=converter or default_converter,
            snapshot_every=snapshot_every,
            readonly=readonly,
            progress=progress,
            removed_types=frozenset(removed_types),
            on_schema_drift=on_schema_drift,
            generic_types=generic_types,
        )
        #: the owner protocol the model calls (``memimg.model._base.Owner``): the writer of this context
        self._mi_current = engine._mi_current
        self._follower: threading.Thread | None = None
        _recovery.open_image(engine, root, generic_types=generic_types)  # the position waits for a move

    # -- state ------------------------------------------------------------------

    @property
    def root(self) -> Any:
        """The root object."""
        return self._engine.table.root

    @property
    def seq(self) -> int:
        """The seq of the last event applied to this image (0 when empty)."""
        return self._engine.seq

    @property
    def store(self) -> Store:
        """The store holding the log."""
        return self._engine.store

    @property
    def converter(self) -> Converter:
        """The cattrs converter that encodes this image's values."""
        return self._engine.table.codec.converter

    @property
    def schema_report(self) -> SchemaReport:
        """What reading the log under the current classes found and did (see schema evolution)."""
        return self._engine.reader.report

    @property
    def readonly(self) -> bool:
        """Whether writes are refused (``open(..., readonly=True)``)."""
        return self._engine.readonly

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._engine.closed

    # -- transactions -----------------------------------------------------------

    def transaction(self, meta: dict[str, Any] | None = None, retries: int = 0) -> TxScope:
        """A transaction, as a context manager or a decorator.

        ``with img.transaction():`` commits on normal exit and discards on an
        exception (which propagates). Nested, it is a savepoint. As a
        decorator (``@img.transaction(retries=5)``) it runs the function in a
        transaction and reruns it, up to *retries* times with a short
        randomized backoff, when the commit raises :class:`ConflictError`.

        *meta* -- who made the change and why, say ``{"user": "ada"}`` -- is
        stored once with the commit (over the annotations in effect, see
        :meth:`annotate`) and read back as :attr:`Event.meta`. Its keys are
        str, its values JSON scalars (str, int within +-(2**53 - 1), finite
        float, bool, None), 4 KiB at most as JSON. A savepoint's *meta* is
        merged over the enclosing transaction's when the savepoint is kept.

        Raises:
            UnsupportedValueError: *meta* is not such a dict (nothing is written).
        """
        return TxScope(self._engine, retries, check_meta(meta) if meta is not None else None)

    def begin(self, meta: dict[str, Any] | None = None) -> Transaction:
        """Open a transaction (a savepoint if one is already open in this thread or task).

        Commit it with ``save()``, roll it back with ``discard()``. *meta* as
        for :meth:`transaction`.

        Raises:
            UnsupportedValueError: *meta* is not a dict of JSON scalars, or too large.
        """
        return begin(self._engine, check_meta(meta) if meta is not None else None)

    def annotate(self, **meta: Any) -> Annotation:
        """A context manager: every commit made in this thread or task while it is active carries *meta*.

        Commits outside transactions carry it; a transaction carries it when
        it makes a change while the block is active (under its own ``meta``),
        even if it commits after the block exited -- a block during which the
        transaction changed nothing lends it nothing; so do commits retried
        after a conflict. Nested blocks merge, the inner
        winning. An asyncio task started inside the block inherits it (as it
        inherits every context variable); a new thread does not. Values as
        for :meth:`transaction`'s ``meta``. The Flask and Django integrations
        annotate each request.

        Raises:
            UnsupportedValueError: a value is not a JSON scalar, or the merged metadata is
                over 4 KiB (nothing is written).
        """
        return Annotation(self._engine, meta)

    # -- the log ----------------------------------------------------------------

    def snapshot(self) -> int:
        """Write a snapshot of the committed state now; returns the seq it covers.

        The snapshot is the state after a ``snapshot`` event this call
        commits; it is written a slice at a time, so other threads' commits
        go on meanwhile. Objects unreachable from the root then are
        forgotten (a ``gc.drop`` event), so the snapshot holds the reachable
        graph. If another process is writing a snapshot of the same log,
        this waits for it to finish first (a minute at most).

        Raises:
            LockedError: another process's snapshot went on for over a minute.
        """
        seq = self._engine.snapshots.take()
        assert seq is not None
        return seq

    def refresh(self) -> int:
        """Apply events appended by other processes since the last read; returns how many."""
        engine = self._engine
        engine.check_open()
        try:
            with engine.lock:
                applied = engine.catch_up()
        finally:
            if engine.writer.feed is not None:
                engine.writer.feed.drain()
        return applied

    def wait(self, timeout: float | None = None) -> int:
        """Block until another process commits, then apply its events; returns how many.

        Returns 0 if *timeout* seconds pass first. On PostgreSQL the wait is
        woken by LISTEN/NOTIFY; other stores poll cheaply.
        """
        engine = self._engine
        engine.check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return 0
            if engine.store.wait_for_change(engine.seq, left):
                applied = self.refresh()
                if applied:
                    return applied

    def follow(self) -> threading.Thread:
        """Apply other processes' commits in a background thread, as they happen.

        The thread stops when the image is closed. Readers never see a
        partially applied transaction.
        """
        engine = self._engine
        engine.check_open()
        if self._follower is not None and self._follower.is_alive():
            return self._follower

        def run() -> None:
            _feeds.contain_callbacks()  # a callback's KeyboardInterrupt here does not stop the follower
            while not engine.closed:
                try:
                    self.wait(0.5)
                except ClosedError:
                    return
                except Exception as err:  # keep following; report once per failure
                    if engine.closed:
                        return
                    log.warning("follower of %s: %s", engine.store.description, err)
                    time.sleep(0.5)

        self._follower = threading.Thread(target=run, name=f"memimg-follow-{id(self):x}", daemon=True)
        self._follower.start()
        return self._follower

    # -- change feeds -------------------------------------------------------------

    def subscribe(self, callback: Callable[[Commit], Any], to: Any = None) -> Subscription:
        """Call *callback* with each later commit that changes what *to* names; returns the subscription.

        *to* is an object of this image (an entity or a tracked collection:
        the changes whose target it is), ``(entity, "field")`` (the changes
        of that field), a persistent class (the changes of every object of
        it, subclasses included) or ``None`` (every change). *callback* gets
        a :class:`memimg.Commit` holding only the matching changes, for each
        commit -- made here, or by another process and applied by
        :meth:`refresh`, :meth:`follow`, :meth:`wait` or the start of a
        transaction -- that has some: after the commit is durable and
        applied, in seq order, once, outside the image's lock. A callback may
        read and write the image; its own commits are delivered after it
        returns. An exception it raises is logged (logger ``memimg``) and
        changes nothing else. See the "Change feeds" guide for the details.

        ``close()`` the subscription to stop, or use it as a context manager.

        Raises:
            TypeError: *callback* is not callable.
            MemimgError: *to* is an object of another image or not attached yet, a field its class does not
                have, or a class that is not persistent.
        """
        return _feeds.subscribe(self._engine, callback, to)

    def changes(self, since: int = 0, timeout: float | None = None) -> Iterator[Commit]:
        """Every commit after seq *since*, as a :class:`memimg.Commit` of all its changes: first those the log
        holds, then new ones as they are applied; blocks between them.

        Resumable: a consumer that stores the ``seq`` of the last commit it
        handled and passes it as *since* after a restart loses nothing and
        sees nothing twice. The iteration ends when no commit arrives for
        *timeout* seconds (``None``: never); the image follows the log
        (:meth:`follow`) so that other processes' commits arrive. Commits
        read back from the log have ``local=False``. The checks are made at
        the call.

        Raises:
            ValueError: *since* is not an int >= 0, or *timeout* is negative.
            HistoryError: *since* is past the head of the log, or the events after it were compacted away.
        """
        return _changes.changes(self, since, timeout)

    def changes_async(self, since: int = 0, *, buffer: int = _changes.BUFFER) -> AsyncIterator[Commit]:
        """:meth:`changes` for asyncio: ``async for commit in img.changes_async(since=seq)``.

        No polling: commits are handed to the event loop by the threads that
        deliver them (other processes' commits by the thread of
        :meth:`follow`, woken by the store -- LISTEN/NOTIFY on PostgreSQL).
        The writer never waits for a slow consumer: at most *buffer* commits
        are kept for it; past that, later ones are not, and the consumer --
        once it has taken those kept -- is told (a warning on logger
        ``memimg``) and resumes from the seq of the last commit it was given,
        reading the ones it missed back from the log. The checks are made at
        the first iteration.

        Raises:
            ValueError: *since* is not an int >= 0, or *buffer* is not an int >= 1.
            HistoryError: *since* is past the head of the log, or the events after it were compacted away.
        """
        return _changes.changes_async(self, since, buffer)

    def events(self, since: int = 0) -> Iterator[Event]:
        """The committed events with ``seq > since``, in log order (checksums verified).

        Each carries its transaction's metadata (:attr:`Event.meta`). The log
        is read as the events are consumed.
        """
        engine = self._engine
        engine.check_open()
        return read_events(engine.store.read, since)

    # -- querying -----------------------------------------------------------------

    def all(self, cls: type[T]) -> Set[T]:
        """The instances of ``@persistent`` class *cls* (subclasses included) the image holds: a live view.

        A read-only :class:`collections.abc.Set`: ``len`` (O(1)), ``in``,
        iteration, comparisons and the set operators (which give a plain
        ``set``); ``add``, ``discard`` and the other mutators raise
        :class:`TypeError`. Every read sees the image as it is then:
        commits, refreshes, replay at open and schema upgrades are in it.
        Inside a transaction it also holds the objects the transaction
        attached. An object made unreachable stays in it until the next
        snapshot (automatic, or :meth:`snapshot`) collects it.

        Raises:
            TypeError: *cls* is not a ``@persistent`` class.
            ClosedError: the image is closed (also when the view is read later).
        """
        self._engine.check_open()
        _query.entity_class(cls, "img.all")
        return _query.Extent(self._engine, cls)

    def find(self, cls: type[T], /, **equalities: Any) -> list[T]:
        """The instances in :meth:`all` of *cls* whose fields equal *equalities*, as a list in no particular order.

        ``img.find(Order, status="open", customer=ada)`` compares with
        ``==`` (as dict keys are: ``1`` matches ``1.0`` and ``True``; an
        entity equals only itself); an unset field matches nothing. With an
        equality on an indexed field (``memimg.field(index=True)`` or
        ``unique=True``) it costs the size of the result; otherwise it scans
        the extent. Fields are read as this thread reads them: inside a
        transaction, with the transaction's own writes.

        Raises:
            TypeError: *cls* is not a ``@persistent`` class, or has no field
                named so (the message names the class and the field).
            ConflictError: inside a transaction, a field read was changed by
                a newer commit (as any read would be).
            ClosedError: the image is closed.
        """
        return _query.find(self._engine, cls, equalities)

    def get(self, cls: type[T], /, **key: Any) -> T | None:
        """The one instance of *cls* (subclasses included) whose unique field equals the value given, or None.

        ``img.get(User, email="ada@x.io")`` looks the value up in the
        field's index (``memimg.field(unique=True)``): O(1). Inside a
        transaction it sees the transaction's own writes. Like
        :meth:`find`, it may return an instance made unreachable that no
        snapshot has collected yet, unless a reachable one holds the value.

        Raises:
            TypeError: *cls* is not a ``@persistent`` class, or *key* is not
                exactly one of its unique fields (the message names them).
            ValueError: the value given is ``None``, which any number of
                instances may hold (use :meth:`find` for them).
            ClosedError: the image is closed.
        """
        return _query.get(self._engine, cls, key)  # type: ignore[no-any-return]

    # -- the past ---------------------------------------------------------------

    def at(
        self, seq: int | None = None, *, time: datetime.datetime | None = None, on_schema_drift: str | None = None
    ) -> MemoryImage:
        """A read-only image of the state after event *seq*, or after the last commit at or before *time*.

        The past image has the same classes and distinct objects; it is
        frozen at that seq (it never catches up), every write to it raises
        :class:`ReadOnlyError`, and it is a context manager (closing it
        leaves this image open). Without arguments, the state at this
        image's :attr:`seq`. It is loaded from the newest snapshot at or
        before the seq plus the events up to it, as opening the image at
        that seq would be. A seq inside a transaction gives the state after
        part of it, as the log holds it (no reader of a live image saw it).
        Objects of a type no loaded class claims (a class deleted after
        ``memimg.migrate``) are read into generic stand-ins, and those of
        this image's ``removed_types`` are left out, as a writer leaves them.

        Args:
            seq: an event's seq, from the oldest one kept to the log's head.
            time: an aware :class:`datetime.datetime`: the state after the
                last commit at or before it (see the history guide for logs
                written by several clocks).
            on_schema_drift: as :func:`memimg.open` (default: this image's);
                ``"drop"`` reads states older than an upgrader the code no
                longer has.

        Raises:
            HistoryError: the seq or time is before what the log keeps (a
                compaction dropped it; the error names the oldest available
                seq), before the first commit, past the head, or in the future.
            SchemaError: the stored schema at that seq differs from the code
                in ways it does not declare (the message says what to do).
            TypeError: not an int seq or a datetime, or both given.
            ValueError: a negative seq or a naive datetime.
        """
        engine = self._engine
        engine.check_open()
        target = _past.resolve(engine.store, self.seq if seq is None and time is None else seq, time)
        return self._past(target, on_schema_drift)

    def diff(self, a: int, b: int | None = None, *, on_schema_drift: str | None = None) -> Diff:
        """What changed from the state after seq *a* to the state after seq *b* (default: this image's seq).

        A :class:`memimg.Diff` of :class:`memimg.Difference` records, one
        per changed entity field, dict key, list (whole) and set member,
        each at the shortest path from the root of the object holding it
        (see the history guide for the exact rules). Computed from the two
        states (:meth:`at`, which takes *on_schema_drift* too), object by
        object id; both seqs are checked before either state is read.

        Raises:
            HistoryError, SchemaError, TypeError, ValueError: as :meth:`at`, for either seq.
        """
        engine = self._engine
        engine.check_open()
        store = engine.store
        a = _past.check_seq(store, a)
        b = _past.check_seq(store, self.seq if b is None else b)
        return diff_past(store, a, b, **self._past_options(on_schema_drift))

    def _past(self, seq: int, on_schema_drift: str | None) -> MemoryImage:
        """The past image of this image's store at *seq* (checked), read with this image's classes and options."""
        return open_past(self._engine.store, seq, **self._past_options(on_schema_drift))

    def _past_options(self, on_schema_drift: str | None) -> dict[str, Any]:
        engine = self._engine
        return {
            "converter": self.converter,
            "removed_types": engine.reader.removed_types,
            "on_schema_drift": engine.on_schema_drift if on_schema_drift is None else on_schema_drift,
            "generic_types": engine.reader.stand_ins is not None,
        }

    def erase(self, obj: Any, field: str | None = None, *, reason: str, by: str | None = None) -> Erasure:
        """Excise every stored past value of ``obj.field`` (every field when ``None``) from the log.

        GDPR-style erasure: in every event and snapshot stored, each value
        the field held before its current one is replaced by
        :data:`memimg.ERASED` (checksums recomputed), and an ``erase`` audit
        event records when, why (*reason*), by whom (*by*), which object and
        fields, and the other objects values of which were erased with it
        (by id) -- never the values. The current value is left alone (set it
        first if it must go too). In a past value, references to objects
        stay (inside tuples and value objects too; everything else in them
        is erased), and the objects they refer to that are no longer
        reachable are erased whole. An object no longer reachable (deleted
        from the graph) has no current value: every stored value of it is
        erased -- pass the object, or its id once a snapshot has forgotten
        it. The lists and dicts the object holds (and those they hold) lose
        the items they no longer hold; a set's members cannot be erased.
        With ``field=None``, values stored under field names the class no
        longer declares go too. Reopening gives the same state; replay,
        ``at`` and ``memimg verify`` show ERASED in the past. On SQLite the
        old bytes are overwritten in the file and the WAL emptied; on
        PostgreSQL run ``VACUUM`` (see docs/history.md).

        Waits for a snapshot being written, by this process or another, to
        finish. The log is read without holding up this image's other
        threads; other writers wait only while the store's write turn is
        held for the commits made meanwhile and the rewrite.

        Args:
            obj: an entity, tracked list or dict of this image, or an object id (an int).
            field: one field (a current one, or a name values are stored under); None: every field.
            reason: why (stored in the audit event; at most 1,000 characters).
            by: who asked (stored in the audit event); None: the ``user`` of the
                :meth:`annotate` blocks active (a web request's user), if any. The
                audit event's transaction carries their whole metadata.

        Returns:
            An :class:`~memimg.Erasure` saying what was and was not erased.

        Raises:
            MemimgError: no reason; *obj* is not an entity, list or dict of
                this image nor the id of an object the log holds; it has no
                field *field*; a set; inside a transaction. Nothing is changed.
            ReadOnlyError: the image is read-only.
            LockedError: another process's snapshot held the store for over a minute.
        """
        engine = self._engine
        try:
            return _erase.erase(engine, obj, field, reason, by)
        finally:
            if engine.writer.feed is not None:  # the commits it caught up with, and its own
                engine.writer.feed.drain()

    def history(self, obj: Any, field: str | None = None, *, since: int = 0, until: int | None = None) -> list[Change]:
        """The changes of *obj* -- an entity, or a tracked list, dict or set -- oldest first.

        Every event that targets *obj* (with *field*: that sets or deletes
        that field) with ``since < seq <= until`` is a :class:`memimg.Change`
        (several for an event that changes several fields or keys), its
        ``old`` the value before it. The cost grows with *obj*'s own events,
        not the log's length. History shows what this image has applied
        (:meth:`refresh` first to see other processes' commits), and not the
        writes of a transaction still open. Values refer to this image's
        objects; one it no longer holds is a :class:`memimg.Collected`.
        Fields renamed since are reported under their current names, and
        values as they were stored (upgraders are not run on them).

        Raises:
            MemimgError: *obj* is not an object of this image (not persistent,
                not attached and committed yet, or another image's), or has no
                field *field*; or its first state is no longer stored.
            ValueError: *since* or *until* is negative, or *since* is past *until*.
        """
        return _history.history(self._engine, obj, field, since, until)

    # -- closing ----------------------------------------------------------------

    def close(self) -> None:
        """Close the store. Objects stay readable; changing them raises :class:`ClosedError`.

        A snapshot being written in the background is finished first. Then
        the commits queued for change-feed callbacks are delivered while the
        image is still open (a callback may write derived data), and the
        image is closed. Past the snapshot, ``close()`` waits at most
        :data:`CLOSE_SECONDS` (5 s) in all for callbacks running in other
        threads and for the image's threads to stop (then logs a warning:
        a callback still running finishes in its thread, and the commits
        queued after it are delivered there, to callbacks that can no longer
        write).
        """
        engine = self._engine
        if engine.closed:
            return
        snapshots = engine.snapshots
        snapshots.join_write()  # a snapshot being written in the background is finished first
        deadline = time.monotonic() + CLOSE_SECONDS

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        late: list[str] = []
        snapshots.join(left())  # the commits it caught up with delivered
        feed = engine.writer.feed
        if feed is not None and not feed.flush(left()):
            late.append("a change-feed callback")
        with engine.lock:
            if engine.closed:
                return
            engine.closed = True
            follower = self._follower
        if follower is not None and follower is not threading.current_thread():
            follower.join(left())
            if follower.is_alive():
                late.append("the follower thread")
        if not snapshots.join(left()):  # one scheduled since stops at its first slice
            late.append("the snapshot thread")
        feed = engine.writer.feed  # what was applied meanwhile (its callbacks can no longer write)
        if feed is not None and not feed.flush(left()):
            late.append("a change-feed callback")
        if late:
            log.warning(
                "close of %s: %s was still running after %s s; a callback still running finishes in its thread, "
                "and the commits queued after it are delivered there",
                engine.store.description,
                " and ".join(dict.fromkeys(late)),
                CLOSE_SECONDS,
            )
        engine.position.leave()
        with engine.lock:
            engine.store.close()

    def __enter__(self) -> MemoryImage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        engine = self._engine
        state = "closed" if engine.closed else f"seq {engine.seq}"
        return f"<memimg.MemoryImage {engine.store.description} {state}>"


def open_past(
    store: Store,
    seq: int,
    *,
    converter: Converter | None = None,
    removed_types: Iterable[str] = (),
    on_schema_drift: str = "raise",
    generic_types: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> MemoryImage:
    """The read-only image of *store* as of *seq* (a checked seq): ``img.at``'s, and the command line's.

    Ordinary recovery on :class:`~memimg.image._past.PastStore`. A type no
    loaded class claims is read into a generic stand-in (a past state may
    hold objects of a class deleted since, as ``memimg.migrate`` allows);
    stand-ins made so are not left registered under their names, so no
    later ``memimg.open`` reads those types into them.

    Raises:
        HistoryError: the events of *seq* were compacted away while it was read.
        SchemaError: the stored schema differs from the code in ways it does not declare.
    """
    options: dict[str, Any] = {
        "converter": converter,
        "snapshot_every": None,
        "readonly": True,
        "removed_types": removed_types,
        "on_schema_drift": on_schema_drift,
        "progress": progress,
    }
    past = _past.PastStore(store, seq)
    try:
        try:
            return MemoryImage(past, generic_types=generic_types, **options)
        except UnknownTypeError:
            if generic_types:
                raise
        names = _types.names()
        try:
            return MemoryImage(past, generic_types=True, **options)
        finally:
            _types.forget_stand_ins(keep=names)
    except CorruptLogError:
        _past.check_seq(store, seq)  # compacted away while it was read: say so
        raise
    except SchemaError as err:
        if err.upgrader is not None:
            raise
        raise SchemaError(
            f'{err}\nFor a past state, img.at(..., on_schema_drift="drop") and img.diff(..., '
            'on_schema_drift="drop") read it so.',
            differences=err.differences,
        ) from err


def diff_past(store: Store, a: int, b: int, **options: Any) -> Diff:
    """The :class:`Diff` from seq *a* to seq *b* of *store* (both checked), each state read by
    :func:`open_past` with *options*."""
    with open_past(store, a, **options) as old, open_past(store, b, **options) as new:
        return compare(old._engine.table, new._engine.table, a, b)
