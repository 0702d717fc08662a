"""The SQLAlchemy store: the contract on PostgreSQL (when configured) and on SQLite through SQLAlchemy."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import memimg
from memimg.stores import Store
from tests.conftest import POSTGRES_URL
from tests.stores.contract import StoreContract

sa = pytest.importorskip("sqlalchemy")
from memimg.stores._sqlalchemy import SQLAlchemyStore  # noqa: E402


class TestSQLAlchemyOnSQLite(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.url = f"sqlite:///{tmp_path}/sa.db"

    def make_store(self) -> Store:
        return SQLAlchemyStore(self.url)

    def reopen(self, store: Store) -> Store:
        return SQLAlchemyStore(self.url)


needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="set MEMIMG_TEST_POSTGRES_URL to test PostgreSQL")


@needs_postgres
@pytest.mark.postgres
class TestPostgreSQLStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _schema(self) -> Any:
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        yield
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        engine.dispose()

    def make_store(self) -> Store:
        return SQLAlchemyStore(POSTGRES_URL, schema=self.schema)  # type: ignore[arg-type]

    def reopen(self, store: Store) -> Store:
        return SQLAlchemyStore(POSTGRES_URL, schema=self.schema)  # type: ignore[arg-type]

    def test_notify_wakes_a_waiting_follower(self, store: Store) -> None:
        """A follower blocked in wait_for_change wakes when another process commits."""
        import threading
        import time

        from tests.stores.contract import row

        other = self.reopen(store)
        woke: list[float] = []

        def wait() -> None:
            start = time.monotonic()
            if store.wait_for_change(0, 5.0):  # type: ignore[attr-defined]
                woke.append(time.monotonic() - start)

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.2)
        other.append([row(1)], 0)
        t.join()
        other.close()
        assert woke and woke[0] < 2.0

    def test_prefix_and_existing_engine(self) -> None:
        """Tables can take a prefix and go through an application's own Engine."""
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
            conn.execute(sa.text(f'CREATE TABLE "{self.schema}".users (id int)'))
        store = SQLAlchemyStore(engine, schema=self.schema, prefix="shop_")
        img = memimg.open(store)
        img.root["x"] = 1
        img.close()
        names = set(sa.inspect(engine).get_table_names(schema=self.schema))
        assert {"users", "shop_events", "shop_snapshots", "shop_meta"} <= names
        again = memimg.open(SQLAlchemyStore(engine, schema=self.schema, prefix="shop_"))
        assert again.root == {"x": 1}
        again.close()
        engine.dispose()


def test_unreachable_server_fails_fast_without_password() -> None:
    """A bad URL fails with MemimgError naming the URL without its password."""
    with pytest.raises(memimg.MemimgError) as info:
        memimg.open("postgresql+psycopg://alice:s3cret@127.0.0.1:1/nowhere", connect_timeout=2)
    assert "s3cret" not in str(info.value) and "alice" in str(info.value) and "***" in str(info.value)


def test_not_a_url() -> None:
    with pytest.raises(memimg.MemimgError):
        memimg.open("nosuchdialect://x/y")


@needs_postgres
@pytest.mark.postgres
def test_newer_format_on_postgres_is_refused() -> None:
    """A PostgreSQL log written in a newer storage format is refused and left as it was."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=schema)) as img:  # type: ignore[arg-type]
            img.root["a"] = 1
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE \"{schema}\".memimg_meta SET value = '7' WHERE key = 'format_version'"))
        with pytest.raises(memimg.MemimgError, match="format 7"):
            SQLAlchemyStore(POSTGRES_URL, schema=schema)  # type: ignore[arg-type]
        with engine.begin() as conn:
            assert conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".memimg_events')).scalar() == 2
    finally:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_append_after_a_lost_reply_is_not_applied_twice(postgres: Any) -> None:
    """A commit that committed but whose reply was lost (the driver raised after the statement ran)
    is found in the log and reported applied: the change appears once, not twice."""
    import psycopg

    store = postgres.target()
    img = memimg.open(store, root=dict)
    img.root["items"] = []
    real = store._writer_connection
    state = {"fail": True}

    class LostReply:
        def __init__(self, conn: Any) -> None:
            self.conn = conn

        def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
            cur = self.conn.execute(sql, *args, **kwargs)
            if state["fail"] and "INSERT" in sql:
                state["fail"] = False
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return cur

        def close(self) -> None:
            self.conn.close()

    store._writer_connection = lambda: LostReply(real())
    img.root["items"].append("once")
    assert img.root["items"] == ["once"]
    assert not state["fail"]  # the reply was lost once
    img.close()
    with memimg.open(postgres.target(), root=dict) as again:
        assert again.root["items"] == ["once"]
