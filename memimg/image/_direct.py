"""The commit of a single field set by a path of its own (:meth:`Engine.commit_field`), and the failures every
commit path shares: another writer appended first (:func:`lost`; a transaction's commit then catches up first
while other writers are active: :func:`catch_up_first`), the append failed (:func:`append_failed`), applying
appended events failed (:func:`apply_failed`).

The functions take the engine as *self* (typed ``Any``: :mod:`~memimg.image._engine` imports this module);
``commit_field`` is :class:`~memimg.image._engine.Engine`'s method.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from memimg._errors import CorruptLogError, MemimgError
from memimg.core._indexes import UNIQUE
from memimg.image._feeds import note_field
from memimg.stores._protocol import SeqTaken

__all__ = ["append_failed", "apply_failed", "catch_up_first", "commit_field", "lost", "now_us"]

#: how many transaction commits after a lost race first look whether other writers appended
CONTENDED = 16


def now_us() -> int:
    """The commit time: microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def commit_field(self: Any, obj: Any, name: str, value: Any) -> bool:
    """``obj.name = value`` outside a transaction, *value* a native scalar: committed by the shortest path.

    The commit of a single field set is the commonest there is, and its
    general path (:meth:`commit`: a list of events, an encoding session,
    a dispatch per event, the checks each feature needs) cost more than
    the SQL insert itself. Here its one row is encoded, appended and
    applied directly -- with the same seq, time, row, durability and
    conflict rule as :meth:`commit` -- whenever nothing else must see the
    commit on its way. Returns ``False`` without committing (having at
    most caught up with other writers) when something must: a feature in
    use (an annotation, a snapshot being written, an open transaction,
    unique fields to check, a schema to declare), or an image that would
    refuse the change; the caller then takes the general path, which does
    what each needs. A subscription does not: the change is noted for it
    as :meth:`Engine.apply` notes it, and queued; the caller delivers it
    once the lock is released.
    """
    writer = self.writer
    session = self.session
    table = self.table
    oid = obj._mi_oid
    if self.snapshot_turn is not None:
        return False
    lock = self.lock
    lock.acquire()  # (not ``with``: ~1,100 fewer instructions, callgrind)
    try:
        if (
            self.busy is not None  # refused there
            or self.closed
            or self.readonly
            or oid is None
            or self.reader.fills
            or self.open_txs
            or self.snapshot_writer is not None
            or self.before_apply is not None
            or (writer.ever_annotated and writer.annotation.get())
            or type(obj) not in session.declarations.current
            or (UNIQUE and ((ext := table.extents) is None or ext.shadowed or type(obj) in UNIQUE))
        ):
            return False
        seq = self.seq + 1
        ts = now_us()
        if ts < self.last_ts:  # see last_ts
            ts = self.last_ts
        row = session.set_row(seq, ts, oid, name, value)
        try:
            self.store.append([row], self.seq)
        except SeqTaken as taken:
            lost(self, taken)
            return False
        except BaseException as err:
            append_failed(self, err)
        self.last_ts = ts
        self.seq = seq
        self.busy = "applying committed events"  # (an indexed field's setter hashes the value)
        feed = writer.feed  # None unless someone subscribed (see _feeds)
        noted = None
        try:
            if feed is not None and (feed.wide or oid in feed.oids):  # noted before it changes, as apply does
                noted = note_field(feed, obj, oid, name, value, row)
            table.field_set(obj, name, value)
        except BaseException as err:
            apply_failed(self, err, seq, seq)
        finally:
            self.busy = None
        if noted is not None:  # delivered by the caller once the lock is released (see _feeds)
            noted.seq, noted.local = seq, True
            feed.queue.append(noted)
        self.after_commit()
    finally:
        lock.release()
    return True


def lost(self: Any, taken: SeqTaken) -> None:
    """Another writer appended first (*taken*): catch up with it; refuse a log that lost events meanwhile.

    The next transaction commits look for other writers' commits before
    encoding (see :attr:`Engine.contended`).
    """
    if self.looks_first:
        self.contended = CONTENDED
    if not self.catch_up(self._missed(taken)) and (head := self.store.head()) < self.seq:
        # nothing to catch up with and never the expected head: retrying would loop for ever
        raise CorruptLogError(
            f"the log of {self.store.description} ends at seq {head}, before this image's seq "
            f"{self.seq}: events were removed from it while the image was open; nothing was "
            "written. Open the image again (or restore the log from a backup)",
            seq=self.seq,
            table="memimg_events",
        ) from None


def catch_up_first(self: Any) -> None:
    """Before a transaction's commit is encoded, the lock held, while other writers are active (this image lost
    a race lately: ``Engine.contended``): catch up with what they appended meanwhile, so that the events are
    encoded once -- not again after losing the race to them. Re-armed while they go on, counted down otherwise."""
    if self.store.changed(self.seq):
        self.contended = CONTENDED
        self.behind = True  # until the catch-up applies them (see Engine.behind)
        self.catch_up()
    else:
        self.contended -= 1


def append_failed(self: Any, err: BaseException) -> NoReturn:
    """Raise for *err*, raised by an append (nothing was written): a MemimgError as it is."""
    if isinstance(err, MemimgError) or not isinstance(err, Exception):
        raise err
    description = self.store.description
    raise MemimgError(
        f"writing to {description} failed: {err}; nothing was changed",
        store=description,
        operation="appending events",
    ) from err


def apply_failed(self: Any, err: BaseException, first_seq: int, last_seq: int) -> NoReturn:
    """Close the image and raise: applying appended events *first_seq..last_seq* raised *err* (the log
    has them; memory must not silently differ)."""
    self.closed = True
    if not isinstance(err, Exception):
        raise err
    raise MemimgError(
        f"applying committed events {first_seq}..{last_seq} failed ({err!r}); the "
        "log is intact but this image is now closed: open it again",
        first_seq=first_seq,
        last_seq=last_seq,
    ) from err
