"""Data-integrity edge cases: values, identity, snapshots, removed types, schemas, stores, CLI.

Each test guards against a bug found in review; its docstring says what went
wrong before the fix (each failed against that code). Subprocess-based tests
record logs with classes the reading process does not have (as in
production), under a per-test type-name prefix.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import memimg
from memimg import persistent
from tests.versions import Versions

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


# == schema evolution ==================================================================


# == CLI ===============================================================================


# == stores ============================================================================


# == further cases around the fixes above ===============================================
