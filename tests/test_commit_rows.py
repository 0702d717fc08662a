"""A commit's ``obj.set`` rows made by the compiled accelerator are the pure-Python loop's, byte for byte.

``EncodeSession.encode_events`` hands runs of ``obj.set`` events of scalars on objects that have their
ids to ``memimg.model._speedups.encode_sets``, and every other event to the Python loop; the pure-Python
code (no compiler, or ``MEMIMG_PURE_PYTHON=1``) makes every row with that loop. The log must not tell
which ran: each test compares the rows of the two, and the round trip through the log."""

from __future__ import annotations

import math
import os
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memimg
from memimg import persistent
from memimg.core._kinds import KINDS
from memimg.image import _encode, _engine
from memimg.model._accel import speedups
from tests.accel import compiled

_OBJ_SET = KINDS["obj.set"]
_TS = 1_700_000_000_123_456


@persistent(name="tests.commit_rows.Cell")
class Cell:
    value: Any = 0
    label: str = ""


@persistent(name="tests.commit_rows.Fresh")
class Fresh:
    value: Any = 0


def _image(path: Path, n: int = 3) -> tuple[memimg.MemoryImage, list[Cell]]:
    img = memimg.open(path, root=dict)
    img.root["cells"] = [Cell() for _ in range(n)]
    cells = list(img.root["cells"])
    for cell in cells:  # committed: ids given, the class declared
        cell.value = 1
    return img, cells


def _rows(img: memimg.MemoryImage, pending: list[Any], *, pure: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    session = img._engine.session
    with monkeypatch.context() as m:
        if pure:
            m.setattr(_encode, "_encode_sets", None)
        try:
            return session.encode_events(list(pending), 41, _TS)
        finally:
            session.rollback()


def test_the_accelerator_is_used_where_it_is_required() -> None:
    """CI requires the extension: the commit path then makes obj.set rows with it."""
    if os.environ.get("MEMIMG_REQUIRE_ACCEL"):
        assert _encode._encode_sets is not None


@compiled
def test_encode_sets_makes_the_loops_rows_and_stops_where_the_loop_must_take_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scalars of every kind give the loop's rows; it stops at another kind, a value it does not write
    (an int past 64 bits, a non-finite float, a Decimal, an object), an object with no id, a class the
    log has not declared -- and the rows of a whole commit mixing them are the pure loop's."""
    img, (a, b, c) = _image(tmp_path / "image.db")
    with img:
        values: list[Any] = [
            0, -1, 2**63 - 1, -(2**63), True, False, None, 1.5, -0.0, 1e16, 1e-7, 2.5e300,
            "", "plain", 'quote "x"', "back\\slash", "tab\tnew\nline", "\x00\x1f\x7f", "é", "日本", "emoji \U0001f600",
        ]  # fmt: skip
        pending = [(_OBJ_SET, (a, b, c)[i % 3], ("value", v)) for i, v in enumerate(values)]
        rows: list[Any] = []
        assert speedups.encode_sets(pending, 0, rows, 41, _TS, _OBJ_SET, img._engine.session.declarations.current,
                                    True, _encode.orjson.dumps) == len(pending)  # fmt: skip
        assert rows == _rows(img, pending, pure=True, monkeypatch=monkeypatch)
        for stop in (2**63, -(2**63) - 1, math.inf, math.nan, Decimal("1.5"), Cell()):
            rows = []
            mixed = [*pending[:2], (_OBJ_SET, a, ("value", stop)), pending[3]]
            current = img._engine.session.declarations.current
            assert speedups.encode_sets(mixed, 0, rows, 41, _TS, _OBJ_SET, current, True, _encode.orjson.dumps) == 2
            assert rows == _rows(img, mixed[:2], pure=True, monkeypatch=monkeypatch)
            assert _rows(img, mixed, pure=False, monkeypatch=monkeypatch) == _rows(
                img, mixed, pure=True, monkeypatch=monkeypatch
            )
        fresh = Fresh()
        img.root["fresh"] = fresh  # attached with an id, its class declared by this commit
        unnamed = Cell()
        others = [
            (_OBJ_SET, a, ("label", "x")),
            (KINDS["obj.del"], b, ("label",)),
            (_OBJ_SET, c, ("value", unnamed)),  # a new object: its record goes in this event
            (_OBJ_SET, unnamed, ("label", "new")),
            (_OBJ_SET, a, ("value", 7)),
        ]
        for pure in (False, True):
            assert _rows(img, others, pure=pure, monkeypatch=monkeypatch)[0][6] != 0
        assert _rows(img, others, pure=False, monkeypatch=monkeypatch) == _rows(
            img, others, pure=True, monkeypatch=monkeypatch
        )
        session = img._engine.session
        session.checksums = False
        try:
            assert _rows(img, pending, pure=False, monkeypatch=monkeypatch) == _rows(
                img, pending, pure=True, monkeypatch=monkeypatch
            )
        finally:
            session.checksums = True


@compiled
@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.text(),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.floats(allow_nan=True, allow_infinity=True),
            st.booleans(),
            st.none(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_rows_of_any_scalars_are_the_pure_loops(tmp_path_factory: pytest.TempPathFactory, values: list[Any]) -> None:
    """Whatever scalars are set, the compiled path's rows are the pure loop's, byte for byte."""
    img, cells = _IMAGE.get() or _IMAGE.make(tmp_path_factory)
    pending = [(_OBJ_SET, cells[i % len(cells)], ("value", v)) for i, v in enumerate(values)]
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert _rows(img, pending, pure=False, monkeypatch=monkeypatch) == _rows(
            img, pending, pure=True, monkeypatch=monkeypatch
        )


class _Shared:
    """One image for every example of the hypothesis test (opening one per example is slow)."""

    def __init__(self) -> None:
        self.value: tuple[memimg.MemoryImage, list[Cell]] | None = None

    def get(self) -> tuple[memimg.MemoryImage, list[Cell]] | None:
        return self.value

    def make(self, factory: pytest.TempPathFactory) -> tuple[memimg.MemoryImage, list[Cell]]:
        self.value = _image(factory.mktemp("rows") / "image.db")
        return self.value


_IMAGE = _Shared()


def test_a_commit_of_many_sets_reads_back_alike_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction of many sets of every scalar kind is committed and replayed the same, and its log rows are
    those the pure-Python loop writes for the same transaction."""
    logs = []
    for pure in (False, True):
        if pure:
            monkeypatch.setattr(_encode, "_encode_sets", None)
        path = tmp_path / f"image-{pure}.db"
        img, cells = _image(path, 4)
        with img:
            with img.transaction():
                for i, v in enumerate([5, "s", 'q"', "é", 2.5, None, True, 2**64, math.inf, -3]):
                    cells[i % 4].value = v
                    cells[(i + 1) % 4].label = f"l{i}"
        with memimg.open(path, root=dict) as again:
            got = [(c.value, c.label) for c in again.root["cells"]]
        assert got == [(math.inf, "l7"), (-3, "l8"), (True, "l9"), (2**64, "l6")]
        with sqlite3.connect(path) as conn:
            logs.append([r[3:] for r in conn.execute("SELECT seq, tx, ts, kind, target, payload FROM memimg_events")])
    assert logs[0] == logs[1]


@persistent(name="tests.commit_rows.Tagged")
class Tagged:
    tag: int = memimg.field(default=0, index=True)
    note: str = ""


def _commit_many(path: Path) -> tuple[list[Any], list[Any]]:
    """A transaction of sets on plain and indexed fields, on a class whose setters the table makes mid-commit;
    what the image then holds and finds."""
    with memimg.open(path, root=dict) as img:
        img.root["cells"] = [Cell() for _ in range(3)]
        with img.transaction():
            cells = img.root["cells"]
            for i in range(30):
                cells[i % 3].value = i
            img.root["tagged"] = [Tagged() for _ in range(3)]  # new: no setters of Tagged made yet
        with img.transaction():
            for i, t in enumerate(img.root["tagged"]):
                t.tag, t.note = i + 10, f"n{i}"
                cells[i].label = f"l{i}"
        held = [(c.value, c.label) for c in img.root["cells"]] + [(t.tag, t.note) for t in img.root["tagged"]]
        found = [t.note for n in (10, 11, 12, 0) for t in img.find(Tagged, tag=n)]
    return held, found


def test_a_commit_applies_the_same_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sets applied by the compiled applier (runs of obj.set, the table's setters, an index's included) leave
    the objects and indexes as the Python loop does."""
    compiled = _commit_many(tmp_path / "compiled.db")
    monkeypatch.setattr(_engine, "_apply_sets", None)
    assert _commit_many(tmp_path / "pure.db") == compiled
    assert compiled == ([(27, "l0"), (28, "l1"), (29, "l2"), (10, "n0"), (11, "n1"), (12, "n2")], ["n0", "n1", "n2"])


@compiled
def test_apply_sets_stops_where_the_loop_must_take_over_and_raises_what_a_setter_raises(tmp_path: Path) -> None:
    """It applies a run of obj.set events with the table's setters, stops at another kind or a class whose
    setters are not made yet, and lets a setter's error through."""
    img, (a, b, c) = _image(tmp_path / "image.db")
    with img:
        table = img._engine.table
        events = [(_OBJ_SET, a, ("value", 5)), (_OBJ_SET, b, ("label", "x")), (KINDS["obj.del"], c, ("label",))]
        assert speedups.apply_sets(events, 0, table.setters, _OBJ_SET) == 2
        assert (a.value, b.label) == (5, "x")
        assert speedups.apply_sets([(_OBJ_SET, Fresh(), ("value", 1))], 0, table.setters, _OBJ_SET) == 0
        assert speedups.apply_sets([(_OBJ_SET, c, ("nope", 1))], 0, table.setters, _OBJ_SET) == 0

        def boom(obj: Any, value: Any) -> None:
            raise ValueError(value)

        setters = {Cell: {"value": boom}}
        with pytest.raises(ValueError, match="7"):
            speedups.apply_sets([(_OBJ_SET, a, ("value", 7))], 0, setters, _OBJ_SET)


@compiled
def test_the_compiled_steps_refuse_a_negative_index() -> None:
    """``encode_sets`` and ``apply_sets`` are told where in the events to start: a negative index is a
    ValueError, never a read before the list."""
    assert speedups is not None
    with pytest.raises(ValueError, match="not negative"):
        speedups.apply_sets([], -1, {}, _OBJ_SET)
    with pytest.raises(ValueError, match="not negative"):
        speedups.encode_sets([], -1, [], 1, _TS, _OBJ_SET, set(), True, _encode.orjson.dumps)
