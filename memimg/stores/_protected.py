"""A protected log: any store, its payloads sealed by :class:`~memimg.core._protect.Protection`.

:class:`ProtectedStore` wraps a store and is one itself: the image, the
tools, ``copy`` and compaction see plain rows; the store below sees sealed
payloads (encrypted, MAC-chained, compressed) and a CRC-32 over what it
stores, so the checks that need no key (``memimg verify`` without one, an
NDJSON log's torn-line detection) keep working. Every store gets the same
protection by the same path; none has code of its own for it.

The chain (see ``memimg/core/_protect.py``) is checked as rows are read in
order: each event's stored "previous MAC" must be the MAC of the event
before it -- for the first event read, the MAC of the stored event before
it, else the link of the snapshot at that seq, else the chain's start for
that seq. A snapshot's link is the MAC of the event at its seq, so after
recovery loads a snapshot the first event replayed must chain from it.

:func:`protect` is where a store is opened protected or not: it compares the
options with the settings the log stores (``memimg_meta``) and refuses a
missing, wrong or unneeded key before anything is read or written.
``memimg rekey`` re-seals a whole log under other options
(:mod:`memimg.stores._rekeying`), bracketed by a ``protection.pending``
meta entry (:mod:`memimg.stores._pending`), so that a crash at any point
leaves the log openable with the old options or the new ones; :func:`protect`
finishes a rekey whose rows were rewritten when the flip was cut short.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from memimg._errors import CorruptLogError, MemimgError, ReadOnlyError
from memimg.core._protect import (
    MAC_SIZE,
    PROTECTION_KEY,
    Protection,
    ProtectionError,
    new_log_id,
    read_settings,
)
from memimg.core._rows import event_checksum, row_intact, snapshot_checksum
from memimg.stores._pending import PENDING_KEY, mismatch, moved_by_rekey, settle_pending
from memimg.stores._protocol import (
    EventRow,
    Rewrite,
    SeqTaken,
    SnapshotInfo,
    SnapshotRow,
    Store,
)

__all__ = [
    "PENDING_KEY",
    "ProtectedStore",
    "mismatch",
    "protect",
    "refuse_if_rekeyed",
]

_E: Final = b"E"
_S: Final = b"S"
#: How many chain anchors (seq -> MAC) a store keeps at hand.
_ANCHORS: Final = 64
#: A stored row as :meth:`Protection.unseal` takes it: ``(table, seq, tx, ts, kind, target, stored payload)``.
_Row = tuple[bytes, int, int, int, str, int, bytes]


class ProtectedStore:
    """*inner*, its payloads sealed by *protection* (see the module docstring)."""

    def __init__(self, inner: Store, protection: Protection) -> None:
        self.inner = inner
        self.protection = protection
        self.description = inner.description
        #: what a commit's append needs, in one attribute. ``__getattr__`` below is called only when a lookup
        #: fails, but a class that defines it has every lookup go through CPython's slower getattr hook (not
        #: specialised: ~3x a plain instance's on 3.11): one lookup per commit rather than three
        self._appending = (protection.seal_rows, protection.chained, inner)
        self._anchors: dict[int, bytes] = {}
        self._anchors_lock = threading.Lock()  # the snapshot thread and followers read beside the committer

    def __repr__(self) -> str:
        return f"ProtectedStore({self.inner.description!r}, {self.protection!r})"

    def __getattr__(self, name: str) -> Any:
        # what a particular store offers beyond the protocol (its path, its readonly flag, ...)
        return getattr(self.inner, name)

    # -- the chain ---------------------------------------------------------------------------------

    def _remember(self, seq: int, mac: bytes) -> None:
        with self._anchors_lock:
            anchors = self._anchors
            anchors[seq] = mac
            if len(anchors) > _ANCHORS:
                del anchors[min(anchors)]

    def _anchor(self, seq: int, *, fresh: bool = False) -> bytes | None:
        """The MAC an event *seq* + 1 must chain from (``b""`` without an integrity key).

        It is event *seq*'s, else the link of a snapshot at *seq*, else (for
        seq 0) the chain's start; None when none of them is stored -- the
        oldest event a compaction kept, or one after a gap, which the fold
        refuses by itself.
        """
        p = self.protection
        if not p.chained:
            return b""
        if not fresh and seq in self._anchors:
            return self._anchors[seq]
        mac = None
        if seq >= 1:
            for row in self.inner.read(seq - 1, 1):
                if row[0] == seq:
                    mac = p.unseal(_E, seq, row[1], row[2], row[3], row[4], bytes(row[5]))[2]
            if mac is None and any(info.seq == seq for info in self.inner.snapshots()):
                stored = self.inner.read_snapshot(seq)
                mac = p.unseal(_S, seq, 0, stored[1], "", 0, bytes(stored[2]))[1]
        else:
            mac = p.start(0)
        if mac is not None:
            self._remember(seq, mac)
        return mac

    def _link(self, seq: int) -> bytes:
        """What a row sealed after seq *seq* chains from (the chain's start for *seq* when nothing anchors it)."""
        mac = self._anchor(seq)
        return self.protection.start(seq) if mac is None else mac

    def seal_events(self, rows: Sequence[Any], prev: bytes) -> tuple[list[EventRow], bytes]:
        """*rows* sealed in order, chained from *prev* (see :meth:`Protection.seal_events`); and the last MAC."""
        sealed, last = self.protection.seal_events(rows, prev)
        return [EventRow(*row) for row in sealed], last

    def seal_snapshot(self, row: SnapshotRow, link: bytes) -> SnapshotRow:
        seq, ts, payload, _ = row
        return SnapshotRow(seq, ts, *self.protection.seal_snapshot(seq, ts, payload, link))

    def _open_events(
        self,
        rows: Iterator[Any] | Sequence[Any],
        *,
        chain: bool = True,
        after: tuple[int, bytes] | None = None,
        macs: dict[int, bytes] | None = None,
        only: int | None = None,
    ) -> Iterator[EventRow]:
        """The plain rows of stored event *rows*, each checked; in order and chained when *chain*.

        *after*: ``(seq, MAC)`` the first row may chain from (else it is
        looked up); *macs* collects each row's MAC; *only*: yield the rows
        of that target only (the others' MACs and links are checked, their
        contents not opened).
        """
        p = self.protection
        skim = p.checking_macs_only() if only is not None and p.chained else p
        chained = chain and p.chained
        last_seq, last_mac = after if after is not None else (-1, b"")
        try:
            for row in rows:
                if not row_intact(row):
                    yield EventRow(*row)  # damaged by accident: the core reports it as it reports any damaged row
                    return
                seq, tx, ts, kind, target, stored, _ = row
                try:
                    payload, prev, mac = (p if only is None or target == only else skim).unseal(
                        _E, seq, tx, ts, kind, target, bytes(stored)
                    )
                except CorruptLogError:
                    self._refuse_if_rekeyed(seq, (_E, seq, tx, ts, kind, target, bytes(stored)))
                    raise
                if only is not None and last_seq >= 0 and seq != last_seq + 1:
                    raise CorruptLogError(
                        f"events {last_seq + 1}..{seq - 1} are missing from the log (read for the history of "
                        f"object {only}): rows were deleted; restore the log from a backup",
                        seq=last_seq + 1,
                        table="memimg_events",
                        tampered=True,
                    )
                if chained:
                    if seq == last_seq + 1:
                        fits = hmac.compare_digest(prev, last_mac)
                    else:
                        fits = _fits(prev, self._anchor(seq - 1)) or _fits(prev, self._anchor(seq - 1, fresh=True))
                    if not fits:
                        raise CorruptLogError(
                            f"event seq {seq} does not follow event seq {seq - 1} in the integrity chain: a row "
                            "was deleted, inserted, reordered or replaced; restore the log from a backup",
                            seq=seq,
                            table="memimg_events",
                            tampered=True,
                        )
                    last_seq, last_mac = seq, mac
                    if macs is not None:
                        macs[seq] = mac
                if only is not None and target != only:
                    continue
                yield EventRow(seq, tx, ts, kind, target, payload, event_checksum(seq, tx, ts, kind, target, payload))
        finally:
            if chained and last_mac and (after is None or last_seq != after[0]):
                self._remember(last_seq, last_mac)

    def _refuse_if_rekeyed(self, seq: int, row: _Row | None = None) -> None:
        """Raise ProtectionError if a ``memimg rekey`` re-sealed the log while this store was open: event *seq*
        (*row*, as stored, when known) failed to open because of that, not because of tampering.

        Only on evidence: the log's stored settings are no longer this
        store's keys, or a rekey's pending entry is there and the rows show
        its rewrite (see :func:`~memimg.stores._pending.moved_by_rekey`). A
        pending entry alone -- left over, or written by someone -- does not
        turn damage into a rekey: the caller then reports the row.
        """
        try:
            meta = self.inner.meta()
            settings = read_settings(meta)
            wrong = _resealed(self.description, settings, self.protection)
            pending = meta.get(PENDING_KEY)
            if (
                wrong is None
                and pending is not None
                and moved_by_rekey(self.inner, self.protection, settings, pending, row)
            ):
                wrong = f"{self.description!r} is being moved to other keys by a `memimg rekey`"
        except MemimgError:
            return
        if wrong is not None:
            raise ProtectionError(
                f"{wrong}: a `memimg rekey` re-sealed the log while this image had it open (event seq {seq} "
                "is under the new keys). Nothing more was written by this image; open the log again with its "
                "new keys"
            )

    def _open_snapshot(self, row: SnapshotRow) -> tuple[SnapshotRow, bytes]:
        seq, ts, stored, checksum = row
        stored = bytes(stored)
        if snapshot_checksum(seq, ts, stored) != checksum:
            return SnapshotRow(seq, ts, stored, checksum), b""  # damaged: the core reports it
        try:
            payload, link, _ = self.protection.unseal(_S, seq, 0, ts, "", 0, stored)
        except CorruptLogError:
            self._refuse_if_rekeyed(seq, (_S, seq, 0, ts, "", 0, stored))
            raise
        return SnapshotRow(seq, ts, payload, snapshot_checksum(seq, ts, payload)), link

    # -- the protocol -----------------------------------------------------------------------------

    def head(self) -> int:
        return self.inner.head()

    def first_seq(self) -> int:
        return self.inner.first_seq()

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        # every commit's path, measured (benchmarks/protection.py): one call down, the rows sealed in one loop
        seal, chained, inner = self._appending
        sealed, last = seal(rows, self._link(expected_head) if chained else b"")
        try:
            inner.append(sealed, expected_head)
        except SeqTaken as err:
            missed = None if err.missed is None else list(self._open_events(err.missed))
            raise SeqTaken(err.expected, missed, more=err.more) from None
        if last:
            self._remember(rows[-1][0], last)

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        return self._open_events(self.inner.read(after, limit))

    def read_target(self, target: int, after: int = 0, until: int | None = None) -> Iterator[EventRow]:
        """See :meth:`Store.read_target`. With an integrity chain, every event of the range is read and the
        chain checked across it (the other objects' rows by their MACs alone, not decrypted): a deleted row
        is a CorruptLogError, not a silent gap in the object's history. That costs a scan of the range
        instead of the target index's rows."""
        if not self.protection.chained:
            return self._open_events(self.inner.read_target(target, after, until), chain=False)
        if target < 1:
            raise ValueError(f"target must be an object id (>= 1), not {target!r}")
        return self._read_target_chained(target, after, until)

    def _read_target_chained(self, target: int, after: int, until: int | None) -> Iterator[EventRow]:
        start = max(after, self.inner.first_seq() - 1)
        limit = None if until is None else max(0, until - start)
        rows = self.inner.read(start, limit)
        # the first row read must be the one after *start* (a row deleted there is a gap too)
        anchor = self._anchor(start, fresh=True) if start >= 0 else None  # None: nothing before (compacted)
        return self._open_events(rows, only=target, after=None if anchor is None else (start, anchor))

    def index_targets(self, upto: int, *, least: int = 1) -> int:
        return self.inner.index_targets(upto, least=least)

    def write_snapshot(self, row: SnapshotRow, holder: str | None = None) -> bool:
        return self.inner.write_snapshot(self.seal_snapshot(row, self._link(row[0])), holder)

    def snapshots(self) -> list[SnapshotInfo]:
        return self.inner.snapshots()

    def read_snapshot(self, seq: int) -> SnapshotRow:
        row, link = self._open_snapshot(SnapshotRow(*self.inner.read_snapshot(seq)))
        if link:
            self._check_link(row.seq, link)
            self._remember(row.seq, link)  # the first event replayed after it must chain from it
        return row

    def _check_link(self, seq: int, link: bytes) -> None:
        """Refuse a snapshot at *seq* whose *link* is not the MAC of the stored event *seq* (when it is stored).

        A snapshot sealed under the same keys but taken from another log, or
        from this log before an erase re-chained it, has a valid MAC of its
        own: only its link tells it does not belong here.
        """
        if seq < 1:
            return
        for stored in self.inner.read(seq - 1, 1):
            if stored[0] != seq or not row_intact(stored):
                return  # not stored (compacted away), or damaged: the core reports damage as it reads on
            mac = self.protection.unseal(_E, seq, *stored[1:5], bytes(stored[5]))[2]
            if not hmac.compare_digest(mac, link):
                raise _foreign_snapshot(seq)

    def meta(self) -> dict[str, str]:
        return self.inner.meta()

    def set_meta(self, key: str, value: str | None) -> None:
        self.inner.set_meta(key, value)

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        return self.inner.lease(name, holder, seconds)

    def release(self, name: str, holder: str) -> None:
        self.inner.release(name, holder)

    def changed(self, seen: int) -> bool:
        return self.inner.changed(seen)

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        return self.inner.wait_for_change(seen, timeout)

    def delete_events_before(self, seq: int) -> int:
        return self.inner.delete_events_before(seq)

    def delete_snapshots_before(self, seq: int) -> int:
        return self.inner.delete_snapshots_before(seq)

    def reclaim(self) -> bool:
        return self.inner.reclaim()

    def close(self) -> None:
        self.inner.close()

    def rewrite(self, plan: Callable[[Sequence[EventRow]], Rewrite], after: int) -> None:
        """See :meth:`Store.rewrite`; with an integrity chain, every event from the first one rewritten on is
        sealed again (its MAC chains the rewritten one's), and every snapshot from that seq on (its link).

        So the chain stays whole: a row put back from before the rewrite no
        longer fits it. The events and snapshots are read (and checked)
        before the store's write turn is taken -- erase holds the snapshot
        lease, so no snapshot changes meanwhile -- which holds them in memory.
        """
        p = self.protection
        if not p.chained:

            def sealed_plan(missed: Sequence[EventRow]) -> Rewrite:
                events, snaps, rows = plan(list(self._open_events(missed, chain=False)))
                return Rewrite(
                    self.seal_events(events, b"")[0],
                    [self.seal_snapshot(SnapshotRow(*s), b"") for s in snaps],
                    self.seal_events(rows, b"")[0],
                )

            self.inner.rewrite(sealed_plan, after)
            return
        first = self.inner.first_seq()
        base = self._anchor(first - 1, fresh=True)
        macs: dict[int, bytes] = {first - 1: base or self.protection.start(first - 1)}
        before = list(
            self._open_events(
                self.inner.read(first - 1, max(0, after - first + 1)),
                after=None if base is None else (first - 1, base),
                macs=macs,
            )
        )
        stored_snaps = {}
        for info in self.inner.snapshots():
            stored_snaps[info.seq] = self._open_snapshot(SnapshotRow(*self.inner.read_snapshot(info.seq)))
        result: list[tuple[int, bytes]] = []

        def chained_plan(missed: Sequence[EventRow]) -> Rewrite:
            # no store call in here: the store holds its write turn (the memory store, its lock)
            known = {r.seq: r for r in before}
            last = max(known, default=first - 1)
            seen = dict(macs)
            for r in self._open_events(missed, after=(last, seen[last]), macs=seen):
                known[r.seq] = r
            events, snaps, rows = plan([r for r in known.values() if r.seq > after])
            changed = {r[0]: EventRow(*r) for r in events if r[0] in known}
            start = min(changed, default=max(known, default=first - 1) + 1)
            redo = [changed.get(s, known[s]) for s in sorted(known) if s >= start]
            new_events, prev = self.seal_events(redo, seen[start - 1])
            appended, end = self.seal_events(rows, prev)
            new_macs = {r.seq: self.mac_of(r) for r in new_events}
            new_snaps = []
            replaced = {s[0]: SnapshotRow(*s) for s in snaps}
            for seq, (row, link) in stored_snaps.items():
                if seq in replaced or seq >= start:
                    new_snaps.append(self.seal_snapshot(replaced.get(seq, row), new_macs.get(seq, link)))
            result[:] = [(rows[-1][0], end)] if rows else []
            return Rewrite(new_events, new_snaps, appended)

        self.inner.rewrite(chained_plan, after)
        with self._anchors_lock:
            self._anchors.clear()
        for seq, mac in result:
            self._remember(seq, mac)

    @staticmethod
    def mac_of(row: EventRow) -> bytes:
        return bytes(row.payload[2 + MAC_SIZE : 2 + 2 * MAC_SIZE])

    # -- what the tools ask --------------------------------------------------------------------

    def check_chain(self) -> tuple[int, bytes]:
        """Read every event and snapshot, checking each and the chain; ``(head seq, head MAC)``.

        Raises:
            CorruptLogError: the first row that fails (edited, inserted,
                deleted, reordered, or sealed under another key).
        """
        first = self.inner.first_seq()
        base = self._anchor(first - 1, fresh=True)
        head_seq, head_mac = first - 1, base or b""
        snaps = sorted(info.seq for info in self.inner.snapshots())
        for row in self.inner.read(first - 1):
            if not row_intact(row):
                raise CorruptLogError(
                    f"event seq {row[0]} is corrupt (checksum mismatch)", seq=row[0], table="memimg_events"
                )
        macs: dict[int, bytes] = {}
        start = None if base is None else (head_seq, base)
        for row in self._open_events(self.inner.read(first - 1), after=start, macs=macs):
            if row.seq != head_seq + 1:
                raise CorruptLogError(
                    f"events {head_seq + 1}..{row.seq - 1} are missing from the log",
                    seq=head_seq + 1,
                    table="memimg_events",
                    tampered=True,
                )
            head_seq = row.seq
        head_mac = macs.get(head_seq, head_mac)
        if base is None and macs and not any(seq in macs for seq in snaps):
            # nothing the key vouches for anchors the first event: neither the event before it nor a snapshot
            # at or after it (compaction keeps a snapshot at the first event it keeps)
            raise CorruptLogError(
                f"events 1..{first - 1} are missing and no snapshot covers them: the oldest events were deleted "
                "(the chain starts at event 1, or at a snapshot compaction kept); restore the log from a backup",
                seq=first - 1,
                table="memimg_events",
                tampered=True,
            )
        for seq in snaps:
            _, link = self._open_snapshot(SnapshotRow(*self.inner.read_snapshot(seq)))
            if seq in macs and not hmac.compare_digest(link, macs[seq]):
                raise _foreign_snapshot(seq)
        return head_seq, head_mac


def _foreign_snapshot(seq: int) -> CorruptLogError:
    """The error for a snapshot at *seq* whose chain link is not the MAC of the stored event *seq*."""
    return CorruptLogError(
        f"snapshot at seq {seq} does not belong to this log's integrity chain (its link is not "
        f"event {seq}'s MAC): it was replaced; restore the log from a backup",
        seq=seq,
        table="memimg_snapshots",
        tampered=True,
    )


def _fits(prev: bytes, anchor: bytes | None) -> bool:
    """Whether a row's previous MAC is *anchor* (None: nothing stored anchors it -- see ProtectedStore._anchor)."""
    return anchor is None or hmac.compare_digest(prev, anchor)


def _resealed(description: str, settings: dict[str, Any] | None, p: Protection) -> str | None:
    """What about the log's stored *settings* says its rows are no longer sealed as *p* (the protection a
    store was opened with) seals them (None: nothing does).

    The keys, and the log id each row is bound to: a rekey that changes the
    compression alone binds the rows to a new id. A protection that checks
    MACs only (``memimg verify`` with the integrity key alone) has no
    encryption key to compare: its integrity key and the log id are.
    """
    if p.macs_only:
        stored = settings.get("integrity_key_id") if settings else None
        if stored != p.integrity_id:
            return f"{description!r} is no longer under integrity key {p.integrity_id} (now: {stored})"
    else:
        wrong = mismatch(description, settings, p)
        if wrong is not None:
            return wrong
    if (p.encrypted or p.chained) and (settings or {}).get("log_id") != p.log_id:
        return f"{description!r} was sealed anew (under a new log id)"
    return None


def protect(store: Store, protection: Protection | None) -> Store:
    """*store* opened with *protection* (None: no option given): itself, or a :class:`ProtectedStore`.

    Raises:
        ProtectionError: the log is protected and the keys given are missing
            or not its keys; or the log is plain (it has rows) and a key was
            given (``memimg rekey`` converts it). Nothing was read or
            written but ``memimg_meta``.
    """
    p = protection or Protection()
    meta = store.meta()
    settings = read_settings(meta)
    wrong = mismatch(store.description, settings, p)
    pending_text = meta.get(PENDING_KEY)
    if pending_text is not None:
        settings, wrong = settle_pending(store, p, settings, pending_text, wrong)
    if settings is not None:
        p = p.for_log(settings.get("log_id"))  # None: a log protected before log ids (still opens)
    if wrong is not None:
        empty = store.head() == 0 and not store.snapshots()
        if settings is None and empty:
            if p.active:
                p = p.for_log(new_log_id())  # a new log: an id of its own, bound into every row it seals
            _store_settings(store, p)
            return ProtectedStore(store, p) if p.active else store
        if settings is None:
            raise ProtectionError(
                f"{wrong}: it holds plain rows. To protect it, convert it with "
                f"`memimg rekey {store.description} --new-encryption-key-env NAME` (and/or "
                "--new-integrity-key-env NAME); nothing was changed"
            )
        if (p.key_id and not settings.get("key_id")) or (p.integrity_id and not settings.get("integrity_key_id")):
            raise ProtectionError(
                f"{wrong}. To add a key to the log, convert it with `memimg rekey {store.description} "
                "--new-encryption-key-env NAME` (and/or --new-integrity-key-env NAME; memimg.rekey in Python), "
                "giving its current keys as usual; nothing was read or changed"
            )
        raise ProtectionError(f"{wrong}; nothing was read or changed")
    if settings is not None and p.compression is None and settings.get("compression"):
        p = p.compressing(settings["compression"])  # the log's own setting, unless another is asked for
    if p.active and (settings or {}).get("compression") != p.compression:
        _store_settings(store, p)  # each row says how it is compressed: the setting is what new rows get
    if settings is None and not p.active:
        return store
    return ProtectedStore(store, p)


def _store_settings(store: Store, p: Protection) -> None:
    try:
        store.set_meta(PROTECTION_KEY, p.settings_text() if p.active else None)
    except ReadOnlyError:
        pass


def refuse_if_rekeyed(store: Store, seq: int | None) -> None:
    """Raise ProtectionError if *store*'s log is no longer under the keys it was opened with (a ``memimg rekey``
    ran since): event *seq* failed to decode because of that. A plain log that was protected meanwhile
    counts (its image would otherwise report the sealed rows as damage)."""
    if isinstance(store, ProtectedStore):
        store._refuse_if_rekeyed(seq or 0)
        return
    try:
        meta = store.meta()
    except MemimgError:
        return
    pending = meta.get(PENDING_KEY)
    if PROTECTION_KEY in meta or (
        pending is not None and moved_by_rekey(store, Protection(), read_settings(meta), pending)
    ):
        raise ProtectionError(
            f"{store.description!r} was protected by a `memimg rekey` while this image had it open (event seq "
            f"{seq} is sealed). Nothing more was written by this image; open the log again with its new keys"
        )
