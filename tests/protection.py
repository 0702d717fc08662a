"""Keys, option sets and raw-row tampering for the protection tests (every store kind)."""

from __future__ import annotations

import glob
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from memimg.core._rows import event_checksum, snapshot_checksum
from memimg.stores import EventRow, SnapshotRow, Store
from memimg.stores._ndjsonformat import NDJSON_VERSION, encode_rows, header_line
from tests.conftest import POSTGRES_URL, StoreFactory

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
INTEGRITY_KEY = "ab" * 32  # hex text
SECRET = "SECRET-lovelace-4711"

#: name -> the open options of one protection setting
OPTIONS: dict[str, dict[str, Any]] = {
    "encrypted": {"encryption_key": KEY},
    "chained": {"integrity_key": INTEGRITY_KEY},
    "compressed": {"compression": "zstd"},
    "all": {"encryption_key": KEY, "integrity_key": INTEGRITY_KEY, "compression": "zlib"},
}


def raw_events(store: Store) -> list[EventRow]:
    return [EventRow(*r[:5], bytes(r[5]), r[6]) for r in store.read()]


def raw_bytes(stores: StoreFactory) -> bytes:
    """Every byte the log keeps: its files (SQLite with its WAL; NDJSON with its snapshots), or its raw rows."""
    if stores.kind in ("sqlite", "ndjson"):
        out = b""
        for path in sorted(glob.glob(stores.path + "*")) + sorted(glob.glob(stores.path + ".snapshots/*")):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    out += f.read()
        return out
    store = stores.raw_store()
    out = b"".join(r.payload for r in raw_events(store))
    out += b"".join(bytes(store.read_snapshot(i.seq).payload) for i in store.snapshots())
    return out + repr(store.meta()).encode()


def replace_events(stores: StoreFactory, edit: Callable[[list[EventRow]], list[EventRow]]) -> None:
    """Replace the stored event rows of the log by ``edit(rows)``, checksums made valid (a forger's edit)."""
    store = stores.raw_store()
    rows = edit(raw_events(store))
    rows = [r._replace(checksum=event_checksum(*r[:6])) for r in rows]
    if stores.kind == "memory":
        store._events[:] = rows  # type: ignore[attr-defined]
        store._by_target.clear()  # type: ignore[attr-defined]
        for r in rows:
            store._by_target.setdefault(r.target, []).append(r.seq)  # type: ignore[attr-defined]
    elif stores.kind == "sqlite":
        conn = sqlite3.connect(stores.path)
        with conn:
            conn.execute("DELETE FROM memimg_events")
            conn.execute("DELETE FROM memimg_targets")
            conn.executemany("INSERT INTO memimg_events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("DELETE FROM memimg_meta WHERE key = 'targets_indexed'")
        conn.close()
    elif stores.kind == "ndjson":
        first = rows[0].seq if rows else 1
        with open(stores.path, "wb") as f:
            f.write(header_line(NDJSON_VERSION, first) + encode_rows(rows))
    else:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
        with engine.begin() as conn:
            conn.execute(sa.text(f'SET search_path TO "{stores.schema}"'))
            conn.execute(sa.text("DELETE FROM memimg_events"))
            conn.execute(sa.text("DELETE FROM memimg_targets"))
            conn.execute(sa.text("DELETE FROM memimg_meta WHERE key = 'targets_indexed'"))
            conn.execute(
                sa.text(
                    "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) "
                    "VALUES (:seq, :tx, :ts, :kind, :target, :payload, :checksum)"
                ),
                [r._asdict() for r in rows],
            )
        engine.dispose()


def flip(payload: bytes, at: int = -3) -> bytes:
    """*payload* with one bit of its byte *at* flipped."""
    b = bytearray(payload)
    b[at] ^= 0x01
    return bytes(b)


#: name -> an edit of a log's event rows (seven or more) for :func:`replace_events`: a forger's tampering
EDITS: dict[str, Callable[[list[EventRow]], list[EventRow]]] = {
    "edit": lambda rows: [r._replace(payload=flip(r.payload)) if r.seq == 4 else r for r in rows],
    "insert": lambda rows: rows[:4] + [r._replace(seq=r.seq + 1) for r in rows[3:]],
    "delete": lambda rows: rows[:3] + [r._replace(seq=r.seq - 1) for r in rows[4:]],
    "reorder": lambda rows: (
        [*rows[:3], rows[3]._replace(payload=rows[4].payload), rows[4]._replace(payload=rows[3].payload), *rows[5:]]
    ),
    "drop first": lambda rows: rows[1:],
}


def edit_snapshot(stores: StoreFactory) -> int:
    """Flip a bit of the log's first snapshot, its CRC-32 made valid (a forger's edit); the snapshot's seq."""
    store = stores.raw_store()
    seq = store.snapshots()[0].seq
    row = store.read_snapshot(seq)
    payload = flip(bytes(row.payload), 80)
    store.write_snapshot(SnapshotRow(seq, row.ts, payload, snapshot_checksum(seq, row.ts, payload)))
    return seq
