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
transaction's start, the snapshot thread -- *drains* it, calling each
subscription in turn, commit after commit. Only one thread drains at a time:
a thread that finds the queue being drained leaves its commit to the thread
draining (which delivers it after the one in hand), and a callback that
writes to the image finds its own thread draining, so its commit is delivered
after the current delivery finishes, never re-entrantly. So when a write
returns, its subscribers have been called, unless another thread was
draining (then that thread calls them, soon after).

Each subscription remembers the last seq it was handed, so it gets each
commit once, even if a drain is interrupted (a ``KeyboardInterrupt`` in a
callback: the commit goes back to the queue for the next drain, and those
already called are not called again). An exception in a callback is logged
(logger ``memimg``, naming the subscription and seq) and changes nothing else.

A process that falls behind a compaction reloads from the snapshot (see
``Engine._reload``): the commits it skipped are not delivered to its callbacks
(the events are gone); ``changes(since=...)`` raises ``HistoryError`` there.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from memimg._errors import MemimgError
from memimg.core import _types
from memimg.core._history import Change, Recorder
from memimg.core._meta import TX_META
from memimg.core._rows import ts_to_datetime
from memimg.model import TrackedDict, TrackedList, TrackedSet

__all__ = ["Commit", "Feed", "Subscription", "subscribe"]

log = logging.getLogger("memimg")

_COLLECTIONS = (TrackedList, TrackedDict, TrackedSet)


#: A commit queued for delivery: ``(tx, last seq, ts, meta, local, [(index, kind, target, part), ...], rows)``
#: (*part*: what :class:`~memimg.core._history.Recorder` noted, see its ``Part``; *index*: of the event in *rows*).
Noted = tuple[int, int, int, dict[str, Any], bool, list[tuple[int, str, Any, Any]], list[Any]]


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
    ``changes`` and ``time`` are made when first read.
    """

    __module__ = "memimg"
    __slots__ = ("_changes", "_parts", "_rows", "_time", "_ts", "first_seq", "local", "meta", "seq", "tx")

    def __init__(
        self, tx: int, seq: int, ts: int, meta: dict[str, Any], local: bool, parts: list[Any], rows: list[Any]
    ) -> None:
        self.first_seq = self.tx = tx
        self.seq = seq
        self.meta = meta
        self.local = local
        self._ts = ts
        self._parts = parts
        self._rows = rows
        self._time: dt.datetime | None = None
        self._changes: list[Change] | None = None

    @property
    def time(self) -> dt.datetime:
        """The commit time, an aware UTC datetime."""
        if self._time is None:
            self._time = ts_to_datetime(self._ts)
        return self._time

    @property
    def changes(self) -> list[Change]:
        """The changes this subscription follows, in the order they were made."""
        changes = self._changes
        if changes is None:
            tx, time, meta, rows = self.tx, self.time, self.meta, self._rows
            changes = self._changes = [
                Change(rows[at][0], tx, time, meta, target, kind, f, key, old, new, index)
                for at, kind, target, (f, key, old, new, index) in self._parts
            ]
        return changes

    def _relived(self, changes: list[Change]) -> Commit:
        """This commit with *changes* instead of its own, and ``local`` False: a commit replayed from the log."""
        other = Commit(self.tx, self.seq, self._ts, self.meta, False, self._parts, self._rows)
        other._time, other._changes = self._time, changes
        return other

    def __repr__(self) -> str:
        where = "local" if self.local else "remote"
        n = len(self._parts)
        return f"<memimg.Commit seq {self.first_seq}..{self.seq} {where}: {n} change{'s' * (n != 1)}>"


class Subscription:
    """A callback following part of an image (``MemoryImage.subscribe``); ``close()`` it, or use it as a context
    manager, to stop."""

    __module__ = "memimg"
    __slots__ = ("_feed", "callback", "closed", "cls", "field", "number", "obj", "seen")

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
        self.subs: tuple[Subscription, ...] = ()
        self.numbered = 0
        # what some subscription follows, merged (rebuilt at each change of the subscriptions)
        self.everything = False
        #: the ids of the objects followed (a field of theirs, or all)
        self.oids: set[int] = set()
        self.classes: tuple[type, ...] = ()
        self.class_hits: dict[type, bool] = {}
        self.recorder = Recorder(live=True)
        #: what the commit being applied changes that is followed: ``(event's index, kind, target, part)``
        self.noted: list[tuple[int, str, Any, Any]] = []
        self.at = 0
        #: the commits noted, applied and not yet delivered, in seq order
        self.queue: deque[Noted] = deque()
        #: held by the thread delivering
        self.delivering = threading.Lock()

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
        oids = set()
        classes = []
        everything = False
        for sub in self.subs:
            if sub.obj is not None:
                oids.add(sub.obj._mi_oid)
            elif sub.cls is not None:
                classes.append(sub.cls)
            else:
                everything = True
        self.everything, self.oids, self.classes = everything, oids, tuple(classes)
        self.class_hits = {}

    # -- noting, while a commit is applied (the image's lock held) ----------------

    def note(self, k: Any, target: Any, args: tuple[Any, ...]) -> None:
        """Note what event ``(k, target, args)``, about to be applied, changes that someone follows."""
        at = self.at
        self.at = at + 1
        if target is None:  # the image's own events (metadata, snapshots) change no object
            return
        if not self.everything and target._mi_oid not in self.oids:
            t = type(target)
            hit = self.class_hits.get(t)
            if hit is None:
                hit = self.class_hits[t] = issubclass(t, self.classes)
            if not hit:
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
        may be a row this code skipped), ``None`` for this process's.
        """
        self.at = 0
        noted = self.noted
        if noted:
            self.noted = []
            first = rows[0]
            meta = events[0][2][0] if events[0][0] is TX_META else {}
            seq = rows[-1][0] if last_seq is None else last_seq
            self.queue.append((first[1], seq, first[2], meta, last_seq is None, noted, rows))

    # -- delivery (never under the image's lock) ----------------------------------

    def drain(self) -> None:
        """Deliver the queued commits, unless this thread holds the image's lock or another thread is delivering.

        The thread holding the token delivers; one that finds it taken leaves
        its commit to that thread, which looks at the queue again after giving
        the token back (so a commit queued meanwhile is never stranded). A
        BaseException from a callback leaves the commit queued: the next
        drain goes on with it, and :attr:`Subscription.seen` keeps those
        already called from being called again.
        """
        if self.engine.lock._is_owned():
            return  # the thread releases it later, and drains then
        queue, token = self.queue, self.delivering
        while queue and token.acquire(blocking=False):
            try:
                while queue:
                    tx, seq, ts, meta, local, parts, rows = queue[0]
                    for sub in self.subs:
                        if sub.closed or seq <= sub.seen:
                            continue
                        sub.seen = seq
                        obj, field, cls = sub.obj, sub.field, sub.cls
                        if obj is None and cls is None:
                            picked = parts
                        else:  # a loop, not a comprehension: a commit has few parts, and a call costs more
                            picked = []
                            for p in parts:
                                if (
                                    (p[2] is obj and (field is None or p[3][0] == field))
                                    if obj is not None
                                    else isinstance(p[2], cls)  # type: ignore[arg-type]
                                ):
                                    picked.append(p)
                        if picked:
                            try:
                                sub.callback(Commit(tx, seq, ts, meta, local, picked, rows))
                            except Exception:
                                log.exception(
                                    "change feed: %r raised on the commit at seq %d (the commit stands; other "
                                    "subscriptions are called as usual)",
                                    sub,
                                    seq,
                                )
                    queue.popleft()
            finally:
                token.release()


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
