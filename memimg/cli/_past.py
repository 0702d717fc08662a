"""Looking into the past: ``diff`` (``show --at`` is ``show``'s)."""

from __future__ import annotations

import json
from typing import Any

import click

from memimg.cli._inspect import plain, type_name
from memimg.cli._main import cli, open_at, past_store, point
from memimg.core._diff import compare
from memimg.core._markers import MISSING
from memimg.model import _tracking

__all__ = ["diff"]


def _json_value(value: Any) -> Any:
    if type(value) is list:
        return [_json_value(v) for v in value]
    oid = getattr(value, "_mi_oid", None)
    if oid is not None or hasattr(value, "_mi_img"):
        return {"$type": type_name(value), "$id": oid}
    return plain(value)


@cli.command()
@click.argument("target")
@click.argument("a")
@click.argument("b", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (entities and collections as {$type, $id}).")
def diff(target: str, a: str, b: str | None, as_json: bool) -> None:
    """What changed from A to B (seqs, or ISO times with their offset; B defaults to the newest).

    One line per change, PATH: OLD → NEW, PATH being the shortest path from
    the root to the object changed; MISSING where there was or is no value.
    """
    with past_store(target) as store:
        seq_a = point(store, a)
        seq_b = store.head() if b is None else point(store, b)
        try:
            with open_at(store, seq_a) as old, open_at(store, seq_b) as new:
                result = compare(old._engine.table, new._engine.table, seq_a, seq_b)
        finally:
            _tracking.disable_now()
        description = store.description
    if not as_json:
        click.echo(str(result))
        return
    out = []
    for d in result:
        item: dict[str, Any] = {"path": d.path}
        if d.old is not MISSING:
            item["old"] = _json_value(d.old)
        if d.new is not MISSING:
            item["new"] = _json_value(d.new)
        out.append(item)
    click.echo(json.dumps({"target": description, "a": seq_a, "b": seq_b, "differences": out}, indent=2))
