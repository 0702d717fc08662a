"""Edit stored rows the way a bug or a hand edit would, keeping their checksums valid."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from memimg._rows import snapshot_checksum


def edit_snapshot(path: str, edit: Callable[[bytes], bytes]) -> int:
    """Replace the newest snapshot of the SQLite image at *path* by ``edit(payload)``; returns its seq.

    The checksum is recomputed, so only memimg's own reading of the content can tell.
    """
    conn = sqlite3.connect(path)
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


def rewrite_snapshot(path: str, old: bytes, new: bytes) -> int:
    """Replace *old* by *new* in the newest snapshot of the SQLite image at *path*; returns its seq."""

    def replace(payload: bytes) -> bytes:
        assert old in payload, f"{old!r} is not in the snapshot"
        return payload.replace(old, new)

    return edit_snapshot(path, replace)
