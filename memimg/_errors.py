"""The error hierarchy.

Every error memimg raises is a :class:`MemimgError`. Each carries, besides a
message written for people (what happened, to which object/field/seq, and
what to do), the same facts as attributes for programs, so that callers never
parse messages.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = [
    "ClosedError",
    "CommitUnknownError",
    "ConflictError",
    "CorruptLogError",
    "FileGoneError",
    "HistoryError",
    "LockedError",
    "MemimgError",
    "ProtectionError",
    "ReadOnlyError",
    "SchemaError",
    "StoreError",
    "UniqueError",
    "UnknownTypeError",
    "UnsupportedValueError",
    "value_repr",
]


class MemimgError(Exception):
    """Base class of every error memimg raises."""

    __module__ = "memimg"

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

    __module__ = "memimg"

    value_type: type
    where: str


class ConflictError(MemimgError):
    """A transaction's view was overtaken by another commit; nothing of it was applied.

    Attributes: ``target`` (object id), ``key`` (field name, dict key, set
    member, or ``None`` for the whole collection), ``seq`` (the commit that
    got there first, when known).
    """

    __module__ = "memimg"

    target: int | None
    key: Any
    seq: int | None


class UniqueError(ConflictError):
    """A value of a unique field (``memimg.field(unique=True)``) is held by another reachable instance.

    Raised at the assignment when the clash is visible then (inside a
    transaction), otherwise at commit -- also when another thread or
    process committed the same value first. Nothing was changed (a
    transaction failing at commit is discarded, as for any conflict).

    Attributes: ``cls`` (the class the field is unique in), ``field``,
    ``value``, ``holder`` (the other instance), and ``target`` (its object
    id, ``None`` if it is being attached too), ``key`` (the field name) and
    ``seq`` (``None``) as for any :class:`ConflictError`.
    """

    __module__ = "memimg"

    cls: type
    field: str
    value: Any
    holder: Any


class CorruptLogError(MemimgError):
    """A stored row failed its checksum, is truncated or does not fit the log, or the log has a gap.

    The checksum (a CRC-32) catches accidental damage, not a deliberate edit
    that recomputes it; a row that does not fit (a value tag naming a class
    of another kind, a snapshot past the last event) is refused whatever its
    checksum.

    Attributes: ``seq`` (the event or snapshot seq), ``table``.
    """

    __module__ = "memimg"

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

    __module__ = "memimg"

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

    __module__ = "memimg"

    type_name: str


class ProtectionError(MemimgError):
    """A key is missing, wrong or malformed, or a log's protection does not match the one asked for.

    Nothing was read or changed. The message names the log and what to do;
    it never holds a key (only key fingerprints).
    """

    __module__ = "memimg"


class ReadOnlyError(MemimgError):
    """A write was attempted on an image or a store opened with ``readonly=True``."""

    __module__ = "memimg"


class HistoryError(MemimgError):
    """A past state was asked for that the log cannot give: ``img.at``, ``img.diff`` (nothing was changed).

    The seq (or time) is before the oldest state the log still holds (a
    compaction dropped the events and snapshots before it), before the first
    commit, past the head of the log, or in the future. Attributes: ``seq``
    (the seq asked for, or ``None`` when a time was), ``time`` (the time asked
    for, or ``None``), ``oldest`` (the oldest seq whose state is available),
    ``head`` (the newest).
    """

    __module__ = "memimg"

    seq: int | None
    time: Any
    oldest: int
    head: int


class ClosedError(MemimgError):
    """The image was closed; open it again to keep using it."""

    __module__ = "memimg"


class StoreError(MemimgError):
    """The store failed: its database could not be read or written (``__cause__`` is the driver's error).

    Attributes: ``store`` (the store's description: a path, or a URL without
    its password), ``operation`` (what memimg was doing, e.g. ``"appending
    events 12..14"``).
    """

    __module__ = "memimg"

    store: str
    operation: str


class LockedError(StoreError):
    """The store stayed locked by another writer past the busy timeout; nothing was written."""

    __module__ = "memimg"


class FileGoneError(StoreError):
    """The SQLite file an image writes is no longer the file at its path (deleted, moved or replaced).

    A commit that finds this has gone into a file nobody will read again: it
    is not durable, it is not applied, and the store refuses every later
    write. Attributes: ``path``, ``seq`` (the last seq of that commit, or
    ``None`` when nothing was written), ``store``, ``operation``.
    """

    __module__ = "memimg"

    path: str
    seq: int | None


class CommitUnknownError(StoreError):
    """A commit was sent, the connection was lost before its reply, and the database could not be asked.

    The commit may or may not be in the log. Every row it wrote carries
    ``commit_id``; the commit is in the log if the event at ``first_seq``
    has that ``commit_id``. Attributes: ``commit_id``, ``first_seq``,
    ``seq`` (its last seq), ``store``, ``operation``.
    """

    __module__ = "memimg"

    commit_id: int
    first_seq: int
    seq: int


def value_repr(value: Any) -> str:
    """``repr(value)`` for messages and tools, also where it holds an int too long for ``repr``.

    Python refuses to write an int of more than 4,300 digits in decimal (by
    default; ``sys.set_int_max_str_digits``), so ``repr`` of it -- or of a
    tuple, frozenset, ``Fraction`` or value object holding it -- raises;
    here such an int is written in hex (``0x...``), a literal of the same int.
    """
    try:
        return repr(value)
    except ValueError:
        pass
    t = type(value)
    if t is int:
        return hex(value)
    if t is tuple:
        items = ", ".join(map(value_repr, value))
        return f"({items},)" if len(value) == 1 else f"({items})"
    if t is frozenset:
        return f"frozenset({{{', '.join(map(value_repr, value))}}})"
    numerator, denominator = getattr(value, "numerator", None), getattr(value, "denominator", None)
    if type(numerator) is int and type(denominator) is int:  # a Fraction
        return f"{t.__name__}({hex(numerator)}, {hex(denominator)})"
    if attrs.has(t):
        fields = ", ".join(f"{a.name}={value_repr(getattr(value, a.name, None))}" for a in attrs.fields(t) if a.repr)
        return f"{t.__qualname__}({fields})"
    return f"<{t.__qualname__} object too large to show>"
