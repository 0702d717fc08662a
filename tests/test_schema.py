"""Schema evolution with real old data: added, renamed and removed fields and types, upgraders, drift.

Most tests write an old version of a model module, record a log with it in a
subprocess (a separate program, as in production), then open that log here
with the new version of the module (see ``tests/versions.py``); those logs
are SQLite files. Removed types, which one process can show with two images
on one log, are tested on every store.
"""

from __future__ import annotations

import enum
import textwrap
from decimal import Decimal
from typing import Any

import attrs
import pytest

import memimg
from memimg import persistent
from memimg.core import _types
from tests.conftest import Images
from tests.models import Box
from tests.tampering import append_event
from tests.versions import Versions


@pytest.fixture
def v(tmp_path: Any) -> Versions:
    return Versions(tmp_path)


SHOP_V1 = """
@persistent(name="{P}.Product")
class Product:
    title: str
    cents: int = 0

@persistent(name="{P}.Shop")
class Shop:
    products: dict = attrs.field(factory=dict)
    shelf: list = attrs.field(factory=list)
"""


def test_added_fields_and_reordering_need_nothing(v: Versions) -> None:
    """Fields added with defaults, and fields reordered, read old states with no declaration; methods change freely."""
    v.record(
        SHOP_V1,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", 120)
            img.snapshot()
            img.root.products["b"] = models.Product("bread", 250)
            img.root.products["a"].cents = 130
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Product")
        class Product:
            cents: int = 0
            stock: int = 5
            tags: list = attrs.field(factory=list)
            title: str = ""

            def price(self) -> Decimal:  # methods change freely
                return Decimal(self.cents) / 100

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            shelf: list = attrs.field(factory=list)
            opened: bool = True
        """
    )
    with v.open(new) as img:
        a, b = img.root.products["a"], img.root.products["b"]
        assert (a.title, a.cents, a.stock, a.tags, b.stock) == ("apple", 130, 5, [], 5)
        assert img.root.opened is True and a.price() == Decimal("1.30")
        assert not img.schema_report.differences
        assert img.schema_report.defaults_filled
        a.stock = 1
    with v.open(new) as img:
        assert img.root.products["a"].stock == 1


SHOP_V2_WITH_OBJECT_FIELDS = """
@persistent(name="{P}.Note")
class Note:
    text: str = "new"

@persistent(name="{P}.Product")
class Product:
    title: str
    cents: int = 0
    tags: list = attrs.field(factory=list)
    stock: dict = attrs.field(factory=dict)
    labels: set = attrs.field(factory=set)
    note: Note = attrs.field(factory=Note)
    nested: dict = attrs.field(factory=lambda: {"by_size": [], "pair": (1, Note("in a tuple"))})

@persistent(name="{P}.Shop")
class Shop:
    products: dict = attrs.field(factory=dict)
    shelf: list = attrs.field(factory=list)
    log: list = attrs.field(factory=list)
"""


def _record_v1_shop(v: Versions) -> None:
    v.record(
        SHOP_V1,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", 120)
            img.snapshot()
            img.root.products["b"] = models.Product("bread", 250)
        """,
    )


def test_added_collection_and_entity_fields_are_tracked_and_durable(v: Versions) -> None:
    """Objects made by the defaults of fields added later are attached: their changes are logged and survive."""
    _record_v1_shop(v)
    new = v.load(SHOP_V2_WITH_OBJECT_FIELDS)
    with v.open(new) as img:
        a, b = img.root.products["a"], img.root.products["b"]  # a from the snapshot, b from an event
        for p in (a, b):
            assert type(p.tags) is memimg.TrackedList and p.tags._mi_oid is not None
            assert p.note._mi_oid is not None and p.nested["by_size"]._mi_oid is not None
        assert img.root.log._mi_oid is not None
        seq = img.seq
        a.tags.append("red")
        b.stock["s"] = 3
        a.labels.add("x")
        a.note.text = "edited"
        b.nested["by_size"].append(9)
        img.root.log.append("opened")
        assert img.seq == seq + 6
        img.snapshot()  # the objects are part of the graph: a snapshot holds them
        a.tags.append("green")
    for _ in range(2):  # twice: the second open reads nothing to fill in, and logs nothing
        with v.open(new) as img:
            a, b = img.root.products["a"], img.root.products["b"]
            assert (a.tags, b.stock, a.labels, a.note.text) == (["red", "green"], {"s": 3}, {"x"}, "edited")
            assert (b.nested["by_size"], b.nested["pair"][1].text, img.root.log) == ([9], "in a tuple", ["opened"])
            seq = img.seq
        with v.open(new) as img:
            assert img.seq == seq


def test_filled_in_objects_get_the_same_ids_in_every_reader(v: Versions) -> None:
    """A reader of the log -- a replay from nothing, a follower -- gives the filled-in objects the writer's ids."""
    _record_v1_shop(v)
    new = v.load(SHOP_V2_WITH_OBJECT_FIELDS)
    follower = v.open(new, readonly=True)  # opened before any writer logged the defaults
    try:
        tags = follower.root.products["a"].tags
        assert type(tags) is memimg.TrackedList and tags._mi_oid is None
        with pytest.raises(memimg.ReadOnlyError):
            tags.append("x")
        with v.open(new) as img:
            ids = {p: (img.root.products[p].tags._mi_oid, img.root.products[p].note._mi_oid) for p in "ab"}
            img.root.products["a"].tags.append("red")
        follower.refresh()
        got = {p: (follower.root.products[p].tags._mi_oid, follower.root.products[p].note._mi_oid) for p in "ab"}
        assert got == ids and follower.root.products["a"].tags == ["red"]
    finally:
        follower.close()
    replayed = memimg.replay(memimg.open(v.path, root=new.Shop, readonly=True).events())
    assert replayed.products["a"].tags == ["red"] and replayed.products["b"].note.text == "new"


def test_objects_written_by_an_older_program_meanwhile_are_filled_in_and_logged(v: Versions) -> None:
    """A product an older program adds while a newer one runs gets its new fields' objects attached on refresh."""
    _record_v1_shop(v)
    new = v.load(SHOP_V2_WITH_OBJECT_FIELDS)
    with v.open(new) as img:
        v.record(
            SHOP_V1,
            """
            # a rolling upgrade: the older program opens a log the newer one wrote to
            with memimg.open(path, root=models.Shop, on_schema_drift="drop") as old:
                old.root.products["c"] = models.Product("cake", 999)
            """,
        )
        img.refresh()
        c = img.root.products["c"]
        assert c.tags._mi_oid is not None
        c.tags.append("sweet")
    with v.open(new) as img:
        assert img.root.products["c"].tags == ["sweet"]


def test_filled_in_objects_whose_logging_failed_are_logged_before_any_write(v: Versions) -> None:
    """When logging the objects filled in for another program's new products fails (the log is locked),
    they stay attached: a write to one fails too rather than going untracked, and once the log is free
    the next write logs them first; snapshots and reopening keep every change."""
    import sqlite3

    _record_v1_shop(v)
    new = v.load(SHOP_V2_WITH_OBJECT_FIELDS)
    with v.open(new, busy_timeout=0.05) as img:
        v.record(
            SHOP_V1,
            """
            with memimg.open(path, root=models.Shop, on_schema_drift="drop") as old:
                old.root.products["c"] = models.Product("cake", 999)
            """,
        )
        blocker = sqlite3.connect(v.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the log
        with pytest.raises(memimg.LockedError):
            img.refresh()
        c = img.root.products["c"]
        assert type(c.tags) is memimg.TrackedList  # attached, not yet logged
        with pytest.raises(memimg.LockedError):
            c.tags.append("sweet")
        assert c.tags == []
        blocker.execute("ROLLBACK")
        blocker.close()
        c.tags.append("sweet")
        img.snapshot()
        c.stock["s"] = 1
    with v.open(new) as img:
        c = img.root.products["c"]
        assert (c.tags, c.stock) == (["sweet"], {"s": 1})


def test_objects_an_upgrader_makes_are_tracked_and_durable(v: Versions) -> None:
    """A list or entity an upgrader puts in a state is attached like an assigned value."""
    _record_v1_shop(v)
    new = v.load(
        """
        @persistent(name="{P}.Product", version=2)
        class Product:
            title: str
            history: list = attrs.field(factory=list)

        @memimg.upgrader("{P}.Product", from_version=1)
        def cents_to_history(state: dict) -> dict:
            if "cents" in state:
                state["history"] = [state.pop("cents")]
            return state

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            shelf: list = attrs.field(factory=list)
        """
    )
    with v.open(new) as img:
        a = img.root.products["a"]
        assert a.history == [120] and a.history._mi_oid is not None
        a.history.append(130)
    report = memimg.migrate(v.path, root=new.Shop)
    assert report.snapshot_seq
    with v.open(new) as img:
        assert img.root.products["a"].history == [120, 130]
        assert img.root.products["b"].history == [250]


def test_renamed_field_class_and_removed_field(v: Versions) -> None:
    """A field renamed (renamed_from), a class renamed (aliases) and a field removed (removed=) are read
    as declared, and counted in the report."""
    old = """
    @persistent(name="{P}.Item")
    class Item:
        label: str
        cents: int = 0
        legacy_code: str = "x"

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
    """
    v.record(
        old,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Item("apple", 120)
            img.snapshot()
            img.root.products["b"] = models.Item("bread")
            img.root.products["a"].label = "green apple"
            img.root.products["b"].legacy_code = "y"
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Product", aliases=("{P}.Item",), removed=("legacy_code",))
        class Product:
            title: str = memimg.field(default="", renamed_from="label")
            cents: int = 0

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
        """
    )
    with v.open(new) as img:
        a, b = img.root.products["a"], img.root.products["b"]
        assert type(a) is new.Product and (a.title, a.cents, b.title) == ("green apple", 120, "bread")
        report = img.schema_report
        assert not report.differences
        assert report.renamed_fields[(f"{v.prefix}.Product", "label", "title")] >= 3
        assert report.dropped_fields[(f"{v.prefix}.Product", "legacy_code")] >= 2
        assert report.renamed_types[(f"{v.prefix}.Item", f"{v.prefix}.Product")] >= 1
        assert "renamed" not in str(report) or "read as" in str(report)


def test_type_change_with_an_upgrader_everywhere_state_is_stored(v: Versions) -> None:
    """int cents -> Decimal price, in snapshots, attach events and field-set events."""
    v.record(
        SHOP_V1,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", 120)
            img.snapshot()
            img.root.products["b"] = models.Product("bread", 250)
            img.root.shelf.append(models.Product("cake", 999))
            img.root.products["a"].cents = 135
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Product", version=2)
        class Product:
            title: str
            price: Decimal = Decimal("0")

        @memimg.upgrader("{P}.Product", from_version=1)
        def cents_to_price(state: dict) -> dict:
            if "cents" in state:
                state["price"] = Decimal(state.pop("cents")) / 100
            return state

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            shelf: list = attrs.field(factory=list)
        """
    )
    assert new.cents_to_price({"title": "x", "cents": 5}) == {"title": "x", "price": Decimal("0.05")}
    with v.open(new) as img:
        p = img.root.products
        assert (p["a"].price, p["b"].price, img.root.shelf[0].price) == (
            Decimal("1.35"),
            Decimal("2.5"),
            Decimal("9.99"),
        )
        assert sum(img.schema_report.upgraded.values()) >= 4
        p["a"].price = Decimal("2")
    with v.open(new) as img:
        assert img.root.products["a"].price == Decimal("2")


def test_upgrader_chain(v: Versions) -> None:
    """States two versions old run through both upgraders, in order, each counted in the report."""
    v.record(
        SHOP_V1,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("Apple Pie", 120)
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Product", version=3)
        class Product:
            first: str = ""
            rest: str = ""
            price: Decimal = Decimal("0")

        @memimg.upgrader("{P}.Product", from_version=1)
        def v1(state: dict) -> dict:
            if "cents" in state:
                state["price"] = Decimal(state.pop("cents")) / 100
            return state

        @memimg.upgrader("{P}.Product", from_version=2)
        def v2(state: dict) -> dict:
            if "title" in state:
                state["first"], _, state["rest"] = state.pop("title").partition(" ")
            return state

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            shelf: list = attrs.field(factory=list)
        """
    )
    with v.open(new) as img:
        a = img.root.products["a"]
        assert (a.first, a.rest, a.price) == ("Apple", "Pie", Decimal("1.2"))
        assert img.schema_report.upgraded[(f"{v.prefix}.Product", 1, 2)] == 1
        assert img.schema_report.upgraded[(f"{v.prefix}.Product", 2, 3)] == 1


def test_removed_class(v: Versions) -> None:
    """References become None, elements are dropped, and the counts are reported."""
    old = """
    @persistent(name="{P}.Coupon")
    class Coupon:
        code: str

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
        shelf: list = attrs.field(factory=list)
        best: object = None
        bag: set = attrs.field(factory=set)
    """
    v.record(
        old,
        """
        with memimg.open(path, root=models.Shop) as img:
            c1, c2 = models.Coupon("A"), models.Coupon("B")
            img.root.shelf.extend(["x", c1, "y", c2, "z"])
            img.root.best = c1
            img.root.products.update(c=c2, k="keep")
            img.root.bag.update({c1, "m"})
            img.root.shelf.remove("y")   # a positional event after the removed elements
            img.root.shelf.insert(3, "w")
            c1.code = "AA"              # an event on a removed object
        """,
    )
    new_source = """
    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
        shelf: list = attrs.field(factory=list)
        best: object = None
        bag: set = attrs.field(factory=set)
    """
    new = v.load(new_source)
    with pytest.raises(memimg.UnknownTypeError, match=f"{v.prefix}.Coupon") as info:
        v.open(new)
    assert "removed_types" in str(info.value)
    with v.open(new, removed_types=(f"{v.prefix}.Coupon",)) as img:
        r = img.root
        assert r.shelf == ["x", "w", "z"] and r.best is None and r.products == {"k": "keep"} and r.bag == {"m"}
        report = img.schema_report
        assert report.removed_objects[f"{v.prefix}.Coupon"] == 2
        assert report.references_cleared == 1 and report.elements_dropped == 4 and report.events_skipped == 1
    with v.open(new, removed_types=(f"{v.prefix}.Coupon",)) as img:  # the clean-up is in the log now
        assert img.root.shelf == ["x", "w", "z"]
    report = memimg.migrate(v.path, root=new.Shop, removed_types=(f"{v.prefix}.Coupon",))
    assert report.snapshot_seq
    with v.open(new) as img:  # after the migration snapshot, no declaration is needed any more
        assert img.root.shelf == ["x", "w", "z"]


def test_undeclared_drift_lists_every_difference(v: Versions) -> None:
    """A log whose schema differs from the code in undeclared ways is refused, listing every difference
    with its fix, and left as it was; on_schema_drift="drop" opens it anyway."""
    v.record(
        SHOP_V1 + '\n@persistent(name="{P}.Gift")\nclass Gift:\n    to: str = ""\n',
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", 120)
            img.root.shelf.append(models.Gift("ann"))
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Product")
        class Product:
            stock: int
            name: str = ""

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            shelf: list = attrs.field(factory=list)
        """
    )
    before = open(v.path, "rb").read()
    with pytest.raises(memimg.SchemaError) as info:
        v.open(new)
    diffs = info.value.differences
    text = "\n".join(diffs)
    assert f"{v.prefix}.Product.title is stored" in text and 'renamed_from="title"' in text
    assert f"{v.prefix}.Product.cents is stored" in text
    assert "Product.stock is not in the stored" in text and "default" in text
    assert f"{v.prefix}.Gift" in text and "removed_types" in text
    assert len(diffs) == 4
    assert open(v.path, "rb").read() == before
    with v.open(new, on_schema_drift="drop", removed_types=(f"{v.prefix}.Gift",)) as img:
        assert img.root.products["a"].name == "" and img.root.shelf == []
        assert img.schema_report.dropped_fields[(f"{v.prefix}.Product", "cents")] == 1


def test_newer_writer_is_reported(v: Versions) -> None:
    """A log holding states of a newer version than the code's is refused as written by a newer program."""
    newer = SHOP_V1.replace('@persistent(name="{P}.Product")', '@persistent(name="{P}.Product", version=3)')
    v.record(
        newer,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", 120)
        """,
    )
    new = v.load(SHOP_V1)
    with pytest.raises(memimg.SchemaError, match="newer version of the program"):
        v.open(new)


def test_value_classes_as_dict_keys_and_elements(v: Versions) -> None:
    """Changed value classes are upgraded as dict keys, set members and list items too."""
    old = """
    @attrs.frozen
    class Sku:
        code: str

    memimg.converter.register_value(Sku, name="{P}.Sku")

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
        shelf: list = attrs.field(factory=list)
        skus: set = attrs.field(factory=set)
    """
    v.record(
        old,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products[models.Sku("a1")] = 1
            img.root.shelf.append(models.Sku("b2"))
            img.root.skus.add(models.Sku("c3"))
            img.snapshot()
            img.root.products[models.Sku("d4")] = 2
        """,
    )
    new = v.load(
        """
        @attrs.frozen
        class Sku:
            code: str
            region: str = "eu"

        memimg.converter.register_value(Sku, name="{P}.Sku")

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            shelf: list = attrs.field(factory=list)
            skus: set = attrs.field(factory=set)
        """
    )
    with v.open(new) as img:
        r = img.root
        assert r.products == {new.Sku("a1"): 1, new.Sku("d4"): 2}
        assert r.shelf == [new.Sku("b2")] and r.skus == {new.Sku("c3")}
        assert next(iter(r.skus)).region == "eu"


def test_history_before_and_after_a_snapshot_and_migrate(v: Versions) -> None:
    """After migrate wrote a snapshot of the upgraded states, the upgrader may leave the code: the log
    opens without it."""
    v.record(
        SHOP_V1,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", 100)
            img.snapshot()
            img.root.products["a"].cents = 150
        """,
    )
    upgraded = """
    @persistent(name="{P}.Product", version=2)
    class Product:
        title: str
        price: Decimal = Decimal("0")

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
        shelf: list = attrs.field(factory=list)
    """
    with_upgrader = (
        upgraded
        + """
    @memimg.upgrader("{P}.Product", from_version=1)
    def _(state: dict) -> dict:
        if "cents" in state:
            state["price"] = Decimal(state.pop("cents")) / 100
        return state
    """
    )
    report = memimg.migrate(v.path, root=v.load(with_upgrader).Shop)
    assert report.snapshot_seq and report.upgraded
    assert "upgraded" in str(report)
    from memimg.core._schema import _UPGRADERS

    for key in [k for k in _UPGRADERS if k[0] == f"{v.prefix}.Product"]:
        del _UPGRADERS[key]  # the upgrader is gone from the code: the snapshot covers the history
    with v.open(v.load(upgraded)) as img:
        assert img.root.products["a"].price == Decimal("1.5")
        assert not img.schema_report.upgraded


# -- an upgrader that fails ----------------------------------------------------------

BROKEN_V2 = """
@persistent(name="{P}.Product", version=2)
class Product:
    title: str
    price: Decimal = Decimal("0")

@memimg.upgrader("{P}.Product", from_version=1)
def cents_to_price(state: dict) -> dict:
    state["price"] = Decimal(state.pop("%s")) / 100
    return state

@attrs.frozen
class Sku:
    code: str
    region: str = "eu"

memimg.converter.register_value(Sku, name="{P}.Sku", version=2)

@memimg.upgrader("{P}.Sku", from_version=1)
def add_region(state: dict) -> dict:
    state["region"] = state.pop("%s")
    return state

@persistent(name="{P}.Shop")
class Shop:
    products: dict = attrs.field(factory=dict)
    shelf: list = attrs.field(factory=list)
"""

SKU_V1 = """
@attrs.frozen
class Sku:
    code: str
    country: str = "fr"

memimg.converter.register_value(Sku, name="{P}.Sku")
"""


@pytest.mark.parametrize(
    ("script", "fn", "type_name", "seq", "missing"),
    [
        pytest.param(
            """
            img.root.products["a"] = models.Product("apple", 120)
            img.snapshot()
            """,
            "cents_to_price",
            "Product",
            3,
            "cost",
            id="snapshot state",
        ),
        pytest.param(
            'img.root.products["a"] = models.Product("apple", 120)',
            "cents_to_price",
            "Product",
            2,
            "cost",
            id="attach record",
        ),
        pytest.param(
            """
            img.root.products["a"] = models.Product("apple", 120)
            img.snapshot()
            img.root.products["a"].title = "green apple"  # a partial state: {"title": ...}
            """,
            "cents_to_price",
            "Product",
            4,
            "cents",
            id="field event",
        ),
        pytest.param(
            """
            img.root.products["a"] = models.Product("apple", 120)
            img.snapshot()
            img.root.products["a"].cents = 130  # declares Product again (a snapshot forgot it)
            img.root.products["a"].title = "green apple"  # does not: replay reads it on its fast path
            """,
            "cents_to_price",
            "Product",
            5,
            "cents",
            id="undeclared field event",
        ),
        pytest.param(
            'img.root.shelf.append(models.Sku("a1"))',
            "add_region",
            "Sku",
            2,
            "place",
            id="value object",
        ),
    ],
)
def test_a_failing_upgrader_is_a_schema_error_naming_it(
    v: Versions, script: str, fn: str, type_name: str, seq: int, missing: str
) -> None:
    """An upgrader that raises is reported as a SchemaError naming the function, the class, the stored
    version, the seq and the original exception -- not as corruption -- and the open changes nothing."""
    v.record(
        SHOP_V1 + SKU_V1,
        "with memimg.open(path, root=models.Shop) as img:\n" + textwrap.indent(textwrap.dedent(script), "    "),
    )
    # a whole Product state has "cents", a partial one may not; no stored state has the other keys
    new = v.load(BROKEN_V2 % ("cost" if missing == "cost" else "cents", "place"))
    before = open(v.path, "rb").read()
    with pytest.raises(memimg.SchemaError) as info:
        v.open(new)
    err = info.value
    assert not isinstance(err, memimg.CorruptLogError)
    qualified = f"{new.__name__}.{fn}"
    assert (err.type_name, err.upgrader, err.from_version, err.seq) == (f"{v.prefix}.{type_name}", qualified, 1, seq)
    assert isinstance(err.__cause__, KeyError) and err.__cause__.args == (missing,)
    text = str(err)
    for part in (qualified, f"{v.prefix}.{type_name}", "version 1", f"KeyError: {missing!r}", f"seq {seq}"):
        assert part in text, (part, text)
    assert "corrupt" not in text and "backup" not in text
    if missing == "cents":
        assert "partial" in text and "'title'" in text
    assert open(v.path, "rb").read() == before


def test_an_upgrader_that_returns_no_dict_is_a_schema_error(v: Versions) -> None:
    """An upgrader must return the state: one that returns None is named, with the class and version."""
    v.record(
        SHOP_V1, 'with memimg.open(path, root=models.Shop) as img:\n    img.root.shelf.append(models.Product("a"))'
    )
    new = v.load(
        """
        @persistent(name="{P}.Product", version=2)
        class Product:
            title: str
            cents: int = 0

        @memimg.upgrader("{P}.Product", from_version=1)
        def forgets_to_return(state: dict) -> dict:
            state["title"] = state["title"].upper()

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            shelf: list = attrs.field(factory=list)
        """
    )
    with pytest.raises(memimg.SchemaError, match="returned None, not the state dict") as info:
        v.open(new)
    err = info.value
    assert (err.upgrader, err.type_name, err.from_version, err.seq) == (
        f"{new.__name__}.forgets_to_return",
        f"{v.prefix}.Product",
        1,
        2,
    )


# -- states read at their stored version -------------------------------------------


def test_states_written_after_a_snapshot_are_upgraded_at_their_stored_version(v: Versions) -> None:
    """A process that declared a type before a snapshot, and writes states of it after that snapshot
    (which declares only the types reachable then), leaves them readable at their stored version: the
    upgrader runs on them."""
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


def test_a_value_class_field_rename_is_honoured(v: Versions) -> None:
    """memimg.field(renamed_from=...) on a frozen attrs value class reads the value stored under the old name."""
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


def test_a_value_class_version_runs_its_upgrader(v: Versions) -> None:
    """A value class registered at a newer version runs its upgrader on the states stored at an older one."""
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


# -- removed types, on every store ---------------------------------------------------


@persistent(name="removed.Coupon")
class Coupon:
    code: str = ""


@persistent(name="removed.Shop")
class Shop:
    items: list = attrs.field(factory=list)
    best: Any = None


@attrs.frozen
class Stamp:
    label: str


@persistent(name="removed.Holder")
class Holder:
    pair: Any = None
    tags: Any = None
    stamp: Any = None


REMOVED = ("removed.Coupon",)


def test_removed_objects_arriving_by_refresh_are_cleaned_by_a_writer(make_image: Images) -> None:
    """Objects of a removed type that another image appends are dropped on refresh by a writer, which
    logs the clean-up: the other image sees it too, and its later list events land on the right elements."""
    old = make_image(root=Shop)
    new = make_image(root=Shop, removed_types=REMOVED)
    old.root.items.extend(["a", Coupon("c"), "b"])
    new.refresh()
    assert new.root.items == ["a", "b"]
    old.refresh()
    assert old.root.items == ["a", "b"]  # the writer logged the clean-up
    old.root.items.insert(1, "between")
    new.refresh()
    assert new.root.items == ["a", "between", "b"]


def test_a_snapshot_after_removed_objects_arrived_by_refresh_reopens(make_image: Images) -> None:
    """Objects of a removed type arriving through refresh() are dropped from collections, so a snapshot
    taken next holds none of them and the image reopens from it."""
    a = make_image(root=Shop)
    b = make_image(root=Shop, removed_types=REMOVED)
    a.root.items.append(Coupon("x"))
    b.refresh()
    b.snapshot()
    with make_image(root=Shop, removed_types=REMOVED) as c:
        assert c.root.items == []


def test_a_readonly_image_with_removed_types_follows_the_log_once_the_clean_up_is_logged(make_image: Images) -> None:
    """A read-only image cannot log the clean-up of removed objects (and one done in memory only would
    put a writer's later list events on the wrong elements): opening one is refused, naming the type,
    until a writable open has logged the clean-up; after that it follows the writers' events."""
    a = make_image(root=Shop)
    a.root.items.extend([Coupon("c"), "x", "y"])
    with pytest.raises(memimg.MemimgError, match="read-only") as info:
        make_image(root=Shop, removed_types=REMOVED, readonly=True)
    assert "removed.Coupon" in str(info.value)
    make_image(root=Shop, removed_types=REMOVED).close()  # logs the clean-up
    b = make_image(root=Shop, removed_types=REMOVED, readonly=True)
    assert b.root.items == ["x", "y"]
    a.refresh()
    assert a.root.items == ["x", "y"]  # the writer with the old classes sees the clean-up too
    del a.root.items[0]  # the writer removes "x"
    b.refresh()
    assert b.root.items == ["y"]


def test_removed_value_types_are_cleaned_and_the_clean_up_is_logged(make_image: Images) -> None:
    """Values of a removed value type become None in fields and tuples, and are dropped from frozensets,
    lists and dicts (as keys); the report counts them, and the clean-up is logged, so a process that
    still has the class reads the same."""
    memimg.converter.register_value(Stamp, name="removed.Stamp")
    with make_image(root=dict) as img:
        img.root["h"] = Holder(pair=(1, Stamp("a")), tags=frozenset({"t", Stamp("b")}), stamp=Stamp("c"))
        img.root["l"] = ["x", Stamp("d"), "y"]
        img.root[(2, Stamp("k"))] = "keyed"
    with make_image(root=dict, removed_types=("removed.Stamp",)) as img:
        h = img.root["h"]
        assert (h.pair, h.tags, h.stamp) == ((1, None), frozenset({"t"}), None)
        assert img.root["l"] == ["x", "y"]
        assert (2, Stamp("k")) not in img.root and len(img.root) == 2
        report = img.schema_report
        assert report.references_cleared == 2 and report.elements_dropped == 3
    # the clean-up is in the log: a process that still has the class reads the same
    with make_image(root=dict) as img:
        h = img.root["h"]
        assert (h.pair, h.tags, h.stamp) == ((1, None), frozenset({"t"}), None)
        assert img.root["l"] == ["x", "y"] and len(img.root) == 2


# -- enums and value classes renamed or moved, on every store ---------------------------------------


def _forget(cls: type) -> str:
    """What a process started after *cls* was renamed or moved sees: no class claims its old name.

    Returns the old name.
    """
    info = _types.info_of(cls)
    assert info is not None
    with _types._lock:
        for name in (info.name, *info.aliases):
            if _types._by_name.get(name) is info:
                del _types._by_name[name]
    return info.name


def test_an_enum_renamed_and_moved_with_an_alias_reads_old_logs(make_image: Images) -> None:
    """An enum stored under its old name (its default module.QualName) is read as the enum that replaces
    it -- renamed and moved, declaring the old name with @persistent(name=..., aliases=(...)) -- in fields,
    lists, dict keys and sets, from events and then from a snapshot; new values are stored under the new
    name."""

    class Status(enum.Enum):
        OPEN = "open"
        PAID = "paid"

    with make_image(root=dict) as img:
        img.root["box"] = Box(content=Status.OPEN)
        img.root["box"].content = Status.PAID  # a field-set event
        img.root["list"] = [Status.OPEN]
        img.root["keys"] = {Status.PAID: 1}
        img.root["set"] = {Status.OPEN, Status.PAID}
    old = _forget(Status)

    @persistent(name="shop.orders.OrderStatus", aliases=(old,))
    class OrderStatus(enum.Enum):
        OPEN = "open"
        PAID = "paid"

    for _ in range(2):  # from the events, then from the snapshot
        with make_image(root=dict) as img:
            root = img.root
            assert root["box"].content is OrderStatus.PAID and root["list"] == [OrderStatus.OPEN]
            assert root["keys"] == {OrderStatus.PAID: 1} and root["set"] == {OrderStatus.OPEN, OrderStatus.PAID}
            img.snapshot()
    with make_image(root=dict) as img:
        img.root["new"] = OrderStatus.OPEN
    payload = bytes(list(make_image.store().read(after=img.seq - 1))[-1][5])  # EventRow.payload
    assert b'"shop.orders.OrderStatus"' in payload and old.encode() not in payload
    _forget(OrderStatus)  # a process without the class: the new name is what the log holds now
    with pytest.raises(memimg.UnknownTypeError, match="'shop.orders.OrderStatus'"):
        make_image(root=dict)


def test_a_value_class_renamed_and_moved_with_an_alias_reads_old_logs(make_image: Images) -> None:
    """A frozen attrs value class stored under its old name is read as the class that replaces it
    (@persistent(name=..., aliases=(...)) on the frozen class), in fields, tuples, dict keys and
    frozensets, from events and then from a snapshot."""

    @attrs.frozen
    class Money:
        cents: int
        currency: str = "EUR"

    with make_image(root=dict) as img:
        img.root["box"] = Box(content=Money(100))
        img.root["box"].content = Money(250, "USD")
        img.root["pair"] = (1, Money(5))
        img.root[Money(7)] = frozenset({Money(8)})
    old = _forget(Money)

    @persistent(name="shop.pricing.Price", aliases=(old,))
    @attrs.frozen
    class Price:
        cents: int
        currency: str = "EUR"

    for _ in range(2):  # from the events, then from the snapshot
        with make_image(root=dict) as img:
            root = img.root
            assert root["box"].content == Price(250, "USD") and type(root["box"].content) is Price
            assert root["pair"] == (1, Price(5)) and root[Price(7)] == frozenset({Price(8)})
            assert not img.schema_report.differences
            img.snapshot()


# -- type drift: a field's declared type changed, on every store --------------------------------------


def _old_order_log(make_image: Images, name: str) -> type:
    """A log of an Order (stable name *name*) whose ``total`` is declared ``int``; returns the class."""

    @persistent(name=name)
    class Order:
        total: int = 0
        note: str = ""

    with make_image(root=dict) as img:
        img.root["a"] = Order(3, "first")
        img.root["a"].total = 4  # a field-set event
        img.root["b"] = Order(5)
    return Order


def test_a_changed_field_type_is_drift_with_its_fix(make_image: Images) -> None:
    """A field whose annotation changed (int -> Decimal) at the same version is schema drift: open raises
    SchemaError listing it -- stored and declared type, and the one-line fix (version bump and upgrader)
    -- and nothing is changed."""
    _old_order_log(make_image, "drift.Order")

    @persistent(name="drift.Order")
    class Order:
        total: Decimal = Decimal(0)
        note: str = ""

    seq = make_image(root=dict, on_schema_drift="drop").seq
    with pytest.raises(memimg.SchemaError) as info:
        make_image(root=dict)
    line = (
        "drift.Order.total is stored as 'int' but "
        f"{Order.__qualname__}.total is declared 'Decimal' at the same version (1): raise it, "
        '@persistent(version=2), and convert the stored values with @memimg.upgrader("drift.Order", from_version=1)'
    )
    assert len(info.value.differences) == 1 and info.value.differences[0].startswith(line)
    assert "note" not in str(info.value)  # an unchanged field is no difference
    with make_image(root=dict, on_schema_drift="drop") as img:
        assert img.seq == seq


def test_drop_keeps_values_of_a_changed_type_as_stored_and_records_the_new_type(make_image: Images) -> None:
    """With on_schema_drift="drop", a field whose type changed keeps its values as stored (ints stay
    ints); the class's next write records the new type, and memimg.migrate(..., on_schema_drift="drop")
    writes a snapshot in it, after which the image opens with no drift."""
    _old_order_log(make_image, "dropped.Order")

    @persistent(name="dropped.Order")
    class Order:
        total: Decimal = Decimal(0)
        note: str = ""

    with make_image(root=dict, on_schema_drift="drop") as img:
        assert img.root["a"].total == 4 and type(img.root["a"].total) is int
        assert any("dropped.Order.total" in d for d in img.schema_report.differences)
        img.root["c"] = Order(Decimal("1.5"))
        seq = img.seq
    payload = bytes(list(make_image.store().read(after=seq - 1))[-1][5])  # EventRow.payload
    assert b'"dropped.Order":[1,["total","note"],"entity",["Decimal","str"]]' in payload
    with pytest.raises(memimg.SchemaError, match="dropped.Order.total"):
        memimg.migrate(make_image.store())
    report = memimg.migrate(make_image.store(), on_schema_drift="drop")
    assert report.snapshot_seq is not None and any("dropped.Order.total" in d for d in report.differences)
    with make_image(root=dict) as img:
        assert not img.schema_report.differences
        assert (img.root["a"].total, img.root["c"].total) == (4, Decimal("1.5"))


def test_a_changed_field_type_with_a_version_bump_and_an_upgrader_is_no_drift(make_image: Images) -> None:
    """The declared fix -- a version bump and an upgrader -- reads the changed field with no difference,
    states from attach records and field-set events alike."""
    _old_order_log(make_image, "bumped.Order")

    @persistent(name="bumped.Order", version=2)
    class Order:
        total: Decimal = Decimal(0)
        note: str = ""

    @memimg.upgrader("bumped.Order", from_version=1)
    def _cents(state: dict[str, Any]) -> dict[str, Any]:
        if "total" in state:
            state["total"] = Decimal(state["total"]) / 100
        return state

    with make_image(root=dict) as img:
        assert not img.schema_report.differences
        assert (img.root["a"].total, img.root["b"].total) == (Decimal("0.04"), Decimal("0.05"))
        img.root["a"].total = Decimal("0.07")
        seq = img.seq
    payload = bytes(list(make_image.store().read(after=seq - 1))[-1][5])  # EventRow.payload
    assert b'"bumped.Order":[2,["total","note"],"entity",["Decimal","str"]]' in payload  # version 2's types
    with make_image(root=dict) as img:
        assert not img.schema_report.differences and img.root["a"].total == Decimal("0.07")


def test_same_types_spelled_otherwise_and_renamed_classes_are_no_drift(make_image: Images, v: Versions) -> None:
    """Annotations that mean the same type (Optional[X] and X | None, List[X] and list[X], Annotated[X,
    ...]) and a class renamed with aliases= are not drift."""
    old = v.load(
        """
        from typing import Annotated, List, Optional

        @persistent(name="{P}.Tag")
        class Tag:
            label: str = ""

        @persistent(name="{P}.Item")
        class Item:
            price: Optional[Decimal] = None
            tags: List[Tag] = attrs.field(factory=list)
            size: Annotated[int, "cm"] = 0
        """
    )
    with make_image(root=dict) as img:
        img.root["i"] = old.Item(Decimal(1), [old.Tag("x")], 3)
    _forget(old.Tag)
    new = v.load(
        """
        @persistent(name="{P}.Label", aliases=("{P}.Tag",))
        class Label:
            label: str = ""

        @persistent(name="{P}.Item")
        class Item:
            price: Decimal | None = None
            tags: list[Label] = attrs.field(factory=list)
            size: int = 0
        """
    )
    with make_image(root=dict) as img:
        assert not img.schema_report.differences
        assert type(img.root["i"].tags[0]) is new.Label and img.root["i"].size == 3
        img.root["i"].size = 4
        seq = img.seq
    rows = list(make_image.store().read())
    first, last = bytes(rows[1][5]), bytes(rows[-1][5])  # EventRow.payload: the old program's attach, the new write
    assert f'"entity",["Decimal | None","list[{v.prefix}.Tag]","int"]'.encode() in first
    # the same types spelled alike, the renamed class by its new name (declared again, with the new name)
    assert rows[-1][0] == seq and f'"entity",["Decimal | None","list[{v.prefix}.Label]","int"]'.encode() in last


def test_a_log_without_field_types_reads_with_no_drift_and_records_them(make_image: Images) -> None:
    """A log written before field types were recorded (declarations ``[version, fields]``) is read with
    no drift whatever the annotations say; the class's next write declares its types."""

    @persistent(name="legacy.Order")
    class Order:
        total: Decimal = Decimal(0)

    make_image(root=Box).close()
    append_event(
        make_image.store(),
        "obj.set",
        1,
        [["content", ["r", 2]], [[2, "legacy.Order", {"total": 3}]], {"legacy.Order": [1, ["total"]]}],
    )
    with make_image(root=Box) as img:
        assert not img.schema_report.differences and img.root.content.total == 3
        img.root.content.total = Decimal(4)
        seq = img.seq
    payload = bytes(list(make_image.store().read(after=seq - 1))[-1][5])  # EventRow.payload
    assert b'{"legacy.Order":[1,["total"],"entity",["Decimal"]]}' in payload
    with make_image(root=Box) as img:
        assert not img.schema_report.differences and img.root.content.total == Decimal(4)


def test_a_value_class_field_type_change_is_drift(make_image: Images) -> None:
    """Value classes record their field types too: a changed annotation at the same version is drift."""

    @persistent(name="vdrift.Money")
    @attrs.frozen
    class Money:
        amount: int

    with make_image(root=dict) as img:
        img.root["m"] = Money(3)

    @persistent(name="vdrift.Money")
    @attrs.frozen
    class Money2:
        amount: Decimal

    with pytest.raises(
        memimg.SchemaError, match=r"vdrift.Money.amount is stored as 'int' but .*Money2.amount is declared 'Decimal'"
    ):
        make_image(root=dict)
