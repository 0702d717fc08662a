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
    "ConflictError",
    "CorruptLogError",
    "LockedError",
    "MemimgError",
    "ReadOnlyError",
    "SchemaError",
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
    """The stored schema differs from the code in ways the code does not declare,
    or an upgrader failed on a stored state.

    Attribute: ``differences`` (a list of human-readable lines, each with its fix).
    An upgrader's failure (chained from the upgrader's exception) also has
    ``upgrader`` (its qualified name), ``type_name``, ``from_version``,
    ``seq`` (of the event or snapshot holding the state, when known),
    ``where``, ``fields`` (the state's keys) and ``partial`` (a field event's
    partial state), ``problem`` (what it did wrong); these are ``None`` (or
    empty) in other schema errors.
    """

    differences: list[str]
    upgrader: str | None = None
    type_name: str | None = None
    from_version: int | None = None
    seq: int | None = None
    where: str | None = None
    fields: tuple[str, ...] = ()
    partial: bool = False
    problem: str | None = None


class UnknownTypeError(SchemaError):
    """The log names a type that no class in this process claims.

    Attributes: ``type_name`` (the first such name), ``differences``.
    """

    type_name: str


class ReadOnlyError(MemimgError):
    """A write was attempted on an image opened with ``readonly=True``."""


class ClosedError(MemimgError):
    """The image was closed; open it again to keep using it."""


class LockedError(MemimgError):
    """The store stayed locked by another writer past the busy timeout."""


for _cls in (
    MemimgError,
    UnsupportedValueError,
    ConflictError,
    CorruptLogError,
    UnknownTypeError,
    SchemaError,
    ReadOnlyError,
    ClosedError,
    LockedError,
):
    _cls.__module__ = "memimg"
