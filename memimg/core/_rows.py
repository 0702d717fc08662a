"""Row checksums and the public :class:`Event` record.

A checksum covers every column of a row, so a row damaged by accident -- a
flipped bit, a torn or truncated write, an edit that left the checksum as it
was -- is found before it is replayed. It is a CRC-32: every error burst of
up to 32 bits is caught, other damage but for a chance of 2**-32. It has no
key, so it is not a signature: a deliberate edit that stores the CRC-32 of
its new content passes it (what reading such a row still refuses is the
decoder's business; see docs/how-it-works.md).
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from functools import cached_property
from typing import Any, Final, NamedTuple

import attrs
import orjson

from memimg._errors import CorruptLogError
from memimg.core._kinds import KINDS

__all__ = [
    "BAD_COLUMN",
    "KIND_CODES",
    "PACK_COLUMNS",
    "Event",
    "EventRow",
    "SnapshotInfo",
    "SnapshotRow",
    "event_checksum",
    "pack_columns",
    "row_intact",
    "snapshot_checksum",
    "ts_to_datetime",
    "verify_event",
    "verify_snapshot",
]


class EventRow(NamedTuple):
    """One row of ``memimg_events``."""

    seq: int
    tx: int
    ts: int  #: commit time, microseconds since the Unix epoch (UTC)
    kind: str
    target: int
    payload: bytes
    checksum: int


class SnapshotRow(NamedTuple):
    """One row of ``memimg_snapshots``."""

    seq: int
    ts: int
    payload: bytes
    checksum: int


class SnapshotInfo(NamedTuple):
    """A snapshot's header, without its payload."""

    seq: int
    ts: int
    size: int


_crc32 = zlib.crc32
_pack = struct.Struct("<qqqq").pack
#: the packing of an event's integer columns into its checksum, for the commit's hot loop
#: (:meth:`memimg.image._encode.EncodeSession.encode_events` computes ``obj.set`` rows' checksums inline:
#: ``crc32(payload, crc32(pack_columns(seq, tx, ts, target), kind.code))``, as :func:`event_checksum`)
pack_columns: Final = _pack
#: kind name -> its code (a kind unknown to this memimg: the CRC-32 of its name, as a Kind's code is)
KIND_CODES: Final[dict[str, int]] = {name: k.code for name, k in KINDS.items()}


def event_checksum(seq: int, tx: int, ts: int, kind: str, target: int, payload: bytes) -> int:
    """The checksum stored with an event row: every column goes into it (the kind through its code)."""
    code = KIND_CODES.get(kind)
    if code is None:  # not cached: a damaged or crafted log must not grow the table
        code = _crc32(kind.encode())
    return _crc32(payload, _crc32(_pack(seq, tx, ts, target), code))


#: What :func:`event_checksum` packs the integer columns with, for a loop that computes it inline (the fold,
#: :mod:`memimg.core._fold`): ``crc32(payload, crc32(PACK_COLUMNS(seq, tx, ts, target), kind.code))``.
PACK_COLUMNS: Final = _pack


#: What computing a checksum raises for a row with a column of the wrong type (a damaged row).
BAD_COLUMN: Final = (TypeError, ValueError, OverflowError, AttributeError, struct.error)


def row_intact(row: Any) -> bool:
    """Whether an event row (any sequence of its seven columns) matches its checksum."""
    seq, tx, ts, kind, target, payload, checksum = row
    try:
        return bool(event_checksum(seq, tx, ts, kind, target, payload) == checksum)
    except BAD_COLUMN:
        return False


def snapshot_checksum(seq: int, ts: int, payload: bytes) -> int:
    """The checksum stored with a snapshot row."""
    return _crc32(payload, _crc32(_pack(seq, 0, ts, 0)))


def verify_event(row: EventRow) -> None:
    """Raise :class:`CorruptLogError` unless *row* is intact."""
    if not row_intact(row):
        raise CorruptLogError(
            f"event seq {row.seq} is corrupt (checksum mismatch): the row was damaged or edited; "
            "restore the log from a backup (memimg verify names every damaged row)",
            seq=row.seq,
            table="memimg_events",
        )


def verify_snapshot(row: SnapshotRow) -> None:
    """Raise :class:`CorruptLogError` unless *row* is intact."""
    try:
        ok = snapshot_checksum(row.seq, row.ts, row.payload) == row.checksum
    except BAD_COLUMN:
        ok = False
    if not ok:
        raise CorruptLogError(
            f"snapshot at seq {row.seq} is corrupt (checksum mismatch)",
            seq=row.seq,
            table="memimg_snapshots",
        )


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TIMEDELTA: Final = dt.timedelta


def ts_to_datetime(ts: int) -> dt.datetime:
    """A row timestamp (microseconds since the epoch) as an aware UTC datetime."""
    return _EPOCH + _TIMEDELTA(0, 0, ts)  # positional: the keyword costs a third of the call


@attrs.frozen
class Event:
    """One committed event, as read from the log.

    ``data`` is the kind's arguments and ``objects`` the objects this event
    created (``[oid, type, state]`` records), both as stored (JSON data; see
    the value encoding in the docs). ``meta`` is the metadata of its
    transaction (``img.transaction(meta=...)``, ``img.annotate(...)``;
    ``{}`` when none): a dict of each event's own, so changing one event's
    leaves the others of its transaction alone.
    ``replay`` folds these records.
    """

    __module__ = "memimg"

    seq: int
    tx: int
    ts: dt.datetime
    kind: str
    target: int
    payload: bytes = attrs.field(repr=False)
    meta: dict[str, Any] = attrs.field(factory=dict, eq=False)

    @cached_property
    def _decoded(self) -> list[Any]:
        return orjson.loads(self.payload)  # type: ignore[no-any-return]

    @property
    def data(self) -> list[Any]:
        """The kind's arguments, as stored."""
        return self._decoded[0]  # type: ignore[no-any-return]

    @property
    def objects(self) -> list[Any]:
        """``[oid, type, state]`` records of the objects this event created."""
        decoded = self._decoded
        return decoded[1] if len(decoded) > 1 else []

    @property
    def types(self) -> dict[str, Any]:
        """Schemas (``name -> [version, fields]``) first declared by this event."""
        decoded = self._decoded
        return decoded[2] if len(decoded) > 2 else {}

    def to_row(self) -> EventRow:
        """The stored row (with a fresh checksum)."""
        ts = int((self.ts - ts_to_datetime(0)) / dt.timedelta(microseconds=1))
        return EventRow(
            self.seq,
            self.tx,
            ts,
            self.kind,
            self.target,
            self.payload,
            event_checksum(self.seq, self.tx, ts, self.kind, self.target, self.payload),
        )

    @classmethod
    def from_row(cls, row: EventRow, meta: dict[str, Any] | None = None) -> Event:
        """The event a verified row holds (*meta*: its transaction's metadata)."""
        ts = ts_to_datetime(row.ts)
        # a copy each: a caller changing one event's meta must not change the other events of its transaction
        return cls(row.seq, row.tx, ts, row.kind, row.target, row.payload, dict(meta) if meta else {})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for ``memimg log --json``)."""
        out: dict[str, Any] = {
            "seq": self.seq,
            "tx": self.tx,
            "ts": self.ts.isoformat(),
            "kind": self.kind,
            "target": self.target,
            "data": self.data,
        }
        if self.meta:
            out["meta"] = self.meta
        if self.objects:
            out["objects"] = self.objects
        if self.types:
            out["types"] = self.types
        return out
