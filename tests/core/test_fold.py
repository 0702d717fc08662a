"""The fold: the one replay loop every reader of the log goes through.

It checks each row's seq (a gap is named), its checksum (unless the rows
were checked already), decodes and applies it; with ``on_tx`` it hands each
transaction over whole instead.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memimg
from memimg.core import _compiled, _fold, _types
from memimg.core._codec import Codec
from memimg.core._fold import fold
from memimg.core._kinds import KINDS
from memimg.core._reader import Reader
from memimg.core._rows import EventRow, event_checksum
from memimg.core._table import ObjectTable
from memimg.model import SHELL
from memimg.model._accel import speedups
from tests.accel import compiled
from tests.models import Box, Node


def _rows() -> list[EventRow]:
    img = memimg.open(root=Box)
    img.root.content = Node(1)
    with img.transaction():
        img.root.content.value = 2
        img.root.other = [1, 2]
    img.root.other.append(3)
    return [EventRow(*r) for r in img.store.read()]


def _reader() -> Reader:
    return Reader(ObjectTable(SHELL, Codec(memimg.converter, SHELL)))


def test_fold_rebuilds_the_graph_and_says_where_it_ended() -> None:
    """Folding every row gives the graph the log describes; it returns the next seq and the last gc's."""
    rows = _rows()
    reader = _reader()
    assert fold(rows, reader, expected=1) == (len(rows) + 1, 0)
    root = reader.table.root
    assert (root.content.value, root.other) == (2, [1, 2, 3])


def test_a_missing_seq_is_named() -> None:
    """A gap in the rows is a CorruptLogError naming the missing seq and the log."""
    rows = _rows()
    del rows[2]
    with pytest.raises(memimg.CorruptLogError, match="event seq 3 is missing from shop.db \\(the next is 4\\)") as info:
        fold(rows, _reader(), expected=1, where="shop.db")
    assert info.value.seq == 3


@pytest.mark.parametrize("on_tx", [False, True], ids=["row by row", "by transaction"])
def test_a_damaged_row_is_refused_unless_the_rows_were_checked(on_tx: bool) -> None:
    """A row whose checksum fails is a CorruptLogError naming its seq; rows marked checked are trusted."""
    rows = _rows()
    rows[1] = rows[1]._replace(checksum=rows[1].checksum ^ 1)
    batches: list[Any] = []
    hand = (lambda batch: batches.append(batch)) if on_tx else None
    with pytest.raises(memimg.CorruptLogError, match="event seq 2 is corrupt") as info:
        fold(rows, _reader(), expected=1, on_tx=hand)
    assert info.value.seq == 2
    assert fold(rows, _reader(), expected=1, checked=True, on_tx=hand)[0] == len(rows) + 1


def test_transactions_are_handed_over_whole() -> None:
    """With on_tx, each transaction's rows come together, each with the event it holds, none applied."""
    rows = _rows()
    batches: list[Any] = []
    reader = _reader()
    fold(rows, reader, expected=1, on_tx=batches.append)
    assert [[r.seq for _, r in batch] for batch in batches] == [[1], [2], [3, 4], [5]]
    assert [[e[0].name for e, _ in batch] for batch in batches][2] == ["obj.set", "obj.set"]
    # decoded -- the objects the events introduce exist -- but not applied: not even the root is set
    assert reader.table.live_count() and reader.table.root is None


class _Broken(Exception):
    pass


def _breaking_after(rows: list[EventRow], n: int) -> Any:
    """*rows*, breaking after *n* of them (a connection lost between two reads of a transaction)."""
    for i, row in enumerate(rows):
        if i == n:
            raise _Broken("server closed the connection")
        yield row


def test_a_read_broken_inside_a_transaction_leaves_nothing_of_it_and_can_be_read_again() -> None:
    """Rows are decoded only once their whole transaction is read: a read that breaks partway made no object."""
    img = memimg.open(root=dict)
    with img.transaction():
        img.root["a"] = Node(1)
        img.root["b"] = Node(2)
        img.root["c"] = Node(3)
    rows = [EventRow(*r) for r in img.store.read()]
    reader = _reader()
    fold(rows[:1], reader, expected=1, on_tx=lambda batch: None)
    size = len(reader.table.objects)
    with pytest.raises(_Broken):
        fold(_breaking_after(rows[1:], 2), reader, expected=2, on_tx=lambda batch: None)
    assert len(reader.table.objects) == size  # nothing of the transaction was decoded
    batches: list[Any] = []
    assert fold(rows[1:], reader, expected=2, on_tx=batches.append)[0] == len(rows) + 1
    assert [[r.seq for _, r in batch] for batch in batches] == [[2, 3, 4]]


def test_a_transaction_whose_decoding_fails_partway_leaves_no_object_of_it() -> None:
    """A row that does not decode un-places the objects the rows before it in its transaction made."""
    img = memimg.open(root=dict)
    with img.transaction():
        img.root["a"] = Node(1)
        img.root["b"] = Node(2)
    rows = [EventRow(*r) for r in img.store.read()]
    reader = _reader()
    fold(rows[:1], reader, expected=1, on_tx=lambda batch: None)
    size = len(reader.table.objects)
    bad = rows[2]._replace(payload=b'[["b", ["r", 99]]]')
    with pytest.raises(memimg.CorruptLogError):
        fold([rows[1], bad], reader, expected=2, checked=True, on_tx=lambda batch: None)
    assert len(reader.table.objects) == size
    assert fold(rows[1:], reader, expected=2, on_tx=lambda batch: None)[0] == len(rows) + 1


def test_a_gap_in_events_not_read_from_a_store_names_no_table() -> None:
    """memimg.replay of Event records names the missing seq, and no table."""
    rows = _rows()
    del rows[2]
    with pytest.raises(memimg.CorruptLogError, match="event seq 3 is missing") as info:
        fold(rows, _reader(), expected=1, where="the events", table="", checked=True)
    assert info.value.table == ""


@pytest.mark.parametrize("ref", [-1, 0, 99])
def test_a_field_set_to_a_reference_to_no_object_is_named_by_seq(ref: int) -> None:
    """A field set (the fold's fast path) to a reference naming no object -- below 1, or past the last -- is a
    CorruptLogError naming the row's seq, even with a checksum that holds: never read as another object."""
    rows = _rows()
    i = next(i for i, r in enumerate(rows) if r.payload == b'[["value",2]]')
    row = rows[i]
    payload = b'[["value",["r",%d]]]' % ref
    rows[i] = row._replace(
        payload=payload, checksum=event_checksum(row.seq, row.tx, row.ts, row.kind, row.target, payload)
    )
    with pytest.raises(memimg.CorruptLogError, match=rf"event seq {row.seq} .*names object {ref}, which") as info:
        fold(rows, _reader(), expected=1)
    assert info.value.seq == row.seq


def _edited(rows: list[EventRow], seq: int, **changes: Any) -> list[EventRow]:
    """*rows* with the row at *seq* changed, its checksum made valid (a crafted row)."""
    row = rows[seq - 1]._replace(**changes)
    rows[seq - 1] = row._replace(checksum=event_checksum(*row[:6]))
    return rows


@pytest.mark.parametrize("on_tx", [False, True], ids=["row by row", "by transaction"])
@pytest.mark.parametrize("target", [-1, -36, 0])
def test_a_row_targeting_an_id_below_1_is_named_by_seq(on_tx: bool, target: int) -> None:
    """An event whose target is 0 or negative (valid checksum) is a CorruptLogError naming its seq and target,
    read one by one (the fast path) or a transaction at a time (live catch-up): never counted from the end."""
    rows = _rows()
    seq = next(r.seq for r in rows if r.payload == b'[["value",2]]')
    rows = _edited(rows, seq, target=target)
    hand = (lambda batch: None) if on_tx else None
    with pytest.raises(memimg.CorruptLogError, match=rf"event seq {seq} .*targets object {target}, ") as info:
        fold(rows, _reader(), expected=1, on_tx=hand)
    assert info.value.seq == seq


@pytest.mark.parametrize(
    "payload",
    [b'["valueX"]', b'[["value",2,"junk"]]', b'["ref"]', b'[["value",["r",true]]]', b'[["value",["r",1,5]]]'],
    ids=["a string", "a third item", "three letters", "a bool reference", "a reference with more"],
)
def test_a_field_set_of_the_wrong_shape_is_named_by_seq(payload: bytes) -> None:
    """A field set whose stored pair (or a reference in it) is not the shape it must be -- a string unpacked
    as a field and a value, items too many, a reference to True (object 1) -- is a CorruptLogError naming its
    seq (valid checksum): never read as another field's value."""
    rows = _rows()
    seq = next(r.seq for r in rows if r.payload == b'[["value",2]]')
    rows = _edited(rows, seq, payload=payload)
    with pytest.raises(memimg.CorruptLogError, match=rf"event seq {seq} .*(not a list of|names object).*backup"):
        fold(rows, _reader(), expected=1)


# -- the compiled loop (memimg.model._speedups.fold_sets) ------------------------------------------------------


def _both(rows: list[EventRow], **options: Any) -> list[tuple[str, Any]]:
    """What folding *rows* gives on the pure-Python loop and on the compiled one: for each, the fold's
    result and the table's fields, or the error raised (its type, message and seq)."""
    outcomes = []
    for fold_sets in (None, speedups.fold_sets):  # type: ignore[union-attr]
        _compiled.fold_sets = fold_sets
        try:
            reader = _reader()
            try:
                end = fold(list(rows), reader, expected=1, **options)
            except Exception as err:
                outcomes.append(("raised", (type(err), str(err), getattr(err, "seq", None))))
                continue
            objs = [o for o in reader.table.objects if isinstance(o, Node)]
            state = [(_plain(o.value), _plain(o.next)) for o in objs]
            outcomes.append(("folded", (end, state)))
        finally:
            _compiled.fold_sets = speedups.fold_sets  # type: ignore[union-attr]
    return outcomes


def _plain(value: Any) -> tuple[type, Any]:
    """*value*, comparable between two graphs: an entity by its id."""
    return type(value), getattr(value, "_mi_oid", value)


def _with_payloads(payloads: list[bytes]) -> list[EventRow]:
    """The rows of :func:`_rows` followed by one field set of the node per payload, each a transaction of its own
    with a checksum that holds."""
    rows = _rows()
    node = next(r.target for r in rows if r.payload == b'[["value",2]]')
    for payload in payloads:
        seq = rows[-1].seq + 1
        ts = rows[-1].ts
        rows.append(
            EventRow(seq, seq, ts, "obj.set", node, payload, event_checksum(seq, seq, ts, "obj.set", node, payload))
        )
    return rows


_ODD_PAYLOADS = [
    b'[["value",-0]]',
    b'[["value",0]]',
    b'[["value",01]]',
    b'[["value",-]]',
    b'[["value",1.5]]',
    b'[["value",1e3]]',
    b'[["value",1E3]]',
    b'[["value",123456789012345678]]',
    b'[["value",1234567890123456789]]',
    b'[["value",-999999999999999999999999]]',
    b'[["value","plain"]]',
    b'[["value",""]]',
    b'[["value","a\\"b"]]',
    b'[["value","\\u00e9t\\u00e9"]]',
    b'[["value","\xc3\xa9t\xc3\xa9"]]',
    b'[["value","tab\there"]]',
    b'[["value","unterminated]]',
    b'[["value",null]]',
    b'[["value",nul]]',
    b'[["value",true]]',
    b'[["value",false]]',
    b'[["value",falsey]]',
    b'[["valu\\u0065",7]]',
    b'[["next",["r",2]]]',
    b'[["next",["r",99]]]',
    b'[["value",[1,2]]]',
    b'[ ["value", 3] ]',
    b'[["value",3]] ',
    b'[["value",3]]x',
    b'[["value",3]]]',
    b'[["value",3],]',
    b'[["value",3]',
    b'[["value",3],["next",null]]',
    b'[["nope",3]]',
    b'[["",3]]',
    b'[["value"]]',
    b'[[3,"value"]]',
    b'{"value":3}',
    b'"x"',
    b"",
    b"\xff\xfe",
]


@compiled
@pytest.mark.parametrize("payload", _ODD_PAYLOADS)
def test_the_compiled_loop_reads_every_payload_as_the_python_loop_does(payload: bytes) -> None:
    """A field set's payload -- orjson's plain text, or anything else a log might hold (spaces, escapes, floats,
    long ints, leading zeros, references, damaged JSON) -- folds on the compiled loop to what it folds to on the
    Python loop: the same values of the same types, or the same error naming the same seq."""
    pure, fast = _both(_with_payloads([b'[["value",5]]', payload, b'[["value",6]]', payload]))
    assert fast == pure


#: Field values a set may hold: scalars (ints past 64 bits too) and encoded values (references to objects that exist
#: or not, other tags).
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.tuples(st.sampled_from(["r", "i", "x"]), st.integers(min_value=-2, max_value=6)).map(list),
)
#: Field names a set may name: the class's own and others.
_NAMES = st.sampled_from(["value", "next", "nope", "valu", "values"])


@compiled
@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(_VALUES, max_size=12),
    names=st.lists(_NAMES, min_size=12, max_size=12),
)
def test_the_compiled_loop_folds_any_field_sets_as_the_python_loop(values: list[Any], names: list[str]) -> None:
    """Field sets of any scalars (ints past 64 bits too) and of encoded values (references to objects that exist
    or not), under field names that change from row to row (names the class has or not), fold alike on both
    loops."""
    payloads = [
        json.dumps([[name, v]], separators=(",", ":"), ensure_ascii=False).encode() for name, v in zip(names, values)
    ]
    pure, fast = _both(_with_payloads(payloads))
    assert fast == pure


def _resummed(row: EventRow, **changes: Any) -> EventRow:
    """*row* changed, with a checksum that holds for the change (a crafted row)."""
    row = row._replace(**changes)
    return row._replace(checksum=event_checksum(*row[:6]))


#: How a row may be unlike the compiled loop's: each a function of the row (None: the row left out).
_OTHER_ROWS: dict[str, Any] = {
    "checksum": lambda r: r._replace(checksum=r.checksum ^ 4),
    "checksum + 2**32": lambda r: r._replace(checksum=r.checksum + 2**32),
    "checksum - 2**32": lambda r: r._replace(checksum=r.checksum - 2**32),
    "checksum negative": lambda r: r._replace(checksum=-r.checksum),
    "checksum a float": lambda r: r._replace(checksum=float(r.checksum)),
    "gap": lambda r: None,
    "seq a float": lambda r: (float(r.seq), *r[1:]),
    "kind": lambda r: r._replace(kind="obj.sets"),
    "kind another": lambda r: _resummed(r, kind="obj.del", payload=b'["value"]'),
    "target past 64 bits": lambda r: r._replace(target=1 << 70),
    "target 0": lambda r: _resummed(r, target=0),
    "target -1": lambda r: _resummed(r, target=-1),
    "target one past the last": lambda r: _resummed(r, target=6),  # the rows make objects 1..5
    "target past the last": lambda r: _resummed(r, target=7),
    "target far past the last": lambda r: _resummed(r, target=1 << 40),
    "tx": lambda r: r._replace(tx=r.tx + 1),
    "tx past 64 bits": lambda r: r._replace(tx=1 << 64),
    "ts past 64 bits": lambda r: r._replace(ts=1 << 64),
    "short row": lambda r: tuple(r[:6]),
    "a list": lambda r: list(r),
    "a plain tuple": lambda r: tuple(r),
    "None": lambda r: "none",
    "payload a bytearray": lambda r: r._replace(payload=bytearray(r.payload)),
    "payload a str": lambda r: r._replace(payload=r.payload.decode()),
}


@compiled
@pytest.mark.parametrize("damage", list(_OTHER_ROWS))
def test_the_compiled_loop_hands_every_other_row_back_and_the_python_loop_names_it(damage: str) -> None:
    """A row the compiled loop cannot take as it is -- damaged, out of order, of another shape or kind,
    targeting no object -- is handed back untouched and the Python loop reads it: the same error, or the same
    graph, as on the Python loop alone; rows marked checked alike."""
    rows: list[Any] = _with_payloads([b'[["value",5]]', b'[["value",6]]', b'[["value",7]]'])
    changed = _OTHER_ROWS[damage](rows[-2])
    if changed is None:
        del rows[-2]
    else:
        rows[-2] = None if changed == "none" else changed
    pure, fast = _both(rows)
    assert fast == pure
    assert _both(rows, checked=True)[1] == _both(rows, checked=True)[0]


@compiled
def test_the_compiled_loop_reports_progress_as_the_python_loop() -> None:
    """With a progress callback, every seq that is a multiple of 10,000 is reported, once, on both loops."""
    rows = _with_payloads([b'[["value",%d]]' % i for i in range(20_005)])
    seen: dict[Any, list[int]] = {}
    for fold_sets in (None, speedups.fold_sets):  # type: ignore[union-attr]
        _compiled.fold_sets = fold_sets
        try:
            reader = _reader()
            fold(rows, reader, expected=1, progress=seen.setdefault(fold_sets, []).append)
        finally:
            _compiled.fold_sets = speedups.fold_sets  # type: ignore[union-attr]
        assert next(o for o in reader.table.objects if isinstance(o, Node)).value == 20_004
    assert seen[None] == seen[speedups.fold_sets] == [10_000, 20_000]  # type: ignore[union-attr]


class _Interrupting(dict):  # type: ignore[type-arg]
    """A class's setters whose every setter raises *error*."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def get_setter(self) -> Any:
        def setter(obj: Any, value: Any) -> None:
            raise self.error

        return setter


@compiled
def test_the_compiled_loop_lets_an_interrupt_through_and_hands_a_failed_set_back() -> None:
    """A setter that raises an Exception hands its row back (to be read the long way); a KeyboardInterrupt (any
    BaseException that is not an Exception) goes straight through; an iterator's error goes through too."""
    assert speedups is not None
    rows = _with_payloads([b'[["value",5]]'])
    reader = _reader()
    assert fold(rows[:-1], reader, expected=1)[0] == rows[-1].seq
    node = next(o for o in reader.table.objects if isinstance(o, Node))
    loads, code = _fold.orjson.loads, KINDS["obj.set"].code
    for error, raised in ((ValueError("no"), None), (KeyboardInterrupt(), KeyboardInterrupt)):
        setter = _Interrupting(error).get_setter()
        fast = {Node: {"value": setter}}
        args = (rows[-1].seq, reader.table.objects, fast, code, False, False, reader.decode, loads)
        if raised is None:
            assert speedups.fold_sets(iter(rows[-1:]), *args) == (rows[-1].seq, rows[-1])
        else:
            with pytest.raises(raised):
                speedups.fold_sets(iter(rows[-1:]), *args)
    assert node.value == 2

    def broken() -> Any:
        yield rows[-1]
        raise OSError("the disk went away")

    args = (rows[-1].seq, reader.table.objects, reader.fast_fields, code, False, False, reader.decode, loads)
    with pytest.raises(OSError, match="the disk went away"):
        speedups.fold_sets(broken(), *args)
    assert node.value == 5  # the row before the failed read applied


# -- the compiled catch-up (memimg.model._speedups.catch_sets) -------------------------------------------------


def _catch_up(rows: list[Any], compiled_loop: bool) -> tuple[Any, ...]:
    """Fold *rows* as a running image catches up (``on_tx``, ``on_run``, ``direct``; the compiled loop or not): the
    fold's result or error, the seqs applied in the order they were (each handed-over event applied as the
    engine applies it; a run told to ``direct`` as its seqs), the transactions handed over, the latest ts told,
    and the nodes' fields."""
    reader = _reader()
    applied: list[int] = []
    handed: list[list[int]] = []
    told: list[tuple[int, int]] = []
    calls: list[tuple[Any, ...]] = []  # every setter call, in order: none skipped or made twice

    def recorded(name: str, setter: Any) -> Any:
        def set_field(obj: Any, value: Any) -> None:
            calls.append((obj._mi_oid, name, _plain(value)))
            setter(obj, value)

        return set_field

    reader.table.setters[Node] = {name: recorded(name, f) for name, f in _types.info_of(Node).setters.items()}

    def apply(batch: list[Any]) -> None:
        handed.append([r.seq for _, r in batch])
        for event, r in batch:
            if event is not None:
                k, target, args = event
                k.apply(reader.table, target, *args)
            applied.append(r.seq)

    def direct(last_seq: int, ts: int, doubt: BaseException | None) -> None:
        assert doubt is None
        start = told[-1][0] if told else 0
        applied.extend(s for s in range(start + 1, last_seq + 1) if s not in applied)
        told.append((last_seq, ts))

    _compiled.catch_sets = speedups.catch_sets if compiled_loop else None  # type: ignore[union-attr]
    try:
        try:
            outcome: Any = fold(iter(rows), reader, expected=1, on_tx=apply, on_run=apply, direct=direct)
        except Exception as err:
            outcome = (type(err), str(err), getattr(err, "seq", None))
    finally:
        _compiled.catch_sets = speedups.catch_sets  # type: ignore[union-attr]
    nodes = [(_plain(o.value), _plain(o.next)) for o in reader.table.objects if isinstance(o, Node)]
    latest = max((ts for _, ts in told), default=-1)
    return outcome, applied, handed, latest, nodes, calls


def _after_base(payloads: list[bytes]) -> tuple[list[EventRow], int, Reader]:
    """The rows of :func:`_with_payloads`, how many of them :func:`_rows` makes, and a reader that folded those."""
    rows = _with_payloads(payloads)
    base = len(_rows())
    reader = _reader()
    fold(rows[:base], reader, expected=1)
    return rows, base, reader


def _grouped(rows: list[EventRow], sizes: list[int]) -> list[EventRow]:
    """*rows* with their tx numbers regrouped -- consecutive transactions of *sizes* rows, the rest one row each as
    they were -- and commit times that go back and forth (checksums that hold)."""
    out, at, tx = [], 0, 10_000
    for size in sizes:
        for r in rows[at : at + size]:
            out.append(_resummed(r, tx=tx, ts=r.ts + len(out) * 7 % 5))  # (times that go back and forth)
        at += size
        tx += 1
    return out + [_resummed(r, ts=r.ts + (len(out) + i) * 7 % 5) for i, r in enumerate(rows[at:])]


@compiled
@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(_VALUES, max_size=14),
    names=st.lists(_NAMES, min_size=14, max_size=14),
    sizes=st.lists(st.integers(min_value=1, max_value=3), max_size=8),
    damaged=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
)
def test_the_compiled_catch_up_applies_what_the_python_catch_up_applies(
    values: list[Any], names: list[str], sizes: list[int], damaged: int | None
) -> None:
    """Field sets of any values (ints past 64 bits, references that exist or not, names the class has or not),
    grouped into transactions of one to three rows, one of them damaged or not: caught up with on the compiled
    loop, every row is applied once and in the log's order, transactions of several rows are handed over whole
    as on the Python loop, and the graph, the result or the error, and the latest commit time are the same."""
    payloads = [
        json.dumps([[name, v]], separators=(",", ":"), ensure_ascii=False).encode() for name, v in zip(names, values)
    ]
    rows: list[Any] = _with_payloads(payloads)
    base = len(_rows())
    rows = rows[:base] + _grouped(rows[base:], sizes)
    if damaged is not None and base + damaged < len(rows):
        rows[base + damaged] = rows[base + damaged]._replace(checksum=rows[base + damaged].checksum ^ 1)
    pure = _catch_up(rows, compiled_loop=False)
    fast = _catch_up(rows, compiled_loop=True)
    outcome, applied, handed, latest, nodes, calls = fast
    assert (outcome, nodes, calls) == (pure[0], pure[4], pure[5])
    assert applied == sorted(set(applied)) == pure[1]
    by_tx: dict[int, list[int]] = {}
    for r in rows:
        by_tx.setdefault(r.tx, []).append(r.seq)
    several = [seqs for seqs in by_tx.values() if len(seqs) > 1 and seqs[-1] in applied]
    assert [h for h in handed if h in several] == several  # each handed over whole, as on the Python loop
    directly = set(applied) - {seq for h in handed for seq in h}  # applied by the compiled loop
    assert latest == max((r.ts for r in rows if r.seq in directly), default=-1)


@compiled
@pytest.mark.parametrize("at", [-3, -2, -1], ids=["after one", "inside a run", "last"])
@pytest.mark.parametrize("damage", list(_OTHER_ROWS))
def test_a_catch_up_reads_every_other_row_on_the_compiled_loop_as_on_the_python_loop(damage: str, at: int) -> None:
    """A row the compiled catch-up cannot take as it is -- damaged, out of order, of another shape or kind,
    targeting no object -- after a transaction of one field set, inside a run of them or last: the transactions
    before it are applied (or not) as on the Python loop, and the same error or the same graph follows."""
    rows: list[Any] = _with_payloads([b'[["value",5]]', b'[["value",6]]', b'[["value",7]]', b'[["value",8]]'])
    changed = _OTHER_ROWS[damage](rows[at])
    if changed is None:
        del rows[at]
    else:
        rows[at] = None if changed == "none" else changed
    pure, fast = _catch_up(rows, compiled_loop=False), _catch_up(rows, compiled_loop=True)
    assert (fast[0], fast[1], fast[4], fast[5]) == (pure[0], pure[1], pure[4], pure[5])


@compiled
def test_the_compiled_catch_up_applies_one_row_transactions_and_hands_the_rest_over() -> None:
    """Of a catch-up's rows, the compiled loop applies each transaction of one field set itself (told to
    ``direct`` with its last seq and its latest commit time) and hands over, whole and in order, a transaction of
    two field sets and every other kind; none is applied twice."""
    rows = _with_payloads([b'[["value",5]]', b'[["value",6]]', b'[["value",7]]', b'[["value",8]]'])
    base = len(_rows())
    rows = rows[:base] + _grouped(rows[base:], [1, 2, 1])
    outcome, applied, handed, latest, nodes, _ = _catch_up(rows, compiled_loop=True)
    assert outcome == (len(rows) + 1, 0)
    assert applied == list(range(1, len(rows) + 1))
    assert [base + 2, base + 3] in handed  # the transaction of two sets: whole, on on_tx
    assert [base + 1] not in handed and [base + 4] not in handed  # applied by the compiled loop
    assert latest == rows[-1].ts
    assert nodes[0][0] == (int, 8)


@compiled
def test_a_read_failing_during_the_compiled_catch_up_tells_what_was_applied_and_raises() -> None:
    """A read that fails while the compiled loop runs: the rows it applied are told to ``direct`` first, the row
    it read last is not applied, and the read's error is raised; the fold goes on from there."""
    rows, base, reader = _after_base([b'[["value",5]]', b'[["value",6]]', b'[["value",7]]'])
    node = next(o for o in reader.table.objects if isinstance(o, Node))
    told: list[tuple[int, int, Any]] = []

    def broken() -> Any:
        yield from rows[base : base + 2]
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="the disk went away"):
        fold(
            broken(), reader, expected=base + 1, on_tx=pytest.fail, on_run=pytest.fail, direct=lambda *a: told.append(a)
        )
    assert told == [(base + 1, rows[base].ts, None)] and node.value == 5  # the second row read, not applied
    assert fold(rows[base + 1 :], reader, expected=base + 2, on_tx=pytest.fail, direct=lambda *a: None) == (
        len(rows) + 1,
        0,
    )
    assert node.value == 7


@compiled
@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_a_setter_failing_while_the_compiled_catch_up_applies_a_set_is_told_as_in_doubt(
    error: type[BaseException],
) -> None:
    """The table's setter failing while the compiled loop applies a row -- interrupted, or raising (it may have
    done part of its work, an index's) -- is never handed back to be applied again: the rows before it are told
    to ``direct`` with the failure as the one in doubt (the engine closes the image)."""
    rows, base, reader = _after_base([b'[["value",5]]', b'[["value",6]]'])
    node = next(o for o in reader.table.objects if isinstance(o, Node))
    reader.table.field_set(node, "value", 4)  # the table's setters made, as a running image has them
    real = reader.table.setters[Node]["value"]

    calls: list[Any] = []

    def failing(obj: Any, value: Any) -> None:
        calls.append(value)
        if value == 6:
            raise error
        real(obj, value)

    reader.table.setters[Node] = {**reader.table.setters[Node], "value": failing}  # (the class's own: a copy)
    told: list[tuple[int, int, Any]] = []
    with pytest.raises(error):
        fold(rows[base:], reader, expected=base + 1, on_tx=pytest.fail, direct=lambda *a: told.append(a))
    assert len(told) == 1 and told[0][:2] == (base + 1, rows[base].ts) and type(told[0][2]) is error
    assert node.value == 5 and calls == [5, 6]


@compiled
def test_the_compiled_catch_up_tells_every_set_it_applied_whatever_their_commit_times() -> None:
    """Field sets whose commit times are at or before the epoch (a clock set back, a crafted log) are applied and
    told to ``direct`` as any others: the image then knows its seq."""
    rows = _with_payloads([b'[["value",5]]', b'[["value",6]]', b'[["value",7]]'])
    base = len(_rows())
    rows = rows[:base] + [_resummed(r, ts=t) for r, t in zip(rows[base:], (-5, 0, -(2**63)))]
    reader = _reader()
    fold(rows[:base], reader, expected=1)
    told: list[tuple[int, int, Any]] = []
    assert fold(rows[base:], reader, expected=base + 1, on_tx=pytest.fail, direct=lambda *a: told.append(a)) == (
        len(rows) + 1,
        0,
    )
    assert told == [(len(rows), 0, None)]


@compiled
def test_an_interrupt_before_the_compiled_catch_up_told_what_it_applied_tells_it_then() -> None:
    """An interrupt seen once the compiled loop returned, before ``direct`` was told what it applied (here: in
    ``direct`` itself, the first time): what it applied is told again before the interrupt goes on -- the image
    always knows the seq its objects are at."""
    rows, base, reader = _after_base([b'[["value",5]]', b'[["value",6]]'])
    told: list[tuple[int, int, Any]] = []

    def direct(*args: Any) -> None:
        told.append(args)
        if len(told) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fold(rows[base:], reader, expected=base + 1, on_tx=pytest.fail, direct=direct)
    assert told == [(len(rows), rows[-1].ts, None)] * 2


@compiled
def test_a_transaction_open_stops_the_compiled_catch_up_and_the_rows_go_to_on_run() -> None:
    """While the watched set (the image's open transactions) is not empty -- from the start, or once code a row
    ran opened one -- the compiled loop applies nothing more: the rows go to ``on_run``, which records them for
    that transaction."""

    def caught_up(payloads: list[bytes], watch: set[str], opens: bool) -> tuple[list[int], list[list[int]]]:
        """The last seqs told to ``direct`` and the runs handed to ``on_run``, catching up with *payloads*' sets
        (*opens*: decoding a value opens a transaction)."""
        rows, base, reader = _after_base(payloads)
        decode = reader.decode

        def opening(value: Any) -> Any:
            watch.add("a transaction")
            return decode(value)

        if opens:
            reader.decode = opening  # type: ignore[method-assign]
        told: list[int] = []
        runs: list[list[int]] = []
        on_run = lambda batch: runs.append([r.seq - base for _, r in batch])  # noqa: E731
        fold(
            rows[base:],
            reader,
            expected=base + 1,
            on_tx=pytest.fail,
            on_run=on_run,
            direct=lambda *a: told.append(a[0] - base),
            watch=watch,
        )
        return told, runs

    sets = [b'[["value",5]]', b'[["value",6]]', b'[["value",7]]']
    assert caught_up(sets, {"a transaction"}, opens=False) == ([], [[1, 2, 3]])
    # opened while the loop runs: by the decoding of the second row's value (a reference), the third goes to on_run
    sets = [b'[["value",5]]', b'[["next",["r",2]]]', b'[["value",7]]', b'[["value",8]]']
    assert caught_up(sets, set(), opens=True) == ([2], [[3, 4]])
