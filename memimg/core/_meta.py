"""Transaction metadata: who made a change and why, stored once per transaction.

A transaction's metadata -- ``img.transaction(meta={...})``, merged over the
annotations in effect (``img.annotate(...)``) -- is a flat dict of JSON
scalars. It is stored as the first row of its transaction: an event of kind
``tx.meta`` (so its seq is the transaction's ``tx``), target 0, its data
``[meta]``: plain JSON, never through the value codec. A transaction with no
metadata writes no such row.

:func:`check_meta` is the one gate every metadata dict passes before it is
kept; :func:`with_meta` gives each event read from a log the metadata of its
transaction, reading the log once, in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import orjson

from memimg._errors import CorruptLogError, UnsupportedValueError
from memimg.core._kinds import KINDS, Kind
from memimg.core._rows import Event, EventRow, verify_event

__all__ = [
    "MAX_INT",
    "MAX_META_BYTES",
    "META_KIND",
    "TX_META",
    "check_meta",
    "check_row",
    "check_size",
    "meta_event",
    "meta_of_row",
    "read_events",
    "with_meta",
]

#: The kind of the row holding a transaction's metadata.
META_KIND: Final = "tx.meta"
#: The most bytes a transaction's metadata may take, encoded as JSON.
MAX_META_BYTES: Final = 4096
#: The largest int a metadata value may be (in absolute value): the range JSON readers agree on (IEEE doubles).
MAX_INT: Final = 2**53 - 1

_SCALARS: Final = (str, int, float, bool, type(None))
#: The ``tx.meta`` kind.
TX_META: Final = KINDS[META_KIND]


def _public_type(t: type) -> type:
    """*t*, or for a counter's counted number (a private subclass, see :mod:`memimg.core._counters`) the number
    type it stands for: what messages name. (By module, not by import: the stores read meta, not counters.)"""
    return next(c for c in t.__mro__ if c.__module__ != "memimg.core._counters")


def _refuse(where: str, value: Any, problem: str) -> UnsupportedValueError:
    return UnsupportedValueError(
        f"transaction metadata {where}: {problem}; nothing was written", value_type=type(value), where=where
    )


def check_meta(meta: Any, *, what: str = "meta") -> dict[str, Any]:
    """*meta* checked and copied: a plain dict of str keys and JSON scalar values, small enough.

    Values may be ``str``, ``int`` (at most :data:`MAX_INT` in absolute
    value), finite ``float``, ``bool`` or ``None``; the whole dict at most
    :data:`MAX_META_BYTES` bytes as JSON.

    Raises:
        UnsupportedValueError: naming the key at fault (``where``) and what to do.
    """
    if not isinstance(meta, Mapping):
        raise _refuse(what, meta, f"must be a dict of JSON scalars, not {type(meta).__qualname__}")
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise _refuse(f"{what} key {key!r}", key, f"keys must be str, not {type(key).__qualname__}")
        where = f"{what}[{key!r}]"
        if not isinstance(value, _SCALARS):
            raise _refuse(
                where,
                value,
                f"{_public_type(type(value)).__qualname__} is not a JSON scalar; give a str, int, float, bool or None "
                "(str(value) or an id of it, for an object)",
            )
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise _refuse(where, value, f"{value} is out of range (at most 2**53 - 1 either way); store it as a str")
        if isinstance(value, float) and not math.isfinite(value):
            raise _refuse(where, value, f"{value} is not a finite number (JSON has no NaN or infinity)")
        out[_plain(key)] = _plain(value)
    check_size(out, what=what)
    return out


def _plain(x: Any) -> Any:
    """*x* as its builtin type (a ``StrEnum`` member as its str, an ``IntEnum`` member as its int)."""
    t = type(x)
    if t in _SCALARS:
        return x
    for base in (bool, str, int, float):
        if isinstance(x, base):
            return base.__str__(x) if base is str else base(x)
    return x  # pragma: no cover - only scalars reach here


def check_size(meta: dict[str, Any], *, what: str = "meta") -> bytes:
    """*meta* (checked by :func:`check_meta`) as JSON; refused if it is larger than :data:`MAX_META_BYTES`.

    Raises:
        UnsupportedValueError: too large, or a str that UTF-8 cannot encode (a lone surrogate).
    """
    try:
        data = orjson.dumps(meta)
    except orjson.JSONEncodeError as err:
        raise _refuse(what, meta, f"cannot be written as JSON ({err}); use str values UTF-8 can encode") from err
    if len(data) > MAX_META_BYTES:
        raise _refuse(
            what,
            meta,
            f"takes {len(data)} bytes as JSON, more than the {MAX_META_BYTES} allowed; "
            "keep identifiers and short reasons there, and larger data in the image",
        )
    return data


def meta_event(meta: dict[str, Any]) -> tuple[Kind, None, tuple[dict[str, Any]]]:
    """The pending ``tx.meta`` event of checked *meta*: first in its commit, target none (0 in the row)."""
    return (TX_META, None, (meta,))


def meta_of_row(row: EventRow) -> dict[str, Any]:
    """The metadata a ``tx.meta`` row holds, checked as the fold checks it (:func:`check_row`)."""
    return check_row(row)


def check_row(row: EventRow) -> dict[str, Any]:
    """The metadata of ``tx.meta`` row *row*, which must be first in its transaction and hold ``[[{...}]]``:
    a flat dict of str keys and JSON scalar values, as :func:`check_meta` lets through.

    Raises:
        CorruptLogError: naming the row's seq and what is wrong.
    """
    if row.seq != row.tx:
        raise CorruptLogError(
            f"event seq {row.seq} ({META_KIND}) is not the first row of its transaction {row.tx}: "
            "the metadata of a transaction is written first in it",
            seq=row.seq,
            table="memimg_events",
        )
    try:
        meta = orjson.loads(row.payload)[0][0]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
        meta = None
    if type(meta) is not dict or not all(type(v) in _SCALARS for v in meta.values()):
        raise CorruptLogError(
            f"event seq {row.seq} ({META_KIND}) does not hold a metadata object (a flat dict of JSON scalars)",
            seq=row.seq,
            table="memimg_events",
        )
    return meta


def with_meta(rows: Iterable[EventRow], first: Callable[[int], EventRow | None]) -> Iterator[Event]:
    """The events of checked *rows*, each carrying its transaction's metadata (``{}`` when none).

    A transaction's ``tx.meta`` row comes first in it, so the metadata is
    carried along as the rows stream by. When the rows start in the middle
    of a transaction, *first* reads that transaction's first row (by its seq,
    the ``tx``; ``None`` if it is no longer stored).
    """
    tx = -1
    meta: dict[str, Any] = {}
    for r in rows:
        if r.seq != r.tx and r.kind == META_KIND:
            check_row(r)  # not first in its transaction: refused
        if r.tx != tx:
            tx = r.tx
            head = r if r.seq == tx else first(tx)
            meta = meta_of_row(head) if head is not None and head.kind == META_KIND and head.seq == tx else {}
        yield Event.from_row(r, meta)


def _checked(rows: Iterable[Any]) -> Iterator[EventRow]:
    for raw in rows:
        row = EventRow(*raw)
        verify_event(row)
        yield row


def read_events(read: Callable[..., Iterable[Any]], after: int = 0) -> Iterator[Event]:
    """The events with ``seq > after`` that *read* (a store's ``read``) gives, checked, each with its metadata.

    Raises:
        CorruptLogError: a row fails its checksum, or a ``tx.meta`` row is not first in its transaction or holds
            no metadata object.
    """

    def first(tx: int) -> EventRow | None:
        for row in _checked(read(after=tx - 1, limit=1)):
            return row if row.seq == tx else None
        return None

    return with_meta(_checked(read(after=after)), first)
