"""``memimg history TARGET OID[.FIELD]``: the changes of one object, oldest first."""

from __future__ import annotations

import json
from typing import Any

import click

from memimg._errors import MemimgError, value_repr
from memimg.cli._main import cli, oid_and_field, open_image
from memimg.core._diff import type_name
from memimg.core._history import Change, Collected
from memimg.core._markers import MISSING
from memimg.core._plain import plain
from memimg.model import _tracking

__all__ = ["history"]


def _parse(what: str) -> tuple[int, str | None]:
    """``OID[.FIELD]`` as ``(oid, field or None)``; the oid may be out of range (:func:`_object` says so)."""
    parsed = oid_and_field(what)
    if parsed is None:
        raise MemimgError(
            f"{what!r} is not OID[.FIELD]: give an object id (memimg log and memimg show --json show them), "
            "optionally followed by a field name, e.g. 12 or 12.balance"
        )
    return parsed


def _object(img: Any, oid: int) -> Any:
    """The object of id *oid* in *img*.

    Raises:
        MemimgError: *oid* is outside the ids of the image (named, with that range), or no object holds it now.
    """
    objects = img._engine.table.objects
    where = img.store.description
    if not 0 < oid < len(objects):
        raise MemimgError(
            f"object id {oid} is out of range: the object ids of the image {where} run from 1 to "
            f"{len(objects) - 1} (memimg log and memimg show --json show them)"
        )
    obj = objects[oid]
    if obj is None:
        raise MemimgError(
            f"object {oid} is not in the image {where} (never made, or collected since it "
            f"became unreachable; memimg log {where} --object {oid} shows its stored events)"
        )
    return obj


def _text(v: Any) -> str:
    if v is MISSING:
        return "(none)"
    if isinstance(v, Collected):
        return f"#{v.oid} (collected)"
    oid = getattr(v, "_mi_oid", None)
    if oid is not None and hasattr(type(v), "_mi_oid"):
        return f"{type_name(v).rsplit('.', 1)[-1]} #{oid}"
    if type(v) is tuple:
        return "(" + ", ".join(map(_text, v)) + ")"
    return value_repr(v)


def _as_dict(c: Change) -> dict[str, Any]:
    out: dict[str, Any] = {"seq": c.seq, "tx": c.tx, "time": c.time.isoformat(), "kind": c.kind}
    out["target"] = c.target._mi_oid
    for name in ("field", "key", "index"):
        value = getattr(c, name)
        if value is not None or (name == "key" and c.kind.startswith("dict.")):  # None is a dict key like any
            out[name] = plain(value)
    for name in ("old", "new"):  # left out: there was, or is, no value
        value = getattr(c, name)
        if value is not MISSING:
            out[name] = plain(value)
    if c.meta:
        out["meta"] = c.meta
    return out


def _line(c: Change) -> str:
    where = c.field or ""
    if c.key is not None or c.kind.startswith("dict."):
        where = f"[{_text(c.key)}]"
    elif c.index is not None:
        where = f"@{c.index}"
    meta = f"  {json.dumps(c.meta)}" if c.meta else ""
    return (
        f"{c.seq:>7}  tx {c.tx:<7} {c.time:%Y-%m-%d %H:%M:%S}  {c.kind:<12} {where:<12} "
        f"{_text(c.old)} -> {_text(c.new)}{meta}"
    )


@cli.command()
@click.argument("target")
@click.argument("what", metavar="OID[.FIELD]")
@click.option("--since", type=int, default=0, help="Only changes after this seq.")
@click.option("--until", type=int, default=None, help="Only changes up to this seq.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def history(target: str, what: str, since: int, until: int | None, as_json: bool) -> None:
    """The changes of object OID (or of its field FIELD), oldest first, each with the value before it."""
    oid, field = _parse(what)
    img = open_image(target)
    try:
        changes = img.history(_object(img, oid), field, since=since, until=until)
        for c in changes:
            click.echo(json.dumps(_as_dict(c)) if as_json else _line(c))
    finally:
        img.close()
        _tracking.disable_now()
