"""Looking into an image: ``info``, ``log`` and ``show``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import click

from memimg._errors import MemimgError, value_repr
from memimg.cli._main import cli, open_image, open_store, past_image
from memimg.core import _types
from memimg.core._diff import type_name
from memimg.core._meta import META_KIND, read_events
from memimg.core._plain import plain
from memimg.core._protect import read_settings
from memimg.model import SHELL, _tracking
from memimg.model._base import PersistentBase
from memimg.model._collections import TrackedDict, TrackedList, TrackedSet
from memimg.stores._protected import ProtectedStore

__all__ = ["info", "log", "show", "size_text"]


# -- info ------------------------------------------------------------------------


def _class_name(cls: type) -> str:
    name = SHELL.names.get(cls)
    if name is not None:
        return name
    info = _types.info_of(cls)
    return info.name if info is not None else cls.__qualname__


@cli.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(target: str, as_json: bool) -> None:
    """Format version, log, snapshots, size, and objects by type."""
    img = open_image(target)
    store = img.store
    try:
        snaps = store.snapshots()
        by_class = Counter(map(type, img._engine.table.objects))
        by_class.pop(type(None), None)
        counts: Counter[str] = Counter()
        for cls, n in by_class.items():
            counts[_class_name(cls)] += n
        size = store.size() if hasattr(store, "size") else None
        data = {
            "target": store.description,
            "format_version": int(store.meta().get("format_version", 1)),
            "head_seq": img.seq,
            "first_seq": store.first_seq(),
            "events": img.seq - store.first_seq() + 1,
            "snapshots": [{"seq": s.seq, "bytes": s.size, "ts": _when(s.ts)} for s in snaps],
            "size_bytes": size,
            "objects": sum(counts.values()),
            "types": dict(sorted(counts.items())),
            "root": type_name(img.root),
            "protection": _protection(store, img.seq),
        }
    finally:
        img.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"image:      {data['target']}")
    click.echo(f"format:     {data['format_version']}")
    click.echo(f"log:        {data['events']} events stored (seq {data['first_seq']}..{data['head_seq']})")
    if snaps:
        newest = snaps[0]
        click.echo(f"snapshots:  {len(snaps)} (newest at seq {newest.seq}, {size_text(newest.size)})")
    else:
        click.echo("snapshots:  none")
    if size is not None:
        click.echo(f"size:       {size_text(size)}")
    protection: dict[str, Any] | None = data["protection"]  # type: ignore[assignment]
    if protection:
        parts = []
        if protection.get("cipher"):
            parts.append(f"encrypted ({protection['cipher']}, key {protection['key_id']})")
        if protection.get("integrity"):
            parts.append(f"integrity chain ({protection['integrity']}, key {protection['integrity_key_id']})")
        if protection.get("compression"):
            parts.append(f"compressed ({protection['compression']})")
        click.echo(f"protection: {', '.join(parts) or 'none'}")
        if protection.get("head_mac"):
            click.echo(
                f"head MAC:   {protection['head_mac']} (seq {data['head_seq']}: record both elsewhere; "
                "`memimg verify --expect-head SEQ --expect-mac MAC` checks nothing was cut off)"
            )
    click.echo(f"root:       {data['root']}")
    click.echo(f"objects:    {data['objects']}")
    width = max((len(t) for t in counts), default=0)
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        click.echo(f"  {name:<{width}}  {n}")


def _protection(store: Any, head: int) -> dict[str, Any] | None:
    """The log's protection settings (no key), with the MAC of its head event when the chain's key is known."""
    settings = read_settings(store.meta())
    if settings is None:
        return None
    out = {k: settings.get(k) for k in ("cipher", "key_id", "integrity", "integrity_key_id", "compression")}
    if isinstance(store, ProtectedStore) and store.protection.chained and head:
        mac = store._anchor(head, fresh=True)
        out["head_mac"] = mac.hex() if mac else None
    return out


def size_text(n: int) -> str:
    """*n* bytes for people (``20.0 KB``)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _when(ts: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ts)).isoformat()


# -- log -------------------------------------------------------------------------


@cli.command()
@click.argument("target")
@click.option("--since", type=int, default=0, help="Only events after this seq.")
@click.option("--object", "oid", type=int, default=None, help="Only events on this object id.")
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind (repeatable; 'list.*' works).")
@click.option("--limit", type=int, default=None, help="At most this many events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def log(target: str, since: int, oid: int | None, kinds: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """The events of the log, checksums verified, with each transaction's metadata.

    A transaction's metadata is its first event (kind tx.meta); when that
    event is not shown (--object, --kind, --since), the first event shown of
    the transaction ends with it. --json gives it as "meta" on every event.
    """
    store = open_store(target, readonly=True)
    shown = 0
    meta_shown = -1  # the tx whose metadata was shown last
    try:
        for event in read_events(store.read, since):
            if oid is not None and event.target != oid:
                continue
            if kinds and not any(event.kind == k or (k.endswith("*") and event.kind.startswith(k[:-1])) for k in kinds):
                continue
            if as_json:
                click.echo(json.dumps(event.as_dict()))
            else:
                data = json.dumps(event.data)
                extra = f"  +{len(event.objects)} new" if event.objects else ""
                if event.meta and meta_shown != event.tx:
                    meta_shown = event.tx
                    if event.kind != META_KIND:
                        extra += f"  meta {json.dumps(event.meta)}"
                click.echo(
                    f"{event.seq:>7}  tx {event.tx:<7} {event.ts:%Y-%m-%d %H:%M:%S}  {event.kind:<12} "
                    f"#{event.target:<6} {data[:80]}{extra}"
                )
            shown += 1
            if limit is not None and shown >= limit:
                break
    finally:
        store.close()


# -- show ------------------------------------------------------------------------


def _step(obj: Any, part: str) -> Any:
    if isinstance(obj, PersistentBase):
        info = _types.info_of(type(obj))
        if info is None or part not in info.fields:
            raise MemimgError(f"{type(obj).__qualname__} has no field {part!r}")
        return getattr(obj, part)
    if isinstance(obj, dict):
        if part in obj:
            return obj[part]
        for key in obj:
            if _str(key) == part:
                return obj[key]
        raise MemimgError(f"no key {part!r} in the dict")
    if isinstance(obj, list):
        try:
            return obj[int(part)]
        except (ValueError, IndexError):
            raise MemimgError(f"no index {part!r} in a list of {len(obj)}") from None
    raise MemimgError(f"cannot go into a {type(obj).__qualname__} with {part!r}")


def _str(value: Any) -> str:
    """``str(value)``, with an int too long for decimal in hex (see ``value_repr``)."""
    try:
        return str(value)
    except ValueError:
        return value_repr(value)


def _resolve_path(root: Any, path: str) -> Any:
    obj = root
    for part in filter(None, path.replace("[", ".").replace("]", "").split(".")):
        obj = _step(obj, part)
    return obj


def _label(obj: Any) -> str:
    oid = getattr(obj, "_mi_oid", None)
    name = type_name(obj)
    if isinstance(obj, (list, dict, set)):
        return f"{name} #{oid} ({len(obj)} items)"
    return f"{name.rsplit('.', 1)[-1]} #{oid}"


def _is_object(v: Any) -> bool:
    return isinstance(v, (PersistentBase, TrackedList, TrackedDict, TrackedSet))


def _show_text(obj: Any, depth: int) -> Iterator[str]:
    seen: set[int] = set()

    def walk(value: Any, indent: str, level: int, prefix: str) -> Iterator[str]:
        if not _is_object(value):
            yield f"{indent}{prefix}{value_repr(value)}"
            return
        if id(value) in seen:
            yield f"{indent}{prefix}{_label(value)} (shown above)"
            return
        seen.add(id(value))
        yield f"{indent}{prefix}{_label(value)}"
        if level >= depth:
            if _children(value):
                yield f"{indent}  ..."
            return
        for key, child in _children(value):
            yield from walk(child, indent + "  ", level + 1, f"{key}: ")

    yield from walk(obj, "", 0, "")


def _children(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, PersistentBase):
        info = _types.info_of(type(obj))
        out = []
        for f in info.fields if info else ():
            try:
                out.append((f, getattr(obj, f)))
            except AttributeError:
                pass
        return out
    if isinstance(obj, dict):
        return [(value_repr(k), v) for k, v in obj.items()]
    if isinstance(obj, list):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, set):
        return [("-", v) for v in sorted(obj, key=value_repr)]
    return []


def _show_json(obj: Any, depth: int) -> Any:
    seen: set[int] = set()

    def walk(value: Any, level: int) -> Any:
        if not _is_object(value):
            return plain(value)
        oid = getattr(value, "_mi_oid", None)
        if id(value) in seen or level > depth:
            return {"$ref": oid}
        seen.add(id(value))
        if isinstance(value, dict):
            return {"$type": "dict", "$id": oid, "items": [[plain(k), walk(v, level + 1)] for k, v in value.items()]}
        if isinstance(value, list):
            return {"$type": "list", "$id": oid, "items": [walk(v, level + 1) for v in value]}
        if isinstance(value, set):
            return {"$type": "set", "$id": oid, "items": [walk(v, level + 1) for v in sorted(value, key=value_repr)]}
        out: dict[str, Any] = {"$type": type_name(value), "$id": oid}
        for key, child in _children(value):
            out[key] = walk(child, level + 1)
        return out

    return walk(obj, 0)


@cli.command()
@click.argument("target")
@click.argument("path", required=False, default="")
@click.option("--depth", type=int, default=3, show_default=True, help="How deep to descend.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (objects seen before become {$ref: id}).")
@click.option("--at", metavar="SEQ|TIME", default=None, help="As of this seq, or ISO time with its offset.")
def show(target: str, path: str, depth: int, as_json: bool, at: str | None) -> None:
    """The graph from the root, or from PATH such as accounts.ada.balance (now, or as it was --at)."""
    try:
        with contextlib.closing(open_image(target)) if at is None else past_image(target, at) as img:
            obj = _resolve_path(img.root, path)
            if as_json:
                click.echo(json.dumps(_show_json(obj, depth), indent=2))
            else:
                for line in _show_text(obj, depth):
                    click.echo(line)
    finally:
        _tracking.disable_now()
