"""The SQL the SQLite store runs: its tables and the statements of its hot paths, in one place."""

from __future__ import annotations

from typing import Final

__all__ = [
    "AFTER_SNAPSHOTS",
    "APPEND",
    "APPEND_AT_HEAD",
    "APPEND_CHUNKS",
    "APPEND_FIRST",
    "COLUMNS",
    "FIRST",
    "HEAD",
    "LEASE_RELEASE",
    "LEASE_RENEW",
    "READ",
    "SCHEMA",
    "SNAPSHOT",
    "SNAPSHOT_LEASED",
]

COLUMNS: Final = {
    "memimg_events": ["seq", "tx", "ts", "kind", "target", "payload", "checksum"],
    "memimg_snapshots": ["seq", "ts", "payload", "checksum"],
    "memimg_meta": ["key", "value"],
}
SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS memimg_events ("
    " seq INTEGER PRIMARY KEY, tx INTEGER NOT NULL, ts INTEGER NOT NULL, kind TEXT NOT NULL,"
    " target INTEGER NOT NULL, payload BLOB NOT NULL, checksum INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS memimg_snapshots ("
    " seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, payload BLOB NOT NULL, checksum INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS memimg_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
APPEND_FIRST: Final = (
    "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) "
    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE "
    "coalesce((SELECT max(seq) FROM memimg_events), (SELECT max(seq) FROM memimg_snapshots), 0) = ?"
)
#: The commit's form of the same rule, ~15,000 instructions cheaper (callgrind): an INSERT ... SELECT reading
#: the table it inserts into is run through a temporary table (a B-tree opened, filled and closed for one
#: row); a single-row VALUES with the head read in a subquery is not. When the head is not the expected one
#: the row's ``tx`` is NULL and the insert fails (a NOT NULL constraint, SQLITE_CONSTRAINT_NOTNULL) instead
#: of inserting nothing: nothing is written either way. The head expected is the row's seq - 1 (an append's
#: rows follow its expected head): the row itself is the statement's parameters, no tuple is made per commit.
APPEND_AT_HEAD: Final = (
    "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) VALUES (?1, CASE WHEN "
    "coalesce((SELECT max(seq) FROM memimg_events), (SELECT max(seq) FROM memimg_snapshots), 0) = ?1 - 1 "
    "THEN ?2 END, ?3, ?4, ?5, ?6, ?7)"
)
# The head: the last event, or (every event compacted away) the seq the newest snapshot covers.
HEAD: Final = "SELECT coalesce((SELECT max(seq) FROM memimg_events), (SELECT max(seq) FROM memimg_snapshots), 0)"
READ: Final = (
    "SELECT seq, tx, ts, kind, target, payload, checksum FROM memimg_events WHERE seq > ? ORDER BY seq LIMIT ?"
)
FIRST: Final = "SELECT min(seq) FROM memimg_events"
#: ``(rows, statement)``, largest first: one INSERT of that many rows (multi-row VALUES). A commit's rows
#: after its first go in as many of the largest as fit, then the next size, the rest by ``executemany`` of
#: APPEND: ~2,700 of the ~10,900 instructions of inserting one row fewer than ``executemany`` alone (callgrind,
#: 1,000 rows; fixed sizes, so each statement is prepared once and cached). 64 rows x 7 columns are 448
#: parameters, under SQLite's smallest limit (999).
APPEND_CHUNKS: Final = tuple(
    (
        n,
        "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n),
    )
    for n in (64, 8)
)
AFTER_SNAPSHOTS: Final = "SELECT coalesce(max(seq), 0) + 1 FROM memimg_snapshots"
APPEND: Final = "INSERT INTO memimg_events (seq, tx, ts, kind, target, payload, checksum) VALUES (?, ?, ?, ?, ?, ?, ?)"
# Take a lease that is free or already ours (see lease_entry), give back one that is ours.
LEASE_RENEW: Final = "UPDATE memimg_meta SET value = ? WHERE key = ? AND (value < ? OR substr(value, 22) = ?)"
SNAPSHOT: Final = "INSERT OR REPLACE INTO memimg_snapshots (seq, ts, payload, checksum) VALUES (?, ?, ?, ?)"
#: the same, only while the holder named holds the snapshot lease (one statement: one transaction)
SNAPSHOT_LEASED: Final = (
    "INSERT OR REPLACE INTO memimg_snapshots (seq, ts, payload, checksum) SELECT ?, ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM memimg_meta WHERE key = ? AND substr(value, 22) = ?)"
)
LEASE_RELEASE: Final = "DELETE FROM memimg_meta WHERE key = ? AND substr(value, 22) = ?"
