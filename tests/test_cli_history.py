"""``memimg history TARGET OID[.FIELD]``, run through click's test runner, without the application's classes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

import memimg
from memimg.cli import cli
from tests.models import Account, Bank, Box, Entry


@pytest.fixture
def bank(tmp_path: Any) -> tuple[str, int, int]:
    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank) as img:
        img.root.accounts["ada"] = Account("ada", entries=[Entry("in")])
        acct = img.root.accounts["ada"]
        acct.balance += 5
        img.snapshot()
        acct.balance += 7
        acct.entries.append(Entry("out"))
        return path, acct._mi_oid, acct.entries._mi_oid


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_history_of_a_field_and_of_a_collection(bank: tuple[str, int, int]) -> None:
    """history prints each change with the value before it; --json gives one object per line, references as $ref."""
    path, acct, entries = bank
    r = run("history", path, f"{acct}.balance")
    assert r.exit_code == 0, r.output
    assert "Decimal('0') -> Decimal('5')" in r.output and "Decimal('5') -> Decimal('12')" in r.output
    changes = [json.loads(line) for line in run("history", path, str(acct), "--json").output.splitlines()]
    assert [(c["field"], c["old"], c["new"]) for c in changes] == [
        ("balance", {"$decimal": "0"}, {"$decimal": "5"}),
        ("balance", {"$decimal": "5"}, {"$decimal": "12"}),
    ]
    assert all(c["target"] == acct for c in changes)
    (append,) = [json.loads(line) for line in run("history", path, str(entries), "--json").output.splitlines()]
    assert append["kind"] == "list.append" and append["old"] == [] and append["index"] == 1
    assert list(append["new"][0]) == ["$ref"]
    later = run("history", path, str(acct), "--json", "--since", str(changes[0]["seq"])).output.splitlines()
    assert [json.loads(line)["seq"] for line in later] == [changes[1]["seq"]]


@pytest.mark.parametrize(
    ("what", "extra", "message"),
    [
        ("{acct}.nope", (), "has no field 'nope'"),
        ("999", (), "object id 999 is out of range: the object ids of the image"),
        ("²", (), "is not OID[.FIELD]"),
        ("x.y", (), "is not OID[.FIELD]"),
        ("{acct}.", (), "is not OID[.FIELD]"),
        ("{acct}", ("--since", "9", "--until", "2"), "since is past until"),
    ],
)
def test_history_bad_input(bank: tuple[str, int, int], what: str, extra: tuple[str, ...], message: str) -> None:
    """Bad input is one clear line and status 1; the image is left as it was."""
    path, acct, _ = bank
    with open(path, "rb") as f:
        before = f.read()
    r = CliRunner().invoke(cli, ["history", path, what.format(acct=acct), *extra])
    assert r.exit_code == 1 and message in r.output, r.output
    with open(path, "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("oid", ["-1", "-2", "0", "8", "9.balance"])
def test_history_names_an_object_id_out_of_range_and_the_range(bank: tuple[str, int, int], oid: str) -> None:
    """An object id below 1 or past the image's last id is an error naming it and the range of ids, never an
    object counted from the end of the table."""
    path, _, _ = bank
    r = CliRunner().invoke(cli, ["history", path, "--", oid])
    assert r.exit_code == 1, r.output
    message = f"object id {oid.partition('.')[0]} is out of range"
    assert message in r.output and "run from 1 to 7" in r.output  # the bank's objects


def test_a_none_key_is_shown_and_told_from_a_none_value(tmp_path: Any) -> None:
    """A dict's key None is shown ([None]; "key": null in JSON), and a value None ("old": null) is told from no
    value (left out)."""
    path = str(tmp_path / "keys.db")
    with memimg.open(path, root=Box) as img:
        img.root.content = {}
        d = img.root.content
        d[None] = None
        d[None] = 1
        oid = d._mi_oid
    lines = run("history", path, str(oid)).output.splitlines()
    assert [line.split()[6:] for line in lines] == [["[None]", "(none)", "->", "None"], ["[None]", "None", "->", "1"]]
    changes = [json.loads(line) for line in run("history", path, str(oid), "--json").output.splitlines()]
    assert [{k: c[k] for k in ("key", "old", "new") if k in c} for c in changes] == [
        {"key": None, "new": None},
        {"key": None, "old": None, "new": 1},
    ]
