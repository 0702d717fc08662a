"""The SQL projection (``memimg.project``, ``memimg project``): one table per class, kept equal to the image."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

import memimg
from memimg._projection._projector import _image_id
from memimg.cli._main import open_store
from tests.conftest import POSTGRES_URL, Images
from tests.projection_models import (
    LONG,
    Account,
    Address,
    Bank,
    Clash,
    Entry,
    Kind,
    Premium,
    assert_tables_equal_image,
    read_table,
)
from tests.versions import ROOT, Versions

TARGETS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])


class SQLTarget:
    """A database for one test's projection: a SQLite file, or a fresh PostgreSQL schema."""

    def __init__(self, kind: str, tmp_path: Any) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'projection.db'}"
            self.schema: str | None = None
        else:
            assert POSTGRES_URL
            self.url = POSTGRES_URL
            self.schema = f"p_{uuid.uuid4().hex[:12]}"
        self.engine = sa.create_engine(self.url)
        if self.schema:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))

    def project(self, img: memimg.MemoryImage, **options: Any) -> Any:
        return memimg.project(img, self.url, schema=self.schema, **options)

    def cli_args(self) -> list[str]:
        return [self.url] + (["--sql-schema", self.schema] if self.schema else [])

    def rows(self, table: str) -> dict[int, dict[str, Any]]:
        return read_table(self.engine, table, self.schema)

    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.rows_of("memimg_projection")}

    def rows_of(self, table: str) -> list[dict[str, Any]]:
        t = sa.Table(table, sa.MetaData(schema=self.schema), autoload_with=self.engine)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(t))]

    def execute(self, sql: str) -> None:
        with self.engine.begin() as conn:
            if self.schema:
                conn.execute(sa.text(f'SET search_path TO "{self.schema}"'))
            conn.execute(sa.text(sql))

    def has_table(self, name: str) -> bool:
        return bool(sa.inspect(self.engine).has_table(name, schema=self.schema))

    def check(self, img: memimg.MemoryImage) -> None:
        assert_tables_equal_image(img, self.engine, self.schema)

    def cleanup(self) -> None:
        if self.schema:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        self.engine.dispose()


@pytest.fixture(params=TARGETS)
def sql(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[SQLTarget]:
    target = SQLTarget(request.param, tmp_path)
    yield target
    target.cleanup()


@pytest.fixture
def v(tmp_path: Any) -> Versions:
    return Versions(tmp_path)


def _bank(img: memimg.MemoryImage) -> Bank:
    bank = img.root
    assert isinstance(bank, Bank)
    return bank


def _fill(img: memimg.MemoryImage) -> tuple[Account, Account]:
    bank = _bank(img)
    ada = Account(
        "ada",
        Decimal("10.50"),
        count=3,
        ratio=0.25,
        kind=Kind.SAVINGS,
        opened=dt.date(2026, 1, 2),
        seen=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        ident=uuid.UUID(int=7),
        address=Address("Main St", "Lisbon"),
        tags={"vip", "new"},
        entries=[Entry(5, "first"), Entry(-2)],
        extra={"any": [1, "two"]},
    )
    bob = Premium("bob", level=3, active=False)
    with img.transaction():
        bank.accounts["ada"] = ada
        bank.accounts["bob"] = bob
        bob.friend = ada
    return ada, bob


# -- the tables hold the image ---------------------------------------------------------


def test_tables_hold_every_object_with_typed_columns(make_image: Images, sql: SQLTarget) -> None:
    """Each class has a table (oid primary key, a column per field typed from its annotation); the rows equal the
    objects, references as oids, collections and value objects as JSON."""
    img = make_image(root=Bank)
    _fill(img)
    with sql.project(img) as projection:
        assert projection.catch_up() == img.seq
        assert projection.tables == {
            "projtest.Account": "account",
            "projtest.Bank": "bank",
            "projtest.Entry": "entry",
            "projtest.Premium": "premium",
        }
    sql.check(img)
    columns = {c["name"]: c["type"] for c in sa.inspect(sql.engine).get_columns("account", schema=sql.schema)}
    assert isinstance(columns["count"], sa.BigInteger)
    assert isinstance(columns["ratio"], sa.Float)
    assert isinstance(columns["owner"], sa.Text)
    assert isinstance(columns["friend"], sa.BigInteger)
    if sql.kind == "postgresql" or sql.kind == "postgres":
        assert isinstance(columns["balance"], sa.Numeric)
        assert isinstance(columns["seen"], sa.DateTime)
    else:
        assert isinstance(columns["balance"], sa.Text)  # exact: SQLite's NUMERIC would round
    ada_row = sql.rows("account")[img.root.accounts["ada"]._mi_oid]
    assert ada_row["tags"] == ["new", "vip"]
    assert ada_row["address"] == {"$type": "tests.projection_models.Address", "street": "Main St", "city": "Lisbon"}
    assert sql.rows("premium")[img.root.accounts["bob"]._mi_oid]["friend"] == ada_row["oid"]


def test_strings_holding_nul_are_projected(make_image: Images, sql: SQLTarget) -> None:
    """A string with a NUL character, in a text column or inside JSON, reaches the tables (PostgreSQL cannot
    hold NUL in text: it is written as U+FFFD there); the projection goes on."""
    img = make_image(root=Bank)
    ada, _bob = _fill(img)
    with sql.project(img) as projection:
        ada.entries[0].note = "a\x00b"
        ada.extra["any"].append("c\x00d")
        ada.extra["k\x00"] = 1
        assert projection.catch_up() == img.seq and projection.error is None
        sql.check(img)
        note = sql.rows("entry")[ada.entries[0]._mi_oid]["note"]
        assert note == ("a\N{REPLACEMENT CHARACTER}b" if sql.engine.dialect.name == "postgresql" else "a\x00b")


def test_commits_after_the_start_are_projected_as_they_happen(make_image: Images, sql: SQLTarget) -> None:
    """Field writes, collection mutations of every kind, new objects and transactions reach the rows."""
    img = make_image(root=Bank)
    ada, bob = _fill(img)
    with sql.project(img) as projection:
        ada.balance += 1
        ada.tags.discard("new")
        ada.entries[0].note = "changed"  # a change of another entity: only the entry's row
        ada.entries.append(Entry(9))
        with img.transaction():
            bob.friend = None
            _bank(img).accounts["cy"] = Account("cy", friend=ada, entries=[Entry(1)])
        _bank(img).archive.append(bob)
        ada.extra["any"].append(3)  # a collection nested in a collection
        projection.catch_up()
        sql.check(img)
        assert sql.rows("entry")[ada.entries[0]._mi_oid]["note"] == "changed"
        assert sql.rows("account")[ada._mi_oid]["extra"] == {"any": [1, "two", 3]}


def test_unreachable_objects_leave_the_tables_when_the_image_collects_them(make_image: Images, sql: SQLTarget) -> None:
    """An object made unreachable stays in its table while it is in ``img.all`` and leaves it when a snapshot
    collects it (with what only it reached), with no commit after."""
    img = make_image(root=Bank)
    ada, bob = _fill(img)
    entries = [e._mi_oid for e in ada.entries]
    with sql.project(img) as projection:
        bob.friend = None
        del _bank(img).accounts["ada"]
        projection.catch_up()
        assert ada._mi_oid in sql.rows("account")
        img.snapshot()
        projection.catch_up()
        assert ada._mi_oid not in sql.rows("account")
        assert not set(entries) & set(sql.rows("entry"))
        sql.check(img)


def test_objects_detached_before_the_projection_reads_them_are_still_projected(
    make_image: Images, sql: SQLTarget
) -> None:
    """An object a commit attaches and a later one (or the same transaction) detaches is in ``img.all`` until a
    snapshot collects it, so it has a row, and its class a table, though the projection reads the objects only
    after it was detached; a snapshot then deletes the row."""
    img = make_image(root=Bank)
    with sql.project(img) as projection:
        accounts = _bank(img).accounts
        with img.transaction():  # what the projection reads is the state after the commit: the entry is gone
            accounts["b"] = Account("b", entries=[Entry(1)])
            popped = accounts["b"].entries.pop(0)
        projection.catch_up()
        assert popped in img.all(Entry)
        assert popped._mi_oid in sql.rows("entry")
        sql.check(img)
        img.snapshot()
        projection.catch_up()
        assert not sql.rows("entry")
        sql.check(img)


def test_commits_of_many_threads_at_once_end_equal_to_the_image(make_image: Images, sql: SQLTarget) -> None:
    """While threads commit to the image at the same time (new objects, dict, set and list mutations), the
    projection keeps up, and once caught up its tables equal the image."""
    import threading

    img = make_image(root=Bank)
    _fill(img)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                acct = _bank(img).accounts.setdefault(f"t{n}-{i % 5}", Account(f"t{n}"))
                acct.tags.add(str(i % 3))
                acct.entries.append(Entry(i))
                acct.count = i
                if i % 7 == 0:
                    _bank(img).accounts.pop(f"t{n}-{(i + 2) % 5}", None)
        except BaseException as err:
            errors.append(err)

    with sql.project(img) as projection:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        img.snapshot()
        projection.catch_up()
        sql.check(img)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_programs_leave_tables_equal_to_the_image(tmp_path: Any, data: st.DataObject) -> None:
    """After any program of writes, collection mutations, transactions (kept and discarded) and snapshots, with
    catch-ups and restarts of the projection among them, every table equals the image's objects of its class."""
    d = tmp_path / uuid.uuid4().hex[:8]
    d.mkdir()
    target = SQLTarget(data.draw(st.sampled_from(TARGETS)), d)
    img = memimg.open(str(d / "image.db"), root=Bank, snapshot_every=None)
    projection = None
    try:
        names = st.sampled_from(["a", "b", "c", "d", "e"])
        for _ in range(data.draw(st.integers(1, 25))):
            if projection is None and data.draw(st.booleans()):
                projection = target.project(img)
            op = data.draw(st.sampled_from(["add", "remove", "field", "friend", "entry", "tag", "tx", "snapshot"]))
            accounts = _bank(img).accounts
            some = list(accounts.values())
            if op == "add":
                cls = data.draw(st.sampled_from([Account, Premium]))
                accounts[data.draw(names)] = cls(data.draw(st.text(max_size=5)), entries=[Entry(1)])
            elif op == "remove" and some:
                del accounts[data.draw(st.sampled_from(sorted(accounts)))]
            elif op == "field" and some:
                acct = data.draw(st.sampled_from(some))
                acct.balance = Decimal(data.draw(st.integers(-(10**6), 10**6))) / 100
                acct.count = data.draw(st.integers(-(2**63), 2**63 - 1))
                acct.ratio = data.draw(st.floats(allow_nan=False, allow_infinity=False))
            elif op == "friend" and some:
                data.draw(st.sampled_from(some)).friend = data.draw(st.sampled_from([None, *some]))
            elif op == "entry" and some:
                acct = data.draw(st.sampled_from(some))
                if acct.entries and data.draw(st.booleans()):
                    acct.entries.pop(data.draw(st.integers(0, len(acct.entries) - 1)))
                else:
                    acct.entries.insert(0, Entry(data.draw(st.integers(-5, 5))))
            elif op == "tag" and some:
                data.draw(st.sampled_from(some)).tags ^= {data.draw(st.sampled_from(["x", "y"]))}
            elif op == "tx" and some:
                keep = data.draw(st.booleans())
                try:
                    with img.transaction():
                        acct = data.draw(st.sampled_from(some))
                        acct.owner += "!"
                        _bank(img).archive.append(acct)
                        if not keep:
                            raise RuntimeError("discard")
                except RuntimeError:
                    pass
            elif op == "snapshot":
                img.snapshot()
            if projection is not None and data.draw(st.integers(0, 4)) == 0:
                projection.close()  # a restart: the next one resumes from the stored seq
                projection = None
        if projection is None:
            projection = target.project(img)
        projection.catch_up()
        target.check(img)
    finally:
        if projection is not None:
            projection.close()
        img.close()
        target.cleanup()


def test_a_target_of_other_tables_is_refused_not_overwritten(make_image: Images, sql: SQLTarget) -> None:
    """A table of the same name that the projection did not make is left alone: the projection refuses to start,
    naming it and the prefix option, and writes nothing."""
    img = make_image(root=Bank)
    _fill(img)
    sql.execute("CREATE TABLE account (id INTEGER PRIMARY KEY, mine TEXT)")
    with pytest.raises(memimg.MemimgError, match=r"table 'account' the projection did not make.*prefix"):
        sql.project(img)
    assert not sql.has_table("memimg_projection")
    with sql.project(img, prefix="mi_") as projection:
        projection.catch_up()
        assert set(projection.tables.values()) == {"mi_account", "mi_bank", "mi_entry", "mi_premium"}
    assert sql.has_table("mi_memimg_projection")


def test_only_the_classes_asked_for_and_their_subclasses(make_image: Images, sql: SQLTarget) -> None:
    """``classes=`` projects those classes (given as classes or stored names) and their subclasses only."""
    img = make_image(root=Bank)
    _fill(img)
    with sql.project(img, classes=["projtest.Account"]) as projection:
        projection.catch_up()
        assert set(projection.tables.values()) == {"account", "premium"}
    assert not sql.has_table("entry")
    with sql.project(img, classes=[Entry]) as projection:  # a narrower projection drops the tables it no longer keeps
        projection.catch_up()
    assert sql.has_table("entry") and not sql.has_table("account")


def test_fields_whose_names_clash_get_columns_of_their_own(make_image: Images, sql: SQLTarget) -> None:
    """A field named ``oid``, fields equal but for case, and fields past 63 bytes that share their start each
    get a column of its own (``oid`` -> ``oid__`` when a field ``oid_`` exists; the longer ones cut and hashed),
    holding that field's value."""
    img = make_image(root=Clash)
    with sql.project(img) as projection:
        projection.catch_up()
    (row,) = sql.rows("clash").values()
    long_columns = sorted(c for c in row if c.startswith(LONG[:40]))
    assert len(long_columns) == 2 and all(len(c.encode()) <= 63 for c in long_columns)
    assert {k: v for k, v in row.items() if k not in long_columns} == {
        "oid": img.root._mi_oid,
        "oid__": 1,
        "oid_": 2,
        "Name": "upper",
        "name_": "lower",
    }
    assert sorted(row[c] for c in long_columns) == [3, 4]


# -- resuming, rebuilding ------------------------------------------------------------------


def test_a_projection_resumes_from_the_seq_it_stored(make_image: Images, sql: SQLTarget) -> None:
    """Made again, a projection resumes from the seq its tables store (no rebuild) and ends equal to the image:
    rows edited by hand meanwhile are rewritten from the objects, the commits since are applied."""
    img = make_image(root=Bank)
    ada, bob = _fill(img)
    with sql.project(img) as projection:
        stored = projection.catch_up()
    assert sql.meta()["seq"] == str(stored)
    sql.execute(f"UPDATE account SET owner = 'tampered' WHERE oid = {ada._mi_oid}")
    bob.count = 42
    _bank(img).accounts["dee"] = Account("dee")
    with sql.project(img) as projection:
        assert projection.seq == stored
        assert projection.catch_up() == img.seq
    assert sql.rows("account")[ada._mi_oid]["owner"] == "ada"
    assert sql.rows("premium")[bob._mi_oid]["count"] == 42
    assert _bank(img).accounts["dee"]._mi_oid in sql.rows("account")
    sql.check(img)


def test_objects_collected_while_the_projection_was_down_leave_the_tables(make_image: Images, sql: SQLTarget) -> None:
    """An object that became unreachable and was collected (by a snapshot) while no projection ran has its row
    deleted when the projection is made again."""
    img = make_image(root=Bank)
    ada, bob = _fill(img)
    oid = bob._mi_oid
    with sql.project(img) as projection:
        projection.catch_up()
    assert oid in sql.rows("premium")
    ada.friend = None
    del _bank(img).accounts["bob"]
    img.snapshot()
    assert not [o for o in img.all(Premium) if o._mi_oid == oid]
    with sql.project(img) as projection:
        projection.catch_up()
    assert oid not in sql.rows("premium")
    sql.check(img)


def test_values_an_upgrader_changed_are_rewritten_on_restart(v: Versions, sql: SQLTarget) -> None:
    """An upgrader that changes values but not column types changes the objects with no commit saying so: the
    projection made again with the new code rewrites those rows, so the tables equal the image."""
    v.record(
        """
        @persistent(name="{P}.Item")
        class Item:
            title: str
            cents: int = 0

        @persistent(name="{P}.Shop")
        class Shop:
            items: list = attrs.field(factory=list)
        """,
        f"""
        with memimg.open(path, root=models.Shop) as img:
            img.root.items.append(models.Item("apple", 120))
            memimg.project(img, {sql.url!r}, schema={sql.schema!r}).close()
        """,
    )
    new = v.load(
        """
        @persistent(name="{P}.Item", version=2)
        class Item:
            title: str
            cents: int = 0

        @memimg.upgrader("{P}.Item", from_version=1)
        def _upper(state: dict) -> dict:
            return {**state, "title": state["title"].upper(), "cents": state["cents"] * 100}

        @persistent(name="{P}.Shop")
        class Shop:
            items: list = attrs.field(factory=list)
        """
    )
    with v.open(new) as img, memimg.project(img, sql.url, schema=sql.schema) as projection:
        projection.catch_up()
        assert (img.root.items[0].title, img.root.items[0].cents) == ("APPLE", 12000)
    (row,) = sql.rows("item").values()
    assert (row["title"], row["cents"]) == ("APPLE", 12000)


class _SlowMeta:
    """A store whose meta table takes a while to read: processes reading it at once all find it empty."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def meta(self) -> dict[str, str]:
        found = self.store.meta()
        time.sleep(0.2)
        return dict(found)


def test_processes_naming_an_image_at_once_agree_on_its_id(tmp_path: Any) -> None:
    """Several projections started at once on an image with no id yet all label their tables with the one id
    the image ends up storing (none with an id another process overwrote, which would rebuild later)."""
    path = str(tmp_path / "image.db")
    memimg.open(path, root=Bank).close()
    stores = [open_store(path, readonly=False) for _ in range(4)]
    ids: list[str] = []
    start = threading.Barrier(len(stores))

    def name(store: Any) -> None:
        start.wait()
        ids.append(_image_id(types.SimpleNamespace(store=_SlowMeta(store))))

    threads = [threading.Thread(target=name, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert len(ids) == len(stores)
        assert set(ids) == {stores[0].meta()["image_id"]}
    finally:
        for store in stores:
            store.close()


def test_tables_of_another_image_are_rebuilt(tmp_path: Any, sql: SQLTarget, caplog: Any) -> None:
    """A target holding another image's tables is rebuilt for this one (with a warning saying why)."""
    first = memimg.open(str(tmp_path / "one.db"), root=Bank)
    _fill(first)
    with sql.project(first) as projection:
        projection.catch_up()
    first.close()
    second = memimg.open(str(tmp_path / "two.db"), root=Bank)
    _bank(second).accounts["zed"] = Account("zed")
    with caplog.at_level(logging.WARNING, logger="memimg"), sql.project(second) as projection:
        projection.catch_up()
    assert "another image" in caplog.text
    sql.check(second)
    assert [r["owner"] for r in sql.rows("account").values()] == ["zed"]
    assert not sql.has_table("premium")  # no Premium in this image
    second.close()


def test_a_projection_behind_a_compaction_rebuilds(make_image: Images, sql: SQLTarget, caplog: Any) -> None:
    """When the commits after the stored seq were compacted away, the projection rebuilds its tables from the
    image (and says so), then follows it."""
    img = make_image(root=Bank)
    ada, _ = _fill(img)
    with sql.project(img) as projection:
        projection.catch_up()
    sql.execute(f"UPDATE account SET owner = 'tampered' WHERE oid = {ada._mi_oid}")
    ada.count = 7
    seq = img.snapshot()
    img.store.delete_events_before(seq)
    img.store.delete_snapshots_before(seq)
    with caplog.at_level(logging.WARNING, logger="memimg"), sql.project(img) as projection:
        projection.catch_up()
        assert "rebuilding" in caplog.text
        ada.ratio = 2.5
        projection.catch_up()
    sql.check(img)


def test_a_new_field_is_a_new_column_and_a_removed_one_is_dropped(v: Versions, sql: SQLTarget) -> None:
    """When the code adds a field, the next projection adds its column (filled from the objects); a removed
    field's column is dropped; a field whose annotation changed gets a column of the new type."""
    v.record(
        """
        @persistent(name="{P}.Item")
        class Item:
            title: str
            cents: int = 0
            old: str = "x"

        @persistent(name="{P}.Shop")
        class Shop:
            items: list = attrs.field(factory=list)
        """,
        f"""
        with memimg.open(path, root=models.Shop) as img:
            img.root.items.append(models.Item("apple", 120))
            memimg.project(img, {sql.url!r}, schema={sql.schema!r}).close()
        """,
    )
    assert set(sql.rows("item").popitem()[1]) == {"oid", "title", "cents", "old"}
    new = v.load(
        """
        @persistent(name="{P}.Item", removed=("old",), version=2)
        class Item:
            title: str
            cents: float = 0.0
            stock: int = 5

        @memimg.upgrader("{P}.Item", from_version=1)
        def _cents_as_float(state: dict) -> dict:
            return {**state, "cents": float(state["cents"])}

        @persistent(name="{P}.Shop")
        class Shop:
            items: list = attrs.field(factory=list)
        """
    )
    with v.open(new) as img, memimg.project(img, sql.url, schema=sql.schema) as projection:
        projection.catch_up()
        img.root.items[0].stock = 6
        projection.catch_up()
    (row,) = sql.rows("item").values()
    assert row == {"oid": row["oid"], "title": "apple", "cents": 120.0, "stock": 6}
    columns = {c["name"]: c["type"] for c in sa.inspect(sql.engine).get_columns("item", schema=sql.schema)}
    assert isinstance(columns["cents"], sa.Float)


# -- a failing target ----------------------------------------------------------------------


def _block_writes(sql: SQLTarget) -> sa.Connection:
    """A connection holding a lock that keeps the projection from writing to ``account`` until it commits."""
    conn = sql.engine.connect()
    if sql.kind == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(sa.text(f'LOCK TABLE "{sql.schema}".account IN ACCESS EXCLUSIVE MODE'))
    return conn


def _waiting_backend(sql: SQLTarget) -> int:
    """The PostgreSQL backend waiting for the lock on ``account``."""
    with sql.engine.connect() as conn:
        for _ in range(200):
            pid = conn.execute(
                sa.text("SELECT pid FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)"),
                {"t": f'"{sql.schema}".account'},
            ).scalar()
            if pid is not None:
                return int(pid)
            time.sleep(0.05)
    raise AssertionError("the projection never waited for the lock")


def test_a_dropped_connection_or_a_locked_database_is_retried(tmp_path: Any, sql: SQLTarget) -> None:
    """A batch whose transaction fails on the connection -- the server ended it (PostgreSQL), the database
    stayed locked past the driver's timeout (SQLite) -- is written again once the target answers: the
    projection goes on, and the tables end equal to the image."""
    img = memimg.open(str(tmp_path / "image.db"), root=Bank)  # the target fails, whatever the image's store
    ada, _ = _fill(img)
    with sql.project(img) as projection:
        projection.catch_up()
        blocker = _block_writes(sql)
        try:
            ada.count = 9
            if sql.kind == "postgres":
                with sql.engine.connect() as conn:
                    conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": _waiting_backend(sql)})
            else:
                time.sleep(5.5)  # past pysqlite's 5 s busy timeout: the batch fails with "database is locked"
        finally:
            blocker.rollback()
            blocker.close()
        ada.ratio = 4.5
        assert projection.catch_up(timeout=60) == img.seq
        assert projection.running and projection.error is None
    sql.check(img)
    img.close()


def test_a_target_failing_past_the_retry_time_stops_the_projection_and_its_subscription(
    tmp_path: Any, sql: SQLTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target that keeps failing for RETRY_FOR seconds stops the projection with an error naming its seq, and
    its subscription to the image is closed (commits no longer queue up for it)."""
    monkeypatch.setattr("memimg._projection._projector.RETRY_FOR", 0.3)
    img = memimg.open(str(tmp_path / "image.db"), root=Bank)  # the target fails, whatever the image's store
    ada, _ = _fill(img)
    projection = sql.project(img)
    stored = projection.catch_up()
    blocker = _block_writes(sql)
    try:
        ada.count = 9
        if sql.kind == "postgres":
            blocker.execute(sa.text("SELECT 1"))  # keeps the lock; the projection's backend is ended below
            with sql.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": _waiting_backend(sql)})
                for _ in range(100):  # ended again on each retry, until the projection gives up
                    if not projection.running:
                        break
                    pid = conn.execute(
                        sa.text("SELECT pid FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)"),
                        {"t": f'"{sql.schema}".account'},
                    ).scalar()
                    if pid is not None:
                        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    time.sleep(0.1)
        else:
            projection._thread.join(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
    projection._thread.join(timeout=30)
    assert not projection.running
    assert projection._sub.closed
    with pytest.raises(memimg.MemimgError, match=rf"stopped at seq {stored}: the target failed for 0.3 s"):
        projection.close()
    assert sql.meta()["seq"] == str(stored)
    img.close()


def test_a_new_field_taking_a_column_name_renames_the_column_it_takes(v: Versions, sql: SQLTarget) -> None:
    """When the code adds a field ``oid_`` to a class with a field ``oid`` (column ``oid_``), the next
    projection gives ``oid_`` its own column and moves ``oid`` to ``oid__``, each holding its field's value."""
    v.record(
        """
        @persistent(name="{P}.Tag")
        class Tag:
            oid: int = 5

        @persistent(name="{P}.Shop")
        class Shop:
            tags: list = attrs.field(factory=list)
        """,
        f"""
        with memimg.open(path, root=models.Shop) as img:
            img.root.tags.append(models.Tag())
            memimg.project(img, {sql.url!r}, schema={sql.schema!r}).close()
        """,
    )
    (row,) = sql.rows("tag").values()
    assert row == {"oid": row["oid"], "oid_": 5}
    new = v.load(
        """
        @persistent(name="{P}.Tag")
        class Tag:
            oid: int = 5
            oid_: int = 7

        @persistent(name="{P}.Shop")
        class Shop:
            tags: list = attrs.field(factory=list)
        """
    )
    with v.open(new) as img, memimg.project(img, sql.url, schema=sql.schema) as projection:
        projection.catch_up()
    (row,) = sql.rows("tag").values()
    assert row == {"oid": row["oid"], "oid__": 5, "oid_": 7}


# -- bad input -----------------------------------------------------------------------------


def test_an_engine_is_a_target_on_postgresql_and_refused_on_sqlite(make_image: Images, sql: SQLTarget) -> None:
    """An sqlalchemy.Engine on PostgreSQL is a target; one on SQLite is refused before anything is written, the
    error giving the URL to pass instead (its driver would commit a rebuild's CREATE TABLE by itself)."""
    img = make_image(root=Bank)
    _fill(img)
    if sql.kind == "sqlite":
        with pytest.raises(memimg.MemimgError, match=r"Engine on SQLite.*give its URL instead") as err:
            memimg.project(img, sql.engine)
        assert sql.url in str(err.value)
        assert sa.inspect(sql.engine).get_table_names() == []
        return
    with memimg.project(img, sql.engine, schema=sql.schema) as projection:
        projection.catch_up()
    sql.check(img)


def test_bad_classes_and_targets_are_clear_errors(make_image: Images, tmp_path: Any) -> None:
    """An unknown class, a class that is not persistent, a URL that is not one, a server that does not answer
    and a database that is neither SQLite nor PostgreSQL are refused at the call, each naming what was given."""
    img = make_image(root=Bank)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with pytest.raises(memimg.MemimgError, match=r"'Nope' is not a class of the image.*projtest.Account"):
        memimg.project(img, url, classes=["Nope"])
    with pytest.raises(memimg.MemimgError, match="Address is not a @persistent class"):
        memimg.project(img, url, classes=[Address])
    with pytest.raises(memimg.MemimgError, match="'postgres://u@h/db' is not a usable database URL"):
        memimg.project(img, "postgres://u@h/db")
    with pytest.raises(memimg.MemimgError, match="cannot connect to the target"):
        memimg.project(img, "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    with pytest.raises(memimg.MemimgError, match="writes to SQLite .* or PostgreSQL"):
        memimg.project(img, "mysql+pymysql://u@127.0.0.1/db")
    with pytest.raises(ValueError, match="table prefix"):
        memimg.project(img, url, prefix="bad prefix;")
    assert not os.path.exists(tmp_path / "p.db") or not sa.inspect(sa.create_engine(url)).get_table_names()


def test_a_value_that_does_not_fit_its_column_stops_the_projection_at_its_seq(
    make_image: Images, sql: SQLTarget
) -> None:
    """A value of another type than its field's annotation says stops the projection with an error naming the
    class, object and field; nothing of that commit is written, and the stored seq is the one before it."""
    img = make_image(root=Bank)
    ada, _ = _fill(img)
    projection = sql.project(img)
    before = projection.catch_up()
    with img.transaction():
        ada.owner = "ada2"
        ada.count = "many"  # type: ignore[assignment]
    with pytest.raises(memimg.MemimgError, match=rf"projtest.Account #{ada._mi_oid} .count holds a str"):
        projection.catch_up()
    assert not projection.running
    with pytest.raises(memimg.MemimgError, match="count"):
        projection.close()
    assert sql.meta()["seq"] == str(before)
    assert sql.rows("account")[ada._mi_oid]["owner"] == "ada"


def test_two_projections_to_the_same_tables_do_not_both_go_on(make_image: Images, sql: SQLTarget) -> None:
    """Two projections writing the same tables would overwrite each other's seq: the one that finds the stored seq
    replaced stops with an error saying so (and writes nothing of its batch); the other goes on."""
    img = make_image(root=Bank)
    ada, _ = _fill(img)
    projections = [sql.project(img)]
    projections[0].catch_up()
    projections.append(sql.project(img))
    ada.count = 1
    failed = []
    for projection in projections:
        try:
            projection.catch_up()
        except memimg.MemimgError as err:
            assert "another projection writes to the same tables" in str(err)
            failed.append(projection)
    assert len(failed) == 1
    (survivor,) = [p for p in projections if p not in failed]
    with pytest.raises(memimg.MemimgError):
        failed[0].close()
    ada.count = 2
    survivor.catch_up()
    survivor.close()
    sql.check(img)


# -- the command line -----------------------------------------------------------------------


def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, "-m", "memimg", *args, "--import", "tests.projection_models"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _run_cli(*args: str) -> tuple[int, str, str]:
    proc = _cli(*args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_the_command_projects_and_exits(tmp_path: Any, sql: SQLTarget) -> None:
    """``memimg project TARGET SQL_URL`` brings the tables up to date and exits; bad input is one clear line."""
    path = str(tmp_path / "image.db")
    with memimg.open(path, root=Bank) as img:
        _fill(img)
        code, out, err = _run_cli("project", path, *sql.cli_args())
        assert code == 0, err
        assert f"up to seq {img.seq} into 4 tables: account, bank, entry, premium" in out
        sql.check(img)
    code, out, err = _run_cli("project", path, *sql.cli_args(), "--classes", "Nope")
    assert code == 1 and "'Nope' is not a class of the image" in err
    code, out, err = _run_cli("project", path, "postgres://u@h/db")
    assert code == 1 and "is not a usable database URL" in err


def _writer_script(path: str, stop: str) -> str:
    return f"""
import memimg, os
from tests.projection_models import Account, Bank, Entry
with memimg.open({path!r}, root=Bank) as img:
    for i in range(100_000):
        if os.path.exists({stop!r}):
            break
        with img.transaction():
            acct = img.root.accounts.setdefault(f"a{{i % 7}}", Account(f"a{{i}}"))
            acct.count = i
            acct.entries.append(Entry(i))
            if i % 5 == 0:
                img.root.accounts.pop(f"a{{(i + 3) % 7}}", None)
        if i % 40 == 39:
            img.snapshot()
"""


@pytest.mark.slow
def test_a_projection_killed_mid_stream_converges_when_run_again(tmp_path: Any, sql: SQLTarget) -> None:
    """``memimg project --follow`` killed with SIGKILL while another process commits, then run again: the tables
    equal the image (each batch and its seq are one SQL transaction)."""
    path = str(tmp_path / "image.db")
    with memimg.open(path, root=Bank) as img:
        _fill(img)
    stop = str(tmp_path / "stop")
    follower = _cli("project", path, *sql.cli_args(), "--follow")
    writer = subprocess.Popen(
        [sys.executable, "-c", _writer_script(path, stop)], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # kill it once it has projected some of the writer's commits
            assert time.monotonic() < deadline, "the projection did not get past seq 200"
            if follower.poll() is not None:
                raise AssertionError(f"the projection exited: {follower.communicate()[1]}")
            assert writer.poll() is None
            if sql.has_table("memimg_projection") and int(sql.meta()["seq"]) > 200:
                break
            time.sleep(0.02)
        follower.send_signal(signal.SIGKILL)
        follower.wait(30)
        time.sleep(0.5)  # the writer goes on meanwhile
    finally:
        open(stop, "w").close()
        writer.wait(120)
        if follower.poll() is None:
            follower.kill()
    assert writer.returncode == 0
    killed_at = int(sql.meta()["seq"])
    code, _, err = _run_cli("project", path, *sql.cli_args())
    assert code == 0, err
    with memimg.open(path, root=Bank) as img:
        assert killed_at < img.seq
        sql.check(img)


def test_follow_keeps_the_tables_current_and_stops_cleanly_on_sigterm(tmp_path: Any, sql: SQLTarget) -> None:
    """With ``--follow`` the command projects other processes' commits as they come, and on SIGTERM finishes
    its batch and exits with status 0."""
    path = str(tmp_path / "image.db")
    with memimg.open(path, root=Bank) as img:
        _fill(img)
    follower = _cli("project", path, *sql.cli_args(), "--follow")
    try:
        with memimg.open(path, root=Bank) as img:
            deadline = time.monotonic() + 60
            while not (sql.has_table("memimg_projection") and sql.meta()["seq"] == str(img.seq)):
                assert time.monotonic() < deadline and follower.poll() is None
                time.sleep(0.05)
            _bank(img).accounts["late"] = Account("late", count=5)
            while int(sql.meta()["seq"]) < img.seq:
                assert time.monotonic() < deadline and follower.poll() is None
                time.sleep(0.05)
            sql.check(img)
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "stopped at seq" in err
