"""``memimg verify``: every checksum, the whole log replayed, every snapshot compared with it.

Each stored snapshot is compared with the state the log gives at its seq.
Both sides are read the same way -- the snapshot is loaded through the same
classes, upgraders and stand-ins as the replay -- so a snapshot written in
an older schema, or a newer one (by ``memimg.migrate``), is compared with
the replay in one schema. What stand-ins (or classes lacking an upgrader)
cannot bring into one schema is compared by id and type only, reported,
and the replay goes on from that snapshot (see :func:`_unreadable`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import click
import orjson

import memimg
from memimg._errors import CorruptLogError, MemimgError
from memimg.cli._main import cli, open_store, with_progress
from memimg.core import _types, _values
from memimg.core._codec import Codec
from memimg.core._fold import fold
from memimg.core._reader import Reader
from memimg.core._records import describe_table
from memimg.core._rows import SnapshotRow, verify_snapshot
from memimg.core._snapshot import load_snapshot, split_snapshot
from memimg.core._table import ObjectTable
from memimg.image import _generic
from memimg.image._recovery import snapshot_past_head
from memimg.model import SHELL
from memimg.stores._protocol import Store

__all__ = ["verify"]


# -- verify ----------------------------------------------------------------------


#: How :func:`_canonical` hides what two graphs need not agree on: stored type names whose states
#: are not compared, and names not compared at all (nor their states).
_Masks = tuple[frozenset[str], frozenset[str]]
_NO_MASKS: _Masks = (frozenset(), frozenset())


def _canonical_value(v: Any, masks: _Masks, hits: Counter[str]) -> Any:
    """An encoded value in one form: its frozensets' items in one order (they are written in hash
    order), its big ints as this memimg writes them (an older one may have written decimal where
    this one writes hex)."""
    if type(v) is not list or not v:
        return v
    tag = v[0]
    try:
        if tag == "i":
            return ["i", _values.int_text(_values.int_from_text(v[1]))]
        if tag == "Q":
            return _values._enc_fraction(_values._dec_fraction(v))
    except (ValueError, TypeError, ZeroDivisionError):
        return v  # not a number: it differs from the replay's, which reports it
    if tag == "F":
        return ["F", sorted((_canonical_value(i, masks, hits) for i in v[1]), key=orjson.dumps)]
    if tag == "T":
        return ["T", [_canonical_value(i, masks, hits) for i in v[1]]]
    if tag == "v":
        name = v[1]
        if name in masks[1]:
            hits[name] += 1
            return ["v", "?", None]
        if name in masks[0]:
            hits[name] += 1
            return ["v", name, None]
        return ["v", name, {k: _canonical_value(i, masks, hits) for k, i in v[2].items()}]
    return v


def _canonical(data: dict[str, Any], masks: _Masks = _NO_MASKS, hits: Counter[str] | None = None) -> bytes:
    """A snapshot's content in a form that does not depend on the writer's hash seed.

    States of types in ``masks[0]`` are left out, and so are the names of
    types in ``masks[1]`` (counted in *hits*).
    """
    hits = Counter() if hits is None else hits
    records = []
    for oid, name, state in data["objects"]:
        if name in masks[1] or name in masks[0]:
            hits[name] += 1
            records.append([oid, "?" if name in masks[1] else name, None])
            continue
        if type(state) is dict:
            state = {k: _canonical_value(i, masks, hits) for k, i in state.items()}
        elif name == "dict":  # non-str keys: [key, value] pairs
            state = [[_canonical_value(k, masks, hits), _canonical_value(i, masks, hits)] for k, i in state]
        else:
            state = [_canonical_value(i, masks, hits) for i in state]
            if name == "set":
                state.sort(key=orjson.dumps)
        records.append([oid, name, state])
    records.sort(key=lambda r: r[0])
    return orjson.dumps({"root": data["root"], "objects": records}, option=orjson.OPT_SORT_KEYS)


@cli.command()
@click.argument("target")
def verify(target: str) -> None:
    """Check every checksum, replay the whole log, and compare each snapshot with the replay."""
    store = open_store(target, readonly=True)
    try:
        _verify(store)
    finally:
        store.close()


def _reader() -> Reader:
    """A reader of any log: the classes loaded, and stand-ins for the types they do not claim."""
    return Reader(ObjectTable(SHELL, Codec(memimg.converter, SHELL)), stand_ins=_generic.make_stand_in)


def _stored_snapshot(store: Store, seq: int) -> Reader:
    """The snapshot stored at *seq*, read as the replay reads the log (same classes, upgraders, stand-ins)."""
    reader = _reader()
    try:
        header, records = split_snapshot(store.read_snapshot(seq).payload, seq)
        load_snapshot(reader, {**header, "objects": records})
    except CorruptLogError as err:
        if err.seq is not None:
            raise
        raise CorruptLogError(
            f"snapshot at seq {seq} cannot be loaded: {err}", seq=seq, table="memimg_snapshots"
        ) from err
    return reader


def _declarations(plans: Iterable[Any]) -> dict[str, set[tuple[int, tuple[str, ...]]]]:
    """``type name -> {(version, fields)}`` of the declarations *plans* were made for."""
    out: dict[str, set[tuple[int, tuple[str, ...]]]] = {}
    for plan in plans:
        name = plan.info.name if plan.info is not None else plan.stored_name
        out.setdefault(name, set()).add((plan.version, plan.stored_fields))
    return out


def _described(declarations: set[tuple[int, tuple[str, ...]]]) -> str:
    return " and ".join(f"version {v} ({', '.join(fields)})" for v, fields in sorted(declarations))


def _unreadable(replayed: Reader, stored: Reader) -> tuple[_Masks, dict[str, str]]:
    """What the replayed graph and a stored snapshot need not agree on, by type name, with why.

    Both are read through the same classes, upgraders and stand-ins, so the
    states of a type agree -- unless it has no class here and was stored
    under more than one declaration (a stand-in cannot upgrade, rename or fill
    in a field), or its class does not declare how to read some of its
    states (an upgrader deleted after a migration). Their states are masked;
    a type without a class that only one side declares (a renamed class)
    has its name masked too.
    """
    plans = replayed.plans_read() + stored.plans_read()
    logged, snapshot = _declarations(replayed.plans_read()), _declarations(stored.plans_read())
    states: set[str] = set()
    names: set[str] = set()
    why: dict[str, str] = {}
    for name in logged.keys() | snapshot.keys():
        try:
            info = _types.resolve(name)
        except MemimgError:
            info = None
        if info is not None and not info.stand_in:
            if any(p.undeclared and p.info is info for p in plans):
                states.add(name)
                lines = [d for d in replayed.report.differences + stored.report.differences if name in d]
                why[name] = (
                    f"the class loaded cannot read all of them ({'; '.join(dict.fromkeys(lines))}); load the "
                    "classes with the upgraders and declarations the migration used to compare them"
                )
        elif name not in logged or name not in snapshot:
            names.add(name)
            why[name] = (
                f"only the {'log' if name in logged else 'snapshot'} declares this type (a renamed class?); "
                "load the classes (--import) to compare them"
            )
        elif len(logged[name] | snapshot[name]) > 1:
            states.add(name)
            why[name] = (
                f"the log wrote them as {_described(logged[name])} and the snapshot stores "
                f"{_described(snapshot[name])}, which stand-ins cannot read in one schema; load the classes "
                "(--import) to compare them"
            )
    return (frozenset(states), frozenset(names)), why


def _compare(replayed: Reader, stored: Reader, seq: int) -> list[str] | None:
    """Compare a stored snapshot with the replayed state at its seq.

    Returns ``None`` if they are equal, else what could not be compared
    (one line per type); what could be compared is equal.

    Raises:
        CorruptLogError: they differ in what could be compared.
    """
    mine, theirs = describe_table(replayed.table, seq), describe_table(stored.table, seq)
    if _canonical(mine) == _canonical(theirs):
        return None
    masks, why = _unreadable(replayed, stored)
    in_log: Counter[str] = Counter()
    in_snapshot: Counter[str] = Counter()
    if (masks[0] or masks[1]) and _canonical(mine, masks, in_log) == _canonical(theirs, masks, in_snapshot):
        lines = []
        for name in sorted(in_log | in_snapshot):
            value = _types.resolve(name).kind == _types.VALUE
            if name in masks[1]:
                what = "value(s) not compared" if value else "object(s) compared by id only"
            else:
                what = "value(s) compared by type only" if value else "state(s) compared by object id and type only"
            n = max(in_log[name], in_snapshot[name])
            lines.append(f"snapshot at seq {seq}: {n} {name} {what}: {why[name]}")
        return lines
    raise CorruptLogError(
        f"snapshot at seq {seq} differs from the state the log gives at that seq",
        seq=seq,
        table="memimg_snapshots",
    )


def _verify(store: Store) -> None:
    """Check every checksum, replay the log, and compare each stored snapshot with the replay at its seq.

    Each snapshot is loaded into a graph configured like the replay's (same
    classes, upgraders, stand-ins), so both are compared in one schema even
    across a migration. What stand-ins (or classes lacking an upgrader)
    cannot bring into one schema is compared by id and type only, reported,
    and the replay goes on from that snapshot (see :func:`_unreadable`).
    """
    snaps = sorted(store.snapshots())
    head = store.head()
    for info in snaps:
        if info.seq > head:
            raise snapshot_past_head(store.description, info.seq, head)
        snap = SnapshotRow(*store.read_snapshot(info.seq))
        verify_snapshot(snap)
        split_snapshot(snap.payload, info.seq)  # laid out as its header says, with its own seq and root
    _generic.prepare(store, frozenset(), whole=True)  # stand-ins with every field any declaration lists
    first = store.first_seq()
    reader = _reader()
    expected = 1
    if first > 1:
        start = [s for s in snaps if s.seq + 1 >= first]
        if not start:
            raise CorruptLogError(
                f"events before seq {first} were dropped and no snapshot covers them", seq=1, table=""
            )
        reader = _stored_snapshot(store, start[0].seq)
        expected = start[0].seq + 1
    origin = "from nothing" if expected == 1 else f"from the snapshot at seq {expected - 1}"
    since = expected - 1
    checked = 0
    unchecked: list[str] = []
    resumed: list[int] = []
    rows = iter(with_progress(store.read(after=expected - 1), head - expected + 1, "verify"))
    snapshot_seqs = {s.seq for s in snaps if s.seq >= expected}
    for seq in sorted(snapshot_seqs | {head}):
        expected, _ = fold(_until(rows, seq), reader, expected=expected, where=store.description)
        if seq not in snapshot_seqs:
            continue
        stored = _stored_snapshot(store, seq)
        left = _compare(reader, stored, seq)
        if left is None:
            checked += 1
        else:
            # go on from the snapshot: the events after it were written over its states
            unchecked += left
            resumed.append(seq)
            reader = stored
    replayed = expected - 1 - since
    click.echo(
        f"ok: {len(snaps)} snapshot checksum(s) and {replayed} event(s) verified; replayed {origin} to seq "
        f"{expected - 1}; {checked} snapshot(s) equal the replayed state at their seq"
        + (
            f"; {len(resumed)} equal in what could be compared (below), the replay going on from them"
            if resumed
            else ""
        )
    )
    for line in unchecked:
        click.echo(f"  {line}")


def _until(rows: Iterator[Any], last: int) -> Iterator[Any]:
    """The rows of *rows* up to seq *last* (the row after it is left unread)."""
    if last <= 0:
        return
    for row in rows:
        yield row
        if row[0] >= last:
            return
