"""memimg: your Python objects, durable -- a memory image kept by a log of mutations.

Decorate classes with :func:`persistent`, open an image with :func:`open`,
and change its objects as usual: every change is an event in a log (SQLite by
default), and opening the image again rebuilds the same typed graph.
"""

from memimg._api import deserialize, migrate, open, replay, serialize
from memimg._copy import copy
from memimg._errors import (
    ClosedError,
    CommitUnknownError,
    ConflictError,
    CorruptLogError,
    FileGoneError,
    HistoryError,
    LockedError,
    MemimgError,
    ProtectionError,
    ReadOnlyError,
    SchemaError,
    StoreError,
    UniqueError,
    UnknownTypeError,
    UnsupportedValueError,
)
from memimg._projection import project
from memimg._rekey import rekey
from memimg.core._diff import Diff, Difference
from memimg.core._history import Change, Collected
from memimg.core._markers import ERASED, MISSING
from memimg.core._protect import renew_nonces
from memimg.core._rows import Event
from memimg.core._schema import SchemaReport, upgrader
from memimg.core._values import Converter, converter
from memimg.image._erase import Erasure
from memimg.image._feeds import Commit
from memimg.image._image import MemoryImage
from memimg.image._transaction import Transaction
from memimg.model import TrackedDict, TrackedList, TrackedSet, field, persistent
from memimg.stores import MemoryStore, NDJSONStore, SQLiteStore, Store

__all__ = [
    "ERASED",
    "MISSING",
    "Change",
    "ClosedError",
    "Collected",
    "Commit",
    "CommitUnknownError",
    "ConflictError",
    "Converter",
    "CorruptLogError",
    "Diff",
    "Difference",
    "Erasure",
    "Event",
    "FileGoneError",
    "HistoryError",
    "LockedError",
    "MemimgError",
    "MemoryImage",
    "MemoryStore",
    "NDJSONStore",
    "ProtectionError",
    "ReadOnlyError",
    "SQLiteStore",
    "SchemaError",
    "SchemaReport",
    "Store",
    "StoreError",
    "TrackedDict",
    "TrackedList",
    "TrackedSet",
    "Transaction",
    "UniqueError",
    "UnknownTypeError",
    "UnsupportedValueError",
    "converter",
    "copy",
    "deserialize",
    "field",
    "migrate",
    "open",
    "persistent",
    "project",
    "rekey",
    "renew_nonces",
    "replay",
    "serialize",
    "upgrader",
]

__version__ = "0.3.0"
