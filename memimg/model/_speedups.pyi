"""Type stub of the optional compiled accelerator (memimg/model/_speedups.c); see memimg.model._accel."""

from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

class TrackedField:
    """The read hook of an entity field while tracking is on (compiled fast path)."""

    name: str
    slot: Any
    get: Callable[[Any], Any]
    set: Callable[[Any, Any], None]
    def __init__(self, name: str, slot: Any) -> None: ...
    def __get__(self, obj: Any, cls: type | None = None) -> Any: ...
    def __set__(self, obj: Any, value: Any) -> None: ...
    def __delete__(self, obj: Any) -> None: ...

class FastSetattr:
    """An entity's ``__setattr__``: the journal fast path compiled, the rest in Python (:attr:`slow`)."""

    slow: Callable[[Any, str, Any], None]
    def __init__(
        self, plain: frozenset[str], kind: Any, scalars: frozenset[type], slow: Callable[[Any, str, Any], None]
    ) -> None: ...
    def __call__(self, obj: Any, name: str, value: Any) -> None: ...

def configure(base: type, state: Any, python_get: Callable[[Any, Any, type | None], Any], /) -> None: ...
def hook(cls: type, /) -> bool: ...
def unhook(cls: type, /) -> bool: ...
def changed() -> None: ...
def same_dir(path: bytes, ctime_ns: int, ino: int, /) -> bool: ...

# change feeds (memimg.image._feeds): the Python functions of the same names, compiled
def configure_feeds(
    feed: type,
    subscription: type,
    commit: type,
    change: type,
    deliver_entry: Callable[[Any, Any], None],
    failed: Callable[[Any, int, BaseException], None],
    note_field: Callable[[Any, Any, int, str, Any, Any], Any],
    missing: Any,
    /,
) -> None: ...
def first_noted(
    row: Any,
    meta: dict[str, Any],
    subs: tuple[Any, ...],
    target: Any,
    kind: str,
    field: str | None,
    key: Any,
    old: Any,
    new: Any,
    index: int | None,
    /,
) -> Any: ...
def note_field(feed: Any, target: Any, oid: int, name: str, value: Any, row: Any, /) -> Any: ...
def deliver_to_bound(feed: Any, /) -> None: ...
def encode_sets(
    pending: list[Any],
    at: int,
    rows: list[Any],
    tx: int,
    ts: int,
    kind: Any,
    current: set[Any],
    checksums: bool,
    dumps: Callable[[Any], bytes],
    /,
) -> int:
    """Append the rows of ``pending[at:]``'s leading run of ``obj.set`` events of scalars to *rows*; the index
    reached (see ``memimg.image._encode``)."""

def apply_sets(events: list[Any], at: int, setters: dict[type, dict[str, Any]], kind: Any, /) -> int:
    """Apply ``events[at:]``'s leading run of ``obj.set`` events with *setters* (``ObjectTable.setters``); the
    index reached (see ``memimg.image._engine``)."""

def fold_sets(
    rows: Iterator[Any],
    expected: int,
    objects: list[Any],
    fast_fields: dict[type, dict[str, Any]],
    code: int,
    checked: bool,
    progress: bool,
    decode: Callable[[Any], Any],
    loads: Callable[[bytes], Any],
    /,
) -> tuple[int, Any] | int:
    """Apply the rows of ``memimg.core._fold``'s fast path from *rows*; the next expected seq and the row it
    handed back, or the next expected seq alone once *rows* ended."""

def catch_sets(
    first: Any,
    rows: Iterator[Any],
    expected: int,
    objects: list[Any],
    fast_fields: dict[type, dict[str, Any]],
    setters: dict[type, dict[str, Any]],
    code: int,
    decode: Callable[[Any], Any],
    loads: Callable[[bytes], Any],
    progress: list[int],
    watch: AbstractSet[Any],
    /,
) -> tuple[int, int, Any, Any, BaseException | None, bool]:
    """Apply *first* and the rows after it from *rows* while each is a transaction of one ``obj.set`` row of
    ``memimg.core._fold``'s fast path, with *setters* (``ObjectTable.setters``): the next expected seq, the
    largest ts applied (-1: none), the row it stopped at and the one after it if read (``None`` otherwise), the
    exception that stopped it (``None``: none) and whether the row it stopped at is in doubt; *progress* keeps the
    next expected seq and the largest ts after each row applied; a non-empty *watch* stops it (see the C file)."""

def outcome(
    events: list[Any],
    set_kind: Any,
    del_kind: Any,
    add_kind: Any,
    native: Any,
    counter_fields: Callable[[type], Any],
    /,
) -> list[Any] | None:
    """``TxState.outcome``'s loop over the flat *events*: their triples less the replaced sets; None: an event the
    Python loop must see."""

def encode_states(
    batch: list[Any],
    plans: dict[type, tuple[Any, ...]],
    encoders: Any,
    out: list[Any],
    seen: bytearray,
    queue: list[Any],
    linked: set[type],
    value: Callable[[Any], Any],
    list_type: type,
    /,
) -> None:
    """Append the states of *batch*'s objects to *out*, as the snapshot walk's encoders make them (see
    ``memimg.core._snapshotter``)."""

def bulk_records(
    queue: list[Any],
    at: int,
    plans: dict[type, tuple[str, tuple[str, ...], tuple[Any, ...], tuple[Any, ...]]],
    records: list[Any],
    owner: Any,
    linked: set[type],
    writers: dict[type, Any],
    objects: list[Any],
    tracked_list: type,
    memo: dict[int, Any],
    replaced: list[Any],
    /,
) -> int:
    """Append the records of ``queue[at:]`` to *records* as the bulk attach's record writers make them, for as
    long as each object is of the common case (see ``memimg.image._bulk``); the index of the first one left to
    the Python walk (``len(queue)`` when none)."""

class DictRead:
    """A tracked dict's ``__getitem__`` while tracking is on: the common read in a transaction compiled."""

    slow: Callable[..., Any]
    __wrapped__: Callable[..., Any]
    def __init__(self, slow: Callable[..., Any]) -> None: ...
    def __call__(self, coll: Any, key: Any, /) -> Any: ...

def configure_reads(tx: type, raw: dict[type, type], deleted: Any, /) -> None: ...
def sync(tx: Any, /) -> bool: ...
