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

On PostgreSQL every commit also sends ``NOTIFY`` on the log's channel, so a
follower learns of new commits at once (:meth:`wait_for_change`), ``LISTEN``-ing
only while it waits (:class:`~memimg.stores._postgres.PgListener`); other
databases are polled. ``sync="normal"`` sets ``synchronous_commit = off`` on
PostgreSQL (a commit survives the crash of any client process; a crash of the
database server itself may lose the last fraction of a second of commits,
never leaving a partial one), ``sync="full"`` keeps PostgreSQL's default.

Every failure of the database or its driver surfaces as a :class:`StoreError`
(:class:`LockedError` for lock timeouts, serialization failures and
deadlocks), told apart by the driver's error class and SQLSTATE, never by its
message. A pooled connection the server dropped (a restart,
``pg_terminate_backend``) is retried once on a fresh one, so the store keeps
working as soon as the database is back.

**Commits whose reply is lost.** On PostgreSQL a commit is one statement in
autocommit, so a connection that breaks after the statement was sent leaves
its outcome unknown to the writer. Each commit therefore carries a random
63-bit *commit id*, stored in the ``commit_id`` column of each of its rows.
After such a break the store reconnects and looks at the event at the
commit's first seq: its commit id says whether the commit landed. If no event
is there yet, the statement may still be on its way to the server, so the
store sends it again with the same commit id: the append rule lets exactly
one of the two land, and a second look tells which. Only when the database
cannot be reached within ``connect_timeout`` does the commit fail with
:class:`CommitUnknownError`, which names the seq and commit id to look up.

The ``commit_id`` column is the one addition to the tables of memimg 0.2
(nullable, added to an existing ``events`` table when a writer opens it;
``ALTER TABLE ... ADD COLUMN`` of a nullable column rewrites nothing).
Rows written by older memimg processes have no commit id; those processes keep
writing to the table, but an older memimg refuses to *open* a table with
the extra column (it checks the columns exactly), so upgrade every process
that shares a log. It was chosen over a side table (a second insert per
commit: 20-40% more per commit) and over reusing an existing column (``ts``
has no spare bits a reader would not misread, and ``tx`` is documented as
the first seq).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from memimg._errors import ReadOnlyError, StoreError
from memimg.stores._postgres import ABSENT, PgListener, PgWriter, appending, lost, new_commit_id, settle
from memimg.stores._protocol import (
    LEASE,
    EventRow,
    Rewrite,
    SeqTaken,
    SnapshotInfo,
    SnapshotRow,
    check_aligned,
    check_target,
    lease_entry,
    poll,
    read_in_chunks,
)
from memimg.stores._sqlerrors import store_error
from memimg.stores._sqlsetup import Setup, make_engine, psycopg_connect, redact
from memimg.stores._sqltables import COLUMNS as _COLUMNS
from memimg.stores._sqltables import LogTables

__all__ = ["SQLAlchemyStore"]


_ASYNC_COMMIT: Final = sa.text("SET LOCAL synchronous_commit = off")
_NOTIFY: Final = sa.text("SELECT pg_notify(:c, :p)")

T = TypeVar("T")


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
        connect_timeout: seconds before an unreachable server is reported;
            also how long a commit whose reply was lost keeps trying to learn
            its outcome before raising :class:`CommitUnknownError`.
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
        engine, self._connect_args = make_engine(url, connect_timeout, engine_options)
        self.engine = engine
        self.description = redact(engine.url)
        self.readonly, self.schema, self.prefix = readonly, schema, prefix
        self._pg = engine.dialect.name == "postgresql"
        self._sqlite = engine.dialect.name == "sqlite"
        self._sync = sync
        self._connect_timeout = connect_timeout
        self._operational = getattr(engine.dialect.loaded_dbapi, "OperationalError", ())
        self._lock = threading.RLock()
        digest = hashlib.sha1(f"{schema}.{prefix}".encode()).hexdigest()[:12]
        self.channel = f"memimg_{digest}"
        self._use_tables(LogTables(schema, prefix, commit_id=self._pg))
        #: one round trip per commit, on a psycopg connection of its own (PostgreSQL with psycopg 3)
        self._pg_writer = self._make_writer() if self._pg and engine.dialect.driver == "psycopg" else None
        lock_key = int(digest, 16) & 0x7FFFFFFFFFFF  # serializes creating the tables
        setup = Setup(
            engine, self._tables, schema=schema, prefix=prefix, readonly=readonly, lock_key=lock_key, error=self._error
        )
        try:
            setup.prepare()
        except BaseException:
            self._dispose()
            raise
        self._has_targets = setup.has_targets
        #: LISTENs while a wait for another writer's commit lasts, and only then
        self._listener = PgListener(self._connect, self.channel) if notify and self._pg else None

    def _use_tables(self, tables: LogTables) -> None:
        self._tables = tables
        self.events, self.snapshots_table, self.meta_table = tables.events, tables.snapshots, tables.meta
        self._head, self._append_first = tables.head, tables.append_first
        self._append_rest, self._read = tables.append_rest, tables.read
        preparer = self.engine.dialect.identifier_preparer
        self._events_name = preparer.format_table(self.events)
        self._snapshots_name = preparer.format_table(self.snapshots_table)

    def _make_writer(self) -> PgWriter:
        return PgWriter(
            self._connect,
            events_table=self._events_name,
            snapshots_table=self._snapshots_name,
            channel=self.channel,
            asynchronous=self._sync == "normal",
        )

    def _connect(self) -> Any:
        """A new psycopg connection (autocommit) to the engine's database, outside its pool."""
        return psycopg_connect(self.engine, self._connect_args, self._connect_timeout)

    def _dispose(self) -> None:
        if self._own_engine:
            self.engine.dispose()

    def _error(self, err: BaseException, doing: str, *, write: bool = False) -> StoreError:
        """The :class:`StoreError` for a failure of the database or its driver (see :func:`store_error`)."""
        return store_error(
            err, doing, self.description, write=write, sqlite=self._sqlite, pg=self._pg, operational=self._operational
        )

    def _run(
        self, doing: str, work: Callable[[sa.Connection], T], *, write: bool = False, autocommit: bool = False
    ) -> T:
        """``work(connection)`` on a pooled connection (a transaction if *write*, not *autocommit*), errors translated.

        A connection the server dropped is retried once on a fresh one: the
        pool discarded it, and every operation run this way is a read or
        idempotent (writing the same snapshot or meta again changes nothing).
        """
        if write and self.readonly:
            raise ReadOnlyError(
                f"{doing} in {self.description} was refused: the store is open read-only; nothing was written"
            )
        for attempt in (1, 2):
            try:
                if write and not autocommit:
                    with self.engine.begin() as conn:
                        return work(conn)
                with self.engine.connect() as conn:
                    return work(conn.execution_options(isolation_level="AUTOCOMMIT") if autocommit else conn)
            except sa_exc.DBAPIError as err:
                if attempt == 1 and err.connection_invalidated:
                    continue
                raise self._error(err, doing, write=write) from err
            except sa_exc.SQLAlchemyError as err:
                raise self._error(err, doing, write=write) from err
        raise AssertionError("unreachable")

    # -- events ---------------------------------------------------------------

    def _on_writer(self, doing: str, read: Callable[[], T], pooled: Callable[[sa.Connection], T]) -> T:
        """``read()`` on the PostgreSQL writer's connection; if it broke, ``pooled`` on the pool's (it reconnects)."""
        import psycopg

        with self._lock:
            try:
                return read()
            except psycopg.Error as err:
                if not lost(err, psycopg.OperationalError):
                    raise self._error(err, doing) from err
        return self._run(doing, pooled)

    def head(self) -> int:
        doing, pooled = "reading the head of the log", lambda conn: int(conn.execute(self._head).scalar_one())
        if self._pg_writer is not None:  # one statement: no pooled connection, no transaction (see _postgres)
            return self._on_writer(doing, self._pg_writer.head, pooled)
        return self._run(doing, pooled)

    def first_seq(self) -> int:
        def first(conn: sa.Connection) -> int:
            low = conn.execute(sa.select(sa.func.min(self.events.c.seq))).scalar()
            if low is None:
                snap = conn.execute(sa.select(sa.func.coalesce(sa.func.max(self.snapshots_table.c.seq), 0))).scalar()
                return int(snap or 0) + 1
            return int(low)

        return self._run("reading the first seq of the log", first)

    def append(self, rows: Sequence[EventRow], expected_head: int) -> None:
        if self.readonly:
            raise ReadOnlyError(
                f"{appending(rows)} in {self.description} was refused: the store is open read-only; nothing was written"
            )
        check_aligned(rows, expected_head)
        with self._lock:
            if self._pg_writer is not None:
                inserted = self._append_pg(self._pg_writer, rows, expected_head)  # raises SeqTaken with the rows missed
            else:
                inserted = self._append_sa(rows, expected_head)
        if not inserted:
            raise SeqTaken(expected_head)

    def _append_sa(self, rows: Sequence[EventRow], expected_head: int) -> bool:
        commit_id = new_commit_id() if self._pg else None

        def insert() -> bool:
            names = _COLUMNS["events"]
            first = dict(zip(names, rows[0]))
            first["expected"] = expected_head
            rest = [dict(zip(names, r)) for r in rows[1:]]
            if commit_id is not None:
                first["commit_id"] = commit_id
                for r in rest:
                    r["commit_id"] = commit_id
            try:
                with self.engine.begin() as conn:
                    if self._pg and self._sync == "normal":
                        conn.execute(_ASYNC_COMMIT)
                    if conn.execute(self._append_first, first).rowcount != 1:
                        raise SeqTaken(expected_head)  # rolls the transaction back
                    if rest:
                        conn.execute(self._append_rest, rest)
                    if self._pg:
                        conn.execute(_NOTIFY, {"c": self.channel, "p": str(rows[-1][0])})
            except (SeqTaken, sa_exc.IntegrityError):
                return False
            return True

        try:
            return insert()
        except sa_exc.DBAPIError as err:
            if commit_id is None or not lost(err, self._operational):
                raise self._error(err, appending(rows), write=True) from err
            return self._settle(rows, commit_id, err, insert, self._commit_id_at, lambda: None)
        except sa_exc.SQLAlchemyError as err:
            raise self._error(err, appending(rows), write=True) from err

    def _append_pg(self, writer: PgWriter, rows: Sequence[EventRow], expected_head: int) -> bool:
        """Append in one round trip; a commit whose reply was lost is settled by its commit id.

        Raises:
            SeqTaken: the head moved, with the events after *expected_head* (read by the same statement).
        """
        import psycopg

        commit_id = new_commit_id()
        try:
            writer.connection()
        except psycopg.Error as err:  # nothing was sent
            writer.close()
            raise self._error(err, appending(rows), write=True) from err

        def insert() -> bool:
            try:
                writer.append(rows, expected_head, commit_id)
            except SeqTaken:
                return False
            return True

        try:
            writer.append(rows, expected_head, commit_id)
            return True
        except psycopg.Error as err:
            if not lost(err, psycopg.OperationalError):
                raise self._error(err, appending(rows), write=True) from err
            writer.close()
            return self._settle(rows, commit_id, err, insert, writer.lookup, writer.close)

    def _settle(
        self,
        rows: Sequence[EventRow],
        commit_id: int,
        cause: BaseException,
        insert: Callable[[], bool],
        lookup: Callable[[int], Any],
        on_failure: Callable[[], None],
    ) -> bool:
        retryable: tuple[type[BaseException], ...] = (sa_exc.SQLAlchemyError,)
        if self._pg_writer is not None:
            import psycopg

            retryable = (psycopg.Error, sa_exc.SQLAlchemyError)
        return settle(
            rows,
            commit_id,
            cause,
            insert=insert,
            lookup=lookup,
            retryable=retryable,
            on_failure=on_failure,
            timeout=self._connect_timeout,
            description=self.description,
            events_table=self._events_name,
        )

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[EventRow]:
        return read_in_chunks(self._fetch, after, limit)  # type: ignore[return-value]

    def _fetch(self, after: int, n: int) -> list[EventRow]:
        def pooled(conn: sa.Connection) -> list[EventRow]:
            rows = conn.execute(self._read, {"after": after, "n": n})
            return [EventRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in rows]

        doing, writer = f"reading events after seq {after}", self._pg_writer
        if writer is not None:
            return self._on_writer(doing, lambda: writer.fetch(after, n), pooled)
        return self._run(doing, pooled)

    def read_target(self, target: int, after: int = 0, until: int | None = None) -> Iterator[EventRow]:
        check_target(target)
        last = (1 << 63) - 1 if until is None else until
        doing, tables = f"reading the events of object {target}", self._tables
        done = self._covered(doing)

        def fetch(after: int, n: int) -> list[EventRow]:
            def work(conn: sa.Connection) -> list[Any]:
                rows: list[Any] = []
                if after < done:  # the indexed part, then the events past it
                    bound = {"target": target, "after": after, "until": min(last, done), "n": n}
                    rows = list(conn.execute(tables.read_indexed, bound))
                if len(rows) < n:
                    bound = {"target": target, "after": max(after, done), "until": last, "n": n - len(rows)}
                    rows += conn.execute(tables.read_tail, bound)
                return rows

            return [EventRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in self._run(doing, work)]

        return read_in_chunks(fetch, after, None)  # type: ignore[return-value]

    def _covered(self, doing: str) -> int:
        """The seq up to which the target index is filled (0 without one)."""
        if not self._has_targets:
            return 0
        value = self._run(doing, lambda conn: conn.execute(self._tables.covered).scalar())
        return 0 if value is None else int(value)

    def index_targets(self, upto: int, *, least: int = 1) -> int:
        doing, tables = f"indexing the targets of the events up to seq {upto}", self._tables
        done = self._covered(doing)
        if upto - done < least:
            return done

        def work(conn: sa.Connection) -> int | None:
            upto_ = min(upto, conn.execute(tables.last_event).scalar() or 0)
            if upto_ - done < least:
                return done
            if conn.execute(tables.claim, {"done_text": str(done), "upto_text": str(upto_)}).rowcount != 1:
                return None  # another process advanced it meanwhile
            conn.execute(tables.fill, {"done": done, "upto": upto_})
            return upto_

        covered = self._run(doing, work, write=True)
        return self._covered(doing) if covered is None else covered

    #: changed() is a round trip to the database: an image does not look before each commit when other writers
    #: are active (a refused append reads what it missed in its own round trip; see Engine.looks_first)
    changed_asks_the_server = True

    def changed(self, seen: int) -> bool:
        # Exact (one round trip): a notification may still be on its way.
        return self.head() != seen

    def wait_for_change(self, seen: int, timeout: float) -> bool:
        """Block until another writer may have appended past *seen*, or *timeout* passes.

        On PostgreSQL the store ``LISTEN``-s only during the wait (see
        :class:`PgListener`); otherwise, or while it cannot listen, it polls.
        """
        if self.head() != seen:
            return True
        if self._listener is not None:
            try:
                woke = self._listener.wait(lambda: self.head() != seen, timeout)
            except ImportError:  # no psycopg: poll, from now on
                self._listener = None
            else:
                if woke is not None:
                    return woke or self.head() != seen
        return poll(lambda: self.head() != seen, timeout, 0.05)

    def delete_events_before(self, seq: int) -> int:
        tables = self._tables

        def work(conn: sa.Connection) -> int:
            # the events' index entries first, then the events; the meta entry locked, so that no advance
            # runs meanwhile (it would index events this deletes)
            done = conn.execute(tables.covered.with_for_update()).scalar() if self._has_targets else None
            if done is not None:
                conn.execute(tables.delete_entries, {"before": seq, "done": int(done)})
            return int(conn.execute(self.events.delete().where(self.events.c.seq < seq)).rowcount)

        return self._run(f"deleting events before seq {seq}", work, write=True)

    def delete_snapshots_before(self, seq: int) -> int:
        t = self.snapshots_table
        return self._run(
            f"deleting snapshots before seq {seq}",
            lambda conn: int(conn.execute(t.delete().where(t.c.seq < seq)).rowcount),
            write=True,
        )

    def reclaim(self) -> bool:
        """Give back the space of deleted rows: ``VACUUM``, outside a transaction (as it must run).

        PostgreSQL: memimg's two tables; new rows reuse the space, a table's empty end pages go back to the disk,
        and reads and commits go on (``VACUUM FULL`` gives back the rest but locks the tables: see the deployment
        docs). SQLite: ``VACUUM``, then a ``TRUNCATE`` checkpoint -- without the checkpoint lock and mark of
        :meth:`SQLiteStore.reclaim`, as this store's connections keep SQLite's own checkpoints (the deployment docs:
        open a SQLite image by its path for several writer processes). Other databases: nothing is done.
        """
        tables = (self._events_name, self._snapshots_name)
        statements = [f"VACUUM {t}" for t in tables] if self._pg else ["VACUUM"] if self._sqlite else []
        if self._sqlite:
            statements.append("PRAGMA wal_checkpoint(TRUNCATE)")

        def vacuum(conn: sa.Connection) -> bool:
            busy = 0
            for sql in statements:
                result = conn.exec_driver_sql(sql)
                if sql.startswith("PRAGMA wal_checkpoint"):
                    busy = result.fetchone()[0]  # type: ignore[index]
            return not busy

        return self._run("reclaiming the space of deleted rows", vacuum, write=True, autocommit=True)

    def rewrite(self, plan: Callable[[Sequence[EventRow]], Rewrite], after: int) -> None:
        """See :meth:`Store.rewrite` and :mod:`memimg.stores._rewrite`; a commit whose reply was lost is
        settled by its commit id (PostgreSQL), never appended twice."""
        from memimg.stores._rewrite import RewriteStatements, sqlalchemy_rewrite

        doing = "rewriting rows (erase)"
        cid = new_commit_id() if self._pg else None
        statements = RewriteStatements(
            self.events, self.snapshots_table, self._append_first, self._read, self._events_name, _COLUMNS["events"]
        )
        planned: list[Rewrite] = []

        def planning(missed: Sequence[EventRow]) -> Rewrite:
            planned.append(plan(missed))
            return planned[-1]

        work = sqlalchemy_rewrite(
            statements, planning, after, pg=self._pg, commit_id=cid, channel=self.channel if self._pg else None
        )
        if self.readonly or cid is None:
            self._run(doing, work, write=True)
            return
        try:
            with self.engine.begin() as conn:
                work(conn)
        except sa_exc.DBAPIError as err:
            rows = planned[-1].rows if planned else ()
            if not rows or not lost(err, self._operational):
                raise self._error(err, doing, write=True) from err

            def again() -> bool:
                self._run(doing, work, write=True)
                return True

            if not self._settle(rows, cid, err, again, self._commit_id_at, lambda: None):
                self._run(doing, work, write=True)  # another writer's commit holds its seq: it never landed
        except sa_exc.SQLAlchemyError as err:
            raise self._error(err, doing, write=True) from err

    def _commit_id_at(self, seq: int) -> Any:
        """The commit id of the event at *seq* (:data:`ABSENT`: none), on a new pooled connection."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.events.c.commit_id).where(self.events.c.seq == seq)).first()
        return ABSENT if row is None else row[0]

    # -- snapshots and meta ---------------------------------------------------

    def write_snapshot(self, row: SnapshotRow, holder: str | None = None) -> bool:
        t, m = self.snapshots_table, self.meta_table

        def write(conn: sa.Connection) -> bool:
            if holder is not None:  # the lease row locked (shared) until the commit: a taker waits for it
                lease = sa.select(m.c.value).where(m.c.key == f"lease.{LEASE}")
                value = conn.execute(lease.with_for_update(read=True) if self._pg else lease).scalar()
                if value is None or value[21:] != holder:
                    return False
            conn.execute(t.delete().where(t.c.seq == row.seq))
            conn.execute(t.insert().values(seq=row.seq, ts=row.ts, payload=row.payload, checksum=row.checksum))
            return True

        return self._run(f"writing the snapshot at seq {row.seq}", write, write=True)

    def snapshots(self) -> list[SnapshotInfo]:
        t = self.snapshots_table
        query = sa.select(t.c.seq, t.c.ts, sa.func.length(t.c.payload)).order_by(t.c.seq.desc())
        return self._run(
            "listing snapshots", lambda conn: [SnapshotInfo(int(a), int(b), int(c)) for a, b, c in conn.execute(query)]
        )

    def read_snapshot(self, seq: int) -> SnapshotRow:
        t = self.snapshots_table
        query = sa.select(t.c.seq, t.c.ts, t.c.payload, t.c.checksum).where(t.c.seq == seq)
        row = self._run(f"reading the snapshot at seq {seq}", lambda conn: conn.execute(query).first())
        if row is None:
            raise KeyError(seq)
        return SnapshotRow(int(row[0]), int(row[1]), bytes(row[2]), int(row[3]))

    def meta(self) -> dict[str, str]:
        t = self.meta_table
        return self._run(
            "reading memimg_meta", lambda conn: {k: v for k, v in conn.execute(sa.select(t.c.key, t.c.value))}
        )

    def set_meta(self, key: str, value: str | None) -> None:
        t = self.meta_table

        def write(conn: sa.Connection) -> None:
            conn.execute(t.delete().where(t.c.key == key))
            if value is not None:
                conn.execute(t.insert().values(key=key, value=value))

        self._run(f"writing memimg_meta[{key!r}]", write, write=True)

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        key, value, now = lease_entry(name, holder, seconds)
        renew, insert = self._tables.lease(key, value, now, holder)

        def take(conn: sa.Connection) -> bool:
            if conn.execute(renew).rowcount == 1:
                return True
            try:
                with conn.begin_nested():
                    conn.execute(insert)
            except sa_exc.IntegrityError:  # another holder's, unexpired
                return False
            return True

        return self._run(f"taking the {name} lease", take, write=True)

    def release(self, name: str, holder: str) -> None:
        mine = self._tables.release(f"lease.{name}", holder)
        self._run(f"releasing the {name} lease", lambda conn: conn.execute(mine), write=True)

    def close(self) -> None:
        with self._lock:
            if self._pg_writer is not None:
                self._pg_writer.close()
        if self._listener is not None:
            self._listener.close()
        self._dispose()
