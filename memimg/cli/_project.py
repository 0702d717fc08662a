"""``memimg project TARGET SQL_URL [--follow]``: keep one SQL table per class of an image current in a database."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from memimg._errors import MemimgError
from memimg._projection import project as make_projection
from memimg._projection._projector import name_image
from memimg.cli._main import cli, open_image, open_store

__all__ = ["project"]


@cli.command()
@click.argument("target")
@click.argument("sql_url")
@click.option("--follow", is_flag=True, help="Keep the tables current until SIGINT or SIGTERM.")
@click.option(
    "--classes",
    default=None,
    metavar="NAMES",
    help="Only these classes (stored or short names, comma-separated), subclasses included; default: every class.",
)
@click.option("--table-prefix", default="", metavar="PREFIX", help="Put before every table's name (e.g. mi_).")
@click.option("--sql-schema", default=None, metavar="SCHEMA", help="PostgreSQL: the schema of the tables.")
def project(
    target: str, sql_url: str, follow: bool, classes: str | None, table_prefix: str, sql_schema: str | None
) -> None:
    """Project the image TARGET into the database SQL_URL: one table per class, kept current.

    SQL_URL is a SQLAlchemy URL (sqlite:///projection.db, postgresql+psycopg://user@host/db) or a SQLite file
    path. The tables resume from the seq they store. Without --follow, the command brings them up to date and
    exits; with it, it keeps them current until it gets SIGINT or SIGTERM. Pass --import myapp.models so
    columns get the types of the fields' annotations (without, stand-in classes know no types: JSON columns).
    """
    img = open_image(target)  # refuses, untouched, anything that is not an image
    try:
        _name_image(target)
        names = [n.strip() for n in classes.split(",") if n.strip()] if classes is not None else None
        if names is not None and not names:
            raise MemimgError("--classes names no class: give stored or short class names, comma-separated")
        stop = threading.Event()
        with make_projection(img, sql_url, classes=names, prefix=table_prefix, schema=sql_schema) as projection:
            seq = projection.catch_up()
            tables = projection.tables
            click.echo(
                f"projected {img.store.description} up to seq {seq} into {len(tables)} table"
                f"{'s' * (len(tables) != 1)}: {', '.join(sorted(tables.values())) or '(none)'}",
                err=follow,
            )
            if follow:
                previous = _on_signals(lambda *_: stop.set())
                try:
                    while not stop.wait(0.5):
                        if not projection.running:
                            break
                finally:
                    _restore(previous)
                click.echo(f"stopped at seq {projection.seq}", err=True)
    finally:
        img.close()


def _name_image(target: str) -> None:
    """Give the image an id (an entry of its meta table), so the tables know which image they hold."""
    try:
        store = open_store(target, readonly=False)
    except Exception:  # a store this user may only read: the projection names the image by its log
        return
    try:
        name_image(store)
    finally:
        store.close()


def _on_signals(handler: Any) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
