"""The writer outside transactions: every change is its own committed transaction.

The model hands every write and every read of a tracked object to the
*current writer* of its image (``owner._mi_current.get()``): a transaction's
:class:`~memimg.image._tx.TxState` while one is open in this thread or
task, else the image's :class:`AutoWriter`. The auto writer commits each
change by itself -- a field set, a field delete, a collection method -- and
answers reads from the committed objects, or, while another thread's
transaction is being applied, from that transaction (publishing: a reader
never sees half of a commit).

A mutation is *planned* first (what events the call amounts to, without
changing anything), then committed; if another process committed first, it
is planned again on the new state, with the same arguments (one-shot
iterators are read into lists before the first plan).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from memimg.core import _types
from memimg.core._counters import COUNTED, delta_for, mark, plain
from memimg.core._gc import lazy_pause, paused_gc
from memimg.core._kinds import KINDS
from memimg.core._markers import ABSENT, SELF
from memimg.core._meta import meta_event
from memimg.core._reader import Pending
from memimg.image import _recovery
from memimg.image._annotate import layer_meta
from memimg.image._attach import NATIVE, where_coll, where_field
from memimg.image._bulk import BAILED, BulkAttacher
from memimg.image._views import raw_method
from memimg.model._base import Planner
from memimg.model._collections import reusable_args

__all__ = ["AutoWriter", "WriterHost"]


class WriterHost(_recovery.Host, Protocol):
    """What the auto-committing writer needs of its engine: what upkeep needs, and a snapshot's turn."""

    snapshot_turn: threading.Event | None
    bulk: BulkAttacher

    def give_turn(self) -> None: ...

    def commit_field(self, obj: Any, name: str, value: Any) -> bool: ...


_OBJ_SET = KINDS["obj.set"]
_OBJ_DEL = KINDS["obj.del"]
_OBJ_ADD = KINDS["obj.add"]


def _sizeable(planned: Sequence[tuple[str, tuple[Any, ...]]]) -> bool:
    """Whether a plan's events carry enough items that pausing the collector through their
    commit (~0.7 µs) pays: encoding and applying them makes a container per item."""
    n = 0
    for _name, eargs in planned:
        for a in eargs:
            if type(a) is list:
                n += len(a)
    return n > 256


class AutoWriter:
    """Commits each change made outside a transaction (see the module docstring)."""

    __slots__ = ("annotation", "engine", "ever_annotated", "feed", "publishing")

    #: reads outside a transaction record nothing: the hooks read the committed objects themselves
    tracks_reads = False
    #: no fast path: every field set comes to :meth:`set_field` (see ``Writer.fast``)
    fast = None

    def __init__(self, engine: WriterHost, publishing: list[Any]) -> None:
        self.engine = engine
        #: the transactions being applied right now (read through while they are)
        self.publishing = publishing
        #: the ``img.annotate`` blocks active in this thread or task, outermost first, each with the metadata
        #: merged up to it (``(annotation, merged)``; empty: none): every commit made here carries the last's.
        #: (Here, not on the engine: one more attribute there would take the engine's instance dict past
        #: CPython's shared-keys limit, and every attribute read of it on the commit path would slow down:
        #: +2,700 instructions, 7.6%, per commit on the memory store, measured with callgrind.)
        self.annotation: contextvars.ContextVar[tuple[tuple[Any, dict[str, Any]], ...]] = contextvars.ContextVar(
            f"memimg_annotation_{id(engine):x}", default=()
        )
        #: whether an annotate block was ever entered on this image, in any thread or task (never reset: a
        #: context may hold an annotation after its block ended elsewhere, e.g. a task created in the block).
        #: Until then a commit does not read the context variable: an image never annotated pays a slot read.
        self.ever_annotated = False
        #: the image's change feed while some subscription is open (:mod:`memimg.image._feeds`), else None:
        #: here for the reason :attr:`annotation` is
        self.feed: Any = None

    # -- writes -----------------------------------------------------------------

    def _annotated(self, events: list[Pending]) -> list[Pending]:
        """*events* with the ``tx.meta`` event of the annotations in effect first, if any."""
        layers = self.annotation.get() if self.ever_annotated else None
        return [meta_event(layer_meta(layers)), *events] if layers else events

    def _enter(self) -> None:
        """Checks before a change (the lock held): not from user code in a change, writable, fills logged."""
        engine = self.engine
        engine.refuse_if_busy()
        engine.check_writable()
        if engine.reader.fills:
            _recovery.attach_fills(engine)

    def set_field(self, obj: Any, name: str, value: Any) -> None:
        """``obj.name = value``, committed."""
        engine = self.engine
        native = type(value) in NATIVE and (type(value) is not str or value.isascii())
        try:
            if native and engine.commit_field(obj, name, value):
                return  # nothing in the way: committed by the shortest path
            if engine.snapshot_turn is not None:
                engine.give_turn()
            with engine.lock:
                self._enter()
                if native:
                    events: list[Pending] = [(_OBJ_SET, obj, (name, value))]
                    if self.ever_annotated and (layers := self.annotation.get()):
                        events.insert(0, meta_event(layer_meta(layers)))
                    engine.commit(events)
                elif type(value) in COUNTED and (delta := delta_for(value, obj, name, self)) is not None:
                    engine.commit(self._annotated([(_OBJ_ADD, obj, (name, delta))]))
                else:
                    value = plain(value)
                    # one pause of the collector for attaching and committing: what they create is
                    # traversed by one collection afterwards, not by one after each
                    with paused_gc():
                        undo: list[Any] = []
                        events = self._annotated([(_OBJ_SET, obj, (name, value))])
                        engine.busy = "attaching a value"
                        try:
                            # attached and numbered in one walk when it can (see _bulk): its records are
                            # written inside the one event that follows
                            v = engine.bulk.attach(value, undo) if len(events) == 1 else BAILED
                            if v is BAILED:
                                v = engine.attacher.prepare(value, where_field(obj, name), undo)
                        finally:
                            engine.busy = None
                        events[-1] = (_OBJ_SET, obj, (name, v))
                        try:
                            engine.commit(events)
                        except BaseException:
                            engine.attacher.undo(undo)
                            raise
        finally:
            if self.feed is not None and self.feed.queue:
                self.feed.drain()  # subscribers are called outside the lock, also after a failure (see _feeds)

    def check_unique(self, obj: Any, name: str, value: Any) -> None:
        """Nothing before the write: each change outside a transaction is checked as it commits."""

    def del_field(self, obj: Any, name: str) -> None:
        """``del obj.name``, committed."""
        engine = self.engine
        getter = _types.info_of(type(obj)).getters[name]  # type: ignore[union-attr]
        if engine.snapshot_turn is not None:
            engine.give_turn()
        try:
            with engine.lock:
                self._enter()
                while True:
                    getter(obj)  # AttributeError when unset (again after catching up), as for any attribute
                    if engine.commit(self._annotated([(_OBJ_DEL, obj, (name,))]), replan=True):
                        break
        finally:
            if self.feed is not None and self.feed.queue:
                self.feed.drain()

    def mutate(self, coll: Any, planner: Planner, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A collection method call, planned and committed; returns what the method returns."""
        engine = self.engine
        attacher = engine.attacher
        # the collector is paused from the first value that needs attaching through the commit
        # (one collection afterwards, see set_field), or for the commit of a big plan; not
        # around the planner's work before (a user's sort key or __eq__ may make cyclic garbage),
        # nor across a replan
        if engine.snapshot_turn is not None:
            engine.give_turn()
        try:
            with engine.lock, lazy_pause() as pause:
                self._enter()
                args = reusable_args(planner, args, kwargs)  # a replan must see the same items again
                while True:
                    undo: list[Any] = []

                    def prep(value: Any, where: str, undo: list[Any] = undo) -> Any:
                        if type(value) in NATIVE and (type(value) is not str or value.isascii()):
                            return value
                        pause.start()
                        return attacher.prepare(value, where_coll(coll) + where, undo)

                    try:
                        engine.busy = "planning a change"  # the planner runs keys' __hash__ and __eq__, sort keys
                        try:
                            planned, result = planner(coll, prep, *args, **kwargs)
                        finally:
                            engine.busy = None
                        if not planned:
                            attacher.undo(undo)
                            break
                        if not pause.on and _sizeable(planned):
                            pause.start()
                        events = self._annotated([(KINDS[name], coll, eargs) for name, eargs in planned])
                        done = engine.commit(events, replan=True)
                    except BaseException:
                        attacher.undo(undo)
                        raise
                    if done:
                        break
                    attacher.undo(undo)  # another process committed first: plan again on its state
                    pause.stop()  # the replan's own work runs with the collector on
        finally:
            if self.feed is not None and self.feed.queue:
                self.feed.drain()
        return coll if result is SELF else result

    # -- reads while a commit is being applied (the hooks read plain values themselves otherwise) -----

    def read_field(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any:
        """``obj.name`` outside a transaction while commits are published: all of each, or none."""
        for state in list(self.publishing):
            v = state.published_field(obj, name)
            if v is not ABSENT:
                return v
        return getter(obj)

    def read_counter(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any:
        """Counter field *name* of *obj* outside a transaction, counted: assigned back with ``+=``, it adds."""
        value = self.read_field(obj, name, getter) if self.publishing else getter(obj)
        if self.engine.readonly:  # nothing is ever assigned back (a read-only image, a past state): a plain number
            return value
        return mark(value, (obj, name, self, self.engine.table.counter_generation(obj, name)))

    def counter_generation(self, obj: Any, name: str) -> int:
        """The generation of counter *name* of *obj*: that of its last committed plain write, by anyone."""
        return self.engine.table.counter_generation(obj, name)

    def counter_written(self, obj: Any, name: str, value: Any) -> None:
        """Nothing: a plain write of a counter takes its new generation as it is applied (see ObjectTable)."""

    def read_coll(self, coll: Any, method: str, args: tuple[Any, ...], key: Any) -> Any:
        """A read method of a tracked collection outside a transaction (see :meth:`read_field`)."""
        for state in list(self.publishing):
            view = state.views.get(id(coll))
            if view is not None:
                return view.call(method, args)
        return raw_method(type(coll), method)(coll, *args)
