"""``memimg rekey`` at the store level: every row of a log sealed anew under other options, crash-safely.

:func:`rekey` re-seals a whole log (opened with its old options, see
:func:`~memimg.stores._protected.protect`) under new ones in one
:meth:`Store.rewrite` (one database transaction), bracketed by a
``protection.pending`` meta entry (see :mod:`memimg.stores._pending`: it carries MACs under the old
and the new keys, so that an opener trusts only an entry a rekey wrote),
so that a crash at any point leaves the log openable with the old options
or the new ones: :func:`~memimg.stores._protected.protect` finishes an
interrupted flip at the next open. The NDJSON store's rekey (a file swap)
is :mod:`memimg._rekey`'s; it appends the same marker (:func:`rekey_marker`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import orjson

from memimg._errors import MemimgError
from memimg.core._meta import META_KIND
from memimg.core._protect import PROTECTION_KEY, Protection, new_log_id, read_settings
from memimg.core._rows import event_checksum
from memimg.stores._pending import (
    PENDING_KEY,
    entry_settings,
    mismatch,
    opens_under,
    pending_entry,
    read_pending,
    untrusted,
)
from memimg.stores._protected import ProtectedStore, protect
from memimg.stores._protocol import EventRow, Rewrite, SnapshotRow, Store, live_positions

__all__ = ["rekey", "rekey_marker"]


def rekey_marker(head: int, new: Protection, after_ts: int) -> EventRow:
    """The plain ``tx.meta`` event a rekey appends after *head*, to be sealed under *new*.

    An image that had the log open before the rekey and commits after it
    finds this row where it meant to write (its append fails with SeqTaken,
    the store's own head check), cannot open it under its old keys, and
    stops with a ProtectionError before writing anything (see
    :meth:`ProtectedStore._refuse_if_rekeyed`). It is also the log's record
    of the rekey. Its commit time is never before *after_ts* (the newest
    stored commit time): commit times never decrease with seq, whatever the
    clock does (``img.at(time=...)`` searches them in order).
    """
    meta = {"memimg": "rekey", "key_id": new.key_id, "integrity_key_id": new.integrity_id}
    payload = orjson.dumps([[meta]])
    seq, ts = head + 1, max(time.time_ns() // 1000, after_ts)
    return EventRow(seq, seq, ts, META_KIND, 0, payload, event_checksum(seq, seq, ts, META_KIND, 0, payload))


def rekey(store: Store, old: Protection | None, new: Protection | None) -> int:
    """Re-seal every event and snapshot of *store* (opened with *old*) under *new*; how many rows.

    Crash-safe: the new settings are recorded as pending first, then every
    row is replaced in one :meth:`Store.rewrite` (one database transaction
    in the SQL stores and the memory store), then the settings are flipped.
    A crash before the rewrite commits leaves the old keys valid; after it,
    the new ones (:func:`protect` finishes the flip at the next open).

    Raises:
        ProtectionError: *old* does not open the log.
        MemimgError: another image that has committed, caught up or begun a
            transaction holds the log open (it would go on writing under the
            old keys).
    """
    old = old or Protection()
    new = new or Protection()
    if new.active:
        new = new.for_log(new_log_id())  # every row is sealed anew: under a new id (no old row fits)
    source = protect(store, old)
    live = live_positions(store.meta())
    if live:
        raise MemimgError(
            f"{store.description!r} is open in {len(live)} other image(s) ({', '.join(sorted(live))}); close them "
            "before a rekey (they would keep writing under the old keys); nothing was changed"
        )
    old = source.protection if isinstance(source, ProtectedStore) else Protection()
    _refuse_other_rekey(store, old, new)
    reader = source if isinstance(source, ProtectedStore) else ProtectedStore(store, Protection())
    first, head = store.first_seq(), store.head()
    events = list(reader.read(first - 1)) if head >= first else []
    snaps = [reader.read_snapshot(info.seq) for info in sorted(store.snapshots())]
    target = ProtectedStore(store, new)
    sealed_snaps: dict[int, SnapshotRow] = {}
    for row in snaps:
        if row.seq < first:
            sealed_snaps[row.seq] = target.seal_snapshot(row, new.start(row.seq) if new.chained else b"")
    prev = new.start(first - 1) if new.chained else b""
    if first - 1 in sealed_snaps and new.chained:
        prev = new.start(first - 1)
    sealed, _ = target.seal_events(events, prev)
    macs = {r.seq: ProtectedStore.mac_of(r) for r in sealed} if new.chained else {}
    for row in snaps:
        if row.seq >= first:
            sealed_snaps[row.seq] = target.seal_snapshot(row, macs.get(row.seq, b""))

    if head >= 1:
        if sealed and sealed[-1].seq == head:
            prev = ProtectedStore.mac_of(sealed[-1]) if new.chained else b""
        else:
            prev = new.start(head) if new.chained else b""
        after_ts = max([row.ts for row in events[-1:]] + [row.ts for row in snaps] + [0])
        marker, _ = target.seal_events([rekey_marker(head, new, after_ts)], prev)
    else:
        marker = []

    def plan(missed: Sequence[EventRow]) -> Rewrite:
        if missed:
            raise MemimgError(
                f"another process appended to {store.description!r} during the rekey; nothing was changed"
            )
        return Rewrite(sealed, list(sealed_snaps.values()), marker)

    entry = pending_entry(read_settings(store.meta()), old, new)
    store.set_meta(PENDING_KEY, entry)
    try:
        store.rewrite(plan, head)
    except BaseException:
        _settle_rekey(store, old, new, entry, marker)
        raise
    _commit_settings(store, new, entry)
    return len(sealed) + len(sealed_snaps)


def _commit_settings(store: Store, new: Protection, entry: str) -> None:
    """After the rewrite committed (the rows are under *new*): the log's settings made *new*'s, then the
    pending *entry* dropped. A crash before or between the two writes leaves the flip to the next open
    (:func:`~memimg.stores._protected.protect` finishes it)."""
    store.set_meta(PROTECTION_KEY, new.settings_text() if new.active else None)
    _drop_pending(store, entry)


def _refuse_other_rekey(store: Store, old: Protection, new: Protection) -> None:
    """Raise MemimgError if another rekey's pending entry, to other options than *new*, is in *store*'s meta
    (running, or interrupted before its rewrite committed: the rows are still under the old keys); not for a
    finished rekey's entry (the log's settings are its), nor for one the log's keys (*old*) do not trust (no
    rekey wrote it: see :func:`~memimg.stores._pending.untrusted`)."""
    meta = store.meta()
    text = meta.get(PENDING_KEY)
    other = read_pending(text) if text is not None else None
    settings = read_settings(meta)
    if other is None or untrusted(settings, other, old):
        return  # none, or not a rekey's: this rekey's replaces it
    if entry_settings(other) == settings:
        return  # a finished rekey's (killed between its two meta writes): this rekey's replaces it
    if mismatch("", other, new) is None and other.get("compression") == new.compression:
        return  # the same rekey run again (what finishes an interrupted one)
    raise MemimgError(
        f"{store.description!r}: another `memimg rekey` (to key {other.get('key_id')}, integrity key "
        f"{other.get('integrity_key_id')}, compression {other.get('compression')}) is running or was "
        "interrupted; wait for it, or if it was interrupted, run that rekey again (same new keys and "
        "compression) to finish it, then rekey from there; nothing was changed"
    )


def _drop_pending(store: Store, entry: str) -> None:
    """Remove *store*'s pending entry if it is still *entry* (its own log id: this rekey's), never another
    rekey's. Read, compare and delete: the stores offer no compare-and-delete; the window is the one
    between two meta statements, and a rekey refuses to start while another's entry is there."""
    if store.meta().get(PENDING_KEY) == entry:
        store.set_meta(PENDING_KEY, None)


def _settle_rekey(store: Store, old: Protection, new: Protection, entry: str, marker: Sequence[EventRow]) -> None:
    """After a rekey's rewrite failed: the pending entry removed if the rows are still under *old* (the usual
    case: the rewrite is one transaction), the rekey finished if they are under *new* (the failure came after
    its commit). Left as it is when the store cannot say (the next open decides, as after a crash).

    The rekey's *marker* (its last row, sealed under *new*) says which: it is the newest row exactly when
    the rewrite committed -- also on a log without keys, whose rows are bound to nothing (no other row
    is that one). A log without events has no marker and nothing to rewrite: its entry is dropped. Neither
    (the rows under another rekey's keys): left to the next open."""
    with contextlib.suppress(Exception):
        newest = [(*row[:5], bytes(row[5])) for mark in marker[-1:] for row in store.read(mark.seq - 1, 1)]
        if marker and newest == [(*marker[-1][:5], bytes(marker[-1][5]))]:
            _commit_settings(store, new, entry)
        elif opens_under(store, old) is not False:  # still the old rows (or damaged ones: not the rekey's)
            _drop_pending(store, entry)
