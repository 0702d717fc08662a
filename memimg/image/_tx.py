"""Transactions: a delta layer over the committed graph.

Inside a transaction every mutation is planned, validated and recorded as a
pending event, then applied -- by the same kind definitions replay uses -- to
the transaction's *delta*: per-entity field overlays and per-collection views
(:mod:`memimg.image._views`). The committed objects are not touched until commit,
so other threads and tasks keep reading committed state; the transaction
reads its own writes through the very same object references because, while
any transaction is open, reads go through hooks that ask the current
transaction first (:mod:`memimg.model._tracking`). Discarding drops the
delta and reverts the attachments journaled while preparing values: it costs
the size of the delta, not of the graph.

Reads are recorded (entity field, dict key, set member, or a whole
collection), so a commit can be checked against every commit that happened
since the transaction began (see :mod:`memimg.image._conflicts`). A read of
something already overwritten by a newer commit fails at once with
:class:`ConflictError`: a transaction never sees a mix of two states.

Nested transactions are savepoints: a mark in the event list; rolling back
to it truncates the list and rebuilds the views from what remains.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, Protocol

from memimg._errors import MemimgError
from memimg.core import _types
from memimg.core._counters import COUNTED, GENERATIONS, Delta, add, counter_fields, delta_for, mark, plain
from memimg.core._kinds import KINDS
from memimg.core._markers import ABSENT, DELETED, SELF, WHOLE
from memimg.core._meta import check_size
from memimg.core._reader import Pending
from memimg.image._attach import NATIVE, Attacher, where_coll, where_field
from memimg.image._guard import reentered
from memimg.image._views import RAW, DictView, ListView, SetView, raw_method
from memimg.model._accel import speedups
from memimg.model._base import Planner
from memimg.model._collections import reusable_args
from memimg.model._planners import REREADING

__all__ = ["Savepoint", "TxHost", "TxState"]

_OBJ_SET = KINDS["obj.set"]
_OBJ_DEL = KINDS["obj.del"]
_OBJ_ADD = KINDS["obj.add"]
#: read methods whose result stays tied to the collection (iterators and dict views)
_LIVE_READS = frozenset({"__iter__", "__reversed__", "keys", "values", "items"})


class TxHost(Protocol):
    """What a transaction needs of its image: the narrow interface between the two."""

    attacher: Attacher
    #: the image's writer outside transactions (a transaction that has ended hands reads and writes to it)
    writer: Any
    savepoint: contextvars.ContextVar[Savepoint | None]
    #: the commits being applied right now (readers see each whole or not at all)
    publishing: list[Any]

    @property
    def seq(self) -> int: ...

    def check_writable(self) -> None: ...

    def check_read(self, start: int, oid: int, part: Any) -> None: ...

    def check_unique(self, state: TxState, obj: Any, name: str, value: Any) -> None: ...


class TxState:
    """One open transaction: its pending events, its delta, what it read."""

    __slots__ = (
        "added",
        "annotated",
        "assigned",
        "attacher",
        "busy",
        "done",
        "events",
        "fast",
        "fields",
        "host",
        "index",
        "mark",
        "meta",
        "nested",
        "noted",
        "plain",
        "reads",
        "start_seq",
        "synced",
        "tags",
        "undo",
        "undo_tags",
        "views",
        "writable",
        "writer",
    )

    #: reads in a transaction go to it: it shows its own writes, and records what was read
    tracks_reads = True
    publishing = False

    def __init__(self, host: TxHost, start_seq: int) -> None:
        self.host = host
        self.writer = host.writer
        self.attacher = host.attacher
        self.start_seq = start_seq
        self.events: list[Any] = []  # flat: kind, target, args, kind, ... (see pending())
        #: the overlay: field values this transaction wrote, by object; the events from ``synced`` on are
        #: plain sets appended by the fast path (see :attr:`fast`), not in it yet: :meth:`sync` adds them
        self.fields: dict[int, dict[str, Any]] = {}
        self.synced = 0
        self.views: dict[int, Any] = {}
        #: the objects whose counters the overlay holds adds of (``Delta``), or None: none
        self.added: list[Any] | None = None
        #: (id of object, counter field) -> generation of this transaction's last plain write of it, or None: none
        self.assigned: dict[tuple[int, str], int] | None = None
        self.reads: set[tuple[int, Any]] = set()
        self.undo: list[Any] = []
        #: the savepoint each event / undo entry belongs to (None: the transaction itself); events are
        #: tagged only once a savepoint was ever opened (``nested``): until then every tag is None
        self.tags: list[Savepoint | None] = []
        self.undo_tags: list[Savepoint | None] = []
        self.nested = False  # whether any savepoint was ever opened (tags are looked up only then)
        self.done = False
        #: checked once: the image is open and writable (the commit checks again); false again while
        #: ``busy``, so that a change made then reaches :meth:`_check`, which refuses it
        self.writable = False
        #: the journal a plain field set goes to straight from the entity's ``__setattr__`` (``Writer.fast``):
        #: ``events`` while a set needs nothing else -- writable, not busy, no savepoint ever opened, no
        #: annotation to note (``plain``) -- else None, and every set comes here, to :meth:`set_field`
        self.fast: list[Any] | None = None
        #: false once a savepoint opened or an annotate block was entered where this transaction is current
        self.plain = True
        #: what this transaction is doing while it runs user code (see :func:`reentered`), or None
        self.busy: str | None = None
        #: its own metadata (``transaction(meta=...)``, savepoints' merged in as they are kept) and that of the
        #: annotations in effect where and when it made a change (see :meth:`_note_annotation`); both checked
        self.meta: dict[str, Any] = {}
        self.annotated: dict[str, Any] = {}
        #: the annotation layers and savepoint last merged into ``annotated`` (not merged again while the same)
        self.noted: tuple[Any, Any] = ((), None)
        #: what queries and unique checks read of its changes, kept as they are asked (see ``_unique.TxIndex``)
        self.index: Any = None
        #: the table's next object id when it began: objects from it on entered after (not in its extents)
        self.mark: int | None = None

    # -- reads ------------------------------------------------------------------

    def sync(self) -> dict[int, dict[str, Any]]:
        """The overlay (``fields``), with the sets the fast path appended since the last look."""
        events = self.events
        n = len(events)
        if self.synced != n and (_sync is None or not _sync(self)):  # compiled, or this loop
            fields = self.fields
            for i in range(self.synced, n, 3):  # plain obj.set events only: see :attr:`fast`
                obj = events[i + 1]
                name, value = events[i + 2]
                d = fields.get(id(obj))
                if d is None:
                    fields[id(obj)] = {name: value}
                else:
                    d[name] = value
            self.synced = n
        return self.fields

    def read_field(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any:
        if self.done:  # ended, though this context still holds it (a task made inside it)
            return self.host.writer.read_field(obj, name, getter)
        if self.synced != len(self.events):
            self.sync()
        d = self.fields.get(id(obj))
        if d is not None:
            v = d.get(name, ABSENT)
            if v is not ABSENT:
                if v is DELETED:
                    raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
                return v
        # Read first, check after (as a seqlock does): a commit moves the seq *before* it
        # changes any object, so a value read from a commit in progress is always caught by
        # the check that follows it; checking first would let the read see it unnoticed.
        # (A failed read -- an unset field -- is checked too: a conflict explains it better.)
        oid = obj._mi_oid
        try:
            v = getter(obj)
        except Exception:
            if oid is not None:
                self.note_read(oid, name)
            raise
        if oid is not None:
            self.note_read(oid, name)
        return v

    def read_coll(self, coll: Any, method: str, args: tuple[Any, ...], key: Any) -> Any:
        if self.done:
            return self.host.writer.read_coll(coll, method, args, key)
        oid = coll._mi_oid
        try:
            result = self._read_coll(coll, method, args)
        except Exception:  # checked after the read, as in read_field
            if oid is not None:
                self.note_read(oid, key)
            raise
        if oid is not None:
            self.note_read(oid, key)
        return result

    def _read_coll(self, coll: Any, method: str, args: tuple[Any, ...]) -> Any:
        if args and type(args[0]) in RAW:
            args = self._plain_args(args)
        view = self.views.get(id(coll))
        if view is None:
            if method in _LIVE_READS:
                # an iterator or view over the committed collection would follow (and break on)
                # another thread's commit: the transaction reads a copy, and a conflict
                # is reported where it belongs, as ConflictError at commit
                raw: Any = RAW[type(coll)]
                # dict.copy would call the tracked keys() of a TrackedDict: copy from the raw items
                copy = dict(dict.items(coll)) if raw is dict else raw.copy(coll)
                return getattr(copy, method)(*args)
            return raw_method(type(coll), method)(coll, *args)
        if method == "__iter__":  # a view iterates lazily: read it now, before the check that follows
            return iter(list(view.call(method, args)))
        return view.call(method, args)

    def _plain_args(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Tracked collections passed to a read (``a == b``, ``a | b``) as this transaction sees them."""
        out = []
        for arg in args:
            t = type(arg)
            if t in RAW and arg._mi_img is self.attacher.owner:
                oid = arg._mi_oid
                view = self.views.get(id(arg))
                raw: Any = RAW[t]
                arg = (
                    view.materialize()
                    if view is not None
                    else (dict(dict.items(arg)) if raw is dict else raw.copy(arg))
                )
                if oid is not None:  # after the read, as in read_field
                    self.note_read(oid, WHOLE)
            out.append(arg)
        return tuple(out)

    def note_read(self, oid: int, sub: Any) -> None:
        host = self.host
        if host.seq != self.start_seq:  # every read, not just the first: a value may change between two
            host.check_read(self.start_seq, oid, sub)
        self.reads.add((oid, sub))

    def read_counter(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any:
        """Counter field *name* of *obj*: the committed value now plus this transaction's adds, counted
        (see :mod:`memimg.core._counters`). Another transaction's adds are no conflict; an assignment is."""
        if self.done:
            return self.host.writer.read_counter(obj, name, getter)
        d = self.sync().get(id(obj))
        v = ABSENT if d is None else d.get(name, ABSENT)
        if v is ABSENT or type(v) is Delta:
            host = self.host
            if host.publishing:  # a commit is being applied: all of it or none, as the objects' other readers see
                committed = self.read_field_committed(obj, name, lambda o: host.writer.read_field(o, name, getter))
            else:
                committed = self.read_field_committed(obj, name, getter)
            v = committed if v is ABSENT else add(committed, v.amount)
        elif v is DELETED:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
        return mark(v, (obj, name, self, self.counter_generation(obj, name)))

    def counter_generation(self, obj: Any, name: str) -> int:
        """The generation of counter *name* of *obj* here: that of this transaction's last plain write of it."""
        assigned = self.assigned
        return 0 if assigned is None else assigned.get((id(obj), name), 0)

    def counter_written(self, obj: Any, name: str, value: Any) -> None:
        """Counter *name* of *obj* is about to be assigned *value*: a plain write (not an add of a number read
        here since the last one) starts a new generation, so numbers read before it add no more."""
        if delta_for(value, obj, name, self) is None:
            if self.assigned is None:
                self.assigned = {}
            self.assigned[(id(obj), name)] = next(GENERATIONS)

    def read_field_committed(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any:
        """Field *name* of *obj* as committed, the read recorded (past this transaction's overlay)."""
        oid = obj._mi_oid
        try:
            v = getter(obj)
        finally:
            if oid is not None:
                self.note_read(oid, name)
        return v

    def resolve_counters(self) -> None:
        """Replace the adds in the overlay by the sums they make with the committed values (the commit is about
        to be published: readers outside it read the overlay, then the objects)."""
        self.sync()
        for obj in self.added or ():
            d = self.fields.get(id(obj))
            if d is not None:
                for name, v in d.items():
                    if type(v) is Delta:
                        d[name] = add(_types.info_of(type(obj)).getters[name](obj), v.amount)  # type: ignore[union-attr]
        self.added = None

    # -- the delta applier --------------------------------------------------------

    def _fields_of(self, obj: Any) -> dict[str, Any]:
        d = self.fields.get(id(obj))
        if d is None:
            d = self.fields[id(obj)] = {}
        return d

    def _view(self, coll: Any, cls: Any) -> Any:
        v = self.views.get(id(coll))
        if v is None:
            v = self.views[id(coll)] = cls(coll)
        return v

    def field_set(self, obj: Any, name: str, value: Any) -> None:
        self._fields_of(obj)[name] = value

    def field_del(self, obj: Any, name: str) -> None:
        self._fields_of(obj)[name] = DELETED

    def field_add(self, obj: Any, name: str, delta: Any) -> None:
        d = self._fields_of(obj)
        v = d.get(name, ABSENT)
        if v is ABSENT:
            d[name] = Delta(delta)
            if self.added is None:
                self.added = []
            self.added.append(obj)
        elif type(v) is Delta:
            v.amount = add(v.amount, delta)
        elif v is DELETED:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
        else:  # assigned earlier in this transaction: the overlay holds the value itself
            d[name] = add(v, delta)

    def list_append(self, lst: Any, items: list[Any]) -> None:
        self._view(lst, ListView).append(items)

    def list_splice(self, lst: Any, start: int, stop: int, items: list[Any]) -> None:
        self._view(lst, ListView).splice(start, stop, items)

    def list_clear(self, lst: Any) -> None:
        self._view(lst, ListView).clear()

    def list_reorder(self, lst: Any, order: list[int]) -> None:
        self._view(lst, ListView).reorder(order)

    def list_reverse(self, lst: Any) -> None:
        self._view(lst, ListView).reverse()

    def dict_set(self, d: Any, key: Any, value: Any) -> None:
        self._view(d, DictView).set(key, value)

    def dict_del(self, d: Any, key: Any) -> None:
        self._view(d, DictView).delete(key)

    def dict_update(self, d: Any, pairs: list[tuple[Any, Any]]) -> None:
        self._view(d, DictView).update(pairs)

    def dict_clear(self, d: Any) -> None:
        self._view(d, DictView).clear()

    def set_add(self, s: Any, items: list[Any]) -> None:
        self._view(s, SetView).add(items)

    def set_discard(self, s: Any, items: list[Any]) -> None:
        self._view(s, SetView).discard(items)

    def set_clear(self, s: Any) -> None:
        self._view(s, SetView).clear()

    def set_root(self, obj: Any) -> None:  # pragma: no cover - never inside a transaction
        raise MemimgError("the root is created when the image is first opened")

    def snapshot_begins(self) -> None:  # pragma: no cover - never inside a transaction
        raise MemimgError("snapshots are begun outside transactions")

    def forget(self, oids: list[int]) -> None:  # pragma: no cover - never inside a transaction
        raise MemimgError("collection runs with snapshots, outside transactions")

    def collect(self) -> None:  # pragma: no cover - never inside a transaction
        raise MemimgError("collection runs with snapshots, outside transactions")

    # -- mutations --------------------------------------------------------------

    def _check(self) -> None:
        if self.done:
            raise MemimgError("this transaction has already ended; begin a new one")
        if self.busy is not None:
            raise reentered(self.busy)
        self.host.check_writable()
        self.writable = True
        if self.plain and self.writer.ever_annotated and self.writer.annotation.get():
            self.plain = False
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        """Open or close the fast path of plain field sets (see :attr:`fast`) as things now stand."""
        self.fast = self.events if self.plain and self.writable and self.busy is None and not self.done else None

    def no_fast_path(self) -> None:
        """From now on every field set comes to :meth:`set_field` (an annotation to note, a savepoint to tag)."""
        self.plain = False
        self.fast = None

    def _tag(self) -> Savepoint | None:
        return self.host.savepoint.get() if self.nested else None

    def _tag_undo(self, tag: Savepoint | None) -> None:
        missing = len(self.undo) - len(self.undo_tags)
        if missing:
            self.undo_tags.extend([tag] * missing)

    def set_field(self, obj: Any, name: str, value: Any) -> None:
        if not self.writable:
            if self.done:  # ended, though this context still holds it (a task made inside it)
                self.host.writer.set_field(obj, name, value)
                return
            self._check()
        if self.synced != len(self.events):
            self.sync()
        tag = self.host.savepoint.get() if self.nested else None  # self._tag(), inline: the hot path
        if type(value) in NATIVE and (type(value) is not str or value.isascii()):
            v = value
        else:
            if type(value) in COUNTED:
                delta = delta_for(value, obj, name, self)
                if delta is not None:
                    self.add_field(obj, name, delta, tag)
                    return
                value = plain(value)
            self.writable = False
            self.fast = None
            self.busy = "attaching a value in a transaction"
            try:
                v = self.attacher.prepare(value, where_field(obj, name), self.undo)
            finally:
                self.busy = None
                self.writable = True
                self._refresh_fast()
            self._tag_undo(tag)
        self.events += (_OBJ_SET, obj, (name, v))
        if self.nested:
            self.tags.append(tag)
        writer = self.writer  # _note_annotations inline (the hot path): a call only when there is something to note
        if writer.ever_annotated:
            layers = writer.annotation.get()
            if layers and (layers is not self.noted[0] or tag is not self.noted[1]):
                self._note_annotation(layers, tag)
        d = self.fields.get(id(obj))
        if d is None:
            d = self.fields[id(obj)] = {}
        d[name] = v
        self.synced = len(self.events)

    def add_field(self, obj: Any, name: str, delta: Any, tag: Savepoint | None) -> None:
        """Add *delta* to counter field *name* of *obj* (an ``obj.add`` event): the overlay first, so an add that
        cannot apply to what this transaction sees raises before the event is recorded."""
        self.field_add(obj, name, delta)
        self.events += (_OBJ_ADD, obj, (name, delta))
        self.synced = len(self.events)
        if self.nested:
            self.tags.append(tag)
        self._note_annotations(tag)

    def check_unique(self, obj: Any, name: str, value: Any) -> None:
        """Unique field *name* of *obj* is being set to *value* here: refuse a clash this transaction sees."""
        if not self.done:
            self.host.check_unique(self, obj, name, value)

    def del_field(self, obj: Any, name: str) -> None:
        if self.done:
            self.host.writer.del_field(obj, name)
            return
        self._check()
        getter = _types.info_of(type(obj)).getters[name]  # type: ignore[union-attr]
        self.read_field(obj, name, getter)  # AttributeError if it is not set
        tag = self._tag()
        self.events += (_OBJ_DEL, obj, (name,))
        if self.nested:
            self.tags.append(tag)
        self._note_annotations(tag)
        self.field_del(obj, name)
        self.synced = len(self.events)

    def mutate(self, coll: Any, planner: Planner, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.done:
            return self.host.writer.mutate(coll, planner, args, kwargs)
        self._check()
        self.sync()
        undo = self.undo
        mark = len(undo)
        attacher = self.attacher

        def prep(value: Any, where: str) -> Any:
            if type(value) in NATIVE and (type(value) is not str or value.isascii()):
                return value
            return attacher.prepare(value, where_coll(coll) + where, undo)

        # what a planner reads only once (a generator) is read now, so a change it makes is kept as the
        # builtin keeps it; the planner and the views then run user code (keys' __hash__ and __eq__,
        # sort keys) that must not change the image
        if planner in REREADING:
            args = reusable_args(planner, args, kwargs)
        self.writable = False
        self.fast = None
        self.busy = "planning a change in a transaction"
        try:
            try:
                events, result = planner(coll, prep, *args, **kwargs)
            except BaseException:
                attacher.undo(undo[mark:])
                del undo[mark:]
                raise
            tag = self._tag()
            self._tag_undo(tag)
            for name, eargs in events:
                k = KINDS[name]
                k.apply(self, coll, *eargs)  # first: an event that fails to apply is not recorded either
                self.events += (k, coll, eargs)
                self.synced = len(self.events)
                if self.nested:
                    self.tags.append(tag)
            if events:
                self._note_annotations(tag)
        finally:
            self.busy = None
            self.writable = True
            self._refresh_fast()
        return coll if result is SELF else result

    # -- metadata -----------------------------------------------------------------

    def add_meta(self, meta: dict[str, Any], *, annotation: bool = False, sp: Savepoint | None = None) -> None:
        """Merge checked *meta* over this transaction's own metadata (or over its annotations).

        Given savepoint *sp*, over that savepoint's instead: it joins the
        transaction's (or the enclosing savepoint's) when *sp* is kept, and
        is dropped with *sp* when it is rolled back.
        """
        host: TxState | Savepoint = self if sp is None else sp
        if annotation:
            host.annotated = {**host.annotated, **meta}
        else:
            host.meta = {**host.meta, **meta}

    def _note_annotations(self, tag: Savepoint | None) -> None:
        """Note the annotations in effect for a change just made in savepoint *tag*, if they are not those
        noted last (see :meth:`_note_annotation`)."""
        writer = self.writer
        if writer.ever_annotated:
            layers = writer.annotation.get()
            if layers and (layers is not self.noted[0] or tag is not self.noted[1]):
                self._note_annotation(layers, tag)

    def _note_annotation(self, layers: tuple[Any, ...], tag: Savepoint | None) -> None:
        """Merge the annotations in effect in this thread or task (*layers*, not those noted last) into this
        transaction's, for a change just made in savepoint *tag*: a transaction carries the blocks active when
        (and where) it changed something, not those that began or ended around it without a change (kept or
        dropped with *tag*, as the change)."""
        self.noted = (layers, tag)
        self.add_meta(layers[-1][1], annotation=True, sp=tag)

    def commit_meta(self) -> dict[str, Any] | None:
        """The metadata its commit writes: its own over its annotations; None when there is none.

        Raises:
            UnsupportedValueError: the merged metadata is too large (nothing is written).
        """
        merged = {**self.annotated, **self.meta} if self.annotated else self.meta
        if not merged:
            return None
        check_size(merged)  # merged from parts each checked, but perhaps too large together
        return merged

    # -- savepoints and ending ----------------------------------------------------

    def savepoint(self, parent: Savepoint | None) -> Savepoint:
        if not self.nested:  # the events so far are the transaction's own: tagged None from now on
            self.sync()
            self.tags = [None] * (len(self.events) // 3)
            self.nested = True
            self.no_fast_path()
        return Savepoint(parent)

    def release(self, sp: Savepoint) -> None:
        """Keep a savepoint's changes and metadata: they now belong to the enclosing one."""
        for tags in (self.tags, self.undo_tags):
            for i, t in enumerate(tags):
                if t is sp:
                    tags[i] = sp.parent
        if sp.meta:
            self.add_meta(sp.meta, sp=sp.parent)
        if sp.annotated:
            self.add_meta(sp.annotated, annotation=True, sp=sp.parent)

    def rollback_savepoint(self, sp: Savepoint) -> None:
        """Drop the changes of *sp* and of savepoints opened inside it -- only those.

        Events are tagged with the savepoint of the thread or task that made
        them, so concurrent tasks sharing one transaction each roll back only
        their own work.
        """

        def inside(t: Savepoint | None) -> bool:
            while t is not None:
                if t is sp:
                    return True
                t = t.parent
            return False

        undo, undo_tags, dropped = _split(self.undo, self.undo_tags, inside)
        self.attacher.undo(dropped)
        self.undo, self.undo_tags = undo, undo_tags
        events, self.tags, _ = _split(self.pending(), self.tags, inside)
        self.events = [part for event in events for part in event]
        self.fields.clear()
        self.views.clear()
        self.added = None
        for k, target, args in events:
            k.apply(self, target, *args)
        self.synced = len(self.events)

    def pending(self) -> list[Pending]:
        """The transaction's events as ``(kind, target, args)`` triples, in order.

        They are kept flat (kind, target, args, kind, ...): one object per event
        instead of two survives until the commit, which keeps the cyclic
        garbage collector's work per mutation down in long transactions. The
        triples are built at commit, where the collector is paused. (The
        overlay is brought up to date first: the commit publishes it.)
        """
        self.sync()
        it = iter(self.events)
        return list(zip(it, it, it))

    def outcome(self) -> list[Pending]:
        """The events its commit writes: :meth:`pending`, less each ``obj.set`` of a scalar that a later
        ``obj.set`` of the same field replaces with nothing of that field in between.

        The log records outcomes, and nothing uncommitted was ever visible:
        a field assigned several times in one transaction is written once,
        with its last value, where that last assignment was made -- the
        history and the change feed show the commit's outcome, as for any
        commit. Only scalar values are dropped (an object or collection
        assigned and replaced keeps its event: it would otherwise stay
        attached with no id), and never a counter's (``merge="add"``: its
        assignments and adds keep their order and meaning). Cheap when
        there is nothing to drop: the overlay holds one entry per field
        written, so fewer entries than events is the only case looked at.
        """
        fields = self.sync()  # the commit publishes the overlay: brought up to date with the fast path's sets
        events = self.events
        n = len(events) // 3
        if n < 2 or sum(map(len, fields.values())) >= n:
            return self.pending()
        if _outcome is not None:  # the same loop, compiled
            compiled = _outcome(events, _OBJ_SET, _OBJ_DEL, _OBJ_ADD, NATIVE, counter_fields)
            if compiled is not None:
                return compiled
        native = NATIVE
        later: set[tuple[int, str]] = set()  # fields assigned again later, nothing else of them in between
        out: list[Pending] = []
        for i in range(len(events) - 3, -1, -3):
            k, target, args = events[i], events[i + 1], events[i + 2]
            if k is _OBJ_SET:
                key = (id(target), args[0])
                if key not in later:
                    later.add(key)
                elif type(args[1]) in native and args[0] not in counter_fields(type(target)):
                    continue  # replaced by a later assignment: never visible, not written
            elif k is _OBJ_DEL or k is _OBJ_ADD:
                later.discard((id(target), args[0]))
            out.append((k, target, args))
        out.reverse()
        return out

    def discard(self) -> None:
        self.attacher.undo(self.undo)
        self.clear()

    def clear(self) -> None:
        self.done = True
        self.writable = False
        self.fast = None
        self.events = []
        self.synced = 0
        self.tags = []
        self.fields = {}
        self.views = {}
        self.added = None
        self.undo = []
        self.undo_tags = []
        self.reads = set()

    # -- publishing (readers outside the transaction while it is applied) --------

    def published_field(self, obj: Any, name: str) -> Any:
        d = self.fields.get(id(obj))  # synced: the commit took its pending() first
        if d is None:
            return ABSENT
        v = d.get(name, ABSENT)
        if v is DELETED:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
        return v


#: TxState.sync's loop compiled, or None
_sync: Callable[[TxState], bool] | None = None
#: TxState.outcome's loop compiled (None: the Python loop runs)
_outcome: Callable[..., list[Pending] | None] | None = None if speedups is None else speedups.outcome
if speedups is not None:  # reads inside a transaction, fields' and a dict's d[k]: their common case compiled
    speedups.configure_reads(TxState, RAW, DELETED)
    _sync = speedups.sync


def _split(
    items: list[Any], tags: list[Savepoint | None], inside: Callable[[Savepoint | None], bool]
) -> tuple[list[Any], list[Savepoint | None], list[Any]]:
    """``(kept items, their tags, dropped items)``: *items* tagged *inside* a savepoint are dropped."""
    kept: list[Any] = []
    kept_tags: list[Savepoint | None] = []
    dropped: list[Any] = []
    for item, t in zip(items, tags):
        if inside(t):
            dropped.append(item)
        else:
            kept.append(item)
            kept_tags.append(t)
    return kept, kept_tags, dropped


class Savepoint:
    """A nested transaction: a tag on the events made inside it, its parent, and the metadata added in it."""

    __slots__ = ("annotated", "meta", "parent")

    def __init__(self, parent: Savepoint | None) -> None:
        self.parent = parent
        #: its own ``meta`` and that of annotate blocks entered inside it (kept with it: see TxState.add_meta)
        self.meta: dict[str, Any] = {}
        self.annotated: dict[str, Any] = {}
