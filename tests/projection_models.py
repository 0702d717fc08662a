"""Models of the SQL projection tests (importable by ``memimg project --import tests.projection_models``)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from decimal import Decimal
from typing import Any

import attrs
import sqlalchemy as sa

import memimg
from memimg import persistent


class Kind(enum.Enum):
    CHECKING = "c"
    SAVINGS = "s"


@attrs.frozen
class Address:
    street: str
    city: str


@persistent(name="projtest.Entry")
class Entry:
    amount: int
    note: str = ""


@persistent(name="projtest.Account")
class Account:
    owner: str
    balance: Decimal = Decimal("0")
    count: int = 0
    ratio: float = 0.0
    active: bool = True
    kind: Kind = Kind.CHECKING
    opened: dt.date | None = None
    seen: dt.datetime | None = None
    ident: uuid.UUID | None = None
    address: Address | None = None
    friend: Account | None = None
    tags: set[str] = attrs.field(factory=set)
    entries: list[Entry] = attrs.field(factory=list)
    extra: Any = None


@persistent(name="projtest.Premium")
class Premium(Account):
    level: int = 1


@persistent(name="projtest.Bank")
class Bank:
    accounts: dict[str, Account] = attrs.field(factory=dict)
    archive: list[Account] = attrs.field(factory=list)


SCALARS = ("owner", "balance", "count", "ratio", "active", "kind", "opened", "seen", "ident")


def expected_json(value: Any, open_: frozenset[int] = frozenset()) -> Any:
    """What the projection's JSON column holds for *value* (a tracked collection with its items, entities as
    references), written here independently of the projection's code."""
    if isinstance(value, memimg.TrackedList):
        return [expected_json(v) for v in list.__iter__(value)]
    if isinstance(value, memimg.TrackedSet):
        return sorted((expected_json(v) for v in set.__iter__(value)), key=repr)
    if isinstance(value, memimg.TrackedDict):
        return {k: expected_json(v) for k, v in dict.items(value)}
    if hasattr(type(value), "_mi_oid"):
        return {"$ref": value._mi_oid}
    if isinstance(value, Address):
        return {"$type": "tests.projection_models.Address", "street": value.street, "city": value.city}
    return value


def _pg_text(value: Any) -> Any:
    """*value* as PostgreSQL's text types hold it: no NUL (the projection writes U+FFFD in its place)."""
    if isinstance(value, str):
        return value.replace("\0", "\N{REPLACEMENT CHARACTER}")
    if isinstance(value, list):
        return [_pg_text(v) for v in value]
    if isinstance(value, dict):
        return {_pg_text(k): _pg_text(v) for k, v in value.items()}
    return value


def expected_row(obj: Any, dialect: str) -> dict[str, Any]:
    """The row the projection should hold for *obj*, as the target's driver reads it back."""
    row = _expected_row(obj, dialect)
    return {k: _pg_text(v) for k, v in row.items()} if dialect == "postgresql" else row


def _expected_row(obj: Any, dialect: str) -> dict[str, Any]:
    row: dict[str, Any] = {"oid": obj._mi_oid}
    for name in attrs.fields_dict(type(obj)):
        value = getattr(obj, name)
        if value is None:
            row[name] = None
        elif name == "balance":
            row[name] = str(value) if dialect == "sqlite" else value
        elif name == "kind":
            row[name] = value.name
        elif name == "seen":
            row[name] = value.isoformat() if dialect == "sqlite" else value
        elif name == "ident":
            row[name] = value.hex if dialect == "sqlite" else value
        elif name == "friend":
            row[name] = value._mi_oid
        elif name in ("tags", "entries", "address", "extra", "accounts", "archive"):
            row[name] = expected_json(value)
        elif name == "active" and dialect == "sqlite":
            row[name] = int(value)
        else:
            row[name] = value
    return row


def read_table(engine: sa.Engine, name: str, schema: str | None = None) -> dict[int, dict[str, Any]]:
    """The rows of table *name*, by oid, as the driver gives them (JSON text decoded)."""
    table = sa.Table(name, sa.MetaData(schema=schema), autoload_with=engine)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str) and value[:1] in "[{" and key not in ("owner", "note"):
                row[key] = json.loads(value)
    return {row["oid"]: row for row in rows}


def assert_tables_equal_image(img: memimg.MemoryImage, engine: sa.Engine, schema: str | None = None) -> None:
    """Every table holds exactly the image's objects of its class, each row equal to its object."""
    dialect = engine.dialect.name
    for cls, name in ((Account, "account"), (Premium, "premium"), (Entry, "entry"), (Bank, "bank")):
        objects = {o._mi_oid: o for o in img.all(cls) if type(o) is cls}
        if not objects and not sa.inspect(engine).has_table(name, schema=schema):
            continue
        rows = read_table(engine, name, schema)
        assert set(rows) == set(objects), f"{name}: rows {sorted(rows)} != objects {sorted(objects)}"
        for oid, obj in objects.items():
            assert rows[oid] == expected_row(obj, dialect), f"{name} #{oid}"


LONG = "a_field_name_long_enough_to_pass_the_63_bytes_postgresql_keeps_of_an_identifier"


@persistent(name="projtest.Clash")
class Clash:
    """Fields whose names cannot all be their columns' names."""

    oid: int = 1
    oid_: int = 2
    Name: str = "upper"
    name: str = "lower"
    a_field_name_long_enough_to_pass_the_63_bytes_postgresql_keeps_of_an_identifier_one: int = 3
    a_field_name_long_enough_to_pass_the_63_bytes_postgresql_keeps_of_an_identifier_two: int = 4
