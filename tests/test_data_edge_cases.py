"""Data-integrity edge cases: values, identity, snapshots, removed types, schemas, stores, CLI.

Each test guards against a bug found in review; its docstring says what went
wrong before the fix (each failed against that code). Subprocess-based tests
record logs with classes the reading process does not have (as in
production), under a per-test type-name prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

import memimg
from memimg import persistent
from memimg._cli import cli
from tests.versions import ROOT, Versions

# -- shared models ----------------------------------------------------------------


@persistent(name="rvd.Box")
class Box:
    v: Any = None
    other: Any = None
    d: Any = None


@persistent(name="rvd.Coupon")
class Coupon:
    code: str = ""


@persistent(name="rvd.Shop")
class Shop:
    items: list = attrs.field(factory=list)
    best: Any = None


# -- helpers ----------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str] | None = None, cwd: Any = None) -> subprocess.CompletedProcess[str]:
    """The memimg command line in a fresh process that has none of the application's classes."""
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    full_env.pop("MEMIMG_IMPORT", None)
    return subprocess.run(
        [sys.executable, "-m", "memimg", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )


@pytest.fixture
def v(tmp_path: Any) -> Versions:
    return Versions(tmp_path)


# == values ========================================================================


# == identity, gc, snapshots =========================================================


def test_transaction_reattaching_an_object_collected_by_a_snapshot_commits() -> None:
    """An object detached earlier, re-attached inside a transaction, then collected by a snapshot's
    gc before the commit: the commit fails with an internal error."""
    img = memimg.open(":memory:", root=Box)
    a = Box("a")
    img.root.other = a
    img.root.other = None
    tx = img.begin()
    img.root.v = a
    img.snapshot()  # e.g. an automatic snapshot triggered by another thread's commit
    tx.save()
    assert memimg.replay(img.events()).v.v == "a"


# == removed types ===================================================================


def test_snapshot_after_refresh_with_removed_types_reopens() -> None:
    """Objects of a removed type arriving through refresh() stay in collections as Gone
    placeholders; the next snapshot references them without records and cannot be loaded."""
    store = memimg.MemoryStore()
    a = memimg.open(store, root=Shop)
    b = memimg.open(store, root=Shop, removed_types=("rvd.Coupon",))
    a.root.items.append(Coupon("x"))
    b.refresh()
    b.snapshot()
    with memimg.open(store, root=Shop, removed_types=("rvd.Coupon",)) as c:
        assert c.root.items == []


def test_readonly_image_with_removed_types_follows_the_log() -> None:
    """Read-only, the clean-up of removed objects cannot be logged, and done in memory only, later
    list events (by index) from a writer would land on the wrong elements: the open is refused
    until a writable open has logged the clean-up; after that, a read-only image follows the log."""
    store = memimg.MemoryStore()
    a = memimg.open(store, root=Shop)
    a.root.items.extend([Coupon("c"), "x", "y"])
    with pytest.raises(memimg.MemimgError, match="read-only") as info:
        memimg.open(store, root=Shop, removed_types=("rvd.Coupon",), readonly=True)
    assert "rvd.Coupon" in str(info.value)
    memimg.open(store, root=Shop, removed_types=("rvd.Coupon",)).close()  # logs the clean-up
    b = memimg.open(store, root=Shop, removed_types=("rvd.Coupon",), readonly=True)
    assert b.root.items == ["x", "y"]
    a.refresh()
    assert a.root.items == ["x", "y"]  # the writer with the old classes sees the clean-up too
    del a.root.items[0]  # the writer removes "x"
    b.refresh()
    assert b.root.items == ["y"]


def test_verify_after_migrate_with_removed_types(tmp_path: Any) -> None:
    """References cleared by removed_types are changed in memory only; the snapshot migrate writes
    then differs from the replayed log, and `memimg verify` reports corruption."""
    path = str(tmp_path / "shop.db")
    with memimg.open(path, root=Shop) as img:
        c = Coupon("x")
        img.root.items.extend([c, "keep"])
        img.root.best = c
    memimg.migrate(path, root=Shop, removed_types=("rvd.Coupon",))
    result = CliRunner().invoke(cli, ["verify", path])
    assert result.exit_code == 0, result.output


# == schema evolution ==================================================================


def test_states_written_after_a_snapshot_without_their_declaration_are_upgraded(v: Versions) -> None:
    """A snapshot declares only the types reachable at that moment; a process that declared a class
    earlier does not declare it again, so states written after the snapshot are read as the current
    version and the upgrader is silently skipped."""
    v.record(
        """
        @persistent(name="{P}.Product")
        class Product:
            amount: int = 0          # cents

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product(120)
            del img.root.products["a"]
            img.snapshot()
            img.root.products["b"] = models.Product(250)
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Product", version=2)
        class Product:
            amount: Decimal = Decimal(0)   # euros

        @memimg.upgrader("{P}.Product", from_version=1)
        def _up(state):
            if "amount" in state:
                state["amount"] = Decimal(state["amount"]) / 100
            return state

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
        """
    )
    with memimg.open(v.path, root=new.Shop) as img:
        assert img.root.products["b"].amount == Decimal("2.50")


def test_value_class_field_rename_is_honoured(v: Versions) -> None:
    """Value classes "evolve the same way", but memimg.field(renamed_from=...) on a frozen attrs
    value class is ignored (and they have no version for upgraders)."""
    v.record(
        """
        @attrs.frozen
        class Sku:
            code: str

        memimg.converter.register_value(Sku, name="{P}.Sku")

        @persistent(name="{P}.Shop")
        class Shop:
            skus: list = attrs.field(factory=list)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.skus.append(models.Sku("a1"))
        """,
    )
    new = v.load(
        """
        @attrs.frozen
        class Sku:
            sku: str = memimg.field(default="", renamed_from="code")

        memimg.converter.register_value(Sku, name="{P}.Sku")

        @persistent(name="{P}.Shop")
        class Shop:
            skus: list = attrs.field(factory=list)
        """
    )
    with memimg.open(v.path, root=new.Shop) as img:
        assert img.root.skus == [new.Sku("a1")]


# == CLI ===============================================================================


def test_cli_compact_keeps_fields_added_later(v: Versions) -> None:
    """Without the application's code the CLI makes one stand-in class from the first declaration
    it meets; later declarations of the same name resolve to that class and their new fields are
    dropped -- and `memimg compact` writes that loss into the image."""
    v1 = """
    @persistent(name="{P}.Product")
    class Product:
        title: str

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
    """
    v2 = """
    @persistent(name="{P}.Product")
    class Product:
        title: str
        stock: int = 0

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
    """
    v.record(
        v1, 'with memimg.open(path, root=models.Shop) as img:\n    img.root.products["a"] = models.Product("apple")\n'
    )
    v.record(
        v2,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["b"] = models.Product("bread", 7)
            img.root.products["a"].stock = 3
        """,
    )
    out = run_cli(["compact", v.path], cwd=v.tmp)
    assert out.returncode == 0, out.stderr
    new = v.load(v2)
    with memimg.open(v.path, root=new.Shop) as img:
        assert {k: p.stock for k, p in img.root.products.items()} == {"a": 3, "b": 7}


def test_cli_verify_with_frozensets_written_by_another_process(v: Versions) -> None:
    """verify compares snapshot JSON, but frozenset items are encoded in iteration order, which
    depends on the hash seed of the process that wrote the snapshot."""
    v.record(
        """
        @persistent(name="{P}.Shop")
        class Shop:
            tags: frozenset = frozenset()
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.tags = frozenset("abcdefghijklmnop")
            img.snapshot()
        """,
        env={"PYTHONHASHSEED": "1"},
    )
    out = run_cli(["verify", v.path], env={"PYTHONHASHSEED": "2"}, cwd=v.tmp)
    assert out.returncode == 0, out.stderr


# == stores ============================================================================


# == further cases around the fixes above ===============================================


def test_value_class_version_runs_its_upgrader(v: Versions) -> None:
    v.record(
        """
        @attrs.frozen
        class Price:
            cents: int

        memimg.converter.register_value(Price, name="{P}.Price")

        @persistent(name="{P}.Shop")
        class Shop:
            prices: list = attrs.field(factory=list)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.prices.append(models.Price(250))
        """,
    )
    new = v.load(
        """
        @attrs.frozen
        class Price:
            euros: Decimal

        memimg.converter.register_value(Price, name="{P}.Price", version=2)

        @memimg.upgrader("{P}.Price", from_version=1)
        def _up(state):
            return {"euros": Decimal(state.pop("cents")) / 100}

        @persistent(name="{P}.Shop")
        class Shop:
            prices: list = attrs.field(factory=list)
        """
    )
    with memimg.open(v.path, root=new.Shop) as img:
        assert img.root.prices == [new.Price(Decimal("2.50"))]


@attrs.frozen
class Stamp:
    label: str


@persistent(name="rvd.Holder")
class Holder:
    pair: Any = None
    tags: Any = None
    stamp: Any = None


def test_removed_value_types_are_cleaned_and_the_clean_up_is_logged() -> None:
    memimg.converter.register_value(Stamp, name="rvd.Stamp")
    store = memimg.MemoryStore()
    with memimg.open(store, root=dict) as img:
        img.root["h"] = Holder(pair=(1, Stamp("a")), tags=frozenset({"t", Stamp("b")}), stamp=Stamp("c"))
        img.root["l"] = ["x", Stamp("d"), "y"]
        img.root[(2, Stamp("k"))] = "keyed"
    with memimg.open(store, root=dict, removed_types=("rvd.Stamp",)) as img:
        h = img.root["h"]
        assert (h.pair, h.tags, h.stamp) == ((1, None), frozenset({"t"}), None)
        assert img.root["l"] == ["x", "y"]
        assert (2, Stamp("k")) not in img.root and len(img.root) == 2
        report = img.schema_report
        assert report.references_cleared == 2 and report.elements_dropped == 3
    # the clean-up is in the log: a process that still has the class reads the same
    with memimg.open(store, root=dict) as img:
        h = img.root["h"]
        assert (h.pair, h.tags, h.stamp) == ((1, None), frozenset({"t"}), None)
        assert img.root["l"] == ["x", "y"] and len(img.root) == 2


def test_removed_objects_arriving_by_refresh_are_cleaned_by_a_writer() -> None:
    store = memimg.MemoryStore()
    old = memimg.open(store, root=Shop)
    new = memimg.open(store, root=Shop, removed_types=("rvd.Coupon",))
    old.root.items.extend(["a", Coupon("c"), "b"])
    new.refresh()
    assert new.root.items == ["a", "b"]
    old.refresh()
    assert old.root.items == ["a", "b"]  # the writer logged the clean-up
    old.root.items.insert(1, "between")
    new.refresh()
    assert new.root.items == ["a", "between", "b"]


def test_cli_snapshot_is_refused_when_stand_ins_cannot_upgrade(v: Versions) -> None:
    """States of one type stored at two versions: without the class, a snapshot would rewrite the
    old ones under the new version and skip their upgrader; the CLI refuses and changes nothing."""
    for version in (1, 2):
        v.record(
            f"""
            @persistent(name="{{P}}.Product", version={version})
            class Product:
                amount: int = 0

            @memimg.upgrader("{{P}}.Product", from_version=1)
            def _up(state):
                return state

            @persistent(name="{{P}}.Shop")
            class Shop:
                products: list = attrs.field(factory=list)
            """,
            """
            with memimg.open(path, root=models.Shop) as img:
                img.root.products.append(models.Product(5))
            """,
        )
    before = memimg.SQLiteStore(v.path)
    snapshots = before.snapshots()
    before.close()
    out = run_cli(["snapshot", v.path], cwd=v.tmp)
    assert out.returncode != 0
    assert "refusing to write" in out.stderr and "version" in out.stderr
    after = memimg.SQLiteStore(v.path)
    assert after.snapshots() == snapshots
    after.close()
