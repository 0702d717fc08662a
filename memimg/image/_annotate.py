"""``img.annotate(**meta)``: metadata every commit of this thread or task carries while the block runs.

The annotations in effect are one context variable of the image (the
tuple of active blocks; kept by its auto-committing writer), so they
belong to the thread or asyncio task that entered them:
an asyncio task started inside the block inherits them, as it inherits
every context variable; a new thread does not. A commit made outside a
transaction carries them; a transaction carries those in effect when it
began and those entered while it is open (inside a savepoint: if the
savepoint is kept), under its own ``meta``. Nested
blocks merge, the inner winning.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

from memimg._errors import MemimgError
from memimg.core._meta import check_meta, check_size
from memimg.image._tx import Savepoint, TxState

__all__ = ["Annotation"]


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

    #: the savepoint open in this thread or task (None: none, or not in a transaction)
    savepoint: contextvars.ContextVar[Savepoint | None]

    def current_tx(self) -> TxState | None: ...


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
        tx = self._engine.current_tx()
        if tx is not None and self._meta:
            # inside a savepoint, kept with it: dropped if it is rolled back
            tx.add_meta(self._meta, annotation=True, sp=self._engine.savepoint.get())
        self._state = "active"
        writer.ever_annotated = True  # before the variable is set: a commit that sees the block looks
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
            merged = {**merged, **annotation._meta}
            rebuilt.append((annotation, merged))
    return tuple(rebuilt)
