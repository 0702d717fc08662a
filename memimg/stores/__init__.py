"""Stores: where the log lives (memory, SQLite, SQLAlchemy)."""

from memimg.stores._memory import MemoryStore
from memimg.stores._protocol import EventRow, SeqTaken, SnapshotInfo, SnapshotRow, Store
from memimg.stores._sqlite import SQLiteStore

__all__ = ["EventRow", "MemoryStore", "SQLiteStore", "SeqTaken", "SnapshotInfo", "SnapshotRow", "Store"]
