"""The command line's time travel: ``show --at`` and ``diff``, and what ``compact`` keeps of the past."""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

import memimg
from memimg import MISSING
from memimg.cli import cli
from memimg.core._generic import CustomValue, EnumValue
from memimg.core._plain import plain
from tests.history_model import project
from tests.models import Account, Bank, Box, Color, Entry, Level, Point


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def bank_db(tmp_path: Any) -> tuple[str, dict[str, int]]:
    """A bank: ada opened (seq 'opened'), a snapshot, a deposit, bob opened and closed."""
    path = str(tmp_path / "bank.db")
    marks = {}
    with memimg.open(path, root=Bank) as img:
        img.root.accounts["ada"] = Account("ada", tags={"a"})
        marks["opened"] = img.seq
        img.snapshot()
        img.root.accounts["ada"].balance += 5
        marks["deposit"] = img.seq
        img.root.accounts["bob"] = Account("bob")
        marks["bob"] = img.seq
        del img.root.accounts["bob"]
        marks["head"] = img.seq
    return path, marks


def _time_of(path: str, seq: int) -> str:
    with memimg.open(path, readonly=True) as img:
        return next(e.ts for e in img.events(since=seq - 1)).isoformat()


def test_show_at_a_seq_or_a_time(bank_db: tuple[str, dict[str, int]]) -> None:
    """show --at SEQ|TIME shows the graph as it was then (text and JSON); a time is the last commit at or
    before it, and may be written with Z."""
    path, marks = bank_db
    assert run("show", path, "accounts.ada.balance", "--at", str(marks["opened"])).output.strip() == "Decimal('0')"
    assert run("show", path, "accounts.ada.balance", "--at", str(marks["deposit"])).output.strip() == "Decimal('5')"
    assert "'bob': Account" in run("show", path, "--at", str(marks["bob"])).output
    assert "'bob'" not in run("show", path).output
    data = json.loads(run("show", path, "accounts", "--at", str(marks["bob"]), "--json").output)
    assert [k for k, _ in data["items"]] == ["ada", "bob"]
    when = _time_of(path, marks["bob"])
    assert "'bob': Account" in run("show", path, "--at", when).output
    utc = dt.datetime.fromisoformat(when).astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "Z"
    assert "'bob': Account" in run("show", path, "--at", utc).output


def test_diff_between_two_seqs_or_times(bank_db: tuple[str, dict[str, int]]) -> None:
    """diff A [B] prints one line per difference (B defaults to the newest seq); --json the same as data."""
    path, marks = bank_db
    r = run("diff", path, str(marks["opened"]), str(marks["bob"]))
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "root.accounts['bob']: MISSING → Account #6",
        "root.accounts['ada'].balance: Decimal('0') → Decimal('5')",
    ]
    assert run("diff", path, str(marks["opened"])).output.splitlines() == [
        "root.accounts['ada'].balance: Decimal('0') → Decimal('5')"
    ]
    assert run("diff", path, str(marks["bob"]), str(marks["bob"])).output.startswith("no differences")
    times = [_time_of(path, marks["opened"]), _time_of(path, marks["bob"])]
    assert run("diff", path, *times).output == r.output
    data = json.loads(run("diff", path, str(marks["opened"]), str(marks["bob"]), "--json").output)
    assert (data["a"], data["b"]) == (marks["opened"], marks["bob"])
    assert (data["a_time"], data["b_time"]) == tuple(dt.datetime.fromisoformat(t).isoformat() for t in times)
    assert data["differences"] == [
        {"path": "root.accounts['bob']", "new": {"$type": "tests.models.Account", "$id": 6}},
        {"path": "root.accounts['ada'].balance", "old": {"$decimal": "0"}, "new": {"$decimal": "5"}},
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["show", "{path}", "--at", "99"], "past the head"),
        (["show", "{path}", "--at", "0"], "before the first commit"),
        (["show", "{path}", "--at", "-3"], "negative"),
        (["show", "{path}", "--at", "yesterday"], "neither a seq nor an ISO time"),
        (["show", "{path}", "--at", "2020-01-01T00:00"], "has no UTC offset"),
        (["diff", "{path}", "1", "2999-01-01T00:00Z"], "in the future"),
        (["diff", "{path}", "2000-01-01T00:00+00:00"], "before the first commit"),
        (["diff", "{path}", "99"], "past the head"),
        (["diff", "{path}", "--", "--5"], "'--5' is neither a seq nor an ISO time"),
        (["diff", "{path}", "--", "-5"], "seq -5 is negative: seqs count events from 1"),
        (["show", "{path}", "--at", "\u0663"], "neither a seq nor an ISO time"),  # an Arabic-Indic 3
    ],
)
def test_bad_points_in_time_are_one_clear_line(
    bank_db: tuple[str, dict[str, int]], args: list[str], words: str
) -> None:
    """A seq past the head, 0 or negative, a time that is not ISO, naive, in the future or before the first
    commit: one error line naming the problem, status 1, and the file is unchanged."""
    path, _ = bank_db
    with open(path, "rb") as f:
        before = f.read()
    r = CliRunner().invoke(cli, [a.format(path=path) for a in args])
    assert r.exit_code == 1 and words in r.output and r.output.startswith("memimg: error:"), r.output
    assert "img.at" not in r.output
    with open(path, "rb") as f:
        assert f.read() == before


def test_diff_and_show_at_work_without_the_application_classes(tmp_path: Any) -> None:
    """A log of classes this process does not have: show --at and diff read it into stand-ins."""
    path = str(tmp_path / "foreign.db")
    script = textwrap.dedent(
        f"""
        import attrs, memimg
        @attrs.frozen
        class Tag:
            text: str
        memimg.converter.register_value(Tag, name="far.Tag")
        @memimg.persistent(name="far.Thing")
        class Thing:
            label: str = ""
            tag: object = None
        with memimg.open({path!r}) as img:
            img.root["t"] = Thing("hello", Tag("a"))
            img.snapshot()
            img.root["t"].label = "bye"
            img.root["t"].tag = Tag("a")
            print(img.seq)
        """
    )
    head = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    assert "label: 'hello'" in run("show", path, "t", "--at", "2").output
    assert run("diff", path, "2").output.splitlines() == ["root['t'].label: 'hello' → 'bye'"]  # the same Tag
    assert json.loads(run("diff", path, "2", str(head), "--json").output)["differences"] == [
        {"path": "root['t'].label", "old": "hello", "new": "bye"}
    ]


def test_compact_keeps_the_snapshot_the_history_asked_for_starts_from(tmp_path: Any) -> None:
    """compact --keep-events keeps, with the events asked for, the older snapshot they start from (and the
    events after it), so img.at reaches every kept seq; a seq before it is a HistoryError naming the oldest."""
    path = str(tmp_path / "img.db")
    seen = {}
    with memimg.open(path, root=Bank, snapshot_every=None) as img:
        img.root.accounts["ada"] = Account("ada")
        for _ in range(5):
            img.root.accounts["ada"].balance += 1
        base = img.snapshot()
        for _ in range(10):
            img.root.accounts["ada"].balance += 1
            seen[img.seq] = img.root.accounts["ada"].balance
        head = img.seq
    r = run("compact", path, "--keep-events", "5")
    assert r.exit_code == 0 and f"the snapshot at seq {base} that the past states start from" in r.output, r.output
    with memimg.open(path, root=Bank) as img:
        assert img.store.first_seq() == base + 1 and base in [s.seq for s in img.store.snapshots()]
        for seq in range(base, head + 1):
            with img.at(seq) as past:
                assert past.root.accounts["ada"].balance == seen.get(seq, Decimal(5))
        with pytest.raises(memimg.HistoryError, match=f"oldest available seq is {base}"):
            img.at(base - 1)
    assert "oldest available seq is" in CliRunner().invoke(cli, ["show", path, "--at", "2"]).output


def test_compact_writes_the_snapshot_kept_history_starts_from_when_there_is_none(tmp_path: Any) -> None:
    """compact --keep-events on a log without an older snapshot writes one at the first seq kept minus one
    (the state then, with the objects later events name though unreachable then): every kept seq is the state
    seen live, the log reopens and verifies."""
    path = str(tmp_path / "img.db")
    seen = {}
    with memimg.open(path, root=Bank, snapshot_every=None) as img:
        accounts = img.root.accounts
        accounts["ada"], accounts["bob"] = Account("ada"), Account("bob")
        bob = accounts.pop("bob")  # unreachable from here on, until linked again after the cut
        for _ in range(10):
            accounts["ada"].balance += 1
            seen[img.seq] = project(img.root)
        bob.balance += 7
        seen[img.seq] = project(img.root)
        accounts["bob"] = bob
        seen[img.seq] = project(img.root)
        head = img.seq
    r = run("compact", path, "--keep-events", "6")
    cut = head - 6 + 2  # the events the new snapshot covers: head + 1 (its own) - 6 + 1
    assert r.exit_code == 0 and f"a snapshot written at seq {cut - 1}" in r.output, r.output
    with memimg.open(path, root=Bank) as img:
        assert img.store.first_seq() == cut and cut - 1 in [s.seq for s in img.store.snapshots()]
        for seq in range(cut - 1, head + 1):
            with img.at(seq) as past:
                assert project(past.root) == seen[seq], seq
        with pytest.raises(memimg.HistoryError, match=f"oldest available seq is {cut - 1}"):
            img.at(cut - 2)
        assert project(img.root) == seen[head]
    assert run("verify", path).exit_code == 0


def test_compact_drops_nothing_when_the_snapshot_kept_history_starts_from_cannot_be_written(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """compact --keep-events that cannot write the snapshot the kept history would start from keeps every
    event (dropping them would make those states unrebuildable for good), says why, and a second run works."""
    from memimg.cli import _ops

    path = str(tmp_path / "img.db")
    seen = {}
    with memimg.open(path, root=Bank, snapshot_every=None) as img:
        img.root.accounts["ada"] = Account("ada")
        for _ in range(10):
            img.root.accounts["ada"].balance += 1
            seen[img.seq] = project(img.root)
    monkeypatch.setattr(_ops, "_write_base_leased", lambda *args: "the state could not be read (a test)")
    r = run("compact", path, "--keep-events", "4")
    assert r.exit_code == 0 and "nothing was dropped" in r.output and "(a test)" in r.output, r.output
    with memimg.open(path, root=Bank) as img:
        assert img.store.first_seq() == 1
        for seq, state in seen.items():
            with img.at(seq) as past:
                assert project(past.root) == state, seq
    monkeypatch.undo()
    r = run("compact", path, "--keep-events", "4")
    assert r.exit_code == 0 and "a snapshot written at seq" in r.output, r.output
    assert run("verify", path).exit_code == 0


_VALUES: list[tuple[Any, Any]] = [
    (Decimal("1.10"), {"$decimal": "1.10"}),
    (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), {"$datetime": "2026-01-02T03:04:05+00:00"}),
    (dt.date(2026, 1, 2), {"$date": "2026-01-02"}),
    (dt.timedelta(days=1, microseconds=5), {"$timedelta": [1, 0, 5]}),
    (Fraction(1, 3), {"$fraction": "1/3"}),
    (Color.RED, {"$enum": "tests.models.Color", "name": "RED"}),
    (Level.HIGH, {"$enum": "tests.models.Level", "name": "HIGH"}),
    (b"\x00\xff", {"$bytes": "AP8="}),
    (float("nan"), {"$float": "nan"}),
    (frozenset({1}), {"$frozenset": [1]}),
    (Point(1, 2), {"$type": "tests.models.Point", "x": 1, "y": 2}),
    ("1.10", "1.10"),
]


class _Perm(enum.Flag):
    R = 1
    W = 2


@pytest.mark.parametrize(
    ("value", "want"),
    [
        *_VALUES,
        (memimg.ERASED, {"$erased": True}),
        (MISSING, {"$missing": True}),
        (_Perm.R | _Perm.W, {"$enum": f"{__name__}._Perm", "name": ["R", "W"]}),
        (EnumValue("shop.Color", "RED"), {"$enum": "shop.Color", "name": "RED"}),
        (EnumValue("shop.Perm", ("R", "W")), {"$enum": "shop.Perm", "name": ["R", "W"]}),
        (CustomValue("shop.Sku", {"code": "A1"}), {"$custom": "shop.Sku", "data": {"code": "A1"}}),
    ],
)
def test_json_values_say_what_they_are(value: Any, want: Any) -> None:
    """In JSON (show, history and diff --json), a value of a type JSON lacks is an object naming its type, never a
    string that a str value could be too."""
    assert plain(value) == want


def test_history_diff_and_show_at_print_values_as_json_of_their_type(tmp_path: Any) -> None:
    """history --json, diff --json and show --json --at print Decimal, datetime, Fraction, enum, bytes... each as
    an object naming its type (a str as itself), and an erased past value as {"$erased": true}."""
    path = str(tmp_path / "values.db")
    with memimg.open(path, root=Box) as img:
        img.root.content = {}
        d = img.root.content
        seqs = []
        for value, _ in _VALUES:
            d["v"] = value
            seqs.append(img.seq)
        img.root.other = "secret"
        secret = img.seq
        img.root.other = "public"
        img.erase(img.root, "other", reason="test")
        oid = d._mi_oid
    want = [w for _, w in _VALUES]
    changes = [json.loads(line) for line in run("history", path, str(oid), "--json").output.splitlines()]
    assert [c["new"] for c in changes] == want
    assert [c.get("old") for c in changes] == [None, *want[:-1]]
    for seq, (before, after) in zip(seqs[1:], itertools.pairwise(want)):
        (item,) = json.loads(run("diff", path, str(seq - 1), str(seq), "--json").output)["differences"]
        assert (item["old"], item["new"]) == (before, after)
        assert json.loads(run("show", path, "content.v", "--json", "--at", str(seq)).output) == after
    assert json.loads(run("show", path, "other", "--json", "--at", str(secret)).output) == {"$erased": True}


@attrs.frozen
class _Pair:
    a: Any
    b: Any


class _Sku:
    def __init__(self, code: str) -> None:
        self.code = code

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Sku) and other.code == self.code

    def __hash__(self) -> int:
        return hash(self.code)


memimg.converter.register_value(
    _Sku, name="tcli.Sku", unstructure=lambda v: {"code": v.code}, structure=lambda d, _: _Sku(d["code"])
)


def test_entities_inside_values_and_custom_types_are_one_json_in_every_command(tmp_path: Any) -> None:
    """history, diff and show --json spell an entity inside a value (a tuple, a frozenset, a value object) as
    {"$ref": id} alike, and a custom value type as {"$custom": name, "data": ...} -- what its unstructure hook
    returns -- whether its class is loaded or not."""
    path = str(tmp_path / "refs.db")
    with memimg.open(path, root=Box) as img:
        img.root.content = {}
        d = img.root.content
        img.root.other = entry = Entry("x")
        ref = {"$ref": entry._mi_oid}
        values = [
            ((entry, 1), [ref, 1]),
            (frozenset({entry}), {"$frozenset": [ref]}),
            (_Pair(entry, (entry,)), {"$type": f"{__name__}._Pair", "a": ref, "b": [ref]}),
            (_Sku("A-1"), {"$custom": "tcli.Sku", "data": {"code": "A-1"}}),
        ]
        seqs = []
        for value, _ in values:
            d["v"] = value
            seqs.append(img.seq)
        oid = d._mi_oid
    want = [w for _, w in values]
    changes = [json.loads(line) for line in run("history", path, str(oid), "--json").output.splitlines()]
    assert [c["new"] for c in changes] == want
    for seq, (before, after) in zip(seqs[1:], itertools.pairwise(want)):
        (item,) = json.loads(run("diff", path, str(seq - 1), str(seq), "--json").output)["differences"]
        assert (item["old"], item["new"]) == (before, after)
    for seq, after in zip(seqs, want):
        assert json.loads(run("show", path, "content.v", "--json", "--at", str(seq)).output) == after
    assert plain(CustomValue("tcli.Sku", {"code": "A-1"})) == want[-1]  # read without its class


def test_a_custom_value_whose_hook_fails_is_still_shown() -> None:
    """A loaded custom value type whose unstructure hook raises is shown as {"$repr": ...} in JSON, and the
    command goes on (the application's hook is not the command line's to fail on)."""

    class Broken:
        def __repr__(self) -> str:
            return "Broken()"

    def unstructure(value: Broken) -> Any:
        raise RuntimeError("hook broken")

    memimg.converter.register_value(
        Broken, name="tcli.Broken", unstructure=unstructure, structure=lambda data, cls: Broken()
    )
    assert plain(Broken()) == {"$repr": "Broken()"}


@memimg.persistent(name="tcli.Shelf")
class Shelf:
    items: Any = None


@memimg.persistent(name="tcli.Note")
class Note:
    title: str = ""
    body: Any = None


def test_history_after_compaction_takes_declarations_from_the_snapshot_kept_history_starts_from(
    tmp_path: Any,
) -> None:
    """After compact --keep-events, history() of an object stored after the cut, with a field unset, knows the
    declaration in effect from the snapshot the kept events follow: the field is MISSING there, as img.at()
    shows, not filled with its default; and repeated calls do not read the kept log again."""
    path = str(tmp_path / "notes.db")
    with memimg.open(path, root=Shelf, snapshot_every=None) as img:
        img.root.items = []
        for i in range(30):
            note = Note(str(i))
            del note.body
            img.root.items.append(note)
    assert run("compact", path, "--keep-events", "10").exit_code == 0
    with memimg.open(path, root=Shelf, snapshot_every=None) as img:
        first = img.store.first_seq()
        assert first > 1
        later = [n for n in img.root.items if img._engine.table.born.seq_of(n._mi_oid) >= first]
        assert later
        for note in later:
            note.body = "written"
        reads: list[int] = []
        real = img.store.read

        def counting(*args: Any, **kwargs: Any) -> Any:
            reads.append(1)
            return real(*args, **kwargs)

        img._engine.store.read = counting  # type: ignore[method-assign]
        for note in later:
            assert [c.old for c in img.history(note, "body")] == [memimg.MISSING], note.title
        del img._engine.store.read
        born = img._engine.table.born.seq_of(later[0]._mi_oid)
        with img.at(born) as past:
            (seen,) = [n for n in past.root.items if n.title == later[0].title]
            assert not hasattr(seen, "body")
        assert len(reads) <= 3 * len(later)  # each call reads its own rows; the look-back is not repeated
