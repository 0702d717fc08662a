"""The error hierarchy.

Every error memimg raises is a :class:`MemimgError`. Each carries, besides a
message written for people (what happened, to which object/field/seq, and
what to do), the same facts as attributes for programs, so that callers never
parse messages.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClosedError",
    "CommitUnknownError",
    "ConflictError",
    "CorruptLogError",
    "FileGoneError",
    "LockedError",
    "MemimgError",
    "ReadOnlyError",
    "SchemaError",
    "StoreError",
    "UnknownTypeError",
    "UnsupportedValueError",
]


class MemimgError(Exception):
    """Base class of every error memimg raises."""

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in facts.items():
            setattr(self, name, value)


class UnsupportedValueError(MemimgError, TypeError):
    """A value memimg cannot store was assigned; nothing was changed.

    Attributes: ``value_type`` (the offending type), ``where`` (a path such as
    ``Bank.accounts['ada'].owner``).
    """

    value_type: type
    where: str


class ConflictError(MemimgError):
    """A transaction's view was overtaken by another commit; nothing of it was applied.

    Attributes: ``target`` (object id), ``key`` (field name, dict key, set
    member, or ``None`` for the whole collection), ``seq`` (the commit that
    got there first, when known).
    """

    target: int | None
    key: Any
    seq: int | None


class CorruptLogError(MemimgError):
    """A stored row failed its checksum, is truncated, or the log has a gap.

    Attributes: ``seq`` (the event or snapshot seq), ``table``.
    """

    seq: int | None
    table: str


class SchemaError(MemimgError):
    """The stored schema differs from the code in ways the code does not declare.

    Attribute: ``differences`` (a list of human-readable lines, each with its fix).
    """

    differences: list[str]


class UnknownTypeError(SchemaError):
    """The log names a type that no class in this process claims.

    Attributes: ``type_name`` (the first such name), ``differences``.
    """

    type_name: str


class ReadOnlyError(MemimgError):
    """A write was attempted on an image or a store opened with ``readonly=True``."""


class ClosedError(MemimgError):
    """The image was closed; open it again to keep using it."""


class StoreError(MemimgError):
    """The store failed: its database could not be read or written (``__cause__`` is the driver's error).

    Attributes: ``store`` (the store's description: a path, or a URL without
    its password), ``operation`` (what memimg was doing, e.g. ``"appending
    events 12..14"``).
    """

    store: str
    operation: str


class LockedError(StoreError):
    """The store stayed locked by another writer past the busy timeout; nothing was written."""


class FileGoneError(StoreError):
    """The SQLite file an image writes is no longer the file at its path (deleted, moved or replaced).

    A commit that finds this has gone into a file nobody will read again: it
    is not durable, it is not applied, and the store refuses every later
    write. Attributes: ``path``, ``seq`` (the last seq of that commit, or
    ``None`` when nothing was written), ``store``, ``operation``.
    """

    path: str
    seq: int | None


class CommitUnknownError(StoreError):
    """A commit was sent, the connection was lost before its reply, and the database could not be asked.

    The commit may or may not be in the log. Every row it wrote carries
    ``commit_id``; the commit is in the log if the event at ``first_seq``
    has that ``commit_id``. Attributes: ``commit_id``, ``first_seq``,
    ``seq`` (its last seq), ``store``, ``operation``.
    """

    commit_id: int
    first_seq: int
    seq: int


for _cls in (
    MemimgError,
    UnsupportedValueError,
    ConflictError,
    CorruptLogError,
    UnknownTypeError,
    SchemaError,
    ReadOnlyError,
    ClosedError,
    StoreError,
    LockedError,
    FileGoneError,
    CommitUnknownError,
):
    _cls.__module__ = "memimg"
