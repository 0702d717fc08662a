"""Excision: finding every stored past value of some objects, and the rows with them replaced.

:meth:`memimg.MemoryImage.erase` (GDPR-style excision; Datomic's excision,
XTDB's ``evict``) is planned here, from stored rows alone, without the
image: an :class:`Excision` is a fold over the log's events and snapshots,
in seq order, and :meth:`Excision.result` gives the rows to store again,
every *past* value of the targets replaced by ``["erased"]`` (read back as
:data:`memimg.ERASED`) and their checksums recomputed. The fold keeps its
state: rows appended since are fed to it later (``feed``), and the result
asked again, without reading the log again.

**Past, not current.** A value is past when something later replaced it,
or when its object is no longer reachable (``Target.past``); the value a
reachable object holds now stays wherever it is stored, so replaying the
rewritten log ends in the same state as before. Where a value is stored:

* an entity's field: the creation record of the object (``[oid, type,
  state]`` inside the event that attached it, whatever that event's target),
  its ``obj.set`` / ``obj.update`` events, and its state in each snapshot
  (a counter's ``obj.add`` deltas belong with the value they add to: current
  together with it, past together with it).
  The last event that wrote the field (an ``obj.del`` too) holds the current
  value, and so does every snapshot from that seq on; every other place holds
  a past value. A field no stored event writes (its events were compacted
  away) keeps the value of the newest snapshot, wherever it is stored. A
  value stored under a name the class no longer declares (a removed field,
  or a renamed one the target does not map) is past;
* a list's items: followed by position through every list event and
  snapshot, so an item still in the list is kept where it was stored and
  every item removed or replaced since is erased. Where a list event comes
  with no known starting state (its creation was compacted away), the
  values it stores cannot be placed: they are kept and counted as
  ``unplaced``, until a snapshot gives the positions again;
* a dict's values: by key, as fields are, keys compared as the
  application compares them (``key``: ``1``, ``1.0`` and ``True`` are one
  key); the keys stay (they are the dict's structure).

The members of sets are not erased (``Excised.sets`` names the sets met):
a member *is* its identity in the set, and replacing removed members by
one marker would make replay disagree with snapshots.

**References stay.** In a past value, every reference to an object
(``["r", oid]``) is kept -- inside a tuple, frozenset or value object too,
where every other value is erased -- so replay still links the objects.
``Excised.refs`` lists the objects past values referred to: the caller
erases those no longer reachable (:meth:`MemoryImage.erase` does).

Replaying the rewritten log gives :data:`~memimg.ERASED` wherever a past
value was, and at every snapshot's seq the very state that snapshot holds
(both were erased alike), so ``memimg verify`` still passes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final

import attrs
import orjson

from memimg.core._rows import EventRow, SnapshotRow, event_checksum, snapshot_checksum
from memimg.core._snapshot import held_states, split_snapshot

__all__ = ["DICT", "ENTITY", "LIST", "SET", "Excised", "Excision", "Target", "blank", "references"]

ENTITY: Final = "entity"
LIST: Final = "list"
DICT: Final = "dict"
SET: Final = "set"
_SHAPES: Final = {"list": LIST, "dict": DICT, "set": SET}
_KIND_SHAPES: Final = {"obj": ENTITY, "list": LIST, "dict": DICT, "set": SET}
_ERASED: Final = ("erased",)
_loads = orjson.loads
_dumps = orjson.dumps

#: Where one stored value is: (its container in a decoded payload, its index or key there).
_Loc = tuple[Any, Any]


@attrs.frozen
class Target:
    """An object whose past values are to be erased.

    ``shape``: :data:`ENTITY`, :data:`LIST` or :data:`DICT`; ``None`` to
    learn it from the log (an object the image no longer holds). ``names``
    (entities): each stored field name that is a field now, mapped to that
    field (a renamed field's old name too). ``wanted``: the fields to erase
    (current names, or stored names that are no longer fields); ``None``:
    every stored field. ``past``: the object is unreachable now, so every
    stored value of it is past.
    """

    oid: int
    shape: str | None = None
    names: Mapping[str, str] = attrs.field(factory=dict)
    wanted: frozenset[str] | None = None
    past: bool = False


@attrs.frozen
class Excised:
    """What an :class:`Excision` found: the rows to store again, and what was and was not erased."""

    events: list[EventRow]
    snapshots: list[SnapshotRow]
    #: stored values replaced by ERASED
    erased: int
    #: field (or "items" for a collection) -> the stored values of it left alone as current
    current: dict[str, int]
    #: stored values of lists kept because their position was unknown (history compacted away)
    unplaced: int
    #: the objects past values referred to (their references were kept)
    refs: frozenset[int]
    #: the targets found to be sets (their members are not erased)
    sets: tuple[int, ...]
    #: oid -> every field name stored for that entity target
    stored_names: dict[int, frozenset[str]]
    #: the targets of which nothing at all is stored
    unknown: tuple[int, ...]
    #: oid -> the type name stored for each target (where the log gives it)
    type_names: dict[int, str]
    #: the targets at least one of whose stored values was replaced, in ascending order
    erased_in: tuple[int, ...] = ()


def blank(x: Any) -> Any:
    """Stored value *x* with every value in it that is not a reference replaced by ``["erased"]``.

    A reference stays; a tuple, frozenset or value object holding one keeps
    its shape and its references, everything else in it is erased.
    """
    if type(x) is list and x:
        tag = x[0]
        if tag == "r" or tag == "erased":
            return x
        if tag in ("T", "F") and len(x) == 2 and type(x[1]) is list and references(x):
            return [tag, [blank(i) for i in x[1]]]
        if tag == "v" and len(x) == 3 and type(x[2]) is dict and references(x):
            return ["v", x[1], {k: blank(v) for k, v in x[2].items()}]
    return list(_ERASED)


def references(x: Any) -> list[int]:
    """The object ids stored value *x* refers to (in a tuple, frozenset or value object too)."""
    if type(x) is not list or not x:
        return []
    tag = x[0]
    if tag == "r" and len(x) == 2 and type(x[1]) is int:
        return [x[1]]
    if tag in ("T", "F") and len(x) == 2 and type(x[1]) is list:
        return [oid for i in x[1] for oid in references(i)]
    if tag == "v" and len(x) == 3 and type(x[2]) is dict:
        return [oid for i in x[2].values() for oid in references(i)]
    return []


def stored_key(x: Any) -> Hashable:
    """A stored dict key as a hashable value that compares as the key does (lists become tuples)."""
    if type(x) is list:
        return ("\0stored", *[stored_key(i) for i in x])
    return x  # type: ignore[no-any-return]


class _Token:
    """One stored value and every copy of it (a snapshot holds a copy of what an event stored)."""

    __slots__ = ("locs", "placed")

    def __init__(self, loc: _Loc | None, placed: bool) -> None:
        self.locs: list[_Loc] = [] if loc is None else [loc]
        self.placed = placed


class _Tracker:
    """Follows one target through the log: which stored values are current at the end."""

    def __init__(self, target: Target, key: Callable[[Any], Hashable]) -> None:
        self.target = target
        self.key = key
        self.shape: str | None = None
        self.tokens: list[_Token] = []  # every token made, live or not
        #: entity: field -> its token now; dict: key -> token; list: the tokens in order (None: not known)
        self.now: Any = None
        self.names: set[str] = set()  # entity: every field name stored
        self.type_name = ""
        self.seen = False
        if target.shape is not None:
            self.learn(target.shape)

    def learn(self, shape: str) -> None:
        if self.shape is None:
            self.shape = shape
            self.now = None if shape == LIST else {}

    def token(self, loc: _Loc | None, placed: bool = True) -> _Token:
        t = _Token(loc, placed)
        self.tokens.append(t)
        return t

    def field(self, stored: str) -> Any:
        """The key an entity's stored field name is tracked under; None: not asked for."""
        self.names.add(stored)
        t = self.target
        name = t.names.get(stored)
        if t.wanted is not None and stored not in t.wanted and name not in t.wanted:
            return None
        return name if name is not None else (None, stored)  # a name no longer a field: never current

    # -- entities and dicts: by name ---------------------------------------------------

    def write(self, name: Any, loc: _Loc | None) -> None:
        """A write of field (or key) *name*; *loc* None: deleted."""
        if name is None:
            return
        if loc is None:
            self.now.pop(name, None)
        else:
            self.now[name] = self.token(loc)

    def alias(self, name: Any, loc: _Loc) -> None:
        if name is None:
            return
        t = self.now.get(name)
        if t is None:
            self.now[name] = self.token(loc)
        else:
            t.locs.append(loc)

    def state(self, type_name: Any, state: Any) -> None:
        """A creation record's state: every value in it written."""
        self.seen = True
        self.type_name = type_name if type(type_name) is str else self.type_name
        self.learn(_SHAPES.get(type_name, ENTITY) if type(type_name) is str else ENTITY)
        shape = self.shape
        if shape == ENTITY and type(state) is dict:
            for f in state:
                self.write(self.field(f), (state, f))
        elif shape == LIST and type(state) is list:
            self.unplace()
            self.now = [self.token((state, i)) for i in range(len(state))]
        elif shape == DICT:
            self.now = {}
            for container, index, key in self.entries(state):
                self.write(key, (container, index))

    def copy(self, type_name: str, state: Any, order: tuple[str, ...] | None) -> None:
        """A snapshot's state: a copy of the values written so far (new tokens where nothing was followed)."""
        self.seen = True
        self.type_name = type_name
        self.learn(_SHAPES.get(type_name, ENTITY))
        shape = self.shape
        if shape == ENTITY:
            if type(state) is dict:
                pairs: list[tuple[str, _Loc]] = [(f, (state, f)) for f in state]
            elif type(state) is list:
                pairs = [(f, (state, i)) for i, f in enumerate(order or ())]
            else:
                pairs = []
            for stored, loc in pairs:
                self.alias(self.field(stored), loc)
        elif shape == LIST and type(state) is list:
            if self.now is not None and len(state) == len(self.now):
                for i, t in enumerate(self.now):
                    t.locs.append((state, i))
            else:  # positions not known (compacted history): the snapshot gives them from here on
                self.unplace()
                self.now = [self.token((state, i)) for i in range(len(state))]
        elif shape == DICT:
            for container, index, key in self.entries(state):
                self.alias(key, (container, index))

    def entries(self, state: Any) -> Iterable[tuple[Any, Any, Hashable]]:
        """``(container, index, key)`` of each value of a stored dict state (a dict, or a list of pairs)."""
        key = self.key
        if type(state) is dict:
            for k in state:
                yield state, k, key(k)
        elif type(state) is list:
            for pair in state:
                if type(pair) is list and len(pair) == 2:
                    yield pair, 1, key(pair[0])

    # -- lists: by position -----------------------------------------------------------

    def unplace(self) -> None:
        """The list's positions are lost: what it holds now is kept wherever it is stored."""
        for t in self.now or ():
            t.placed = False
        self.now = None

    def list_event(self, kind: str, data: list[Any]) -> None:
        now: list[_Token] | None = self.now
        if now is None:  # no known starting state: the values stored here cannot be placed
            for loc in _list_values(kind, data):
                self.token(loc, placed=False)
            return
        try:
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
        except (IndexError, TypeError):  # positions that do not fit what was followed: stop trusting them
            self.unplace()

    def event(self, kind: str, data: list[Any]) -> None:
        """An event whose target is this object."""
        self.seen = True
        self.learn(_KIND_SHAPES.get(kind.partition(".")[0], ENTITY))
        shape = self.shape
        if shape == LIST:
            self.list_event(kind, data)
        elif shape == ENTITY:
            if kind == "obj.set":
                self.write(self.field(data[0]), (data, 1))
            elif kind == "obj.update":
                for pair in data[0]:
                    self.write(self.field(pair[0]), (pair, 1))
            elif kind == "obj.del":
                self.write(self.field(data[0]), None)
            elif kind == "obj.add":  # a counter's delta: the value it adds to is still needed, and so is it
                self.alias(self.field(data[0]), (data, 1))
        elif shape == DICT:
            if kind == "dict.set":
                self.write(self.key(data[0]), (data, 1))
            elif kind == "dict.update":
                for pair in data[0]:
                    self.write(self.key(pair[0]), (pair, 1))
            elif kind == "dict.del":
                self.write(self.key(data[0]), None)
            elif kind == "dict.clear":
                self.now = {}

    def finish(self) -> tuple[list[_Loc], dict[str, int], int]:
        """The locations of past values, how many stored values were found current (by field), and unplaced."""
        if self.shape == SET:
            return [], {}, 0
        if self.target.past:
            return [loc for t in self.tokens for loc in t.locs], {}, 0
        if self.shape == LIST:
            live: list[_Token] = list(self.now or ())
        else:
            live = [t for k, t in (self.now or {}).items() if self.shape != ENTITY or type(k) is str]
        live_ids = {id(t) for t in live}
        past = [loc for t in self.tokens if t.placed and id(t) not in live_ids for loc in t.locs]
        unplaced = sum(len(t.locs) for t in self.tokens if not t.placed and id(t) not in live_ids)
        current: dict[str, int] = {}
        if self.shape == ENTITY:
            for name, t in (self.now or {}).items():
                if type(name) is str:
                    current[name] = len(t.locs)
        elif live:
            current["items"] = sum(len(t.locs) for t in live)
        return past, current, unplaced


def _list_values(kind: str, data: list[Any]) -> list[_Loc]:
    """Where a list event stores values."""
    if kind == "list.append" and data and type(data[0]) is list:
        return [(data[0], i) for i in range(len(data[0]))]
    if kind in ("list.insert", "list.set") and len(data) > 1:
        return [(data, 1)]
    if kind == "list.splice" and len(data) > 2 and type(data[2]) is list:
        return [(data[2], i) for i in range(len(data[2]))]
    return []


class Excision:
    """The fold: feed it the log's events in seq order (``feed``), ask for :meth:`result` at any point.

    *snapshots* (oldest first) are taken in where they fall between events;
    *key* makes a stored dict key hashable as the application compares it
    (default :func:`stored_key`).
    """

    def __init__(
        self,
        targets: Iterable[Target],
        snapshots: Iterable[SnapshotRow],
        key: Callable[[Any], Hashable] = stored_key,
    ) -> None:
        self._trackers = {t.oid: _Tracker(t, key) for t in targets}
        self._needles = [(b"[%d," % oid, oid) for oid in self._trackers]
        self._decoded: dict[int, tuple[EventRow, Any]] = {}
        self._snaps = iter(snapshots)
        self._snap = next(self._snaps, None)
        self._parsed: list[tuple[SnapshotRow, list[bytes], dict[int, Callable[[], bytes]]]] = []
        self.seq = 0  #: the last event fed

    def _take_snapshots(self, up_to: int | None) -> None:
        while self._snap is not None and (up_to is None or self._snap.seq <= up_to):
            self._parsed.append(self._read_snapshot(self._snap))
            self._snap = next(self._snaps, None)

    def feed(self, rows: Iterable[EventRow]) -> None:
        """Take in events (in seq order, after those fed before); an event is decoded only if it may hold a
        target's value."""
        trackers, needles = self._trackers, self._needles
        for row in rows:
            self._take_snapshots(row.seq - 1)
            self.seq = row.seq
            payload = row.payload
            tracker = trackers.get(row.target)
            records = [oid for needle, oid in needles if needle in payload]
            if tracker is None and not records:
                continue
            p = _loads(payload)
            self._decoded[row.seq] = (row, p)
            if records and len(p) > 1 and type(p[1]) is list:
                for record in p[1]:
                    t = trackers.get(record[0]) if type(record) is list and len(record) == 3 else None
                    if t is not None:
                        t.state(record[1], record[2])
            if tracker is not None:
                tracker.event(row.kind, p[0])

    def relinked(self, rows: Iterable[EventRow]) -> list[int]:
        """The targets taken as unreachable (``past``) that *rows* refer to again."""
        past = [t.target.oid for t in self._trackers.values() if t.target.past]
        return [oid for row in rows for oid in past if b'["r",%d]' % oid in row.payload]

    def result(self) -> Excised:
        """The rows to store again for what was fed so far (the fold's state is left as it was)."""
        self._take_snapshots(None)
        past: list[tuple[_Loc, int]] = []
        current: dict[str, int] = {}
        unplaced = 0
        for t in self._trackers.values():
            locs, now, lost = t.finish()
            past.extend((loc, t.target.oid) for loc in locs)
            unplaced += lost
            for k, v in now.items():
                current[k] = current.get(k, 0) + v
        refs: set[int] = set()
        undo: list[tuple[Any, Any, Any]] = []
        erased_in: set[int] = set()
        for (container, index), oid in past:
            value = container[index]
            refs.update(references(value))
            new = blank(value)
            if new != value:
                undo.append((container, index, value))
                container[index] = new
                erased_in.add(oid)
        try:
            events, snapshots = self._changed_events(), self._changed_snapshots()
        finally:
            for container, index, value in reversed(undo):
                container[index] = value
        trackers = self._trackers.values()
        return Excised(
            events,
            snapshots,
            len(undo),
            current,
            unplaced,
            frozenset(refs),
            tuple(t.target.oid for t in trackers if t.shape == SET),
            {t.target.oid: frozenset(t.names) for t in trackers if t.shape == ENTITY},
            tuple(t.target.oid for t in trackers if not t.seen),
            {t.target.oid: t.type_name for t in trackers if t.type_name},
            tuple(sorted(erased_in)),
        )

    def _read_snapshot(self, row: SnapshotRow) -> tuple[SnapshotRow, list[bytes], dict[int, Callable[[], bytes]]]:
        """Tell the trackers what snapshot *row* holds of their objects.

        Returns the row, its lines, and per line that holds a target the
        function writing that line again (after the values in it were erased).
        """
        header, records = split_snapshot(row.payload, row.seq)
        lines = row.payload.split(b"\n")
        trackers = self._trackers
        again: dict[int, Callable[[], bytes]] = {}
        for i, holder, at, oid, name, declared in held_states(header, records, trackers, row.seq):
            if i not in again:
                # format 2: the states line, all of it; format 1: oid<TAB>type<TAB>, then the one state
                again[i] = _redump(holder) if header["format"] == 2 else _redump(holder[0], _prefix(lines[i]))
            trackers[oid].copy(name, holder[at], tuple(declared[1]) if declared else None)
        return row, lines, again

    def _changed_events(self) -> list[EventRow]:
        out = []
        for row, p in self._decoded.values():
            payload = _dumps(p)
            if payload != row.payload:
                checksum = event_checksum(row.seq, row.tx, row.ts, row.kind, row.target, payload)
                out.append(row._replace(payload=payload, checksum=checksum))
        return out

    def _changed_snapshots(self) -> list[SnapshotRow]:
        out = []
        for row, lines, again in self._parsed:
            if not again:
                continue
            new = list(lines)
            for i, write in again.items():
                new[i] = write()
            payload = b"\n".join(new)
            if payload != row.payload:
                out.append(row._replace(payload=payload, checksum=snapshot_checksum(row.seq, row.ts, payload)))
        return out


def _prefix(line: bytes) -> bytes:
    """``oid<TAB>type<TAB>`` of a format-1 snapshot line."""
    return line[: line.index(b"\t", line.index(b"\t") + 1) + 1]


def _redump(value: Any, prefix: bytes = b"") -> Callable[[], bytes]:
    return lambda: prefix + _dumps(value)
