"""Encoding a commit: pending events into rows, new objects into ids and records.

An :class:`EncodeSession` turns one commit's events into stored rows. Objects
met for the first time -- attached since the last commit, with no id yet --
get the next ids of the table, in log order, and are written in full
(``[oid, type, state]`` records, :mod:`memimg.core._records`) inside the
event that introduces them; a class whose schema the log has not declared
since its last snapshot is declared in that event too.

If the append fails (another writer got there first, or the store failed),
:meth:`EncodeSession.rollback` takes back the ids and declarations, so the
graph and the table are exactly as before and the commit can be encoded
again at the new head.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from memimg._errors import MemimgError
from memimg.core import _types
from memimg.core._args import arg_encoder
from memimg.core._encoders import REF_COMMIT
from memimg.core._kinds import ADD, FIELD, KINDS, Kind
from memimg.core._reader import Pending
from memimg.core._records import declaration, encode_records
from memimg.core._rows import event_checksum, pack_columns
from memimg.core._table import ObjectTable
from memimg.core._typetext import field_types
from memimg.model._accel import speedups

__all__ = ["EncodeSession"]

_OBJ_SET = KINDS["obj.set"]
_SET_CODE = _OBJ_SET.code
_crc32 = zlib.crc32
_pack = pack_columns
#: the compiled maker of obj.set rows, or None (the pure-Python loop makes them)
_encode_sets = None if speedups is None else speedups.encode_sets


class EncodeSession:
    """Encodes the commits of one table, one at a time (under the image's lock)."""

    def __init__(self, table: ObjectTable, *, checksums: bool = True) -> None:
        self.table = table
        #: whether rows get their checksum here; not for a store that seals them (it checksums what it stores)
        self.checksums = checksums
        self.codec = table.codec
        self.shell = table.shell
        self.declarations = table.declarations
        #: the value encoder of commits: new objects get their ids, value classes are declared
        self.encode = self.codec.encoder(self.ref, self.declare)
        self._arg_encoders: dict[str, Callable[[tuple[Any, ...]], list[Any]]] = {}
        # the journal of the commit being encoded
        self._queue: list[Any] = []  # new objects whose records are still to be written
        self._records: list[Any] = []  # the current event's new objects
        self._new_types: dict[str, Any] = {}  # the current event's declarations
        self._assigned_from = 0
        self._born_from = 0
        self._declared_before: dict[str, Any] = {}
        self._begun = False  # whether the commit being encoded has begun (see begin)

    # -- ids and declarations ---------------------------------------------------

    def ref(self, obj: Any) -> int:
        """The id of *obj*, given now (the next of the table) if it has none."""
        oid: int | None = obj._mi_oid
        if oid is None:
            table = self.table
            owner = obj._mi_img
            if owner is not table.owner:
                if owner is not None:
                    raise MemimgError(f"internal: {type(obj).__qualname__} object belongs to another image")
                # forgotten by a snapshot's collection while a transaction still held it: it is
                # attached again, written in full like any new object
                self.shell.set_identity(obj, table.owner, None)
            oid = len(table.objects)
            table.objects.append(obj)
            if type(obj) in self.shell.tracked:
                obj._mi_oid = oid
            else:
                self.shell.set_oid(obj, oid)
            self._queue.append(obj)
        return oid

    def declare(self, info: _types.TypeInfo) -> bool:
        """Declare *info*'s schema in the event being encoded, unless the log has it already."""
        declarations = self.declarations
        current = (info.version, info.fields, field_types(info))
        if declarations.by_name.get(info.name) != current:
            if info.name not in self._declared_before:
                self._declared_before[info.name] = declarations.by_name.get(info.name)
            declarations.by_name[info.name] = current
            declarations.current.clear()
            self._new_types[info.name] = declaration(info)
        else:
            declarations.current.add(info.cls)
        return True

    # -- rows -------------------------------------------------------------------

    def set_row(self, seq: int, ts: int, oid: int, name: str, value: Any) -> Any:
        """The row of a commit of one ``obj.set`` of *value*, a native scalar, on object *oid*, at *seq*
        (:meth:`Engine.commit_field`; the row :meth:`encode_events` makes of it)."""
        data = orjson.dumps([[name, self.encode(value)]])
        crc = _crc32(data, _crc32(_pack(seq, seq, ts, oid), _SET_CODE)) if self.checksums else 0
        return (seq, seq, ts, "obj.set", oid, data, crc)

    def begin(self) -> None:
        """Begin encoding a commit: what :meth:`rollback` takes back is what is done from here on.

        :meth:`encode_events` begins by itself; a bulk attach (:mod:`._bulk`)
        begins first, numbers the new objects and hands over their records
        (:meth:`adopt`) before the commit's events are encoded.
        """
        self._assigned_from = len(self.table.objects)
        self._born_from = len(self.table.born)
        if self._declared_before:
            self._declared_before = {}
        self._begun = True

    def adopt(self, records: list[Any]) -> None:
        """Write *records* (of objects numbered since :meth:`begin`) inside the next event encoded."""
        self._records = records

    @property
    def first_new(self) -> int:
        """The id of the first object the commit being encoded (or about to be) makes part of the table."""
        return self._assigned_from if self._begun else len(self.table.objects)

    def encode_events(self, pending: list[Pending], first_seq: int, ts: int) -> list[Any]:
        """The rows of *pending* at seqs ``first_seq`` on (undone by :meth:`rollback`).

        A measured hot loop (``python -m benchmarks``: commit, batch). With the compiled accelerator
        (:mod:`memimg.model._accel`), each run of ``obj.set`` events of scalars on objects that have their ids
        and whose classes are declared is made into rows by one call (``encode_sets``: the same rows, byte for
        byte, as the loop of :meth:`_encode`, which makes every other event's).
        """
        if not self._begun:
            self.begin()
        self._begun = False
        rows: list[Any] = []
        if _encode_sets is None:
            self._encode(pending, first_seq, ts, rows)
            return rows
        # compiled: runs of obj.set rows made in one call each, every other event by the loop below
        if type(pending) is not list:
            pending = list(pending)
        at, n = 0, len(pending)
        declarations, checksums, dumps = self.declarations, self.checksums, orjson.dumps
        while True:
            if not self._queue and not self._new_types and not self._records:
                at = _encode_sets(pending, at, rows, first_seq, ts, _OBJ_SET, declarations.current, checksums, dumps)
            if at == n:
                return rows
            self._encode(pending[at : at + 1], first_seq, ts, rows)
            at += 1

    def _encode(self, pending: list[Pending], first_seq: int, ts: int, rows: list[Any]) -> None:
        """Append the rows of *pending*, the next events of the commit from *first_seq* on, to *rows*."""
        append = rows.append
        seq = first_seq + len(rows)
        dumps = orjson.dumps
        current = self.declarations.current
        queue = self._queue
        checksums = self.checksums
        encode = self.encode
        obj_set = _OBJ_SET
        for k, target, args in pending:
            if target is None:
                toid = 0
            else:
                toid = target._mi_oid
                if toid is None:
                    toid = self.ref(target)
                if (k.conflict is FIELD or k.conflict is ADD) and type(target) not in current:
                    self.declare(_types.info_of(type(target)))  # type: ignore[arg-type]
            if k is obj_set:  # the commonest kind: its row made here, with no per-event dispatch
                encoded_args = [args[0], encode(args[1])]
                # no new object nor class met (nor records handed over): a row of its own
                if not queue and not self._new_types and not self._records:
                    data = dumps([encoded_args])
                    crc = _crc32(data, _crc32(_pack(seq, first_seq, ts, toid), _SET_CODE)) if checksums else 0
                    append((seq, first_seq, ts, "obj.set", toid, data, crc))
                    seq += 1
                    continue
            else:
                encoded_args = self._encode_args(k, args)
            if queue or self._new_types or self._records:
                self._drain()
                if self._records:
                    self.table.born.note(self._records[0][0], seq)
                parts = (
                    [encoded_args, self._records, self._new_types] if self._new_types else [encoded_args, self._records]
                )
                data = dumps(parts)
                self._records = []
                self._new_types = {}
            else:
                data = dumps([encoded_args])
            name = k.name
            checksum = event_checksum(seq, first_seq, ts, name, toid, data) if checksums else 0
            append((seq, first_seq, ts, name, toid, data, checksum))
            seq += 1

    def _encode_args(self, k: Kind, args: tuple[Any, ...]) -> list[Any]:
        encoder = self._arg_encoders.get(k.params)
        if encoder is None:
            encoder = self._arg_encoders[k.params] = arg_encoder(k.params, self.encode)
        return encoder(args)

    def _drain(self) -> None:
        """Write the records of the objects met so far (they may meet more: they are written too)."""
        queue = self._queue
        if queue:
            self._records.extend(
                encode_records(self.codec, queue, self.ref, _oid_of, self.declare, ref_mode=REF_COMMIT)
            )
            queue.clear()

    def rollback(self) -> None:
        """Take back the ids and declarations of the last :meth:`encode_events`."""
        table = self.table
        table.truncating(self._assigned_from)
        for obj in table.objects[self._assigned_from :]:
            self.shell.set_identity(obj, table.owner, None)
        del table.objects[self._assigned_from :]
        table.born.truncate(self._born_from)
        declarations = self.declarations
        if self._declared_before:
            declarations.current.clear()
        for name, before in self._declared_before.items():
            if before is None:
                declarations.by_name.pop(name, None)
            else:
                declarations.by_name[name] = before
        self._declared_before = {}
        self._begun = False
        self._queue.clear()
        # what an event whose encoding failed had gathered (else the next commit's first event would carry it)
        self._records = []
        self._new_types = {}


_oid_of = operator.attrgetter("_mi_oid")
