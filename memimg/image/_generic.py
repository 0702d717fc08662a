"""Stand-ins for entity classes that are not loaded, and making every stand-in a log needs.

See :mod:`memimg.core._generic`: tools read any image; a stored entity type
no class claims gets a ``@persistent`` class made from the schema the log
declares. That needs the model's decorator, so it is made here, in the
image layer, and handed to the core's reader as its stand-in maker.
"""

from __future__ import annotations

import typing
from typing import Any

import orjson

from memimg._errors import CorruptLogError, UnknownTypeError
from memimg.core import _types
from memimg.core._generic import check_fields, class_name, stand_in_fields, value_class
from memimg.core._records import declared_types
from memimg.core._rows import SnapshotRow, verify_snapshot
from memimg.model._persistent import persistent

__all__ = ["entity_class", "make_stand_in", "prepare"]


def make_stand_in(
    name: str, fields: tuple[str, ...], version: int, is_value: bool, types: tuple[str, ...] | None = None
) -> _types.TypeInfo:
    """The stand-in class of stored type *name* (a :data:`memimg.core._generic.StandInMaker`).

    *types* (the declared field types, if the log records them) are declared
    again as stored when the stand-in's states are written back.
    """
    info = (value_class if is_value else entity_class)(name, fields, version)
    if types is not None:
        info.types = (-1, types)
    return info


def entity_class(name: str, fields: tuple[str, ...], version: int) -> _types.TypeInfo:
    """A ``@persistent`` stand-in for the stored entity type *name*."""
    ns: dict[str, Any] = {"__annotations__": dict.fromkeys(fields, "Any"), "__module__": "memimg.generic"}
    ns.update(stand_in_fields(name, fields))
    ns["__qualname__"] = class_name(name)
    built = persistent(name=name, version=version)(type(class_name(name), (), ns))
    info = _types.info_of(built)
    assert info is not None
    info.stand_in = True
    info.defaults = {}  # a field a stored state lacks stays unset, so it is written back without it
    return info


def prepare(store: Any, removed_types: frozenset[str], *, whole: bool = False) -> None:
    """Make stand-ins, before reading *store*, for every type the part of its log read declares and no class claims.

    Recovery reads the newest intact snapshot and the events after it, so
    only those declarations are looked at: a snapshot (compaction writes
    one) spares a tool the scan of the whole log. With *whole*, every
    snapshot and every event is (``verify`` reads them all).

    Each stand-in gets every field any of those declarations of its name
    lists (and the newest version), so states written by successive
    versions of a class -- fields added over time -- are all read and
    written back whole. A stand-in made by an earlier read (of another
    image) is made again.
    """
    found: dict[str, tuple[int, dict[str, str | None], bool]] = {}
    after = 0
    for info in store.snapshots():  # newest first, as recovery tries them
        row = SnapshotRow(*store.read_snapshot(info.seq))
        header = _header(row) if whole else _intact_header(row)
        if header is None:
            continue  # corrupt: recovery skips it, with a warning (verify reports it)
        _note(found, header.get("types") or {}, info.seq, "memimg_snapshots")
        if not whole:
            after = info.seq
            break
    for row in store.read(after=after):
        payload = row[5]
        if payload.endswith(b"}]"):  # declarations come last: [args, records, types]
            try:
                parts = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # reported by the replay, with its seq
            if len(parts) > 2 and isinstance(parts[2], dict):
                _note(found, parts[2], row[0], "memimg_events")
    for name, (version, fields, value) in found.items():
        if name in removed_types:
            continue
        try:
            info = _types.resolve(name)
        except UnknownTypeError:
            info = None
        if info is None or info.stand_in:
            types = tuple(fields.values())
            known = None if None in types else typing.cast(tuple[str, ...], types)
            make_stand_in(name, tuple(fields), version, value, known)


def _intact_header(row: SnapshotRow) -> dict[str, Any] | None:
    """The header of a snapshot recovery would load (its checksum holds), else ``None``."""
    try:
        verify_snapshot(row)
    except CorruptLogError:
        return None
    return _header(row)


def _header(row: SnapshotRow) -> dict[str, Any] | None:
    payload = row.payload
    end = payload.find(b"\n")
    try:
        header = orjson.loads(payload if end < 0 else payload[:end])
    except orjson.JSONDecodeError:
        return None
    return header if isinstance(header, dict) else None


def _note(
    found: dict[str, tuple[int, dict[str, str | None], bool]], types: dict[str, Any], seq: int, table: str
) -> None:
    """Add the declarations *types* (of event or snapshot *seq*) to *found*: each field with its declared
    type (the newest declaration's; ``None`` when not recorded)."""
    for name, decl in types.items():
        try:
            version, fields = decl[0], decl[1]
            check_fields(name, fields)
            field_types: Any = declared_types(name, decl) or [None] * len(fields)
        except (CorruptLogError, TypeError, IndexError, KeyError) as err:
            where = "snapshot at seq" if table == "memimg_snapshots" else "event seq"
            detail = err if isinstance(err, CorruptLogError) else f"a malformed declaration of {name!r} ({err!r})"
            raise CorruptLogError(f"{where} {seq}: {detail}", seq=seq, table=table) from None
        value = len(decl) > 2 and decl[2] == "value"
        old = found.get(name)
        if old is None:
            found[name] = (version, dict(zip(fields, field_types, strict=True)), value)
        else:
            old[1].update(zip(fields, field_types, strict=True))
            found[name] = (max(old[0], version), old[1], old[2] or value)
