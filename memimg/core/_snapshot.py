"""The snapshot format: writing the reachable graph at one seq, and reading it back.

A snapshot is stored as one payload (format 2): a JSON header line, then
per chunk of up to 2,048 objects a *directory* line ``[[oid, ...], [type
index, ...]]`` and a *states* line ``[state, ...]``. An entity's state is
the list of its field values in the order the header declares its fields
(a dict only if a field is unset); a list's or set's state is the list of
its items, a dict's a dict (every key a str) or a list of pairs. Each chunk
is encoded as it is completed, so a snapshot of a million objects never
exists as one tree of Python objects, and a reader can create every object
from the small directory lines before it parses any state. Format 1 (one
line per object, ``oid<TAB>type<TAB>state``, written before memimg 0.2) is
still read. The header also lists where the objects were born
(``"born"``, see :mod:`memimg.core._born`), for history; a snapshot
without it is read as before.

Only objects reachable from the root are written: the walk is
breadth-first from the root, encoding each object as it meets it
(:mod:`memimg.core._snapshotter` writes them).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Container, Iterator
from typing import Any

import orjson

from memimg._errors import CorruptLogError, MemimgError
from memimg.core import _schema
from memimg.core._reader import Reader, load_states

__all__ = ["Held", "decode_snapshot", "held_states", "load_snapshot", "split_snapshot"]

_loads = orjson.loads
_get_oid = operator.attrgetter("_mi_oid")


def split_snapshot(payload: bytes, row_seq: int | None = None) -> tuple[dict[str, Any], list[Any]]:
    """A stored snapshot's header and its records, states unparsed.

    Format 2 (what :func:`write_snapshot` writes): the records are
    chunks ``(oids, type indexes into header["names"], states JSON bytes)``.
    Format 1 (one line per object, ``oid<TAB>type<TAB>state``, written before
    memimg 0.2): ``(oid, type, state JSON bytes)`` per object.

    The header must give the seq of the row holding it (*row_seq*, when
    given) and name as its root an object the snapshot holds (or 0 for an
    empty snapshot).

    Raises:
        CorruptLogError: the payload is not laid out as its header says.
        MemimgError: the payload is in a format this memimg does not know (a newer one).
    """
    end = payload.find(b"\n")
    if end < 0:
        end = len(payload)
    header, corrupt = _header(payload[:end], row_seq)
    lines = payload.split(b"\n")[1:] if end + 1 < len(payload) else []  # no copy of the payload first
    root = header["root"]
    if header["format"] == 2:
        records, root_held = _chunks(lines, header, corrupt)
        count = sum(len(oids) for oids, _, _ in records)
    else:
        records = _lines(lines, corrupt)
        count = len(records)
        root_held = any(r[0] == root for r in records)
    if count != header["count"]:
        raise corrupt(f"holds {count} objects, its header says {header['count']}")
    if not root_held and (root or count):
        raise corrupt(f"names object {root} as its root, but holds no object {root}")
    return header, records


#: Where one object's state is in a snapshot: ``(line, holder, index, oid, type name, declaration)`` (see
#: :func:`held_states`).
Held = tuple[int, list[Any], int, int, str, Any]


def held_states(
    header: dict[str, Any], records: list[Any], wanted: Container[int], row_seq: int | None = None
) -> Iterator[Held]:
    """Where the states of the objects *wanted* are, in a snapshot :func:`split_snapshot` read.

    For each of them the snapshot holds: the index of the payload line
    holding its state, that line parsed (the *holder*, the same list for
    every object of that line: an edit of it is one of the line) and the
    state's index there (``holder[index]`` is the state), its id, its type
    name, and the type's declaration in the header (``[version, fields, ...]``, or
    ``None``). Only the lines holding one of them are parsed.

    Raises:
        CorruptLogError: a states line does not hold as many states as its directory lists.
    """
    types = header.get("types") or {}
    if header["format"] == 2:
        names = header["names"]
        for n, (oids, kinds, states) in enumerate(records):
            hits = [j for j, oid in enumerate(oids) if oid in wanted]
            if hits:
                chunk = load_states(states, len(oids), n, row_seq)
                for j in hits:
                    name = names[kinds[j]]
                    yield 2 + 2 * n, chunk, j, oids[j], name, types.get(name)
    else:  # format 1: one line per object
        for n, (oid, name, text) in enumerate(records):
            if oid in wanted:
                yield 1 + n, [_loads(text)], 0, oid, name, types.get(name)


def _header(line: bytes, row_seq: int | None) -> tuple[dict[str, Any], Callable[[str], CorruptLogError]]:
    """A snapshot's header line, checked, and the maker of errors about the rest of it."""
    try:
        header = _loads(line)
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or "count" not in header:
        raise CorruptLogError(
            "a snapshot payload does not start with its header line", seq=None, table="memimg_snapshots"
        )
    fmt = header.get("format")
    if fmt not in (1, 2):
        raise MemimgError(f"unknown snapshot format {fmt!r}: written by a newer memimg?", format=fmt)
    header_seq = header.get("seq")
    seq = row_seq if row_seq is not None else header_seq if type(header_seq) is int else None

    def corrupt(what: str) -> CorruptLogError:
        return CorruptLogError(f"a snapshot payload {what}", seq=seq, table="memimg_snapshots")

    if type(header_seq) is not int:
        raise corrupt("header gives no seq")
    if row_seq is not None and header_seq != row_seq:
        raise corrupt(f"header gives seq {header_seq}, not the seq of its row ({row_seq})")
    if type(header.get("root")) is not int:
        raise corrupt("header names no root object")
    if not isinstance(header.get("types", {}), dict):
        raise corrupt("header has malformed type declarations")
    if fmt == 2:
        names = header.get("names")
        if type(names) is not list or not all(type(n) is str for n in names):
            raise corrupt("header has no list of type names")
        if type(header.get("next_oid")) is not int:
            raise corrupt("header has no next_oid")
    return header, corrupt


def _chunks(
    lines: list[bytes], header: dict[str, Any], corrupt: Callable[[str], CorruptLogError]
) -> tuple[list[Any], bool]:
    """The chunks of a format-2 snapshot (each directory checked), and whether one holds the root."""
    if len(lines) % 2:
        raise corrupt("ends in the middle of a chunk")
    n_names, next_oid, root = len(header["names"]), header["next_oid"], header["root"]
    records: list[Any] = []
    root_held = False
    for i in range(0, len(lines), 2):
        try:
            directory = _loads(lines[i])
        except orjson.JSONDecodeError:
            directory = None
        if (
            type(directory) is not list
            or len(directory) != 2
            or type(directory[0]) is not list
            or type(directory[1]) is not list
            or len(directory[0]) != len(directory[1])
            or not _ints_in(directory[0], 1, next_oid)
            or not _ints_in(directory[1], 0, n_names)
        ):
            raise corrupt(f"has a malformed directory line in chunk {i // 2}")
        if not root_held:
            root_held = root in directory[0]  # the root is written first: this stops at once
        records.append((directory[0], directory[1], lines[i + 1]))
    return records, root_held


def _ints_in(values: list[Any], low: int, stop: int) -> bool:
    """Whether *values* are all ints (not bools) in ``range(low, stop)``: checked by the builtins, not a loop."""
    return not values or (set(map(type, values)) == {int} and min(values) >= low and max(values) < stop)


def _lines(lines: list[bytes], corrupt: Callable[[str], CorruptLogError]) -> list[Any]:
    """The records of a format-1 snapshot: ``(oid, type, state JSON bytes)`` per line."""
    records: list[Any] = []
    type_names: dict[bytes, str] = {}
    for number, line in enumerate(lines):
        try:
            oid_text, name, state = line.split(b"\t", 2)
            text = type_names.get(name)
            if text is None:
                text = type_names[name] = _loads(name) if name[:1] == b'"' else name.decode()
            oid = int(oid_text)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise corrupt(f"has a malformed object line {number + 1}") from err
        if oid < 1:  # not an index from the end of the table
            raise corrupt(f"has object id {oid} on object line {number + 1} (object ids run from 1 up)")
        records.append((oid, text, state))
    return records


def decode_snapshot(payload: bytes, row_seq: int | None = None) -> dict[str, Any]:
    """A stored snapshot payload as snapshot-format data (what ``serialize`` returns, entity states as dicts)."""
    header, records = split_snapshot(payload, row_seq)
    data = {k: v for k, v in header.items() if k not in ("count", "names", "born")}
    objects: list[Any] = []
    if header.get("format") == 2:
        names = header["names"]
        types = header.get("types", {})
        for i, (oids, kinds, states) in enumerate(records):
            state_list = load_states(states, len(oids), i, header.get("seq"))
            for oid, k, state in zip(oids, kinds, state_list, strict=True):
                name = names[k]
                if type(state) is list and name in types:
                    state = dict(zip(types[name][1], state, strict=True))
                objects.append([oid, name, state])
    else:
        objects = [[oid, name, _loads(state)] for oid, name, state in records]
    data["format"] = 1
    data["objects"] = objects
    return data


def load_snapshot(reader: Reader, data: dict[str, Any] | bytes) -> None:
    """Rebuild *reader*'s table (an empty one) from snapshot-format *data*, or a stored snapshot payload.

    *data* is what :func:`memimg.serialize` returns (format 1), or a stored
    payload's header with its records under ``"objects"`` as
    :func:`split_snapshot` gives them (format 1 or 2).

    Raises:
        CorruptLogError: the data does not describe a graph (its root is not one of its objects...).
    """
    if isinstance(data, bytes):
        header, records = split_snapshot(data)
        data = {**header, "objects": records}
    fmt = data.get("format")
    if fmt not in (1, 2):
        raise MemimgError(f"unknown snapshot format {fmt!r}: written by a newer memimg?", format=fmt)
    reader.declare(data.get("types", {}))
    records = data["objects"]
    try:
        if fmt == 2:
            reader.load_chunks(data["names"], records)
        else:
            reader.load_records(records)
    except MemimgError as err:
        seq = data.get("seq")
        _schema.locate(err, seq, f"the snapshot at seq {seq}" if seq else "the snapshot data")
        raise
    records = []
    table = reader.table
    table.extend_to(data.get("next_oid", len(table.objects)))
    seq = data.get("seq")
    table.born.load(data.get("born"), seq if type(seq) is int else 0, len(table.objects))
    root = data.get("root")
    objects = table.objects
    if type(root) is not int or not (
        (0 < root < len(objects) and objects[root] is not None) or (root == 0 and not table.live_count())
    ):
        raise CorruptLogError(
            f"snapshot data names object {root!r} as its root, but holds no such object",
            seq=data.get("seq"),
            table="memimg_snapshots",
        )
    table.root_oid = root
