"""Change feeds: ``MemoryImage.subscribe`` -- callbacks told of every commit that changes what they follow.

**What a subscriber gets.** A :class:`Commit` per commit applied to the
image after the subscription was made -- made here, or by another process
and applied by ``refresh()``, ``follow()``, ``wait()`` or the start of a
transaction -- that changes what it follows, carrying only those changes:
:class:`memimg.Change` records, with the value before (``old``) and after
(``new``). A subscription follows one object, one field of one entity, every
object of a class (subclasses included), or everything. A change targets one
object (see :mod:`memimg.core._history`): a subscription to an entity sees its
fields set, not its collections changed -- follow those as objects of their own.

**How ``old`` is known.** While a commit is applied (the image's lock held),
``Engine.apply`` checks each event's target against what is followed (a
look-up of its id; :meth:`Feed.note` is called only for an event someone
follows), and :meth:`Feed.note` runs it against a *live*
:class:`~memimg.core._history.Recorder` -- the applier history uses, reading
the committed objects and changing nothing -- which tells what the event is
about to change; then the event is applied. So ``old`` is computed, as for
``history()``, and costs nothing for events nobody follows. What is noted is
exactly what some subscription follows, as the :class:`memimg.Change`
records delivered: a commit with changes noted joins the queue as they are.

**Who follows what** is merged, whenever a subscription is added or
closed, into a *match table* (:attr:`Feed.oids`): object id -> field name
-> the subscriptions a change of that field goes to (under None: those
following the whole object), the subscriptions to a class or to everything
joined by the target's class (:meth:`Feed._widened`). The queued Commit
carries whom its changes go to (``_to``): when that is one subscription --
the usual case -- the Commit noted is the one delivered to it, as is (its
``_to`` emptied then: it holds nothing of the feed); a commit noted for
several subscriptions (or a gap) is split by
:func:`memimg.image._feeddelivery._deliver_entry`, each subscription given
a Commit and a list of its own.
With no subscription at all the engine holds no feed (``AutoWriter.feed`` is
``None``) and a commit pays one check of that.
The steps a subscription adds to the commonest commit (one field set, by
``Engine.commit_field``) -- :func:`note_field` (and :func:`first_noted`, the
Commit it makes) and :func:`deliver_to_bound` -- are compiled by the
accelerator (:mod:`memimg.model._speedups`): the same steps, the same
results, without the interpreter's work that was most of their cost.

**Delivery** is by a per-image queue, never under the image's lock: a noted
commit joins the queue when it has been applied (so in seq order), and
whichever thread then releases the lock -- the committer, a ``refresh()``, a
transaction's start or end, an ``erase()``, the snapshot thread -- *drains*
it, also when its operation fails after catching up. Only one thread drains
at a time (it holds a token); a thread that finds the token taken leaves its
commit to the thread draining. That thread delivers at most up to the last
commit queued when it began (and the commits its own callbacks make: they
come after the one in hand, never re-entrantly), then hands what others
queued meanwhile on to a helper thread, which drains until the queue is
empty: so a writer is never captured by other threads' commits, and no
queued commit waits for a later one. ``close()`` delivers what is queued
(see :meth:`Feed.flush`).

Each subscription remembers the last seq it was handed, so it gets each
commit once, even if a drain is interrupted (a ``KeyboardInterrupt`` in a
callback: it propagates to the writer, and the helper goes on with the
commit, without calling again those already called). An exception in a
callback is logged (logger ``memimg``, naming the subscription and seq) and
changes nothing else; so is a BaseException in the image's own threads
(:func:`contain_callbacks`).

A process that falls behind a compaction reloads from the snapshot (see
``Engine._reload``): the commits it skipped are not delivered to its
callbacks (the events are gone); a gap entry in the queue tells the
subscriptions that want to know (``changes()`` raises ``HistoryError``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from memimg._errors import MemimgError
from memimg.core import _types
from memimg.core._history import Change, Recorder
from memimg.core._kinds import KINDS
from memimg.core._markers import MISSING
from memimg.core._meta import TX_META
from memimg.image._feeddelivery import Commit, _deliver_entry, _failed, _Gap, _number, contain_callbacks
from memimg.model import TrackedDict, TrackedList, TrackedSet
from memimg.model._accel import speedups

__all__ = ["Commit", "Feed", "Subscription", "contain_callbacks", "note_field", "subscribe"]

log = logging.getLogger("memimg")

_COLLECTIONS = (TrackedList, TrackedDict, TrackedSet)


_OBJ_SET: Final = KINDS["obj.set"]
#: ``_new_tuple(Change, fields)``: a :class:`memimg.Change` made without a call of its ``__new__`` (the fields
#: as ``Change.__new__`` stores them: the time as the log's microseconds)
_new_tuple: Final = tuple.__new__
#: ``_new_object(Commit)``: a Commit made without a call of its ``__init__`` (a measured path: see Feed.note)
_new_object: Final = object.__new__


def first_noted(row: Any, meta: dict[str, Any], subs: tuple[Subscription, ...], target: Any, *change: Any) -> Commit:
    """A new Commit of the event at *row* (*meta*: its commit's metadata), noted with its first change: the
    change of *target* (``kind, field, key, old, new, index``), going to *subs*.

    Compiled by the accelerator (:mod:`memimg.model._speedups`), the same: the commonest commit with a
    subscriber (one field set) makes one of these.
    """
    noted = _new_object(Commit)
    noted.tx, noted._time, noted._to, noted.meta = row[1], row[2], subs, meta
    noted.changes = [_new_tuple(Change, (row[0], row[1], row[2], meta, target, *change))]
    return noted


#: the events of a commit with no metadata, as :meth:`Feed.note` reads them (its first is no ``tx.meta``)
_NO_META: Final[tuple[tuple[None], ...]] = ((None,),)
#: the match table's row of an object not followed as such (only as an instance of a class, or as anything)
_NOBODY: Final[dict[str | None, tuple[Subscription, ...]]] = {None: ()}


class Subscription:
    """A callback following part of an image (``MemoryImage.subscribe``); ``close()`` it, or use it as a context
    manager, to stop."""

    __module__ = "memimg"
    __slots__ = ("_feed", "callback", "closed", "cls", "field", "gap", "number", "obj", "seen")

    def __init__(self, feed: Feed, callback: Callable[[Commit], Any], obj: Any, field: str | None, cls: type | None):
        self._feed = feed
        self.callback = callback
        #: what it follows: an object (and one of its fields), a class, or everything (all None)
        self.obj = obj
        self.field = field
        self.cls = cls
        #: the seq of the last commit handed to it (or of the image when it subscribed)
        self.seen = 0
        self.closed = False
        self.number = 0
        #: called ``gap(was, now, oldest)`` when the image skips the commits ``was < seq <= now`` (it reloaded
        #: after a compaction kept only those after *oldest*); None: skipped silently (see the module's docstring)
        self.gap: Callable[[int, int, int], Any] | None = None

    def close(self) -> None:
        """Stop: no commit is delivered to it from now on (one being delivered in another thread still may be)."""
        if not self.closed:
            self._feed.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.obj is not None:
            what = f"{type(self.obj).__qualname__} #{self.obj._mi_oid}"
            if self.field is not None:
                what += f" .{self.field}"
        elif self.cls is not None:
            what = f"every {self.cls.__qualname__}"
        else:
            what = "everything"
        name = getattr(self.callback, "__qualname__", None) or repr(self.callback)
        state = ", closed" if self.closed else ""
        return f"<memimg.Subscription #{self.number} to {what} ({name}{state})>"


class Feed:
    """The subscriptions of one image, the noting of what commits change, and the delivery queue.

    Subscriptions are added and removed with the image's lock held, so a
    commit being applied sees one set of them throughout.
    """

    __slots__ = (
        "__weakref__",
        "bound",
        "by_class",
        "delivering",
        "engine",
        "flushing",
        "getters",
        "helpers",
        "idle",
        "image_lock",
        "joined",
        "numbered",
        "oids",
        "queue",
        "recorder",
        "subs",
        "wide",
        "wide_subs",
    )

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.image_lock = engine.lock
        self.subs: tuple[Subscription, ...] = ()
        self.numbered = 0
        # who follows what, merged (rebuilt at each change of the subscriptions; see note)
        #: the match table: the ids of the objects followed as such, and for each the subscriptions following
        #: each of its fields named by some subscription (those following the whole object included) and, under
        #: None, those following the whole object (any other field, or a collection's items)
        self.oids: dict[int, dict[str | None, tuple[Subscription, ...]]] = {}
        #: the subscriptions to a class or to everything, and those of them that follow each class met
        self.wide_subs: tuple[Subscription, ...] = ()
        self.by_class: dict[type, tuple[Subscription, ...]] = {}
        #: those of a class joined to a row of the match table (by class and the row's tuple's id)
        self.joined: dict[tuple[type, int], tuple[Subscription, ...]] = {}
        #: whether an event may be followed whatever its target's id (everything, or some class, is followed)
        self.wide = False
        self.recorder = Recorder(live=True)
        #: the field getters the recorder reads a field set's old value with (by class, then field name)
        self.getters = self.recorder._getters
        #: the commits noted, applied and not yet delivered (and the gaps), in seq order
        self.queue: deque[Commit | _Gap] = deque()
        #: held by the thread delivering (reentrant: a callback's own commit is seen to be that thread's)
        self.delivering = threading.RLock()
        #: the seq up to which the thread delivering delivers before it returns
        self.bound = 0
        #: guards *helpers* (helper threads started and not holding the token yet) and *flushing* (threads
        #: waiting in :meth:`flush`, told when a thread gives the token back)
        self.idle = threading.Condition()
        self.helpers = 0
        self.flushing = 0

    # -- subscriptions (the image's lock held) ------------------------------------

    def add(self, sub: Subscription) -> None:
        self.numbered += 1
        sub.number = self.numbered
        sub.seen = self.engine.seq
        self.subs = (*self.subs, sub)
        self._merge()
        self.engine.writer.feed = self

    def remove(self, sub: Subscription) -> None:
        engine = self.engine
        with engine.lock:
            sub.closed = True
            self.subs = tuple(s for s in self.subs if s is not sub)
            self._merge()
            if not self.subs and engine.writer.feed is self:
                engine.writer.feed = None  # commits pay nothing for feeds again

    def _merge(self) -> None:
        whole: dict[int, list[Subscription]] = {}  # by object id, in the order of subscription
        fields: dict[int, dict[str, list[Subscription]]] = {}
        wide = []
        for sub in self.subs:
            if sub.obj is not None:
                oid = sub.obj._mi_oid
                if sub.field is None:
                    whole.setdefault(oid, []).append(sub)
                else:
                    whole.setdefault(oid, [])
                    fields.setdefault(oid, {}).setdefault(sub.field, []).append(sub)
            else:
                wide.append(sub)
        oids: dict[int, dict[str | None, tuple[Subscription, ...]]] = {}
        for oid, subs in whole.items():
            row: dict[str | None, tuple[Subscription, ...]] = {None: tuple(subs)}
            for name, named in fields.get(oid, {}).items():
                row[name] = tuple(sorted(named + subs, key=_number))
            oids[oid] = row
        self.oids, self.wide_subs, self.by_class, self.joined, self.wide = oids, tuple(wide), {}, {}, bool(wide)

    # -- noting, while a commit is applied (the image's lock held) ----------------

    def note(
        self, noted: Commit | None, k: Any, target: Any, args: tuple[Any, ...], row: Any, events: Any
    ) -> Commit | None:
        """*noted* (a new Commit if None) with what event ``(k, target, args)`` at *row*, about to be applied,
        changes that someone follows (*events*: the commit's, for its metadata).

        ``Engine.apply`` calls it for an event on an object in the match
        table (:attr:`oids`), or for any event when :attr:`wide`: the event's
        target is not None; then sets the Commit's ``seq`` and ``local``, and
        queues it. Each change noted is a :class:`memimg.Change` made once,
        with the subscriptions it goes to, looked up in the match table (a
        field set: before the recorder is asked; a field not followed costs
        nothing more). A commit whose changes all go to the same ones -- one
        event, or several on what one subscription follows -- keeps that
        tuple (``_to``); else a list of them, one per change. When that tuple
        holds one subscription, the Commit noted is the one delivered to it.
        """
        follows = self.oids.get(target._mi_oid, _NOBODY)
        if k is _OBJ_SET:  # a measured path: the field is read here, not by the recorder
            name, value = args
            subs = follows.get(name) or follows[None]
            if self.wide:
                subs = self._widened(subs, type(target))
            if not subs:
                return noted
            try:
                old = self.getters[type(target)][name](target)
            except KeyError:
                old = self.recorder._live_field(target, name)
            except AttributeError:
                old = MISSING
            if noted is None:
                meta = events[0][2][0] if events[0][0] is TX_META else {}
                return first_noted(row, meta, subs, target, "obj.set", name, None, old, value, None)
            return self._record(noted, subs, row, events, target, "obj.set", name, None, old, value, None)
        recorder = self.recorder
        parts = recorder.parts = []
        k.apply(recorder, target, *args)
        kind = k.name
        for f, key, old, new, index in parts:
            subs = follows.get(f) or follows[None]
            if self.wide:
                subs = self._widened(subs, type(target))
            if subs:
                noted = self._record(noted, subs, row, events, target, kind, f, key, old, new, index)
        return noted

    def _record(
        self,
        noted: Commit | None,
        subs: tuple[Subscription, ...],
        row: Any,
        events: Any,
        target: Any,
        *change: Any,
    ) -> Commit:
        """*noted* (a new Commit if None) with the change of *target* at *row* (``kind, field, key, old, new,
        index``) going to *subs*."""
        if noted is None:
            return first_noted(row, events[0][2][0] if events[0][0] is TX_META else {}, subs, target, *change)
        changes = noted.changes
        changes.append(_new_tuple(Change, (row[0], row[1], row[2], noted.meta, target, *change)))
        to = noted._to
        if type(to) is list:
            to.append(subs)
        elif to is not subs:  # its changes go to different subscriptions from now on
            noted._to = [*([to] * (len(changes) - 1)), subs]  # type: ignore[list-item]
        return noted

    def _widened(self, subs: tuple[Subscription, ...], t: type) -> tuple[Subscription, ...]:
        """*subs* and the subscriptions to class *t* (or one it derives from) or to everything."""
        more = self.by_class.get(t)
        if more is None:
            more = self.by_class[t] = tuple(s for s in self.wide_subs if s.cls is None or issubclass(t, s.cls))
        if not subs:
            return more
        # the same tuple for the same row and class (a row's tuples live as long as the cache: see _merge), so a
        # commit's changes going to the same subscriptions share one routing (see _record)
        key = (t, id(subs))
        both = self.joined.get(key)
        if both is None:
            both = self.joined[key] = more + subs
        return both

    def reloaded(self, was: int, now: int, oldest: int) -> None:
        """The image skipped the commits ``was < seq <= now`` (reloaded after a compaction; the lock held):
        tell the subscriptions that want to know (:attr:`Subscription.gap`), in their place in the queue."""
        self.queue.append(_Gap(now, was, oldest))

    # -- delivery (never under the image's lock) ----------------------------------

    def drain(self) -> None:
        """Deliver what is queued, unless this thread holds the image's lock or another thread is delivering.

        The thread holding the token (:attr:`delivering`) delivers, at most up
        to the last commit queued when it took it (:attr:`bound`; a
        callback's own commits move it on: they come after the one in hand),
        then gives it back and returns. A thread that finds the token taken
        leaves its commit to the thread delivering; what that thread leaves
        at its bound -- other threads' commits queued meanwhile -- it hands on
        to a helper thread, which delivers until the queue is empty. So a
        writer is never kept delivering other threads' commits, and no
        queued commit waits for a later one.

        A BaseException from a callback leaves the commit queued for the
        helper (those already called on it are not called again:
        :attr:`Subscription.seen`); it propagates, unless this is one of the
        image's own threads (the follower, a snapshot's, the helper), which
        log it and go on.
        """
        queue = self.queue
        if not queue or self.image_lock._is_owned():
            return  # a thread holding the lock releases it later, and drains then
        token = self.delivering
        if token._is_owned():  # type: ignore[attr-defined]  # a callback's own commit: delivered after the one in hand
            self.bound = queue[-1].seq
            return
        if not token.acquire(False):
            return  # the thread delivering delivers it, or hands it on
        try:
            deliver_to_bound(self)
        finally:  # (nested: a KeyboardInterrupt right after the release still hands on what is left)
            try:
                token.release()
            finally:
                if queue or self.flushing:
                    self._left()

    def _left(self) -> None:
        """After giving the token back: hand on what other threads queued meanwhile; tell those flushing."""
        if self.queue:
            self._hand_on()
        if self.flushing:
            with self.idle:
                self.idle.notify_all()

    def _hand_on(self) -> None:
        """Start a helper thread delivering what is queued, unless one is waiting for the token already."""
        with self.idle:
            if self.helpers:
                return  # it delivers what is queued once it has the token
            self.helpers += 1
        try:
            threading.Thread(target=self._help, name=f"memimg-feed-{id(self):x}", daemon=True).start()
        except RuntimeError:  # no new thread at interpreter shutdown: left to the next drain
            with self.idle:
                self.helpers -= 1

    def _help(self) -> None:
        """A helper thread: take the token and deliver until the queue is empty."""
        contain_callbacks()
        queue, token = self.queue, self.delivering
        try:
            token.acquire()
            with self.idle:
                self.helpers -= 1  # from now on, a commit queued is this thread's to deliver, or the next one's
        except BaseException:
            with self.idle:
                self.helpers -= 1
            raise
        try:
            while queue:
                deliver_to_bound(self)
        finally:
            try:
                token.release()
            finally:
                if queue or self.flushing:
                    self._left()

    def flush(self, timeout: float) -> bool:
        """Deliver what is queued, waiting up to *timeout* seconds for a thread delivering; whether all was.

        Called by ``close()``; from a callback (its thread delivering), only what it can without waiting.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if not self.queue or self.delivering._is_owned():  # type: ignore[attr-defined]
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self.idle:
                self.flushing += 1
                try:
                    self.idle.wait(min(left, 0.05))
                finally:
                    self.flushing -= 1


def deliver_to_bound(self: Feed) -> None:
    """Deliver the queued commits up to the last one queued now (and those this thread's callbacks make:
    :meth:`Feed.drain` moves :attr:`Feed.bound` on); the token held.

    A measured path: a commit noted for one subscription is delivered
    here, as it was noted (see :meth:`Feed.note`); others by
    :func:`_deliver_entry`. Compiled by the accelerator
    (:mod:`memimg.model._speedups`), the same steps.
    """
    queue = self.queue
    bound = self.bound = queue[-1].seq if queue else 0
    while queue:
        entry = queue[0]
        seq = entry.seq
        if seq > bound:
            break
        to = entry._to
        if type(to) is tuple and len(to) == 1:
            sub = to[0]
            entry._to = ()  # the Commit is the subscription's now: it holds nothing of the feed
            if not sub.closed and seq > sub.seen:
                sub.seen = seq
                try:
                    sub.callback(entry)  # (a Commit: a gap's _to is None)
                except BaseException as err:
                    _failed(sub, seq, err)
        else:
            _deliver_entry(self.subs, entry)
        queue.popleft()
        bound = self.bound


def note_field(feed: Feed, target: Any, oid: int, name: str, value: Any, row: Any) -> Commit | None:
    """:meth:`Feed.note` of ``target.name = value`` (*oid*: the target's id), the only event of a commit with no
    metadata, at *row*: what :meth:`Engine.commit_field` queues (None: nothing followed).

    Compiled by the accelerator (:mod:`memimg.model._speedups`) for a field followed by a subscription to its
    object (or to the field): the commonest commit with a subscriber; it calls this function for anything else.
    """
    return feed.note(None, _OBJ_SET, target, (name, value), row, _NO_META)


if speedups is not None:  # the same, compiled: the steps of a commit with a subscriber (see docs/performance.md)
    speedups.configure_feeds(Feed, Subscription, Commit, Change, _deliver_entry, _failed, note_field, MISSING)
    first_noted = speedups.first_noted
    note_field = speedups.note_field
    deliver_to_bound = speedups.deliver_to_bound


def subscribe(engine: Any, callback: Callable[[Commit], Any], to: Any) -> Subscription:
    """``MemoryImage.subscribe``: check what *to* names, and add a subscription to the image's feed.

    Raises:
        TypeError: *callback* is not callable.
        MemimgError: *to* is not an object of this image, a field it has, or a persistent class.
    """
    engine.check_open()
    if not callable(callback):
        raise TypeError(
            f"subscribe(): the callback must be callable (it is given each memimg.Commit), not {callback!r}"
        )
    obj: Any = None
    field: str | None = None
    cls: type | None = None
    if type(to) is tuple:
        if len(to) != 2 or type(to[1]) is not str:
            raise TypeError(f"subscribe(to={to!r}): a field is named as (object, 'field name')")
        obj, field = to
    elif isinstance(to, type):
        cls = _check_class(to)
    elif to is not None:
        obj = to
    with engine.lock:
        if obj is not None:
            _check_object(engine, obj, field)
        feed = engine.writer.feed
        if feed is None:
            feed = Feed(engine)
        sub = Subscription(feed, callback, obj, field, cls)
        feed.add(sub)
    return sub


def _check_class(cls: type) -> type:
    info = _types.info_of(cls)
    if (info is not None and info.kind == _types.ENTITY) or issubclass(cls, _COLLECTIONS):
        return cls
    raise MemimgError(
        f"subscribe(to={cls.__qualname__}): {cls.__qualname__} is not a @persistent class nor a tracked collection "
        "class, so no object of the image is one; name a persistent class, an object, (object, 'field'), or "
        "nothing (everything)",
        target=None,
    )


def _check_object(engine: Any, obj: Any, field: str | None) -> None:
    """Check that *obj* is an object of *engine*'s image with a field *field* (the lock held)."""
    t = type(obj)
    what = f"a {t.__qualname__} object"
    if not hasattr(t, "_mi_oid"):
        raise MemimgError(
            f"subscribe(): {what} is not a persistent object nor a tracked collection, so it has no changes to "
            "follow; name one of the image's objects, a persistent class, or nothing",
            target=None,
        )
    oid = obj._mi_oid
    objects = engine.table.objects
    if oid is None:
        raise MemimgError(
            f"subscribe(): {what} is not part of the image {engine.store.description} yet (it has no id): attach "
            "it and commit first, then subscribe",
            target=None,
        )
    if not (0 < oid < len(objects) and objects[oid] is obj):
        raise MemimgError(
            f"subscribe(): {what} #{oid} is not an object of the image {engine.store.description} (it belongs to "
            "another image, or was collected); subscribe on the image that holds it",
            target=oid,
        )
    if field is not None:
        info = _types.info_of(t)
        if info is None or info.kind != _types.ENTITY:
            raise MemimgError(
                f"subscribe(to=(obj, {field!r})): {what} has no fields; subscribe to the collection itself",
                target=oid,
                field=field,
            )
        if field not in info.fields:
            raise MemimgError(
                f"subscribe(to=(obj, {field!r})): {info.name} has no field {field!r} (its fields: "
                f"{', '.join(info.fields)})",
                target=oid,
                field=field,
            )
