"""Operating an image: ``snapshot``, ``compact``, ``copy``, ``export`` and ``import``."""

from __future__ import annotations

import base64
import time
from typing import Any

import click
import orjson

import memimg
from memimg import _api
from memimg._errors import MemimgError
from memimg.cli._inspect import size_text
from memimg.cli._main import (
    PAST_OPTIONS,
    cli,
    open_image,
    open_store,
    progress_callback,
    protection_option,
    url_options,
    with_progress,
)
from memimg.core._codec import Codec
from memimg.core._reader import Reader
from memimg.core._rows import SnapshotRow, snapshot_checksum
from memimg.core._snapshot import load_snapshot
from memimg.core._snapshotter import SnapshotWriter
from memimg.core._table import ObjectTable
from memimg.image import _generic
from memimg.image._engine import Engine
from memimg.image._image import open_past
from memimg.image._snapshots import Snapshots
from memimg.model import SHELL
from memimg.stores._ndjson import NDJSONStore
from memimg.stores._protocol import EventRow, Store, live_positions

__all__ = ["compact", "copy_", "export_", "import_", "snapshot"]


# -- snapshot, compact ------------------------------------------------------------


@cli.command()
@click.argument("target")
def snapshot(target: str) -> None:
    """Write a snapshot now."""
    img = open_image(target, writable=True)
    try:
        seq = img.snapshot()
    finally:
        img.close()
    click.echo(f"snapshot written at seq {seq}")


@cli.command()
@click.argument("target")
@click.option("--archive", type=click.Path(dir_okay=False, writable=True), help="First write the dropped events here.")
@click.option(
    "--keep-events",
    type=click.IntRange(min=0),
    default=0,
    help="Keep this many of the newest events the snapshot covers (history to look back on), in whole transactions.",
)
@click.option(
    "--keep-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Keep the events committed in the last this many days.",
)
@click.option(
    "--ignore-positions",
    is_flag=True,
    help="Drop events that live processes behind the snapshot still need (they reload from it instead).",
)
@click.option(
    "--keep-segment",
    is_flag=True,
    help="NDJSON log: move the dropped events to a segment file, NAME.ndjson.segments/FIRST-LAST.ndjson.",
)
def compact(
    target: str,
    archive: str | None,
    keep_events: int,
    keep_days: float | None,
    ignore_positions: bool,
    keep_segment: bool,
) -> None:
    """Snapshot, drop the events and snapshots the new snapshot makes unnecessary, and give their space back.

    Events that a live process has not reached yet (its position, kept in the
    store from its first commit, catch-up or transaction on) are kept, and so
    is the history asked for.
    """
    img = open_image(target, writable=True)
    try:
        store = img.store
        if keep_segment:
            inner = getattr(store, "inner", store)  # a protected log's own store
            if not isinstance(inner, NDJSONStore):
                raise click.UsageError(f"--keep-segment is for NDJSON logs (*.ndjson), not {target!r}")
            inner.keep_segments = True
        seq = img.snapshot()
        cut, reasons = _cut(store, seq, img._engine, keep_events, keep_days, ignore_positions)
        if archive:
            _archive(store, cut, archive)
        before = _disk_size(store)
        dropped = store.delete_events_before(cut)
        old_snaps = store.delete_snapshots_before(min(seq, max(cut - 1, 0)))
        store.reclaim()
        after = _disk_size(store)
    finally:
        img.close()
    space = f"; {size_text(before)} -> {size_text(after)} on disk" if before is not None and after is not None else ""
    click.echo(f"snapshot at seq {seq}; dropped {dropped} events and {old_snaps} older snapshots{space}")
    for reason in reasons:
        click.echo(reason)


def _cut(
    store: Store, seq: int, engine: Engine, keep_events: int, keep_days: float | None, ignore_positions: bool
) -> tuple[int, list[str]]:
    """The first seq compaction keeps (at most *seq*, the snapshot's), and why it is not *seq*."""
    own = engine.position.holder
    cut, reasons = seq, []
    if keep_events:
        cut = min(cut, max(seq - keep_events + 1, 1))
    if keep_days is not None:
        since = time.time_ns() // 1000 - int(keep_days * 86_400e6)
        first = store.first_seq()
        for raw in store.read(after=first - 1):
            row = EventRow(*raw)
            if row.ts >= since or row.seq >= cut:
                cut = min(cut, row.seq)
                break
    if cut < seq:
        cut = _tx_start(store, cut)
        cut, base = _from_snapshot(store, cut)
        if base is not None:
            start = f", and the snapshot at seq {base} that the past states start from"
        elif cut <= 1:
            start = ""  # the whole log: every past state starts from its first event
        else:
            why_not = _write_base(store, cut - 1, seq, engine.snapshots)
            if why_not is not None:
                # without the snapshot the kept history starts from, dropping events would lose it for good
                reasons.append(
                    f"kept every event: no snapshot at seq {cut - 1} could be written for the history asked for to "
                    f"start from ({why_not}); nothing was dropped"
                )
                return store.first_seq(), reasons
            start = f", and a snapshot written at seq {cut - 1} for the past states to start from"
        reasons.append(f"kept the events from seq {cut} on: the history asked for{start}")
    meta = store.meta()
    live = live_positions(meta)
    for key in meta:
        if key.startswith("position.") and key[len("position.") :] not in live:
            store.set_meta(key, None)  # expired: its process ended without closing its image
    positions = {holder: at for holder, at in live.items() if holder != own}
    behind = {holder: at for holder, at in positions.items() if at + 1 < cut}
    if behind and not ignore_positions:
        oldest = min(behind.values())
        cut = oldest + 1
        reasons.append(
            f"kept the events from seq {cut} on: {len(behind)} live process(es) have not reached them yet "
            f"(the furthest behind, {min(behind, key=behind.__getitem__)}, is at seq {oldest}); run compact "
            "again later, or with --ignore-positions (they reload from the snapshot instead)"
        )
    elif behind:
        reasons.append(f"dropped events {len(behind)} live process(es) had not reached: they reload from the snapshot")
    return cut, reasons


def _tx_start(store: Store, cut: int) -> int:
    """*cut* moved back to the first row of the transaction it falls in (its ``tx``): history is kept
    in whole transactions, so none loses its first rows (its ``tx.meta`` row: who made it, and why)."""
    row = next(iter(store.read(after=cut - 1, limit=1)), None)
    return cut if row is None else max(min(cut, EventRow(*row).tx), store.first_seq())


def _from_snapshot(store: Store, cut: int) -> tuple[int, int | None]:
    """The first seq to keep so that the states from *cut* on can be rebuilt (``img.at``), and the snapshot
    they start from: the newest at or before *cut*, kept with the events after it. Without one, *cut* and
    ``None`` (:func:`_write_base` writes one)."""
    base = max((info.seq for info in store.snapshots() if store.first_seq() - 1 <= info.seq <= cut), default=None)
    if base is None:
        return cut, None
    return min(cut, base + 1), base


def _write_base(store: Store, base: int, seq: int, snapshots: Snapshots) -> str | None:
    """Write the snapshot at *base* that kept history starts from (there is none); why not, or ``None``.

    The state at *base* is read as ``img.at`` reads it, and written as a
    snapshot of that seq: its reachable objects, and every older object an
    event after it (up to the new snapshot at *seq*) names, as a snapshot
    taken then would. Not when the state was read other than as stored (a
    schema change read into it, removed types cleaned out): a snapshot of it
    would put that into the log.

    From the read to the write the image's *snapshots* hold the snapshot
    lease, as every snapshot writer does: an ``erase`` (of this process or
    another) waits, and so cannot rewrite the rows read before the snapshot
    of them is stored, which would then keep the values it erased.
    """
    with snapshots.held("compact"):
        return _write_base_leased(store, base, seq, snapshots.holder)


def _write_base_leased(store: Store, base: int, seq: int, holder: str) -> str | None:
    with open_past(store, base, **PAST_OPTIONS) as past:
        engine = past._engine
        report = engine.reader.report
        if report.changed:
            return f"the state at seq {base} is read with schema changes: {'; '.join(report.lines())}"
        writer = SnapshotWriter(engine.table, base)
        rows: list[EventRow] = []
        for raw in store.read(after=base, limit=seq - base):
            rows.append(EventRow(*raw))
            if len(rows) >= 1000:
                writer.before_rows(rows)
                rows.clear()
        writer.before_rows(rows)
        payload, _, _ = writer.finish()
        if writer.abandoned is not None:
            return str(writer.abandoned)
    ts = time.time_ns() // 1000
    if not store.write_snapshot(SnapshotRow(base, ts, payload, snapshot_checksum(base, ts, payload)), holder):
        return "another process took the snapshot lease while the state was read: run memimg compact again"
    return None


def _archive(store: Store, seq: int, path: str) -> None:
    """Write the events before *seq* to *path*, one JSON object per line, each as it is read.

    A protected log's events are written as stored (``payload64``: the
    sealed bytes, base64), so the archive is no less protected than the log.
    """
    first = store.first_seq()
    inner = getattr(store, "inner", None)
    with open(path, "wb") as f:
        for raw in with_progress((inner or store).read(after=first - 1), seq - first, "archive"):
            row = EventRow(*raw)
            if row.seq >= seq:
                break
            if inner is not None:
                line = {**row._asdict(), "payload": None, "payload64": base64.b64encode(bytes(row.payload)).decode()}
            else:
                line = {**row._asdict(), "payload": row.payload.decode()}
            f.write(orjson.dumps(line) + b"\n")


def _disk_size(store: Store) -> int | None:
    size = getattr(store, "size", None)
    return size() if callable(size) else None


# -- copy -------------------------------------------------------------------------


@cli.command("copy")
@click.argument("source")
@click.argument("target")
@click.option("--overwrite", is_flag=True, help="Replace TARGET if it already holds a log (a path: its files).")
def copy_(source: str, target: str, overwrite: bool) -> None:
    """Copy the image at SOURCE to TARGET, any store to any store: every event, snapshot and meta entry, verified.

    Seqs, transactions, times and checksums are kept; SOURCE is read as it
    is when the copy starts. A progress bar shows on a terminal.
    """
    src = open_store(source, readonly=True)
    try:
        # a path goes to copy as it is (so that --overwrite can delete its files); a URL takes --schema/--prefix
        protection = getattr(src, "protection", None)  # a protected log's copy is protected alike
        dst: Any = _api.store_for(target, protection=protection, **url_options(target)) if "://" in target else target
        try:
            copied = memimg.copy(src, dst, overwrite=overwrite, progress=progress_callback())
        finally:
            if dst is not target:
                dst.close()
        snapshots, first = len(src.snapshots()), src.first_seq()
    finally:
        src.close()
    click.echo(
        f"copied {copied} events (seqs {first}..{first + copied - 1}) and {snapshots} snapshot(s) "
        f"from {source} to {target}; verified"
    )


# -- export / import --------------------------------------------------------------


@cli.command("export")
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
def export_(target: str, fmt: str, output: str | None) -> None:
    """Write the current state as JSON (the snapshot format); in the clear, even from an encrypted log."""
    img = open_image(target)
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
    """Create a new image at TARGET from a JSON export (protected with the keys given, if any)."""
    data = orjson.loads(source.read())
    reader = Reader(ObjectTable(SHELL, Codec(memimg.converter, SHELL)), stand_ins=_generic.make_stand_in)
    load_snapshot(reader, data)
    root = reader.table.objects[data["root"]]
    store = _api.store_for(target, protection=protection_option(), **url_options(target))
    try:
        if store.head() != 0:
            raise MemimgError(f"{target!r} already holds an image; import needs an empty target")
        img = memimg.open(store, root=lambda: root, generic_types=True)
        seq = img.snapshot()
        img.close()
    finally:
        store.close()
    click.echo(f"imported {len(data['objects'])} objects into {target} (snapshot at seq {seq})")
