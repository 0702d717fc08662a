"""Opening a database for the SQLAlchemy store: the engine, memimg's tables, and connections outside the pool.

:func:`make_engine` turns a URL into an engine (or takes an application's
``Engine`` as it is); :class:`Setup` checks the tables a database holds --
refusing tables memimg did not make and storage formats newer than this
memimg reads -- and creates the missing ones, or gives a log made by memimg
0.2 its ``commit_id`` column, or a log made before the target index its
``targets`` table (empty); :meth:`Setup.connect` makes the psycopg
connections the PostgreSQL writer and listener use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from memimg._errors import MemimgError, StoreError
from memimg.stores._protocol import FORMAT_VERSION
from memimg.stores._sqltables import COLUMNS, TARGET_COLUMNS, LogTables

__all__ = ["Setup", "make_engine", "psycopg_connect", "redact"]


def redact(url: sa.URL) -> str:
    """*url* as text, without its password (for messages)."""
    return url.render_as_string(hide_password=True)


def make_engine(
    url: str | sa.URL | sa.Engine, connect_timeout: float, engine_options: dict[str, Any]
) -> tuple[sa.Engine, dict[str, Any]]:
    """The engine for *url* (an ``Engine`` is used as it is) and the ``connect_args`` it was made with.

    On PostgreSQL, ``connect_timeout`` is passed to the driver unless
    ``connect_args`` has one.

    Raises:
        MemimgError: *url* is not a database URL, or its dialect or driver cannot be used.
    """
    if isinstance(url, sa.Engine):
        return url, {}
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
        raise MemimgError(f"cannot use {redact(parsed)}: {err}") from err
    return engine, dict(options.get("connect_args", {}))


class Setup:
    """The tables of one log in the database of *engine*, checked and made (see the module docstring).

    Args:
        engine: the store's engine.
        tables: the log's tables (*prefix* in *schema*).
        readonly: create and alter nothing.
        lock_key: the advisory lock that serializes creating the tables on PostgreSQL.
        error: the store's translation of a driver error into a :class:`StoreError`.
    """

    def __init__(
        self,
        engine: sa.Engine,
        tables: LogTables,
        *,
        schema: str | None,
        prefix: str,
        readonly: bool,
        lock_key: int,
        error: Callable[[BaseException, str], StoreError],
    ) -> None:
        self.engine, self.tables, self.schema, self.prefix = engine, tables, schema, prefix
        self.readonly, self.lock_key, self._error = readonly, lock_key, error
        self.description = redact(engine.url)
        self.pg = engine.dialect.name == "postgresql"
        #: whether the log has its target index table (a read-only store on a log made before it has none)
        self.has_targets = False

    def prepare(self) -> None:
        """Connect, check the tables, create or upgrade them as needed, check the storage format.

        Raises:
            StoreError: the database cannot be reached or read.
            MemimgError: tables memimg did not make, no image to open read-only, or a newer storage format.
        """
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa_exc.DBAPIError as err:
            raise StoreError(
                f"cannot connect to {self.description}: {str(err.orig).strip()}",
                store=self.description,
                operation="connecting",
            ) from err
        try:
            self._check_tables()
            version = self._format_version()
        except sa_exc.SQLAlchemyError as err:
            raise self._error(err, "reading memimg's tables") from err
        if version > FORMAT_VERSION:
            raise MemimgError(
                f"{self.description} holds memimg storage format {version}; this memimg reads format "
                f"{FORMAT_VERSION} and older: upgrade memimg. The database was left untouched"
            )

    def _check_tables(self) -> None:
        inspector = sa.inspect(self.engine)
        existing = set(inspector.get_table_names(schema=self.schema))
        missing_commit_id = False
        for short, columns in (*COLUMNS.items(), ("targets", TARGET_COLUMNS)):
            name = self.prefix + short
            if name in existing:
                found = [c["name"] for c in inspector.get_columns(name, schema=self.schema)]
                if short == "events" and found == columns:
                    missing_commit_id = self.pg  # made by memimg 0.2
                elif not (found == columns or (short == "events" and found == [*columns, "commit_id"])):
                    raise MemimgError(
                        f"{self.description} has a table {name} with columns {found}, not made by memimg "
                        f"(expected {columns}); it was left untouched"
                    )
        if not {self.prefix + s for s in COLUMNS} <= existing:
            if self.readonly:
                raise MemimgError(f"{self.description} holds no memimg image (opened read-only)")
            self._create_tables()
        elif missing_commit_id and not self.readonly:
            self._add_commit_id()
        self.has_targets = self.prefix + "targets" in existing
        if not self.has_targets and not self.readonly:  # a log made before the target index (see Store.read_target)
            self._create_targets()
            self.has_targets = True

    def _format_version(self) -> int:
        meta = self.tables.meta
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "format_version")).scalar()
        return FORMAT_VERSION if value is None else int(value)

    def _create_tables(self) -> None:
        meta = self.tables.meta
        with self.engine.begin() as conn:
            if self.pg:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.lock_key})
                if self.schema:
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            self.tables.metadata.create_all(conn, checkfirst=True)
            exists = conn.execute(sa.select(meta.c.value).where(meta.c.key == "format_version"))
            if exists.first() is None:
                conn.execute(meta.insert().values(key="format_version", value=str(FORMAT_VERSION)))
            if conn.execute(self.tables.covered).first() is None:  # with the target table, in one transaction
                conn.execute(self.tables.cover_none)

    def _create_targets(self) -> None:
        """The target index table, empty, and its meta entry (covering seq 0), unless they are there."""
        tables = self.tables
        with self.engine.begin() as conn:
            if self.pg:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.lock_key})
            tables.targets.create(conn, checkfirst=True)
            if conn.execute(tables.covered).first() is None:
                conn.execute(tables.cover_none)

    def _add_commit_id(self) -> None:
        """Give an events table made by memimg 0.2 its ``commit_id`` column (see the store's module docstring)."""
        events = self.engine.dialect.identifier_preparer.format_table(self.tables.events)
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.lock_key})
            conn.execute(sa.text(f"ALTER TABLE {events} ADD COLUMN IF NOT EXISTS commit_id BIGINT"))


def psycopg_connect(engine: sa.Engine, connect_args: dict[str, Any], connect_timeout: float) -> Any:
    """A new psycopg connection (autocommit) to *engine*'s database, outside its pool.

    Made by the engine itself, so it is configured exactly as the store's
    reads are (URL query options such as ``options=-c
    statement_timeout=5000``, ``connect_args``, connect events); a URL
    rendered back to a string would lose some of that.
    """
    import psycopg

    url = engine.url
    if engine.dialect.driver == "psycopg":
        # the engine's own connection -- its creator, connect_args and connect events apply (a
        # search_path set there must hold for the writer too, or its rows land in other tables) --
        # taken out of the pool for good
        try:
            fairy = engine.raw_connection()
        except sa_exc.DBAPIError as err:
            if err.orig is not None:
                raise err.orig from err  # the driver's error, as a direct connect raises it
            raise
        conn: Any = fairy.driver_connection
        fairy.detach()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = True
        return conn
    # another driver's dialect: its arguments are not libpq's, the URL's parts are
    kwargs = url.translate_connect_args(username="user", database="dbname")
    kwargs.update(url.query)
    kwargs.update(connect_args)
    kwargs.setdefault("connect_timeout", max(1, int(connect_timeout)))
    return psycopg.Connection.connect(autocommit=True, **kwargs)
