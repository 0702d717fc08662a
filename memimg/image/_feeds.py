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
each event whose target someone follows is first run against a *live*
:class:`~memimg.core._history.Recorder` -- the applier history uses, reading
the committed objects and changing nothing -- which notes what the event is
about to change; then the event is applied. So ``old`` is computed, as for
``history()``, and costs nothing for events nobody follows. With no
subscription at all the engine holds no feed (``AutoWriter.feed`` is
``None``) and a commit pays one check of that per event.

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

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from memimg._errors import MemimgError
from memimg.core import _types
from memimg.core._history import Change, Recorder, commit_time
from memimg.core._kinds import KINDS
from memimg.core._markers import MISSING
from memimg.core._meta import TX_META
from memimg.model import TrackedDict, TrackedList, TrackedSet

__all__ = ["Commit", "Feed", "Subscription", "contain_callbacks", "subscribe"]

log = logging.getLogger("memimg")

_COLLECTIONS = (TrackedList, TrackedDict, TrackedSet)


#: A commit queued for delivery: ``(tx, last seq, ts, meta, local, [(at, kind, target, part), ...], seqs)``
#: (*part*: what :class:`~memimg.core._history.Recorder` noted, see its ``Part``; *at*: the index of its
#: event in the commit, whose seq is ``tx + at`` for this process's commits (*seqs* None), else ``seqs[at]``),
#: or a gap the image skipped (reloaded after a compaction): ``(seq before, seq after, oldest kept, {}, False,
#: None, None)``.
Noted = tuple[int, int, int, dict[str, Any], bool, "list[tuple[int, str, Any, Any]] | None", "list[int] | None"]

#: The event kinds whose first argument is the name of the field they change.
_FIELD_KINDS: Final = frozenset(("obj.set", "obj.del"))
_OBJ_SET: Final = KINDS["obj.set"]
#: ``_new_tuple(Change, fields)``: a :class:`memimg.Change` made without a call of its ``__new__`` (the fields
#: as ``Change.__new__`` stores them: the time as the log's microseconds)
_new_tuple: Final = tuple.__new__
_UNFOLLOWED: Final[Any] = object()

#: ``contain``: this thread is one of the image's own (see :func:`contain_callbacks`)
_own = threading.local()


def contain_callbacks() -> None:
    """Mark this thread as one of the image's own (a follower, a snapshot's, a feed's helper): a BaseException a
    callback raises in it (KeyboardInterrupt, SystemExit...) is logged, and the thread goes on."""
    _own.contain = True


class Commit:
    """One commit, as a change feed delivers it: its seqs, transaction, time and metadata, and its changes.

    ``first_seq`` and ``seq`` are the seqs of its first and last events;
    ``tx`` its transaction id (the seq of its first event); ``time`` its
    commit time (an aware UTC datetime); ``meta`` its metadata (``{}`` if
    none); ``local`` whether this process made it (else another process did,
    and this image applied it); ``changes`` the :class:`memimg.Change`
    records of the commit that the subscription follows, in the order they
    were made -- never empty (a commit that changes nothing followed is not
    delivered). Each subscription is given a Commit of its own; its
    ``changes`` and ``time`` are made when first read. It holds nothing
    else (not the stored rows).
    """

    __module__ = "memimg"
    __slots__ = ("_changes", "_parts", "_seqs", "_ts", "local", "meta", "seq", "tx")

    def __init__(
        self, tx: int, seq: int, ts: int, meta: dict[str, Any], local: bool, parts: list[Any], seqs: Any
    ) -> None:
        self.tx = tx
        self.seq = seq
        self.meta = meta
        self.local = local
        self._ts = ts
        self._parts = parts
        self._seqs = seqs
        self._changes: list[Change] | None = None

    @property
    def first_seq(self) -> int:
        """The seq of its first event (its ``tx``)."""
        return self.tx

    @property
    def time(self) -> dt.datetime:
        """The commit time, an aware UTC datetime."""
        return commit_time(self._ts)

    @property
    def changes(self) -> list[Change]:
        """The changes this subscription follows, in the order they were made."""
        changes = self._changes
        if changes is None:  # a loop, not a comprehension (a call more): a measured path
            tx, ts, meta, seqs = self.tx, self._ts, self.meta, self._seqs
            changes = self._changes = []
            for at, kind, target, (f, key, old, new, index) in self._parts:
                changes.append(
                    _new_tuple(
                        Change,
                        (tx + at if seqs is None else seqs[at], tx, ts, meta, target, kind, f, key, old, new, index),
                    )
                )
            self._parts = []  # the changes hold what they said
        return changes

    def _relived(self, changes: list[Change]) -> Commit:
        """This commit with *changes* instead of its own, and ``local`` False: a commit replayed from the log."""
        other = Commit(self.tx, self.seq, self._ts, self.meta, False, [], None)
        other._changes = changes
        return other

    def __repr__(self) -> str:
        where = "local" if self.local else "remote"
        n = len(self._parts) if self._changes is None else len(self._changes)
        return f"<memimg.Commit seq {self.first_seq}..{self.seq} {where}: {n} change{'s' * (n != 1)}>"


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

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.image_lock = engine.lock
        self.subs: tuple[Subscription, ...] = ()
        self.numbered = 0
        # what some subscription follows, merged (rebuilt at each change of the subscriptions)
        self.everything = False
        #: the ids of the objects followed: the names of the fields followed, or None (the whole object)
        self.oids: dict[int, frozenset[str] | None] = {}
        self.classes: tuple[type, ...] = ()
        self.class_hits: dict[type, bool] = {}
        self.recorder = Recorder(live=True)
        #: what the commit being applied changes that is followed: ``(event's index, kind, target, part)``
        self.noted: list[tuple[int, str, Any, Any]] = []
        self.at = 0
        #: the commits noted, applied and not yet delivered, in seq order
        self.queue: deque[Noted] = deque()
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
        oids: dict[int, frozenset[str] | None] = {}
        classes = []
        everything = False
        for sub in self.subs:
            if sub.obj is not None:
                oid = sub.obj._mi_oid
                if sub.field is None:
                    oids[oid] = None
                elif oid not in oids or oids[oid] is not None:
                    oids[oid] = (oids.get(oid) or frozenset()) | {sub.field}
            elif sub.cls is not None:
                classes.append(sub.cls)
            else:
                everything = True
        self.everything, self.oids, self.classes = everything, oids, tuple(classes)
        self.class_hits = {}

    # -- noting, while a commit is applied (the image's lock held) ----------------

    def note(self, k: Any, target: Any, args: tuple[Any, ...]) -> None:
        """Note what event ``(k, target, args)``, about to be applied, changes that someone follows.

        Matched on the object's id (and, for a field event, the field's name)
        before anything is computed: an event no subscription follows costs
        a dict look-up (and a class check, when some subscription follows a
        class). A measured path: a field set is read here, not by the
        recorder (two calls fewer).
        """
        at = self.at
        self.at = at + 1
        if target is None:  # the image's own events (metadata, snapshots) change no object
            return
        if not self.everything:
            fields = self.oids.get(target._mi_oid, _UNFOLLOWED)
            if fields is not None and (fields is _UNFOLLOWED or (k.name in _FIELD_KINDS and args[0] not in fields)):
                if not self.classes:
                    return
                t = type(target)
                hit = self.class_hits.get(t)
                if hit is None:
                    hit = self.class_hits[t] = issubclass(t, self.classes)
                if not hit:
                    return
        if k is _OBJ_SET:
            name, value = args
            try:
                old = self.recorder._getters[type(target)][name](target)
            except KeyError:
                old = self.recorder._live_field(target, name)
            except AttributeError:
                old = MISSING
            self.noted.append((at, "obj.set", target, (name, None, old, value, None)))
            return
        recorder = self.recorder
        parts = recorder.parts = []
        k.apply(recorder, target, *args)
        name, noted = k.name, self.noted
        for part in parts:
            noted.append((at, name, target, part))

    def commit(self, events: list[Any], rows: list[Any], last_seq: int | None) -> None:
        """The commit of *events* (at *rows*) is applied: queue what it changed that is followed.

        *last_seq*: given for another process's commit (its last seq, which
        may be a row this code skipped), ``None`` for this process's. What is
        queued holds the seqs of the events, not the rows (nor their values).
        """
        self.at = 0
        noted = self.noted
        if noted:
            self.noted = []
            first = rows[0]
            meta = events[0][2][0] if events[0][0] is TX_META else {}
            if last_seq is None:  # this process's commit: its events' seqs follow its tx
                self.queue.append((first[1], rows[-1][0], first[2], meta, True, noted, None))
            else:
                self.queue.append((first[1], last_seq, first[2], meta, False, noted, [r[0] for r in rows]))

    def reloaded(self, was: int, now: int, oldest: int) -> None:
        """The image skipped the commits ``was < seq <= now`` (reloaded after a compaction; the lock held):
        tell the subscriptions that want to know (:attr:`Subscription.gap`), in their place in the queue."""
        self.noted, self.at = [], 0
        self.queue.append((was, now, oldest, {}, False, None, None))

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
        log it and go on. A measured path: the loop is inline.
        """
        queue = self.queue
        if not queue or self.image_lock._is_owned():
            return  # a thread holding the lock releases it later, and drains then
        token = self.delivering
        if token._is_owned():  # type: ignore[attr-defined]  # a callback's own commit: delivered after the one in hand
            self.bound = queue[-1][1]
            return
        if not token.acquire(False):
            return  # the thread delivering delivers it, or hands it on
        try:
            self.bound = queue[-1][1] if queue else 0
            while queue and queue[0][1] <= self.bound:
                tx, seq, ts, meta, local, parts, seqs = queue[0]
                if parts is None:
                    self._gap(tx, seq, ts)
                else:
                    for sub in self.subs:
                        if sub.closed or seq <= sub.seen:
                            continue
                        sub.seen = seq
                        obj = sub.obj
                        if obj is not None:
                            field = sub.field
                            if len(parts) == 1:  # a single mutation: no list to filter
                                p = parts[0]
                                if p[2] is not obj or (field is not None and p[3][0] != field):
                                    continue
                                picked = parts
                            else:
                                picked = [p for p in parts if p[2] is obj and (field is None or p[3][0] == field)]
                                if not picked:
                                    continue
                        elif sub.cls is not None:
                            cls = sub.cls
                            picked = [p for p in parts if isinstance(p[2], cls)]
                            if not picked:
                                continue
                        else:
                            picked = parts
                        try:
                            sub.callback(Commit(tx, seq, ts, meta, local, picked, seqs))
                        except BaseException as err:
                            _failed(sub, seq, err)
                queue.popleft()
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
                self.bound = queue[-1][1]
                while queue and queue[0][1] <= self.bound:
                    tx, seq, ts, meta, local, parts, seqs = queue[0]
                    if parts is None:
                        self._gap(tx, seq, ts)
                    else:
                        for sub in self.subs:
                            if sub.closed or seq <= sub.seen:
                                continue
                            sub.seen = seq
                            picked = _pick(sub, parts)
                            if picked:
                                try:
                                    sub.callback(Commit(tx, seq, ts, meta, local, picked, seqs))
                                except BaseException as err:
                                    _failed(sub, seq, err)
                    queue.popleft()
        finally:
            try:
                token.release()
            finally:
                if queue or self.flushing:
                    self._left()

    def _gap(self, was: int, now: int, oldest: int) -> None:
        for sub in self.subs:
            if not sub.closed and now > sub.seen:
                sub.seen = now
                if sub.gap is not None:
                    try:
                        sub.gap(was, now, oldest)
                    except BaseException as err:
                        _failed(sub, now, err)

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


def _pick(sub: Subscription, parts: list[Any]) -> list[Any]:
    """What of *parts* subscription *sub* follows."""
    obj = sub.obj
    if obj is not None:
        field = sub.field
        return [p for p in parts if p[2] is obj and (field is None or p[3][0] == field)]
    if sub.cls is not None:
        cls = sub.cls
        return [p for p in parts if isinstance(p[2], cls)]
    return parts


def _failed(sub: Subscription, seq: int, err: BaseException) -> None:
    """A callback raised *err*: log it (an Exception, or a BaseException in one of the image's own threads), or
    let it propagate (a KeyboardInterrupt, SystemExit... in the application's thread)."""
    if isinstance(err, Exception):
        log.error(
            "change feed: %r raised on the commit at seq %d (the commit stands; other subscriptions are called as "
            "usual)",
            sub,
            seq,
            exc_info=err,
        )
    elif not getattr(_own, "contain", False):
        raise err
    else:
        log.error(
            "change feed: %r raised a BaseException on the commit at seq %d in %s, one of the image's own "
            "threads, which goes on (the commit stands)",
            sub,
            seq,
            threading.current_thread().name,
            exc_info=err,
        )


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
