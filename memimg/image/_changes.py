"""``MemoryImage.changes(since=...)``: a blocking iterator of commits that replays the log, then follows it.

A consumer that stores the ``seq`` of the last commit it handled and asks
``changes(since=that)`` after a restart loses nothing, and sees nothing twice:

1. **Follow** -- at the first ``next()`` (an iterator never started holds
   nothing), under the image's lock, an all-subscription
   (:mod:`memimg.image._feeds`) is made, whose callback puts each commit in
   this iterator's queue; its start is the image's seq then (*start*). The
   image follows the log (:meth:`~memimg.MemoryImage.follow`), so other
   processes' commits arrive without the consumer calling ``refresh()``.
2. **Replay** -- the commits from *since* to *start* are read from the log:
   a past image at *since* (``img.at``) is given those events, one commit at
   a time, with a subscription of its own, so each change has its ``old``
   value exactly as a live commit would; its objects are then replaced by
   this image's objects of the same id (a :class:`memimg.Collected` for one
   no longer in it). Replayed commits have ``local=False``: the log does not
   say which process wrote them.
3. Then the queue: the commits after *start* (and after *since*: it may be
   past this image's seq), as they are delivered; a gap (the image reloaded
   after a compaction, skipping commits the consumer has not had) raises
   ``HistoryError``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final, NamedTuple

from memimg._errors import CorruptLogError, HistoryError
from memimg.core._gone import Gone
from memimg.core._history import Change, Collected
from memimg.image._feeds import Commit
from memimg.image._past import oldest_seq

__all__ = ["BUFFER", "changes", "changes_async"]

log = logging.getLogger("memimg")

#: ``changes_async``: the commits kept for a consumer that has not taken them yet, by default.
BUFFER: Final = 1000


def changes(img: Any, since: int, timeout: float | None) -> Iterator[Commit]:
    """See :meth:`memimg.MemoryImage.changes` (the checks are made at the call, not at the first ``next``).

    Raises:
        TypeError / ValueError: *since* is not an int >= 0, or *timeout* is negative.
        HistoryError: *since* is past the head of the log, or behind what a compaction kept.
    """
    _check(img, since, timeout)
    return _iterate(img, since, timeout)


def _check(img: Any, since: Any, timeout: float | None) -> None:
    engine = img._engine
    engine.check_open()
    if type(since) is not int or since < 0:
        raise ValueError(f"changes(since={since!r}): since is a seq, an int >= 0 (0: from the start of the log)")
    if timeout is not None and timeout < 0:
        raise ValueError(f"changes(timeout={timeout!r}): a timeout is a number of seconds >= 0, or None")
    store = engine.store
    head = max(store.head(), engine.seq)
    if since > head:
        raise HistoryError(
            f"changes(since={since}): seq {since} is past the head of {store.description} (seq {head}); a consumer "
            "resumes from the seq of the last commit it was given",
            seq=since,
            head=head,
            oldest=oldest_seq(store),
        )
    _check_kept(img, since)


def _check_kept(img: Any, since: int) -> None:
    """Raise HistoryError unless the commits after *since* can be replayed: the state at *since* is one
    ``img.at()`` can give (seq 0 counts as seq 1, the root's creation) and the events after it are kept."""
    store = img._engine.store
    oldest = oldest_seq(store)
    if max(since, 1) < oldest:
        raise _behind(store, since, oldest)


def _behind(store: Any, seq: int, oldest: int) -> HistoryError:
    """*seq*: the last seq the consumer has; *oldest*: the oldest seq it can resume from (``oldest_seq``)."""
    return HistoryError(
        f"changes(): the commits after seq {seq} of {store.description} are no longer kept (a compaction dropped "
        f"the events before seq {store.first_seq()}); the oldest seq to resume from is {oldest} "
        f"(changes(since={oldest}): the commits from seq {seq + 1} to {oldest} are lost), or start again from "
        "the current state",
        seq=seq,
        oldest=oldest,
    )


class _Gap(NamedTuple):
    """What a feed subscription is told when the image skipped commits (see Subscription.gap)."""

    was: int
    now: int
    oldest: int


def _subscribe(img: Any, put: Callable[[Any], Any]) -> tuple[Any, int]:
    """An all-subscription handing each commit (or :class:`_Gap`) to *put*, and the image's seq then."""
    engine = img._engine
    with engine.lock:
        sub = img.subscribe(put)
        sub.gap = lambda was, now, oldest: put(_Gap(was, now, oldest))
        return sub, engine.seq


def _iterate(img: Any, since: int, timeout: float | None) -> Iterator[Commit]:
    # subscribed at the first next(), not at the call: an iterator never started holds nothing (the commits
    # made between are read back from the log)
    _check_kept(img, since)
    waiting: queue.SimpleQueue[Commit | _Gap] = queue.SimpleQueue()
    sub, start = _subscribe(img, waiting.put)
    try:
        last = since
        if since < start:
            for commit in _replay(img, since, start):
                yield commit
                last = commit.seq
        img.follow()
        while True:
            try:
                item = waiting.get(timeout=timeout)
            except queue.Empty:
                return
            if isinstance(item, _Gap):
                if item.now > last:  # the image skipped commits the consumer has not had: read them from the log
                    _check_kept(img, last)
                    for commit in _replay(img, last, item.now):
                        yield commit
                        last = commit.seq
            elif item.seq > last:  # (one applied here after *since*, past this image's seq then, was given)
                yield item
                last = item.seq
    finally:
        sub.close()


def _replay(img: Any, since: int, start: int) -> Iterator[Commit]:
    """The commits with ``since < seq <= start``, read from the log, with this image's objects."""
    engine = img._engine
    replayed: list[Commit] = []
    # seq 1 is the root's creation, a commit of no change: the state after it is where a whole log starts
    past = img.at(max(since, 1))
    objects = engine.table.objects

    def live(value: Any) -> Any:
        t = type(value)
        if t is tuple:
            return tuple(live(v) for v in value)
        oid = getattr(value, "_mi_oid", None) if hasattr(t, "_mi_oid") else None
        if oid is None:
            return value
        found = objects[oid] if 0 < oid < len(objects) else None
        return Collected(oid) if found is None or type(found) is Gone else found

    def relive(c: Change) -> Change:
        return c._replace(target=live(c.target), old=live(c.old), new=live(c.new))

    store = engine.store
    last = max(since, 1)  # the seq of the last event applied to *past*

    def behind() -> HistoryError | None:
        """Another process compacted the log since *past* was made: the events after *last* are gone."""
        if store.first_seq() > last + 1:
            return _behind(store, since if last == max(since, 1) else last, oldest_seq(store))
        return None

    with past:
        past.subscribe(replayed.append)
        rows = store.read(after=last)
        for _tx, group in itertools.groupby(itertools.takewhile(lambda r: r[0] <= start, rows), key=lambda r: r[1]):
            batch = list(group)
            if batch[0][0] != last + 1 and (gone := behind()) is not None:
                raise gone
            try:
                with past._engine.lock:
                    past._engine.catch_up(batch)
            except CorruptLogError:
                if (gone := behind()) is not None:
                    raise gone from None
                raise
            past._engine.writer.feed.drain()
            last = batch[-1][0]
            for commit in replayed:
                yield commit._relived([relive(c) for c in commit.changes])
            replayed.clear()
        if last < start and (gone := behind()) is not None:
            raise gone


async def changes_async(img: Any, since: int, buffer: int) -> AsyncIterator[Commit]:
    """See :meth:`memimg.MemoryImage.changes_async`.

    The commits reach the event loop from the threads that deliver them
    (the writer's, or the follower's, woken by the store's
    ``wait_for_change`` -- LISTEN/NOTIFY on PostgreSQL): each is put in this
    consumer's buffer and the loop is woken, so nothing polls. The writer
    never waits for the consumer: once *buffer* commits wait in the buffer,
    later ones are not kept; the consumer, having taken those, is told (a
    warning on logger ``memimg``) and the iterator reads the commits it
    missed back from the log, from the seq of the last one it gave, then
    follows again -- so nothing is lost, unless a compaction dropped them
    meanwhile (``HistoryError``).
    """
    _check(img, since, None)
    if type(buffer) is not int or buffer < 1:
        raise ValueError(f"changes_async(buffer={buffer!r}): the buffer holds at least one commit")
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    last = since
    while True:
        pending: collections.deque[Commit | _Gap] = collections.deque()
        overflowed = [False]
        subs: list[Any] = []

        def on_commit(
            commit: Commit | _Gap,
            pending: collections.deque[Commit | _Gap] = pending,
            overflowed: list[bool] = overflowed,
            subs: list[Any] = subs,
        ) -> None:  # in the delivering thread
            if len(pending) >= buffer and type(commit) is not _Gap:
                overflowed[0] = True
            elif not overflowed[0]:
                pending.append(commit)
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the event loop is closed, the iterator with it: it follows nothing more
                for s in subs:
                    s.close()

        sub, start = _subscribe(img, on_commit)
        subs.append(sub)
        try:
            if last < start:
                _check_kept(img, last)
                replay = _replay(img, last, start)
                while (commit := await loop.run_in_executor(None, next, replay, None)) is not None:
                    yield commit
                    last = commit.seq
            img.follow()
            while True:
                if pending:
                    item = pending.popleft()
                    if isinstance(item, _Gap):
                        if item.now > last:  # the image skipped commits the consumer has not had: from the log
                            _check_kept(img, last)
                            replay = _replay(img, last, item.now)
                            while (commit := await loop.run_in_executor(None, next, replay, None)) is not None:
                                yield commit
                                last = commit.seq
                    elif item.seq > last:
                        yield item
                        last = item.seq
                    continue
                if overflowed[0]:
                    log.warning(
                        "changes_async(): the consumer fell over %d commits behind (its buffer); reading those "
                        "after seq %d back from the log",
                        buffer,
                        last,
                    )
                    break
                wake.clear()
                if not pending and not overflowed[0]:
                    await wake.wait()
        finally:
            sub.close()
