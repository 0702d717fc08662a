"""Excision: finding every stored past value of an object's fields, and rows with them replaced.

:meth:`memimg.MemoryImage.erase` (GDPR-style excision; Datomic's excision,
XTDB's ``evict``) is planned here, from stored rows alone, without the
image: :func:`excise` reads the log's events and snapshots and returns the
rows to store again, every *past* value of the targets replaced by
``["erased"]`` (read back as :data:`memimg.ERASED`) and their checksums
recomputed.

**Past, not current.** A value is past when something later replaced it;
the value the object holds now stays wherever it is stored, so replaying the
rewritten log ends in the same state as before. Where a value is stored:

* an entity's field: the creation record of the object (``[oid, type,
  state]`` inside the event that attached it, whatever that event's target),
  its ``obj.set`` / ``obj.update`` events, and its state in each snapshot.
  The last event that wrote the field (an ``obj.del`` too) holds the current
  value, and so does every snapshot from that seq on; every other place holds
  a past value. A field no stored event writes (its events were compacted
  away) keeps the value of the newest snapshot, wherever it is stored;
* a list's items: followed by position through every list event and
  snapshot, so an item still in the list is kept where it was stored and
  every item removed or replaced since is erased;
* a dict's values: by key, as fields are (the keys stay: they are the
  dict's structure, and an erased key could not be told from another).

Sets are refused by :func:`target_of`'s callers: a member *is* its identity
in the set, and replacing removed members by one marker would make replay
disagree with snapshots.

**References stay.** A stored value that is, or holds, a reference to an
object (``["r", oid]``) is kept: it is an object's number, not data, and
erasing it could leave the object it names unreachable in replay. To
erase what that object holds, erase the object.

Replaying the rewritten log gives :data:`~memimg.ERASED` wherever a past
value was, and at every snapshot's seq the very state that snapshot holds
(both were erased alike), so ``memimg verify`` still passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import orjson

from memimg.core._rows import EventRow, SnapshotRow, event_checksum, snapshot_checksum

__all__ = ["DICT", "ENTITY", "LIST", "Excised", "Target", "excise", "holds_reference"]

ENTITY: Final = "entity"
LIST: Final = "list"
DICT: Final = "dict"
_ERASED: Final = ("erased",)
_loads = orjson.loads
_dumps = orjson.dumps

#: Where one stored value is: (its container in a decoded payload, its index or key there).
_Loc = tuple[Any, Any]


@attrs.frozen
class Target:
    """An object whose past values are to be erased.

    ``fields`` (entities): the stored field names whose values go, mapped to
    the field each names now (a renamed field's old name too); ``None`` for
    a list or a dict.
    """

    oid: int
    shape: str
    fields: dict[str, str] | None = None


@attrs.frozen
class Excised:
    """What :func:`excise` found: the rows to store again, and what was erased."""

    events: list[EventRow]
    snapshots: list[SnapshotRow]
    #: stored values replaced by ERASED
    erased: int
    #: field (or "items" for a collection) -> the stored values of it left alone as current
    current: dict[str, int]


def holds_reference(x: Any) -> bool:
    """Whether stored value *x* is, or holds (in a tuple, frozenset or value object), a reference."""
    if type(x) is not list or not x:
        return False
    tag = x[0]
    if tag == "r":
        return True
    if tag in ("T", "F") and len(x) > 1 and type(x[1]) is list:
        return any(holds_reference(i) for i in x[1])
    if tag == "v" and len(x) > 2 and type(x[2]) is dict:
        return any(holds_reference(i) for i in x[2].values())
    return False


class _Token:
    """One stored value and every copy of it (a snapshot holds a copy of what an event stored)."""

    __slots__ = ("locs",)

    def __init__(self, loc: _Loc | None = None) -> None:
        self.locs: list[_Loc] = [] if loc is None else [loc]


class _Tracker:
    """Follows one target through the log: which stored values are current at the end."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.tokens: list[_Token] = []  # every token made, live or not
        #: entity: field -> its token now; dict: key JSON -> token; list: the tokens in order
        self.now: Any = [] if target.shape == LIST else {}

    def token(self, loc: _Loc | None) -> _Token:
        t = _Token(loc)
        self.tokens.append(t)
        return t

    # -- entities and dicts: by name ---------------------------------------------------

    def write(self, name: Any, loc: _Loc | None) -> None:
        """A write of field (or key) *name*; *loc* None: deleted."""
        if loc is None:
            self.now.pop(name, None)
        else:
            self.now[name] = self.token(loc)

    def state(self, state: Any) -> None:
        """A creation record's state: every value in it written."""
        shape, fields = self.target.shape, self.target.fields
        if shape == ENTITY and type(state) is dict:
            for f in state:
                if fields is not None and f in fields:
                    self.write(fields[f], (state, f))
        elif shape == LIST and type(state) is list:
            self.now = [self.token((state, i)) for i in range(len(state))]
        elif shape == DICT:
            self.now = {}
            for container, index, key in _dict_entries(state):
                self.write(key, (container, index))

    def copy(self, state: Any, order: tuple[str, ...] | None) -> None:
        """A snapshot's state: a copy of the values written so far (new tokens where nothing was followed)."""
        shape, fields = self.target.shape, self.target.fields
        if shape == ENTITY:
            assert fields is not None
            pairs = (
                [(f, (state, f)) for f in state]
                if type(state) is dict
                else [(f, (state, i)) for i, f in enumerate(order or ())]
                if type(state) is list
                else []
            )
            for stored, loc in pairs:
                name = fields.get(stored)
                if name is not None:
                    self._alias(name, loc)
        elif shape == LIST and type(state) is list:
            if len(state) == len(self.now):
                for i, t in enumerate(self.now):
                    t.locs.append((state, i))
            else:  # the list's events are gone (compacted): what the snapshot holds is all there is
                self.now = [self.token((state, i)) for i in range(len(state))]
        elif shape == DICT:
            for container, index, key in _dict_entries(state):
                self._alias(key, (container, index))

    def _alias(self, name: Any, loc: _Loc) -> None:
        t = self.now.get(name)
        if t is None:
            self.now[name] = self.token(loc)
        else:
            t.locs.append(loc)

    # -- lists: by position -----------------------------------------------------------

    def list_event(self, kind: str, data: list[Any]) -> None:
        now: list[_Token] = self.now
        if kind == "list.append":
            now.extend(self.token((data[0], i)) for i in range(len(data[0])))
        elif kind == "list.insert":
            now.insert(data[0], self.token((data, 1)))
        elif kind == "list.set":
            now[data[0]] = self.token((data, 1))
        elif kind == "list.del":
            del now[data[0]]
        elif kind == "list.splice":
            now[data[0] : data[1]] = [self.token((data[2], i)) for i in range(len(data[2]))]
        elif kind == "list.clear":
            now.clear()
        elif kind == "list.reorder":
            self.now = [now[i] for i in data[0]]
        elif kind == "list.reverse":
            now.reverse()

    def event(self, kind: str, data: list[Any]) -> None:
        """An event whose target is this object."""
        shape = self.target.shape
        if shape == LIST:
            self.list_event(kind, data)
            return
        fields = self.target.fields
        if shape == ENTITY and fields is not None:
            if kind == "obj.set" and data[0] in fields:
                self.write(fields[data[0]], (data, 1))
            elif kind == "obj.update":
                for pair in data[0]:
                    if pair[0] in fields:
                        self.write(fields[pair[0]], (pair, 1))
            elif kind == "obj.del" and data[0] in fields:
                self.write(fields[data[0]], None)
        elif shape == DICT:
            if kind == "dict.set":
                self.write(_key(data[0]), (data, 1))
            elif kind == "dict.update":
                for pair in data[0]:
                    self.write(_key(pair[0]), (pair, 1))
            elif kind == "dict.del":
                self.write(_key(data[0]), None)
            elif kind == "dict.clear":
                self.now = {}

    def finish(self) -> tuple[list[_Loc], dict[str, int]]:
        """The locations of past values, and how many stored values were found current (by field)."""
        live = self.now if self.target.shape == LIST else list(self.now.values())
        live_ids = {id(t) for t in live}
        past = [loc for t in self.tokens if id(t) not in live_ids for loc in t.locs]
        current: dict[str, int] = {}
        if self.target.shape == ENTITY:
            for name, t in self.now.items():
                current[name] = len(t.locs)
        else:
            current["items"] = sum(len(t.locs) for t in live)
        return past, current


def _key(stored: Any) -> bytes:
    return _dumps(stored)


def _dict_entries(state: Any) -> Iterable[tuple[Any, Any, bytes]]:
    """``(container, index, key)`` of each value of a stored dict state (a dict, or a list of pairs)."""
    if type(state) is dict:
        for k in state:
            yield state, k, _key(k)
    elif type(state) is list:
        for pair in state:
            if type(pair) is list and len(pair) == 2:
                yield pair, 1, _key(pair[0])


def excise(
    rows: Iterable[EventRow],
    snapshots: Iterable[SnapshotRow],
    targets: list[Target],
) -> Excised:
    """Every past value of *targets* in *rows* (in seq order) and *snapshots* (in seq order), erased.

    Returns the rows that changed (checksums recomputed) and the counts.
    Rows are read once; an event is decoded only if its target is a target,
    or its payload may hold a target's creation record.
    """
    by_oid = {t.oid: _Tracker(t) for t in targets}
    needles = [(b"[%d," % oid, oid) for oid in by_oid]
    decoded: dict[int, tuple[EventRow, Any]] = {}
    snaps = iter(snapshots)
    snap = next(snaps, None)
    parsed: list[tuple[SnapshotRow, list[bytes], dict[int, Callable[[], bytes]]]] = []

    def take_snapshots(up_to: int | None) -> None:
        nonlocal snap
        while snap is not None and (up_to is None or snap.seq <= up_to):
            parsed.append(_read_snapshot(snap, by_oid))
            snap = next(snaps, None)

    for row in rows:
        take_snapshots(row.seq - 1)
        payload = row.payload
        tracker = by_oid.get(row.target)
        records = [oid for needle, oid in needles if needle in payload]
        if tracker is None and not records:
            continue
        p = _loads(payload)
        decoded[row.seq] = (row, p)
        if records and len(p) > 1 and type(p[1]) is list:
            for record in p[1]:
                t = by_oid.get(record[0]) if type(record) is list and len(record) == 3 else None
                if t is not None:
                    t.state(record[2])
        if tracker is not None:
            tracker.event(row.kind, p[0])
    take_snapshots(None)
    past: list[_Loc] = []
    current: dict[str, int] = {}
    for t in by_oid.values():
        locs, now = t.finish()
        past.extend(locs)
        for k, v in now.items():
            current[k] = current.get(k, 0) + v
    erased = 0
    for container, index in past:
        value = container[index]
        if holds_reference(value) or (type(value) is list and value == list(_ERASED)):
            continue
        container[index] = list(_ERASED)
        erased += 1
    return Excised(_changed_events(decoded), _changed_snapshots(parsed), erased, current)


def _read_snapshot(
    row: SnapshotRow, by_oid: dict[int, _Tracker]
) -> tuple[SnapshotRow, list[bytes], dict[int, Callable[[], bytes]]]:
    """Tell the trackers what snapshot *row* holds of their objects.

    Returns the row, its lines, and per line that holds a target the
    function writing that line again (after the values in it were erased).
    """
    lines = row.payload.split(b"\n")
    header = _loads(lines[0])
    again: dict[int, Callable[[], bytes]] = {}
    if header.get("format") == 2:
        names, types = header["names"], header.get("types", {})
        for i in range(1, len(lines) - 1, 2):
            oids, kinds = _loads(lines[i])
            hits = [(j, by_oid[oid]) for j, oid in enumerate(oids) if oid in by_oid]
            if not hits:
                continue
            chunk = _loads(lines[i + 1])
            again[i + 1] = functools.partial(_dumps, chunk)
            for j, t in hits:
                name = names[kinds[j]]
                t.copy(chunk[j], tuple(types[name][1]) if name in types else None)
    else:  # format 1: oid<TAB>type<TAB>state per line
        for i in range(1, len(lines)):
            oid_text, _, rest = lines[i].partition(b"\t")
            if oid_text.isdigit() and int(oid_text) in by_oid:
                name, _, text = rest.partition(b"\t")
                state = _loads(text)
                prefix = b"%s\t%s\t" % (oid_text, name)
                again[i] = functools.partial(_line, prefix, state)
                by_oid[int(oid_text)].copy(state, None)
    return row, lines, again


def _line(prefix: bytes, state: Any) -> bytes:
    return prefix + _dumps(state)


def _changed_events(decoded: dict[int, tuple[EventRow, Any]]) -> list[EventRow]:
    out = []
    for row, p in decoded.values():
        payload = _dumps(p)
        if payload != row.payload:
            checksum = event_checksum(row.seq, row.tx, row.ts, row.kind, row.target, payload)
            out.append(row._replace(payload=payload, checksum=checksum))
    return out


def _changed_snapshots(
    parsed: list[tuple[SnapshotRow, list[bytes], dict[int, Callable[[], bytes]]]],
) -> list[SnapshotRow]:
    out = []
    for row, lines, again in parsed:
        if not again:
            continue
        new = list(lines)
        for i, write in again.items():
            new[i] = write()
        payload = b"\n".join(new)
        if payload != row.payload:
            out.append(row._replace(payload=payload, checksum=snapshot_checksum(row.seq, row.ts, payload)))
    return out
