"""The engine of an image: its table, its store, and the commit protocol between them.

:class:`Engine` holds the context variable through which the image -- the
owner of every attached object (``obj._mi_img``) -- gives the model, per
thread and asyncio task, the current *writer* (``_mi_current``): the open
:class:`~memimg.image._tx.TxState` while a transaction is open, else the
engine's :class:`~memimg.image._writer.AutoWriter`, which commits each write
by itself. That context variable is the one place where "is there a
transaction?" is decided.

**One commit** (a transaction's events, or a single mutation made outside any
transaction) goes, under the engine's lock:

1. *validate* -- compare what the transaction read and wrote with every
   commit since it began (:class:`~memimg.image._conflicts.ConflictIndex`); a
   stale view raises :class:`ConflictError` and nothing happens;
2. *encode* -- give new objects their ids and turn the events into rows
   (:class:`~memimg.image._encode.EncodeSession`);
3. *append* -- the store appends the rows at ``seq + 1`` only if nobody else
   did; if somebody did, *catch up* (fold their commits in), validate again
   (a single mutation is simply planned again on the new state) and retry;
4. *apply* -- only now change the committed objects, through the same event
   kinds replay uses. While a multi-event transaction is being applied it is
   *published*: readers in other threads see either none of it or all of it.

So a failed append leaves memory exactly as it was, and the log and the
graph never disagree. Planning and applying run user code (keys' ``__hash__``
and ``__eq__``, sort keys): while they do, :attr:`Engine.busy` says so and
every way to change the image refuses (:mod:`memimg.image._guard`).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from memimg._errors import ClosedError, CorruptLogError, MemimgError, ReadOnlyError
from memimg.core import _counters
from memimg.core._codec import Codec
from memimg.core._firststates import FirstStates
from memimg.core._fold import SNAPSHOT_KINDS, fold
from memimg.core._gc import lazy_pause, paused_gc
from memimg.core._indexes import UNIQUE
from memimg.core._kinds import KINDS
from memimg.core._markers import ABSENT
from memimg.core._meta import TX_META, meta_event
from memimg.core._reader import Pending, Reader
from memimg.core._rows import EventRow
from memimg.core._snapshotter import SnapshotWriter
from memimg.core._table import ObjectTable
from memimg.core._values import Converter
from memimg.image import _direct, _recovery, _unique
from memimg.image._attach import Attacher
from memimg.image._bulk import BulkAttacher
from memimg.image._conflicts import ConflictIndex
from memimg.image._encode import EncodeSession
from memimg.image._generic import make_stand_in
from memimg.image._guard import reentered
from memimg.image._position import Position
from memimg.image._snapshots import Snapshots
from memimg.image._tx import Savepoint, TxState
from memimg.image._views import ListView
from memimg.image._writer import AutoWriter
from memimg.model import SHELL, _tracking
from memimg.model._accel import speedups
from memimg.stores._protected import ProtectedStore, refuse_if_rekeyed
from memimg.stores._protocol import SeqTaken, Store

__all__ = ["Engine"]


log = logging.getLogger("memimg")

#: ``snapshot_every="auto"``: snapshot when the events since the last snapshot
#: reach this many, or the number of live objects if that is larger (so the
#: cost of snapshots stays proportional to the cost of the events).
DEFAULT_SNAPSHOT_EVERY: Final = 10_000


#: The longest a commit waits for a snapshot's slice to take the lock first (seconds).
TURN_WAIT: Final = 0.05


_OBJ_ADD: Final = KINDS["obj.add"]
_OBJ_SET: Final = KINDS["obj.set"]
#: the compiled applier of obj.set runs (:meth:`Engine.apply`), or None: the Python loop applies every event
_apply_sets = None if speedups is None else speedups.apply_sets
_OBJ_DEL: Final = KINDS["obj.del"]


def _has_adds(events: list[Pending]) -> bool:
    """Whether *events* add to a counter."""
    return any(e[0] is _OBJ_ADD for e in events)


class Reloading:
    """Published while an image reloads after a compaction: a reader outside transactions waits for the reload
    to finish, then reads the reloaded object (it never sees one emptied and not yet filled)."""

    __slots__ = ("lock", "views")

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.views = self  # read_coll looks a collection up here

    def published_field(self, obj: Any, name: str) -> Any:
        with self.lock:
            return ABSENT

    def get(self, key: Any, default: Any = None) -> Any:
        with self.lock:
            return None


class Engine:
    """The machinery of one image (see the module docstring); :class:`~memimg.MemoryImage` is its face."""

    def __init__(
        self,
        store: Store,
        owner: Any,
        *,
        converter: Converter,
        snapshot_every: int | str | None,
        readonly: bool,
        progress: Callable[[str, int, int], None] | None,
        removed_types: frozenset[str],
        on_schema_drift: str,
        generic_types: bool,
    ) -> None:
        self.store = store
        self.readonly = readonly
        self.snapshot_every = snapshot_every
        self.progress = progress
        self.on_schema_drift = on_schema_drift
        self.lock = threading.RLock()
        self.closed = False
        #: the image: what attached objects hold as their owner (``_mi_img``)
        self.owner = owner
        self.table = ObjectTable(SHELL, Codec(converter, SHELL), owner=owner)
        self.reader = Reader(
            self.table, removed_types=removed_types, stand_ins=make_stand_in if generic_types else None
        )
        self.attacher = Attacher(self.table)
        # a protected store seals the rows and checksums what it stores: the plain rows need no checksum
        self.session = EncodeSession(self.table, checksums=not isinstance(store, ProtectedStore))
        #: the one-walk attach of an assignment outside a transaction (see _bulk)
        self.bulk = BulkAttacher(self.attacher, self.session)
        self.conflicts = ConflictIndex(self.table)
        #: transactions being applied right now (readers outside them see all of one or none)
        self.publishing: list[Any] = []
        #: the writer of this thread or task: its transaction, or the engine's auto-committing writer
        self.writer = AutoWriter(self, self.publishing)
        self._mi_current: contextvars.ContextVar[Any] = contextvars.ContextVar(
            f"memimg_writer_{id(self):x}", default=self.writer
        )
        _tracking.changed()  # a new context variable, perhaps where a freed one was: the accelerator forgets
        self.savepoint: contextvars.ContextVar[Savepoint | None] = contextvars.ContextVar(
            f"memimg_savepoint_{id(self):x}", default=None
        )
        self.scopes: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
            f"memimg_scopes_{id(self):x}", default=()
        )
        #: what this thread is doing while it holds the lock and runs user code, or None (see _guard)
        self.busy: str | None = None
        self.seq = 0
        self.snapshot_seq = 0
        #: the commit time of the newest event this image read or wrote: no commit of its own is stamped
        #: earlier, so commit times never decrease with seq, whatever the clocks of the writers do
        self.last_ts = 0
        #: transaction commits left that look for other writers' commits before encoding (see end): set when
        #: an append lost its race, so that a process alone on its log never pays for the look
        self.contended = 0
        #: whether the look for other writers' commits (:meth:`Store.changed`) said there were some and no
        #: catch-up has applied them yet (a catch-up that failed leaves it set: the next begin tries again)
        self.behind = False
        #: whether a commit may look for other writers' commits before encoding when they are active: not
        #: where that look is a round trip to a server (the refused append reads what it missed at once)
        self.looks_first = not getattr(store, "changed_asks_the_server", False)
        self.open_txs: set[TxState] = set()
        self.stripping = self.filling = False
        #: the snapshot being written, told of every event before it is applied (see _snapshots)
        self.snapshot_writer: SnapshotWriter | None = None
        self.snapshots = Snapshots(self)
        #: where this image is in the log, for compaction (a read-only image cannot say)
        self.position = Position(store, self.snapshots.holder)
        if readonly:
            self.position.due = float("inf")
        #: set while the snapshot's thread waits for the lock: committers let it in first (see give_turn)
        self.snapshot_turn: threading.Event | None = None
        #: a deliberate hook for tests that act in the middle of a commit being applied: called
        #: with each event's kind name, target and arguments just before the event is applied
        self.before_apply: Callable[[str, Any, tuple[Any, ...]], None] | None = None

    # -- checks -----------------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the image {self.store.description} is closed; open it again with memimg.open")

    def check_writable(self) -> None:
        self.check_open()
        if self.readonly:
            raise ReadOnlyError(
                f"the image {self.store.description} is read-only (opened with readonly=True, or a past state "
                "from img.at); nothing was changed"
            )

    def refuse_if_busy(self) -> None:
        """Refuse a change (or a catch-up) asked for by user code run in the middle of one."""
        if self.busy is not None:
            raise reentered(self.busy)

    def current_tx(self) -> TxState | None:
        """The transaction of this thread or task, if one is open."""
        current = self._mi_current.get()
        return current if type(current) is TxState and not current.done else None

    # -- transactions -----------------------------------------------------------

    def begin(self) -> TxState:
        """Open a transaction in this thread or task (its state), after catching up."""
        # not while this thread is in the middle of a change (a key's __hash__ opening a transaction):
        # catching up then would apply other commits between that change's steps
        if self.busy is None and (self.reader.fills or self.behind or self.store.changed(self.seq)):
            self.behind = True  # until a catch-up applies what the look found
            try:
                with self.lock:
                    self.catch_up()
            finally:
                if self.writer.feed is not None:
                    self.writer.feed.drain()  # before the transaction is this context's writer
        with self.lock:  # never start in the middle of another commit being applied
            state = TxState(self, self.seq)
            state.mark = len(self.table.objects)
            self.open_txs.add(state)
            if time.monotonic() >= self.position.due:  # compaction keeps what this transaction may read
                self.position.beat(self.seq)
        if self.writer.ever_annotated and self.writer.annotation.get():  # a block active at begin: noted per change,
            state.no_fast_path()  # also in a task that inherits it after the block ended here
        _tracking.tx_opened()
        self._mi_current.set(state)
        _tracking.changed()  # this context's writer: reads here must now ask the transaction
        self.savepoint.set(None)
        return state

    def end(self, state: TxState, *, commit: bool) -> None:
        """End transaction *state*: commit its events, or discard them."""
        if state.busy is not None:  # ended by user code the transaction runs while it plans a change
            raise reentered(state.busy)
        if self._mi_current.get() is state:
            self._mi_current.set(self.writer)
            _tracking.changed()
            self.savepoint.set(None)
        try:
            if commit and state.events:
                if self.snapshot_turn is not None:
                    self.give_turn()
                # the collector paused (once the lock is held) until the transaction's journal and the commit's
                # rows are freed: resumed with them alive, it traversed them all at once (freeing counts down)
                with lazy_pause() as pause:
                    with self.lock:
                        pause.start()
                        self.refuse_if_busy()
                        self.check_writable()
                        if self.reader.fills:
                            _recovery.attach_fills(self)
                        meta = state.commit_meta()  # refused (too large) before anything is written
                        events = state.outcome()  # repeated assignments of a field: only the last
                        if meta is not None:
                            events.insert(0, meta_event(meta))
                        if self.contended:  # other writers are active: caught up with first (encoded once)
                            _direct.catch_up_first(self)
                        self.validate(state, events)
                        try:
                            self.commit(events, state)
                        except BaseException:
                            state.discard()
                            raise
                    state.clear()
                    del events
            else:
                state.discard()
        finally:
            if not state.done:
                state.discard()
            with self.lock:
                self.open_txs.discard(state)
                self.conflicts.prune(min((t.start_seq for t in self.open_txs), default=None))
            _tracking.tx_closed()
            if self.writer.feed is not None:  # also what a failed commit caught up with
                self.writer.feed.drain()

    def check_read(self, start: int, oid: int, part: Any) -> None:
        """Raise :class:`ConflictError` if a transaction begun at *start* reads what a newer commit wrote."""
        self.conflicts.check_read(start, oid, part)

    def check_unique(self, state: TxState, obj: Any, name: str, value: Any) -> None:
        """Raise :class:`UniqueError` if transaction *state* setting unique field *name* of *obj* to *value*
        clashes with another instance it sees (see :mod:`memimg.image._unique`)."""
        _unique.check_assignment(self, state, obj, name, value)

    def validate(self, state: TxState, events: list[Pending]) -> None:
        """Raise :class:`ConflictError` unless *state* may commit *events* over what was committed since."""
        if self.seq == state.start_seq:
            return
        busy, self.busy = self.busy, "checking a transaction for conflicts"  # keys are hashed and compared
        try:
            self.conflicts.validate(state.start_seq, state.reads, events)
        finally:
            self.busy = busy

    # -- the commit protocol ----------------------------------------------------

    def commit(
        self, events: list[Pending], state: TxState | None = None, *, replan: bool = False, auto_snapshot: bool = True
    ) -> bool:
        """Append *events* and apply them; see the module docstring.

        With *replan*, returns ``False`` instead of retrying when another
        writer got there first (the caller plans again on the new state).
        Must be called with the lock held. A commit with metadata has its
        ``tx.meta`` event first (:func:`memimg.core._meta.meta_event`).

        A transaction's commit pauses the collector (its records and applied
        events may be many); a mutation outside one does not pay for a pause
        here (~0.7 µs): its caller holds one whenever it attaches objects.
        """
        if state is None:
            return self._commit_loop(events, state, replan, auto_snapshot)
        with paused_gc():
            return self._commit_loop(events, state, replan, auto_snapshot)

    def _commit_loop(self, events: list[Pending], state: TxState | None, replan: bool, auto_snapshot: bool) -> bool:
        session, store = self.session, self.store
        while True:
            ts = max(_direct.now_us(), self.last_ts)  # see last_ts (the one clock, _direct.now_us)
            try:
                before = session.first_new if UNIQUE else 0
                rows = session.encode_events(events, self.seq + 1, ts)
                if before:  # unique fields: checked on the state this commit goes on, again after each catch-up
                    # inline, the test whether there is anything to check (a commit that changes no instance
                    # of a class with unique fields, attaches none and links nothing back pays only this)
                    ext = self.table.extents
                    if (
                        ext is None
                        or ext.shadowed
                        or len(self.table.objects) > before
                        or (type(events[0][1]) in UNIQUE if len(events) == 1 else _unique.touches(events))
                    ):
                        _unique.check_commit(self, events, state, before, rows[-1][0])
                if _counters.DECLARED and (  # adds: checked on the state the commit goes on, as above
                    events[0][0] is _OBJ_ADD if len(events) == 1 else _has_adds(events)
                ):
                    _counters.check_adds(events, _OBJ_ADD, _OBJ_SET, _OBJ_DEL, self.seq)
                store.append(rows, self.seq)
                self.last_ts = ts
            except SeqTaken as taken:
                session.rollback()
                _direct.lost(self, taken)
                if replan:
                    return False
                if state is not None:
                    self.validate(state, events)
                continue
            except BaseException as err:
                session.rollback()
                _direct.append_failed(self, err)
            break
        self.apply(events, rows, state)
        if auto_snapshot:
            self.after_commit()
        return True

    commit_field = _direct.commit_field

    def apply(
        self,
        events: list[Pending],
        rows: list[Any],
        state: TxState | None,
        last_seq: int | None = None,
        alone: bool = False,
    ) -> None:
        """Apply appended events to the committed objects, all at once for every reader.

        The writes are recorded for conflict checks and the seq moved *first*,
        so a transaction elsewhere that reads what is being changed gets a
        ConflictError rather than half of it; readers outside transactions are
        shown the finished result (publishing) while the objects change.
        *alone*: each event is a transaction of its own (another process's
        single field sets, caught up with together): applied one after the
        other, each a whole commit, nothing to publish.
        """
        table, open_txs = self.table, self.open_txs
        feed = self.writer.feed  # None unless someone subscribed (see _feeds)
        if self.snapshot_writer is not None:
            self._tell_snapshot(events, rows if last_seq is not None else None)
        # from here on the builtin dict and set operations run keys' __hash__ and __eq__
        busy, self.busy = self.busy, "applying committed events"
        published: TxState | None = None
        opened = False
        noted = None  # what the events change that someone follows (see _feeds)
        try:
            if open_txs and (len(open_txs) > 1 or state not in open_txs):
                self.conflicts.record(events, rows)
            self.seq = rows[-1][0] if last_seq is None else last_seq
            # several events are published, all at once; one (after its metadata, which changes nothing) need not be
            if len(events) > 1 and not alone and (len(events) > 2 or events[0][0] is not TX_META):
                if state is None:  # a single mutation of several events, or another process's commit
                    _tracking.tx_opened()
                    opened = True
                    state = TxState(self, self.seq)
                    for k, target, args in events:
                        k.apply(state, target, *args)
                if _tracking.enabled():
                    if state.added:
                        state.resolve_counters()  # readers outside it see the sums, never the adds
                    for view in state.views.values():
                        if type(view) is ListView:
                            view.freeze()  # its base is about to grow under it
                    self.publishing.append(state)
                    published = state
            hook = self.before_apply
            if feed is None and hook is None and _apply_sets is not None and type(events) is list:
                # compiled: each run of obj.set events applied by one call (field_set's setters), the rest here
                at, n, setters = 0, len(events), table.setters
                while True:
                    at = _apply_sets(events, at, setters, _OBJ_SET)
                    if at == n:
                        break
                    k, target, args = events[at]
                    k.apply(table, target, *args)
                    at += 1
            elif feed is None:
                for k, target, args in events:
                    if hook is not None:
                        hook(k.name, target, args)
                    k.apply(table, target, *args)
            else:  # someone subscribed: what each event followed is about to change is noted first (see _feeds)
                at = 0
                for k, target, args in events:
                    if hook is not None:
                        hook(k.name, target, args)
                    if target is not None and (feed.wide or target._mi_oid in feed.oids):
                        noted = feed.note(noted, k, target, args, rows[at], events)
                    k.apply(table, target, *args)
                    at += 1  # noqa: SIM113  # (not enumerate, nor zip with rows: a measured path)
        except BaseException as err:
            _direct.apply_failed(self, err, rows[0][0], rows[-1][0])
        finally:
            self.busy = busy
            if published is not None:
                self.publishing.remove(published)
            if opened:
                _tracking.tx_closed()
        if noted is not None:  # delivered once the lock is released (see _feeds)
            noted.seq, noted.local = self.seq, last_seq is None
            feed.queue.append(noted)

    def _tell_snapshot(self, events: list[Pending], rows: list[EventRow] | None = None) -> None:
        """Let the snapshot being written keep what *events* are about to change, and what another process's
        *rows* name (some of which this code may not apply); a failure abandons it."""
        writer = self.snapshot_writer
        assert writer is not None
        try:
            if rows is not None:
                for row in rows:
                    if row.kind in SNAPSHOT_KINDS or row.kind in ("gc.drop", "erase"):
                        # another process's snapshot (or erase): this one lost its lease (or an old memimg's collection)
                        raise MemimgError(
                            f"another process wrote a {row.kind!r} event (seq {row.seq}) meanwhile",
                            seq=row.seq,
                            kind=row.kind,
                        )
                writer.before_rows(rows)
            writer.before_events(events)
        except Exception as err:  # the commit is durable: it is the snapshot that gives way
            self.abandon_snapshot(err)

    def abandon_snapshot(self, err: Exception) -> None:
        """Give up the snapshot being written (it stores nothing), saying why."""
        writer = self.snapshot_writer
        if writer is not None:
            log.warning("snapshot at seq %d of %s abandoned: %s", writer.seq, self.store.description, err)
            writer.abandoned = err
            self.snapshot_writer = None

    def give_turn(self) -> None:
        """A snapshot's thread is waiting for the lock: let it take it before this commit does.

        A thread committing in a loop would otherwise take the lock again
        each time before the waiting thread wakes (locks are not fair), and
        the snapshot would wait for the loop to end. Each commit lets one
        slice (a few milliseconds) in; never waits long, nor when this thread
        holds the lock already.
        """
        turn = self.snapshot_turn
        if turn is not None and not self.lock._is_owned():  # type: ignore[attr-defined]
            turn.wait(TURN_WAIT)

    def snapshot_due(self) -> bool:
        """Whether enough events went by since the last snapshot for an automatic one."""
        every = self.snapshot_every
        if every is None or self.readonly:
            return False
        if every == "auto":
            every = max(DEFAULT_SNAPSHOT_EVERY, len(self.table.objects))
        return self.seq - self.snapshot_seq >= every  # type: ignore[operator]

    def after_commit(self) -> None:
        """Have an automatic snapshot written in the background if one is due (never in this call); keep the
        image's position in the log current."""
        if self.snapshot_due():
            self.snapshots.schedule()
        if time.monotonic() >= self.position.due:
            self.position.beat(self.seq)

    # -- other processes' commits ---------------------------------------------------

    def _missed(self, taken: SeqTaken) -> Iterable[EventRow] | None:
        """The events a refused append handed over (read in the same round trip), the rest read after them."""
        missed = taken.missed
        if not missed or missed[0].seq != self.seq + 1:
            return None
        if taken.more:
            return itertools.chain(missed, self.store.read(after=missed[-1].seq))
        return missed

    def catch_up(self, rows: Iterable[EventRow] | None = None) -> int:
        """Apply what other writers appended; returns how many events. Called with the lock held.

        *rows*: those events, from ``seq + 1`` on, if the caller has them
        (a refused append's); by default they are read from the store.
        """
        self.refuse_if_busy()  # a key's __hash__ (say) would catch up between another change's steps
        busy, self.busy = self.busy, "applying other processes' commits"  # decoding hashes keys
        try:
            with lazy_pause() as pause:  # the collector paused only if there is something to apply

                def apply_tx(batch: list[tuple[Pending | None, EventRow]]) -> None:
                    pause.start()
                    self._apply_remote(batch)

                def apply_run(batch: list[tuple[Pending | None, EventRow]]) -> None:
                    pause.start()
                    self._apply_remote(batch, alone=True)

                start = self.seq
                try:
                    end, _ = fold(
                        self.store.read(after=self.seq) if rows is None else rows,
                        self.reader,
                        expected=self.seq + 1,
                        where=self.store.description,
                        on_tx=apply_tx,
                        # runs of single field sets applied at once, unless each commit is delivered on its own
                        on_run=apply_run if self.writer.feed is None else None,
                        direct=self._sets_applied if self._nothing_watches() else None,
                        watch=self.open_txs,  # (code a row runs may open one: then they go to apply_run)
                    )
                except CorruptLogError as err:  # the next event missing: compacted away, or lost
                    if err.seq != self.seq + 1 or not _recovery.compacted_past(self):
                        refuse_if_rekeyed(self.store, err.seq)  # or under keys a rekey changed meanwhile
                        raise
                    end = -1
                if end == -1 or (end - 1 == start and _recovery.compacted_past(self)):
                    self._reload()
                    end = self.seq + 1
        finally:
            self.busy = busy
        self.behind = False
        count = end - 1 - start
        if count:
            _recovery.check_schema(self)
            if self.reader.has_gone:
                _recovery.strip_removed(self)
            if self.table.unlogged:
                self.table.prune_unlogged()  # a writer's commit replaced what this read-only image filled
            extents = self.table.extents
            if UNIQUE and extents is not None:
                # file the new objects now: a unique value another process's commit shadowed is then known
                # (see _unique), and what was found unreachable may be reachable again
                extents.sync()
                extents.links_seq = self.seq
                extents.known = None
        _recovery.attach_fills(self)  # also those an earlier attempt failed to log
        # a follower that only catches up keeps its position too, once it has moved
        if (count or self.position.written) and time.monotonic() >= self.position.due:
            self.position.beat(self.seq)
        return count

    def _nothing_watches(self) -> bool:
        """Whether applying another process's single field set is all there is to it: no transaction open (this
        image's lock, held, keeps any from opening), no snapshot being written, no subscription, no hook; then
        the fold applies them itself (see :func:`fold`'s ``direct``). Called with the lock held."""
        return (
            not self.open_txs
            and self.snapshot_writer is None
            and self.writer.feed is None
            and self.before_apply is None
        )

    def _sets_applied(self, last_seq: int, ts: int, doubt: BaseException | None) -> None:
        """The fold applied other processes' single field sets up to *last_seq* itself (see
        :meth:`_nothing_watches`): what :meth:`apply` does besides applying them is done here. *doubt*: the
        apply of the set after them was interrupted (its outcome unknown): the image is closed, as :meth:`apply`
        closes it."""
        self.seq = last_seq
        if ts > self.last_ts:
            self.last_ts = ts
        if doubt is not None:
            _direct.apply_failed(self, doubt, last_seq + 1, last_seq + 1)

    def _reload(self) -> None:
        """The log was compacted past this image's seq: reload from its snapshot in place; open transactions fail.

        The change feed is told of the commits skipped (``changes()`` raises HistoryError there).
        """
        was = self.seq
        # every object is about to change: the snapshot being written gives way
        self.abandon_snapshot(MemimgError("the image was reloaded after the log was compacted"))
        self.conflicts.prune(None)
        self.conflicts.rebased = 1 << 62  # a transaction reading meanwhile conflicts at once
        # readers outside transactions wait for the reload to finish (the read hooks on, so they look)
        _tracking.tx_opened()
        waiting = Reloading(self.lock)
        self.publishing.append(waiting)
        try:
            with paused_gc():
                _recovery.rebase(self)
        finally:
            self.publishing.remove(waiting)
            _tracking.tx_closed()
            self.conflicts.rebased = self.seq
        if self.writer.feed is not None:
            self.writer.feed.reloaded(was, self.seq, self.store.first_seq() - 1)

    def _apply_remote(self, batch: list[tuple[Pending | None, EventRow]], alone: bool = False) -> None:
        """Apply another process's transaction (its rows, each with the event it holds); *alone*: a run of
        transactions of one row each."""
        last_seq = batch[-1][1].seq
        self.last_ts = max(self.last_ts, max(r.ts for _, r in batch) if alone else batch[-1][1].ts)
        kept = [(e, r) for e, r in batch if e is not None]
        if self.snapshot_writer is not None and len(kept) < len(batch):  # rows this code skips name objects too
            self._tell_snapshot([], [r for _, r in batch])
        if kept:
            self.apply([e for e, _ in kept], [r for _, r in kept], None, last_seq, alone)
        else:
            self.seq = last_seq
        if alone:  # a run holds obj.set rows only (see fold's on_run)
            return
        for _, r in batch:
            if r.kind in SNAPSHOT_KINDS:
                self.snapshot_seq = r.seq
            elif r.kind == "erase":  # stored rows were rewritten: what history remembers of them may be erased
                self.reader.first_states = FirstStates()  # a new one: a history call under way fills the old one
