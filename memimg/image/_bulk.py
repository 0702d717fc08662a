"""Bulk attach: a new graph attached, numbered and written as records in one walk.

An assignment outside a transaction attaches its value and commits it at
once, under the image's lock: nothing can come between the two. So for it
the two walks of the general path -- the attach walk (:mod:`._attach`:
validate, convert plain lists, mark new objects as attached) and the
commit's walk (:mod:`memimg.core._records`: give ids in log order, write
each new object's ``[oid, type, state]`` record) -- are one: a breadth-first
walk that gives each new object its id when it first meets it, converts a
plain list or dict to a tracked one in place, and writes each object's record from
the field values it has just read, with code compiled per class. The records
are handed to the commit's :class:`~._encode.EncodeSession` (``adopt``),
which writes them inside the event as its own walk would have: the same
records, with the same ids in the same order.

The walk knows only the common shapes: entities whose fields are all set
and hold scalars, strings, entities, and plain lists and dicts (keyed by
strings) of those -- ``str`` itself, not a subclass (an ``enum.StrEnum``
member is stored as itself), and valid UTF-8. Met anything else (a set, a
tuple, a value class, a str subclass, a str with a lone surrogate, a dict
with another key, a free-standing tracked collection, a container in a
container, an object of another image), it *bails out*: it takes back
everything it did (ids, declarations, conversions, owners) and the general
path attaches the value, with its checks and its error messages. It
remembers the entity class whose object (or list or dict in its field) made
it bail (``gave_up``): a later graph that meets that class is left to the
general path when the walk meets it, and at once if it is the value
assigned, rather than walked to the same end again. An object already
saved in this image is referred to without its class being declared. If
the commit then fails, the session's rollback and the attacher's undo take
back the ids and the attach, as on the general path; a commit encoded again (another writer got there first)
drops the records and numbers the objects again at the new head.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any, Final

from memimg.core import _types
from memimg.core._codec import ENTITY
from memimg.core._encoders import field_reads, field_slots
from memimg.image._attach import Attacher, journal_attach, journal_fields
from memimg.image._encode import EncodeSession
from memimg.model._accel import speedups

__all__ = ["BAILED", "BulkAttacher"]

#: What :meth:`BulkAttacher.attach` returns when the value needs the general path.
BAILED: Final = object()
_X: Final = 2**63
_KEY: Final = "bulk record writer"  # keys the compiled writers among a TypeInfo's encoders
_counter = itertools.count()
_list_new = list.__new__
_list_extend = list.extend
_dict_new = dict.__new__
_join = "".join
_dict_update = dict.update
_STR: Final = {str}
#: the walk's loop over its common case, compiled (``bulk_records``; see :meth:`BulkAttacher._walk`), or None
_bulk_records: Callable[..., int] | None = None if speedups is None else speedups.bulk_records


def _text_ok(s: str) -> bool:
    """Whether the str *s* is stored as it is: ASCII, or else valid UTF-8 (no lone surrogate, which the
    general path refuses with :func:`~memimg.core._values.check_text`)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Bail(Exception):
    """The walk met a value it leaves to the general path."""


class BulkAttacher:
    """Attaches and numbers the new graphs of one engine's assignments outside transactions (see the module
    docstring)."""

    def __init__(self, attacher: Attacher, session: EncodeSession) -> None:
        self.attacher = attacher
        self.session = session
        self.table = attacher.table
        self.shell = attacher.shell
        #: entity class -> whether the walk knows it (a registered entity class the codec accepts)
        self._known: dict[type, bool] = {}
        #: the entity classes whose objects (or their lists and dicts) made the walk give up: a graph meeting
        #: one is left to the general path at once, not walked again to the same end
        self.gave_up: set[type] = set()

    def attach(self, value: Any, undo: list[Any]) -> Any:
        """Attach *value* (not a native value), number its new objects and hand their records to the
        session (see the module docstring); the attach is journaled in *undo*. :data:`BAILED` if the
        value needs the general path: nothing is changed then."""
        t = type(value)
        if t is not list and (not self._knows(t) or value._mi_img is not None or t in self.gave_up):
            return BAILED
        session, objects = self.session, self.table.objects
        start = len(objects)
        session.begin()
        journal: list[Any] = []
        try:
            out = self._walk(value, journal)
        except BaseException as err:
            journal.append(journal_attach(objects[start:]))
            session.rollback()  # ids and declarations
            self.attacher.undo(journal)  # owners and conversions
            if isinstance(err, _Bail):
                if err.args and err.args[0] is not None:
                    self.gave_up.add(err.args[0])
                return BAILED
            raise
        journal.append(journal_attach(objects[start:]))
        undo += journal
        return out

    def _knows(self, t: type) -> bool:
        known = self._known.get(t)
        if known is None:
            info = _types.info_of(t)
            try:
                known = info is not None and info.kind == _types.ENTITY and self.attacher.codec.classify(t) is ENTITY
            except Exception:  # a class the codec refuses: the general path says why
                known = False
            self._known[t] = known
        return known

    def _walk(self, value: Any, journal: list[Any]) -> Any:
        """Attach and number *value*'s new graph breadth-first, its records to the session."""
        session, shell = self.session, self.shell
        objects = self.table.objects
        owner = self.attacher.owner
        tlist, tdict = shell.list, shell.dict
        tracked_types = shell.tracked
        set_owner, set_oid = shell.set_owner, shell.set_oid
        encode, declare = session.encode, session.declare
        linked: set[type] = set(tracked_types)
        queue: list[Any] = []
        memo: dict[int, Any] = {}  # id of a plain container -> its tracked one (a list met twice is one list)
        replaced: list[Any] = []  # [obj, setter, old value, ...]: the fields given a tracked list
        writers: dict[type, Callable[[Any], list[Any]]] = {}
        plans: dict[type, tuple[str, tuple[str, ...], tuple[Any, ...], tuple[Any, ...]]] = {}  # the compiled loop's
        push, grow, note = queue.append, objects.append, replaced.extend
        direct = not shell.reads_hooked()  # fields read as plain attribute loads (see field_reads)
        gave_up = self.gave_up

        def contain(source: Any, obj: Any, setter: Any) -> Any:
            """A plain list or dict *source* as a tracked one (one per source), attached, numbered, queued and
            put back into the field of *obj* that *setter* sets (journaled); the reference to it."""
            new: Any = memo.get(id(source))
            if new is None:
                if type(source) is list:
                    new = _list_new(tlist)
                    _list_extend(new, source)
                else:
                    new = _dict_new(tdict)
                    _dict_update(new, source)
                memo[id(source)] = new
                new._mi_img = owner
                new._mi_oid = len(objects)
                grow(new)
                push(new)
            if setter is not None:
                note((obj, setter, source))
                setter(obj, new)
            return ["r", new._mi_oid]

        def conv(v: Any) -> Any:
            """The stored form of a value the inline tests left that is not a plain list or dict: a new entity
            attached and numbered, a number encoded; else bail."""
            t = type(v)
            if t is list or t is dict:
                raise _Bail  # a container in a container: the general path converts it
            if t is float or t is int:
                return encode(v)
            if t is str:  # not ASCII (else written inline): as it is, unless the general path refuses it
                if _text_ok(v):
                    return v
                raise _Bail
            if t not in writers:
                if t in tracked_types or not self._knows(t):
                    raise _Bail
                if v._mi_img is owner and v._mi_oid is not None:  # saved before: its class is not declared
                    linked.add(t)
                    return ["r", v._mi_oid]
                if t in gave_up:
                    raise _Bail(None)
                info: Any = _types.info_of(t)
                declare(info)
                key = (_KEY, direct, t.__getattribute__, getattr(t, "__getattr__", None))
                make = info.encoders.get(key)
                if make is None:
                    make = info.encoders[key] = _record_writer(info, direct)
                writers[t] = make(owner, linked, writers, contain, conv, _Bail, set_owner, set_oid, objects, grow, push)
                linked.add(t)
                plan = _plan(info)
                if plan is not None:
                    plans[t] = plan
            if v._mi_img is not None:
                if v._mi_img is owner and v._mi_oid is not None:
                    return ["r", v._mi_oid]
                raise _Bail  # of another image, or attached and not yet committed: the general path says what
            set_owner(v, owner)
            oid = len(objects)
            set_oid(v, oid)
            grow(v)
            push(v)
            return ["r", oid]

        journal.append(journal_fields(replaced))  # filled as the walk goes
        out: Any
        if type(value) is list or type(value) is dict:
            contain(value, None, None)
            out = memo[id(value)]
        else:
            out = value
            conv(value)
        records: list[Any] = []
        append = records.append
        list_state, dict_state = _containers(owner, linked, conv, _Bail)
        obj = value
        compiled = _bulk_records
        at = 0
        try:
            while at < len(queue):  # grows as the walk meets new objects
                if compiled is not None:  # the common case (what the code below does, the same records)
                    at = compiled(queue, at, plans, records, owner, linked, writers, objects, tlist, memo, replaced)
                    if at == len(queue):
                        break
                obj = queue[at]
                at += 1
                t = type(obj)
                if t is tlist:
                    # a list of strs (the commonest list of scalars) is its state
                    if obj and _STR.issuperset(map(type, obj)) and ((s := _join(obj)).isascii() or _text_ok(s)):
                        append([obj._mi_oid, "list", obj])
                    else:
                        append([obj._mi_oid, "list", list_state(obj)])
                elif t is tdict:
                    append([obj._mi_oid, "dict", dict_state(obj)])
                else:
                    append(writers[t](obj))
        except _Bail as err:
            if err.args:  # met a class given up before: nothing more to remember
                raise
            raise _Bail(_holder(obj, tracked_types, memo, replaced)) from None
        session.adopt(records)
        return out


def _plan(info: _types.TypeInfo) -> tuple[str, tuple[str, ...], tuple[Any, ...], tuple[Any, ...]] | None:
    """What the compiled loop needs to write *info*'s records: its name, its fields' names, their slots (member
    descriptors: what the record writer's raw reads read) and raw setters; None if a field is not a plain slot."""
    members = field_slots(info)
    setters = tuple(info.setters[f] for f in info.fields)
    if members is None or not all(
        getattr(set_, "__self__", None) is d and set_.__name__ == "__set__" for d, set_ in zip(members, setters)
    ):
        return None
    return info.name, info.fields, members, setters


def _holder(obj: Any, tracked_types: Any, memo: dict[int, Any], replaced: list[Any]) -> type | None:
    """The entity class to remember when the walk gave up at *obj*: its own, or that of the entity whose field
    held the list or dict *obj* (None for the assigned list or dict)."""
    if type(obj) not in tracked_types:
        return type(obj)
    for holder, source in zip(replaced[0::3], replaced[2::3]):
        if memo.get(id(source)) is obj:
            return type(holder)
    return None


def _record_writer(info: _types.TypeInfo, direct: bool) -> Callable[..., Callable[[Any], list[Any]]]:
    """Compile the maker of the record writer of *info*'s entities for the bulk walk.

    ``make(owner, linked, writers, contain, conv, bail, set_owner, set_oid,
    objects, grow, push)`` returns ``write(obj) -> [oid, type name, state]``, the
    state the dict of the field values in declared order as the commit's
    own encoders write it: every field read (see
    :func:`~memimg.core._encoders.field_reads`: plain attribute loads if
    *direct*, else the raw slot getters) and tested inline -- an ASCII str, an int of 64 bits, a bool, ``None``, a
    reference to a numbered object of this image, a free-standing entity of
    a class of *writers* (attached, numbered: ``grow`` the table, ``push``
    on the walk's queue) -- a plain list or dict through ``contain``, given
    the field's raw setter to put the tracked one back, anything else
    through ``conv``. An unset field raises *bail*.
    """
    names = info.fields
    getters, reads = field_reads(info, direct)
    tests = "".join(
        f"""
        t = type(v{i})
        if not ((t is str and v{i}.isascii()) or (t is int and -X <= v{i} < X) or t is bool or v{i} is None):
            if t in linked and v{i}._mi_img is owner and (o := v{i}._mi_oid) is not None:
                v{i} = ['r', o]
            elif t is list or t is dict:
                v{i} = contain(v{i}, obj, s{i})
            elif t in writers and v{i}._mi_img is None:
                set_owner(v{i}, owner)
                o = len(objects)
                set_oid(v{i}, o)
                grow(v{i})
                push(v{i})
                v{i} = ['r', o]
            else:
                v{i} = conv(v{i})"""
        for i in range(len(names))
    )
    state = ", ".join(f"{f!r}: v{i}" for i, f in enumerate(names))
    source = f"""
def make(owner, linked, writers, contain, conv, bail, set_owner, set_oid, objects, grow, push):
    def write(obj):
        try:
            {reads}
        except AttributeError:
            raise bail from None
{tests}
        return [obj._mi_oid, {info.name!r}, {{{state}}}]
    return write
"""
    setters = {f"s{i}": info.setters[f] for i, f in enumerate(names)}
    return _compile(source, f"bulk record writer of {info.name}", **getters, **setters)


def _compile(source: str, what: str, **names: Any) -> Callable[..., Any]:
    """The ``make`` of generated *source*, registered with linecache (tracebacks show it); *names* in its namespace."""
    filename = f"<memimg {what} #{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"X": _X, **names}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["make"]  # type: ignore[no-any-return]


#: The stored form of ``x``, an item of a container of the walk, inline if it can be (as the record writers test).
_ITEM: Final = (
    "x if ((tx := type(x)) is str and x.isascii()) or (tx is int and -X <= x < X) or tx is bool or x is None "
    "else ['r', o] if tx in linked and x._mi_img is owner and (o := x._mi_oid) is not None "
    "else conv(x)"
)
_CONTAINERS: Final = f"""
def make(owner, linked, conv, bail):
    def list_state(obj):
        return [{_ITEM} for x in list_iter(obj)]

    def dict_state(obj):
        # keys that are all strs (not a subclass), none refused: stored as a dict, as the commit's own encoders
        # store them; else the general path (it writes the pairs, or refuses the key)
        if obj and (not str_only.issuperset(map(type, obj)) or not ((s := join(obj)).isascii() or text_ok(s))):
            raise bail
        return {{k: {_ITEM} for k, x in dict_items(obj)}}

    return list_state, dict_state
"""


#: ``make(owner, linked, conv, bail) -> (list_state, dict_state)``: the states of the walk's tracked lists and
#: dicts, items as :data:`_ITEM` writes them; a dict with a key that is not a str (or is refused) raises *bail*.
_containers: Final = _compile(
    _CONTAINERS,
    "bulk container states",
    join=_join,
    str_only=_STR,
    text_ok=_text_ok,
    list_iter=list.__iter__,
    dict_items=dict.items,
)
