"""The committed object graph: identity, attaching, encoding, and applying events.

A :class:`Graph` holds the object table (``objects[oid]``), the root, and the
schemas the log has declared. It is the *applier* of the committed state:
the primitive operations events reduce to (see :mod:`memimg.core._kinds`), done
with raw builtin operations on the real objects, so neither user code nor
memimg's own tracking runs during replay or commit.

Object ids are given at commit, in log order (``len(objects)`` is the next
one), so every process folding the same log gives every object the same id.
An object being attached carries ``_mi_oid = None`` until its commit.

Attaching (:meth:`Graph.prepare`) happens at the assignment that makes a
value reachable: it validates every value of the new subgraph, converts plain
``list``/``dict``/``set`` into tracked ones and marks new entities as
attached, writing an undo journal so that a failure -- or a discarded
transaction -- leaves every object as it was. Encoding (at commit) turns the
pending events into rows; objects met for the first time are written in full
(``[oid, type, state]`` records) inside the event that introduces them.

Everything here walks graphs with explicit work lists, never recursion, so
a linked list of a million nodes is as fine as a tree.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import keyword
import operator
import struct
import types
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson

from memimg._errors import CorruptLogError, MemimgError, UnknownTypeError, UnsupportedValueError, value_repr
from memimg.core import _codec, _schema, _types
from memimg.core._codec import Codec, Converter, Gone, describe_unsupported
from memimg.core._gc import paused_gc
from memimg.core._kinds import FIELD, KINDS, Kind
from memimg.core._rows import _HEADER, _kind_code, verify_event
from memimg.model import _tracking
from memimg.model._base import PersistentBase
from memimg.model._collections import TrackedDict, TrackedList, TrackedSet
from memimg.stores._protocol import EventRow

__all__ = ["COLLECTION_NAMES", "Gone", "Graph", "Pending"]

#: An event not yet committed: (kind, target object, arguments as Python values).
Pending = tuple[Kind, Any, tuple[Any, ...]]

COLLECTION_NAMES: Final[dict[type, str]] = {TrackedList: "list", TrackedDict: "dict", TrackedSet: "set"}
_COLLECTION_TYPES: Final[dict[str, Any]] = {name: cls for cls, name in COLLECTION_NAMES.items()}
_TRACKED_FOR: Final[dict[type, Any]] = {list: TrackedList, dict: TrackedDict, set: TrackedSet}
_TRACKED_TYPES: Final = frozenset(_TRACKED_FOR.values())
_NATIVE: Final = (str, int, float, bool, type(None))
_SCALARS: Final = frozenset({int, float, bool, type(None)})
_UNDO_ATTACH: Final = 0
_UNDO_FIELD: Final = 1
_UNDO_ITEMS: Final = 2

_list_setitem = list.__setitem__
_list_copy = list.copy
_list_iter = list.__iter__
_dict_items = dict.items
_dict_keys = dict.keys


def _set_slots(obj: Any, owner: Any, oid: int | None) -> None:
    if isinstance(obj, PersistentBase):
        _SET_OWNER(obj, owner)
        _SET_OID(obj, oid)
    else:
        obj._mi_img = owner
        obj._mi_oid = oid


_SET_OWNER = PersistentBase.__dict__["_mi_img"].__set__
_crc32 = zlib.crc32
_pack_header = _HEADER.pack
_loads = orjson.loads
_get_oid = operator.attrgetter("_mi_oid")
_INT64 = 2**63
_KIND_CODES = {name: k.code for name, k in KINDS.items()}
_OBJ_SET = KINDS["obj.set"]
_NO_SETTERS: dict[str, Any] = {}
_UNSEEN: Final = object()
_OBJ_UPDATE = KINDS["obj.update"]
_LIST_DEL = KINDS["list.del"]
_LIST_SET = KINDS["list.set"]
_DICT_SET = KINDS["dict.set"]
_DICT_DEL = KINDS["dict.del"]
_SET_DISCARD = KINDS["set.discard"]


_SET_OID = PersistentBase.__dict__["_mi_oid"].__set__

#: Objects per chunk of a snapshot (format 2): one directory line and one states line each.
_CHUNK: Final = 2048


#: How a compiled state encoder writes a reference to ``{v}`` (the field's value, an object of a linked type), by walk:
#: a snapshot marks and queues objects met for the first time inline; an attach's records give ids
#: to new objects through ``ref`` (objects with an id are written inline); other walks call ``ref``.
REF_MARK: Final = "o if seen[o := {v}._mi_oid] else mark(o, 1) or push({v}) or o"
REF_COMMIT: Final = "o if (o := {v}._mi_oid) is not None else ref({v})"
REF_CALL: Final = "ref({v})"


def _state_encoder(info: _types.TypeInfo, direct: bool, ref: str, keyed: bool) -> Callable[..., Callable[[Any], Any]]:
    """A compiled encoder of *info*'s entity states, in declared field order.

    Generated once per class (and access mode): each field is read and tested
    inline -- natives stored as themselves, objects as references written as
    *ref* says (one of ``REF_*``) -- so a walk pays no call per field. The
    state is the list of the field values (snapshot format 2), or with
    *keyed* the dict of them by name (attach records, ``serialize``).
    *direct* reads fields as plain attribute loads (only right while no read
    hook is installed on any class); otherwise through the raw slot getters.
    An object with an unset field falls back to *slow* (a dict of the fields
    that are set).
    """
    namespace: dict[str, Any] = {"X": _INT64}
    items = []
    cls = info.cls
    # a plain attribute load is a raw slot read only if nothing in the class intervenes
    direct = (
        direct
        and inspect.getattr_static(cls, "__getattribute__") is object.__dict__["__getattribute__"]
        and inspect.getattr_static(cls, "__getattr__", None) is None
    )
    reads = []
    for i, f in enumerate(info.fields):
        namespace[f"g{i}"] = info.getters[f]
        plain = (
            direct
            and f.isascii()
            and f.isidentifier()
            and not keyword.iskeyword(f)
            and type(inspect.getattr_static(cls, f, None)) is types.MemberDescriptorType
        )
        reads.append(f"v{i} = obj.{f}" if plain else f"v{i} = g{i}(obj)")
        items.append(
            (f"{f!r}: " if keyed else "") + f"v{i} if (t := type(v{i})) is str or (t is int and -X <= v{i} < X)"
            f" else ['r', {ref.format(v=f'v{i}')}] if t in linked"
            f" else v{i} if v{i} is None or t is bool else value(v{i})"
        )
    # all fields are read first: only a read's AttributeError (an unset field) means the slow
    # path, never one raised while encoding a value (a user's hook would run twice)
    reads_code = "\n            ".join(reads) or "pass"
    body = ",\n            ".join(items)
    opening, closing = "{}" if keyed else "[]"
    source = f"""
def make(value, linked, slow, seen=None, mark=None, push=None, ref=None):
    def encode(obj):
        try:
            {reads_code}
        except AttributeError:
            return slow(obj)
        return {opening}
            {body}
        {closing}
    return encode
"""
    exec(compile(source, f"<memimg state encoder of {info.name}>", "exec"), namespace)
    return namespace["make"]  # type: ignore[no-any-return]


def state_encoder(info: _types.TypeInfo, direct: bool, ref: str, *, keyed: bool) -> Callable[..., Any]:
    """The compiled state encoder maker for *info* in this mode (see :func:`_state_encoder`).

    Compiled once and kept on the class's :class:`TypeInfo` (a class decorated
    again gets a new one), keyed also by the class's own attribute hooks, so
    a ``__getattr__`` or ``__getattribute__`` added to the class later is
    honoured rather than read past.
    """
    cls = info.cls
    key = (direct, ref, keyed, cls.__getattribute__, getattr(cls, "__getattr__", None))
    make = info.encoders.get(key)
    if make is None:
        make = info.encoders[key] = _state_encoder(info, direct, ref, keyed)
    return make


def _render(where: Any) -> str:
    """The readable path of a value being attached (``Box.content[3]['k'].name``).

    Paths are built lazily as nested tuples ``(parent, step, key)`` while
    attaching -- formatting a string per value would cost more than the
    attaching itself -- and rendered only for an error message.
    """
    steps = []
    while isinstance(where, tuple):
        where, step, key = where
        if step == ".":
            steps.append(f".{key}")
        elif step == "[":
            steps.append(f"[{key}]")
        elif step == "[k":
            steps.append(f"[{value_repr(key)}]")
        elif step == "(key)":
            steps.append(f"[{value_repr(key)}] (key)")
        else:
            steps.append(step)
    return str(where or "") + "".join(reversed(steps))


def split_snapshot(payload: bytes, row_seq: int | None = None) -> tuple[dict[str, Any], list[Any]]:
    """A stored snapshot's header and its records, states unparsed.

    Format 2 (what :meth:`Graph.snapshot_payload` writes): the records are
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
    try:
        header = _loads(payload[:end])
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or "count" not in header:
        raise CorruptLogError(
            "a snapshot payload does not start with its header line", seq=None, table="memimg_snapshots"
        )
    fmt = header.get("format")
    if fmt not in (1, 2):
        raise MemimgError(f"unknown snapshot format {fmt!r}: written by a newer memimg?")
    header_seq = header.get("seq")
    seq = row_seq if row_seq is not None else header_seq if type(header_seq) is int else None

    def corrupt(what: str) -> CorruptLogError:
        return CorruptLogError(f"a snapshot payload {what}", seq=seq, table="memimg_snapshots")

    if type(header_seq) is not int:
        raise corrupt("header gives no seq")
    if row_seq is not None and header_seq != row_seq:
        raise corrupt(f"header gives seq {header_seq}, not the seq of its row ({row_seq})")
    root = header.get("root")
    if type(root) is not int:
        raise corrupt("header names no root object")
    root_held = False
    if not isinstance(header.get("types", {}), dict):
        raise corrupt("header has malformed type declarations")
    records: list[Any] = []
    count = 0
    names: Any = None
    next_oid: Any = None
    if fmt == 2:
        names = header.get("names")
        if type(names) is not list or not all(type(n) is str for n in names):
            raise corrupt("header has no list of type names")
        next_oid = header.get("next_oid")
        if type(next_oid) is not int:
            raise corrupt("header has no next_oid")
    if end + 1 < len(payload):
        lines = payload[end + 1 :].split(b"\n")
        if fmt == 2:
            if len(lines) % 2:
                raise corrupt("ends in the middle of a chunk")
            n_names = len(names)
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
                    or not all(type(oid) is int and 0 < oid < next_oid for oid in directory[0])
                    or not all(type(k) is int and 0 <= k < n_names for k in directory[1])
                ):
                    raise corrupt(f"has a malformed directory line in chunk {i // 2}")
                if not root_held:
                    root_held = root in directory[0]  # the root is written first
                records.append((directory[0], directory[1], lines[i + 1]))
                count += len(directory[0])
        else:
            type_names: dict[bytes, str] = {}
            for number, line in enumerate(lines):
                try:
                    oid, name, state = line.split(b"\t", 2)
                    text = type_names.get(name)
                    if text is None:
                        text = type_names[name] = _loads(name) if name[:1] == b'"' else name.decode()
                    records.append((int(oid), text, state))
                except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                    raise corrupt(f"has a malformed object line {number + 1}") from err
            count = len(records)
            root_held = any(r[0] == root for r in records)
    if count != header["count"]:
        raise corrupt(f"holds {count} objects, its header says {header['count']}")
    if not root_held and (root or count):
        raise corrupt(f"names object {root} as its root, but holds no object {root}")
    return header, records


def decode_snapshot(payload: bytes, row_seq: int | None = None) -> dict[str, Any]:
    """A stored snapshot payload as snapshot-format data (what ``serialize`` returns, entity states as dicts)."""
    header, records = split_snapshot(payload, row_seq)
    data = {k: v for k, v in header.items() if k not in ("count", "names")}
    objects: list[Any] = []
    if header.get("format") == 2:
        names = header["names"]
        types = header.get("types", {})
        for i, (oids, kinds, states) in enumerate(records):
            state_list = _load_states(states, len(oids), i, header.get("seq"))
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


def _load_states(line: bytes, count: int, chunk: int, seq: int | None) -> list[Any]:
    """The states line of a format-2 chunk, checked to hold *count* states."""
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


def _at_seq(err: CorruptLogError, seq: int, what: str) -> CorruptLogError:
    """*err*, found in no particular row, as found in event *seq*."""
    return CorruptLogError(f"event seq {seq} ({what}): {err}", seq=seq, table="memimg_events")


@functools.cache
def _caches_hash(cls: type) -> bool:
    """Whether attrs caches the hash of *cls* instances (``cache_hash=True``), slotted or not."""
    if hasattr(cls, "_attrs_cached_hash"):
        return True
    props = getattr(cls, "__attrs_props__", None)
    hashability = getattr(props, "hashability", None)
    if hashability is not None:
        return getattr(hashability, "name", "") == "HASHABLE_CACHED"
    code = getattr(cls.__hash__, "__code__", None)  # attrs < 25.4: the generated __hash__ reads it
    return code is not None and "_attrs_cached_hash" in code.co_names


class Graph:
    """The committed graph of one image (or of a detached replay)."""

    def __init__(self, converter: Converter, owner: Any = None) -> None:
        self.objects: list[Any] = [None]
        self._holes = 0  # None entries in objects, besides objects[0]
        self.root_oid = 0
        self.owner = owner
        self.codec = Codec(converter, self._ref_commit, self._deref)
        self.codec.value_decoder = self._decode_value
        self.codec.on_value = self._note_value
        #: ``type name -> (version, fields)`` as the log declared them.
        self.declared: dict[str, tuple[int, tuple[str, ...]]] = {}
        self.removed_types: frozenset[str] = frozenset()
        #: read types no class claims into generic stand-ins (tools)
        self.generic = False
        self.report = _schema.SchemaReport()
        self.has_gone = False
        #: ``(entity, field, value)`` set by replay where the log stored no value -- a field's
        #: default (a field added since) or an upgrader's result -- when the value holds objects
        #: the log never created (a factory's list, a new entity): the image logs them as
        #: ``obj.set`` events, so they get ids in log order like every object, and every reader agrees
        self.fills: list[tuple[Any, str, Any]] = []
        self._plans: dict[tuple[Any, ...], _schema.Plan] = {}
        self._plan_by_name: dict[str, _schema.Plan] = {}
        self._plan_by_cls: dict[type, _schema.Plan] = {}
        #: per entity class whose stored fields need no upgrade: field name -> raw slot setter
        self._fast_fields: dict[type, dict[str, Callable[[Any, Any], None]]] = {}
        self._arg_decoders: dict[str, Callable[[list[Any]], tuple[Any, ...]]] = {}
        self._setters: dict[type, dict[str, Callable[[Any, Any], None]]] = {}
        # encoding journal (one commit at a time, under the image lock)
        self._queue: list[Any] = []
        self._records: list[Any] = []  # the current event's new objects
        self._new_types: dict[str, Any] = {}
        self._assigned_from = 0
        self._declared_before: dict[str, Any] = {}
        self._collecting: dict[str, Any] | None = None
        #: the reachable objects when the caller already knows them (a snapshot just walked the graph):
        #: a byte per oid, non-zero if reachable; empty if every object is
        self.collect_hint: bytearray | None = None
        #: classes whose current schema the log has declared (cleared when declarations change)
        self._declared_ok: set[type] = set()
        self._arg_encoders: dict[str, Callable[[tuple[Any, ...]], list[Any]]] = {}

    # -- identity -----------------------------------------------------------

    @property
    def root(self) -> Any:
        """The root object (``None`` before the root event)."""
        return self.objects[self.root_oid] if self.root_oid else None

    def _deref(self, oid: int) -> Any:
        try:
            obj = self.objects[oid]
        except IndexError:
            obj = None
        if obj is None:
            raise CorruptLogError(f"a stored reference names object {oid}, which does not exist", seq=None, table="")
        return obj

    def live_count(self) -> int:
        """How many objects the table holds (attached, reachable or not yet collected)."""
        return len(self.objects) - 1 - self._holes

    # -- attaching (at assignment time) ---------------------------------------

    def prepare(self, value: Any, where: str, undo: list[Any]) -> Any:
        """Make *value* storable in this graph and return what is to be stored.

        Plain containers come back as tracked ones; free-standing entities
        and tracked collections are attached, with everything they reach.
        Every change is journaled in *undo* (see :meth:`undo`).

        Raises:
            UnsupportedValueError: a value in the new subgraph cannot be
                stored; everything done so far is undone.
        """
        t = type(value)
        if t in _NATIVE:
            if t is str and not value.isascii():
                _codec.check_text(value, where)
            return value
        mark = len(undo)
        try:
            with paused_gc():
                return self._prepare(value, where, undo)
        except BaseException:
            self.undo(undo[mark:])
            del undo[mark:]
            raise

    def _prepare(self, value: Any, where: str, undo: list[Any]) -> Any:
        stack: list[tuple[Any, Any, Any]] = []
        memo: dict[int, tuple[Any, Any]] = {}
        out = self._inner(value, where, undo, stack, memo, True)
        while stack:
            obj, w, source = stack.pop()
            self._attach_contents(obj, w, source, undo, stack, memo)
        return out

    def _inner(
        self,
        v: Any,
        where: Any,
        undo: list[Any],
        stack: list[tuple[Any, Any, Any]],
        memo: dict[int, tuple[Any, Any]],
        mutable_ok: bool,
    ) -> Any:
        """Prepare one value met while attaching; *where* is a lazy path (see :func:`_render`)."""
        t = type(v)
        if t in _NATIVE:
            if t is str and not v.isascii():
                _codec.check_text(v, _render(where))
            return v
        shape = self.codec._shapes.get(t) or self.codec.classify(t)
        if shape is _codec.ENTITY or shape is _codec.TRACKED:
            owner = v._mi_img
            if owner is None:
                _set_slots(v, self.owner, None)
                undo.append((_UNDO_ATTACH, v))
                stack.append((v, where, None))
            elif owner is not self.owner:
                at = _render(where)
                raise UnsupportedValueError(
                    f"cannot store {type(v).__qualname__} object at {at}: it belongs to another "
                    "image; copy it (copy.deepcopy gives a free-standing copy) or store a value",
                    value_type=t,
                    where=at,
                )
            return v
        if shape is _codec.LEAF:
            if t is dt.datetime or t is dt.time:
                _codec._tz_parts(v.tzinfo)
            return v
        if shape is _codec.ENUM or shape is _codec.CUSTOM or shape is _codec.GENERIC:
            return v
        if shape is _codec.PLAIN:
            if not mutable_ok:
                at = _render(where)
                raise UnsupportedValueError(
                    f"cannot store a {t.__name__} inside an immutable value at {at}: tuples, "
                    "frozensets and frozen attrs values may hold values and entities, not "
                    f"mutable containers; use a tuple or frozenset instead of the {t.__name__}",
                    value_type=t,
                    where=at,
                )
            seen = memo.get(id(v))
            if seen is not None:
                return seen[1]
            cls = _TRACKED_FOR[t]
            tracked = cls.__new__(cls)
            tracked._mi_img = self.owner
            memo[id(v)] = (v, tracked)
            undo.append((_UNDO_ATTACH, tracked))
            stack.append((tracked, where, v))
            return tracked
        if shape is _codec.TUPLE or shape is _codec.FROZENSET:
            for i, item in enumerate(v):
                self._inner(item, (where, "[", i), undo, stack, memo, False)
            return v
        if shape is _codec.VALUE:
            for f in _types.info_of(t).fields:  # type: ignore[union-attr]
                self._inner(getattr(v, f), (where, ".", f), undo, stack, memo, False)
            return v
        raise describe_unsupported(v, _render(where))

    def _attach_contents(
        self,
        obj: Any,
        where: Any,
        source: Any,
        undo: list[Any],
        stack: list[tuple[Any, Any, Any]],
        memo: dict[int, tuple[Any, Any]],
    ) -> None:
        t = type(obj)
        inner = self._inner
        native = _SCALARS  # ASCII str is stored as is; other str goes through inner(), which checks it is valid UTF-8
        if t is TrackedList:
            old = source if source is not None else _list_copy(obj)
            new = [
                x
                if (tx := type(x)) in native or (tx is str and x.isascii())
                else inner(x, (where, "[", i), undo, stack, memo, True)
                for i, x in enumerate(old)
            ]
            if source is not None:
                list.extend(obj, new)
            elif any(a is not b for a, b in zip(old, new)):
                undo.append((_UNDO_ITEMS, obj, old))
                _list_setitem(obj, slice(None), new)
        elif t is TrackedDict:
            old_pairs = list(_dict_items(source if source is not None else obj))
            pairs = [
                (
                    k
                    if (tk := type(k)) in native or (tk is str and k.isascii())
                    else inner(k, (where, "(key)", k), undo, stack, memo, False),
                    val
                    if (tv := type(val)) in native or (tv is str and val.isascii())
                    else inner(val, (where, "[k", k), undo, stack, memo, True),
                )
                for k, val in old_pairs
            ]
            if source is not None:
                dict.update(obj, pairs)
            elif any(a[1] is not b[1] or a[0] is not b[0] for a, b in zip(old_pairs, pairs)):
                undo.append((_UNDO_ITEMS, obj, dict(old_pairs)))
                dict.clear(obj)
                dict.update(obj, pairs)
        elif t is TrackedSet:
            members = source if source is not None else set.copy(obj)
            new_members = [
                m
                if (tm := type(m)) in native or (tm is str and m.isascii())
                else inner(m, (where, " member", None), undo, stack, memo, False)
                for m in members
            ]
            if source is not None:
                set.update(obj, new_members)
        else:
            info = _types.info_of(t)
            assert info is not None
            if not where:
                where = t.__qualname__
            setters = info.setters
            for f, get in info.getters.items():
                try:
                    v = get(obj)
                except AttributeError:
                    continue
                if type(v) in native or (type(v) is str and v.isascii()):
                    continue
                nv = inner(v, (where, ".", f), undo, stack, memo, True)
                if nv is not v:
                    undo.append((_UNDO_FIELD, obj, f, v))
                    setters[f](obj, nv)

    def undo(self, undo: list[Any]) -> None:
        """Revert a journal written by :meth:`prepare`, newest first."""
        for entry in reversed(undo):
            tag = entry[0]
            if entry[1]._mi_oid is not None:
                continue  # committed meanwhile (by another thread's transaction): it is part of the image now
            if tag == _UNDO_ATTACH:
                _set_slots(entry[1], None, None)
            elif tag == _UNDO_FIELD:
                _, obj, f, old = entry
                _types.info_of(type(obj)).setters[f](obj, old)  # type: ignore[union-attr]
            else:
                _, obj, old = entry
                if type(obj) is TrackedList:
                    _list_setitem(obj, slice(None), old)
                else:
                    dict.clear(obj)
                    dict.update(obj, old)

    # -- the committed applier --------------------------------------------------

    def field_set(self, obj: Any, name: str, value: Any) -> None:
        setters = self._setters.get(type(obj))
        if setters is None:
            setters = self._setters[type(obj)] = _types.info_of(type(obj)).setters  # type: ignore[union-attr]
        setters[name](obj, value)

    def field_del(self, obj: Any, name: str) -> None:
        _tracking.raw_slot(type(obj), name).__delete__(obj)

    def list_append(self, lst: Any, items: list[Any]) -> None:
        list.extend(lst, items)

    def list_splice(self, lst: Any, start: int, stop: int, items: list[Any]) -> None:
        if not 0 <= start <= stop <= list.__len__(lst):
            raise IndexError(f"splice {start}:{stop} out of range for a list of {list.__len__(lst)}")
        _list_setitem(lst, slice(start, stop), items)

    def list_clear(self, lst: Any) -> None:
        list.clear(lst)

    def list_reorder(self, lst: Any, order: list[int]) -> None:
        current = _list_copy(lst)
        if sorted(order) != list(range(len(current))):
            raise IndexError("list.reorder order is not a permutation of the list")
        _list_setitem(lst, slice(None), [current[i] for i in order])

    def list_reverse(self, lst: Any) -> None:
        list.reverse(lst)

    def dict_set(self, d: Any, key: Any, value: Any) -> None:
        dict.__setitem__(d, key, value)

    def dict_del(self, d: Any, key: Any) -> None:
        dict.__delitem__(d, key)

    def dict_update(self, d: Any, pairs: list[tuple[Any, Any]]) -> None:
        dict.update(d, pairs)

    def dict_clear(self, d: Any) -> None:
        dict.clear(d)

    def set_add(self, s: Any, items: list[Any]) -> None:
        set.update(s, items)

    def set_discard(self, s: Any, items: list[Any]) -> None:
        set.difference_update(s, items)

    def set_clear(self, s: Any) -> None:
        set.clear(s)

    def set_root(self, obj: Any) -> None:
        oid = obj._mi_oid
        if not oid:
            raise CorruptLogError("the root event names no object", seq=None, table="memimg_events")
        self.root_oid = oid

    def collect(self) -> int:
        """Forget every object that is no longer reachable; returns how many.

        Declarations are forgotten too: a snapshot taken at this seq declares
        only the types it holds, so every event after it must declare again
        the schema of each type it writes (readers starting from that
        snapshot have no other way to know it).
        """
        self.declared.clear()
        self._declared_ok.clear()
        hint = self.collect_hint
        if hint is not None and not hint:
            return 0  # the caller saw every object reachable
        objects = self.objects
        if hint is None:
            hint = bytearray(len(objects))
            for oid in self.reachable_oids():
                hint[oid] = 1
        dropped = 0
        end = min(len(objects), len(hint))  # objects past the hint are newer than it
        oid = hint.find(0, 1, end)  # the unreached ids (and holes), found at C speed
        while oid >= 0:
            obj = objects[oid]
            if obj is not None:
                objects[oid] = None
                self._holes += 1
                if type(obj) is not Gone:
                    _set_slots(obj, None, None)
                dropped += 1
            oid = hint.find(0, oid + 1, end)
        return dropped

    # -- walking the graph ----------------------------------------------------

    def references(self, obj: Any) -> Iterable[Any]:
        """The entities and tracked collections *obj* refers to directly."""
        t = type(obj)
        if t is TrackedList:
            values: Iterable[Any] = _list_copy(obj)
        elif t is TrackedDict:
            values = [x for pair in _dict_items(obj) for x in pair]
        elif t is TrackedSet:
            values = set.copy(obj)
        else:
            info = _types.info_of(t)
            assert info is not None
            values = []
            for get in info.getters.values():
                try:
                    values.append(get(obj))
                except AttributeError:
                    pass
        out: list[Any] = []
        work = list(values)
        classify = self.codec.classify
        while work:
            v = work.pop()
            vt = type(v)
            if vt in _NATIVE:
                continue
            shape = classify(vt)
            if shape is _codec.ENTITY or shape is _codec.TRACKED:
                out.append(v)
            elif shape is _codec.TUPLE or shape is _codec.FROZENSET:
                work.extend(v)
            elif shape is _codec.VALUE:  # a stand-in value read from an older declaration lacks newer fields
                work.extend(getattr(v, f, None) for f in _types.info_of(vt).fields)  # type: ignore[union-attr]
        return out

    def reachable_oids(self) -> set[int]:
        """Ids of every object reachable from the root."""
        root = self.root
        if root is None:
            return set()
        seen = {self.root_oid}
        work = [root]
        while work:
            for ref in self.references(work.pop()):
                oid = ref._mi_oid
                if oid is not None and oid not in seen:
                    seen.add(oid)
                    work.append(ref)
        return seen

    # -- encoding -------------------------------------------------------------

    def _ref_commit(self, obj: Any) -> int:
        oid: int | None = obj._mi_oid
        if oid is None:
            owner = obj._mi_img
            if owner is not self.owner:
                if owner is not None:
                    raise MemimgError(f"internal: {type(obj).__qualname__} object belongs to another image")
                # forgotten by a snapshot's collection while a transaction still held it: it is
                # attached again, written in full like any new object
                _set_slots(obj, self.owner, None)
            oid = len(self.objects)
            self.objects.append(obj)
            if type(obj) in _TRACKED_TYPES:
                obj._mi_oid = oid
            else:
                _SET_OID(obj, oid)
            self._queue.append(obj)
        return oid

    def _note_value(self, info: _types.TypeInfo) -> None:
        self._declare(info)

    def _decode_value(self, x: list[Any]) -> Any:
        """A frozen attrs value object, read under the schema its writer declared."""
        plan = self._plan_by_name.get(x[1]) or self._plan(x[1], value=True)
        info = plan.info
        if info is None:  # a removed value type: a placeholder, cleaned up by strip_gone
            self.has_gone = True
            return Gone(0, x[1], x)
        if info.kind != _types.VALUE:
            raise _codec.kind_mismatch("v", x[1], info)
        dec = self.codec.decode
        state = {k: dec(v) for k, v in x[2].items()}
        if not plan.identity:
            state = _schema.upgrade_state(plan, state, self.report, partial=False)
        obj: Any = object.__new__(info.cls)
        for f in info.fields:
            if f in state:
                value = state[f]
            elif f in info.defaults:
                value = _codec._default_for(info, f, obj)
            else:
                continue  # reported as a difference when the schema was planned
            object.__setattr__(obj, f, value)
        if _caches_hash(info.cls):
            object.__setattr__(obj, "_attrs_cached_hash", None)
        return obj

    def _declare(self, info: _types.TypeInfo) -> bool:
        """Declare *info*'s schema to the log, or to the snapshot being collected.

        Returns whether the declaration in effect for its name is *info*'s: false only
        while collecting, if another class of the same name was declared first.
        """
        declaration = [info.version, list(info.fields)]
        if info.kind == _types.VALUE:
            declaration.append("value")
        collecting = self._collecting
        if collecting is not None:
            return bool(collecting.setdefault(info.name, declaration) == declaration)
        current = (info.version, info.fields)
        if self.declared.get(info.name) != current:
            if info.name not in self._declared_before:
                self._declared_before[info.name] = self.declared.get(info.name)
            self.declared[info.name] = current
            self._new_types[info.name] = declaration
        else:
            self._declared_ok.add(info.cls)
        return True

    def encode_args(self, k: Kind, args: tuple[Any, ...]) -> list[Any]:
        encoder = self._arg_encoders.get(k.params)
        if encoder is None:
            encoder = self._arg_encoders[k.params] = self._make_arg_encoder(k.params)
        return encoder(args)

    def _make_arg_encoder(self, params: str) -> Callable[[tuple[Any, ...]], list[Any]]:
        enc = self.codec.encode

        def value(x: Any) -> Any:
            t = type(x)
            if t is str or t is bool or x is None or (t is int and -_INT64 <= x < _INT64):
                return x
            return enc(x)

        if params == "sv":
            return lambda args: [args[0], value(args[1])]
        if params == "V":
            return lambda args: [[value(i) for i in args[0]]]
        if params == "vv":
            return lambda args: [value(args[0]), value(args[1])]
        per = [
            value
            if c == "v"
            else (lambda xs: [value(i) for i in xs])
            if c == "V"
            else (lambda xs: [[value(a), value(b)] for a, b in xs])
            if c == "P"
            else None
            for c in params
        ]

        def encode(args: tuple[Any, ...]) -> list[Any]:
            return [x if f is None else f(x) for f, x in zip(per, args)]

        return encode

    def encode_events(self, pending: list[Pending], first_seq: int, ts: int) -> list[Any]:
        """Rows for *pending*, giving ids to new objects (undone by :meth:`rollback_encode`)."""
        self._assigned_from = len(self.objects)
        self._declared_before = {}
        self.codec.ref = self._ref_commit
        rows = []
        seq = first_seq
        dumps, crc32, pack, codes = orjson.dumps, _crc32, _pack_header, _KIND_CODES
        declared_ok = self._declared_ok
        queue = self._queue
        for k, target, args in pending:
            if target is None:
                toid = 0
            else:
                toid = target._mi_oid
                if toid is None:
                    toid = self._ref_commit(target)
                if k.conflict is FIELD and type(target) not in declared_ok:
                    self._declare(_types.info_of(type(target)))  # type: ignore[arg-type]
            encoded_args = self.encode_args(k, args)
            if queue or self._new_types:
                self._drain()
                parts = (
                    [encoded_args, self._records, self._new_types] if self._new_types else [encoded_args, self._records]
                )
                data = dumps(parts)
                parts = []
                self._records = []
                self._new_types = {}
            else:
                data = dumps([encoded_args])
            name = k.name
            rows.append(
                (seq, first_seq, ts, name, toid, data, crc32(data, crc32(pack(seq, first_seq, ts, toid), codes[name])))
            )
            seq += 1
        self._records = []
        self._new_types = {}
        return rows

    def _drain(self) -> None:
        queue = self._queue
        if queue:
            self._records.extend(self._encode_records(queue, self._ref_commit, _get_oid, ref_mode=REF_COMMIT))
            queue.clear()

    def rollback_encode(self) -> None:
        """Undo the ids and declarations of the last :meth:`encode_events`."""
        for obj in self.objects[self._assigned_from :]:
            _set_slots(obj, self.owner, None)
        del self.objects[self._assigned_from :]
        if self._declared_before:
            self._declared_ok.clear()
        for name, before in self._declared_before.items():
            if before is None:
                self.declared.pop(name, None)
            else:
                self.declared[name] = before
        self._declared_before = {}
        self._queue.clear()

    # -- decoding -------------------------------------------------------------

    def decode_row(self, kind_name: str, target: int, payload: bytes, seq: int) -> Pending | None:
        """The event a stored row holds, creating the objects it introduces.

        Returns ``None`` for an event on an object of a removed type.
        """
        try:
            p = orjson.loads(payload)
            if len(p) > 2:
                self.declare(p[2])
            if len(p) > 1 and p[1]:
                self.load_records(p[1])
            k = KINDS.get(kind_name)
            if k is None:
                raise MemimgError(
                    f"event seq {seq} has kind {kind_name!r}, unknown to this version of memimg: "
                    "the log was written by a newer memimg; upgrade memimg to open it"
                )
            obj = None
            if target:
                obj = self.objects[target] if target < len(self.objects) else None
                if obj is None:
                    raise CorruptLogError(
                        f"event seq {seq} ({kind_name}) targets object {target}, which does not exist "
                        "at that point of the log",
                        seq=seq,
                        table="memimg_events",
                    )
                if type(obj) is Gone:
                    self.report.events_skipped += 1
                    return None
            args = self.decode_args(k, p[0])
            if k.conflict == FIELD:
                return self._adapt_field_event(k, obj, args)
        except CorruptLogError as err:
            if err.seq is not None:
                raise
            raise _at_seq(err, seq, f"{kind_name} on object {target}") from err
        except MemimgError as err:
            _schema.locate(err, seq, f"event seq {seq} ({kind_name})")
            raise
        except Exception as err:
            raise CorruptLogError(
                f"event seq {seq} ({kind_name}) cannot be read: {err}", seq=seq, table="memimg_events"
            ) from err
        return k, obj, args

    def decode_args(self, k: Kind, raw: list[Any]) -> tuple[Any, ...]:
        decoder = self._arg_decoders.get(k.params)
        if decoder is None:
            decoder = self._arg_decoders[k.params] = self._make_arg_decoder(k.params)
        return decoder(raw)

    def _make_arg_decoder(self, params: str) -> Callable[[list[Any]], tuple[Any, ...]]:
        dec = self.codec.decode

        def values(xs: list[Any]) -> list[Any]:
            return [dec(i) for i in xs]

        def pairs(xs: list[Any]) -> list[tuple[Any, Any]]:
            return [(dec(a), dec(b)) for a, b in xs]

        per: list[Callable[[Any], Any] | None] = [
            dec if c == "v" else values if c == "V" else pairs if c == "P" else None for c in params
        ]
        if not params:
            return lambda raw: ()
        if params == "sv":
            return lambda raw: (raw[0], dec(raw[1]))
        if params == "V":
            return lambda raw: (values(raw[0]),)
        if params == "vv":
            return lambda raw: (dec(raw[0]), dec(raw[1]))

        def decode(raw: list[Any]) -> tuple[Any, ...]:
            return tuple([x if f is None else f(x) for f, x in zip(per, raw)])

        return decode

    def replay_row(self, seq: int, tx: int, ts: int, kind: str, target: int, payload: bytes, checksum: int) -> None:
        """Verify, decode and apply one stored event."""
        self.replay_rows([(seq, tx, ts, kind, target, payload, checksum)], seq)

    def replay_rows(
        self,
        rows: Iterable[Any],
        expected: int,
        progress: Callable[[int], None] | None = None,
        where: str = "the log",
    ) -> tuple[int, int]:
        """Verify, decode and apply stored events in order: the recovery hot path.

        Same result as ``verify_event`` + :meth:`apply_row` per row, with the
        common case (no new objects, a live target) decoded inline. Returns
        the next expected seq and the seq of the last ``gc`` event (0 if none).

        Raises:
            CorruptLogError: a seq is missing, or a row is corrupt or does not apply.
        """
        objects = self.objects
        decoders = self._arg_decoders
        fast_fields = self._fast_fields
        codes = _KIND_CODES
        crc32, pack, loads = _crc32, _pack_header, _loads
        dec = self.codec.decode
        last_gc = 0
        for seq, tx, ts, kind, target, payload, checksum in rows:
            if seq != expected:
                raise CorruptLogError(
                    f"event seq {expected} is missing from {where} (the next is {seq})",
                    seq=expected,
                    table="memimg_events",
                )
            expected += 1
            try:
                code = codes.get(kind)
                if code is None:
                    code = _kind_code(kind)
                ok = crc32(payload, crc32(pack(seq, tx, ts, target), code)) == checksum
            except (TypeError, ValueError, OverflowError, struct.error):
                ok = False
            if not ok:
                verify_event(EventRow(seq, tx, ts, kind, target, payload, checksum))
            if progress is not None and not seq % 10_000:
                progress(seq)
            try:
                p = loads(payload)
                k = KINDS[kind]
                obj = objects[target] if target else None
                if k is _OBJ_SET and len(p) == 1:
                    # the commonest event, applied inline: a field of a current-schema entity
                    setter = fast_fields.get(type(obj), _NO_SETTERS).get(p[0][0])
                    if setter is not None:
                        v = p[0][1]
                        setter(obj, dec(v) if type(v) is list else v)
                        continue
                simple = len(p) == 1 and (obj is not None or not target) and type(obj) is not Gone
                if simple:
                    decoder = decoders.get(k.params)
                    args = decoder(p[0]) if decoder is not None else self.decode_args(k, p[0])
            except Exception:
                simple = False
            if not simple:
                self.apply_row(EventRow(seq, tx, ts, kind, target, payload, checksum))
                if kind == "gc":
                    last_gc = seq
                continue
            if k.conflict is FIELD:
                fast = fast_fields.get(type(obj))
                if fast is None or args[0] not in fast:
                    try:
                        pending = self._adapt_field_event(k, obj, args)
                    except MemimgError as err:
                        _schema.locate(err, seq, f"event seq {seq} ({kind})")
                        raise
                    if pending is None:
                        continue
                    k, obj, args = pending
            self._apply_stored(k, obj, args, seq, target)
            if kind == "gc":
                last_gc = seq
        return expected, last_gc

    def apply_row(self, row: EventRow) -> None:
        """Decode and apply one stored event to this graph (replay)."""
        try:
            pending = self.decode_row(row.kind, row.target, row.payload, row.seq)
        except CorruptLogError as err:
            if err.seq is not None:
                raise
            raise _at_seq(err, row.seq, f"{row.kind} on object {row.target}") from err
        if pending is None:
            return
        k, obj, args = pending
        self._apply_stored(k, obj, args, row.seq, row.target)

    def _apply_stored(self, k: Kind, obj: Any, args: tuple[Any, ...], seq: int, target: int) -> None:
        """Apply a stored event; a failure means the log is not what was written."""
        try:
            k.apply(self, obj, *args)
        except CorruptLogError as err:
            if err.seq is not None:
                raise
            raise _at_seq(err, seq, f"{k.name} on object {target}") from err
        except MemimgError:
            raise
        except Exception as err:
            raise CorruptLogError(
                f"event seq {seq} ({k.name} on object {target}) does not apply to the state before it: {err}",
                seq=seq,
                table="memimg_events",
            ) from err

    # -- schemas: reading states written by older classes -------------------------

    def declare(self, types: dict[str, Any]) -> None:
        """Record schemas declared by the log, and plan how to read states written under them."""
        for name, decl in types.items():
            version, fields = decl[0], tuple(decl[1])
            declared = (version, fields)
            self.declared[name] = declared
            self._declared_ok.clear()
            key = (name, *declared)
            plan = self._plans.get(key)
            if plan is None:
                plan = _schema.plan_for(
                    name,
                    version,
                    fields,
                    self.report,
                    self.removed_types,
                    generic=self.generic,
                    value=len(decl) > 2 and decl[2] == "value",
                )
                self._plans[key] = plan
            self._plan_by_name[name] = plan
            if plan.info is not None:
                self._plan_by_cls[plan.info.cls] = plan
                self._fast_fields.pop(plan.info.cls, None)

    def plans_read(self) -> list[_schema.Plan]:
        """The plan of every declaration read so far, from the log or a snapshot (tools compare them)."""
        return list(self._plans.values())

    def _plan(self, name: str, *, value: bool = False) -> _schema.Plan:
        plan = self._plan_by_name.get(name)
        if plan is None:  # no declaration: read as the code declares it
            if name in self.removed_types:
                plan = _schema.Plan(name, None, 1, (), identity=False)
            else:
                try:
                    info = _types.resolve(name)
                except UnknownTypeError:
                    plan = _schema.plan_for(
                        name, 1, (), self.report, self.removed_types, generic=self.generic, value=value
                    )
                else:
                    plan = _schema.Plan(name, info, info.version, info.fields, identity=name == info.name)
                    plan.field_map = {f: f for f in info.fields}
            self._plan_by_name[name] = plan
        return plan

    def load_records(self, records: list[Any]) -> None:
        """Create the objects of ``[oid, type, state]`` records, then fill them in."""
        made = self._create([(oid, name) for oid, name, _ in records])
        self._fill_states(made, [state for _, _, state in records])

    def _load_chunks(self, names: list[str], chunks: list[tuple[list[int], list[int], bytes]]) -> None:
        """Load a format-2 snapshot's chunks.

        Every object is created from the directories first (references may
        point forward), then the states are parsed and filled chunk by chunk.
        """
        made = [self._create(list(zip(oids, [names[k] for k in kinds]))) for oids, kinds, _ in chunks]
        for i, (oids, _, states) in enumerate(chunks):
            state_list = _load_states(states, len(oids), i, None)
            chunks[i] = (oids, [], b"")  # the bytes are not needed any more
            self._fill_states(made[i], state_list)
            made[i] = []

    def _create(self, entries: list[tuple[int, str]]) -> list[tuple[Any, _schema.Plan | None]]:
        """Make the (empty) objects of ``(oid, type name)`` entries and place them in the object table."""
        objects = self.objects
        made: list[tuple[Any, _schema.Plan | None]] = []
        owner = self.owner
        for oid, name in entries:
            cls = _COLLECTION_TYPES.get(name)
            obj: Any
            plan = None
            if cls is not None:
                obj = cls.__new__(cls)
                obj._mi_img = owner
                obj._mi_oid = oid
            else:
                plan = self._plan(name)
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
                    _SET_OWNER(obj, owner)
                    _SET_OID(obj, oid)
            n = len(objects)
            if oid == n:
                objects.append(obj)
            elif oid > n:
                objects.extend([None] * (oid - n))
                self._holes += oid - n
                objects.append(obj)
            elif objects[oid] is None:
                objects[oid] = obj
                self._holes -= 1
            else:
                raise CorruptLogError(f"object id {oid} is created twice", seq=None, table="")
            made.append((obj, plan))
        return made

    def _fill_states(self, made: list[tuple[Any, _schema.Plan | None]], states: list[Any]) -> None:
        """Fill objects made by :meth:`_create` from their states (parsed, or JSON bytes)."""
        dec = self._decode_fast
        in_order: dict[int, Any] = {}  # id(plan) -> the field setters in stored order, or None
        for (obj, plan), state in zip(made, states):
            fill: dict[str, Any] | None = None  # a dict state, filled outside the try (upgraders are user code)
            try:
                if type(state) is bytes:
                    state = _loads(state)
                t = type(obj)
                if t is TrackedList:
                    list.extend(obj, [dec(x) if type(x) is list else x for x in state])
                elif t is TrackedDict:
                    if type(state) is dict:
                        dict.update(obj, {k: dec(v) if type(v) is list else v for k, v in state.items()})
                    else:
                        dict.update(obj, [(dec(k), dec(v)) for k, v in state])
                elif t is TrackedSet:
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
                    setters = in_order.get(key, _UNSEEN)
                    if setters is _UNSEEN:
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
                name = plan.stored_name if plan is not None else COLLECTION_NAMES.get(type(obj), type(obj).__name__)
                raise CorruptLogError(
                    f"stored object {obj._mi_oid} ({name}) has a state that does not fit it: {err!r}",
                    seq=None,
                    table="",
                ) from err
            if fill is not None and plan is not None:
                self._fill(obj, plan, fill)

    def _decode_fast(self, x: Any) -> Any:
        """``codec.decode`` with references resolved inline (the common case in records)."""
        if type(x) is list and x and x[0] == "r":
            try:
                obj = self.objects[x[1]]
            except IndexError:
                obj = None
            if obj is not None:
                return obj
        return self.codec.decode(x)

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
                defaults[f] = default = _codec._default_for(info, f, obj)
                setters[f](obj, default)
        self._note_fills(obj, defaults)

    def _set_fields(self, obj: Any, info: _types.TypeInfo, values: dict[str, Any]) -> None:
        """Set fields of *obj* to values that replay made (defaults filled in, upgraders' results)."""
        for f, v in values.items():
            info.setters[f](obj, v)
        self._note_fills(obj, values)

    def _note_fills(self, obj: Any, values: dict[str, Any]) -> None:
        """Remember the values among *values* that hold objects the log never created (see :attr:`fills`)."""
        if self.owner is None:
            return  # a free-standing graph: nothing will log them, and nothing needs to
        for f, v in values.items():
            if type(v) not in _NATIVE and self._holds_new_objects(v):
                self.fills.append((obj, f, v))

    def _holds_new_objects(self, v: Any) -> bool:
        """Whether storing *v* would attach something: a plain container, an entity or
        collection without an id, or a value that cannot be stored (attaching names it)."""
        t = type(v)
        if t in _NATIVE:
            return False
        shape = self.codec._shapes.get(t) or self.codec.classify(t)
        if shape is _codec.ENTITY or shape is _codec.TRACKED:
            return v._mi_oid is None
        if shape is _codec.PLAIN or shape is _codec.UNSUPPORTED:
            return True
        if shape is _codec.TUPLE or shape is _codec.FROZENSET:
            return any(self._holds_new_objects(i) for i in v)
        if shape is _codec.VALUE:
            return any(self._holds_new_objects(getattr(v, f, None)) for f in _types.info_of(t).fields)  # type: ignore[union-attr]
        return False

    def pending_fills(self) -> list[tuple[Any, str, Any]]:
        """The fills (see :attr:`fills`) still to be logged.

        The object is live, its field still holds the filled value, and that value
        still holds objects without ids.
        """
        out = []
        for obj, f, v in self.fills:
            if obj._mi_oid is None or type(obj) is Gone:
                continue
            try:
                current = _types.info_of(type(obj)).getters[f](obj)  # type: ignore[union-attr]
            except AttributeError:
                continue
            if current is v and self._holds_new_objects(v):  # an entity is attached in place: it has an id now
                out.append((obj, f, v))
        self.fills = out
        return out

    def _adapt_field_event(self, k: Kind, obj: Any, args: tuple[Any, ...]) -> Pending | None:
        fast = self._fast_fields.get(type(obj))
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
            self._fast_fields[info.cls] = info.setters
        if (plan is None or plan.identity) and name in info.setters:
            return k, obj, args
        if plan is None:
            plan = _schema.Plan(info.name, info, info.version, info.fields)
        if k is _OBJ_SET:
            values = _schema.upgrade_state(plan, {name: args[1]}, self.report, partial=True)
            self._note_fills(obj, values)  # in place once the event is applied
            pairs = list(values.items())
            return _OBJ_UPDATE, obj, (pairs,)
        renamed_from = {old: new for new, old in info.renamed.items()}
        target = plan.field_map.get(name, name if name in info.setters else renamed_from.get(name, _schema.DROP))
        if target is _schema.DROP or target not in info.setters:
            self.report.dropped_fields[(info.name, name)] += 1
            return None
        return k, obj, (target,)

    def strip_gone(self) -> list[Pending]:
        """Events that clean every placeholder of a removed object or value out of the graph.

        Replay keeps placeholders where the log has objects and values of
        removed types, so the graph is exactly what the log says; these events
        then remove them, and being logged, every later reader -- and the next
        snapshot -- agrees: collection elements that are (or hold) one are
        dropped, a field that is one becomes ``None``, and a value holding one
        is written again without it (``None`` in a tuple or value object,
        dropped from a frozenset).
        """
        events: list[Pending] = []
        dirty = self._holds_gone
        clean = self._without_gone
        report = self.report
        for obj in self.objects:
            t = type(obj)
            if t is TrackedList:
                items = _list_copy(obj)
                for i in range(len(items) - 1, -1, -1):  # from the end: earlier indexes stay valid
                    x = items[i]
                    if type(x) is Gone:
                        events.append((_LIST_DEL, obj, (i,)))
                        report.elements_dropped += 1
                    elif dirty(x):
                        events.append((_LIST_SET, obj, (i, clean(x))))
            elif t is TrackedDict:
                for key, value in list(_dict_items(obj)):
                    if dirty(key) or type(value) is Gone:
                        events.append((_DICT_DEL, obj, (key,)))
                        report.elements_dropped += 1
                    elif dirty(value):
                        events.append((_DICT_SET, obj, (key, clean(value))))
            elif t is TrackedSet:
                members = [m for m in set.copy(obj) if dirty(m)]
                if members:
                    events.append((_SET_DISCARD, obj, (members,)))
                    report.elements_dropped += len(members)
            elif t is not Gone and obj is not None:
                info = _types.info_of(t)
                if info is None:
                    continue
                for f, get in info.getters.items():
                    try:
                        v = get(obj)
                    except AttributeError:
                        continue
                    if dirty(v):
                        events.append((_OBJ_SET, obj, (f, clean(v))))
        self.has_gone = False
        return events

    def _holds_gone(self, v: Any) -> bool:
        t = type(v)
        if t is Gone:
            return True
        if t is tuple or t is frozenset:
            return any(self._holds_gone(i) for i in v)
        if t in _NATIVE or (self.codec._shapes.get(t) or self.codec.classify(t)) is not _codec.VALUE:
            return False
        return any(self._holds_gone(getattr(v, f, None)) for f in _types.info_of(t).fields)  # type: ignore[union-attr]

    def _without_gone(self, v: Any) -> Any:
        """*v* with placeholders cleaned out (see :meth:`strip_gone`)."""
        t = type(v)
        if t is Gone:
            self.report.references_cleared += 1
            return None
        if not self._holds_gone(v):
            return v
        if t is tuple:
            return tuple([self._without_gone(i) for i in v])
        if t is frozenset:
            kept = [i for i in v if type(i) is not Gone]
            self.report.elements_dropped += len(v) - len(kept)
            return frozenset([self._without_gone(i) for i in kept])
        cls: type = t
        info = _types.info_of(cls)
        assert info is not None
        obj: Any = object.__new__(cls)
        for f in info.fields:
            try:
                object.__setattr__(obj, f, self._without_gone(getattr(v, f)))
            except AttributeError:
                continue
        if _caches_hash(cls):
            object.__setattr__(obj, "_attrs_cached_hash", None)
        return obj

    # -- snapshots ------------------------------------------------------------

    def snapshot_data(self, seq: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """The snapshot-format description of everything reachable from the root.

        Objects without an id -- in a free-standing graph, what replay filled
        in where the log stores no value (see :attr:`fills`), which no image
        logs there -- are numbered after the table's ids, in the order the
        walk meets them, so two graphs read the same way describe them alike.
        """
        extra: dict[int, int] = {}
        after = len(self.objects)

        def oid_of(obj: Any) -> int:
            oid: int | None = getattr(obj, "_mi_oid", None)
            if oid is None:
                oid = extra.setdefault(id(obj), after + len(extra))
            return oid

        return self._describe([self.root] if self.root is not None else [], oid_of, seq, progress)

    def snapshot_payload(self, seq: int, progress: Callable[[int], None] | None = None) -> tuple[bytes, int, bytearray]:
        """The stored form of a snapshot at *seq*, how many objects it holds, and which.

        The objects it holds -- the reachable ones -- are given as a byte per
        object id, non-zero if held (what :attr:`collect_hint` takes).

        Format 2 (see :func:`split_snapshot`): a JSON header line, then per
        chunk of up to 2,048 objects a directory line ``[[oid, ...], [type
        index, ...]]`` and a states line ``[state, ...]``. An entity's state is
        the list of its field values in the order the header declares its
        fields (a dict only if a field is unset). Each chunk is encoded as it
        is completed, so a snapshot of a million objects never exists as one
        tree of Python objects, and a reader can create every object from the
        small directory lines before it parses any state.

        Only objects reachable from the root are written: the walk is
        breadth-first from the root, encoding each object as it is met.
        """
        root = self.root
        objects = self.objects
        queue: list[Any] = [root] if root is not None else []
        seen = bytearray(len(objects))  # by object id: a byte per object, not a set entry
        if root is not None:
            seen[self.root_oid] = 1
        push = queue.append
        mark = seen.__setitem__  # inline in the loops below: `mark(oid, 1) or push(obj) or oid` (no Python call)

        def ref(obj: Any) -> int:
            oid: int = obj._mi_oid
            if not seen[oid]:
                seen[oid] = 1
                push(obj)
            return oid

        codec = self.codec
        value, linked = self._value_encoder(ref)
        direct = not _tracking.enabled()  # no read hook on any class: plain attribute loads are raw reads
        dumps = orjson.dumps
        names: dict[Any, int] = {TrackedList: 0, TrackedDict: 1, TrackedSet: 2}
        type_names = ["list", "dict", "set"]
        encoders: dict[type, Callable[[Any], Any]] = {}
        out: list[bytes] = []
        types: dict[str, Any] = {}
        previous_ref = codec.ref
        codec.ref = ref  # references inside tuples and value objects
        self._collecting = types
        try:
            done = 0
            while done < len(queue):  # the queue grows while it is walked
                start = done
                states: list[Any] = []
                add = states.append
                while done < len(queue) and done - start < _CHUNK:  # fill the chunk, with what it meets too
                    chunk = queue[done : start + _CHUNK]
                    done += len(chunk)
                    for obj in chunk:
                        t = type(obj)
                        enc = encoders.get(t)
                        if enc is not None:
                            add(enc(obj))
                        elif t is TrackedList:
                            add(
                                [
                                    x
                                    if (tx := type(x)) is str or (tx is int and -_INT64 <= x < _INT64)
                                    else ["r", o if seen[o := x._mi_oid] else mark(o, 1) or push(x) or o]
                                    if tx in linked
                                    else value(x)
                                    for x in _list_iter(obj)
                                ]
                            )
                        elif t is TrackedDict:
                            if all(type(k) is str for k in _dict_keys(obj)):
                                add({k: value(v) for k, v in _dict_items(obj)})
                            else:
                                add([[value(k), value(v)] for k, v in _dict_items(obj)])
                        elif t is TrackedSet:
                            add([value(m) for m in set.copy(obj)])
                        else:
                            info = _types.info_of(t)
                            if info is None or info.kind != _types.ENTITY:
                                raise describe_unsupported(obj, "")
                            names[t] = len(type_names)
                            type_names.append(info.name)
                            slow = self._slow_state(info, value)
                            if not self._declare(info):
                                # another class of the same name (a redefined class, a second stand-in)
                                # declared it first: this one's states go by field name
                                enc = encoders[t] = slow
                            else:
                                make = state_encoder(info, direct, REF_MARK, keyed=False)
                                enc = encoders[t] = make(value, linked, slow, seen, mark, push)
                            add(enc(obj))
                members = queue[start:done]
                oids = list(map(_get_oid, members))
                kinds = list(map(names.__getitem__, map(type, members)))
                out.append(dumps([oids, kinds]))
                out.append(dumps(states))
                if progress is not None:
                    progress(done)
        finally:
            codec.ref = previous_ref
            self._collecting = None
        header = {
            "format": 2,
            "seq": seq,
            "next_oid": len(objects),
            "root": self.root_oid if root is not None else 0,
            "types": types,
            "names": type_names,
            "count": len(queue),
        }
        out.insert(0, dumps(header))
        return b"\n".join(out), len(queue), seen

    def _value_encoder(self, ref: Callable[[Any], int]) -> tuple[Callable[[Any], Any], set[type]]:
        """How a walk stores a value: natives as themselves, objects as ``["r", ref(obj)]``, the rest by the codec.

        Also returns ``linked``, the set of object types met so far, which
        the walks test inline before calling the function.
        """
        codec = self.codec
        shapes = codec._shapes
        classify = codec.classify
        encode = codec.encode
        linked_shapes = (_codec.ENTITY, _codec.TRACKED, _codec.PLAIN)
        linked: set[type] = set(_TRACKED_TYPES)

        def value(v: Any) -> Any:
            t = type(v)
            if t in linked:
                return ["r", ref(v)]
            if t is str or t is bool or v is None or (t is int and -_INT64 <= v < _INT64):
                return v
            if (shapes.get(t) or classify(t)) in linked_shapes:
                linked.add(t)
                return ["r", ref(v)]
            return encode(v)

        return value, linked

    @staticmethod
    def _slow_state(info: _types.TypeInfo, value: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
        """An entity's state as a dict of its set fields: records of attach events and ``serialize``,
        and snapshot states of objects with an unset field."""
        getters = tuple(info.getters.items())

        def state(obj: Any) -> dict[str, Any]:
            fields = {}
            for f, get in getters:
                try:
                    v = get(obj)
                except AttributeError:
                    continue
                vt = type(v)
                fields[f] = (
                    v if vt is str or vt is bool or v is None or (vt is int and -_INT64 <= v < _INT64) else value(v)
                )
            return fields

        return state

    def _describe(
        self, roots: list[Any], oid_of: Any, seq: int, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Records of everything reachable from *roots*, in one breadth-first walk."""
        queue = list(roots)
        seen = {id(o) for o in roots}

        def ref(obj: Any) -> int:
            if id(obj) not in seen:
                seen.add(id(obj))
                queue.append(obj)
            return oid_of(obj)  # type: ignore[no-any-return]

        types: dict[str, Any] = {}
        self._collecting = types
        try:
            root_oid = oid_of(roots[0]) if roots else 0
            records = self._encode_records(queue, ref, oid_of, progress)
        finally:
            self._collecting = None
        return {
            "format": 1,
            "seq": seq,
            "next_oid": len(self.objects),
            "root": root_oid,
            "types": types,
            "objects": records,
        }

    def _encode_records(
        self,
        queue: list[Any],
        ref: Callable[[Any], int],
        oid_of: Callable[[Any], int],
        progress: Callable[[int], None] | None = None,
        ref_mode: str = REF_CALL,
    ) -> list[Any]:
        """``[oid, type, state]`` for each object of *queue*, which grows as *ref* meets new ones.

        The hot loop of attaching large graphs and of :func:`memimg.serialize`:
        values are encoded inline (natives as themselves, objects as
        ``["r", ref(obj)]``) and only other values go through the codec.
        Entity states are dicts of their set fields (the snapshot format
        that ``serialize`` returns and attach events store), made by the
        compiled per-class encoders in their keyed form; *ref_mode* says how
        they write references (``REF_COMMIT`` when *ref* gives ids to new
        objects of this graph, ``REF_CALL`` for any other *ref*).
        """
        codec = self.codec
        value, linked = self._value_encoder(ref)
        direct = not _tracking.enabled()  # no read hook on any class: plain attribute loads are raw reads
        previous_ref = codec.ref
        codec.ref = ref  # references inside tuples and value objects
        records: list[Any] = []
        append = records.append
        entities: dict[type, tuple[str, Callable[[Any], dict[str, Any]]]] = {}
        try:
            i = 0
            while i < len(queue):
                obj = queue[i]
                i += 1
                if progress is not None and not i % 20_000:
                    progress(i)
                t = type(obj)
                entity = entities.get(t)
                if entity is not None:
                    name, state_of = entity
                    append([oid_of(obj), name, state_of(obj)])
                elif t is TrackedList or t is list:
                    append(
                        [
                            oid_of(obj),
                            "list",
                            [
                                x if (tx := type(x)) is str or (tx is int and -_INT64 <= x < _INT64) else value(x)
                                for x in _list_iter(obj)
                            ],
                        ]
                    )
                elif t is TrackedDict or t is dict:
                    items = _dict_items(obj)
                    if all(type(k) is str for k in _dict_keys(obj)):
                        state: Any = {k: value(v) for k, v in items}
                    else:
                        state = [[value(k), value(v)] for k, v in items]
                    append([oid_of(obj), "dict", state])
                elif t is TrackedSet or t is set:
                    append([oid_of(obj), "set", [value(m) for m in set.copy(obj)]])
                else:
                    info = _types.info_of(t)
                    if info is None:
                        raise describe_unsupported(obj, "")
                    self._declare(info)
                    make = state_encoder(info, direct, ref_mode, keyed=True)
                    entities[t] = (info.name, make(value, linked, self._slow_state(info, value), ref=ref))
                    i -= 1  # again, through the entity branch
        finally:
            codec.ref = previous_ref
        return records

    def describe_detached(self, root: Any) -> dict[str, Any]:
        """Snapshot-format description of a graph that belongs to no image."""
        numbering: dict[int, int] = {}
        keep: list[Any] = []

        def oid_of(obj: Any) -> int:
            key = id(obj)
            oid = numbering.get(key)
            if oid is None:
                oid = len(numbering) + 1
                numbering[key] = oid
                keep.append(obj)
            return oid

        data = self._describe([root], oid_of, 0)
        data["next_oid"] = len(numbering) + 1
        return data

    def load_snapshot(self, data: dict[str, Any] | bytes) -> None:
        """Rebuild the graph (an empty one) from snapshot-format *data*, or a stored snapshot payload.

        *data* is what :func:`memimg.serialize` returns (format 1), or a
        stored payload's header with its records under ``"objects"`` as
        :func:`split_snapshot` gives them (format 1 or 2).
        """
        if isinstance(data, bytes):
            header, records = split_snapshot(data)
            data = {**header, "objects": records}
        fmt = data.get("format")
        if fmt not in (1, 2):
            raise MemimgError(f"unknown snapshot format {fmt!r}: written by a newer memimg?")
        self.declare(data.get("types", {}))
        records = data["objects"]
        try:
            if fmt == 2:
                self._load_chunks(data["names"], records)
            else:
                self.load_records(records)
        except MemimgError as err:
            seq = data.get("seq")
            _schema.locate(err, seq, f"the snapshot at seq {seq}" if seq else "the snapshot data")
            raise
        records = []
        n = data.get("next_oid", len(self.objects))
        if len(self.objects) < n:
            self._holes += n - len(self.objects)
            self.objects.extend([None] * (n - len(self.objects)))
        root = data.get("root")
        if type(root) is not int or not (
            (0 < root < len(self.objects) and self.objects[root] is not None) or (root == 0 and not self.live_count())
        ):
            raise CorruptLogError(
                f"snapshot data names object {root!r} as its root, but holds no such object",
                seq=data.get("seq"),
                table="memimg_snapshots",
            )
        self.root_oid = root
