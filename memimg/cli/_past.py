"""Looking into the past: ``diff`` (``show --at`` is ``show``'s)."""

from __future__ import annotations

import json
from typing import Any

import click

from memimg.cli._main import PAST_OPTIONS, cli, past_store, point, progress_callback
from memimg.core._diff import show_value, type_name
from memimg.core._markers import MISSING
from memimg.core._plain import plain
from memimg.image._image import diff_past
from memimg.image._past import commit_time
from memimg.model import _tracking

__all__ = ["diff"]


def _json_value(value: Any) -> Any:
    if type(value) is list:
        return [_json_value(v) for v in value]
    if hasattr(value, "_mi_img") or getattr(value, "_mi_oid", None) is not None:
        oid = value._mi_oid
        if oid is None:  # filled in by the read-only past image: no id, its content
            return {"$type": type_name(value), "$content": show_value(value)}
        return {"$type": type_name(value), "$id": oid}
    return plain(value)


def _iso(when: Any) -> str | None:
    return None if when is None else str(when.isoformat())


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
            result = diff_past(store, seq_a, seq_b, progress=progress_callback(), **PAST_OPTIONS)
        finally:
            _tracking.disable_now()
        description = store.description
        times = {f"{k}_time": _iso(commit_time(store, seq)) for k, seq in (("a", seq_a), ("b", seq_b))}
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
    click.echo(json.dumps({"target": description, "a": seq_a, "b": seq_b, **times, "differences": out}, indent=2))
