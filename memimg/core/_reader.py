"""Reading a log: stored rows, records and states into objects of the table.

A :class:`Reader` turns what the log stores into the graph's objects:

* the **schema** declarations the log carries (``types`` in events and
  snapshots), each planned once against the code (:mod:`memimg.core._schema`):
  how to read states written under it -- upgraders, renames, removals,
  defaults for fields added since;
* **records** ``[oid, type, state]`` (objects an event introduces, or a
  snapshot's chunks): every object is created first, empty, then filled in
  -- references may point forward;
* **events**: a stored row decoded to ``(kind, target, args)``, a field event
  adapted to the current schema;
* **value objects** (frozen attrs classes), read under their writer's
  declaration.

Replay never runs user code: objects are made with ``object.__new__`` and
their slots set through the raw setters of their :class:`TypeInfo`; the only
user code a reader runs is what the user gave it to run -- upgraders and
default factories.

**Fills.** Where the log stores no value for a field -- a field added since,
whose default a factory makes, or an upgrader's result -- and the value
holds objects the log never created (a factory's ``list``, a new entity),
the reader remembers it (:attr:`Reader.fills`): the image logs such values
as ``obj.set`` events, so they get ids in log order like every object and
every reader agrees. A free-standing graph (``memimg.replay``, tools) keeps
them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from memimg._errors import CorruptLogError, MemimgError, UnknownTypeError
from memimg.core import _bulkload, _schema, _types
from memimg.core._args import arg_decoder
from memimg.core._codec import ENTITY, FROZENSET, PLAIN, TRACKED, TUPLE, UNSUPPORTED, VALUE, Codec, kind_mismatch
from memimg.core._firststates import FirstStates
from memimg.core._generic import StandInMaker
from memimg.core._gone import Gone, caches_hash
from memimg.core._kinds import KINDS, TARGETLESS, Kind
from memimg.core._markers import ABSENT
from memimg.core._records import declared_types
from memimg.core._table import ObjectTable

__all__ = ["Pending", "Reader", "at_seq", "load_states"]

#: An event as Python values: (kind, target object, arguments).
Pending = tuple[Kind, Any, tuple[Any, ...]]

_NATIVE: Final = _types.NATIVE_TYPES
_OBJ_SET = KINDS["obj.set"]
_OBJ_UPDATE = KINDS["obj.update"]
_loads = orjson.loads


def at_seq(err: CorruptLogError, seq: int, what: str) -> CorruptLogError:
    """*err*, found in no particular row, as found in event *seq*."""
    return CorruptLogError(f"event seq {seq} ({what}): {err}", seq=seq, table="memimg_events")


def load_states(line: bytes, count: int, chunk: int, seq: int | None) -> list[Any]:
    """The states line of a format-2 snapshot chunk, checked to hold *count* states."""
    try:
        states = _loads(line)
    except orjson.JSONDecodeError:
        states = None
    if type(states) is not list or len(states) != count:
        raise CorruptLogError(
            f"chunk {chunk} of a snapshot payload lists {count} objects but its states line does not hold as many",
            seq=seq,
            table="memimg_snapshots",
        )
    return states


class Reader:
    """Reads stored rows, records and states into the objects of one table.

    Args:
        table: where the objects live.
        removed_types: stored type names whose objects become :class:`Gone`
            placeholders (see :mod:`memimg.core._gone`).
        stand_ins: makes a class for a type no class claims (tools); without
            it such a type is reported as a schema difference.
    """

    def __init__(
        self,
        table: ObjectTable,
        *,
        removed_types: frozenset[str] = frozenset(),
        stand_ins: StandInMaker | None = None,
    ) -> None:
        self.table = table
        self.codec: Codec = table.codec
        self.shell = table.shell
        self.removed_types = removed_types
        self.stand_ins = stand_ins
        self.report = _schema.SchemaReport()
        #: whether a placeholder of a removed type was made since the image last cleaned them out
        self.has_gone = False
        #: ``(entity, field, value)`` filled in where the log stores no value (see the module docstring)
        self.fills: list[tuple[Any, str, Any]] = []
        self._plans: dict[tuple[Any, ...], _schema.Plan] = {}
        self._plan_by_name: dict[str, _schema.Plan] = {}
        self._plan_by_cls: dict[type, _schema.Plan] = {}
        #: per entity class whose stored fields need no upgrade: field name -> raw slot setter
        self.fast_fields: dict[type, dict[str, Callable[[Any, Any], None]]] = {}
        #: the value decoder: references resolved in the table, value objects read by their declaration
        self.decode = self.codec.decoder(table.deref, self.decode_value, generic=stand_ins is not None)
        self.arg_decoders: dict[str, Callable[[list[Any]], tuple[Any, ...]]] = {}
        #: objects a table held before, by id, taken again by the objects created at their ids with their
        #: types (a reload in place: see :meth:`_reuse`); None: every object is made new
        self.reuse: list[Any] | None = None
        #: first states ``MemoryImage.history`` read from big events (:mod:`memimg.image._history`); replaced
        #: by an empty one when an erasure rewrites stored rows (a history call under way, which may have read
        #: them before, fills the old one)
        self.first_states = FirstStates()
        #: ``type name -> [(first seq, last seq, declaration)]``, sorted and apart: spans of the log where
        #: ``MemoryImage.history`` found the type declared so (the declaration in effect at every seq of the
        #: span; ``None``: none, a ``snapshot`` event at the first seq having ended the one before)
        self.declared_spans: dict[str, list[tuple[int, int, Any]]] = {}
        #: plans of declarations ``MemoryImage.history`` met that replay did not (their differences unreported)
        self._history_plans: dict[tuple[Any, ...], _schema.Plan] = {}

    # -- schemas ----------------------------------------------------------------

    def declare(self, types: dict[str, Any]) -> None:
        """Record schemas declared by the log, and plan how to read states written under them."""
        declarations = self.table.declarations
        for name, decl in types.items():
            version, fields = decl[0], tuple(decl[1])
            field_types = declared_types(name, decl)
            declarations.note(name, version, fields, field_types)
            key = (name, version, fields, field_types)
            plan = self._plans.get(key)
            if plan is None:
                plan = _schema.plan_for(
                    name,
                    version,
                    fields,
                    self.report,
                    self.removed_types,
                    stand_ins=self.stand_ins,
                    value=len(decl) > 2 and decl[2] == "value",
                    stored_types=field_types,
                )
                self._plans[key] = plan
            self._plan_by_name[name] = plan
            if plan.info is not None:
                self._plan_by_cls[plan.info.cls] = plan
                self.fast_fields.pop(plan.info.cls, None)

    def plan_of(self, name: str, decl: Any) -> _schema.Plan | None:
        """How a reader reads states of entity type *name* stored under declaration *decl* (``[version,
        fields, ...]``) -- the plan replay made for it, else one made now (its differences not reported: replay
        reports those of the declarations it reads); ``None``: *decl* is not a declaration."""
        if type(decl) is not list or len(decl) < 2 or type(decl[0]) is not int or type(decl[1]) is not list:
            return None
        fields = tuple(decl[1])
        field_types = declared_types(name, decl)
        key = (name, decl[0], fields, field_types)
        plan = self._plans.get(key) or self._history_plans.get(key)
        if plan is None:
            plan = self._history_plans[key] = _schema.plan_for(
                name, decl[0], fields, _schema.SchemaReport(), self.removed_types, stored_types=field_types
            )
        return plan

    def plans_read(self) -> list[_schema.Plan]:
        """The plan of every declaration read so far, from the log or a snapshot (tools compare them)."""
        return list(self._plans.values())

    def plan(self, name: str, *, value: bool = False) -> _schema.Plan:
        """How to read states of stored type *name* (as the code declares it, if the log did not)."""
        plan = self._plan_by_name.get(name)
        if plan is None:
            if name in self.removed_types:
                plan = _schema.Plan(name, None, 1, (), identity=False)
            else:
                try:
                    info = _types.resolve(name, _types.VALUE if value else _types.ENTITY)
                except UnknownTypeError:
                    plan = _schema.plan_for(
                        name, 1, (), self.report, self.removed_types, stand_ins=self.stand_ins, value=value
                    )
                else:
                    plan = _schema.Plan(name, info, info.version, info.fields, identity=name == info.name)
                    plan.field_map = {f: f for f in info.fields}
            self._plan_by_name[name] = plan
        return plan

    # -- records and states -----------------------------------------------------

    def load_records(self, records: list[Any], seq: int | None = None) -> None:
        """Create the objects of ``[oid, type, state]`` records, then fill them in.

        *seq* is the event holding the records (None: snapshot data).

        Raises:
            CorruptLogError: an id is below 1 (named, with *seq*), or in use.
        """
        if records and (low := min(r[0] for r in records)) < 1:  # not an index from the end of the table
            if seq is None:
                raise CorruptLogError(
                    f"snapshot data has object id {low} (object ids run from 1 up)", seq=None, table=""
                )
            raise CorruptLogError(
                f"event seq {seq} creates an object under id {low} (object ids run from 1 up): the log was "
                "damaged or crafted; restore it from a backup",
                seq=seq,
                table="memimg_events",
            )
        made = self.create([(oid, name) for oid, name, _ in records])
        self.fill_states(made, [state for _, _, state in records])

    def load_chunks(self, names: list[str], chunks: list[tuple[list[int], list[int], bytes]]) -> None:
        """Load a format-2 snapshot's chunks.

        Every object is created from the directories first (references may
        point forward), then the states are parsed and filled chunk by chunk,
        a run of objects of one type at a time (:mod:`memimg.core._bulkload`).
        """
        made = [_bulkload.make_runs(self, names, oids, kinds) for oids, kinds, _ in chunks]
        decode = _bulkload.decode_values(self)
        collections = self.shell.by_name
        for i, (oids, _, states) in enumerate(chunks):
            state_list = load_states(states, len(oids), i, None)
            chunks[i] = (oids, [], b"")  # the bytes are not needed any more
            for run in made[i]:
                part = state_list[run.start : run.stop]
                if run.objs is None:
                    self.fill_states(run.made or [], part)
                elif not _bulkload.fill_run(self, run, part, decode):
                    plan = None if run.name in collections else self.plan(run.name)
                    self.fill_states([(obj, plan) for obj in run.objs], part)
            made[i] = []

    def create(self, entries: list[tuple[int, str]]) -> list[tuple[Any, _schema.Plan | None]]:
        """Make the (empty) objects of ``(oid, type name)`` entries and place them in the table."""
        made: list[tuple[Any, _schema.Plan | None]] = []
        placed: list[tuple[int, Any]] = []
        shell = self.shell
        owner = self.table.owner
        collections = shell.by_name
        set_owner, set_oid = shell.set_owner, shell.set_oid
        for oid, name in entries:
            cls: Any = collections.get(name)
            obj: Any
            plan = None
            if cls is not None:
                obj = cls.__new__(cls)
                obj._mi_img = owner
                obj._mi_oid = oid
            else:
                plan = self.plan(name)
                if plan.info is None:
                    obj = Gone(oid, name)
                    self.has_gone = True
                    self.report.removed_objects[name] += 1
                else:
                    if plan.info.kind != _types.ENTITY:
                        raise CorruptLogError(
                            f"stored object {oid} has type {name!r}, which is not an entity class", seq=None, table=""
                        )
                    obj = object.__new__(plan.info.cls)
                    set_owner(obj, owner)
                    set_oid(obj, oid)
            placed.append((oid, obj))
            made.append((obj, plan))
        if self.reuse is not None:
            self._reuse(placed, made, self.reuse)
        self.table.place(placed)
        return made

    def _reuse(self, placed: list[tuple[int, Any]], made: list[tuple[Any, Any]], old: list[Any]) -> None:
        """Put the objects of *old* (by id) in place of the new ones of the same type, emptied first.

        Loading a snapshot into a table that held these objects before (see
        :attr:`reuse`): the application's references to them stay valid and
        show the loaded state.
        """
        shell = self.shell
        for i, (oid, obj) in enumerate(placed):
            was = old[oid] if 0 < oid < len(old) else None
            t = type(obj)
            if was is None or type(was) is not t or t is Gone:
                continue
            old[oid] = None  # taken
            if t is shell.list:
                list.clear(was)
            elif t is shell.dict:
                dict.clear(was)
            elif t is shell.set:
                set.clear(was)
            else:
                for delete in _types.info_of(t).deleters.values():  # type: ignore[union-attr]
                    try:
                        delete(was)
                    except AttributeError:
                        pass  # unset already
            placed[i] = (oid, was)
            made[i] = (was, made[i][1])

    def fill_states(self, made: list[tuple[Any, _schema.Plan | None]], states: list[Any]) -> None:
        """Fill objects made by :meth:`create` from their states (parsed, or JSON bytes).

        The hot loop of loading a snapshot (``python -m benchmarks``, graph
        reload): collections and current-schema entities are filled inline.
        """
        dec = self._decode_fast
        tl, td, ts = self.shell.list, self.shell.dict, self.shell.set
        in_order: dict[int, Any] = {}  # id(plan) -> the field setters in stored order, or None
        for (obj, plan), state in zip(made, states):
            fill: dict[str, Any] | None = None  # a dict state, filled outside the try (upgraders are user code)
            try:
                if type(state) is bytes:
                    state = _loads(state)
                t = type(obj)
                if t is tl:
                    list.extend(obj, [dec(x) if type(x) is list else x for x in state])
                elif t is td:
                    if type(state) is dict:
                        dict.update(obj, {k: dec(v) if type(v) is list else v for k, v in state.items()})
                    else:
                        dict.update(obj, [(dec(k), dec(v)) for k, v in state])
                elif t is ts:
                    set.update(obj, [dec(m) if type(m) is list else m for m in state])
                elif plan is None or t is Gone:
                    continue
                elif type(state) is dict:
                    fill = state
                elif type(state) is not list:
                    raise TypeError(f"an entity state is a {type(state).__name__}")
                else:  # a state in the stored field order (format 2)
                    fields = plan.stored_fields
                    if len(state) != len(fields):
                        raise CorruptLogError(
                            f"stored object {obj._mi_oid} ({plan.stored_name}) has {len(state)} field values, "
                            f"its declaration lists {len(fields)}",
                            seq=None,
                            table="",
                        )
                    key = id(plan)
                    setters = in_order.get(key, ABSENT)
                    if setters is ABSENT:
                        info = plan.info
                        setters = in_order[key] = (
                            [info.setters[f] for f in fields]
                            if plan.identity and info is not None and fields == info.fields
                            else None
                        )
                    if setters is not None:
                        for setter, x in zip(setters, state):
                            setter(obj, dec(x) if type(x) is list else x)
                        continue
                    fill = dict(zip(fields, state))
            except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
                name = plan.stored_name if plan is not None else self.shell.names.get(type(obj), type(obj).__name__)
                raise CorruptLogError(
                    f"stored object {obj._mi_oid} ({name}) has a state that does not fit it: {err!r}",
                    seq=None,
                    table="",
                ) from err
            if fill is not None and plan is not None:
                self._fill(obj, plan, fill)

    def _decode_fast(self, x: Any) -> Any:
        """:attr:`decode` with references resolved inline (the common case in records)."""
        if type(x) is list and len(x) == 2 and x[0] == "r" and type(x[1]) is int and x[1] > 0:
            try:
                obj = self.table.objects[x[1]]
            except IndexError:
                obj = None
            if obj is not None:
                return obj
        return self.decode(x)

    def _fill(self, obj: Any, plan: _schema.Plan, state: dict[str, Any]) -> None:
        info = plan.info
        assert info is not None
        setters = info.setters
        dec = self._decode_fast
        if plan.identity:
            for f, x in state.items():
                setter = setters.get(f)
                if setter is None:  # a field the declaration did not list
                    self._set_fields(obj, info, _schema.upgrade_state(plan, {f: dec(x)}, self.report, partial=True))
                elif type(x) is not list:
                    setter(obj, x)
                else:
                    setter(obj, dec(x))
            return
        values = _schema.upgrade_state(plan, {f: dec(x) for f, x in state.items()}, self.report, partial=False)
        self._set_fields(obj, info, values)
        defaults = {}
        for f in info.fields:
            if f not in values and f in info.defaults:
                # one by one, after the stored values: a factory taking self may read them
                defaults[f] = default = _schema.default_for(info, f, obj)
                setters[f](obj, default)
        self._note_fills(obj, defaults)

    def _set_fields(self, obj: Any, info: _types.TypeInfo, values: dict[str, Any]) -> None:
        """Set fields of *obj* to values that replay made (defaults filled in, upgraders' results)."""
        for f, v in values.items():
            info.setters[f](obj, v)
        self._note_fills(obj, values)

    # -- fills ------------------------------------------------------------------

    def _note_fills(self, obj: Any, values: dict[str, Any]) -> None:
        """Remember the values among *values* that hold objects the log never created (see :attr:`fills`)."""
        if self.table.owner is None:
            return  # a free-standing graph: nothing will log them, and nothing needs to
        for f, v in values.items():
            if type(v) not in _NATIVE and self.holds_new_objects(v):
                self.fills.append((obj, f, v))

    def holds_new_objects(self, v: Any) -> bool:
        """Whether storing *v* would attach something: a plain container, an entity or
        collection without an id, or a value that cannot be stored (attaching names it)."""
        t = type(v)
        if t in _NATIVE:
            return False
        shape = self.codec._shapes.get(t) or self.codec.classify(t)
        if shape is ENTITY or shape is TRACKED:
            return v._mi_oid is None
        if shape is PLAIN or shape is UNSUPPORTED:
            return True
        if shape is TUPLE or shape is FROZENSET:
            return any(self.holds_new_objects(i) for i in v)
        if shape is VALUE:
            return any(self.holds_new_objects(getattr(v, f, None)) for f in _types.info_of(t).fields)  # type: ignore[union-attr]
        return False

    def pending_fills(self) -> list[tuple[Any, str, Any]]:
        """The fills (see :attr:`fills`) still to be logged.

        The object is live, its field still holds the filled value, and that
        value still holds objects without ids.
        """
        out = []
        for obj, f, v in self.fills:
            if obj._mi_oid is None or type(obj) is Gone:
                continue
            try:
                current = _types.info_of(type(obj)).getters[f](obj)  # type: ignore[union-attr]
            except AttributeError:
                continue
            if current is v and self.holds_new_objects(v):  # an entity is attached in place: it has an id now
                out.append((obj, f, v))
        self.fills = out
        return out

    # -- events -----------------------------------------------------------------

    def decode_row(
        self, kind_name: str, target: int, payload: bytes, seq: int, parsed: list[Any] | None = None
    ) -> Pending | None:
        """The event a stored row holds, creating the objects it introduces.

        *parsed* is the row's payload parsed already, if the caller has it
        (the fold reads every row's once).

        Returns ``None`` for an event on an object of a removed type, or on a
        field the code dropped.

        Raises:
            CorruptLogError: the row does not decode (naming its seq).
            SchemaError: an upgrader failed on a state it holds (naming its seq).
        """
        try:
            p = _loads(payload) if parsed is None else parsed
            if len(p) > 2:
                self.declare(p[2])
            if len(p) > 1 and p[1]:
                self.load_records(p[1], seq)
                self.table.born.note(p[1][0][0], seq)
            k = KINDS.get(kind_name)
            if k is None:
                raise MemimgError(
                    f"event seq {seq} has kind {kind_name!r}, unknown to this version of memimg: "
                    "the log was written by a newer memimg; upgrade memimg to open it",
                    seq=seq,
                    kind=kind_name,
                )
            obj = None
            if target or kind_name not in TARGETLESS:
                objects = self.table.objects
                obj = objects[target] if type(target) is int and 0 < target < len(objects) else None
                if obj is None:  # never counted from the end
                    raise CorruptLogError(
                        f"event seq {seq} ({kind_name}) targets object {target!r}, which does not exist "
                        "at that point of the log: the row was damaged or crafted; restore the log from a backup",
                        seq=seq,
                        table="memimg_events",
                    )
                if type(obj) is Gone:
                    self.report.events_skipped += 1
                    return None
            args = self.decode_args(k, p[0])
            if k.conflict.field:
                return self.adapt_field_event(k, obj, args)
        except CorruptLogError as err:
            if err.seq is not None:
                raise
            raise at_seq(err, seq, f"{kind_name} on object {target}") from err
        except MemimgError as err:
            _schema.locate(err, seq, f"event seq {seq} ({kind_name})")
            raise
        except Exception as err:
            raise CorruptLogError(
                f"event seq {seq} ({kind_name}) cannot be read: {err}", seq=seq, table="memimg_events"
            ) from err
        return k, obj, args

    def decode_args(self, k: Kind, raw: list[Any]) -> tuple[Any, ...]:
        """The arguments of an event of kind *k*, as stored, decoded."""
        decoder = self.arg_decoders.get(k.params)
        if decoder is None:
            decoder = self.arg_decoders[k.params] = arg_decoder(k.params, self.decode, k.optional)
        return decoder(raw)

    def adapt_field_event(self, k: Kind, obj: Any, args: tuple[Any, ...]) -> Pending | None:
        """A field event on *obj* as the current schema reads it (renamed, upgraded, or dropped: ``None``)."""
        fast = self.fast_fields.get(type(obj))
        if fast is not None and args[0] in fast:
            return k, obj, args
        info = _types.info_of(type(obj))
        if info is None:
            raise CorruptLogError(
                f"a field event targets a {type(obj).__qualname__}, not an entity", seq=None, table=""
            )
        plan = self._plan_by_cls.get(info.cls)
        name = args[0]
        if plan is None or plan.identity:
            self.fast_fields[info.cls] = info.setters
        if (plan is None or plan.identity) and name in info.setters:
            return k, obj, args
        if plan is None:
            plan = _schema.Plan(info.name, info, info.version, info.fields)
        if k is _OBJ_SET:
            values = _schema.upgrade_state(plan, {name: args[1]}, self.report, partial=True)
            self._note_fills(obj, values)  # in place once the event is applied
            return _OBJ_UPDATE, obj, (list(values.items()),)
        renamed_from = {old: new for new, old in info.renamed.items()}
        target = plan.field_map.get(name, name if name in info.setters else renamed_from.get(name, _schema.DROP))
        if target is _schema.DROP or target not in info.setters:
            self.report.dropped_fields[(info.name, name)] += 1
            return None
        return k, obj, (target, *args[1:])

    # -- value objects ------------------------------------------------------------

    def decode_value(self, x: list[Any]) -> Any:
        """A frozen attrs value object, read under the schema its writer declared."""
        plan = self._plan_by_name.get(x[1]) or self.plan(x[1], value=True)
        info = plan.info
        if info is None:  # a removed value type: a placeholder, cleaned up by strip_gone
            self.has_gone = True
            return Gone(0, x[1], x)
        if info.kind != _types.VALUE:
            raise kind_mismatch("v", x[1], info)
        dec = self.decode
        state = {k: dec(v) for k, v in x[2].items()}
        if not plan.identity:
            state = _schema.upgrade_state(plan, state, self.report, partial=False)
        obj: Any = object.__new__(info.cls)
        for f in info.fields:
            if f in state:
                value = state[f]
            elif f in info.defaults:
                value = _schema.default_for(info, f, obj)
            else:
                continue  # reported as a difference when the schema was planned
            object.__setattr__(obj, f, value)
        if caches_hash(info.cls):
            object.__setattr__(obj, "_attrs_cached_hash", None)
        return obj
