"""Time travel in the corners: removed and deleted types, fields added since, keys that are objects, values
that compare equal but are stored differently (``img.at``, ``img.diff``)."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from typing import Any

import attrs
import pytest

import memimg
from memimg import persistent
from memimg.core import _schema, _types
from memimg.core._rows import ts_to_datetime
from memimg.image import _direct
from tests.conftest import Images, log_meta
from tests.models import Box, Color, Money, Node, Point
from tests.versions import Versions


@persistent(name="ttcases.Coupon")
class Coupon:
    code: str = ""


@persistent(name="ttcases.Shop")
class Shop:
    items: list[Any] = attrs.field(factory=list)
    name: str = ""


def test_at_reads_the_seqs_before_a_removed_type_was_cleaned_up(make_image: Images) -> None:
    """Between the last use of a removed type and the clean-up a writer logs, past images are read too: a past
    image never reads a later event, so it cleans the placeholders in memory, and writes nothing."""
    old = make_image(root=Shop)
    old.root.items.extend(["a", Coupon("c"), "b"])
    used = old.seq
    old.root.name = "x"
    new = make_image(root=Shop, removed_types=("ttcases.Coupon",))
    assert new.seq > used + 1  # the writer logged the clean-up
    head, meta = new.store.head(), log_meta(new.store)
    for seq, name in ((used, ""), (used + 1, "x")):
        with new.at(seq) as past:
            assert past.root.items == ["a", "b"] and past.root.name == name
    assert [(d.path, d.old, d.new) for d in new.diff(used)] == [("root.name", "", "x")]
    assert (new.store.head(), log_meta(new.store)) == (head, meta)


# -- keys and members that are objects, or hold them --------------------------------------


def test_an_object_used_as_a_dict_key_has_a_path_of_its_own(make_image: Images) -> None:
    """A dict's value is reached at path[key], the key object at path{key <Type #id>}: their changes are told
    apart."""
    img = make_image(root=Box)
    k, v = Node(value="key"), Node(value="val")
    img.root.content = {k: v}
    a = img.seq
    with img.transaction():
        k.value = "KEY"
        v.value = "VAL"
    key = f"<tests.models.Node #{k._mi_oid}>"
    assert [(d.path, d.old, d.new) for d in img.diff(a)] == [
        (f"root.content[{key}].value", "val", "VAL"),
        (f"root.content{{key {key}}}.value", "key", "KEY"),
    ]


def test_keys_are_written_short_and_as_python_where_they_can_be(make_image: Images) -> None:
    """An entity inside a key is <Type #id> (not its repr), an enum member Class.NAME; keys without objects
    are Python expressions that give the key."""
    img = make_image(root=Box)
    big = Node(value="k", children=[Node(value=i) for i in range(50)])
    with img.transaction():
        img.root.content = {(big, 1): 0, Color.RED: 0, Point(1, 2): 0, frozenset({2, 1}): 0, ("t",): 0}
        img.root.other = big
    a = img.seq
    with img.transaction():
        for key in list(img.root.content):
            img.root.content[key] = 1
    paths = [d.path for d in img.diff(a)]
    assert paths == [
        f"root.content[(<tests.models.Node #{big._mi_oid}>, 1)]",
        "root.content[Color.RED]",
        "root.content[Point(x=1, y=2)]",
        "root.content[frozenset({1, 2})]",
        "root.content[('t',)]",
    ]
    names = {"root": img.root, "Color": Color, "Point": Point}
    assert [eval(p, names) for p in paths[1:]] == [1, 1, 1, 1]


# -- values that compare equal -------------------------------------------------------------


def test_values_that_compare_equal_but_are_stored_differently_are_changes(make_image: Images) -> None:
    """Decimal('1') -> Decimal('1.00'), 0.0 -> -0.0, one instant at another UTC offset, inside value objects
    and sets too: the log holds a change, and so does the diff."""
    img = make_image(root=dict)
    noon = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    with img.transaction():
        img.root.update(d=Decimal("1"), z=0.0, t=noon, m=Money(Decimal("1")), s={0.0}, same=Decimal("2.0"))
    a = img.seq
    later = noon.astimezone(dt.timezone(dt.timedelta(hours=1)))
    with img.transaction():
        img.root.update(d=Decimal("1.00"), z=-0.0, t=later, m=Money(Decimal("1.0")), same=Decimal("2.0"))
        img.root["s"].discard(0.0)
        img.root["s"].add(-0.0)
    got = [(d.path, str(d.old), str(d.new)) for d in img.diff(a)]
    assert got == [
        ("root['d']", "1", "1.00"),
        ("root['z']", "0.0", "-0.0"),
        ("root['t']", str(noon), str(later)),
        ("root['m']", "Money(amount=Decimal('1'), currency='EUR')", "Money(amount=Decimal('1.0'), currency='EUR')"),
        ("root['s']", "0.0", "MISSING"),
        ("root['s']", "MISSING", "-0.0"),
    ]


# -- schema changes: fields added since, classes deleted after a migration -------------------

_V1 = """
@persistent(name="{P}.Item")
class Item:
    name: str = ""

@persistent(name="{P}.Shop")
class Shop:
    items: list = attrs.field(factory=list)
"""


def test_objects_a_past_image_fills_in_are_compared_by_content(tmp_path: Any) -> None:
    """A field added since is filled in without an id in a past image (read-only) and with one once a writer
    logged it: the same content is no change, another is itemized, and one without an id shows its content."""
    v = Versions(tmp_path)
    v.record(_V1, 'with memimg.open(path, root=models.Shop) as img:\n    img.root.items.append(models.Item("a"))\n')
    new = v.load(
        """
        @persistent(name="{P}.Item")
        class Item:
            name: str = ""
            tags: list = attrs.field(factory=list)

        @persistent(name="{P}.Shop")
        class Shop:
            items: list = attrs.field(factory=list)
            extra: dict = attrs.field(factory=dict)
        """
    )
    with v.open(new) as img:
        before = 2  # the root, then the item
        filled = img.seq  # the writer logged the fills
        assert filled > before
        assert not img.diff(before, filled)
        img.root.extra["k"] = 1
        img.root.items[0].tags = None
        diff = img.diff(before)
        assert str(diff).splitlines() == ["root.extra['k']: MISSING → 1", "root.items[0].tags: [] → None"]
        assert diff[1].old._mi_oid is None and diff[1].old == []


_COUPONS = """
@persistent(name="{P}.Coupon")
class Coupon:
    code: str = ""

@persistent(name="{P}.Shop")
class Shop:
    items: list = attrs.field(factory=list)
    n: int = 0
"""
_SHOP = """
@persistent(name="{P}.Shop")
class Shop:
    items: list = attrs.field(factory=list)
    n: int = 0
"""


def test_a_class_deleted_after_a_migration_is_read_into_a_stand_in_in_the_past(tmp_path: Any) -> None:
    """After memimg.migrate, removed_types may go from the code: a state before the migration holds objects
    of a type no class claims, read into generic stand-ins (not left registered for later opens)."""
    v = Versions(tmp_path)
    script = 'with memimg.open(path, root=models.Shop) as img:\n    img.root.items.append(models.Coupon("A"))\n'
    v.record(_COUPONS, script)
    new = v.load(_SHOP)
    memimg.migrate(v.path, root=new.Shop, removed_types=(f"{v.prefix}.Coupon",))
    with v.open(new) as img:
        with img.at(2) as past:
            (coupon,) = past.root.items
            assert type(coupon).__name__ == "Coupon" and coupon.code == "A"
        assert [(d.path, len(d.old), d.new) for d in img.diff(2)] == [("root.items", 1, [])]
    with pytest.raises(memimg.UnknownTypeError):
        _types.resolve(f"{v.prefix}.Coupon")


def test_a_past_state_older_than_the_upgraders_kept_is_read_with_on_schema_drift(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a migration the upgraders may go: at() of an older state says how to read it, and reads it with
    on_schema_drift="drop" (diff() too)."""
    v = Versions(tmp_path)
    v.record(_SHOP, "with memimg.open(path, root=models.Shop) as img:\n    img.root.n = 5\n")
    upgrade = '\n@memimg.upgrader("{P}.Shop", from_version=1)\ndef up(state: dict) -> dict:\n    return state\n'
    newer = v.load(_SHOP.replace('name="{P}.Shop")', 'name="{P}.Shop", version=2)') + upgrade)
    memimg.migrate(v.path, root=newer.Shop)
    monkeypatch.delitem(_schema._UPGRADERS, (f"{v.prefix}.Shop", 1))  # deleted from the code
    with v.open(newer) as img:
        with pytest.raises(memimg.SchemaError, match=r'img\.at\(\.\.\., on_schema_drift="drop"\)'):
            img.at(2)
        with img.at(2, on_schema_drift="drop") as past:
            assert past.root.n == 5
        assert not img.diff(2, on_schema_drift="drop")


# -- commit times ---------------------------------------------------------------------------


def test_commit_times_never_go_back_with_seq_whatever_the_clocks(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit is stamped no earlier than the newest event its image read or wrote: a clock stepped back, an
    image opened on a clock behind, one catching up with a writer ahead -- times still grow with seq, so
    at(time=t) is the state after the last commit at or before t."""
    base = time.time_ns() // 1000 - 60_000_000
    clock = [base]
    monkeypatch.setattr(_direct, "now_us", lambda: clock[0])  # the one clock of every commit path
    a = make_image(root=Box)
    for t, img, field in ((3000, a, "content"), (1000, a, "content"), (500, None, "other"), (5000, a, "content")):
        clock[0] = base + t
        if img is None:
            img = b = make_image(root=Box)  # opened on a clock behind the log
        setattr(img.root, field, t)
    clock[0] = base + 600
    b.root.other = 600  # behind a's last commit, which it catches up with first
    stamps = [e.ts for e in a.events()]
    assert stamps == sorted(stamps) and stamps[-1] == ts_to_datetime(base + 5000)
    with a.at(time=ts_to_datetime(base + 4000)) as past:
        assert (past.root.content, past.root.other) == (1000, 500)
