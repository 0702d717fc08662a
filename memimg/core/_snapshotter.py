"""Writing a snapshot of a table at one seq, a slice at a time, while the table keeps changing.

A :class:`SnapshotWriter` writes the state the table had at seq *S* (after
the ``snapshot`` event that marks it) in the snapshot format
(:mod:`memimg.core._snapshot`): a breadth-first walk from the root, in
slices (:meth:`SnapshotWriter.step`), between which commits go on. To keep
the state at *S* whatever they change, a change is announced first
(:meth:`SnapshotWriter.before_change`): an object the walk has not written
yet has its state at *S* encoded then -- copy-on-update, at object
granularity -- and the walk takes that state when it reaches it. Objects
made after *S* are never reached: no state at *S* refers to them.

**Collection.** The walk finds the objects reachable at *S*; the others are
forgotten by a ``gc.drop`` event naming them, written when the snapshot is
finished. But a reader starting from the snapshot replays the events after
*S*, and those may name an object unreachable at *S*: one they change, or
link again (a transaction that held it stores it), or one a new object's
record refers to -- even if a later event unlinks it again. Every event
applied meanwhile is announced (:meth:`SnapshotWriter.before_events`), and
each object made before *S* that it names is kept: written into the
snapshot with its state at *S* (and what that state refers to), and not
forgotten.
"""

from __future__ import annotations

import itertools
import operator
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from memimg._errors import MemimgError
from memimg.core import _compiled, _types
from memimg.core._encoders import (
    REF_CALL,
    REF_MARK,
    container_encoders,
    field_slots,
    slow_state,
    state_encoder,
    value_writer,
)
from memimg.core._gone import Gone
from memimg.core._records import declaration
from memimg.core._table import ObjectTable

__all__ = ["BATCH", "CHUNK", "SnapshotWriter"]

#: Objects per chunk (format 2): one directory line and one states line each.
CHUNK: Final = 2048
#: Objects written between two looks at the clock (~0.1 ms of encoding: a slice ends close to its deadline).
BATCH: Final = 64
_get_oid = operator.attrgetter("_mi_oid")
_UNMET: Final = bytes([1]) + bytes(255)  # translates the walk's seen bytes to "not met"


class SnapshotWriter:
    """Writes the snapshot of *table* at *seq* (see the module docstring).

    Every method must be called with the table unchanging meanwhile (the
    image's lock held); between calls the table may change, through events
    announced to :meth:`before_change`.
    """

    def __init__(self, table: ObjectTable, seq: int) -> None:
        self.table = table
        self.seq = seq
        #: ids from here on were given after *seq*
        self.limit = limit = len(table.objects)
        self.seen = seen = bytearray(limit)  # met by the walk: written into the snapshot
        #: already written (a change needs no copy of its state): the queue's first ``_marked`` objects marked,
        #: the rest of the ``done`` ones only once a change asks (:meth:`before_change`), off the walk's loop
        self.written = bytearray(limit)
        self._marked = 0
        #: states at *seq* of objects changed since, not written yet: oid -> (state, objects it refers to)
        self.early: dict[int, tuple[Any, list[Any]]] = {}
        #: ids of the objects made before *seq* that events since named: kept in the snapshot
        self.kept: set[int] = set()
        root = table.root
        self.root_oid = table.root_oid if root is not None else 0
        self.queue: list[Any] = [root] if root is not None else []
        if root is not None:
            seen[table.root_oid] = 1
        self.done = 0
        self._start = 0  # where the chunk being filled begins in the queue
        self._states: list[Any] = []  # its states so far
        #: why the snapshot was given up (an event whose changes it could not keep), or None
        self.abandoned: Exception | None = None
        self.out: list[bytes] = []
        self.types: dict[str, Any] = {}
        self._declared: dict[_types.TypeInfo, bool] = {}  # what declare() answered, by class
        self.names: dict[Any, int] = {table.shell.list: 0, table.shell.dict: 1, table.shell.set: 2}
        self.type_names = ["list", "dict", "set"]
        self._walk = self._encoders(REF_MARK)
        self._refs: list[Any] = []
        self._copy = self._encoders(REF_CALL)

    # -- encoders ---------------------------------------------------------------

    def declare(self, info: _types.TypeInfo) -> bool:
        """Whether *info*'s declaration is the one in effect for its name (False: another class of the
        same name -- a redefined class, a second stand-in -- came first)."""
        agreed = self._declared.get(info)
        if agreed is None:  # first met: every value of a value class declares it again
            decl = declaration(info)
            agreed = self._declared[info] = self.types.setdefault(info.name, decl) == decl
        return agreed

    def _encoders(self, ref_mode: str) -> dict[type, Callable[[Any], Any]]:
        """State encoders by type: the walk's (references marked and queued), or copies' (references noted)."""
        table, seen, queue = self.table, self.seen, self.queue
        codec, shell = table.codec, table.shell
        mark, push = seen.__setitem__, queue.append

        def ref(obj: Any) -> int:
            oid: int = obj._mi_oid
            if ref_mode == REF_CALL:
                self._refs.append(obj)
            elif not seen[oid]:
                seen[oid] = 1
                push(obj)
            return oid

        value, linked = value_writer(codec, codec.encoder(ref, self.declare), ref)
        direct = ref_mode != REF_CALL and not shell.reads_hooked()  # copies: raw reads, whoever commits
        list_state, dict_state, set_state = container_encoders(ref_mode)(value, linked, seen, mark, push, ref)
        names, type_names, declare = self.names, self.type_names, self.declare
        plans: dict[type, tuple[Any, ...]] = {}  # entity class -> its fields' member descriptors (the walk's)

        class Entities(dict[type, Callable[[Any], Any]]):
            def __missing__(self, t: type) -> Callable[[Any], Any]:
                info = _types.info_of(t)
                if info is None or info.kind != _types.ENTITY:
                    raise MemimgError(f"internal: the object table holds a {t.__qualname__}, not an entity")
                if t not in names:
                    names[t] = len(type_names)
                    type_names.append(info.name)
                slow = slow_state(info, value)
                if not declare(info):
                    enc = slow  # another class's declaration is in effect: this one's states go by field name
                else:
                    enc = state_encoder(info, direct, ref_mode, keyed=False)(value, linked, slow, seen, mark, push, ref)
                    if ref_mode == REF_MARK and (slots := field_slots(info)) is not None:
                        plans[t] = slots  # the compiled walk reads these (what the encoder reads)
                self[t] = enc
                return enc

        if ref_mode == REF_MARK:
            self._plans, self._linked, self._value = plans, linked, value
        return Entities({shell.list: list_state, shell.dict: dict_state, shell.set: set_state})

    # -- the walk -----------------------------------------------------------------

    def step(self, deadline: float | None = None) -> bool:
        """Write more objects, until *deadline* (``time.perf_counter``) or the end; whether every object met so
        far is written.

        The clock is looked at every :data:`BATCH` objects: a slice ends
        within a batch's time of its deadline (unless one object's state is
        a huge collection, which is encoded whole). A measured hot loop
        (``python -m benchmarks``, graph snapshot): objects met for the
        first time are marked and queued inline by the generated encoders,
        with no Python call per object.
        """
        queue, encoders, early = self.queue, self._walk, self.early
        clock = time.perf_counter
        done = self.done
        add, extend = self._states.append, self._states.extend
        compiled = _compiled.encode_states
        seen, plans, linked, value = self.seen, self._plans, self._linked, self._value
        tracked_list = self.table.shell.list
        while done < len(queue):  # the queue grows while it is walked
            start = self._start
            batch = queue[done : min(start + CHUNK, done + BATCH)]  # the chunk filled with what it meets too
            done += len(batch)
            if early:
                for obj in batch:
                    copy = early.pop(obj._mi_oid, None)
                    if copy is None:
                        add(encoders[type(obj)](obj))
                    else:
                        add(copy[0])
                        self._meet(copy[1])
            elif compiled is not None:  # the same states, made by the compiled walk
                compiled(batch, plans, encoders, self._states, seen, queue, linked, value, tracked_list)
            else:  # a comprehension: no method call per object to keep its state
                extend([encoders[type(obj)](obj) for obj in batch])
            if done - start >= CHUNK:
                self._flush(done)
                add, extend = self._states.append, self._states.extend
            if deadline is not None and clock() >= deadline:
                break
        self.done = done
        return done >= len(queue)

    def _flush(self, done: int) -> None:
        """Close the chunk of the objects written since the last one: its directory and states lines."""
        start = self._start
        if done > start:
            members = self.queue[start:done]
            oids = list(map(_get_oid, members))
            self.out.append(orjson.dumps([oids, list(map(self.names.__getitem__, map(type, members)))]))
            self.out.append(orjson.dumps(self._states))
        self._start = done
        self._states = []

    def _meet(self, objects: list[Any]) -> None:
        """Queue the objects of *objects* the walk has not met (references of a state kept aside)."""
        seen, push = self.seen, self.queue.append
        for obj in objects:
            oid = obj._mi_oid
            if not seen[oid]:
                seen[oid] = 1
                push(obj)

    def before_events(self, events: list[Any]) -> None:
        """*events* (kind, target, args) are about to be applied: keep what a reader of the snapshot needs.

        Each target's state at the seq is kept if it is not written yet
        (copy-on-update), and every object made before the seq that an event
        names -- its target, or an object in its arguments or in the state
        of a new object they hold -- is kept in the snapshot.
        """
        limit, kept = self.limit, self.kept
        table = self.table
        work: list[Any] = []
        for _, target, args in events:
            if target is not None:
                self.before_change(target)
            if args:
                work.extend(args)
        made: set[int] = set()
        for obj in table.value_references(work, flatten=True):
            oid = obj._mi_oid
            if oid is None:
                continue
            if oid < limit:
                kept.add(oid)
            elif oid not in made:  # made since the seq (by these events, perhaps): what its state names
                made.add(oid)
                work = list(table.references(obj))
                while work:
                    ref = work.pop()
                    ref_oid = ref._mi_oid
                    if ref_oid is None:
                        continue
                    if ref_oid < limit:
                        kept.add(ref_oid)
                    elif ref_oid not in made:
                        made.add(ref_oid)
                        work.extend(table.references(ref))

    def before_rows(self, rows: list[Any]) -> None:
        """Another process's stored *rows* are being applied: keep every object made before the seq they name.

        Their targets, and every reference (``["r", oid]``) in their
        arguments and records, whatever this code makes of them: a row this
        code skips (a field or type it removed) is still decoded by every
        reader, which must find the objects it names.
        """
        limit, kept = self.limit, self.kept
        for row in rows:
            if 0 < row.target < limit:
                kept.add(row.target)
            work = [orjson.loads(row.payload)]
            while work:
                v = work.pop()
                if type(v) is list:
                    if len(v) == 2 and v[0] == "r" and type(v[1]) is int:
                        if 0 < v[1] < limit:
                            kept.add(v[1])
                    else:
                        work.extend(v)
                elif type(v) is dict:
                    work.extend(v.values())

    def before_change(self, obj: Any) -> None:
        """*obj* is about to change: keep its state at the snapshot's seq if it is not written yet."""
        oid = obj._mi_oid
        if oid is None or oid >= self.limit:
            return  # made since the seq: no state at the seq
        self.kept.add(oid)
        # The walk marks nothing as it goes: the objects it encoded since the last change
        # (queue[_marked:done]) are marked here. Sound because step() and this method both run
        # under the engine's lock (never one inside the other), the queue is only appended to,
        # and an encoded object keeps its id until its next change reaches this method.
        if self._marked < self.done:
            written = self.written
            for done_oid in map(_get_oid, self.queue[self._marked : self.done]):
                written[done_oid] = 1
            self._marked = self.done
        if self.written[oid] or oid in self.early:
            return
        refs: list[Any] = []
        self._refs = refs
        self.early[oid] = (self._copy[type(obj)](obj), refs)

    # -- finishing ----------------------------------------------------------------

    def finish(self) -> tuple[bytes, int, list[int]]:
        """The stored snapshot, how many objects it holds, and the ids of the objects to forget.

        Objects unreachable at the seq that events since named are kept, and
        written (see the module docstring). Called again after more events,
        it writes what they made necessary.
        """
        forget = self.complete()
        payload, count = self.payload(self.header())
        return payload, count, forget

    def complete(self) -> list[int]:
        """Walk what is left (and what events since named); the ids of the objects to forget.

        Called again after more events, it walks what they made necessary.
        """
        self.step()
        while self.keep_named():
            self.step()
        self._flush(self.done)
        objects = self.table.objects
        unmet = self.seen.translate(_UNMET)  # 1 for each id the walk did not meet (and holes), at C speed
        return [oid for oid in itertools.compress(range(len(unmet)), unmet) if oid and objects[oid] is not None]

    def header(self) -> dict[str, Any]:
        """The snapshot's header, once :meth:`complete` (it reads the table: with the image's lock held)."""
        return {
            "format": 2,
            "seq": self.seq,
            "next_oid": self.limit,
            "root": self.root_oid,
            "types": self.types,
            "names": self.type_names,
            "count": self.done,
            "born": self.table.born.header(self.limit),
        }

    def payload(self, header: dict[str, Any]) -> tuple[bytes, int]:
        """The stored snapshot under *header* and how many objects it holds (reads only this writer: once no
        event is told to it any more, no lock is needed)."""
        return b"\n".join([orjson.dumps(header), *self.out]), header["count"]

    def keep_named(self) -> bool:
        """Queue the objects made before the seq that events since named (see the module docstring) and the
        walk has not met; whether there were any (:meth:`step` writes them)."""
        objects, seen, queue = self.table.objects, self.seen, self.queue
        before = len(queue)
        for oid in self.kept:
            obj = objects[oid]
            if not seen[oid] and obj is not None:
                if type(obj) is Gone:  # a snapshot has no form for it, and a reader of it would need it
                    self.abandoned = MemimgError(
                        f"an event since seq {self.seq} names object {oid}, of the removed type {obj.type_name!r}"
                    )
                    continue
                seen[oid] = 1
                queue.append(obj)
        return len(queue) > before
