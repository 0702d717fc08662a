"""The small orders service of workload (h), as gunicorn serves it: ``benchmarks.webapp:create_app()``.

One app, written the way a new user writes it, in two variants chosen by
environment variables (gunicorn's workers inherit them):

* ``BENCH_WEB_KIND=memimg`` -- the domain is ``@persistent`` classes kept by
  :mod:`memimg.contrib.flask` (one transaction per request, retried on
  conflict); ``BENCH_WEB_TARGET`` is the SQLite file or the SQLAlchemy URL,
  and ``BENCH_WEB_SCHEMA`` the PostgreSQL schema of the log;
* ``BENCH_WEB_KIND=sqlite3`` or ``psycopg`` -- the same logic by hand on a
  table per entity (``customers``, ``orders``): one connection per worker
  process, one database transaction per request.

Endpoints (the same in every variant, byte for byte the same answers):

* ``POST /customers/<name>/orders`` with a JSON order ``{"sku", "qty",
  "price"}`` adds the order to the customer's list and bumps the customer's
  order counter; answers ``201 {"count": n}``;
* ``GET /customers/<name>`` answers the counter and the last three orders.

Durability matches across variants: memimg's default ``sync="normal"`` is
WAL with ``synchronous=NORMAL`` on SQLite and ``synchronous_commit = off`` on
PostgreSQL, and the plain variants set the same.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from flask import Flask, abort, request

from memimg import persistent

__all__ = ["Customer", "Order", "Shop", "create_app", "prepare"]

CREATE_SQLITE = (
    "CREATE TABLE IF NOT EXISTS customers (name TEXT PRIMARY KEY, order_count INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, sku TEXT NOT NULL,"
    " qty INTEGER NOT NULL, price INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer, id)",
)


@persistent(name="bench.web.Order")
class Order:
    sku: str
    qty: int
    price: int


@persistent(name="bench.web.Customer")
class Customer:
    name: str
    order_count: int = 0
    orders: list[Order] = attrs.field(factory=list)


@persistent(name="bench.web.Shop")
class Shop:
    customers: dict[str, Customer] = attrs.field(factory=dict)


def _order_json(sku: str, qty: int, price: int) -> dict[str, Any]:
    return {"sku": sku, "qty": qty, "price": price}


def _posted() -> tuple[str, int, int]:
    data = request.get_json()
    return str(data["sku"]), int(data["qty"]), int(data["price"])


# -- memimg ------------------------------------------------------------------------------


def _memimg_app(app: Flask, target: str, schema: str | None) -> None:
    from memimg.contrib.flask import MemImg, root

    app.config.update(MEMIMG_ROOT=Shop, MEMIMG_TARGET=target, MEMIMG_RETRIES=5)
    if schema:
        app.config["MEMIMG_OPTIONS"] = {"schema": schema}
    MemImg(app)

    @app.post("/customers/<name>/orders")
    def add_order(name: str) -> Any:
        customer = root.customers.get(name)
        if customer is None:
            abort(404)
        customer.orders.append(Order(*_posted()))
        customer.order_count += 1
        return {"count": customer.order_count}, 201

    @app.get("/customers/<name>")
    def show(name: str) -> Any:
        customer = root.customers.get(name)
        if customer is None:
            abort(404)
        last = [_order_json(o.sku, o.qty, o.price) for o in customer.orders[-3:]]
        return {"name": name, "count": customer.order_count, "last": last}


# -- plain sqlite3 -------------------------------------------------------------------------


def _sqlite_app(app: Flask, path: str) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")

    @app.post("/customers/<name>/orders")
    def add_order(name: str) -> Any:
        sku, qty, price = _posted()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT order_count FROM customers WHERE name = ?", (name,)).fetchone()
            if row is None:
                abort(404)
            conn.execute("INSERT INTO orders (customer, sku, qty, price) VALUES (?, ?, ?, ?)", (name, sku, qty, price))
            conn.execute("UPDATE customers SET order_count = ? WHERE name = ?", (row[0] + 1, name))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return {"count": row[0] + 1}, 201

    @app.get("/customers/<name>")
    def show(name: str) -> Any:
        row = conn.execute("SELECT order_count FROM customers WHERE name = ?", (name,)).fetchone()
        if row is None:
            abort(404)
        rows = conn.execute(
            "SELECT sku, qty, price FROM orders WHERE customer = ? ORDER BY id DESC LIMIT 3", (name,)
        ).fetchall()
        return {"name": name, "count": row[0], "last": [_order_json(*r) for r in reversed(rows)]}


# -- plain psycopg ---------------------------------------------------------------------------


def _psycopg_app(app: Flask, url: str, schema: str) -> None:
    import psycopg

    conn = psycopg.connect(libpq(url), options=f"-c search_path={schema} -c synchronous_commit=off")

    @app.post("/customers/<name>/orders")
    def add_order(name: str) -> Any:
        sku, qty, price = _posted()
        with conn.transaction():
            row = conn.execute("SELECT order_count FROM customers WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is None:
                abort(404)
            conn.execute(
                "INSERT INTO orders (customer, sku, qty, price) VALUES (%s, %s, %s, %s)", (name, sku, qty, price)
            )
            conn.execute("UPDATE customers SET order_count = %s WHERE name = %s", (row[0] + 1, name))
        return {"count": row[0] + 1}, 201

    @app.get("/customers/<name>")
    def show(name: str) -> Any:
        with conn.transaction():
            row = conn.execute("SELECT order_count FROM customers WHERE name = %s", (name,)).fetchone()
            if row is None:
                abort(404)
            rows = conn.execute(
                "SELECT sku, qty, price FROM orders WHERE customer = %s ORDER BY id DESC LIMIT 3", (name,)
            ).fetchall()
        return {"name": name, "count": row[0], "last": [_order_json(*r) for r in reversed(rows)]}


def libpq(url: str) -> str:
    """A libpq conninfo from a SQLAlchemy URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


# -- the factory and the data ------------------------------------------------------------------


def create_app() -> Flask:
    """The app of the variant ``BENCH_WEB_KIND`` names (see the module docstring)."""
    kind = os.environ["BENCH_WEB_KIND"]
    target = os.environ["BENCH_WEB_TARGET"]
    schema = os.environ.get("BENCH_WEB_SCHEMA") or None
    app = Flask(__name__)
    if kind == "memimg":
        _memimg_app(app, target, schema)
    elif kind == "sqlite3":
        _sqlite_app(app, target)
    elif kind == "psycopg":
        assert schema is not None
        _psycopg_app(app, target, schema)
    else:
        raise SystemExit(f"unknown BENCH_WEB_KIND {kind!r}")

    booted = os.environ.get("BENCH_WEB_BOOTED")
    if booted:  # this worker is about to serve: tell the benchmark
        open(os.path.join(booted, str(os.getpid())), "w").close()
    return app


def prepare(kind: str, target: str, schema: str | None, names: list[str]) -> None:
    """Create the customers *names* (no orders) in a new store of *kind* at *target*."""
    if kind == "memimg":
        import memimg

        options = {"schema": schema} if schema else {}
        with memimg.open(target, root=Shop, **options) as img:
            img.root.customers.update({name: Customer(name) for name in names})
    elif kind == "sqlite3":
        import sqlite3

        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        for ddl in CREATE_SQLITE:
            conn.execute(ddl)
        conn.executemany("INSERT INTO customers (name, order_count) VALUES (?, 0)", [(n,) for n in names])
        conn.close()
    elif kind == "psycopg":
        import psycopg

        with psycopg.connect(libpq(target), autocommit=True) as pg:
            pg.execute(f'CREATE SCHEMA "{schema}"')
            pg.execute(f'CREATE TABLE "{schema}".customers (name TEXT PRIMARY KEY, order_count INTEGER NOT NULL)')
            pg.execute(
                f'CREATE TABLE "{schema}".orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, '
                "sku TEXT NOT NULL, qty INTEGER NOT NULL, price INTEGER NOT NULL)"
            )
            pg.execute(f'CREATE INDEX ON "{schema}".orders (customer, id)')
            with pg.cursor() as cur:
                cur.executemany(
                    f'INSERT INTO "{schema}".customers (name, order_count) VALUES (%s, 0)', [(n,) for n in names]
                )
    else:
        raise ValueError(f"unknown kind {kind!r}")
