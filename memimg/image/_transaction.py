"""The transaction handles: :class:`Transaction` (``img.begin()``) and :class:`TxScope` (``img.transaction()``).

A handle opens a transaction of its image in this thread or task -- or, if
one is open there already, a savepoint inside it (nested transactions are
savepoints) -- and ends it: ``save()`` commits it (a savepoint keeps its
changes in the enclosing transaction), ``discard()`` rolls it back. The
state of the transaction is its :class:`~memimg.image._tx.TxState`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from memimg._errors import ConflictError, MemimgError
from memimg.image._retry import backoff
from memimg.image._tx import Savepoint, TxState

__all__ = ["Engine", "Transaction", "TxScope", "begin"]


class Engine(Protocol):
    """What the handles need of an image's engine (:class:`~memimg.image._engine.Engine`)."""

    savepoint: contextvars.ContextVar[Savepoint | None]
    scopes: contextvars.ContextVar[tuple[Any, ...]]

    def check_open(self) -> None: ...

    def current_tx(self) -> TxState | None: ...

    def begin(self) -> TxState: ...

    def end(self, state: TxState, *, commit: bool) -> None: ...


F = TypeVar("F", bound=Callable[..., Any])


def begin(engine: Engine, meta: dict[str, Any] | None = None) -> Transaction:
    """Open a transaction of *engine*'s image (a savepoint if one is open in this thread or task).

    *meta* has been checked (:func:`memimg.core._meta.check_meta`).
    """
    engine.check_open()
    current = engine.current_tx()
    if current is not None:
        sp = current.savepoint(engine.savepoint.get())
        engine.savepoint.set(sp)
        if meta:
            current.add_meta(meta, sp=sp)
        return Transaction(engine, current, sp)
    state = engine.begin()
    if meta:
        state.add_meta(meta)
    return Transaction(engine, state)


class Transaction:
    """A transaction opened with :meth:`MemoryImage.begin`, or a savepoint inside one.

    ``save()`` commits it (a savepoint: keeps its changes in the enclosing
    transaction); ``discard()`` rolls it back. Also a context manager: commit
    on normal exit, discard on an exception (which propagates).
    """

    __module__ = "memimg"
    __slots__ = ("_ended", "_engine", "_savepoint", "_state", "nested")

    def __init__(self, engine: Engine, state: TxState, savepoint: Savepoint | None = None) -> None:
        self._engine = engine
        self._state = state
        self._savepoint = savepoint
        #: Whether this is a savepoint inside an enclosing transaction.
        self.nested = savepoint is not None
        self._ended = False

    @property
    def active(self) -> bool:
        """Whether the transaction can still be saved or discarded."""
        return not self._ended

    def _end(self) -> None:
        if self._ended:
            raise MemimgError("this transaction has already been saved or discarded")
        self._ended = True

    def save(self) -> None:
        """Commit (or, for a savepoint, keep its changes in the enclosing transaction).

        Raises:
            ConflictError: another commit overtook what this transaction read
                or wrote; nothing of it was applied.
        """
        self._end()
        sp = self._savepoint
        if sp is not None:
            self._engine.savepoint.set(sp.parent)
            self._state.release(sp)
        else:
            self._engine.end(self._state, commit=True)

    def discard(self) -> None:
        """Roll back: nothing of the transaction (or savepoint) remains."""
        self._end()
        sp = self._savepoint
        if sp is not None:
            self._engine.savepoint.set(sp.parent)
            if not self._state.done:
                self._state.rollback_savepoint(sp)
        else:
            self._engine.end(self._state, commit=False)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._ended:
            return
        if exc_type is None:
            self.save()
        else:
            self.discard()

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        kind = "savepoint" if self.nested else "transaction"
        return f"<memimg {kind} from seq {self._state.start_seq}, {len(self._state.events) // 3} events, {state}>"


class TxScope:
    """What ``MemoryImage.transaction(meta=..., retries=...)`` returns: a context manager and a decorator."""

    __slots__ = ("_engine", "_meta", "_retries")

    def __init__(self, engine: Engine, retries: int, meta: dict[str, Any] | None = None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._engine = engine
        self._retries = retries
        self._meta = meta  # checked

    def __enter__(self) -> Transaction:
        tx = begin(self._engine, self._meta)
        # per thread and task: one scope object may be entered by many at once
        scopes = self._engine.scopes
        scopes.set((*scopes.get(), (self, tx)))
        return tx

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        scopes = self._engine.scopes
        stack = scopes.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] is self:
                tx = stack[i][1]
                scopes.set(stack[:i] + stack[i + 1 :])
                tx.__exit__(exc_type, exc, tb)
                return
        raise MemimgError("this transaction scope was not entered in this thread or task")  # pragma: no cover

    def __call__(self, fn: F) -> F:
        engine, retries, meta = self._engine, self._retries, self._meta

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                nested = engine.current_tx() is not None
                attempt = 0
                while True:
                    try:
                        with begin(engine, meta):
                            return await fn(*args, **kwargs)
                    except ConflictError:
                        if nested or attempt >= retries:
                            raise
                        attempt += 1
                        await asyncio.sleep(backoff(attempt))

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            nested = engine.current_tx() is not None
            attempt = 0
            while True:
                try:
                    with begin(engine, meta):
                        return fn(*args, **kwargs)
                except ConflictError:
                    if nested or attempt >= retries:
                        raise
                    attempt += 1
                    time.sleep(backoff(attempt))

        return run  # type: ignore[return-value]
