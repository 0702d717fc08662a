"""The module-level functions: ``open``, ``serialize``, ``deserialize``, ``replay``."""

from __future__ import annotations

import builtins
import copy
import importlib
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from memimg._errors import MemimgError, ProtectionError
from memimg.core._codec import ENTITY, PLAIN, TRACKED, Codec
from memimg.core._fold import fold
from memimg.core._protect import Protection
from memimg.core._reader import Reader
from memimg.core._records import describe, describe_detached
from memimg.core._rows import Event, EventRow
from memimg.core._schema import SchemaReport
from memimg.core._snapshot import load_snapshot
from memimg.core._table import ObjectTable
from memimg.core._values import Converter
from memimg.core._values import converter as default_converter
from memimg.image._image import MemoryImage
from memimg.model import SHELL
from memimg.stores._memory import MemoryStore
from memimg.stores._ndjson import NDJSONStore
from memimg.stores._ndjsonswap import finish_swap
from memimg.stores._protected import ProtectedStore, protect
from memimg.stores._protocol import Store
from memimg.stores._sqlite import SQLiteStore

__all__ = [
    "deserialize",
    "import_modules",
    "migrate",
    "open",
    "plain_store",
    "protection_for",
    "replay",
    "serialize",
    "store_for",
]


def store_for(
    target: str | os.PathLike[str] | Store,
    *,
    sync: str = "normal",
    readonly: bool = False,
    busy_timeout: float = 10.0,
    encryption_key: object = None,
    integrity_key: object = None,
    compression: str | None = None,
    protection: Protection | None = None,
    **options: Any,
) -> Store:
    """The store a ``memimg.open`` target names (see :func:`open`), opened with the protection options.

    Raises:
        ProtectionError: a key is malformed, missing, or not the log's (the
            log is left as it was).
    """
    if protection is None:
        protection, failure = protection_for(encryption_key, integrity_key, compression)
        del encryption_key, integrity_key  # not in this frame's locals when a later error's traceback shows them
        if failure is not None:
            raise failure.with_traceback(None)
    if isinstance(target, ProtectedStore):  # opened with its keys already: never sealed twice
        ours = (target.protection.key_id, target.protection.integrity_id)
        if protection is not None and (protection.key_id, protection.integrity_id) != ours:
            raise ProtectionError(
                f"{target.description!r} is a store opened with other keys than the ones given; nothing was changed"
            )
        return target
    if isinstance(target, Store):
        return protect(target, protection)
    store = plain_store(target, sync=sync, readonly=readonly, busy_timeout=busy_timeout, **options)
    try:
        return protect(store, protection)
    except BaseException:
        store.close()
        raise


def protection_for(
    encryption_key: object, integrity_key: object, compression: str | None
) -> tuple[Protection | None, Exception | None]:
    """The :class:`Protection` of the options (None: none given), or the error they raise.

    The error is returned, not raised, so that the caller can drop the keys
    from its frame and raise it with no traceback into frames that held them.
    """
    if encryption_key is None and integrity_key is None and compression is None:
        return None, None
    try:
        return Protection(encryption_key=encryption_key, integrity_key=integrity_key, compression=compression), None
    except (MemimgError, ValueError) as err:
        return None, err


def plain_store(
    target: str | os.PathLike[str], *, sync: str, readonly: bool, busy_timeout: float, **options: Any
) -> Store:
    """The store at *target* as it is, its protection neither checked nor applied (what ``rekey`` rewrites)."""
    if not isinstance(target, (str, os.PathLike)):
        raise TypeError(f"memimg.open target must be a path, a URL or a Store, not {type(target).__qualname__}")
    text = os.fspath(target)
    if text == ":memory:":
        return MemoryStore(readonly=readonly)
    if "://" in text:
        try:
            from memimg.stores._sqlalchemy import SQLAlchemyStore
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise MemimgError(
                f"{text.split('://')[0]}:// URLs need SQLAlchemy: pip install 'memimg[sqlalchemy]' ({err})"
            ) from err
        if text.startswith("sqlite"):
            options.setdefault("connect_args", {}).setdefault("timeout", busy_timeout)
        return SQLAlchemyStore(text, sync=sync, readonly=readonly, **options)
    if text.endswith(".ndjson"):
        unexpected = set(options) - {"keep_segments"}
        if unexpected:
            raise TypeError(f"unexpected options for an NDJSON log: {', '.join(sorted(unexpected))}")
        finish_swap(text)  # a rekey's swap that a crash cut short (see memimg/stores/_ndjsonswap.py)
        return NDJSONStore(text, sync=sync, readonly=readonly, busy_timeout=busy_timeout, **options)
    if options:
        raise TypeError(f"unexpected options for an SQLite file: {', '.join(sorted(options))}")
    return SQLiteStore(text, sync=sync, readonly=readonly, busy_timeout=busy_timeout)


def open(  # noqa: A001 - the public name is fixed by the spec
    target: str | os.PathLike[str] | Store = ":memory:",
    *,
    root: Callable[[], Any] = dict,
    snapshot_every: int | str | None = "auto",
    sync: str = "normal",
    readonly: bool = False,
    converter: Converter | None = None,
    busy_timeout: float = 10.0,
    progress: Callable[[str, int, int], None] | None = None,
    follow: bool = False,
    removed_types: Iterable[str] = (),
    on_schema_drift: str = "raise",
    generic_types: bool = False,
    import_types: Iterable[str] = (),
    encryption_key: object = None,
    integrity_key: object = None,
    compression: str | None = None,
    **store_options: Any,
) -> MemoryImage:
    """Open the image stored at *target*, creating it if the store is empty.

    Args:
        target: a filesystem path (an SQLite file, the default store; a
            path ending in ``.ndjson`` is an NDJSON log, see :class:`NDJSONStore`),
            ``":memory:"`` (nothing on disk), a SQLAlchemy URL
            (``"postgresql+psycopg://..."``), or a :class:`Store`.
        root: a class or zero-argument factory for the root object, called
            only when the store is empty.
        snapshot_every: events between automatic snapshots; ``"auto"`` (the
            default) snapshots after 10,000 events or as many events as there
            are objects, whichever is larger; ``None`` disables them.
        sync: ``"normal"`` -- every commit survives a crash of the process;
            ``"full"`` -- also an OS crash or power loss (an fsync per commit).
        readonly: follow the log; every write raises :class:`ReadOnlyError`.
        converter: the :class:`memimg.Converter` for value types (default:
            the process-wide ``memimg.converter``).
        busy_timeout: seconds to wait for another process's write lock.
        progress: called as ``progress(phase, done, total)`` during long
            recoveries.
        removed_types: stored type names whose objects are dropped: references
            to them become ``None`` and collections lose them (counted in
            ``img.schema_report``).
        on_schema_drift: ``"raise"`` (the default) refuses to open a log whose
            schema differs from the code in undeclared ways, listing every
            difference with its fix; ``"drop"`` opens it anyway, dropping
            what the code does not declare.
        import_types: modules to import before reading the log, so the
            classes they define are registered (``("shop.models",)``). A
            log is only data: reading it never imports a module it names,
            so a type whose module is not imported otherwise -- an enum
            first met in the log, say -- needs its module named here or
            imported beforehand.
        generic_types: read types that no loaded class claims into generic
            stand-in classes made from the stored schema, instead of raising
            (meant for tools that inspect any image; the stand-ins are
            registered in this process).
        encryption_key: encrypt event payloads and snapshots with
            AES-256-GCM under this key (32 bytes, or their hex or base64
            text; needs ``memimg[crypto]``). A log encrypted once must
            always be opened with its key; see docs/security.md.
        integrity_key: chain every row with an HMAC-SHA256 under this key
            (32 bytes, hex or base64), so that an edited, inserted, deleted
            or reordered row is a :class:`CorruptLogError`.
        compression: ``"zstd"`` (needs ``memimg[zstd]``) or ``"zlib"``:
            compress snapshots and event payloads over 256 bytes.
        follow: apply other processes' commits in a background thread as
            they happen (see :meth:`MemoryImage.follow`); otherwise they are
            applied at :meth:`~MemoryImage.refresh` and when a transaction
            begins.

    Raises:
        ProtectionError: a key is malformed, missing or wrong, or a key was
            given for a plain log (nothing is changed).
        MemimgError: the target is not a memimg store (it is left untouched),
            a module of *import_types* cannot be imported, or the log cannot
            be read (``CorruptLogError``, ``UnknownTypeError``).
    """
    protection, failure = protection_for(encryption_key, integrity_key, compression)
    del encryption_key, integrity_key  # not in this frame's locals when a later error's traceback shows them
    if failure is not None:
        raise failure.with_traceback(None)
    import_modules(import_types, "import_types")
    store = store_for(
        target, sync=sync, readonly=readonly, busy_timeout=busy_timeout, protection=protection, **store_options
    )
    try:
        img = MemoryImage(
            store,
            root=root,
            converter=converter,
            snapshot_every=snapshot_every,
            readonly=readonly,
            progress=progress,
            removed_types=removed_types,
            on_schema_drift=on_schema_drift,
            generic_types=generic_types,
        )
        if follow:
            img.follow()
        return img
    except BaseException:
        if not isinstance(target, Store):
            store.close()
        raise


def import_modules(names: Iterable[str], source: str) -> None:
    """Import the modules *names* (the caller's explicit choice; *source* says where it was made)."""
    if isinstance(names, str):
        raise TypeError(f"{source} takes module names, such as ({names!r},), not a str")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise MemimgError(f"cannot import {name!r} (from {source}): {err}") from err


def serialize(obj: Any, *, converter: Converter | None = None) -> dict[str, Any]:
    """The snapshot-format description (JSON data) of *obj* and everything it reaches.

    Objects of an image keep their ids; a free-standing graph is numbered
    from 1, and so is what a transaction sees when called inside one.
    ``deserialize`` and ``replay(events, root=...)`` read it back.
    """
    owner = getattr(obj, "_mi_img", None)
    if isinstance(owner, MemoryImage):
        engine = owner._engine
        if engine.current_tx() is not None:  # inside a transaction: describe what the transaction sees
            return serialize(copy.deepcopy(obj), converter=engine.table.codec.converter)
        with engine.lock:
            table = engine.table
            return describe(table.codec, [obj], _oid_of, seq=engine.seq, next_oid=len(table.objects))
    codec = Codec(converter or default_converter, SHELL)
    if codec.classify(builtins.type(obj)) not in (ENTITY, TRACKED, PLAIN):
        raise TypeError(f"serialize takes an entity or a list, dict or set, not {builtins.type(obj).__qualname__}")
    return describe_detached(codec, obj)


def deserialize(data: dict[str, Any], *, converter: Converter | None = None) -> Any:
    """The graph *data* (from :func:`serialize` or a snapshot) describes, free-standing."""
    reader = _free_reader(converter)
    load_snapshot(reader, data)
    return reader.table.objects[data["root"]]


def replay(
    events: Iterable[Event | EventRow], root: dict[str, Any] | None = None, *, converter: Converter | None = None
) -> Any:
    """Fold *events* into a new, free-standing graph and return its root.

    The pure functional core: ``replay(img.events())`` rebuilds the image from
    nothing, and the same events always give an equal graph. *root*, if
    given, is snapshot-format data (from :func:`serialize` of an image's
    root) to start from; the events must then follow its seq (earlier ones
    are skipped).

    Raises:
        CorruptLogError: the events skip a seq or do not apply.
    """
    reader = _free_reader(converter)
    expected = 1
    if root is not None:
        load_snapshot(reader, root)
        expected = int(root.get("seq", 0)) + 1

    def rows() -> Iterator[EventRow]:
        for e in events:
            row = EventRow(e.seq, e.tx, 0, e.kind, e.target, e.payload, 0) if isinstance(e, Event) else EventRow(*e)
            if row.seq >= expected:
                yield row

    fold(rows(), reader, expected=expected, where="the events", table="", checked=True)
    return reader.table.root


def _free_reader(converter: Converter | None) -> Reader:
    """A reader into a new, free-standing table (objects owned by no image)."""
    return Reader(ObjectTable(SHELL, Codec(converter or default_converter, SHELL)))


_oid_of = operator.attrgetter("_mi_oid")


def migrate(target: str | os.PathLike[str] | Store, **options: Any) -> SchemaReport:
    """Bring a stored image up to the current classes, once.

    Opens *target* with the upgraders, renames and removals the code declares
    (and any ``open`` options, such as ``removed_types``), writes a snapshot
    in the current schema -- so later opens need none of it for the history
    before -- and returns a report of what changed.
    """
    with open(target, **options) as img:
        report = img.schema_report
        report.snapshot_seq = img.snapshot()
    return report
