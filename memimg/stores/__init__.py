"""Stores: where the log lives (memory, SQLite, NDJSON, SQLAlchemy)."""

from memimg.stores._memory import MemoryStore
from memimg.stores._ndjson import NDJSONStore
from memimg.stores._protocol import EventRow, SeqTaken, SnapshotInfo, SnapshotRow, Store
from memimg.stores._sqlite import SQLiteStore

__all__ = ["EventRow", "MemoryStore", "NDJSONStore", "SQLiteStore", "SeqTaken", "SnapshotInfo", "SnapshotRow", "Store"]
