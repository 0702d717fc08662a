"""``MemoryImage.erase``: excising past values from the stored log, with an audit event.

What is erased, and why the current state and ``memimg verify`` are
unchanged by it, is :mod:`memimg.core._excise`'s business; this module
checks the request, keeps snapshots out while the stored rows change, and
commits the audit event in the same store transaction as the rewrite:

1. the image's own background snapshot is waited for, and the store's
   ``snapshot`` lease taken (waiting for another process's snapshot to
   finish): a snapshot being written holds the state at its seq, past values
   included, and would store them after the rewrite (a snapshot that stalls
   past its lease is not stored: the stores write it only while its writer
   holds the lease);
2. under the image's lock, briefly: the image catches up, and the targets
   are found -- the object, the collections it holds, and whether each is
   still reachable from the root (an object that is not has no current
   value: every stored value of it is past);
3. without the image's lock (its other threads commit meanwhile), the log
   and snapshots up to that seq are folded (:class:`Excision`; every row's
   checksum checked: a damaged row is refused, not given a fresh checksum).
   The objects past values referred to that are no longer reachable are
   erased too: the log is folded again with them, until none is new;
4. under the image's lock again, the store takes its write turn
   (:meth:`Store.rewrite`): the events other writers appended since are
   fed to the same fold, and the changed rows and the ``erase`` audit event
   are stored in that one transaction. No other writer can append between
   this last plan and the write, so erase finishes in one turn however busy
   the log is; other writers wait only for the tail and the write.

The audit event's seq orders erasures with every commit, so two erasures
of the same rows never both write what they read.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from memimg._errors import LockedError, MemimgError
from memimg.core import _types
from memimg.core._excise import DICT, ENTITY, LIST, Excised, Excision, Target, references, stored_key
from memimg.core._firststates import FirstStates
from memimg.core._kinds import KINDS
from memimg.core._meta import meta_event
from memimg.core._rows import EventRow, SnapshotRow, verify_event, verify_snapshot
from memimg.image import _snapshots
from memimg.image._annotate import layer_meta
from memimg.model import SHELL
from memimg.stores._protocol import Rewrite

if TYPE_CHECKING:
    from memimg.image._engine import Engine

__all__ = ["Erasure", "erase", "not_an_oid"]

_ERASE: Final = KINDS["erase"]
#: the longest reason stored in an audit event
REASON_MAX: Final = 1000
#: full plans tried before giving up (another plan is needed only when a commit made meanwhile linked an
#: object taken as unreachable again, or a snapshot was stored meanwhile)
ATTEMPTS: Final = 3

log = logging.getLogger("memimg")


@attrs.frozen
class Erasure:
    """What :meth:`MemoryImage.erase` did.

    ``seq`` is the audit event's; ``erased`` how many stored values were
    replaced by :data:`memimg.ERASED`; ``targets`` the other objects some
    of whose stored values were (the lists and dicts the object holds, the
    unreachable objects its past values referred to), by id; ``current``
    how many stored copies of
    the current values were left alone; ``events`` and ``snapshots`` how
    many rows were rewritten; ``followed`` the objects no longer reachable
    that past values referred to, erased whole; ``not_erased`` what could
    not be (in words), and ``note`` says all of it in a sentence.
    ``scrubbed`` says whether the old bytes were removed from the
    database's files too (SQLite: ``False`` when a reader kept the WAL in
    use; ``note`` says what to run).
    """

    __module__ = "memimg"

    seq: int
    oid: int
    type_name: str
    fields: tuple[str, ...]
    erased: int
    current: int
    events: int
    snapshots: int
    reason: str
    by: str | None
    not_erased: tuple[str, ...] = ()
    followed: tuple[int, ...] = ()
    scrubbed: bool = True
    scrub_note: str = ""
    targets: tuple[int, ...] = ()

    @property
    def note(self) -> str:
        """A sentence for people (``memimg erase`` prints it)."""
        what = f"{self.type_name} {self.oid}" + (f" ({', '.join(self.fields)})" if self.fields else "")
        if self.erased:
            text = (
                f"erased {self.erased} past value(s) of {what} from {self.events} event(s) and "
                f"{self.snapshots} snapshot(s); audit event at seq {self.seq}"
            )
        else:
            text = f"nothing to erase for {what}: no past value is stored; audit event at seq {self.seq}"
        if self.current:
            text += f"; {self.current} stored copies of current values left alone (set them first if they must go)"
        held = [oid for oid in self.targets if oid not in self.followed]
        if held:
            text += f"; with past values of the collections it holds: {_ids(held)}"
        if self.followed:
            text += f"; with the objects past values referred to, no longer reachable: {_ids(self.followed)}"
        if self.not_erased:
            text += f"; not erased: {'; '.join(self.not_erased)}"
        if not self.scrubbed:
            text += f"; {self.scrub_note}"
        return text

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``memimg erase --json``)."""
        return {
            **attrs.asdict(self),
            "fields": list(self.fields),
            "not_erased": list(self.not_erased),
            "followed": list(self.followed),
            "targets": list(self.targets),
        }


def _ids(oids: Sequence[int]) -> str:
    return ", ".join(map(str, oids[:20])) + (f" and {len(oids) - 20} more" if len(oids) > 20 else "")


def not_an_oid(oid: int) -> MemimgError:
    """The error for erasing by an id below 1 (``memimg erase`` says so before it opens the image)."""
    return MemimgError(f"erase: {oid} is not an object id (object ids run from 1 up); nothing was changed", oid=oid)


@attrs.frozen
class _Request:
    """What is to be erased, found in the image at seq ``head``."""

    oid: int
    type_name: str
    fields: tuple[str, ...]
    targets: tuple[Target, ...]
    reachable: frozenset[int]
    head: int
    reason: str
    by: str | None
    #: the metadata of the annotate blocks active when erase was called (its audit event's transaction's)
    meta: dict[str, Any] | None = None
    #: in words: what cannot be erased (the members of sets)
    skipped: tuple[str, ...] = ()
    #: a field name the class does not know, to be found stored
    unknown_field: str | None = None


def erase(engine: Engine, obj: Any, field: str | None, reason: str, by: str | None) -> Erasure:
    """See :meth:`memimg.MemoryImage.erase`."""
    _check_args(engine, field, reason, by)
    meta = _annotation(engine)
    if by is None and meta is not None and meta.get("user") is not None:
        by = str(meta["user"])  # who the application says is acting (a web request's user)
    engine.snapshots.join()
    with engine.snapshots.held("erase"):
        for _ in range(ATTEMPTS):
            with engine.lock:
                engine.refuse_if_busy()
                engine.check_writable()
                engine.catch_up()
                request = _request(engine, obj, field, reason, by, meta)
            excision, plan, targets = _plan(engine, request)
            _check_found(request, plan)
            done = _commit(engine, request, excision)
            if done is not None:
                rows, plan = done
                break
        else:
            raise MemimgError(
                f"erase of object {request.oid} in {engine.store.description}: commits made while it planned "
                f"linked an object it took as unreachable again, {ATTEMPTS} times; nothing was changed: erase "
                "again when the log is quieter",
                oid=request.oid,
            )
    scrubbed, scrub_note = _scrub(engine)
    return _result(rows[-1][0], request, plan, targets, scrubbed, scrub_note)


def _check_args(engine: Engine, field: str | None, reason: str, by: str | None) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise MemimgError(
            f"erase needs a reason (a non-empty str saying why, e.g. reason='GDPR request 42'), not {reason!r}; "
            "nothing was changed",
            reason=reason,
        )
    if len(reason) > REASON_MAX:
        raise MemimgError(
            f"erase's reason is {len(reason)} characters long; at most {REASON_MAX} are stored (say why, and "
            "keep the details elsewhere, e.g. a ticket number); nothing was changed",
            reason=reason[:80],
        )
    if by is not None and not isinstance(by, str):
        raise MemimgError(f"erase(by=...) names who asked, as a str, not {by!r}; nothing was changed", by=by)
    if field is not None and (not isinstance(field, str) or not field):
        raise MemimgError(
            f"erase(field=...) names a field, as a non-empty str (None: every field), not {field!r}; nothing "
            "was changed",
            field=field,
        )
    engine.check_writable()
    if engine.current_tx() is not None:
        raise MemimgError(
            "erase cannot run inside a transaction: it rewrites the stored log and commits its audit event by "
            "itself; call it outside the transaction; nothing was changed"
        )


# -- planning ---------------------------------------------------------------------


def _plan(engine: Engine, request: _Request) -> tuple[Excision, Excised, tuple[Target, ...]]:
    """The fold of the log up to the request's seq, with every unreachable object past values referred to."""
    targets = request.targets
    known = {t.oid for t in targets}
    key = _key_of(engine)
    while True:
        excision = Excision(targets, _snapshot_rows(engine, request.head), key)
        excision.feed(_rows(engine, request.head))
        plan = excision.result()
        new = sorted(oid for oid in plan.refs if oid not in request.reachable and oid not in known)
        if not new:
            return excision, plan, targets
        targets += tuple(Target(oid, past=True) for oid in new)
        known.update(new)
        _renew_lease(engine)


def _check_found(request: _Request, plan: Excised) -> None:
    """A field name the class does not declare must be stored for the object; an oid must be in the log."""
    if request.oid in plan.unknown:
        raise MemimgError(
            f"erase: object {request.oid} is not in the image, and the log holds nothing of it (ids are shown by "
            "memimg show and memimg log); nothing was changed",
            oid=request.oid,
        )
    name = request.unknown_field
    if name is not None and name not in plan.stored_names.get(request.oid, ()):
        raise MemimgError(
            f"erase: {request.type_name} (object {request.oid}) has no field {name!r}, and no value of it is "
            f"stored under that name (its fields: {', '.join(request.fields) or 'none'}); nothing was changed",
            oid=request.oid,
            field=name,
        )


def _commit(engine: Engine, request: _Request, excision: Excision) -> tuple[list[EventRow], Excised] | None:
    """Store the rewrite and the audit event in the store's write turn; None: plan again (see ATTEMPTS)."""
    store = engine.store
    with engine.lock:
        engine.refuse_if_busy()
        engine.check_writable()
        _renew_lease(engine)
        done: list[tuple[list[EventRow], Excised]] = []

        def finish(missed: Sequence[EventRow]) -> Rewrite:
            if done:  # the store runs this again (a new connection): the audit event is encoded again
                engine.session.rollback()
                done.clear()
            new = [r for r in map(_checked, missed) if r.seq > excision.seq]
            if excision.relinked(new) or any(r.kind in ("snapshot", "gc.drop") for r in new):
                raise _Replan
            excision.feed(new)
            plan = excision.result()
            head = missed[-1][0] if missed else request.head
            rows = engine.session.encode_events(_audit(request, plan), head + 1, time.time_ns() // 1000)
            done.append((rows, plan))
            return Rewrite(plan.events, plan.snapshots, rows)

        try:
            store.rewrite(finish, request.head)
        except BaseException as err:
            if done:
                engine.session.rollback()
            if isinstance(err, _Replan):
                return None
            raise
        # what history remembers of the rows rewritten (see Reader.first_states): forgotten now the rewrite
        # committed, whatever catching up or applying the audit commit does
        engine.reader.first_states = FirstStates()
        rows, plan = done[-1]
        first = rows[0][0]
        if engine.seq < first - 1:  # what other writers appended before the audit commit
            engine.catch_up(itertools.takewhile(lambda r: r[0] < first, store.read(after=engine.seq)))
        engine.apply(_audit(request, plan), rows, None)
    return rows, plan


class _Replan(Exception):
    """A commit made while erase planned needs a new plan (see :data:`ATTEMPTS`)."""


def _audit(request: _Request, plan: Excised) -> list[Any]:
    """The audit commit: the ``erase`` event, after the ``tx.meta`` event of the annotations active, if any."""
    type_name = request.type_name or plan.type_names.get(request.oid, "")
    others = [oid for oid in plan.erased_in if oid != request.oid]
    args = (request.reason, request.oid, type_name, list(request.fields), request.by, plan.erased, others)
    event = (_ERASE, None, args)
    return [meta_event(request.meta), event] if request.meta else [event]


def _annotation(engine: Engine) -> dict[str, Any] | None:
    """The metadata of the ``img.annotate`` blocks active in this thread or task (None: none), checked.

    Raises:
        UnsupportedValueError: it is too large (see :func:`memimg.image._annotate.layer_meta`).
    """
    writer = engine.writer
    layers = writer.annotation.get() if writer.ever_annotated else None
    return layer_meta(layers) if layers else None


def _checked(raw: Any) -> EventRow:
    row = EventRow(*raw)
    verify_event(row)
    return row


def _rows(engine: Engine, last: int) -> Iterator[EventRow]:
    """The log up to seq *last*, every row's checksum checked."""
    for raw in engine.store.read(after=0):
        if raw[0] > last:
            return
        yield _checked(raw)


def _snapshot_rows(engine: Engine, last: int) -> Iterator[SnapshotRow]:
    """Every stored snapshot up to seq *last*, oldest first, checksums checked."""
    store = engine.store
    for info in sorted(store.snapshots()):
        if info.seq > last:
            return
        row = SnapshotRow(*store.read_snapshot(info.seq))
        verify_snapshot(row)
        yield row


def _key_of(engine: Engine) -> Any:
    """How a stored dict key is compared: as the application's dict compares the decoded key."""
    decode = engine.reader.decode

    def key(x: Any) -> Hashable:
        if not references(x):
            try:
                with engine.lock:  # the reader's caches are the image's
                    k = decode(x)
                hash(k)
                return k  # type: ignore[no-any-return]
            except Exception:
                pass
        return stored_key(x)

    return key


# -- what to erase -------------------------------------------------------------------


def _request(
    engine: Engine, obj: Any, field: str | None, reason: str, by: str | None, meta: dict[str, Any] | None
) -> _Request:
    """What erasing *obj*'s *field* means at the image's seq, or a clear error (nothing changed)."""
    table = engine.table
    reachable = frozenset(table.reachable_oids())
    base: dict[str, Any] = {"reachable": reachable, "head": engine.seq, "reason": reason, "by": by, "meta": meta}
    if isinstance(obj, int) and not isinstance(obj, bool):
        held = table.objects[obj] if 0 < obj < len(table.objects) else None
        if held is None:  # no longer in the image: read from the log, every stored value past
            if obj <= 0:
                raise not_an_oid(obj)
            fields = () if field is None else (field,)
            target = Target(obj, wanted=None if field is None else frozenset(fields), past=True)
            return _Request(obj, "", fields, (target,), unknown_field=field, **base)
        obj = held
    oid, t = _identify(engine, obj)
    past = oid not in reachable
    if t is SHELL.list or t is SHELL.dict:
        name = SHELL.names.get(t, t.__name__)
        if field is not None:
            raise MemimgError(
                f"erase({name} {oid}, {field!r}): a {name} has no fields; erase it with field=None "
                "(its past items); nothing was changed",
                oid=oid,
                field=field,
            )
        targets, skipped = _collections(list(obj) if t is SHELL.list else list(dict.items(obj)), reachable, {oid})
        shape = LIST if t is SHELL.list else DICT
        return _Request(oid, name, (), (Target(oid, shape, past=past), *targets), skipped=skipped, **base)
    return _entity_request(engine, obj, oid, field, past, base)


def _identify(engine: Engine, obj: Any) -> tuple[int, type]:
    """*obj*'s id in this image and its type, or a clear error."""
    table = engine.table
    t = type(obj)
    if not isinstance(obj, (SHELL.entity_base, SHELL.list, SHELL.dict, SHELL.set)):
        raise MemimgError(
            f"erase takes an entity (@memimg.persistent), a tracked list or dict of this image, or an object id, "
            f"not a {t.__module__}.{t.__qualname__}; nothing was changed",
            value_type=t,
        )
    oid: int | None = getattr(obj, "_mi_oid", None)
    if (
        getattr(obj, "_mi_img", None) is not engine.owner
        or oid is None
        or oid >= len(table.objects)
        or table.objects[oid] is not obj
    ):
        raise MemimgError(
            f"erase: this {t.__qualname__} object is not in the image {engine.store.description} (never stored "
            "in it, in another image, or forgotten by a snapshot once unreachable: erase it by its object id, "
            "img.erase(OID, ...) or memimg erase TARGET OID); nothing was changed",
            oid=oid,
        )
    if t is SHELL.set:
        raise MemimgError(
            f"erase cannot erase the past members of a set (object {oid}): a member is its own identity in "
            "the set, and marking removed ones alike would make replay disagree with the snapshots; use a "
            "list or a dict for data that may have to be erased; nothing was changed",
            oid=oid,
        )
    return oid, t


def _entity_request(
    engine: Engine, obj: Any, oid: int, field: str | None, past: bool, base: dict[str, Any]
) -> _Request:
    """The request for an entity: its fields (a name no longer declared too) and the collections it holds.

    A tool's stand-in class has every field any declaration in the log
    named; its current fields are those of the newest declaration.
    """
    info = _types.info_of(type(obj))
    assert info is not None
    current = info.fields
    if engine.reader.stand_ins is not None:
        declared = set(engine.reader.plan(info.name).stored_fields)
        current = tuple(f for f in info.fields if f in declared) if declared else info.fields
    names = {f: f for f in current}
    names.update({old: f for f, old in info.renamed.items()})
    unknown = None
    if field is not None and field not in names and field not in info.removed:
        unknown = field  # stored under a name the class no longer declares (a tool's stand-in knows no renames)
    fields = (field,) if field is not None else tuple(current)
    held: list[Any] = []
    for f in fields:
        value = getattr(obj, f, None) if f in info.fields else None
        if type(value) is SHELL.set and field is not None:
            raise MemimgError(
                f"erase: {info.name}.{f} (object {oid}) holds a set, whose past members cannot be erased (a "
                "member is its own identity in the set); use a list or a dict for data that may have to be "
                "erased; nothing was changed",
                oid=oid,
                field=f,
            )
        held.append(value)
    targets, skipped = _collections(held, base["reachable"], {oid})
    wanted = None if field is None else frozenset(fields)
    target = Target(oid, ENTITY, names, wanted, past)
    return _Request(oid, info.name, fields, (target, *targets), skipped=skipped, unknown_field=unknown, **base)


def _collections(value: Any, reachable: frozenset[int], seen: set[int]) -> tuple[list[Target], tuple[str, ...]]:
    """The tracked lists and dicts *value* holds, and those they hold (not through entities), as targets;
    and, in words, the sets among them (their members are not erased)."""
    targets: list[Target] = []
    sets: list[str] = []
    work = [value]
    while work:
        v = work.pop()
        t = type(v)
        if t is list or t is tuple or t is frozenset:
            work.extend(v)
            continue
        if t is not SHELL.list and t is not SHELL.dict and t is not SHELL.set:
            continue
        oid = v._mi_oid
        if oid is None or oid in seen:
            continue
        seen.add(oid)
        if t is SHELL.set:
            sets.append(f"the members of set {oid}")
            continue
        targets.append(Target(oid, LIST if t is SHELL.list else DICT, past=oid not in reachable))
        work.extend(list(v) if t is SHELL.list else [x for pair in dict.items(v) for x in pair])
    return targets, tuple(sets)


# -- the snapshot lease, the bytes, the result -------------------------------------------


def _renew_lease(engine: Engine) -> None:
    if not engine.store.lease(_snapshots.LEASE, engine.snapshots.holder, _snapshots.LEASE_SECONDS):
        raise LockedError(
            f"erase lost the snapshot lease of {engine.store.description} while it read the log (over "
            f"{_snapshots.LEASE_SECONDS:g} s); nothing was changed: try again",
            store=engine.store.description,
            operation="renewing the snapshot lease",
        )


def _scrub(engine: Engine) -> tuple[bool, str]:
    """Give the old bytes' space back (SQLite: ``VACUUM``, the WAL emptied); the erasure is committed already.

    Returns whether it was done, and if not what to run.
    """
    store = engine.store
    try:
        done = store.reclaim()
    except Exception as err:
        note = (
            f"the old bytes may remain in the database's free space: reclaiming it failed ({err}); run memimg "
            "compact (or VACUUM) when the database is idle"
        )
        log.warning("erase in %s is committed, but %s", store.description, note)
        return False, note
    if not done:
        note = (
            "the old bytes remain in the SQLite write-ahead log: another connection was reading it; close the "
            "other readers, then run memimg compact"
        )
        log.warning("erase in %s is committed, but %s", store.description, note)
        return False, note
    return True, ""


def _result(
    seq: int,
    request: _Request,
    plan: Excised,
    targets: tuple[Target, ...],
    scrubbed: bool,
    scrub_note: str,
) -> Erasure:
    not_erased = list(request.skipped)
    not_erased += [f"the members of set {oid}" for oid in plan.sets]
    if plan.unplaced:
        not_erased.append(
            f"{plan.unplaced} stored list item(s) whose position is unknown (the list's earlier history was "
            "compacted away): they may be current, so they were kept"
        )
    entity = next((t for t in targets if t.oid == request.oid and t.shape == ENTITY), None)
    if entity is not None and entity.wanted is not None:
        others = sorted(n for n in plan.stored_names.get(request.oid, ()) if n not in entity.names)
        others = [n for n in others if n not in entity.wanted]
        if others:
            not_erased.append(
                f"values stored under field names {request.type_name} no longer declares: {', '.join(others)} "
                "(erase them by name, or erase every field)"
            )
    asked = {t.oid for t in request.targets}
    return Erasure(
        seq=seq,
        oid=request.oid,
        type_name=request.type_name or plan.type_names.get(request.oid, ""),
        fields=request.fields,
        erased=plan.erased,
        current=sum(plan.current.values()),
        events=len(plan.events),
        snapshots=len(plan.snapshots),
        reason=request.reason,
        by=request.by,
        not_erased=tuple(not_erased),
        followed=tuple(t.oid for t in targets if t.oid not in asked),
        scrubbed=scrubbed,
        scrub_note=scrub_note,
        targets=tuple(oid for oid in plan.erased_in if oid != request.oid),
    )
