"""The command line on logs whose types are declared partway: stand-ins made as the log declares them.

The log declares a type at its first use in a session, and again after each
``snapshot`` event; a class's later version declares the fields it added.
These logs are written by another process (:class:`tests.versions.Versions`),
so this one reads them without the application's classes, through stand-ins.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from click.testing import CliRunner

import memimg
from memimg.cli import cli
from tests.tampering import rewrite_snapshot
from tests.versions import Versions

MODELS = """
@attrs.frozen
class Sku:
    code: str

memimg.converter.register_value(Sku, name="{P}.Sku")

@persistent(name="{P}.Product")
class Product:
    title: str
    sku: object = None

@persistent(name="{P}.Shop")
class Shop:
    name: str = ""
    products: dict = attrs.field(factory=dict)
"""


def _declared_midway(tmp_path: Any) -> Versions:
    """A log declaring Product and Sku first after a snapshot, again after a ``snapshot`` event, and again in a
    second session; three snapshots."""
    v = Versions(tmp_path)
    v.record(
        MODELS,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.name = "corner"
            img.snapshot()
            img.root.products["a"] = models.Product("apple", models.Sku("A1"))
            img.snapshot()
            img.root.products["b"] = models.Product("bread", models.Sku("B2"))
            img.root.products["a"].title = "green apple"
        """,
    )
    v.record(
        MODELS,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["c"] = models.Product("cake", models.Sku("C3"))
            img.snapshot()
            img.root.products["b"].sku = models.Sku("B3")
        """,
    )
    return v


def _declarations(path: str, name: str) -> list[int]:
    """The seqs of the events of the image at *path* declaring type *name*."""
    store = memimg.SQLiteStore(path, readonly=True)
    try:
        seqs = []
        for row in store.read():
            parts = orjson.loads(row[5])
            if len(parts) > 2 and name in parts[2]:
                seqs.append(row[0])
        return seqs
    finally:
        store.close()


class _Watched(memimg.SQLiteStore):
    """An SQLite store noting each read of its events (the seq it reads after)."""

    reads: list[int]

    def read(self, after: int = 0, limit: int | None = None) -> Any:
        self.reads.append(after)
        return super().read(after, limit)


def test_verify_reads_the_log_once_its_types_declared_midway(tmp_path: Any, monkeypatch: Any) -> None:
    """Without the classes, verify reads the log's events once -- its stand-ins made as the replay meets the
    declarations, not from a read of the whole log before -- and every snapshot equals the replay."""
    from memimg.cli import _verify

    v = _declared_midway(tmp_path)
    first_snapshot = min(s.seq for s in memimg.SQLiteStore(v.path, readonly=True).snapshots())
    for name in (f"{v.prefix}.Product", f"{v.prefix}.Sku"):
        seqs = _declarations(v.path, name)
        assert len(seqs) == 3 and seqs[0] > first_snapshot, (name, seqs)  # the log is what the test is about
    stores: list[_Watched] = []

    def open_store(target: str, *, readonly: bool) -> _Watched:
        store = _Watched(target, readonly=readonly)
        store.reads = []
        stores.append(store)
        return store

    monkeypatch.setattr(_verify, "open_store", open_store)
    r = CliRunner().invoke(cli, ["verify", v.path])
    assert r.exit_code == 0, r.output
    assert "3 snapshot(s) equal the replayed state" in r.output and "compared by" not in r.output, r.output
    assert [s.reads for s in stores] == [[0]]


def test_info_and_show_on_a_log_whose_types_are_declared_midway(tmp_path: Any) -> None:
    """info and show read such a log from its newest snapshot and the events after it, stand-ins and all."""
    v = _declared_midway(tmp_path)
    info = CliRunner().invoke(cli, ["info", v.path])
    assert info.exit_code == 0, info.output
    assert f"{v.prefix}.Product" in info.output and f"{v.prefix}.Shop" in info.output
    shown = CliRunner().invoke(cli, ["show", v.path, "products.b"])
    assert shown.exit_code == 0, shown.output
    assert "title: 'bread'" in shown.output and "B3" in shown.output and "B2" not in shown.output, shown.output
    apple = CliRunner().invoke(cli, ["show", v.path, "products.a.title"])
    assert apple.output.strip() == "'green apple'", apple.output


def _grown(tmp_path: Any) -> Versions:
    """A log whose Product gained a field in a later session (no migration): declared first without it."""
    v = Versions(tmp_path)
    v.record(
        MODELS,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", models.Sku("A1"))
            img.snapshot()
        """,
    )
    v.record(
        MODELS.replace("sku: object = None", "sku: object = None\n    stock: int = 0"),
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["b"] = models.Product("bread", models.Sku("B2"), stock=7)
            img.root.products["a"].stock = 3
            img.snapshot()
            img.root.products["b"].stock = 6
        """,
    )
    return v


def test_verify_reads_fields_a_later_declaration_added(tmp_path: Any) -> None:
    """A type whose later declarations list a field the first lacks is read with that field all along (the
    log read again for its declarations): every snapshot, before and after it was added, equals the replay,
    and one holding another value of that field is never called equal; show reads the field too."""
    v = _grown(tmp_path)
    r = CliRunner().invoke(cli, ["verify", v.path])
    assert r.exit_code == 0, r.output
    assert "2 snapshot(s) equal the replayed state" in r.output and "compared by" not in r.output, r.output
    seq = rewrite_snapshot(v.path, b",7]", b",8]")
    edited = CliRunner().invoke(cli, ["verify", v.path])
    # the stand-in cannot upgrade states of the type's first declaration, so its states are compared by id only
    assert "2 snapshot(s) equal" not in edited.output, edited.output
    assert f"snapshot at seq {seq}: 2 {v.prefix}.Product state(s) compared by object id" in edited.output
    shown = CliRunner().invoke(cli, ["show", v.path, "products.b.stock"])
    assert shown.output.strip() == "6", shown.output


def test_json_of_values_read_without_their_classes_says_what_they_are(tmp_path: Any) -> None:
    """Without the classes, show, history and diff --json print an enum member as {"$enum", "name"} and a value
    object as {"$type", field...}, as with them -- not the stand-ins' own types or a repr."""
    v = Versions(tmp_path)
    v.record(
        """
        import enum

        class Color(enum.Enum):
            RED = "red"
            BLUE = "blue"

        memimg.converter.register_value(Color, name="{P}.Color")

        @attrs.frozen
        class Sku:
            code: str

        memimg.converter.register_value(Sku, name="{P}.Sku")

        @persistent(name="{P}.Shop")
        class Shop:
            name: str = ""
            products: dict = attrs.field(factory=dict)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Color.RED
            img.root.products["b"] = models.Sku("A1")
            img.root.products["a"] = models.Color.BLUE
            print(img.root.products._mi_oid)
        """,
    )
    color, sku = {"$enum": f"{v.prefix}.Color", "name": "BLUE"}, {"$type": f"{v.prefix}.Sku", "code": "A1"}
    shown = json.loads(CliRunner().invoke(cli, ["show", v.path, "products", "--json"]).output)
    assert shown["items"] == [["a", color], ["b", sku]]
    diff = json.loads(CliRunner().invoke(cli, ["diff", v.path, "1", "--json"]).output)
    assert sorted((d["path"], d["new"]) for d in diff["differences"]) == [
        ("root.products['a']", color),
        ("root.products['b']", sku),
    ]
    lines = CliRunner().invoke(cli, ["history", v.path, str(shown["$id"]), "--json"]).output.splitlines()
    assert [json.loads(line)["new"] for line in lines] == [{**color, "name": "RED"}, sku, color]
