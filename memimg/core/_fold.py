"""The fold: the one replay loop, ``state = fold(events)``.

Every reader of the log folds its rows through :func:`fold`: opening an
image, a running image catching up with other processes, ``memimg.replay``,
``memimg verify`` (and the history functions). For every row, in seq order,
it checks that the seq follows the last (a gap is a
:class:`~memimg.CorruptLogError` naming the missing seq), that its checksum
holds (unless the rows were checked already), decodes it (creating the
objects it introduces, reading old states through the schema) and applies
it to the table.

Applying is the table's raw builtin operations, so replay runs no user
code. The commonest event -- a field set on an entity whose schema is
current -- is decoded and applied inline; every other goes through the
reader and its kind.

A caller that must apply whole transactions at once (a running image
publishing another process's commit to its readers) passes ``on_tx``: rows
are then decoded and handed over one transaction at a time instead of being
applied here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any, Final

import orjson

from memimg._errors import CorruptLogError, MemimgError
from memimg.core import _compiled, _schema
from memimg.core._gone import Gone
from memimg.core._kinds import KINDS, TARGETLESS, Kind
from memimg.core._meta import META_KIND, check_row
from memimg.core._reader import Pending, Reader, at_seq
from memimg.core._rows import PACK_COLUMNS, EventRow, verify_event

#: The kinds of the event a snapshot is the state after (``gc`` before memimg 0.3).
SNAPSHOT_KINDS: Final = frozenset({"snapshot", "gc"})

__all__ = ["RUN", "apply_stored", "fold", "missing"]

_OBJ_SET: Final = KINDS["obj.set"]
_NO_SETTERS: Final[dict[str, Any]] = {}
_crc32: Final = zlib.crc32
_loads: Final = orjson.loads

#: What :func:`fold` hands a transaction to instead of applying it: its rows, each with the event it
#: holds (``None`` for one that has nothing to apply: an event on an object of a removed type).
OnTx = Callable[[list[tuple[Pending | None, EventRow]]], None]

#: What :func:`fold` tells of the transactions it applied itself (see its ``direct``): the seq of the last, the
#: largest commit time among them, and the exception that stopped it while a row's outcome is unknown (``None``:
#: none) -- it must raise then.
Direct = Callable[[int, int, BaseException | None], None]
#: (what the compiled catch-up starts its largest commit time from: below any)
_NO_TS: Final = -(2**63)


#: The most single-row transactions :func:`fold` hands to ``on_run`` in one call.
RUN: Final = 1000

#: the kinds the fold notes as it passes: a snapshot's (where the log declares every type again) and tx.meta
_NOTED: Final = frozenset({*SNAPSHOT_KINDS, META_KIND})


def missing(expected: int, found: int, where: str, table: str = "memimg_events") -> CorruptLogError:
    """The error for a gap in the log: *expected* is missing, the next row is *found*.

    *table* names where the rows came from (empty for events not read from a store).
    """
    return CorruptLogError(
        f"event seq {expected} is missing from {where} (the next is {found})", seq=expected, table=table
    )


def fold(
    rows: Iterable[Any],
    reader: Reader,
    *,
    expected: int,
    where: str = "the log",
    table: str = "memimg_events",
    checked: bool = False,
    progress: Callable[[int], None] | None = None,
    on_tx: OnTx | None = None,
    on_run: OnTx | None = None,
    direct: Direct | None = None,
    watch: AbstractSet[Any] = frozenset(),
) -> tuple[int, int]:
    """Fold stored event *rows* (seq ``expected`` on) into *reader*'s table.

    Args:
        rows: event rows (any sequences of the seven columns), in seq order.
        reader: decodes them; its table is the state they are applied to.
        expected: the seq the first row must have.
        where: the log, for messages (a store's description).
        table: the table the rows come from, for errors (empty: not a store's).
        checked: the rows' checksums were verified already (``memimg.replay``
            of :class:`~memimg.Event` records).
        progress: called with the seq every 10,000 rows.
        on_tx: hand each transaction's decoded events over instead of
            applying them (see the module docstring).
        on_run: with *on_tx*, hand consecutive transactions that are each
            one ``obj.set`` row over together, in one call (up to
            :data:`RUN` rows): each row is then a transaction of its own.
        direct: with *on_tx*, and the compiled accelerator loaded: those
            transactions (one ``obj.set`` row of the fast path each) are
            applied here instead, with the table's setters (as
            ``ObjectTable.field_set`` applies them), each run then told to
            *direct* -- for a caller with nothing else to do for them (see
            ``Engine.catch_up``). Without the accelerator they go to
            *on_run*.
        watch: with *direct*, a set (the image's open transactions) that
            must stay empty for the compiled loop to apply a row: once it
            is not (code a row ran opened one), the rows go to *on_run*.

    Returns:
        The next expected seq, and the seq of the last snapshot's event (0 if none).

    Raises:
        CorruptLogError: a seq is missing, or a row is corrupt or does not apply.
        SchemaError: an upgrader failed on a state a row holds.
    """
    if on_tx is not None:
        if checked or progress is not None:
            direct = None  # (the compiled loop checks every checksum, and reports no progress)
        return _fold_transactions(
            rows, reader, expected, (where, table), checked, progress, on_tx, on_run, direct, watch
        )
    return _fold_rows(rows, reader, expected, (where, table), checked, progress)


def _fold_rows(
    rows: Iterable[Any],
    reader: Reader,
    expected: int,
    where: tuple[str, str],
    checked: bool,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Rows applied one by one: the recovery hot path, measured by ``python -m benchmarks`` (recovery).

    The commonest row -- a field set on an entity whose schema is current --
    costs one pass of this loop and no call of memimg's own: its checksum
    computed inline (the two CRC-32 calls :func:`event_checksum` makes),
    its payload parsed once, the raw slot setter of the field called
    directly. Anything else (an unknown kind, a damaged row, objects the
    event creates, a field to adapt, any other kind) leaves the fast path
    for :func:`_slow_row`, which reads the row the long way and names what
    is wrong. With the compiled accelerator (:mod:`memimg.core._compiled`),
    runs of fast-path rows are folded in C, which hands every other row back
    to this loop.
    """
    objects = reader.table.objects
    fast_fields = reader.fast_fields
    crc, pack, loads, set_code = _crc32, PACK_COLUMNS, orjson.loads, _OBJ_SET.code
    dec = reader.decode
    last_snapshot = 0
    compiled = _compiled.fold_sets
    left = iter(rows)
    while True:
        batch: Iterable[Any] = left
        if compiled is not None:  # the same fast path, compiled: it hands back any other row, read below
            got = compiled(left, expected, objects, fast_fields, set_code, checked, progress is not None, dec, loads)
            if isinstance(got, int):  # the rows ended
                return got, last_snapshot
            expected, row = got
            batch = (row,)
        for row in batch:
            seq, tx, ts, kind, target, payload, checksum = row
            if seq != expected:
                raise missing(expected, seq, *where)
            expected += 1
            if progress is not None and not seq % 10_000:
                progress(seq)
            intact = checked
            if kind == "obj.set":
                try:
                    intact = checked or crc(payload, crc(pack(seq, tx, ts, target), set_code)) == checksum
                    if intact:
                        (pair,) = loads(payload)  # one [field, value] pair: no objects created, no types declared
                        if type(pair) is list and target > 0:  # an object id: never counted from the end
                            name, v = pair
                            obj = objects[target]
                            # KeyError: not a current-schema entity's field (a field to adapt, no such object...)
                            fast_fields[type(obj)][name](obj, v if type(v) is not list else dec(v))
                            continue
                except Exception:
                    pass  # read again the long way, which names what is wrong
            if _slow_row(row, reader, intact):
                last_snapshot = seq
        if compiled is None:
            return expected, last_snapshot


def _slow_row(row: Any, reader: Reader, intact: bool) -> bool:
    """Fold one row the long way (see :func:`_fold_rows`); whether it is a snapshot's event.

    *intact*: its checksum was found to hold already.
    """
    seq, _, _, kind, target, payload, _ = row
    if not intact:
        verify_event(EventRow(*row))
    objects = reader.table.objects
    try:
        p = orjson.loads(payload)
        k = KINDS[kind]
        obj = objects[target] if target > 0 else None  # below 1: no object (decode_row names the row)
        simple = len(p) == 1 and (obj is not None or (not target and kind in TARGETLESS)) and type(obj) is not Gone
        if simple:
            decoder = reader.arg_decoders.get(k.params)
            args = decoder(p[0]) if decoder is not None else reader.decode_args(k, p[0])
    except Exception:
        simple = False  # read again the long way, which names what is wrong
        p = None
    snapshot = False
    if kind in _NOTED:  # one look-up for both, off the path of the other kinds
        if kind == META_KIND:
            check_row(EventRow(*row))  # as img.events() reads it
        else:
            snapshot = True
    if not simple:
        pending = reader.decode_row(kind, target, payload, seq, p)
        if pending is not None:
            apply_stored(reader, pending, seq, target)
        return snapshot
    if k.conflict.field and args[0] not in reader.fast_fields.get(type(obj), _NO_SETTERS):
        try:
            adapted = reader.adapt_field_event(k, obj, args)
        except MemimgError as err:
            _schema.locate(err, seq, f"event seq {seq} ({kind})")
            raise
        if adapted is None:
            return snapshot
        k, obj, args = adapted
    apply_stored(reader, (k, obj, args), seq, target)
    return snapshot


def _fold_transactions(
    rows: Iterable[Any],
    reader: Reader,
    expected: int,
    where: tuple[str, str],
    checked: bool,
    progress: Callable[[int], None] | None,
    on_tx: OnTx,
    on_run: OnTx | None,
    direct: Direct | None,
    watch: AbstractSet[Any],
) -> tuple[int, int]:
    """Rows decoded and handed over one transaction at a time (runs of single field sets together, to
    *on_run* if given): a running image catching up with other processes' commits, measured by ``python -m
    benchmarks`` (writers). An ``obj.set`` row's checksum is computed inline, as :func:`_fold_rows` does;
    any other row's by :func:`verify_event`, which also names a damaged one.

    With *direct* and the compiled accelerator, an ``obj.set`` row that
    begins a transaction, once read and checked here as any row is (the
    transaction before it then whole and handed over, and the run with it:
    transactions are applied in the log's order), goes to the compiled
    loop, which applies it and the rows after it while each is a whole
    transaction of one field set of the fast path, and hands back the row
    it stopped at (and the one after it, if it read it): both read here
    then, as any other.
    """
    catch = _compiled.catch_sets if direct is not None else None
    objects, fast_fields, setters, dec = reader.table.objects, reader.fast_fields, reader.table.setters, reader.decode
    back: list[Any] = []  # rows the compiled loop read and handed back, read here first (a stack)
    stopped: Any = None  # the row it stopped at (read here, not given to it again)
    batch: list[EventRow] = []  # the transaction being read
    run: list[EventRow] = []  # whole transactions of one obj.set row each, read and not handed over yet
    last_snapshot = 0
    crc, pack, set_code = _crc32, PACK_COLUMNS, _OBJ_SET.code

    def settle() -> None:
        """Hand the run over: at its size, before a transaction of another shape, at the end, and before an
        error is raised at a row (reading it failed, or it is damaged)."""
        if run:
            _hand_over(run, reader, on_run, alone=True)  # type: ignore[arg-type]
            run.clear()

    def whole(tx_rows: list[EventRow]) -> None:
        """A transaction read in full: kept in the run, or handed over (after the run, which goes first)."""
        # (only obj.set rows in a run: Engine._apply_remote(alone=True) looks for no other kind)
        if on_run is not None and len(tx_rows) == 1 and tx_rows[0].kind == "obj.set":
            run.extend(tx_rows)
            if len(run) >= RUN:
                settle()
            return
        settle()
        _hand_over(tx_rows, reader, on_tx)

    rows = iter(rows)
    while True:
        if back:
            row = back.pop()
        else:
            try:
                row = next(rows, None)
            except BaseException:  # a read that failed partway (the store names what)
                settle()
                raise
        if row is None:
            break
        try:
            r = row if type(row) is EventRow else EventRow(*row)  # a refused append's rows are EventRows already
        except TypeError:  # not a row of seven columns
            settle()
            raise
        seq, tx, ts, kind, target, payload, checksum = r
        if seq != expected:
            settle()
            raise missing(expected, seq, *where)
        expected += 1
        if not checked:
            try:
                intact = kind == "obj.set" and crc(payload, crc(pack(seq, tx, ts, target), set_code)) == checksum
            except Exception:
                intact = False
            if not intact:
                try:
                    verify_event(r)  # computed again: raises naming the row unless it holds
                except CorruptLogError:
                    settle()
                    raise
        if progress is not None and not seq % 10_000:
            progress(seq)
        if batch and tx != batch[0].tx:
            whole(batch)
            batch = []
        if catch is not None and not batch and not back and kind == "obj.set" and row is not stopped and not watch:
            # r begins a transaction, checked as every row is: the compiled loop from it on
            assert direct is not None
            settle()  # (the transactions before it applied first: the log's order)
            kept: list[int] = [seq, _NO_TS]  # (the loop keeps what it applied here, row by row)
            told = False
            try:
                expected, latest, stopped, after, err, doubt = catch(
                    r, rows, seq, objects, fast_fields, setters, set_code, dec, _loads, kept, watch
                )
                if expected != seq or doubt:
                    direct(expected - 1, latest, err if doubt else None)
                told = True
            except BaseException:  # an interrupt seen once the loop returned, or the image closed for a doubt
                if not told and kept[0] != seq:
                    direct(kept[0] - 1, kept[1], None)  # what it applied, told (again: the same)
                raise
            if err is not None:
                raise err  # a read that failed partway (the row read last not applied)
            if stopped is None:
                break
            if after is not None:
                back.append(after)
            back.append(stopped)  # read again here, first (with its seq: ``expected``)
            continue
        batch.append(r)
        if kind in _NOTED:
            if kind == META_KIND:
                check_row(r)
            else:
                last_snapshot = seq
    if batch:
        whole(batch)
    settle()
    return expected, last_snapshot


def _hand_over(batch: list[EventRow], reader: Reader, on_tx: OnTx, alone: bool = False) -> None:
    """Decode one whole transaction's rows and hand them over; *alone*: each row is a whole transaction of
    its own (a run, see :func:`fold`'s ``on_run``).

    Rows are decoded only once the whole transaction is read: a read that
    fails partway (a dropped connection, a damaged row) leaves nothing of
    it behind, and the next read starts the transaction again. A decoding
    that fails partway un-places the objects it made; in a run, the
    transactions before the one that fails are handed over first.

    The commonest row, a field set on an entity whose schema is current, is
    decoded inline (as :func:`_fold_rows` applies it); anything else, or
    anything unexpected about it, by :meth:`Reader.decode_row`, which names
    what is wrong.
    """
    table = reader.table
    objects, fast_fields, dec = table.objects, reader.fast_fields, reader.decode
    size = len(objects)
    decoded: list[tuple[Pending | None, EventRow]] = []
    try:
        for r in batch:
            if alone:
                size = len(objects)  # what this transaction's decoding makes
            if r.kind == "obj.set":
                try:
                    (pair,) = _loads(r.payload)
                    target = r.target
                    if type(pair) is list and type(target) is int and 0 < target < len(objects):
                        name, v = pair
                        obj = objects[target]
                        if name in fast_fields[type(obj)]:  # KeyError: not a current-schema entity (Gone...)
                            decoded.append(((_OBJ_SET, obj, (name, v if type(v) is not list else dec(v))), r))
                            continue
                except Exception:
                    pass  # read again the long way, which names what is wrong
            decoded.append((reader.decode_row(r.kind, r.target, r.payload, r.seq), r))
    except BaseException:
        table.unplace(size)
        if alone and decoded:
            on_tx(decoded)  # the whole transactions before the one that failed
        raise
    on_tx(decoded)


def apply_stored(reader: Reader, pending: Pending, seq: int, target: int) -> None:
    """Apply a stored event to *reader*'s table; a failure means the log is not what was written.

    Raises:
        CorruptLogError: the event does not apply to the state before it.
    """
    k: Kind
    k, obj, args = pending
    try:
        k.apply(reader.table, obj, *args)
    except CorruptLogError as err:
        if err.seq is not None:
            raise
        raise at_seq(err, seq, f"{k.name} on object {target}") from err
    except MemimgError:
        raise
    except Exception as err:
        raise CorruptLogError(
            f"event seq {seq} ({k.name} on object {target}) does not apply to the state before it: {err}",
            seq=seq,
            table="memimg_events",
        ) from err
