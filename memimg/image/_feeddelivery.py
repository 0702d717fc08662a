"""Change feeds: what a subscription is given (:class:`Commit`), and its delivery to several subscriptions.

The delivery of the queue (:meth:`memimg.image._feeds.Feed.drain`) hands a
commit noted for one subscription to it as it was noted; a commit noted for
several (or a gap) is delivered here by :func:`_deliver_entry`: each
subscription that has not had it yet gets a Commit and a list of its own,
with the changes that go to it, in the order the subscriptions were made.
A callback's exception is dealt with by :func:`_failed` (see
:mod:`memimg.image._feeds` on what is logged and what propagates).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable
from typing import Any

from memimg.core._history import Change, commit_time

__all__ = ["Commit", "contain_callbacks"]

log = logging.getLogger("memimg")

#: whom a queued commit's changes go to (``Commit._to``, see ``Feed.note``): the subscriptions all of them go
#: to, or those each goes to (a list parallel to its changes)
Routing = tuple[Any, ...] | list[tuple[Any, ...]]

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
    delivered). Each subscription is given a Commit of its own, and a list
    of its own. It holds nothing else (not the stored rows). Its seqs,
    time and metadata are its own, not read from the list: a callback may
    change the list.

    ``Commit(tx, seq, time, meta, local, changes)`` makes one (*time*: an
    aware datetime, or microseconds since the epoch as the log stores it).
    """

    __module__ = "memimg"
    # _to: while it is queued, whom its changes go to (see Feed.note)
    __slots__ = ("_time", "_to", "changes", "local", "meta", "seq", "tx")

    def __init__(
        self, tx: int, seq: int, time: dt.datetime | int, meta: dict[str, Any], local: bool, changes: list[Change]
    ) -> None:
        """*time*: an aware datetime, or microseconds since the Unix epoch (how the log stores it)."""
        self.tx = tx
        self.seq = seq
        self._time = time
        self.meta = meta
        self.local = local
        self.changes = changes
        self._to: Routing = ()

    # its seqs, time and meta are kept apart from its changes (a callback may empty the list)

    @property
    def first_seq(self) -> int:
        """The seq of its first event (its ``tx``)."""
        return self.tx

    @property
    def time(self) -> dt.datetime:
        """The commit time, an aware UTC datetime."""
        t = self._time
        return commit_time(t) if isinstance(t, int) else t

    def _relived(self, changes: list[Change]) -> Commit:
        """This commit with *changes* instead of its own, and ``local`` False: a commit replayed from the log."""
        return Commit(self.tx, self.seq, self._time, self.meta, False, changes)

    def __repr__(self) -> str:
        where = "local" if self.local else "remote"
        n = len(self.changes)
        return f"<memimg.Commit seq {self.first_seq}..{self.seq} {where}: {n} change{'s' * (n != 1)}>"


class _Gap:
    """In the queue: the image skipped the commits ``was < seq <= seq`` (it reloaded after a compaction kept only
    those after *oldest*)."""

    __slots__ = ("oldest", "seq", "was")
    _to = None

    def __init__(self, seq: int, was: int, oldest: int) -> None:
        self.seq, self.was, self.oldest = seq, was, oldest


def _number(sub: Any) -> int:
    """A subscription's number: the order subscriptions were made in."""
    number: int = sub.number
    return number


def _deliver_entry(subs: Iterable[Any], entry: Commit | _Gap) -> None:
    """Deliver a queued commit noted for several subscriptions (or a gap: to the open ones, *subs*) to each that
    has not had it yet, in the order they were made: each a Commit and a list of its own, with the changes that go
    to it."""
    seq = entry.seq
    if type(entry) is _Gap:
        for sub in subs:
            if not sub.closed and seq > sub.seen:
                sub.seen = seq
                if sub.gap is not None:
                    try:
                        sub.gap(entry.was, seq, entry.oldest)
                    except BaseException as err:
                        _failed(sub, seq, err)
        return
    assert type(entry) is Commit
    to, changes = entry._to, entry.changes
    subs = sorted(to if type(to) is tuple else set().union(*to), key=_number)
    for sub in subs:  # those closed since are left out
        if sub.closed or seq <= sub.seen:
            continue
        sub.seen = seq
        if type(to) is tuple:
            picked = changes.copy()
        else:
            picked = [c for c, them in zip(changes, to, strict=True) if sub in them]
        try:
            sub.callback(Commit(entry.tx, seq, entry._time, entry.meta, entry.local, picked))
        except BaseException as err:
            _failed(sub, seq, err)


def _failed(sub: Any, seq: int, err: BaseException) -> None:
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
