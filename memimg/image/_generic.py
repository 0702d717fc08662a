"""Stand-ins for entity classes that are not loaded, and making every stand-in a log needs.

See :mod:`memimg.core._generic`: tools read any image; a stored entity type
no class claims gets a ``@persistent`` class made from the schema the log
declares. That needs the model's decorator, so it is made here, in the
image layer, and handed to the core's reader as its stand-in maker.
"""

from __future__ import annotations

from typing import Any

import orjson

from memimg._errors import CorruptLogError, UnknownTypeError
from memimg.core import _types
from memimg.core._generic import check_fields, class_name, stand_in_fields, value_class
from memimg.model._persistent import persistent

__all__ = ["entity_class", "make_stand_in", "prepare"]


def make_stand_in(name: str, fields: tuple[str, ...], version: int, is_value: bool) -> _types.TypeInfo:
    """The stand-in class of stored type *name* (a :data:`memimg.core._generic.StandInMaker`)."""
    return (value_class if is_value else entity_class)(name, fields, version)


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


def prepare(store: Any, removed_types: frozenset[str]) -> None:
    """Make stand-ins, before reading *store*, for every type its log declares and no class claims.

    Each stand-in gets every field any declaration of its name lists (and
    the newest version), so states written by successive versions of a class
    -- fields added over time -- are all read and written back whole. A
    stand-in made by an earlier read (of another image) is made again.
    """
    found: dict[str, tuple[int, dict[str, None], bool]] = {}

    def note(types: dict[str, Any], seq: int, table: str) -> None:
        for name, decl in types.items():
            try:
                version, fields = decl[0], decl[1]
                check_fields(name, fields)
            except (CorruptLogError, TypeError, IndexError, KeyError) as err:
                where = "snapshot at seq" if table == "memimg_snapshots" else "event seq"
                detail = err if isinstance(err, CorruptLogError) else f"a malformed declaration of {name!r} ({err!r})"
                raise CorruptLogError(f"{where} {seq}: {detail}", seq=seq, table=table) from None
            value = len(decl) > 2 and decl[2] == "value"
            old = found.get(name)
            if old is None:
                found[name] = (version, dict.fromkeys(fields), value)
            else:
                old[1].update(dict.fromkeys(fields))
                found[name] = (max(old[0], version), old[1], old[2] or value)

    for info in store.snapshots():
        payload = store.read_snapshot(info.seq)[2]
        end = payload.find(b"\n")
        try:
            header = orjson.loads(payload if end < 0 else payload[:end])
        except orjson.JSONDecodeError:
            continue  # a corrupt snapshot: recovery skips it, with a warning
        if isinstance(header, dict):
            note(header.get("types") or {}, info.seq, "memimg_snapshots")
    for row in store.read(after=0):
        payload = row[5]
        if payload.endswith(b"}]"):  # declarations come last: [args, records, types]
            try:
                parts = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # reported by the replay, with its seq
            if len(parts) > 2 and isinstance(parts[2], dict):
                note(parts[2], row[0], "memimg_events")
    for name, (version, fields, value) in found.items():
        if name in removed_types:
            continue
        try:
            info = _types.resolve(name)
        except UnknownTypeError:
            info = None
        if info is None or info.stand_in:
            make_stand_in(name, tuple(fields), version, value)
