"""``MemoryImage.history``: the changes of one object, read from its own events.

The cost grows with the object's own events, not the log's length:

1. **Where it was born** -- the object table knows the event that created
   each object (:mod:`memimg.core._born`), so its first state is one
   primary-key read: the ``[oid, type, state]`` record in that event's
   payload (the event targets another object: the one it was attached
   to). If compaction removed that event, the first state is read from the
   oldest snapshot holding the object. A first state read from a big event
   (one attach of a large subgraph) is remembered on the image's reader
   (up to :data:`~memimg.core._firststates.FIRST_STATES_BYTES` of them), so the
   next call neither reads nor parses that event again; an erasure forgets
   them all, and a past image remembers none. A field the first state
   lacks is filled in as the reader's plan for the class's declaration in
   effect there says (a field added since: its plain default; none under
   upgraders, nor a factory's); that declaration is the event's, the
   snapshot's, or -- read back once, at most to the last ``snapshot``
   event, and remembered for the span it covers -- an earlier event's.
2. **Its events** -- the store reads the rows that target it
   (:meth:`~memimg.Store.read_target`): through the target index up to the
   seq it covers, then by scanning the events past it. Commits do not fill
   that index: the snapshot thread does, after each snapshot, and a
   writable image's history fills it first (one set-based statement) when
   over :data:`TAIL` events wait, so the scan stays short.
3. **The fold** -- each event is applied to a plain copy of the object's
   state, noting what was there before (:mod:`memimg.core._history`).
4. **Metadata** -- a transaction's metadata is its first row when that row
   is of kind ``tx.meta`` (its seq is the transaction's id): one
   primary-key read per transaction, cached for the call -- and none when
   that first row is the change's own event or one that created objects
   (neither is a ``tx.meta`` row).

The log is read up to this image's seq: history shows what this image has
applied (``refresh()`` first to see other processes' commits), and not the
writes of a transaction still open.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any, Final

import attrs
import orjson

from memimg._errors import CorruptLogError, MemimgError, StoreError
from memimg.core import _types
from memimg.core._args import arg_decoder
from memimg.core._fold import SNAPSHOT_KINDS
from memimg.core._gc import paused_gc
from memimg.core._history import Change, Collected, Recorder, entity_state, field_namer
from memimg.core._kinds import KINDS, Kind
from memimg.core._reader import Reader
from memimg.core._rows import EventRow, SnapshotRow, verify_event, verify_snapshot
from memimg.core._snapshot import held_states, split_snapshot
from memimg.image._past import PastStore
from memimg.stores._protocol import Store

__all__ = ["TAIL", "history"]

log = logging.getLogger("memimg")

#: How many events past the target index a writable image's history scans rather than indexing them first.
TAIL: Final = 10_000
#: An event's payload size (bytes) past which history remembers the first state it read there.
BIG: Final = 64 * 1024
#: How many events history reads at a time, looking back for a type's declaration.
_SCAN: Final = 1000

_OBJ_UPDATE: Final = KINDS["obj.update"]
_COLLECTIONS: Final = {"list": list, "dict": dict, "set": set}


def history(engine: Any, obj: Any, field: str | None, since: int, until: int | None) -> list[Change]:
    """The changes of *obj* (of its *field*) with ``since < seq <= until``, oldest first (see the module docstring).

    Raises:
        MemimgError: *obj* is not an object of this image, or has no field *field*.
        ValueError: *since* or *until* is negative, or *since* is past *until*.
        CorruptLogError: a row read is damaged.
    """
    engine.check_open()
    if type(since) is not int or since < 0 or (until is not None and (type(until) is not int or until < 0)):
        raise ValueError(f"history(since={since!r}, until={until!r}): seqs are ints >= 0")
    if until is not None and since > until:
        raise ValueError(f"history(since={since}, until={until}): since is past until, so no change is between them")
    with engine.lock:
        oid = _oid_in(engine, obj)
        head = engine.seq
    namer = _check_field(obj, field)
    until = head if until is None else min(until, head)
    if not engine.readonly:
        _index_targets(engine.store, head)
    with paused_gc():  # the first state may be in a big event or snapshot: parsed without collections
        return _History(engine, obj, oid, namer).changes(field, since, until)


def _index_targets(store: Store, head: int) -> None:
    """Fill the target index up to *head* if over :data:`TAIL` events wait (a failure leaves the scan longer)."""
    try:
        store.index_targets(head, least=TAIL)
    except StoreError as err:
        log.warning("history(): indexing the targets of %s up to seq %d: %s", store.description, head, err)


def _oid_in(engine: Any, obj: Any) -> int:
    """The id of *obj* in *engine*'s image (called with the lock held)."""
    oid = getattr(obj, "_mi_oid", None) if hasattr(type(obj), "_mi_oid") else None
    objects = engine.table.objects
    if type(oid) is int and 0 < oid < len(objects) and objects[oid] is obj:
        return oid
    what = f"{type(obj).__qualname__} object"
    if not hasattr(type(obj), "_mi_oid"):
        raise MemimgError(
            f"history(): a {what} is not a persistent object nor a tracked collection: only those have a history",
            target=None,
        )
    if oid is None:
        raise MemimgError(
            f"history(): the {what} is not part of the image {engine.store.description} yet (it has no id: attach "
            "it and commit first)",
            target=None,
        )
    raise MemimgError(
        f"history(): the {what} #{oid} is not an object of the image {engine.store.description} (it belongs to "
        "another image, or was collected); ask the image that holds it",
        target=oid,
    )


def _check_field(obj: Any, field: str | None) -> Any:
    """The field namer of *obj*'s class (``None`` for a collection), having checked *field*."""
    info = _types.info_of(type(obj))
    if field is not None:
        if info is None or info.kind != _types.ENTITY:
            raise MemimgError(
                f"history(obj, {field!r}): a {type(obj).__qualname__} has no fields; call history(obj) "
                "for the changes of a collection",
                field=field,
            )
        if field not in info.fields:
            raise MemimgError(
                f"history(obj, {field!r}): {info.name} has no field {field!r} (its fields: {', '.join(info.fields)})",
                field=field,
            )
    return field_namer(info) if info is not None and info.kind == _types.ENTITY else None


class _History:
    """One call's reading of one object's history."""

    def __init__(self, engine: Any, obj: Any, oid: int, namer: Any) -> None:
        self.engine = engine
        self.store: Store = engine.store
        self.reader: Reader = engine.reader
        self.obj = obj
        self.oid = oid
        self.namer = namer
        objects = engine.table.objects

        def deref(ref: int) -> Any:
            found = objects[ref] if 0 < ref < len(objects) else None
            return Collected(ref) if found is None else found  # a Gone placeholder names its removed type

        self.decode = engine.table.codec.decoder(
            deref, self.reader.decode_value, generic=self.reader.stand_ins is not None
        )
        self._arg_decoders: dict[str, Any] = {}
        self._meta: dict[int, dict[str, Any]] = {}
        self.born = engine.table.born

    # -- the first state --------------------------------------------------------

    def changes(self, field: str | None, since: int, until: int) -> list[Change]:
        start, state = self._first_state()
        out: list[Change] = []
        recorder = Recorder()
        for raw in self.store.read_target(self.oid, after=start, until=until):
            row = EventRow(*raw)
            verify_event(row)
            event = self._event(row)
            if event is None:
                continue
            k, args = event
            recorder.parts = []
            try:
                k.apply(recorder, state, *args)
            except Exception as err:
                raise CorruptLogError(
                    f"event seq {row.seq} ({row.kind} on object {self.oid}) does not apply to the state before it: "
                    f"{err}",
                    seq=row.seq,
                    table="memimg_events",
                ) from err
            if row.seq <= since:
                continue
            for f, key, old, new, index in recorder.parts:
                if field is None or f == field:
                    out.append(self._change(row, f, key, old, new, index))
        return out

    def _change(self, row: EventRow, f: str | None, key: Any, old: Any, new: Any, index: int | None) -> Change:
        return Change(
            seq=row.seq,
            tx=row.tx,
            time=row.ts,  # microseconds, as stored: Change.time makes the datetime when read
            meta=self._tx_meta(row),
            target=self.obj,
            kind=row.kind,
            field=f,
            key=key,
            old=old,
            new=new,
            index=index,
        )

    def _first_state(self) -> tuple[int, Any]:
        """``(seq, state)``: the object's state right after event *seq* -- where it was born, or a snapshot."""
        born = self._born()
        first = self.store.first_seq()
        if born >= first:
            found = self._from_event(born)
            if found is not None:
                return born, found
        # a snapshot older than the events kept would leave a gap between its state and them
        return self._from_snapshot(max(abs(born), first - 1))

    def _born(self) -> int:
        """The seq of the event that created the object (negative: at or before; see :mod:`memimg.core._born`)."""
        engine = self.engine
        with engine.lock:
            born: int = engine.table.born.seq_of(self.oid)
        first = self.store.first_seq()
        if born <= 0 and -born >= first:  # a snapshot written before memimg 0.4: learn from the log
            found = _creating_events(self.store, first, -born)
            with engine.lock:
                engine.table.born.settle(found, first)
                born = engine.table.born.seq_of(self.oid)
        return born

    def _from_event(self, seq: int) -> Any:
        """The object's state in the records of event *seq*, or ``None`` if they do not hold it.

        Found in an event of over :data:`BIG` bytes, the stored state is
        remembered (:attr:`Reader.first_states`): the next call for this
        object neither reads nor parses that event again. A past image
        (``img.at()``) remembers none: an erasure never reaches it.
        """
        remembered = self.reader.first_states
        found = remembered.get(self.oid)
        if found is not None and found[0] == seq:
            _, name, state, declared = found
            return self._state(name, state, None, declared, seq)
        rows = [EventRow(*r) for r in self.store.read(after=seq - 1, limit=1)]
        if not rows or rows[0].seq != seq:
            return None
        verify_event(rows[0])
        payload = rows[0].payload
        try:
            p = orjson.loads(payload)
            records = p[1] if len(p) > 1 else ()
            declarations = p[2] if len(p) > 2 and type(p[2]) is dict else {}
            if len(payload) > BIG and not isinstance(self.store, PastStore):
                # every object the big event holds: history of its other objects reads none of it again
                for oid, name, state in records:
                    if oid != self.oid:
                        remembered.remember(oid, seq, name, state, declarations.get(name))
            for oid, name, state in records:
                if oid == self.oid:
                    declared = declarations.get(name)
                    if len(payload) > BIG and not isinstance(self.store, PastStore):
                        remembered.remember(oid, seq, name, state, declared)  # before reading it, as stored
                    return self._state(name, state, None, declared, seq)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise CorruptLogError(
                f"event seq {seq} cannot be read for the first state of object {self.oid}: {err}",
                seq=seq,
                table="memimg_events",
            ) from err
        return None

    def _from_snapshot(self, at_least: int) -> tuple[int, Any]:
        """The object's state in the oldest snapshot, covering *at_least* or later, that holds it."""
        for info in sorted(self.store.snapshots()):
            if info.seq < at_least:
                continue
            row = SnapshotRow(*self.store.read_snapshot(info.seq))
            try:
                verify_snapshot(row)
            except CorruptLogError:
                continue  # recovery skips it too
            header, records = split_snapshot(row.payload, row.seq)
            for _, holder, at, _, name, declared in held_states(header, records, (self.oid,), row.seq):
                return row.seq, self._state(name, holder[at], declared[1] if declared else None, declared)
        raise MemimgError(
            f"history(): the first state of object {self.oid} is no longer stored (neither the event that "
            f"created it nor a snapshot holding it is in {self.store.description})",
            target=self.oid,
        )

    def _state(
        self, name: str, state: Any, fields: list[str] | None, declared: Any = None, seq: int | None = None
    ) -> Any:
        """A stored state as the plain copy the fold changes (a dict of fields for an entity).

        *declared* is the type's declaration in effect where the state was
        stored (``[version, fields, ...]``; ``None``: not at hand -- then,
        for the records of event *seq*, it is looked for in the events
        before it if needed). A field the state lacks is filled in as a
        reader fills it in (what ``img.at()`` shows), by the reader's plan
        for that declaration (:meth:`Reader.plan_of`): left out where the
        state is read as stored (a field deleted before the object was
        attached), its default where the plan maps fields (one added since,
        or the declaration is not known), and left out where upgraders read
        the state (history does not run them: see :meth:`_fill_defaults`).
        """
        decode = self.decode
        make = _COLLECTIONS.get(name)
        if make is list or make is set:
            return make(decode(x) for x in state)
        if make is dict:
            if type(state) is dict:
                return {k: decode(v) for k, v in state.items()}
            return {decode(k): decode(v) for k, v in state}
        out = entity_state(state, fields, self.namer, decode)
        info = _types.info_of(type(self.obj))
        if info is not None and len(out) < len(info.fields):
            if declared is None and seq is not None:
                declared = self._declared_before(name, seq)
            plan = self.reader.plan_of(name, declared)
            if plan is None or not (plan.identity or plan.chain):
                self._fill_defaults(info, out)
        return out

    def _declared_before(self, name: str, seq: int) -> Any:
        """The declaration of type *name* in effect at event *seq*, which does not declare it: the one made by
        the last event before it that did (``None``: not among the events kept).

        A type is declared again after each ``snapshot`` event, at its first
        use, so the events read back are at most those since the last
        snapshot, and none that a span found before covers: what is found is
        remembered (:attr:`Reader.declared_spans`, sorted and merged) for
        every seq it covers.
        """
        spans = self.reader.declared_spans.setdefault(name, [])
        i = bisect.bisect_right(spans, seq, key=lambda span: span[0])  # spans[:i] start at or before seq
        before = spans[i - 1] if i else None
        if before is not None and seq <= before[1]:
            return before[2]
        stop = before[1] + 1 if before is not None else 0  # the events up to before's end are known
        needle = orjson.dumps(name) + b":["
        first = self.store.first_seq()
        hi = seq - 1
        while hi >= max(first, stop):
            lo = max(first, stop, hi - _SCAN + 1)
            found: tuple[int, Any] | None = None
            for raw in self.store.read(after=lo - 1, limit=hi - lo + 1):
                row = EventRow(*raw)
                if row.kind in SNAPSHOT_KINDS:
                    # every type is declared again after it: a declaration before it is not in effect
                    found = (row.seq, None)
                elif needle in row.payload:
                    verify_event(row)
                    p = orjson.loads(row.payload)
                    if len(p) > 2 and type(p[2]) is dict and name in p[2]:
                        found = (row.seq, p[2][name])
            if found is not None:
                _add_span(spans, i, (found[0], seq, found[1]))
                return found[1]
            hi = lo - 1
        if before is not None and hi < stop:  # no event after before's end declares it: before's is in effect
            spans[i - 1] = (before[0], seq, before[2])
            _merge_next(spans, i - 1)
            return before[2]
        # back at the first event kept, with nothing found: what the snapshot the kept events follow declares
        # (compaction keeps history from one) is in effect; remembered too, so that the scan is not made again
        declared = self._base_declaration(name, first)
        _add_span(spans, i, (first, seq, declared))
        return declared

    def _base_declaration(self, name: str, first: int) -> Any:
        """The declaration of type *name* in the snapshot the events from *first* on follow (``None``: none)."""
        if first <= 1 or first - 1 not in {info.seq for info in self.store.snapshots()}:
            return None
        payload = self.store.read_snapshot(first - 1).payload
        end = payload.find(b"\n")
        header = orjson.loads(payload[: end if end >= 0 else len(payload)])
        types = header.get("types") if type(header) is dict else None
        return types.get(name) if type(types) is dict else None

    def _fill_defaults(self, info: _types.TypeInfo, out: dict[str, Any]) -> None:
        """Add to entity state *out* the plain defaults of the fields it lacks, as a reader fills them in -- but
        not a factory's (history runs no code of the program: a factory may return another value each call,
        or read the object, or fail) nor a value the image logs when it fills it (a value holding objects: its
        own ``obj.set`` shows it). Such a field stays ``MISSING`` until the event that sets it."""
        for f in info.fields:
            if f in out or f not in info.defaults:
                continue
            default = info.defaults[f]
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                continue
            if not self.reader.holds_new_objects(default):
                out[f] = default

    # -- events -------------------------------------------------------------------

    def _event(self, row: EventRow) -> tuple[Kind, tuple[Any, ...]] | None:
        """The kind and arguments *row* holds, fields named as the class names them now (``None``: nothing
        to show -- the root's creation, or a field removed since)."""
        k = KINDS.get(row.kind)
        if k is None:
            raise MemimgError(
                f"event seq {row.seq} has kind {row.kind!r}, unknown to this version of memimg: upgrade memimg",
                seq=row.seq,
                kind=row.kind,
            )
        if row.kind == "root":
            return None
        try:
            raw = orjson.loads(row.payload)[0]
            decoder = self._arg_decoders.get(k.params)
            if decoder is None:
                decoder = self._arg_decoders[k.params] = arg_decoder(k.params, self.decode, k.optional)
            args = decoder(raw)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise CorruptLogError(
                f"event seq {row.seq} ({row.kind} on object {self.oid}) cannot be read: {err}",
                seq=row.seq,
                table="memimg_events",
            ) from err
        namer = self.namer
        if namer is None:
            return k, args
        if k.conflict.field:
            name = namer(args[0])
            return None if name is None else (k, (name, *args[1:]))
        if k is _OBJ_UPDATE:
            return k, ([(n, v) for f, v in args[0] if (n := namer(f)) is not None],)
        return k, args

    def _tx_meta(self, row: EventRow) -> dict[str, Any]:
        """The metadata of *row*'s transaction: the data of its first row if that is a ``tx.meta`` row, else ``{}``.

        That first row is read only if it may be one: not when it is *row*
        itself, or an event that created objects (perhaps a big one).
        """
        tx = row.tx
        meta = self._meta.get(tx)
        if meta is None:
            meta = {}
            if row.seq != tx and not self.born.created(tx):
                for raw in self.store.read(after=tx - 1, limit=1):
                    first = EventRow(*raw)
                    if first.seq == tx and first.kind == "tx.meta":
                        verify_event(first)
                        data = orjson.loads(first.payload)[0]
                        if type(data) is list and data and type(data[0]) is dict:
                            meta = data[0]
            self._meta[tx] = meta
        return dict(meta)


def _add_span(spans: list[tuple[int, int, Any]], i: int, span: tuple[int, int, Any]) -> None:
    """Insert *span* at *i* in the sorted *spans*, merged with the next one if it starts right after it with
    the same declaration."""
    spans.insert(i, span)
    _merge_next(spans, i)


def _merge_next(spans: list[tuple[int, int, Any]], i: int) -> None:
    """Merge span *i* with the next if that starts right after it with the same declaration."""
    if i + 1 < len(spans):
        start, end, declared = spans[i]
        nxt = spans[i + 1]
        if nxt[0] <= end + 1 and nxt[2] == declared:
            spans[i : i + 2] = [(start, max(end, nxt[1]), declared)]


def _creating_events(store: Store, first: int, upto: int) -> list[tuple[int, int]]:
    """``(first oid, seq)`` of every event from seq *first* to *upto* that created objects (a scan of the log)."""
    found = []
    for raw in store.read(after=first - 1, limit=upto - first + 1):
        payload = raw[5]
        if b"],[[" in payload:  # records follow the arguments: [args, [[oid, type, state], ...], ...]
            try:
                p = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # reported by a replay, with its seq
            if len(p) > 1 and p[1]:
                found.append((p[1][0][0], raw[0]))
    return found
