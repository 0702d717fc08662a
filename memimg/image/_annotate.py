"""``img.annotate(**meta)``: metadata every commit of this thread or task carries while the block runs.

The annotations in effect are one context variable of the image (a dict,
or None; kept by its auto-committing writer), so they belong to the thread or asyncio task that entered them:
an asyncio task started inside the block inherits them, as it inherits
every context variable; a new thread does not. A commit made outside a
transaction carries them; a transaction carries those in effect when it
began and those entered while it is open, under its own ``meta``. Nested
blocks merge, the inner winning.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Protocol

from memimg._errors import MemimgError
from memimg.core._meta import check_meta, check_size
from memimg.image._tx import TxState

__all__ = ["Annotation"]


class Annotating(Protocol):
    """Where an image keeps the annotations in effect: its auto-committing writer."""

    annotation: contextvars.ContextVar[dict[str, Any] | None]
    #: active annotate blocks, in every thread and task (0: commits need not look)
    annotating: int
    annotation_lock: threading.Lock


class Annotated(Protocol):
    """What an annotation needs of its image's engine."""

    @property
    def writer(self) -> Annotating: ...

    def current_tx(self) -> TxState | None: ...


class Annotation:
    """What :meth:`MemoryImage.annotate` returns: a context manager, entered once.

    Entering it puts its metadata (merged over the annotations already in
    effect) on every commit made in this thread or task until it exits;
    exiting restores the annotations that were in effect before.
    """

    __slots__ = ("_engine", "_meta", "_previous", "_state")

    def __init__(self, engine: Annotated, meta: dict[str, Any]) -> None:
        self._engine = engine
        self._meta = check_meta(meta)
        self._previous: dict[str, Any] | None = None
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
        outer = var.get()
        merged = self._meta
        if outer:
            merged = {**outer, **merged}
            check_size(merged)
        tx = self._engine.current_tx()
        if tx is not None and self._meta:
            tx.add_meta(self._meta, annotation=True)
        self._previous = outer
        self._state = "active"
        with writer.annotation_lock:
            writer.annotating += 1
        # set, not a token reset on exit: a web framework may enter and exit in two copies of one context
        var.set(merged or None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._state == "active":
            self._state = "done"
            writer = self._engine.writer
            writer.annotation.set(self._previous)
            with writer.annotation_lock:
                writer.annotating -= 1

    def __repr__(self) -> str:
        return f"<memimg annotation {self._meta!r}, {self._state}>"
