"""The module-level functions: ``open``, ``serialize``, ``deserialize``, ``replay``."""

from __future__ import annotations

import builtins
import copy
import importlib
import os
from collections.abc import Callable, Iterable
from typing import Any

from memimg._errors import CorruptLogError, MemimgError
from memimg.core import _codec
from memimg.core._graph import Graph
from memimg.core._rows import Event
from memimg.core._schema import SchemaReport
from memimg.image._image import MemoryImage
from memimg.stores._memory import MemoryStore
from memimg.stores._protocol import EventRow, Store
from memimg.stores._sqlite import SQLiteStore

__all__ = ["deserialize", "import_modules", "migrate", "open", "replay", "serialize", "store_for"]


def store_for(
    target: str | os.PathLike[str] | Store,
    *,
    sync: str = "normal",
    readonly: bool = False,
    busy_timeout: float = 10.0,
    **options: Any,
) -> Store:
    """The store a ``memimg.open`` target names (see :func:`open`)."""
    if isinstance(target, Store):
        return target
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
    converter: _codec.Converter | None = None,
    busy_timeout: float = 10.0,
    progress: Callable[[str, int, int], None] | None = None,
    follow: bool = False,
    removed_types: Iterable[str] = (),
    on_schema_drift: str = "raise",
    generic_types: bool = False,
    import_types: Iterable[str] = (),
    **store_options: Any,
) -> MemoryImage:
    """Open the image stored at *target*, creating it if the store is empty.

    Args:
        target: a filesystem path (an SQLite file, the default store),
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
        follow: apply other processes' commits in a background thread as
            they happen (see :meth:`MemoryImage.follow`); otherwise they are
            applied at :meth:`~MemoryImage.refresh` and when a transaction
            begins.

    Raises:
        MemimgError: the target is not a memimg store (it is left untouched),
            a module of *import_types* cannot be imported, or the log cannot
            be read (``CorruptLogError``, ``UnknownTypeError``).
    """
    import_modules(import_types, "import_types")
    store = store_for(target, sync=sync, readonly=readonly, busy_timeout=busy_timeout, **store_options)
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


def serialize(obj: Any, *, converter: _codec.Converter | None = None) -> dict[str, Any]:
    """The snapshot-format description (JSON data) of *obj* and everything it reaches.

    Objects of an image keep their ids; a free-standing graph is numbered
    from 1, and so is what a transaction sees when called inside one.
    ``deserialize`` and ``replay(events, root=...)`` read it back.
    """
    owner = getattr(obj, "_mi_img", None)
    if isinstance(owner, MemoryImage) and owner._mi_current.get() is not None:
        # inside a transaction: describe what the transaction sees
        return serialize(copy.deepcopy(obj), converter=owner.converter)
    if isinstance(owner, MemoryImage):
        with owner._lock:
            graph = owner._graph
            return graph._describe([obj], lambda o: o._mi_oid, owner.seq)
    graph = Graph(converter or _codec.converter)
    shape = graph.codec.classify(builtins.type(obj))
    if shape not in (_codec.ENTITY, _codec.TRACKED, _codec.PLAIN):
        raise TypeError(f"serialize takes an entity or a list, dict or set, not {builtins.type(obj).__qualname__}")
    return graph.describe_detached(obj)


def deserialize(data: dict[str, Any], *, converter: _codec.Converter | None = None) -> Any:
    """The graph *data* (from :func:`serialize` or a snapshot) describes, free-standing."""
    graph = Graph(converter or _codec.converter)
    graph.load_snapshot(data)
    return graph.objects[data["root"]]


def replay(
    events: Iterable[Event | EventRow], root: dict[str, Any] | None = None, *, converter: _codec.Converter | None = None
) -> Any:
    """Fold *events* into a new, free-standing graph and return its root.

    The pure functional core: ``replay(img.events())`` rebuilds the image from
    nothing, and the same events always give an equal graph. *root*, if
    given, is snapshot-format data (from :func:`serialize` of an image's
    root) to start from; the events must then follow its seq.

    Raises:
        CorruptLogError: the events skip a seq or do not apply.
    """
    graph = Graph(converter or _codec.converter)
    expected = 1
    if root is not None:
        graph.load_snapshot(root)
        expected = int(root.get("seq", 0)) + 1
    for e in events:
        if isinstance(e, Event):
            row = EventRow(e.seq, e.tx, 0, e.kind, e.target, e.payload, 0)
        else:
            row = EventRow(*e)
        if row.seq < expected:
            continue
        if row.seq != expected:
            raise CorruptLogError(f"event seq {expected} is missing (the next is {row.seq})", seq=expected, table="")
        graph.apply_row(row)
        expected += 1
    return graph.root


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
