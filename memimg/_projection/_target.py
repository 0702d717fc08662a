"""The SQL side of the projection: the target database, its meta table, one table per class, and the writes.

The target is any SQLAlchemy URL of SQLite or PostgreSQL (or an
``sqlalchemy.Engine`` on PostgreSQL: an engine on SQLite is refused, see
below). Its tables, all named with the projection's
*prefix* (and in its *schema*, on PostgreSQL):

* ``{prefix}memimg_projection`` -- the meta table, ``key``/``value`` text
  rows: ``format``, ``image`` (the id of the image the tables are of),
  ``seq`` (every commit up to it is in the tables) and ``tables`` (JSON:
  for each class, by stable name, its table and the kind of each column),
  so a restart knows what it wrote.
* one table per class: ``oid`` (``BIGINT`` primary key) and one column per
  field (:mod:`memimg._projection._columns`), named after the field; a
  field named ``oid``, or whose name another field's takes (case aside), or
  longer than 63 characters gets another name (:func:`column_names`). The table's name is the class's name in snake case
  (``LineItem`` -> ``line_item``), or, if two classes projected share it,
  the whole stable name (``shop_models_line_item``).

On SQLite, transactions are begun explicitly (``BEGIN IMMEDIATE``): the
Python driver would otherwise commit by itself before DDL, and a table
created or altered would not be in the same transaction as the seq. That
is why the projection makes its SQLite engines itself: installing those
hooks on an engine the caller gave would change how the caller's own
transactions behave.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from memimg._errors import MemimgError
from memimg._projection._columns import column_type, encoder

__all__ = ["FORMAT", "ClassTable", "Target"]

#: the format of the meta table and of the tables, stored as ``format``
FORMAT: Final = "1"
_CHUNK: Final = 500
_MAX_NAME: Final = 63  # PostgreSQL's identifier length


class ClassTable:
    """The table of one class: its name, SQLAlchemy table, and the column (and encoder) of each field."""

    __slots__ = ("class_name", "columns", "encoders", "kinds", "name", "table")

    def __init__(self, class_name: str, name: str, kinds: dict[str, str], metadata: sa.MetaData, dialect: str):
        self.class_name = class_name
        self.name = name
        self.kinds = kinds
        self.columns = column_names(kinds)
        self.encoders = {f: encoder(k, dialect) for f, k in kinds.items()}
        self.table = sa.Table(
            name,
            metadata,
            sa.Column("oid", sa.BigInteger, primary_key=True, autoincrement=False),
            *(sa.Column(self.columns[f], column_type(k, dialect), nullable=True) for f, k in kinds.items()),
        )


class Target:
    """A projection's target database (see the module docstring)."""

    def __init__(self, target: Any, *, prefix: str = "", schema: str | None = None) -> None:
        if not isinstance(prefix, str) or (prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix)):
            raise ValueError(f"project(prefix={prefix!r}): a table prefix is letters, digits and '_' (such as 'mi_')")
        self.description = _describe(target)
        if isinstance(target, sa.Engine):
            self.engine = target
            self._owned = False
        else:
            self.engine = _engine(target)
            self._owned = True
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            self.close()
            raise MemimgError(
                f"project(): the target {self.description} is a {self.dialect} database; the projection writes to "
                "SQLite (sqlite:///file.db) or PostgreSQL (postgresql+psycopg://...)"
            )
        if schema is not None and self.dialect != "postgresql":
            self.close()
            raise MemimgError(f"project(schema={schema!r}): schemas are for PostgreSQL targets, not {self.dialect}")
        if self.dialect == "sqlite":
            if not self._owned:
                raise MemimgError(
                    f"project(): the target is an sqlalchemy.Engine on SQLite ({self.description}); give its URL "
                    f"instead (project(img, {str(target.url)!r})): the projection makes its own engine, whose "
                    "transactions include the CREATE and ALTER TABLE of a rebuild (the SQLite driver commits "
                    "those by itself on other engines, which would leave half-made tables behind a failure)"
                )
            _explicit_transactions(self.engine)
        self.prefix = prefix
        self.schema = schema
        self.metadata = sa.MetaData(schema=schema)
        self.meta = sa.Table(
            f"{prefix}memimg_projection",
            self.metadata,
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        self.tables: dict[str, ClassTable] = {}
        try:
            with self.engine.connect() as conn:
                if schema is not None:
                    conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
                    conn.commit()
        except sa.exc.SQLAlchemyError as err:
            self.close()
            raise MemimgError(
                f"project(): cannot connect to the target {self.description}: {_first_line(err)}; check the URL, "
                "that the server runs and that the user may create tables there"
            ) from err

    def close(self) -> None:
        if self._owned:
            self.engine.dispose()

    # -- the meta table ---------------------------------------------------------------

    def read_meta(self, conn: sa.Connection) -> dict[str, str] | None:
        """The meta table's entries, ``None`` if there is none."""
        if not sa.inspect(conn).has_table(self.meta.name, schema=self.schema):
            return None
        return {k: v for k, v in conn.execute(sa.select(self.meta.c.key, self.meta.c.value))}

    def write_meta(self, conn: sa.Connection, entries: dict[str, str]) -> None:
        self.meta.create(conn, checkfirst=True)
        conn.execute(self.meta.delete())
        conn.execute(self.meta.insert(), [{"key": k, "value": v} for k, v in entries.items()])

    def tables_entry(self) -> str:
        return orjson.dumps({n: {"table": t.name, "kinds": t.kinds} for n, t in sorted(self.tables.items())}).decode()

    def advance(self, conn: sa.Connection, old: int, new: int) -> None:
        """Store seq *new* in place of *old*, in *conn*'s transaction.

        Raises:
            MemimgError: the stored seq is not *old*: another projection writes to the same tables.
        """
        done = conn.execute(
            self.meta.update().where(self.meta.c.key == "seq", self.meta.c.value == str(old)).values(value=str(new))
        )
        if done.rowcount != 1:
            raise MemimgError(
                f"project(): the seq stored in {self.description} ({self.meta.name}) is no longer {old}: another "
                "projection writes to the same tables; run one projection per target (or give each its own "
                "prefix)",
                seq=old,
            )

    # -- tables -----------------------------------------------------------------------

    def name_for(self, class_name: str, taken: Iterable[str]) -> str:
        """A table name for class *class_name*: its short name in snake case, unless another class has it."""
        short = _snake(class_name.rsplit(".", 1)[-1])
        name = self.prefix + short
        if name in set(taken) or name == self.meta.name:
            name = self.prefix + _snake(class_name)
        if len(name) > _MAX_NAME:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name[: _MAX_NAME - 9]}_{digest}"
        return name

    def define(self, class_name: str, name: str, kinds: dict[str, str]) -> ClassTable:
        old = self.tables.pop(class_name, None)
        if old is not None:
            self.metadata.remove(old.table)
        table = self.tables[class_name] = ClassTable(class_name, name, kinds, self.metadata, self.dialect)
        return table

    def forget(self, class_name: str) -> None:
        old = self.tables.pop(class_name, None)
        if old is not None:
            self.metadata.remove(old.table)

    def drop(self, conn: sa.Connection, name: str) -> None:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {self._qualified(name)}"))

    def exists(self, conn: sa.Connection, name: str) -> bool:
        return bool(sa.inspect(conn).has_table(name, schema=self.schema))

    def create(self, conn: sa.Connection, table: ClassTable) -> None:
        """Create *table*.

        Raises:
            MemimgError: a table of that name, not one the projection made, is in the target.
        """
        if self.exists(conn, table.name):
            raise MemimgError(
                f"project(): the target {self.description} has a table {table.name!r} the projection did not make "
                f"(it would hold the class {table.class_name}); give the projection a table prefix (prefix=..., "
                "--table-prefix) or another database",
                table=table.name,
            )
        table.table.create(conn)

    def alter(self, conn: sa.Connection, table: ClassTable, old_kinds: dict[str, str]) -> None:
        """Make *table*'s columns those of its kinds: add new fields, drop removed ones, retype changed ones."""
        quote = self.engine.dialect.identifier_preparer.quote
        qualified = self._qualified(table.name)
        old_columns = column_names(old_kinds)
        for f, kind in old_kinds.items():
            if table.kinds.get(f) != kind or table.columns.get(f) != old_columns[f]:
                conn.execute(sa.text(f"ALTER TABLE {qualified} DROP COLUMN {quote(old_columns[f])}"))
        for f, kind in table.kinds.items():
            if old_kinds.get(f) != kind or old_columns.get(f) != table.columns[f]:
                ddl = sa.schema.CreateColumn(table.table.c[table.columns[f]]).compile(dialect=self.engine.dialect)
                conn.execute(sa.text(f"ALTER TABLE {qualified} ADD COLUMN {ddl}"))

    def oids(self, conn: sa.Connection, table: ClassTable) -> set[int]:
        return set(conn.execute(sa.select(table.table.c.oid)).scalars())

    def upsert(self, conn: sa.Connection, table: ClassTable, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table.table)
        columns = list(table.columns.values())
        if columns:
            stmt = insert.on_conflict_do_update(index_elements=["oid"], set_={c: insert.excluded[c] for c in columns})
        else:
            stmt = insert.on_conflict_do_nothing(index_elements=["oid"])
        for at in range(0, len(rows), _CHUNK):
            conn.execute(stmt, list(rows[at : at + _CHUNK]))

    def delete(self, conn: sa.Connection, table: ClassTable, oids: Iterable[int]) -> None:
        listed = sorted(oids)
        for at in range(0, len(listed), _CHUNK):
            conn.execute(table.table.delete().where(table.table.c.oid.in_(listed[at : at + _CHUNK])))

    def clear(self, conn: sa.Connection, table: ClassTable) -> None:
        conn.execute(table.table.delete())

    def _qualified(self, name: str) -> str:
        quote = self.engine.dialect.identifier_preparer.quote
        return f"{quote(self.schema)}.{quote(name)}" if self.schema else quote(name)


def column_names(fields: Iterable[str]) -> dict[str, str]:
    """The column of each field: its name, unless that is ``oid``, longer than PostgreSQL's 63 bytes, or (case
    aside, as SQLite ignores it) another field's column: then the name with ``_`` added (``oid`` -> ``oid_``),
    or its first 54 bytes and a hash of the whole (``very_long..._1a2b3c4d``). Fields keeping their own name
    are served first, so a column's name depends only on the class's fields."""
    fields = list(fields)
    taken = {"oid"}
    columns: dict[str, str] = {}
    for f in fields:
        if f.casefold() not in taken and _fits(f):
            columns[f] = f
            taken.add(f.casefold())
    for f in fields:
        if f in columns:
            continue
        name = f if _fits(f + "_") else _shortened(f)
        while name.casefold() in taken:
            name = name + "_" if _fits(name + "_") else _shortened(name)
        columns[f] = name
        taken.add(name.casefold())
    return {f: columns[f] for f in fields}


def _fits(name: str) -> bool:
    return len(name.encode()) <= _MAX_NAME


def _shortened(name: str) -> str:
    head = name.encode()[: _MAX_NAME - 9].decode(errors="ignore")
    return f"{head}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _engine(target: Any) -> sa.Engine:
    if not isinstance(target, str):
        raise TypeError(
            f"project(): the target is a SQLAlchemy URL (such as 'sqlite:///projection.db' or "
            f"'postgresql+psycopg://user@host/db') or an sqlalchemy.Engine, not {type(target).__qualname__}"
        )
    url = target if "://" in target else f"sqlite:///{target}"
    try:
        backend = sa.make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        backend = ""
    if backend == "postgres":
        raise MemimgError(
            f"project(): {_describe(target)} is not a usable database URL: SQLAlchemy spells PostgreSQL "
            "postgresql+psycopg://user@host/db"
        )
    if backend and backend not in ("sqlite", "postgresql"):
        raise MemimgError(
            f"project(): the target {_describe(target)} is a {backend} database; the projection writes to SQLite "
            "(sqlite:///file.db) or PostgreSQL (postgresql+psycopg://...)"
        )
    try:
        return sa.create_engine(url, pool_pre_ping=True)  # a connection the server dropped is replaced at checkout
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError, ValueError) as err:
        raise MemimgError(
            f"project(): {_describe(target)} is not a usable database URL ({_first_line(err)}); give a SQLAlchemy "
            "URL such as sqlite:///projection.db or postgresql+psycopg://user@host/db"
        ) from err


def _explicit_transactions(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing by itself; "begin" below does

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _describe(target: Any) -> str:
    if isinstance(target, sa.Engine):
        return repr(target.url.render_as_string(hide_password=True))
    if isinstance(target, str) and "://" in target:
        try:
            return repr(sa.make_url(target).render_as_string(hide_password=True))
        except Exception:
            return repr(target.split("@")[-1])
    return repr(target)


def _snake(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "t"


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__
