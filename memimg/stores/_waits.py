"""Waiting for what another connection or process holds (a write lock, a checkpoint lock, a lock file): the one
pace every store keeps -- 50 µs, doubling up to 2 ms, bounded by the caller's timeout (:func:`lock_waits`), not
SQLite's own steps of 1 ms and more (why: :mod:`memimg.stores._sqlitewal`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

__all__ = ["FIRST_WAIT", "MAX_WAIT", "lock_waits"]

#: The first wait for a lock another connection holds, and the longest (seconds).
FIRST_WAIT: Final = 50e-6
MAX_WAIT: Final = 2e-3


def lock_waits(timeout: float) -> Iterator[bool]:
    """The pace of a loop trying again, after its first try, to take what another connection holds: each next try
    comes after a wait -- :data:`FIRST_WAIT`, doubling up to :data:`MAX_WAIT`, the last one cut short at the
    deadline -- and the loop ends once *timeout* seconds from the call have passed (the last try made then; for a
    *timeout* of 0, at once: the first try was all). Each wait yields ``True``, so ``next(waits, False)`` tells
    a loop of its own whether to try again::

        taken = take() or any(take() for _ in lock_waits(timeout))
    """
    return _waits(time.monotonic() + timeout)


def _waits(deadline: float) -> Iterator[bool]:
    wait = FIRST_WAIT
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(wait, left))
        yield True
        wait = min(wait * 2, MAX_WAIT)
