"""Edit or add stored rows the way a bug, a hand edit or a forger would, keeping their checksums valid."""

from __future__ import annotations

import pathlib
import sqlite3
import sys
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import orjson

from memimg.core._rows import event_checksum, snapshot_checksum
from memimg.core._snapshot import decode_snapshot
from memimg.stores import EventRow, SnapshotRow, Store


def edit_snapshot(where: str | Store, edit: Callable[[bytes], bytes]) -> int:
    """Replace the newest snapshot of *where* (an SQLite image's path, or a store) by ``edit(payload)``;
    returns its seq.

    The checksum is recomputed, so only memimg's own reading of the content can tell.
    """
    if not isinstance(where, str):
        row = where.read_snapshot(where.snapshots()[0].seq)
        payload = edit(bytes(row.payload))
        where.write_snapshot(SnapshotRow(row.seq, row.ts, payload, snapshot_checksum(row.seq, row.ts, payload)))
        return row.seq
    conn = sqlite3.connect(where)
    try:
        seq, ts, payload = conn.execute(
            "SELECT seq, ts, payload FROM memimg_snapshots ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        payload = edit(payload)
        conn.execute(
            "UPDATE memimg_snapshots SET payload = ?, checksum = ? WHERE seq = ?",
            (payload, snapshot_checksum(seq, ts, payload), seq),
        )
        conn.commit()
    finally:
        conn.close()
    return int(seq)


def move_snapshot(path: str, seq: int) -> None:
    """Store the newest snapshot of the SQLite image at *path* at *seq* instead, its header saying so too."""
    conn = sqlite3.connect(path)
    try:
        old, ts, payload = conn.execute(
            "SELECT seq, ts, payload FROM memimg_snapshots ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        header, sep, rest = payload.partition(b"\n")
        payload = orjson.dumps({**orjson.loads(header), "seq": seq}) + sep + rest
        conn.execute(
            "UPDATE memimg_snapshots SET seq = ?, payload = ?, checksum = ? WHERE seq = ?",
            (seq, payload, snapshot_checksum(seq, ts, payload), old),
        )
        conn.commit()
    finally:
        conn.close()


def format_1(payload: bytes, renumber: Callable[[int], int] = int) -> bytes:
    """*payload* as a format-1 snapshot (what memimg 0.1 wrote): a header, then ``oid<TAB>type<TAB>state`` lines,
    each object's id given as ``renumber(oid)`` (references in the states are left as they are)."""
    data = decode_snapshot(payload)
    objects = data.pop("objects")
    header = {**data, "format": 1, "count": len(objects)}
    lines = [b"%d\t%s\t%s" % (renumber(oid), name.encode(), orjson.dumps(state)) for oid, name, state in objects]
    return b"\n".join([orjson.dumps(header), *lines])


def rewrite_snapshot(where: str | Store, old: bytes, new: bytes) -> int:
    """Replace *old* by *new* in the newest snapshot of *where* (as :func:`edit_snapshot`); returns its seq."""

    def replace(payload: bytes) -> bytes:
        assert old in payload, f"{old!r} is not in the snapshot"
        return payload.replace(old, new)

    return edit_snapshot(where, replace)


def append_event(where: str | Store, kind: str, target: int, payload: Any) -> int:
    """Append an event of *kind* on object *target* to *where* (an SQLite image's path, or a store); returns its seq.

    *payload* is the stored JSON data (``[args]``, ``[args, records]`` or
    ``[args, records, types]``), as a crafted log would hold it; the
    checksum is made valid, so only memimg's own reading can tell.
    """
    data = orjson.dumps(payload)
    ts = 1_700_000_000_000_000
    if not isinstance(where, str):
        seq = where.head() + 1
        where.append(
            [EventRow(seq, seq, ts, kind, target, data, event_checksum(seq, seq, ts, kind, target, data))], seq - 1
        )
        return seq
    conn = sqlite3.connect(where)
    try:
        seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM memimg_events").fetchone()[0]
        conn.execute(
            "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, seq, ts, kind, target, data, event_checksum(seq, seq, ts, kind, target, data)),
        )
        conn.commit()
    finally:
        conn.close()
    return int(seq)


@attrs.frozen
class PlantedModule:
    """A module a crafted log names, importable, that leaves a marker file if it is ever imported."""

    name: str
    marker: pathlib.Path

    @property
    def imported(self) -> bool:
        return self.marker.exists() or self.name in sys.modules


def plant_module(directory: pathlib.Path, monkeypatch: Any) -> PlantedModule:
    """Write ``evilmod_<random>.py`` (an enum ``Thing`` with a member ``X``) in *directory*, importable
    from there (on ``sys.path``, and the working directory); the caller removes it from ``sys.modules``."""
    name = f"evilmod_{uuid.uuid4().hex[:8]}"
    marker = directory / f"{name}.imported"
    (directory / f"{name}.py").write_text(
        f"import enum, pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "class Thing(enum.Enum):\n    X = 1\n"
    )
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.chdir(directory)
    return PlantedModule(name, marker)
