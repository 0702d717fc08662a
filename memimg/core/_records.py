"""Records: objects described in full, ``[oid, type, state]``, by one breadth-first walk.

Records are how the log stores objects an event introduces (an attach
writes the new subgraph's records inside the event that makes it
reachable), and what :func:`memimg.serialize` returns (the snapshot format,
version 1). Entity states are dicts of their set fields, made by the
generated per-class encoders in their keyed form; lists, dicts and sets by
the generated collection encoders; values by the codec.

Each walk declares the schema of every class it writes to whoever keeps
the declarations (the log's, for an attach; the description's own, for
``serialize``) through its *declare* function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from memimg._errors import CorruptLogError
from memimg.core import _types
from memimg.core._codec import Codec
from memimg.core._encoders import REF_CALL, container_encoders, slow_state, state_encoder, value_writer
from memimg.core._table import ObjectTable
from memimg.core._typetext import field_types
from memimg.core._values import describe_unsupported

__all__ = [
    "declaration",
    "declared_types",
    "describe",
    "describe_detached",
    "describe_table",
    "encode_records",
    "numbering",
    "state_writer",
]

_FORMAT: Final = 1


def declaration(info: _types.TypeInfo) -> list[Any]:
    """How the log and snapshots declare *info*'s schema: ``[version, fields, kind, types]``.

    *kind* is ``"value"`` for a value class, ``"entity"`` otherwise; *types*
    is the declared type of each field as text (:mod:`memimg.core._typetext`).
    Logs written before field types were recorded declare ``[version,
    fields]`` (and ``"value"``); a class whose types are not known (a tool's
    stand-in) is declared so still.
    """
    out: list[Any] = [info.version, list(info.fields)]
    types = field_types(info)
    if info.kind == _types.VALUE:
        out.append("value")
    elif types is not None:
        out.append("entity")
    if types is not None:
        out.append(list(types))
    return out


def declared_types(name: str, decl: list[Any]) -> tuple[str, ...] | None:
    """The field types a stored declaration *decl* of *name* records (``None``: it records none).

    Raises:
        CorruptLogError: the types are not one string per declared field.
    """
    if len(decl) < 4:
        return None
    types = decl[3]
    if type(types) is not list or len(types) != len(decl[1]) or not all(type(t) is str for t in types):
        raise CorruptLogError(
            f"the log declares type {name!r} with field types {types!r:.80}, not one string per field: "
            "the log was damaged or crafted; restore it from a backup",
            seq=None,
            table="",
        )
    return tuple(types)


def encode_records(
    codec: Codec,
    queue: list[Any],
    ref: Callable[[Any], int],
    oid_of: Callable[[Any], int],
    declare: Callable[[_types.TypeInfo], Any],
    *,
    ref_mode: str = REF_CALL,
    progress: Callable[[int], None] | None = None,
) -> list[Any]:
    """``[oid, type, state]`` for each object of *queue*, which grows as *ref* meets new ones.

    The hot loop of attaching large graphs and of ``serialize``
    (``python -m benchmarks``, graph attach): values are written inline by
    the generated encoders, which write references as *ref_mode* says
    (``REF_COMMIT`` when *ref* gives ids to new objects of the graph,
    ``REF_CALL`` for any other *ref*).
    """
    containers, entry_for = _state_writers(codec, ref, declare, ref_mode, keyed=True)
    records: list[Any] = []
    append = records.append
    i = 0
    while i < len(queue):
        obj = queue[i]
        i += 1
        if progress is not None and not i % 20_000:
            progress(i)
        t = type(obj)
        entry = containers.get(t)
        if entry is None:
            entry = entry_for(obj)
        name, state_of = entry
        append([oid_of(obj), name, state_of(obj)])
    return records


def state_writer(
    codec: Codec, ref: Callable[[Any], int], declare: Callable[[_types.TypeInfo], Any]
) -> Callable[[Any], tuple[str, Any]]:
    """``obj -> (type name, state)``, the state as a format-2 snapshot stores it (an entity's field
    values in declared order, a dict only if a field is unset), references written by *ref*."""
    containers, entry_for = _state_writers(codec, ref, declare, REF_CALL, keyed=False)

    def write(obj: Any) -> tuple[str, Any]:
        entry = containers.get(type(obj))
        if entry is None:
            entry = entry_for(obj)
        return entry[0], entry[1](obj)

    return write


_Entry = tuple[str, Callable[[Any], Any]]


def _state_writers(
    codec: Codec, ref: Callable[[Any], int], declare: Callable[[_types.TypeInfo], Any], ref_mode: str, *, keyed: bool
) -> tuple[dict[type, _Entry], Callable[[Any], _Entry]]:
    """``(type name, state encoder)`` by class: the collections', and a maker (which caches) of the others'."""
    shell = codec.shell
    encode = codec.encoder(ref, declare)
    value, linked = value_writer(codec, encode, ref)
    direct = not shell.reads_hooked()
    list_state, dict_state, set_state = container_encoders(REF_CALL)(value, linked, ref=ref)
    containers: dict[type, _Entry] = {
        shell.list: ("list", list_state),
        list: ("list", list_state),
        shell.dict: ("dict", dict_state),
        dict: ("dict", dict_state),
        shell.set: ("set", set_state),
        set: ("set", set_state),
    }

    def entry_for(obj: Any) -> _Entry:
        t = type(obj)
        info = _types.info_of(t)
        if info is None:
            raise describe_unsupported(obj, "")
        declare(info)
        make = state_encoder(info, direct, ref_mode, keyed=keyed)
        entry = containers[t] = (info.name, make(value, linked, slow_state(info, value), ref=ref))
        return entry

    return containers, entry_for


def describe(
    codec: Codec,
    roots: list[Any],
    oid_of: Callable[[Any], int],
    *,
    seq: int,
    next_oid: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The snapshot-format description (format 1) of everything reachable from *roots*."""
    queue = list(roots)
    seen = {id(o) for o in roots}

    def ref(obj: Any) -> int:
        if id(obj) not in seen:
            seen.add(id(obj))
            queue.append(obj)
        return oid_of(obj)

    types: dict[str, Any] = {}

    def declare(info: _types.TypeInfo) -> None:
        types.setdefault(info.name, declaration(info))

    root_oid = oid_of(roots[0]) if roots else 0
    records = encode_records(codec, queue, ref, oid_of, declare, progress=progress)
    return {"format": _FORMAT, "seq": seq, "next_oid": next_oid, "root": root_oid, "types": types, "objects": records}


def describe_detached(codec: Codec, root: Any) -> dict[str, Any]:
    """The snapshot-format description of a graph that belongs to no image (objects numbered from 1)."""
    data = describe(codec, [root], numbering(), seq=0, next_oid=0)
    data["next_oid"] = len(data["objects"]) + 1  # every object written got the next number
    return data


def describe_table(table: ObjectTable, seq: int) -> dict[str, Any]:
    """The snapshot-format description of everything reachable from *table*'s root.

    Objects without an id -- in a free-standing graph, what replay filled in
    where the log stores no value (see :mod:`memimg.core._reader`), which no
    image logs there -- are numbered after the table's ids, in the order the
    walk meets them, so two tables read the same way describe them alike.
    """
    n = len(table.objects)
    roots = [table.root] if table.root is not None else []
    return describe(table.codec, roots, numbering(n, own_ids=True), seq=seq, next_oid=n)


def numbering(start: int = 1, *, own_ids: bool = False) -> Callable[[Any], int]:
    """An ``oid_of`` numbering objects from *start* in the order it meets them.

    With *own_ids*, an object that has an id keeps it (only the others are
    numbered): objects a free-standing replay filled in have none.
    """
    numbers: dict[int, int] = {}
    keep: list[Any] = []  # alive while numbered: an id() is not reused

    def oid_of(obj: Any) -> int:
        if own_ids:
            oid: int | None = getattr(obj, "_mi_oid", None)
            if oid is not None:
                return oid
        key = id(obj)
        number = numbers.get(key)
        if number is None:
            number = numbers[key] = start + len(numbers)
            keep.append(obj)
        return number

    return oid_of
