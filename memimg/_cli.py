"""The ``memimg`` command line (also ``python -m memimg``).

Every command takes a TARGET -- an SQLite file path or a database URL -- and
works without the application's code: types no loaded class claims are read
into generic stand-ins made from the schema the log declares. Pass
``--import myapp.models`` (or set ``MEMIMG_IMPORT``) to use the real classes.

Errors print one line and exit with status 1 (``--debug`` shows the
traceback); long operations show a progress bar on a terminal and stay quiet
in pipes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import click
import orjson

import memimg
from memimg import _api
from memimg._errors import CorruptLogError, MemimgError, value_repr
from memimg.core import _codec, _types
from memimg.core._graph import COLLECTION_NAMES, Graph, split_snapshot
from memimg.core._rows import Event, verify_event, verify_snapshot
from memimg.image import _generic
from memimg.image._image import snapshot_past_head
from memimg.model import _tracking
from memimg.model._base import PersistentBase
from memimg.model._collections import TrackedDict, TrackedList, TrackedSet
from memimg.stores._protocol import EventRow, SnapshotRow, Store

__all__ = ["cli"]


class _Group(click.Group):
    """Errors print one clear line and exit non-zero, unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (MemimgError, OSError, KeyError, ValueError) as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            click.echo(f"memimg: error: {message}", err=True)
            sys.exit(1)


def _import_modules(modules: Iterable[str]) -> None:
    """Import what --import and MEMIMG_IMPORT name: the only code the command line runs besides memimg's.

    Reading a log never imports a module it names (a crafted log could name
    any); only with names given here is the working directory put on
    ``sys.path``, so an application's own modules import as with ``python -m``.
    """
    names = [n.strip() for n in [*modules, *os.environ.get("MEMIMG_IMPORT", "").split(",")] if n.strip()]
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _api.import_modules(names, "--import/MEMIMG_IMPORT")


def _store(target: str, *, readonly: bool) -> Store:
    if "://" not in target and target != ":memory:" and not os.path.exists(target):
        raise MemimgError(f"{target!r} does not exist")
    return _api.store_for(target, readonly=readonly, **_url_options(target))


def _url_options(target: str) -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    if "://" not in target or ctx is None or not ctx.obj:
        return {}
    return {k: ctx.obj[k] for k in ("schema", "prefix") if ctx.obj.get(k)}


def _open(target: str, *, writable: bool = False) -> memimg.MemoryImage:
    store = _store(target, readonly=True)  # refuses, untouched, anything that is not an image
    if store.head() == 0 and not store.snapshots():
        store.close()
        raise MemimgError(f"{target!r} holds no memimg image (its log is empty)")
    if writable:
        store.close()
        store = _store(target, readonly=False)
    try:
        img = memimg.open(
            store,
            readonly=not writable,
            generic_types=True,
            on_schema_drift="drop",
            snapshot_every=None,
            progress=_progress_callback(),
        )
    except BaseException:
        store.close()
        raise
    differences = img.schema_report.differences
    if writable and differences:
        img.close()
        lines = "\n".join(f"  - {d}" for d in differences)
        raise MemimgError(
            f"refusing to write to {target!r}: the stored schema differs from the classes loaded, and a "
            f"snapshot would write that loss into the image; nothing was changed:\n{lines}"
        )
    return img


def _tty() -> bool:
    return sys.stderr.isatty()


def _progress_callback() -> Any:
    if not _tty():
        return None
    state: dict[str, Any] = {}

    def report(phase: str, done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label=phase, file=sys.stderr)
            bar.__enter__()
            state["bar"] = bar
        bar.update(done - state.get("done", 0))
        state["done"] = done
        if done >= total:
            bar.__exit__(None, None, None)
            state.clear()

    return report


def _with_progress(items: Iterable[Any], total: int, label: str) -> Iterator[Any]:
    if not _tty() or total < 1000:
        yield from items
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        for i, item in enumerate(items, 1):
            yield item
            if not i % 500:
                bar.update(500)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--import",
    "-i",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first, so its classes are used (repeatable; also MEMIMG_IMPORT=a,b).",
)
@click.option("--schema", default=None, help="For a database URL: the schema holding memimg's tables.")
@click.option("--prefix", default=None, help="For a database URL: the tables' prefix (default memimg_).")
@click.version_option(memimg.__version__, prog_name="memimg")
@click.pass_context
def cli(ctx: click.Context, debug: bool, imports: tuple[str, ...], schema: str | None, prefix: str | None) -> None:
    """Look into and operate memimg images. TARGET is an SQLite file or a database URL."""
    ctx.obj = {"debug": debug, "schema": schema, "prefix": prefix}
    _import_modules(imports)


# -- info ------------------------------------------------------------------------


def _type_name(obj: Any) -> str:
    name = COLLECTION_NAMES.get(type(obj))
    if name is not None:
        return name
    info = _types.info_of(type(obj))
    return info.name if info is not None else type(obj).__qualname__


@cli.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(target: str, as_json: bool) -> None:
    """Format version, log, snapshots, size, and objects by type."""
    img = _open(target)
    store = img.store
    try:
        snaps = store.snapshots()
        counts = Counter(_type_name(o) for o in img._graph.objects if o is not None)
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
            "root": _type_name(img.root),
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
        click.echo(f"snapshots:  {len(snaps)} (newest at seq {newest.seq}, {_size(newest.size)})")
    else:
        click.echo("snapshots:  none")
    if size is not None:
        click.echo(f"size:       {_size(size)}")
    click.echo(f"root:       {data['root']}")
    click.echo(f"objects:    {data['objects']}")
    width = max((len(t) for t in counts), default=0)
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        click.echo(f"  {name:<{width}}  {n}")


def _size(n: int) -> str:
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
    """The events of the log, checksums verified."""
    store = _store(target, readonly=True)
    shown = 0
    try:
        for raw in store.read(after=since):
            row = EventRow(*raw)
            verify_event(row)
            if oid is not None and row.target != oid:
                continue
            if kinds and not any(row.kind == k or (k.endswith("*") and row.kind.startswith(k[:-1])) for k in kinds):
                continue
            event = Event.from_row(row)
            if as_json:
                click.echo(json.dumps(event.as_dict()))
            else:
                data = json.dumps(event.data)
                extra = f"  +{len(event.objects)} new" if event.objects else ""
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
    name = _type_name(obj)
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


def _plain(value: Any) -> Any:
    if type(value) is int:
        try:
            str(value)  # as json.dumps will write it
        except ValueError:
            return hex(value)  # past 4,300 digits: JSON numbers are decimal, so a string
        return value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, (decimal.Decimal, dt.date, dt.time, dt.timedelta)):
        return str(value)
    if isinstance(value, (tuple, frozenset)):
        return [_plain(v) for v in value]
    return value_repr(value)


def _show_json(obj: Any, depth: int) -> Any:
    seen: set[int] = set()

    def walk(value: Any, level: int) -> Any:
        if not _is_object(value):
            return _plain(value)
        oid = getattr(value, "_mi_oid", None)
        if id(value) in seen or level > depth:
            return {"$ref": oid}
        seen.add(id(value))
        if isinstance(value, dict):
            return {"$type": "dict", "$id": oid, "items": [[_plain(k), walk(v, level + 1)] for k, v in value.items()]}
        if isinstance(value, list):
            return {"$type": "list", "$id": oid, "items": [walk(v, level + 1) for v in value]}
        if isinstance(value, set):
            return {"$type": "set", "$id": oid, "items": [walk(v, level + 1) for v in sorted(value, key=value_repr)]}
        out: dict[str, Any] = {"$type": _type_name(value), "$id": oid}
        for key, child in _children(value):
            out[key] = walk(child, level + 1)
        return out

    return walk(obj, 0)


@cli.command()
@click.argument("target")
@click.argument("path", required=False, default="")
@click.option("--depth", type=int, default=3, show_default=True, help="How deep to descend.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (objects seen before become {$ref: id}).")
def show(target: str, path: str, depth: int, as_json: bool) -> None:
    """The graph from the root, or from PATH such as accounts.ada.balance."""
    img = _open(target)
    try:
        obj = _resolve_path(img.root, path)
        if as_json:
            click.echo(json.dumps(_show_json(obj, depth), indent=2))
        else:
            for line in _show_text(obj, depth):
                click.echo(line)
    finally:
        img.close()
        _tracking.disable_now()


# -- snapshot, compact ------------------------------------------------------------


@cli.command()
@click.argument("target")
def snapshot(target: str) -> None:
    """Write a snapshot now."""
    img = _open(target, writable=True)
    try:
        seq = img.snapshot()
    finally:
        img.close()
    click.echo(f"snapshot written at seq {seq}")


@cli.command()
@click.argument("target")
@click.option("--archive", type=click.Path(dir_okay=False, writable=True), help="First write the dropped events here.")
def compact(target: str, archive: str | None) -> None:
    """Snapshot, then drop the events and snapshots the new snapshot makes unnecessary."""
    img = _open(target, writable=True)
    try:
        seq = img.snapshot()
        store = img.store
        if archive:
            rows = list(store.read(after=0))
            with open(archive, "wb") as f:
                for raw in _with_progress(rows, len(rows), "archive"):
                    row = EventRow(*raw)
                    if row.seq >= seq:
                        break
                    f.write(orjson.dumps({**row._asdict(), "payload": row.payload.decode()}) + b"\n")
        dropped = store.delete_events_before(seq)
        old_snaps = store.delete_snapshots_before(seq)
    finally:
        img.close()
    click.echo(f"snapshot at seq {seq}; dropped {dropped} events and {old_snaps} older snapshots")


# -- verify ----------------------------------------------------------------------


#: How :func:`_canonical` hides what two graphs need not agree on: stored type names whose states
#: are not compared, and names not compared at all (nor their states).
_Masks = tuple[frozenset[str], frozenset[str]]
_NO_MASKS: _Masks = (frozenset(), frozenset())


def _canonical_value(v: Any, masks: _Masks, hits: Counter[str]) -> Any:
    """An encoded value in one form: its frozensets' items in one order (they are written in hash
    order), its big ints as this memimg writes them (an older one may have written decimal where
    this one writes hex)."""
    if type(v) is not list or not v:
        return v
    tag = v[0]
    try:
        if tag == "i":
            return ["i", _codec.int_text(_codec.int_from_text(v[1]))]
        if tag == "Q":
            return _codec._enc_fraction(_codec._dec_fraction(v))
    except (ValueError, TypeError, ZeroDivisionError):
        return v  # not a number: it differs from the replay's, which reports it
    if tag == "F":
        return ["F", sorted((_canonical_value(i, masks, hits) for i in v[1]), key=orjson.dumps)]
    if tag == "T":
        return ["T", [_canonical_value(i, masks, hits) for i in v[1]]]
    if tag == "v":
        name = v[1]
        if name in masks[1]:
            hits[name] += 1
            return ["v", "?", None]
        if name in masks[0]:
            hits[name] += 1
            return ["v", name, None]
        return ["v", name, {k: _canonical_value(i, masks, hits) for k, i in v[2].items()}]
    return v


def _canonical(data: dict[str, Any], masks: _Masks = _NO_MASKS, hits: Counter[str] | None = None) -> bytes:
    """A snapshot's content in a form that does not depend on the writer's hash seed.

    States of types in ``masks[0]`` are left out, and so are the names of
    types in ``masks[1]`` (counted in *hits*).
    """
    hits = Counter() if hits is None else hits
    records = []
    for oid, name, state in data["objects"]:
        if name in masks[1] or name in masks[0]:
            hits[name] += 1
            records.append([oid, "?" if name in masks[1] else name, None])
            continue
        if type(state) is dict:
            state = {k: _canonical_value(i, masks, hits) for k, i in state.items()}
        elif name == "dict":  # non-str keys: [key, value] pairs
            state = [[_canonical_value(k, masks, hits), _canonical_value(i, masks, hits)] for k, i in state]
        else:
            state = [_canonical_value(i, masks, hits) for i in state]
            if name == "set":
                state.sort(key=orjson.dumps)
        records.append([oid, name, state])
    records.sort(key=lambda r: r[0])
    return orjson.dumps({"root": data["root"], "objects": records}, option=orjson.OPT_SORT_KEYS)


@cli.command()
@click.argument("target")
def verify(target: str) -> None:
    """Check every checksum, replay the whole log, and compare each snapshot with the replay."""
    store = _store(target, readonly=True)
    try:
        _verify(store)
    finally:
        store.close()


def _reader() -> Graph:
    """A graph that reads any log: the classes loaded, and stand-ins for the types they do not claim."""
    graph = Graph(memimg.converter)
    graph.generic = graph.codec.generic = True
    return graph


def _stored_snapshot(store: Store, seq: int) -> Graph:
    """The snapshot stored at *seq*, read as the replay reads the log (same classes, upgraders, stand-ins)."""
    graph = _reader()
    try:
        header, records = split_snapshot(store.read_snapshot(seq).payload, seq)
        graph.load_snapshot({**header, "objects": records})
    except CorruptLogError as err:
        if err.seq is not None:
            raise
        raise CorruptLogError(
            f"snapshot at seq {seq} cannot be loaded: {err}", seq=seq, table="memimg_snapshots"
        ) from err
    return graph


def _declarations(plans: Iterable[Any]) -> dict[str, set[tuple[int, tuple[str, ...]]]]:
    """``type name -> {(version, fields)}`` of the declarations *plans* were made for."""
    out: dict[str, set[tuple[int, tuple[str, ...]]]] = {}
    for plan in plans:
        name = plan.info.name if plan.info is not None else plan.stored_name
        out.setdefault(name, set()).add((plan.version, plan.stored_fields))
    return out


def _described(declarations: set[tuple[int, tuple[str, ...]]]) -> str:
    return " and ".join(f"version {v} ({', '.join(fields)})" for v, fields in sorted(declarations))


def _unreadable(replayed: Graph, stored: Graph) -> tuple[_Masks, dict[str, str]]:
    """What the replayed graph and a stored snapshot need not agree on, by type name, with why.

    Both are read through the same classes, upgraders and stand-ins, so the
    states of a type agree -- unless it has no class here and was stored
    under more than one declaration (a stand-in cannot upgrade, rename or fill
    in a field), or its class does not declare how to read some of its
    states (an upgrader deleted after a migration). Their states are masked;
    a type without a class that only one side declares (a renamed class)
    has its name masked too.
    """
    plans = replayed.plans_read() + stored.plans_read()
    logged, snapshot = _declarations(replayed.plans_read()), _declarations(stored.plans_read())
    states: set[str] = set()
    names: set[str] = set()
    why: dict[str, str] = {}
    for name in logged.keys() | snapshot.keys():
        try:
            info = _types.resolve(name)
        except MemimgError:
            info = None
        if info is not None and not info.stand_in:
            if any(p.undeclared and p.info is info for p in plans):
                states.add(name)
                lines = [d for d in replayed.report.differences + stored.report.differences if name in d]
                why[name] = (
                    f"the class loaded cannot read all of them ({'; '.join(dict.fromkeys(lines))}); load the "
                    "classes with the upgraders and declarations the migration used to compare them"
                )
        elif name not in logged or name not in snapshot:
            names.add(name)
            why[name] = (
                f"only the {'log' if name in logged else 'snapshot'} declares this type (a renamed class?); "
                "load the classes (--import) to compare them"
            )
        elif len(logged[name] | snapshot[name]) > 1:
            states.add(name)
            why[name] = (
                f"the log wrote them as {_described(logged[name])} and the snapshot stores "
                f"{_described(snapshot[name])}, which stand-ins cannot read in one schema; load the classes "
                "(--import) to compare them"
            )
    return (frozenset(states), frozenset(names)), why


def _compare(replayed: Graph, stored: Graph, seq: int) -> list[str] | None:
    """Compare a stored snapshot with the replayed state at its seq.

    Returns ``None`` if they are equal, else what could not be compared
    (one line per type); what could be compared is equal.

    Raises:
        CorruptLogError: they differ in what could be compared.
    """
    mine, theirs = replayed.snapshot_data(seq), stored.snapshot_data(seq)
    if _canonical(mine) == _canonical(theirs):
        return None
    masks, why = _unreadable(replayed, stored)
    in_log: Counter[str] = Counter()
    in_snapshot: Counter[str] = Counter()
    if (masks[0] or masks[1]) and _canonical(mine, masks, in_log) == _canonical(theirs, masks, in_snapshot):
        lines = []
        for name in sorted(in_log | in_snapshot):
            value = _types.resolve(name).kind == _types.VALUE
            if name in masks[1]:
                what = "value(s) not compared" if value else "object(s) compared by id only"
            else:
                what = "value(s) compared by type only" if value else "state(s) compared by object id and type only"
            n = max(in_log[name], in_snapshot[name])
            lines.append(f"snapshot at seq {seq}: {n} {name} {what}: {why[name]}")
        return lines
    raise CorruptLogError(
        f"snapshot at seq {seq} differs from the state the log gives at that seq",
        seq=seq,
        table="memimg_snapshots",
    )


def _verify(store: Store) -> None:
    """Check every checksum, replay the log, and compare each stored snapshot with the replay at its seq.

    Each snapshot is loaded into a graph configured like the replay's (same
    classes, upgraders, stand-ins), so both are compared in one schema even
    across a migration. What stand-ins (or classes lacking an upgrader)
    cannot bring into one schema is compared by id and type only, reported,
    and the replay goes on from that snapshot (see :func:`_unreadable`).
    """
    snaps = sorted(store.snapshots())
    head = store.head()
    for info in snaps:
        if info.seq > head:
            raise snapshot_past_head(store.description, info.seq, head)
        snap = SnapshotRow(*store.read_snapshot(info.seq))
        verify_snapshot(snap)
        split_snapshot(snap.payload, info.seq)  # laid out as its header says, with its own seq and root
    _generic.prepare(store, frozenset())  # stand-ins with every field any declaration lists
    first = store.first_seq()
    graph = _reader()
    expected = 1
    if first > 1:
        start = [s for s in snaps if s.seq + 1 >= first]
        if not start:
            raise CorruptLogError(
                f"events before seq {first} were dropped and no snapshot covers them", seq=1, table=""
            )
        graph = _stored_snapshot(store, start[0].seq)
        expected = start[0].seq + 1
    origin = "from nothing" if expected == 1 else f"from the snapshot at seq {expected - 1}"
    pending = {s.seq: s for s in snaps if s.seq >= expected}
    checked = replayed = 0
    unchecked: list[str] = []
    resumed: list[int] = []
    for raw in _with_progress(store.read(after=expected - 1), head - expected + 1, "verify"):
        row = EventRow(*raw)
        if row.seq != expected:
            raise CorruptLogError(f"event seq {expected} is missing (the next is {row.seq})", seq=expected, table="")
        verify_event(row)
        graph.apply_row(row)
        if row.seq in pending:
            stored = _stored_snapshot(store, row.seq)
            left = _compare(graph, stored, row.seq)
            if left is None:
                checked += 1
            else:
                # go on from the snapshot: the events after it were written over its states
                unchecked += left
                resumed.append(row.seq)
                graph = stored
        expected += 1
        replayed += 1
    click.echo(
        f"ok: {len(snaps)} snapshot checksum(s) and {replayed} event(s) verified; replayed {origin} to seq "
        f"{expected - 1}; {checked} snapshot(s) equal the replayed state at their seq"
        + (
            f"; {len(resumed)} equal in what could be compared (below), the replay going on from them"
            if resumed
            else ""
        )
    )
    for line in unchecked:
        click.echo(f"  {line}")


# -- export / import --------------------------------------------------------------


@cli.command("export")
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
def export_(target: str, fmt: str, output: str | None) -> None:
    """Write the current state as JSON (the snapshot format)."""
    img = _open(target)
    try:
        data = _api.serialize(img.root)
    finally:
        img.close()
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    if output:
        with open(output, "wb") as f:
            f.write(text)
        click.echo(f"exported {len(data['objects'])} objects to {output}", err=True)
    else:
        click.echo(text.decode())


@cli.command("import")
@click.argument("target")
@click.argument("source", type=click.File("rb"))
def import_(target: str, source: Any) -> None:
    """Create a new image at TARGET from a JSON export."""
    data = orjson.loads(source.read())
    graph = Graph(memimg.converter)
    graph.generic = graph.codec.generic = True
    graph.load_snapshot(data)
    root = graph.objects[data["root"]]
    store = _api.store_for(target, **_url_options(target))
    try:
        if store.head() != 0:
            raise MemimgError(f"{target!r} already holds an image; import needs an empty target")
        img = memimg.open(store, root=lambda: root, generic_types=True)
        seq = img.snapshot()
        img.close()
    finally:
        store.close()
    click.echo(f"imported {len(data['objects'])} objects into {target} (snapshot at seq {seq})")


# -- demo ------------------------------------------------------------------------


@cli.command()
@click.argument("path", default="memimg-demo.db")
def demo(path: str) -> None:
    """Run a small bank demo on an SQLite image (run it twice)."""
    from memimg._demo import run

    run(path)
