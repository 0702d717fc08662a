"""The fold: the one replay loop every reader of the log goes through.

It checks each row's seq (a gap is named), its checksum (unless the rows
were checked already), decodes and applies it; with ``on_tx`` it hands each
transaction over whole instead.
"""

from __future__ import annotations

from typing import Any

import pytest

import memimg
from memimg.core._codec import Codec
from memimg.core._fold import fold
from memimg.core._reader import Reader
from memimg.core._rows import EventRow, event_checksum
from memimg.core._table import ObjectTable
from memimg.model import SHELL
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
