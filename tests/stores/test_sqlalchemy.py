"""The SQLAlchemy store: the contract on PostgreSQL (when configured) and on SQLite through SQLAlchemy."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import memimg
from memimg.stores import Store
from tests.conftest import POSTGRES_URL
from tests.stores.contract import StoreContract
from tests.tcpproxy import TCPProxy

sa = pytest.importorskip("sqlalchemy")
from memimg.stores._sqlalchemy import SQLAlchemyStore  # noqa: E402


class TestSQLAlchemyOnSQLite(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.url = f"sqlite:///{tmp_path}/sa.db"

    def make_store(self) -> Store:
        return SQLAlchemyStore(self.url)

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        return SQLAlchemyStore(self.url, readonly=readonly)

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        # every new connection fails to open the file (SQLITE_CANTOPEN), as after a lost mount
        assert isinstance(store, SQLAlchemyStore)
        engine = store.engine
        store.engine = sa.create_engine(f"sqlite:///{self.url[len('sqlite:///') :]}.missing/x.db")
        try:
            yield True
        finally:
            store.engine.dispose()
            store.engine = engine


needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="set MEMIMG_TEST_POSTGRES_URL to test PostgreSQL")


def pg_proxy() -> TCPProxy:
    """A proxy between this test's stores and the test database."""
    url = sa.make_url(POSTGRES_URL)
    return TCPProxy(url.host or "127.0.0.1", url.port or 5432)


@needs_postgres
@pytest.mark.postgres
class TestPostgreSQLStore(StoreContract):
    """The contract on PostgreSQL, through a proxy that can make the database unreachable."""

    @pytest.fixture(autouse=True)
    def _schema(self) -> Any:
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self.proxy = pg_proxy()
        yield
        self.proxy.close()
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        engine.dispose()

    def make_store(self) -> Store:
        return SQLAlchemyStore(self.proxy.url(POSTGRES_URL), schema=self.schema, connect_timeout=1)  # type: ignore[arg-type]

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        return SQLAlchemyStore(POSTGRES_URL, schema=self.schema, readonly=readonly)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        self.proxy.refuse()  # every connection cut, new ones refused: the server is unreachable
        try:
            yield True
        finally:
            self.proxy.accept()

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
    """A URL of a dialect SQLAlchemy does not know is a MemimgError."""
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


# == PostgreSQL: lost connections, lost replies, URL options =====================================


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of this test's own on the test database (dropped after)."""
    if not POSTGRES_URL:
        pytest.skip("needs PostgreSQL: set MEMIMG_TEST_POSTGRES_URL (.ci/run does)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _events(schema: str) -> list[tuple[int, str, int | None]]:
    engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f'SELECT seq, kind, commit_id FROM "{schema}".memimg_events ORDER BY seq'))
        out = [(int(a), str(b), c) for a, b, c in rows]
    engine.dispose()
    return out


def test_commit_whose_reply_is_lost_is_reported_applied_once(pg_schema: str) -> None:
    """When every connection drops after the commit was sent and before its reply, the store
    reconnects, finds the commit by its commit id, and reports success: the change is applied
    once, in the image and in the log."""
    with pg_proxy() as proxy:
        store = SQLAlchemyStore(proxy.url(POSTGRES_URL), schema=pg_schema)  # type: ignore[arg-type]
        img = memimg.open(store, root=dict)
        img.root["items"] = []
        img.refresh()  # the pool holds a connection too: the cut kills it as well
        proxy.cut_after(store.channel.encode())
        img.root["items"].append("once")
        assert proxy.cut.is_set()
        assert img.root["items"] == ["once"]
        img.root["items"].append("twice")  # and the image keeps working
        img.close()
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)) as again:  # type: ignore[arg-type]
        assert again.root["items"] == ["once", "twice"]
    appends = [r for r in _events(pg_schema) if r[1] == "list.append"]
    assert len(appends) == 2 and all(r[2] is not None for r in appends)


def test_commit_outcome_unknown_while_the_database_is_unreachable(pg_schema: str) -> None:
    """When the connection drops after the commit was sent and the database stays unreachable,
    the commit raises CommitUnknownError naming the seq and commit id that tell its outcome;
    the image did not apply it, and once the database is back the image works again and
    applies it from the log if it landed."""
    with pg_proxy() as proxy:
        store = SQLAlchemyStore(proxy.url(POSTGRES_URL), schema=pg_schema, connect_timeout=1)  # type: ignore[arg-type]
        img = memimg.open(store, root=dict)
        img.root["a"] = 1
        proxy.cut_after(store.channel.encode(), then_refuse=True)
        with pytest.raises(memimg.CommitUnknownError) as info:
            img.root["b"] = 2
        err = info.value
        assert isinstance(err, memimg.StoreError) and err.__cause__ is not None
        assert "UNKNOWN" in str(err) and str(err.commit_id) in str(err) and f"seq {err.first_seq}" in str(err)
        assert "b" not in img.root
        proxy.accept()
        # the statement reached the server before the cut: it committed, under that commit id
        landed = {seq: cid for seq, _, cid in _events(pg_schema)}
        assert landed[err.first_seq] == err.commit_id and err.seq == err.first_seq
        img.refresh()
        assert img.root == {"a": 1, "b": 2}
        img.root["c"] = 3
        img.close()
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)) as again:  # type: ignore[arg-type]
        assert again.root == {"a": 1, "b": 2, "c": 3}


def test_commit_whose_statement_never_arrived_is_sent_again(pg_schema: str) -> None:
    """A writer connection that died while idle (the server restarted, the commit never reached it)
    is found out at the next commit, which reconnects and commits once."""
    with pg_proxy() as proxy:
        store = SQLAlchemyStore(proxy.url(POSTGRES_URL), schema=pg_schema)  # type: ignore[arg-type]
        img = memimg.open(store, root=dict)
        img.root["a"] = 1
        proxy.cut_all()
        img.root["b"] = 2
        assert img.root == {"a": 1, "b": 2}
        img.close()
    assert [kind for _, kind, _ in _events(pg_schema)].count("dict.set") == 2


def test_append_after_a_lost_reply_is_not_applied_twice(postgres: Any) -> None:
    """A commit that committed but whose reply was lost (the driver raised after the statement ran)
    is found by its commit id and reported applied: the change appears once, not twice."""
    import psycopg

    store = postgres.target()
    img = memimg.open(store, root=dict)
    img.root["items"] = []
    writer = store._pg_writer
    real = writer.connection
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

    writer.connection = lambda: LostReply(real())
    img.root["items"].append("once")
    assert img.root["items"] == ["once"]
    assert not state["fail"]  # the reply was lost once
    img.close()
    with memimg.open(postgres.target(), root=dict) as again:
        assert again.root["items"] == ["once"]


def test_catching_up_on_postgres_takes_no_pooled_connection(pg_schema: str) -> None:
    """On PostgreSQL the reads each transaction begins with -- the head, the events after a seq -- are one
    statement each on the store's own connection: no pooled connection (and its BEGIN and ROLLBACK).
    They see another writer's commits at once."""
    mine = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    other = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    with memimg.open(mine, root=dict) as img, memimg.open(other, root=dict) as elsewhere:
        checkouts: list[object] = []
        sa.event.listen(mine.engine, "checkout", lambda *args: checkouts.append(args))
        elsewhere.root["a"] = 1
        assert mine.changed(img.seq) and mine.head() == elsewhere.seq
        with img.transaction():
            img.root["b"] = img.root["a"] + 1
        assert [e.seq for e in img.events(since=0)] == list(range(1, img.seq + 1))
        assert checkouts == []
        assert elsewhere.refresh() and elsewhere.root == {"a": 1, "b": 2}


def _terminate(application_name: str) -> int:
    """End this test's own backends (by their application_name), never anyone else's."""
    engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with engine.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND application_name = :name"
            ),
            {"name": application_name},
        ).scalar_one()
    engine.dispose()
    return int(killed)


def test_image_keeps_working_after_its_connections_are_terminated(pg_schema: str) -> None:
    """After pg_terminate_backend of every connection of the store (pool, writer, listener), reads,
    transactions, waits, snapshots and meta all work again on fresh connections."""
    name = f"memimg_test_{uuid.uuid4().hex[:12]}"
    url = sa.make_url(POSTGRES_URL).update_query_dict({"application_name": name})
    store = SQLAlchemyStore(url, schema=pg_schema)
    img = memimg.open(store, root=dict)
    img.root["a"] = 1
    img.refresh()
    assert _terminate(name) >= 2
    with img.transaction():
        img.root["a"] += 1
    assert img.wait(0.05) == 0
    assert img.root == {"a": 2}
    assert _terminate(name) >= 1
    seq = img.snapshot()
    assert _terminate(name) >= 1
    assert store.meta()["format_version"] == "1"
    store.set_meta("x", "1")
    assert [s.seq for s in store.snapshots()] == [seq]
    img.close()
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)) as again:  # type: ignore[arg-type]
        assert again.root == {"a": 2}


def test_unreachable_database_raises_store_errors_then_recovers(pg_schema: str) -> None:
    """While the server is unreachable, transactions, waits and reads raise StoreError (the driver's
    error as __cause__), never a driver exception; once it is back the image works again."""
    with pg_proxy() as proxy:
        store = SQLAlchemyStore(proxy.url(POSTGRES_URL), schema=pg_schema, connect_timeout=1)  # type: ignore[arg-type]
        img = memimg.open(store, root=dict)
        img.root["a"] = 1
        proxy.refuse()
        for attempt in (lambda: img.transaction().__enter__(), lambda: img.wait(0.05), img.refresh, img.snapshot):
            with pytest.raises(memimg.StoreError) as info:
                attempt()
            assert info.value.__cause__ is not None
            assert not isinstance(info.value.__cause__, memimg.MemimgError)
        assert img.root == {"a": 1}
        proxy.accept()
        with img.transaction():
            img.root["b"] = 2
        assert img.wait(0.05) == 0
        img.close()
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)) as again:  # type: ignore[arg-type]
        assert again.root == {"a": 1, "b": 2}


def test_query_options_in_the_url_reach_every_connection(pg_schema: str) -> None:
    """A URL's query options (options=-c statement_timeout=5000) are passed to the writer and
    listener connections as they are to SQLAlchemy's own: commits work and the setting holds."""
    url = POSTGRES_URL + ("&" if "?" in POSTGRES_URL else "?") + "options=-c%20statement_timeout%3D5000"  # type: ignore[operator]
    store = SQLAlchemyStore(url, schema=pg_schema)
    with memimg.open(store, root=dict) as img:
        img.root["a"] = 1
        assert store._pg_writer.connection().execute("SHOW statement_timeout").fetchone()[0] == "5s"
        assert img.wait(0.01) == 0 and store._listener is not None
        assert store._listener.connection().execute("SHOW statement_timeout").fetchone()[0] == "5s"
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "5s"
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)) as again:  # type: ignore[arg-type]
        assert again.root == {"a": 1}


def test_an_engines_connection_settings_reach_the_writer(pg_schema: str) -> None:
    """The writer and listener are the engine's own connections: a search_path set in the engine's
    connect_args holds for them too, so commits land in the tables the image reads."""
    admin = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{pg_schema}"'))
    prefix = f"p{uuid.uuid4().hex[:8]}_"
    SQLAlchemyStore(POSTGRES_URL, prefix=prefix).close()  # same-named tables, empty, in the default schema
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={pg_schema}"})  # type: ignore[arg-type]
        with memimg.open(SQLAlchemyStore(engine, prefix=prefix), root=dict) as img:
            img.root["order"] = 42
        engine.dispose()
        with admin.connect() as conn:
            assert conn.execute(sa.text(f'SELECT count(*) FROM "{pg_schema}".{prefix}events')).scalar() == 2
            assert conn.execute(sa.text(f"SELECT count(*) FROM public.{prefix}events")).scalar() == 0
        engine = sa.create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={pg_schema}"})  # type: ignore[arg-type]
        with memimg.open(SQLAlchemyStore(engine, prefix=prefix)) as again:
            assert again.root == {"order": 42}
        engine.dispose()
    finally:
        with admin.begin() as conn:
            for table in ("events", "snapshots", "meta"):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS public.{prefix}{table}"))
        admin.dispose()


def test_log_of_an_older_memimg_gets_its_commit_id_column(pg_schema: str) -> None:
    """An events table made by memimg 0.2 (no commit_id) is opened read-only as it is, and a writer
    adds the nullable column; the rows already there are kept, with no commit id."""
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)) as img:  # type: ignore[arg-type]
        img.root["a"] = 1
    engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with engine.begin() as conn:
        conn.execute(sa.text(f'ALTER TABLE "{pg_schema}".memimg_events DROP COLUMN commit_id'))
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema, readonly=True), readonly=True) as ro:  # type: ignore[arg-type]
        assert ro.root == {"a": 1}
    assert "commit_id" not in [c["name"] for c in sa.inspect(engine).get_columns("memimg_events", schema=pg_schema)]
    with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)) as img:  # type: ignore[arg-type]
        img.root["b"] = 2
    engine.dispose()
    events = _events(pg_schema)
    assert all(cid is None for _, kind, cid in events[:-1]) and events[-1][2] is not None


def _notify_queue_usage() -> float:
    engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with engine.connect() as conn:
        usage = float(conn.execute(sa.text("SELECT pg_notification_queue_usage()")).scalar_one())
    engine.dispose()
    return usage


def test_an_idle_image_does_not_hold_back_the_notify_queue(pg_schema: str) -> None:
    """An image that has waited for changes and then sits idle is not LISTENing: the server's NOTIFY
    queue, which cannot advance past its slowest listener, keeps moving while other processes commit.

    Many commits are played by NOTIFYs on the log's channel with long payloads (what each commit
    sends, ~40 MB in all): a session still LISTENing that nobody reads takes a few MB into its socket
    buffers, then holds the rest in the queue (which fills, and then every commit fails)."""
    store = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    other = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    with memimg.open(store, root=dict) as idle, memimg.open(other, root=dict) as busy:
        assert idle.wait(0.05) == 0  # the image has listened for changes; now it does nothing
        for n in range(50):
            busy.root[n] = n
        flood = sa.text("SELECT count(pg_notify(:c, repeat('x', 4000) || g)) FROM generate_series(1, 10000) g")
        engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
        with engine.connect() as conn:
            conn.execute(flood, {"c": store.channel})
            conn.commit()
        engine.dispose()
        deadline = time.monotonic() + 5
        while (usage := _notify_queue_usage()) > 0.001 and time.monotonic() < deadline:  # 8 MB of 8 GB
            time.sleep(0.1)
        assert usage <= 0.001
        assert idle.refresh() == 50 and idle.root == busy.root


def test_a_refused_append_hands_over_the_events_it_missed(pg_schema: str, monkeypatch: Any) -> None:
    """On PostgreSQL the statement that refuses an append (the head moved) also reads the events after the
    expected head: SeqTaken carries them, and says whether more were left unread."""
    from memimg.stores import SeqTaken, _postgres
    from tests.stores.contract import row

    store = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    other = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    other.append([row(1), row(2, 1)], 0)
    other.append([row(3)], 2)
    with pytest.raises(SeqTaken) as info:
        store.append([row(1)], 0)
    assert info.value.missed == list(store.read()) and not info.value.more
    monkeypatch.setattr(_postgres, "MISSED", 2)
    with pytest.raises(SeqTaken) as info:
        store.append([row(2)], 1)
    assert info.value.missed == list(store.read(after=1)) and not info.value.more
    with pytest.raises(SeqTaken) as info:
        store.append([row(1)], 0)
    assert info.value.missed == list(store.read(limit=2)) and info.value.more
    store.close()
    other.close()


@pytest.mark.parametrize("missed", [1000, 1])
def test_a_commit_that_lost_the_race_catches_up_from_the_refused_append(
    pg_schema: str, monkeypatch: Any, missed: int
) -> None:
    """A commit refused because another process took its seq catches up from the events the refusal handed
    over -- no read of the log of its own -- then commits; events past those handed over (when many were
    missed) are read after them."""
    from memimg.stores import _postgres

    monkeypatch.setattr(_postgres, "MISSED", missed)
    store = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    other = SQLAlchemyStore(POSTGRES_URL, schema=pg_schema)  # type: ignore[arg-type]
    with memimg.open(store, root=dict) as img, memimg.open(other, root=dict) as elsewhere:
        reads: list[int] = []
        fetch = store._fetch
        monkeypatch.setattr(store, "_fetch", lambda after, n: reads.append(after) or fetch(after, n))
        with img.transaction():
            img.root["mine"] = 1
            start = img.seq
            with elsewhere.transaction():  # two events
                elsewhere.root["theirs"] = 1
                elsewhere.root["also"] = 2
        assert img.root == {"mine": 1, "theirs": 1, "also": 2} and img.seq == start + 3
        assert reads == ([] if missed > 1 else [start + 1])
        assert elsewhere.refresh() and elsewhere.root == img.root
