"""``img.annotate(**meta)``: metadata every commit of this thread or task carries while the block runs.

The annotations in effect are one context variable of the image (the
tuple of active blocks; kept by its auto-committing writer), so they
belong to the thread or asyncio task that entered them:
an asyncio task started inside the block inherits them, as it inherits
every context variable; a new thread does not. Nested blocks merge, the
inner winning.

Meta belongs to the changes made while a block is active: a commit made
outside a transaction carries the blocks in effect when it is made; a
transaction carries the blocks in effect in the thread or task that made
each of its changes, when it made it (:meth:`TxState._note_annotation
<memimg.image._tx.TxState._note_annotation>`; inside a savepoint: kept with
it), under its own ``meta`` -- whenever it commits, even after the block
exited. A block that began and ended around a transaction without a change
of it in between lends it nothing, nor does one exited before the
transaction's first change.

Blocks exited out of order leave the merged metadata of the blocks after
them rebuilt; a rebuilt merge is not checked for size when it is made (an
exit does not fail), so it is marked (:class:`Rebuilt`) and the commit
that would carry it checks it, before anything is written.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

from memimg._errors import MemimgError
from memimg.core._meta import check_meta, check_size

__all__ = ["Annotation", "Rebuilt", "layer_meta"]


class Annotating(Protocol):
    """Where an image keeps the annotations in effect: its auto-committing writer."""

    #: the active blocks of this thread or task, outermost first, each with the metadata merged up to it
    annotation: contextvars.ContextVar[tuple[tuple[Any, dict[str, Any]], ...]]
    #: set when a block is first entered on the image, never reset (False: commits need not look)
    ever_annotated: bool


class Annotated(Protocol):
    """What an annotation needs of its image's engine."""

    @property
    def writer(self) -> Annotating: ...

    def current_tx(self) -> Any:
        """The open transaction of this thread or task, or None."""


class Rebuilt(dict[str, Any]):
    """Merged metadata rebuilt when a block exited out of order: not checked for size yet (see the module)."""

    __slots__ = ()


def layer_meta(layers: tuple[tuple[Any, dict[str, Any]], ...]) -> dict[str, Any]:
    """The metadata a commit made under non-empty *layers* carries, checked.

    Raises:
        UnsupportedValueError: it is larger than allowed (blocks exited out of order uncovered an outer
            block's larger values); nothing is written.
    """
    meta = layers[-1][1]
    if type(meta) is Rebuilt:
        meta = dict(meta)
        check_size(meta, what="meta of the annotate blocks still active (after one exited out of order)")
    return meta


class Annotation:
    """What :meth:`MemoryImage.annotate` returns: a context manager, entered once.

    Entering it puts its metadata (merged over the annotations already in
    effect) on every commit made in this thread or task until it exits;
    exiting takes its metadata off again, even when blocks entered later
    in this thread or task are still active (exited out of order: two
    generators, say), which keep theirs.
    """

    __slots__ = ("_engine", "_meta", "_state")

    def __init__(self, engine: Annotated, meta: dict[str, Any]) -> None:
        self._engine = engine
        self._meta = check_meta(meta)
        self._state = "new"

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata this block adds (a copy)."""
        return dict(self._meta)

    def __enter__(self) -> Annotation:
        if self._state != "new":
            raise MemimgError("an img.annotate(...) block is entered once; call img.annotate(...) again")
        writer = self._engine.writer
        var = writer.annotation
        layers = var.get()
        merged = self._meta
        if layers:
            merged = {**layers[-1][1], **merged}
            check_size(merged)
        self._state = "active"
        writer.ever_annotated = True  # before the variable is set: a commit that sees the block looks
        tx = self._engine.current_tx()
        if tx is not None:  # its field sets must note this block from now on: none may take the fast path
            tx.no_fast_path()
        if merged:
            # set, not a token reset on exit: a web framework may enter and exit in two copies of one context
            var.set((*layers, (self, merged)))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._state == "active":
            self._state = "done"
            var = self._engine.writer.annotation
            layers = var.get()
            if layers and layers[-1][0] is self:
                var.set(layers[:-1])
            elif any(a is self for a, _ in layers):
                var.set(_without(layers, self))

    def __repr__(self) -> str:
        return f"<memimg annotation {self._meta!r}, {self._state}>"


Layers = tuple[tuple[Any, dict[str, Any]], ...]


def _without(layers: Layers, gone: Annotation) -> Layers:
    """*layers* without *gone*'s, the metadata merged again for the layers after it."""
    rebuilt: list[tuple[Any, dict[str, Any]]] = []
    merged: dict[str, Any] = {}
    for annotation, _ in layers:
        if annotation is not gone:
            merged = Rebuilt({**merged, **annotation._meta})
            rebuilt.append((annotation, merged))
    return tuple(rebuilt)
