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
