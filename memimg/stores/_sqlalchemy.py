"""The SQLAlchemy store: the log in any database SQLAlchemy reaches (PostgreSQL tested).

Uses SQLAlchemy Core only (no ORM), with the same three tables as the SQLite
store, created when missing -- optionally in a schema of their own
(``schema="memimg"``) or under another prefix (``prefix="shop_"``), so they
can sit inside an application's existing database. An ``Engine`` may be
passed instead of a URL.

The append rule is enforced by the database, not by a lock in Python: the
first row of a commit is inserted only if the newest seq is the one the
writer expected (``INSERT ... SELECT ... WHERE coalesce(max(seq), 0) = :head``),
and ``seq`` is the primary key, so of two writers racing for the same seq
exactly one wins; the other gets :class:`SeqTaken`, catches up and retries.

On PostgreSQL every commit also sends ``NOTIFY`` on the log's channel, so an
idle follower learns of new commits at once (:meth:`wait_for_change`); other
databases are polled. ``sync="normal"`` sets ``synchronous_commit = off`` on
PostgreSQL (a commit survives the crash of any client process; a crash of the
database server itself may lose the last fraction of a second of commits,
never leaving a partial one), ``sync="full"`` keeps PostgreSQL's default.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from memimg._errors import LockedError, MemimgError
from memimg.stores._protocol import FORMAT_VERSION, EventRow, SeqTaken, SnapshotInfo, SnapshotRow, read_in_chunks

__all__ = ["SQLAlchemyStore"]

_COLUMNS: Final = {
    "events": ["seq", "tx", "ts", "kind", "target", "payload", "checksum"],
    "snapshots": ["seq", "ts", "payload", "checksum"],
    "meta": ["key", "value"],
}


_ASYNC_COMMIT: Final = sa.text("SET LOCAL synchronous_commit = off")
_NOTIFY: Final = sa.text("SELECT pg_notify(:c, :p)")


def _redact(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


class SQLAlchemyStore:
    """The log in a database reached through SQLAlchemy.

    Args:
        url: a SQLAlchemy URL (``"postgresql+psycopg://user@host/db"``) or an
            ``Engine``.
        schema: the database schema holding the tables (created if missing).
        prefix: table name prefix (default ``memimg_``).
        sync: ``"normal"`` or ``"full"`` (see the module docstring).
        readonly: refuse writes.
        notify: use LISTEN/NOTIFY on PostgreSQL (default on).
        connect_timeout: seconds before an unreachable server is reported.
    """

    def __init__(
        self,
        url: str | sa.URL | sa.Engine,
        *,
        schema: str | None = None,
        prefix: str = "memimg_",
        sync: str = "normal",
        readonly: bool = False,
        notify: bool = True,
        connect_timeout: float = 10.0,
        **engine_options: Any,
    ) -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
        self._own_engine = not isinstance(url, sa.Engine)
        if isinstance(url, sa.Engine):
            engine = url
        else:
            try:
                parsed = sa.make_url(url)
            except sa_exc.ArgumentError as err:
                raise MemimgError(f"{url!r} is not a database URL: {err}") from err
            options = dict(engine_options)
            if parsed.get_backend_name() == "postgresql":
                options.setdefault("connect_args", {}).setdefault("connect_timeout", max(1, int(connect_timeout)))
            try:
                engine = sa.create_engine(parsed, **options)
            except (ImportError, sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as err:
                raise MemimgError(f"cannot use {_redact(parsed)}: {err}") from err
        self.engine = engine
        self.description = _redact(engine.url)
        self.readonly = readonly
        self.schema = schema
        self.prefix = prefix
        self._pg = engine.dialect.name == "postgresql"
        self._sqlite = engine.dialect.name == "sqlite"
        self._sync = sync
        self._lock = threading.RLock()
        md = sa.MetaData(schema=schema)
        self.events = sa.Table(
            f"{prefix}events",
            md,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("tx", sa.BigInteger, nullable=False),
            sa.Column("ts", sa.BigInteger, nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("target", sa.BigInteger, nullable=False),
            sa.Column("payload", sa.LargeBinary, nullable=False),
            sa.Column("checksum", sa.BigInteger, nullable=False),
        )
        self.snapshots_table = sa.Table(
            f"{prefix}snapshots",
            md,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("ts", sa.BigInteger, nullable=False),
            sa.Column("payload", sa.LargeBinary, nullable=False),
            sa.Column("checksum", sa.BigInteger, nullable=False),
        )
        self.meta_table = sa.Table(
            f"{prefix}meta",
            md,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        self._metadata = md
        ev = self.events
        # the last event, or (every event compacted away) the seq the newest snapshot covers
        head = sa.func.coalesce(
            sa.select(sa.func.max(ev.c.seq)).scalar_subquery(),
            sa.select(sa.func.max(self.snapshots_table.c.seq)).scalar_subquery(),
            0,
        )
        self._head = sa.select(head)
        names = _COLUMNS["events"]
        self._append_first = (
            ev.insert()
            .from_select(
                names,
                sa.select(*[sa.bindparam(n, type_=ev.c[n].type) for n in names]).where(
                    head == sa.bindparam("expected", type_=sa.BigInteger)
                ),
            )
            .execution_options(preserve_rowcount=True)
        )
        self._append_rest = ev.insert()
        self._read = (
            sa.select(*[ev.c[n] for n in names])
            .where(ev.c.seq > sa.bindparam("after"))
            .order_by(ev.c.seq)
            .limit(sa.bindparam("n"))
        )
        digest = hashlib.sha1(f"{schema}.{prefix}".encode()).hexdigest()[:12]
        self.channel = f"memimg_{digest}"
        self._lock_key = int(digest, 16) & 0x7FFFFFFFFFFF
        self._listener: Any = None
        self._writer: Any = None
        self._append_sql_cache: dict[int, str] = {}
        preparer = engine.dialect.identifier_preparer
        self._events_name = preparer.format_table(self.events)
        self._snapshots_name = preparer.format_table(self.snapshots_table)
        self._writer_ok = self._pg and engine.dialect.driver == "psycopg"
        self._connect_and_setup()
        if notify and self._pg:
            self._listen()

    # -- setup ----------------------------------------------------------------

    def _connect_and_setup(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa_exc.DBAPIError as err:
            self._dispose()
            raise MemimgError(f"cannot connect to {self.description}: {str(err.orig).strip()}") from err
        try:
            inspector = sa.inspect(self.engine)
            existing = set(inspector.get_table_names(schema=self.schema))
            for short, columns in _COLUMNS.items():
                name = self.prefix + short
                if name in existing:
                    found = [c["name"] for c in inspector.get_columns(name, schema=self.schema)]
                    if found != columns:
                        raise MemimgError(
                            f"{self.description} has a table {name} with columns {found}, not made by memimg "
                            f"(expected {columns}); it was left untouched"
                        )
            if not {self.prefix + s for s in _COLUMNS} <= existing:
                if self.readonly:
                    raise MemimgError(f"{self.description} holds no memimg image (opened read-only)")
                self._create_tables()
            version = int(self.meta().get("format_version", FORMAT_VERSION))
        except BaseException:
            self._dispose()
            raise
        if version > FORMAT_VERSION:
            self._dispose()
            raise MemimgError(
                f"{self.description} holds memimg storage format {version}; this memimg reads format "
                f"{FORMAT_VERSION} and older: upgrade memimg. The database was left untouched"
            )

    def _create_tables(self) -> None:
        with self.engine.begin() as conn:
            if self._pg:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
                if self.schema:
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            self._metadata.create_all(conn, checkfirst=True)
            exists = conn.execute(sa.select(self.meta_table.c.value).where(self.meta_table.c.key == "format_version"))
            if exists.first() is None:
                conn.execute(self.meta_table.insert().values(key="format_version", value=str(FORMAT_VERSION)))

    def _listen(self) -> None:
        try:
            import psycopg

            # the whole URL, query options (host=/socket/dir, sslmode...) included, as a libpq URI
            conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = psycopg.Connection.connect(conninfo, autocommit=True, connect_timeout=10)
            self._listener.execute(f'LISTEN "{self.channel}"')
        except Exception:  # no psycopg, or another driver: poll instead
            self._listener = None

    def _dispose(self) -> None:
        if self._own_engine:
            self.engine.dispose()

    def _error(self, err: Exception, doing: str) -> MemimgError:
        orig = getattr(err, "orig", err)
        text = str(orig).strip()
        if "lock" in text.lower() and ("timeout" in text.lower() or "locked" in text.lower()):
            return LockedError(f"{doing} in {self.description}: {text}")
        return MemimgError(f"{doing} in {self.description} failed: {text}")

    # -- events ---------------------------------------------------------------

    def head(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(self._head).scalar_one())

    def first_seq(self) -> int:
        with self.engine.connect() as conn:
            low = conn.execute(sa.select(sa.func.min(self.events.c.seq))).scalar()
            if low is None:
                snap = conn.execute(sa.select(sa.func.coalesce(sa.func.max(self.snapshots_table.c.seq), 0))).scalar()
                return int(snap or 0) + 1
            return int(low)

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        if self.readonly:
            raise MemimgError(f"{self.description} is open read-only")
        if self._pg and self._writer_ok:
            self._append_pg(rows, expected_head)
            return
        names = _COLUMNS["events"]
        first = dict(zip(names, rows[0]))
        first["expected"] = expected_head
        try:
            with self.engine.begin() as conn:
                if self._pg and self._sync == "normal":
                    conn.execute(_ASYNC_COMMIT)
                if conn.execute(self._append_first, first).rowcount != 1:
                    raise SeqTaken(expected_head)
                if len(rows) > 1:
                    conn.execute(self._append_rest, [dict(zip(names, r)) for r in rows[1:]])
                if self._pg:
                    conn.execute(_NOTIFY, {"c": self.channel, "p": str(rows[-1][0])})
        except sa_exc.IntegrityError:
            raise SeqTaken(expected_head) from None
        except sa_exc.DBAPIError as err:
            raise self._error(err, f"appending events {rows[0][0]}..{rows[-1][0]}") from err

    # -- PostgreSQL: one round trip per commit ----------------------------------------

    def _writer_connection(self) -> Any:
        if self._writer is None:
            import psycopg

            conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = psycopg.Connection.connect(conninfo, autocommit=True, connect_timeout=10)
            if self._sync == "normal":
                conn.execute("SET synchronous_commit = off")
            self._writer = conn
        return self._writer

    def _append_sql(self, n: int) -> str:
        sql = self._append_sql_cache.get(n)
        if sql is None:
            row = "(%s::bigint, %s::bigint, %s::bigint, %s::text, %s::bigint, %s::bytea, %s::bigint)"
            values = ", ".join([row] * n)
            sql = (
                f"WITH ins AS (INSERT INTO {self._events_name} (seq, tx, ts, kind, target, payload, checksum) "
                f"SELECT * FROM (VALUES {values}) AS v(seq, tx, ts, kind, target, payload, checksum) "
                f"WHERE coalesce((SELECT max(seq) FROM {self._events_name}), "
                f"(SELECT max(seq) FROM {self._snapshots_name}), 0) = %s::bigint RETURNING seq) "
                "SELECT (SELECT count(*) FROM ins), (SELECT pg_notify(%s, max(seq)::text) FROM ins HAVING count(*) > 0)"
            )
            if len(self._append_sql_cache) < 64:
                self._append_sql_cache[n] = sql
        return sql

    def _append_pg(self, rows: Sequence[EventRow], expected_head: int) -> None:
        """Append with one statement in autocommit: conditional insert + NOTIFY, all or none."""
        import psycopg

        if len(rows) > 8000:  # stay under PostgreSQL's 65,535 parameters per statement
            self._append_pg_chunked(rows, expected_head)
            return
        params: list[Any] = [v for r in rows for v in r]
        params += [expected_head, self.channel]
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._writer_connection()
                    inserted = conn.execute(self._append_sql(len(rows)), params).fetchone()[0]
                    break
                except psycopg.errors.UniqueViolation:
                    raise SeqTaken(expected_head) from None
                except psycopg.OperationalError as err:
                    self._close_writer()
                    # The reply may have been lost after the commit: if so, the rows are there.
                    stored = self._stored(rows[-1])
                    if stored:
                        return
                    if attempt == 2 or stored is None:
                        raise self._error(err, f"appending events {rows[0][0]}..{rows[-1][0]}") from err
                except psycopg.Error as err:
                    raise self._error(err, f"appending events {rows[0][0]}..{rows[-1][0]}") from err
        if inserted != len(rows):
            raise SeqTaken(expected_head)

    def _append_pg_chunked(self, rows: Sequence[EventRow], expected_head: int) -> None:
        import psycopg

        with self._lock:
            conn = self._writer_connection()
            try:
                with conn.transaction():
                    done = expected_head
                    for start in range(0, len(rows), 8000):
                        chunk = rows[start : start + 8000]
                        params: list[Any] = [v for r in chunk for v in r] + [done, self.channel]
                        if conn.execute(self._append_sql(len(chunk)), params).fetchone()[0] != len(chunk):
                            raise SeqTaken(expected_head)
                        done += len(chunk)
            except psycopg.errors.UniqueViolation:
                raise SeqTaken(expected_head) from None
            except psycopg.Error as err:
                self._close_writer()
                if isinstance(err, psycopg.OperationalError) and self._stored(rows[-1]):
                    return  # committed, the reply lost
                raise self._error(err, f"appending events {rows[0][0]}..{rows[-1][0]}") from err

    def _stored(self, row: EventRow) -> bool | None:
        """Whether *row* (seq and checksum) is in the log, or None when that cannot be known."""
        try:
            with self.engine.connect() as conn:
                found = conn.execute(
                    sa.select(self.events.c.checksum).where(self.events.c.seq == row[0])
                ).scalar_one_or_none()
        except sa_exc.DBAPIError:
            return None
        return found is not None and int(found) == row[6]

    def _close_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
            self._writer = None

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        return read_in_chunks(self._fetch, after, limit)  # type: ignore[return-value]

    def _fetch(self, after: int, n: int) -> list[EventRow]:
        try:
            with self.engine.connect() as conn:
                return [
                    EventRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6])
                    for r in conn.execute(self._read, {"after": after, "n": n})
                ]
        except sa_exc.DBAPIError as err:
            raise self._error(err, "reading events") from err

    def changed(self, seen: int) -> bool:
        # Exact (one round trip): a notification may still be on its way.
        return self.head() != seen

    def _drain_notifies(self, timeout: float) -> bool:
        got = False
        try:
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                got = True
            while got:
                more = False
                for _ in self._listener.notifies(timeout=0, stop_after=100):
                    more = True
                if not more:
                    break
        except Exception:
            self._listener = None
            return True
        return got

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        """Block until another writer may have appended past *seen*, or *timeout* passes."""
        if self.head() != seen:
            return True
        if self._listener is not None:
            return self._drain_notifies(timeout) or self.head() != seen
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if self.head() != seen:
                return True
        return False

    def delete_events_before(self, seq: int) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(self.events.delete().where(self.events.c.seq < seq)).rowcount)

    def delete_snapshots_before(self, seq: int) -> int:
        t = self.snapshots_table
        with self.engine.begin() as conn:
            return int(conn.execute(t.delete().where(t.c.seq < seq)).rowcount)

    # -- snapshots and meta ---------------------------------------------------

    def write_snapshot(self, row: SnapshotRow) -> None:
        if self.readonly:
            raise MemimgError(f"{self.description} is open read-only")
        t = self.snapshots_table
        try:
            with self.engine.begin() as conn:
                conn.execute(t.delete().where(t.c.seq == row.seq))
                conn.execute(t.insert().values(seq=row.seq, ts=row.ts, payload=row.payload, checksum=row.checksum))
        except sa_exc.DBAPIError as err:
            raise self._error(err, f"writing the snapshot at seq {row.seq}") from err

    def snapshots(self) -> list[SnapshotInfo]:
        t = self.snapshots_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.seq, t.c.ts, sa.func.length(t.c.payload)).order_by(t.c.seq.desc()))
            return [SnapshotInfo(int(a), int(b), int(c)) for a, b, c in rows]

    def read_snapshot(self, seq: int) -> SnapshotRow:
        t = self.snapshots_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.seq, t.c.ts, t.c.payload, t.c.checksum).where(t.c.seq == seq)).first()
        if row is None:
            raise KeyError(seq)
        return SnapshotRow(int(row[0]), int(row[1]), bytes(row[2]), int(row[3]))

    def meta(self) -> dict[str, str]:
        t = self.meta_table
        with self.engine.connect() as conn:
            return {k: v for k, v in conn.execute(sa.select(t.c.key, t.c.value))}

    def set_meta(self, key: str, value: str) -> None:
        t = self.meta_table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.key == key))
            conn.execute(t.insert().values(key=key, value=value))

    def close(self) -> None:
        with self._lock:
            self._close_writer()
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:
                pass
            self._listener = None
        self._dispose()
