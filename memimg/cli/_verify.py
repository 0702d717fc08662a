"""``memimg verify``: every checksum, the whole log replayed, every snapshot compared with it.

Each stored snapshot is compared with the state the log gives at its seq.
Both sides are read the same way. A snapshot that declares every type as
the replay's classes do -- no migration since it was written -- reads as
stored, so it is compared as stored: each of its states, a chunk at a time,
with the replayed object of its id encoded as a snapshot stores it (one
graph in memory, never a second). Any other snapshot is loaded through the
same classes, upgraders and stand-ins as the replay, so a snapshot written
in an older schema, or a newer one (by ``memimg.migrate``), is compared
with the replay in one schema. What stand-ins (or classes lacking an
upgrader) cannot bring into one schema is compared by id and type only,
reported, and the replay goes on from that snapshot (see :func:`_unreadable`).
"""

from __future__ import annotations

import gc
import operator
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import click
import orjson

import memimg
from memimg import _api
from memimg._errors import CorruptLogError, MemimgError
from memimg.cli._main import cli, open_store, protection_option, url_options, with_progress
from memimg.core import _types, _values
from memimg.core._codec import Codec
from memimg.core._fold import fold
from memimg.core._gc import paused_gc
from memimg.core._gone import Gone
from memimg.core._protect import read_settings
from memimg.core._reader import Reader, load_states
from memimg.core._records import declaration, describe_table, state_writer
from memimg.core._rows import SnapshotRow, verify_snapshot
from memimg.core._snapshot import load_snapshot, split_snapshot
from memimg.core._snapshotter import SnapshotWriter
from memimg.core._table import ObjectTable
from memimg.image import _generic
from memimg.image._recovery import snapshot_past_head
from memimg.model import SHELL
from memimg.stores._pending import PENDING_KEY, pending_problem
from memimg.stores._protected import ProtectedStore
from memimg.stores._protocol import SnapshotInfo, Store

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


def _canonical_state(name: str, state: Any, masks: _Masks = _NO_MASKS, hits: Counter[str] | None = None) -> Any:
    """An object's encoded *state* (of stored type *name*) in a form that does not depend on the writer's hash seed.

    The states of types in ``masks[0]`` are left out, and so are the names of
    types in ``masks[1]`` (each counted in *hits*).
    """
    hits = Counter() if hits is None else hits
    if name in masks[1] or name in masks[0]:
        hits[name] += 1
        return None
    if type(state) is dict:
        return {k: _canonical_value(i, masks, hits) for k, i in state.items()}
    if name == "dict":  # non-str keys: [key, value] pairs
        return [[_canonical_value(k, masks, hits), _canonical_value(i, masks, hits)] for k, i in state]
    state = [_canonical_value(i, masks, hits) for i in state]
    if name == "set":
        state.sort(key=orjson.dumps)
    return state


def _same_json(a: Any, b: Any) -> bool:
    """Whether *a* and *b* are the same JSON (``1``, ``1.0`` and ``true`` differ, as stored)."""
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


def _same_records(
    mine: dict[str, Any],
    theirs: dict[str, Any],
    masks: _Masks = _NO_MASKS,
    hits: tuple[Counter[str], Counter[str]] | None = None,
) -> bool:
    """Whether two snapshot-format descriptions hold the same root and objects, compared one object at a time
    in id order (their walks meet the members of a set in hash order), through :func:`_canonical_state`."""
    if mine["root"] != theirs["root"] or len(mine["objects"]) != len(theirs["objects"]):
        return False
    mine_hits, their_hits = hits if hits is not None else (Counter(), Counter())
    by_oid = operator.itemgetter(0)
    for (oid, name, state), (their_oid, their_name, their_state) in zip(
        sorted(mine["objects"], key=by_oid), sorted(theirs["objects"], key=by_oid), strict=True
    ):
        if their_oid != oid:
            return False
        if name in masks[1] and their_name in masks[1]:
            mine_hits[name] += 1
            their_hits[their_name] += 1
            continue
        if their_name != name or not _same_json(
            _canonical_state(name, state, masks, mine_hits), _canonical_state(name, their_state, masks, their_hits)
        ):
            return False
    return True


@cli.command()
@click.argument("target")
@click.option(
    "--expect-head",
    "expect_head",
    type=int,
    default=None,
    metavar="SEQ",
    help="Fail unless the log reaches seq SEQ (recorded earlier: catches the newest rows cut off).",
)
@click.option(
    "--expect-mac",
    "expect_mac",
    default=None,
    metavar="HEX",
    help="With --expect-head and an integrity key: fail unless event SEQ's MAC is HEX (as `memimg info` printed).",
)
def verify(target: str, expect_head: int | None, expect_mac: str | None) -> None:
    """Check every checksum, replay the whole log, and compare each snapshot with the replay.

    With an integrity key (--integrity-key-env NAME, or MEMIMG_INTEGRITY_KEY)
    the chain of MACs is checked first: an edited, inserted, deleted or
    reordered row fails it. A chain cannot show that its newest rows were
    cut off: --expect-head SEQ (and --expect-mac, the MAC `memimg info`
    printed for that seq) can.
    """
    if expect_mac is not None and expect_head is None:
        raise click.UsageError("--expect-mac needs --expect-head (the seq whose MAC it is)")
    macs_only = _macs_only_store(target)
    store = open_store(target, readonly=True) if macs_only is None else macs_only
    try:
        untrusted = pending_problem(store.inner, store.protection) if isinstance(store, ProtectedStore) else None
        if untrusted is not None:
            click.echo(f"memimg_meta: the {PENDING_KEY!r} entry is not trusted (fails its MAC); the rows are checked")
        _verify_rows(store, macs_only is not None, expect_head, expect_mac)
        if untrusted is not None:
            raise untrusted
    finally:
        store.close()


def _verify_rows(store: Store, macs_only: bool, expect_head: int | None, expect_mac: str | None) -> None:
    """The checks of ``memimg verify`` on the open *store* (*macs_only*: opened with the integrity key alone)."""
    if isinstance(store, ProtectedStore) and store.protection.chained:
        head, mac = store.check_chain()
        click.echo(
            f"integrity chain: ok, {head - store.first_seq() + 1} event(s) and every snapshot; "
            f"head seq {head} MAC {mac.hex()}"
        )
    elif expect_mac is not None:
        raise MemimgError("--expect-mac needs the log's integrity key (--integrity-key-env NAME)")
    if expect_head is not None:
        _expect(store, expect_head, expect_mac)
    if macs_only:
        click.echo(
            "contents: not decrypted (no encryption key given): every row's MAC and the chain were checked, "
            "the rows were not decoded, replayed or compared with the snapshots"
        )
        return
    with paused_gc():  # as an open does: the replay and the comparison make no cyclic garbage to collect
        _verify(store)


def _macs_only_store(target: str) -> ProtectedStore | None:
    """The log at *target* opened to check MACs only, when it is encrypted and only its integrity key is given.

    The chain's MACs are over the stored (encrypted) bytes, so the
    integrity key alone checks them. None: the usual open applies.
    """
    protection = protection_option()
    if protection is None or protection.encrypted or not protection.chained:
        return None
    if "://" not in target and target != ":memory:" and not os.path.exists(target):
        return None
    store = _api.plain_store(target, sync="normal", readonly=True, busy_timeout=10.0, **url_options(target))
    settings = read_settings(store.meta())
    if not settings or not settings.get("key_id") or settings.get("integrity_key_id") != protection.integrity_id:
        store.close()
        return None  # not encrypted, or not this integrity key: the usual open says what is wrong
    return ProtectedStore(store, protection.checking_macs_only().for_log(settings.get("log_id")))


def _expect(store: Store, seq: int, mac: str | None) -> None:
    """Fail unless *store* reaches *seq* and (with *mac*) event *seq* has that MAC."""
    head = store.head()
    if head < seq:
        raise CorruptLogError(
            f"{store.description!r} ends at seq {head}, before the expected seq {seq}: its newest events were "
            "removed (or this is an older copy of the log); restore it from a backup",
            seq=head + 1,
            table="memimg_events",
        )
    if mac is not None:
        assert isinstance(store, ProtectedStore)
        stored = store._anchor(seq, fresh=True)
        if stored is None or stored.hex() != mac.strip().lower():
            raise CorruptLogError(
                f"event seq {seq} of {store.description!r} does not have the MAC recorded for it: the log was "
                "rewritten from there (an erase re-chains the rows after the first it rewrites: record the head "
                "MAC again after one); restore it from a backup",
                seq=seq,
                table="memimg_events",
            )
    click.echo(f"expected head: ok, the log reaches seq {seq}" + (" with the MAC recorded" if mac else ""))


def _reader() -> Reader:
    """A reader of any log: the classes loaded, and stand-ins for the types they do not claim."""
    return Reader(ObjectTable(SHELL, Codec(memimg.converter, SHELL)), stand_ins=_generic.make_stand_in)


def _stored_snapshot(store: Store, seq: int, readers: list[Reader] | None = None) -> Reader:
    """The snapshot stored at *seq*, read as the replay reads the log (same classes, upgraders, stand-ins).

    The reader is added to *readers* before it reads (:func:`_replay` looks at what it met, even if it fails).
    """
    reader = _reader()
    if readers is not None:
        readers.append(reader)
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


class _Unlike(Exception):
    """The replayed graph cannot be compared with a snapshot as stored."""


def _lines(payload: bytes) -> Iterator[memoryview]:
    """The lines of a stored snapshot after its header, as views of *payload* (no copies)."""
    view = memoryview(payload)
    start = payload.find(b"\n") + 1
    while start:
        end = payload.find(b"\n", start)
        yield view[start:end] if end >= 0 else view[start:]
        start = end + 1


def _written_alike(replayed: Reader, payload: bytes, seq: int) -> bool:
    """Whether a snapshot of the replayed state at *seq*, written now, is the stored *payload* byte for byte.

    The replayed graph is walked and encoded as the image writes a snapshot
    (:class:`~memimg.core._snapshotter.SnapshotWriter`), a batch of objects
    at a time; each line it completes (a chunk's directory, then its states)
    is compared with the stored line there, and dropped. Equal bytes hold
    equal states, so ``True`` settles it; ``False`` only means "compare
    object by object" (:func:`_equal_as_stored`): a writer in another
    process walks sets in another order, an older memimg wrote another
    layout, a replay filled in objects the log gives no id.
    """
    writer = SnapshotWriter(replayed.table, seq)
    out, stored = writer.out, _lines(payload)

    def alike() -> bool:
        for line in out:
            theirs = next(stored, None)
            if theirs is None or theirs != line:
                return False
        out.clear()
        return True

    try:
        while not writer.step(0.0):  # one batch at a time
            if not alike():
                return False
        mine = writer.finish()[0]
    except (TypeError, AttributeError, KeyError, MemimgError):  # an object the replay gave no id, a type unknown
        return False
    end = payload.find(b"\n")
    header = payload if end < 0 else payload[:end]
    return writer.abandoned is None and alike() and next(stored, None) is None and mine.partition(b"\n")[0] == header


def _equal_as_stored(replayed: Reader, payload: bytes, seq: int) -> bool:
    """Whether the snapshot stored at *seq* (*payload*) holds exactly the replayed state: the quick way.

    First as a whole (:func:`_written_alike`); else one chunk at a time,
    each stored state compared with the replayed object of its id, encoded
    as a snapshot stores it. Either way the stored snapshot is never loaded
    into a second graph. That is right only where the snapshot declares every type
    as the replayed classes do (a snapshot written without a migration since);
    ``False`` means "compare the long way" (:func:`_compare`), not "they differ".
    """
    if _written_alike(replayed, payload, seq):
        return True
    header, chunks = split_snapshot(payload, seq)
    table = replayed.table
    if header["format"] != 2 or header["root"] != table.root_oid or not table.root_oid:
        return False
    declared, names, objects = header["types"], header["names"], table.objects
    held, referenced = bytearray(len(objects)), bytearray(len(objects))
    agreed: set[int] = set()

    def ref(obj: Any) -> int:
        oid: int | None = obj._mi_oid
        if oid is None:  # filled in by the replay where the log stores no value
            raise _Unlike
        referenced[oid] = 1
        return oid

    def declare(info: _types.TypeInfo) -> None:
        if id(info) not in agreed:
            if declared.get(info.name) != declaration(info):
                raise _Unlike
            agreed.add(id(info))

    write = state_writer(table.codec, ref, declare)
    dumps = orjson.dumps
    for i, (oids, kinds, line) in enumerate(chunks):
        chunks[i] = ([], [], b"")  # compared: not needed any more
        for oid, k, state in zip(oids, kinds, load_states(line, len(oids), i, seq), strict=True):
            obj = objects[oid] if 0 < oid < len(objects) else None
            if obj is None or type(obj) is Gone:
                return False
            try:
                name, mine = write(obj)
            except _Unlike:
                return False
            if name != names[k] or (
                dumps(mine) != dumps(state)
                and not _same_json(_canonical_state(name, mine), _canonical_state(name, state))
            ):
                return False
            held[oid] = 1
    # every object the replayed root reaches is held: the root, and all that held objects refer to
    return all(h for r, h in zip(referenced, held, strict=True) if r)


def _compare(replayed: Reader, stored: Reader, seq: int) -> list[str] | None:
    """Compare a stored snapshot with the replayed state at its seq.

    Returns ``None`` if they are equal, else what could not be compared
    (one line per type); what could be compared is equal.

    Raises:
        CorruptLogError: they differ in what could be compared.
    """
    mine, theirs = describe_table(replayed.table, seq), describe_table(stored.table, seq)
    if _same_records(mine, theirs):
        return None
    masks, why = _unreadable(replayed, stored)
    in_log: Counter[str] = Counter()
    in_snapshot: Counter[str] = Counter()
    if (masks[0] or masks[1]) and _same_records(mine, theirs, masks, (in_log, in_snapshot)):
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


class _Outgrown(Exception):
    """A declaration the replay met does not fit the stand-in made from the first one of its type."""


def _outgrown(readers: Iterable[Reader]) -> bool:
    """Whether *readers* met a declaration of a type read by a stand-in that the stand-in does not fit:
    fields it lacks, or another version (:func:`memimg.core._schema.plan_for` plans such states as not
    readable as stored)."""
    return any(p.info is not None and p.info.stand_in and not p.identity for r in readers for p in r.plans_read())


class _Found:
    """What one replay of the log found."""

    def __init__(self, since: int) -> None:
        self.since = since  #: the seq the replay started after (0: from nothing)
        self.last = since  #: the last seq replayed
        self.checked = 0  #: snapshots equal to the replayed state
        self.unchecked: list[str] = []  #: what could not be compared, one line per type and snapshot
        self.resumed: list[int] = []  #: the snapshots the replay went on from


def _verify(store: Store) -> None:
    """Check every checksum, replay the log, and compare each stored snapshot with the replay at its seq.

    The log is read once, its stand-ins (for the types no class claims)
    made as the replay meets their declarations. A log whose declarations
    of one such type differ -- a later version of a class added fields --
    is read once more first, for every field they list (see
    :func:`_replay`). The replay holds one graph, and a stored snapshot's
    bytes while it is compared.
    """
    snaps = sorted(store.snapshots())
    head = store.head()
    for info in snaps:
        if info.seq > head:
            raise snapshot_past_head(store.description, info.seq, head)
        _check_snapshot(store, info.seq)
    _types.forget_stand_ins()  # made from this log's declarations, not from another's read before
    try:
        found = _replay(store, snaps, head, watch=True)
    except _Outgrown:
        gc.collect()  # the graph given up holds cycles
        _generic.prepare(store, frozenset(), whole=True)  # stand-ins with every field any declaration lists
        found = _replay(store, snaps, head, watch=False)
    origin = "from nothing" if not found.since else f"from the snapshot at seq {found.since}"
    resumed = found.resumed
    click.echo(
        f"ok: {len(snaps)} snapshot checksum(s) and {found.last - found.since} event(s) verified; replayed "
        f"{origin} to seq {found.last}; {found.checked} snapshot(s) equal the replayed state at their seq"
        + (
            f"; {len(resumed)} equal in what could be compared (below), the replay going on from them"
            if resumed
            else ""
        )
    )
    for line in found.unchecked:
        click.echo(f"  {line}")


def _replay(store: Store, snaps: list[SnapshotInfo], head: int, *, watch: bool) -> _Found:
    """Replay the log to *head*, comparing each snapshot in *snaps* with the replay at its seq.

    A snapshot that declares its types as the replay's classes do is
    compared with the replay as stored, a chunk at a time
    (:func:`_equal_as_stored`); any other is loaded into a graph configured
    like the replay's (same classes, upgraders, stand-ins), so both are
    compared in one schema even across a migration. What stand-ins (or
    classes lacking an upgrader) cannot bring into one schema is compared by
    id and type only, reported, and the replay goes on from that snapshot
    (see :func:`_unreadable`).

    With *watch*, the stand-ins are made from the first declaration of each
    type the replay meets; a later one they do not fit (:func:`_outgrown`)
    raises :class:`_Outgrown` before anything is compared or reported, for
    the caller to make them from every declaration and replay again.
    """
    readers: list[Reader] = []
    try:
        return _replay_into(store, snaps, head, readers, watch)
    except MemimgError as err:
        if watch and _outgrown(readers):
            raise _Outgrown from err
        raise


def _replay_into(store: Store, snaps: list[SnapshotInfo], head: int, readers: list[Reader], watch: bool) -> _Found:
    """:func:`_replay`, each reader it makes added to *readers*."""

    def fits(reader: Reader) -> None:
        if watch and _outgrown([reader]):
            raise _Outgrown

    reader, expected = _start(store, snaps, readers)
    found = _Found(expected - 1)
    rows = iter(with_progress(store.read(after=expected - 1), head - expected + 1, "verify"))
    snapshot_seqs = {s.seq for s in snaps if s.seq >= expected}
    for seq in sorted(snapshot_seqs | {head}):
        # read before the replay grows the graph to that seq: the store's passing copies of the payload
        # are not on top of the whole graph
        payload = store.read_snapshot(seq).payload if seq in snapshot_seqs else None
        # the rows up to that seq, and not one more: the fold refuses any row but the next seq
        expected, _ = fold(islice(rows, seq - expected + 1), reader, expected=expected, where=store.description)
        fits(reader)
        if payload is None:
            continue
        if _equal_as_stored(reader, payload, seq):
            found.checked += 1
            continue
        del payload
        stored = _stored_snapshot(store, seq, readers)
        fits(stored)
        left = _compare(reader, stored, seq)
        if left is None:
            found.checked += 1
        else:
            # go on from the snapshot: the events after it were written over its states
            found.unchecked += left
            found.resumed.append(seq)
            reader = stored
        del stored
        gc.collect()  # the graph dropped (one of two) holds cycles: collected now, never two held for long
    found.last = expected - 1
    return found


def _start(store: Store, snaps: list[SnapshotInfo], readers: list[Reader]) -> tuple[Reader, int]:
    """Where the replay starts: from nothing, or (events compacted away) from the oldest snapshot covering them.

    Returns the reader holding that state (added to *readers*) and the seq of the first event to replay.
    """
    first = store.first_seq()
    if first == 1:
        readers.append(_reader())
        return readers[-1], 1
    start = [s for s in snaps if s.seq + 1 >= first]
    if not start:
        raise CorruptLogError(f"events before seq {first} were dropped and no snapshot covers them", seq=1, table="")
    return _stored_snapshot(store, start[0].seq, readers), start[0].seq + 1


def _check_snapshot(store: Store, seq: int) -> None:
    """Check the stored snapshot at *seq*: its checksum, and that it is laid out as its header says."""
    snap = SnapshotRow(*store.read_snapshot(seq))
    verify_snapshot(snap)
    split_snapshot(snap.payload, seq)
