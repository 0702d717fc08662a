"""``MemoryImage.erase``: excising past values from the stored log, with an audit event.

What is erased, and why the current state and ``memimg verify`` are
unchanged by it, is :mod:`memimg.core._excise`'s business; this module
checks the request, keeps other writers out while the stored rows change,
and commits the audit event in the same store transaction as the rewrite:

1. the image's own background snapshot is waited for, and the store's
   ``snapshot`` lease taken (waiting for another process's snapshot to
   finish): a snapshot being written holds the state at its seq, past values
   included, and would store them after the rewrite;
2. under the image's lock, the image catches up with the log, and the log
   and snapshots up to its seq are read (every row's checksum checked: a
   damaged row is refused, not given a fresh checksum);
3. the store rewrites the changed rows *and* appends the ``erase`` audit
   event at the next seq in one transaction (:meth:`Store.rewrite`): if
   another process committed meanwhile, nothing is written, and the image
   catches up and plans again. A process killed midway leaves the log as it
   was before, or erased and audited.

The audit event's seq orders erasures with every commit, so two erasures
of the same rows never both write what they read.

The log is read whole (erasure is rare). With an index by target
(``Store.read_target``) only the target's own events and those holding its
creation record would need reading.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import attrs

from memimg._errors import LockedError, MemimgError
from memimg.core import _types
from memimg.core._excise import DICT, ENTITY, LIST, Excised, Target, excise
from memimg.core._kinds import KINDS
from memimg.core._rows import EventRow, SnapshotRow, verify_event, verify_snapshot
from memimg.image import _snapshots
from memimg.model import SHELL
from memimg.stores._protocol import SeqTaken

if TYPE_CHECKING:
    from memimg.image._engine import Engine

__all__ = ["Erasure", "erase"]

_ERASE: Final = KINDS["erase"]

log = logging.getLogger("memimg")


@attrs.frozen
class Erasure:
    """What :meth:`MemoryImage.erase` did.

    ``seq`` is the audit event's; ``erased`` how many stored values were
    replaced by :data:`memimg.ERASED`; ``current`` how many stored copies of
    the current values were left alone; ``events`` and ``snapshots`` how
    many rows were rewritten; ``not_erased`` what could not be (the members
    of sets some fields hold), and ``note`` says so in words.
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
            text = (
                f"nothing to erase for {what}: every stored value is current (the current value is left "
                f"alone: set it first if it must go too); audit event at seq {self.seq}"
            )
        if self.not_erased:
            text += f"; not erased: the members of the set(s) in {', '.join(self.not_erased)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``memimg erase --json``)."""
        return {**attrs.asdict(self), "fields": list(self.fields), "not_erased": list(self.not_erased)}


def erase(engine: Engine, obj: Any, field: str | None, reason: str, by: str | None) -> Erasure:
    """See :meth:`memimg.MemoryImage.erase`."""
    if not isinstance(reason, str) or not reason.strip():
        raise MemimgError(
            f"erase needs a reason (a non-empty str saying why, e.g. reason='GDPR request 42'), not {reason!r}; "
            "nothing was changed",
            reason=reason,
        )
    if by is not None and not isinstance(by, str):
        raise MemimgError(f"erase(by=...) names who asked, as a str, not {by!r}; nothing was changed", by=by)
    engine.check_writable()
    if engine.current_tx() is not None:
        raise MemimgError(
            "erase cannot run inside a transaction: it rewrites the stored log and commits its audit event by "
            "itself; call it outside the transaction; nothing was changed"
        )
    oid, type_name, fields, targets, skipped = _targets(engine, obj, field)
    engine.snapshots.join()
    with _no_snapshots(engine):
        with engine.lock:
            engine.refuse_if_busy()
            engine.check_writable()
            while True:
                engine.catch_up()
                plan = excise(_rows(engine), _snapshot_rows(engine), targets)
                event = (_ERASE, None, (reason, oid, type_name, list(fields), by, plan.erased))
                ts = time.time_ns() // 1000
                if not engine.store.lease(_snapshots.LEASE, engine.snapshots.holder, _snapshots.LEASE_SECONDS):
                    raise LockedError(
                        f"erase lost the snapshot lease of {engine.store.description} while it read the log (over "
                        f"{_snapshots.LEASE_SECONDS:g} s); nothing was changed: try again",
                        store=engine.store.description,
                        operation="renewing the snapshot lease",
                    )
                rows = engine.session.encode_events([event], engine.seq + 1, ts)
                try:
                    engine.store.rewrite(plan.events, plan.snapshots, rows, engine.seq)
                except SeqTaken:
                    engine.session.rollback()
                    continue
                except BaseException:
                    engine.session.rollback()
                    raise
                break
            engine.apply([event], rows, None)
        _scrub(engine)
    return _result(rows[0][0], oid, type_name, fields, plan, reason, by, skipped)


def _result(
    seq: int,
    oid: int,
    type_name: str,
    fields: tuple[str, ...],
    plan: Excised,
    reason: str,
    by: str | None,
    skipped: tuple[str, ...],
) -> Erasure:
    return Erasure(
        seq=seq,
        oid=oid,
        type_name=type_name,
        fields=fields,
        erased=plan.erased,
        current=sum(plan.current.values()),
        events=len(plan.events),
        snapshots=len(plan.snapshots),
        reason=reason,
        by=by,
        not_erased=skipped,
    )


def _targets(
    engine: Engine, obj: Any, field: str | None
) -> tuple[int, str, tuple[str, ...], list[Target], tuple[str, ...]]:
    """``(oid, type name, fields, targets, fields whose set's members are not erased)``, or a clear error."""
    table = engine.table
    t = type(obj)
    if not isinstance(obj, (SHELL.entity_base, SHELL.list, SHELL.dict, SHELL.set)):
        raise MemimgError(
            f"erase takes an entity (@memimg.persistent) or a tracked list or dict of this image, not a "
            f"{t.__module__}.{t.__qualname__}; nothing was changed",
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
            "in it, or in another image, or no longer reachable); nothing was changed",
            oid=oid,
        )
    if t is SHELL.set:
        raise MemimgError(
            f"erase cannot erase the past members of a set (object {oid}): a member is its own identity in "
            "the set, and marking removed ones alike would make replay disagree with the snapshots; use a "
            "list or a dict for data that may have to be erased; nothing was changed",
            oid=oid,
        )
    if t is SHELL.list or t is SHELL.dict:
        name = SHELL.names.get(t, t.__name__)
        if field is not None:
            raise MemimgError(
                f"erase({name} {oid}, {field!r}): a {name} has no fields; erase it with field=None "
                "(its past items); nothing was changed",
                oid=oid,
                field=field,
            )
        return oid, name, (), [Target(oid, LIST if t is SHELL.list else DICT)], ()
    info = _types.info_of(t)
    assert info is not None
    if field is not None and field not in info.fields:
        raise MemimgError(
            f"erase: {info.name} (object {oid}) has no field {field!r} (its fields: {', '.join(info.fields)}); "
            "nothing was changed",
            oid=oid,
            field=field,
        )
    fields = (field,) if field is not None else tuple(info.fields)
    stored = {f: f for f in fields}
    stored.update({info.renamed[f]: f for f in fields if f in info.renamed})
    targets = [Target(oid, ENTITY, stored)]
    skipped = []
    for f in fields:
        value: Any = getattr(obj, f, None)
        vt = type(value)
        if vt is SHELL.list or vt is SHELL.dict:
            targets.append(Target(value._mi_oid, LIST if vt is SHELL.list else DICT))
        elif vt is SHELL.set:
            if field is not None:
                raise MemimgError(
                    f"erase: {info.name}.{f} (object {oid}) holds a set, whose past members cannot be erased (a "
                    "member is its own identity in the set); use a list or a dict for data that may have to be "
                    "erased; nothing was changed",
                    oid=oid,
                    field=f,
                )
            skipped.append(f)
    return oid, info.name, fields, targets, tuple(skipped)


def _scrub(engine: Engine) -> None:
    """Give the old bytes' space back (SQLite: ``VACUUM``, the WAL emptied); the erasure is committed already."""
    try:
        engine.store.reclaim()
    except Exception as err:
        log.warning(
            "erase in %s is committed, but reclaiming the old rows' space failed (%s): until it is done (memimg "
            "compact, or VACUUM), erased bytes may remain in the database's free space",
            engine.store.description,
            err,
        )


def _rows(engine: Engine) -> Iterator[EventRow]:
    """The log up to the image's seq, every row's checksum checked."""
    last = engine.seq
    for raw in engine.store.read(after=0):
        row = EventRow(*raw)
        if row.seq > last:
            return
        verify_event(row)
        yield row


def _snapshot_rows(engine: Engine) -> Iterator[SnapshotRow]:
    """Every stored snapshot up to the image's seq, oldest first, checksums checked."""
    store = engine.store
    for info in sorted(store.snapshots()):
        if info.seq > engine.seq:
            return
        row = SnapshotRow(*store.read_snapshot(info.seq))
        verify_snapshot(row)
        yield row


@contextlib.contextmanager
def _no_snapshots(engine: Engine) -> Iterator[None]:
    """No snapshot is written meanwhile, by this process or another: the snapshot lease held."""
    snaps = engine.snapshots
    with snaps.lock:
        deadline = time.monotonic() + _snapshots.WAIT_SECONDS
        while not engine.store.lease(_snapshots.LEASE, snaps.holder, _snapshots.LEASE_SECONDS):
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"another process has been writing a snapshot of {engine.store.description} for over "
                    f"{_snapshots.WAIT_SECONDS:g} s (it holds the snapshot lease); erase again later; nothing "
                    "was changed",
                    store=engine.store.description,
                    operation="taking the snapshot lease",
                )
            time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # it expires by itself
                engine.store.release(_snapshots.LEASE, snaps.holder)
