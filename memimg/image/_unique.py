"""Unique constraints (``memimg.field(unique=True)``).

A unique field's value may be held by at most one *reachable* instance of
the class that declares it unique (subclasses included); ``None`` is not a
value (any number of instances may hold it). The rule is checked twice:

* **at the assignment**, inside a transaction (the field's on-setattr hook
  asks the transaction, :meth:`TxState.check_unique`): against the
  committed holders of the value (from its index) and the transaction's own
  changed and attached objects, as the transaction sees them. This catches
  the clashes visible then, early.
* **at commit**, always (:func:`check_commit`, called by the engine's commit
  loop after encoding, under the lock, before the append): every instance
  of a class with unique fields that the commit changes or attaches is
  compared with the committed state the commit goes on top of. When the
  append is refused because another writer got there first (another thread
  or process), the engine catches up and checks again before retrying, so
  of two concurrent commits adding the same value only one is appended: the
  other raises :class:`~memimg.UniqueError`. Outside a transaction every
  write is its own commit, so this is also "at the assignment" there.

An object made unreachable stays in its extent (and index) until the next
snapshot's collection. So when a clash is found, the graph is walked from
the root, as the commit would leave it, and holders no longer reachable are
treated as free: a value freed by dropping its holder can be reused at once.
The walk happens only when a clash is found.

The value is then *shadowed*: its index files two holders, one of them
unreachable (see :mod:`memimg.core._indexes`). Linking that holder back
into the graph while the other stays reachable would make both reachable,
and is refused (linking it back *in place of* the other -- the commit
unlinks the other -- leaves one reachable holder: the value passes back,
as when a holder is replaced by a new one). So while any value is shadowed,
a commit that links an existing object (one with an id before the commit)
-- by an event's argument or a new object's field -- walks the graph as it
will leave it and checks every shadowed value; a value whose index files
one holder again (a snapshot collected the other) is no longer shadowed.
The indexes record a shadowed value whatever filed its second holder: this
process's commit, another process's caught up, or replay at open. Which
holders of a shadowed value are unreachable is remembered (with the seq it
was found at) until a commit may have linked objects back, so ``img.get``
of it walks the graph once, not on every call.

So that such commits do not each walk the whole graph, the objects known
reachable are kept while values are shadowed
(:attr:`Extents.known <memimg.core._extents.Extents.known>`): filled by a
walk, kept closed under references and current by every commit (each
walks the objects it makes new references to -- its events' arguments and
its new objects -- in the state it leaves, as far as the known ones, and
adds what it visits), and dropped when the image catches up with other
writers, objects leave the table (their ids may be reused) or a commit
fails. Two invariants make this sound: every reachable object is known
(the root is, and the set is closed), and of the holders of a shadowed
value at most one is known (a walk fills the set exactly; a commit that
files a second holder walks, and one that visits an unknown holder walks
too). A commit leaving two holders reachable has one, not known, that was
unreachable before it: a path to it starts at a new reference, and past
that no known object (else the holder would be known) -- so the small walk
visits it. Only a commit whose walk visits an unknown holder of a shadowed
value walks the whole graph and checks every shadowed value.

Inside a transaction, the checks and queries read the transaction's own
changes from a :class:`TxIndex`: its objects of indexed classes by field
value, and the entities it attached by class, brought up to date from its
event list and undo journal when asked (each event and journal entry is
read once), so N unique assignments, ``get`` or ``find`` calls in one
transaction cost O(N), not O(N^2).
"""

from __future__ import annotations

from typing import Any, Final

from memimg._errors import UniqueError
from memimg.core import _types
from memimg.core._indexes import UNIQUE, indexed_fields
from memimg.core._kinds import KINDS
from memimg.core._markers import ABSENT, DELETED
from memimg.image._attach import attached_by
from memimg.image._tx import TxState
from memimg.image._views import ListView

__all__ = [
    "TxIndex",
    "check_assignment",
    "check_commit",
    "committed_holders",
    "dead_holders",
    "reachable_ids",
    "touches",
    "tx_index",
    "visible",
]

_OBJ_UPDATE: Final = KINDS["obj.update"]
_OBJ_SET: Final = KINDS["obj.set"]
_OBJ_ADD: Final = KINDS["obj.add"]
_OBJ_DEL: Final = KINDS["obj.del"]


def committed_holders(engine: Any, cls: type, name: str, value: Any, upto: int | None = None) -> list[Any]:
    """The committed instances of *cls* (subclasses included) filed under *value* for field *name*, and those
    holding unhashable values; from the indexes, or by scanning a class that does not index the field.
    Called with the engine's lock held; objects from id *upto* on are not looked at (a commit's own)."""
    ext = engine.table.extent_index()
    ext.sync(upto)
    out: list[Any] = []
    for t, d in ext.by_class.items():
        if not issubclass(t, cls) or not d:
            continue
        ix = ext.indexes.get(t)
        index = ix.get(name) if ix is not None else None
        if index is not None:
            out += index.lookup(value)
        else:
            getter = _types.info_of(t).getters[name]  # type: ignore[union-attr]
            for obj in list(d.values()):
                try:
                    v = getter(obj)
                except AttributeError:
                    continue
                if v is value or v == value:
                    out.append(obj)
    return out


class TxIndex:
    """A transaction's own changes as queries and unique checks need them (see the module docstring).

    ``by_field`` files every object the transaction set an indexed field of,
    or attached, under each value it gave the field (an object may be filed
    under values it no longer holds: callers compare the value it has now);
    ``attached`` holds the entities it attached, by class; ``relinks`` tells
    whether it linked an existing object (one with an id) anywhere. An object
    whose indexed counter the transaction added to is in ``adds``, returned
    for every value: the value it reads changes as other threads' adds
    commit (see :mod:`memimg.core._counters`).
    """

    __slots__ = (
        "adds",
        "attached",
        "by_field",
        "events",
        "n_events",
        "n_undo",
        "odd",
        "relinks",
        "undo",
        "undo_last",
    )

    def __init__(self) -> None:
        #: ``(class, field) -> value -> {id(obj): obj}``
        self.by_field: dict[tuple[type, str], dict[Any, dict[int, Any]]] = {}
        #: ``(class, field) -> {id(obj): obj}`` given an unhashable value
        self.odd: dict[tuple[type, str], dict[int, Any]] = {}
        #: ``(class, field) -> {id(obj): obj}`` whose counter *field* the transaction added to
        self.adds: dict[tuple[type, str], dict[int, Any]] = {}
        #: ``class -> {id(obj): obj}``: the entities the transaction attached
        self.attached: dict[type, dict[int, Any]] = {}
        self.relinks = False
        # how far the event list and undo journal were read (a rollback replaces the lists: read again)
        self.events: list[Any] | None = None
        self.n_events = 0
        self.undo: list[Any] | None = None
        self.n_undo = 0
        self.undo_last: Any = None

    def update(self, state: TxState) -> None:
        """Read what *state* did since the last update."""
        events, undo = state.events, state.undo
        n, u = self.n_events, self.n_undo
        if (
            events is not self.events
            or undo is not self.undo
            or n > len(events)
            or u > len(undo)
            or (u and undo[u - 1] is not self.undo_last)
        ):
            self.__init__()  # type: ignore[misc]
            self.events, self.undo = events, undo
            n = u = 0
        if u < len(undo):
            self._read_undo(state, undo, u)
            self.n_undo = len(undo)
            self.undo_last = undo[-1]
        if n < len(events):
            self._read_events(state, events, n)
            self.n_events = len(events)

    def _read_undo(self, state: TxState, undo: list[Any], start: int) -> None:
        table = state.host.table  # type: ignore[attr-defined]
        for obj in attached_by(undo[start:]):
            t = type(obj)
            if not self.relinks:
                self.relinks = any(r._mi_oid is not None for r in table.value_references(_contents(table, None, obj)))
            info = _types.entity_info(t)
            if info is None:
                continue
            d = self.attached.get(t)
            if d is None:
                d = self.attached[t] = {}
            d[id(obj)] = obj
            for name in indexed_fields(t):
                try:
                    v = info.getters[name](obj)
                except AttributeError:
                    continue
                self._file(t, name, obj, v)

    def _read_events(self, state: TxState, events: list[Any], start: int) -> None:
        table = state.host.table  # type: ignore[attr-defined]
        for i in range(start, len(events), 3):
            k, target, args = events[i], events[i + 1], events[i + 2]
            if not self.relinks:
                self.relinks = any(r._mi_oid is not None for r in table.value_references(args, flatten=True))
            if k is _OBJ_SET or k is _OBJ_UPDATE:
                spec = indexed_fields(type(target))
                if spec:
                    for name, v in args[0] if k is _OBJ_UPDATE else (args,):
                        if name in spec:
                            self._file(type(target), name, target, v)
            elif k is _OBJ_ADD:  # a counter's add: the value it reads moves with others' adds
                name = args[0]
                if name in indexed_fields(type(target)):
                    d = self.adds.get((type(target), name))
                    if d is None:
                        d = self.adds[type(target), name] = {}
                    d[id(target)] = target

    def _file(self, t: type, name: str, obj: Any, value: Any) -> None:
        key = (t, name)
        try:
            by_value = self.by_field.get(key)
            if by_value is None:
                by_value = self.by_field[key] = {}
            d = by_value.get(value)
            if d is None:
                d = by_value[value] = {}
        except Exception:  # unhashable (or a __hash__ that fails): compared by the caller
            d = self.odd.get(key)
            if d is None:
                d = self.odd[key] = {}
        d[id(obj)] = obj

    def holders(self, cls: type, name: str, value: Any) -> list[Any]:
        """The instances of *cls* the transaction gave field *name* the value *value* (or an unhashable one)
        at some point, or attached holding it, or added to (a counter); the caller compares the value they
        hold now."""
        out: list[Any] = []
        for (t, n), by_value in self.by_field.items():
            if n == name and issubclass(t, cls):
                try:
                    d = by_value.get(value)
                except Exception:  # an unhashable value: only an unhashable value may equal it
                    d = None
                if d:
                    out += d.values()
        for table in (self.odd, self.adds):
            for (t, n), d in table.items():
                if n == name and issubclass(t, cls):
                    out += d.values()
        return out

    def attached_of(self, cls: type) -> list[Any]:
        """The instances of *cls* the transaction attached that have no id yet (one another thread's commit
        took in meanwhile has its id, and is in the table)."""
        return [o for t, d in self.attached.items() if issubclass(t, cls) for o in d.values() if o._mi_oid is None]


def tx_index(state: TxState) -> TxIndex:
    """The :class:`TxIndex` of transaction *state*, up to date."""
    ix = state.index
    if ix is None:
        ix = state.index = TxIndex()
    ix.update(state)
    return ix  # type: ignore[no-any-return]


def visible(state: TxState | None, obj: Any, name: str) -> Any:
    """Field *name* of *obj* as *state* sees it (committed if None), without recording a read; ABSENT if unset."""
    if state is not None:
        d = state.sync().get(id(obj))
        if d is not None:
            v = d.get(name, ABSENT)
            if v is not ABSENT:
                return ABSENT if v is DELETED else v
    try:
        return _types.info_of(type(obj)).getters[name](obj)  # type: ignore[union-attr]
    except AttributeError:
        return ABSENT


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def _contents(table: Any, state: TxState | None, obj: Any) -> list[Any]:
    """The values *obj* holds (fields, items, keys) as *state* sees it (committed if None), unread."""
    shell = table.shell
    t = type(obj)
    if t in shell.tracked:
        view = state.views.get(id(obj)) if state is not None else None
        if type(view) is ListView:  # read without materializing it (the transaction's later reads see the base)
            return list(view.items) if view.items is not None else view._base() + view.tail
        if view is not None:
            contents = view.materialize()
            return [x for pair in contents.items() for x in pair] if type(contents) is dict else list(contents)
        if t is shell.dict:
            return [x for pair in dict.items(obj) for x in pair]
        if t is shell.list:
            return list.copy(obj)
        return list(set.copy(obj))
    info = _types.info_of(t)
    if info is None:
        return []
    return [v for f in info.fields if (v := visible(state, obj, f)) is not ABSENT]


def reachable_ids(engine: Any, state: TxState | None) -> set[int]:
    """``id()`` of every object reachable from the root as *state* sees the graph (the committed one if None)."""
    table = engine.table
    root = table.root
    if root is None:
        return set()
    seen = {id(root)}
    work = [root]
    while work:
        for ref in table.value_references(_contents(table, state, work.pop())):
            if id(ref) not in seen:
                seen.add(id(ref))
                work.append(ref)
    return seen


def dead_holders(engine: Any, root: type, name: str, value: Any) -> frozenset[int]:
    """The ids of the committed holders of unique *value* that are unreachable (a walk, remembered while the
    value is shadowed and no commit may have linked objects back). Called with the engine's lock held."""
    ext = engine.table.extent_index()
    key: tuple[type, str, Any] | None = (root, name, value)
    try:
        known = ext.shadowed.get(key)
    except Exception:  # unhashable
        key = known = None
    if known is not None and known[0] >= ext.links_seq:
        dead: frozenset[int] = known[1]
        return dead
    live = reachable_ids(engine, None)
    dead = frozenset(h._mi_oid for h in committed_holders(engine, root, name, value) if id(h) not in live)
    if key is not None and key in ext.shadowed:
        ext.shadowed[key] = (engine.seq, dead)
        ext.known, ext.known_seq = live, engine.seq  # what the next commits walk as far as
    return dead


def _clash(engine: Any, cls: type, name: str, value: Any, holders: list[Any]) -> UniqueError:
    holder = holders[0]
    oid = holder._mi_oid
    which = f"object {oid}" if oid is not None else "an object this change attaches"
    return UniqueError(
        f"{cls.__qualname__}.{name} is unique, and {value!r} is held by another {type(holder).__qualname__} "
        f"({which}); nothing was changed. Give it another value, or change or remove the other one first "
        f"(img.get({cls.__qualname__}, {name}=...) finds it)",
        cls=cls,
        field=name,
        value=value,
        holder=holder,
        target=oid,
        key=name,
        seq=None,
    )


def check_assignment(engine: Any, state: TxState, obj: Any, name: str, value: Any) -> None:
    """Raise :class:`UniqueError` if setting unique field *name* of *obj* to *value* in transaction *state*
    clashes with another reachable instance the transaction sees."""
    root = indexed_fields(type(obj)).get(name)
    if root is None or value is None:
        return
    with engine.lock:
        pool = committed_holders(engine, root, name, value)
    pool += tx_index(state).holders(root, name, value)
    seen: set[int] = set()
    others = []
    for h in pool:
        if h is obj or id(h) in seen:
            continue
        seen.add(id(h))
        if _same(visible(state, h, name), value):
            others.append(h)
    if others:
        with engine.lock:
            live = reachable_ids(engine, state)
        others = [h for h in others if id(h) in live]
        if others:
            raise _clash(engine, root, name, value, others)


def check_commit(engine: Any, events: list[Any], state: TxState | None, upto: int, seq: int) -> None:
    """Raise :class:`UniqueError` if the commit of *events* would leave two reachable instances holding one
    unique value: one it changes or attaches clashing with another, or a shadowed value's unreachable holder
    linked back. Called (while some class declares a unique field) under the lock, on the committed state
    the commit goes on; objects from id *upto* on are this commit's own, and *seq* is the seq it ends at."""
    table = engine.table
    ext = table.extents
    if ext is None:  # built once: from now on it knows the shadowed values
        ext = table.extent_index()
        ext.sync(upto)
    # the objects known reachable (see Extents.known): taken, and given back below for the state after this
    # commit only if the commit is checked to the end (a commit refused or failing leaves none)
    known = ext.known if ext.known_seq == engine.seq else None
    ext.known = None
    touched: dict[int, Any] | None = None
    for k, target, args in events:
        # kinds compared by identity: `in` a set would hash the (attrs-frozen) kind, field by field, per event
        if type(target) in UNIQUE and (k is _OBJ_SET or k is _OBJ_UPDATE or k is _OBJ_DEL):
            spec = indexed_fields(type(target))
            names = [name for name, _ in args[0]] if k is _OBJ_UPDATE else [args[0]]
            if any(spec.get(name) is not None for name in names):
                if touched is None:
                    touched = {}
                touched[id(target)] = target
    objects = table.objects
    new = objects[upto:] if len(objects) > upto else ()
    for obj in new:
        if type(obj) in UNIQUE:
            if touched is None:
                touched = {}
            touched[id(obj)] = obj
    if not ext.shadowed:
        known = None  # not kept up to date while nothing is shadowed
    busy, engine.busy = engine.busy, "checking unique fields"  # values' __eq__ and __hash__ run
    try:
        view: TxState | None = None
        exact = True
        visited: set[int] | None = None
        relink = False
        if ext.shadowed:
            if known is not None:
                # what this commit links, walked as far as the objects known reachable: a removed holder can
                # become reachable only through it (see the module docstring)
                start = [r for r in _linked(table, events, new) if id(r) not in known]
                if start:
                    view, exact = _after(engine, events, state)
                    if not exact:  # the events would not apply: what is known cannot be kept up to date
                        known = None
                        relink = _links_existing(table, events, new, upto)
                    else:
                        visited = _walk(table, view, start, known)
                        relink = not _suspects(engine, upto, known).isdisjoint(visited)
            else:
                relink = _links_existing(table, events, new, upto)
        if touched is None and not relink:
            if known is not None and visited is not None:
                known |= visited
        else:
            if view is None:
                view, exact = _after(engine, events, state)
            live = _Live(engine, view)
            if touched is not None:
                _check_touched(engine, view, live, touched, upto)
            if relink:
                ext.links_seq = engine.seq + 1  # what was found unreachable may be reachable after this commit
                _check_shadowed(engine, view, live, upto)
            if not exact:
                known = None
            elif live.ids is not None:  # walked: exactly what is reachable after it
                known = live.ids
            elif known is not None and visited is not None:
                known |= visited
    finally:
        engine.busy = busy
    if known is not None and ext.shadowed:
        ext.known, ext.known_seq = known, seq


def _linked(table: Any, events: list[Any], new: Any) -> list[Any]:
    """The objects the commit of *events* (attaching *new*) makes new references to: every new edge of the
    graph ends at one of them."""
    out: list[Any] = table.value_references([args for _, _, args in events], flatten=True)
    out += new
    return out


def _walk(table: Any, view: TxState, start: list[Any], known: set[int]) -> set[int]:
    """``id()`` of the objects reachable from *start* in *view* without going through the objects *known*."""
    seen = {id(obj) for obj in start}
    work = list(start)
    while work:
        for ref in table.value_references(_contents(table, view, work.pop())):
            if id(ref) not in seen and id(ref) not in known:
                seen.add(id(ref))
                work.append(ref)
    return seen


def _suspects(engine: Any, upto: int, known: set[int]) -> set[int]:
    """``id()`` of the committed holders of the shadowed values that are not among the objects *known*
    reachable (a value filed for one holder again is no longer shadowed)."""
    ext = engine.table.extents
    out: set[int] = set()
    for key in list(ext.shadowed):
        root, name, value = key
        filed = committed_holders(engine, root, name, value, upto)
        if len(filed) < 2:
            del ext.shadowed[key]
            continue
        out.update(id(h) for h in filed if id(h) not in known)
    return out


def touches(events: list[Any]) -> bool:
    """Whether *events* change an instance of a class with unique fields (a field of it)."""
    return any(type(e[1]) in UNIQUE for e in events)


def _links_existing(table: Any, events: list[Any], new: Any, upto: int) -> bool:
    """Whether the commit of *events* (attaching *new*) links an object that existed before it."""
    for _, _, args in events:
        for ref in table.value_references(args, flatten=True):
            oid = ref._mi_oid
            if oid is not None and oid < upto:
                return True
    for obj in new:
        for ref in table.value_references(_contents(table, None, obj)):
            oid = ref._mi_oid
            if oid is not None and oid < upto:
                return True
    return False


def _after(engine: Any, events: list[Any], state: TxState | None) -> tuple[TxState, bool]:
    """The state the commit will leave: its events over the committed state as it is now (a transaction's
    own delta may have copied a collection before another commit changed it; the events apply to the new
    one); and whether it is that (False: the events would fail to apply, and the view is the transaction's
    own, or the committed state)."""
    view = TxState(engine, engine.seq)
    try:
        for k, target, args in events:
            k.apply(view, target, *args)
    except Exception:  # it would fail to apply: judged on the transaction's own view instead
        return (state if state is not None else TxState(engine, engine.seq)), False
    return view, True


class _Live:
    """The objects reachable in a view, walked the first time it is asked."""

    __slots__ = ("engine", "ids", "view")

    def __init__(self, engine: Any, view: TxState) -> None:
        self.engine, self.view = engine, view
        self.ids: set[int] | None = None

    def __contains__(self, obj: Any) -> bool:
        if self.ids is None:
            self.ids = reachable_ids(self.engine, self.view)
        return id(obj) in self.ids


def _check_touched(engine: Any, view: TxState, live: _Live, touched: dict[int, Any], upto: int) -> None:
    ext = engine.table.extents
    # (root, field) -> value -> the touched objects holding it after the commit
    claims: dict[tuple[type, str], list[tuple[Any, Any]]] = {}
    for obj in touched.values():
        for name, root in indexed_fields(type(obj)).items():
            if root is None:
                continue
            v = visible(view, obj, name)
            if v is not ABSENT and v is not None:
                claims.setdefault((root, name), []).append((v, obj))
    for (root, name), pairs in claims.items():
        by_value: dict[Any, list[Any]] = {}
        for v, obj in pairs:
            try:
                by_value.setdefault(v, []).append(obj)
            except TypeError:  # unhashable: compared with the committed holders only
                by_value.setdefault(id(v), []).append(obj)
        for objs in by_value.values():
            value = visible(view, objs[0], name)
            holders = {id(o): o for o in objs}
            for h in committed_holders(engine, root, name, value, upto):
                if id(h) not in holders and _same(visible(view, h, name), value):
                    holders[id(h)] = h
            if len(holders) < 2:
                continue
            found = [h for h in holders.values() if h in live]
            if len(found) > 1:
                # name the one already there (committed) if there is one
                found.sort(key=lambda h: id(h) in touched)
                raise _clash(engine, root, name, value, found)
            try:  # two holders after the commit, one unreachable: the value is shadowed
                ext.shadowed.setdefault((root, name, value), None)
            except TypeError:  # unhashable: not tracked (see the docs' limits)
                pass


def _check_shadowed(engine: Any, view: TxState, live: _Live, upto: int) -> None:
    ext = engine.table.extents
    for key in list(ext.shadowed):
        root, name, value = key
        filed = committed_holders(engine, root, name, value, upto)
        if len(filed) < 2:  # a collection took the other holder: no longer shadowed
            del ext.shadowed[key]
            continue
        found = [h for h in filed if _same(visible(view, h, name), value) and h in live]
        if len(found) > 1:
            found.sort(key=lambda h: view.fields.get(id(h)) is not None)
            raise _clash(engine, root, name, value, found)
