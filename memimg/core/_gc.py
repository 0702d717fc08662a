"""Pausing Python's cyclic garbage collector during bulk work.

Loading a snapshot, replaying a log, writing a snapshot or attaching a large
graph allocate hundreds of thousands of long-lived containers in a burst; the
collector would traverse all of them again and again while they are being
built (measured: ``orjson.loads`` of a 7 MB snapshot takes 10x longer with
it on). Nothing in such a burst becomes cyclic garbage, so the collector is
paused for its duration and resumed after, as it was.

The pause is for every thread (the collector is one per process): other
threads' cyclic garbage waits for the end of the pause, or for
:func:`collect_young` (a long pause -- a background snapshot -- calls it
between slices). An application's own ``gc.disable()`` inside a pause
cannot be told from the pause's (the collector is off already): the last
pause to end turns the collector back on if it was on before the first,
so disable it before, or again after, bulk work such as a snapshot.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

__all__ = ["collect_young", "lazy_pause", "paused_gc"]

#: How many new container objects a paused collector lets pile up before :func:`collect_young` collects them.
YOUNG_LIMIT = 100_000


class paused_gc:  # lower case: used like a function, ``with paused_gc():``
    """Pause the cyclic collector inside the block (reference counting goes on).

    Pauses nest and overlap across threads: the collector is resumed (if it
    was on before the first) when the last pause still open ends, not when
    the first one does while another thread's bulk work goes on.

    (A request thread's commit ending must not resume it in the middle of a
    background thread's snapshot of a million objects.)

    A class rather than a ``@contextmanager`` generator: it is entered on
    every transaction's commit and every attach of a non-native value,
    where the generator's ~2 µs per use would show (this costs ~0.7 µs, the
    lock included).
    """

    __slots__ = ()

    def __enter__(self) -> None:
        _pause()

    def __exit__(self, *exc: Any) -> None:
        _resume_after()


class lazy_pause:
    """A pause begun only when :meth:`start` is first called (if ever), ended on exit or :meth:`stop`.

    For work that pauses the collector only once it meets something big (a
    mutation's first value to attach, a catch-up's first row): what runs
    before stays collected as usual.
    """

    __slots__ = ("on",)

    def __enter__(self) -> lazy_pause:
        self.on = False
        return self

    def start(self) -> None:
        if not self.on:
            self.on = True  # first: an interrupt in between makes an exit without an enter, a no-op
            _pause()

    def stop(self) -> None:
        if self.on:
            _resume_after()  # first: an interrupt in between makes a second exit, a no-op or early resume
            self.on = False

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _pause() -> None:
    global _open, _resume
    with _lock:
        _open += 1  # counted before the collector is touched: an interrupt in between leaves it on
        if _open == 1 and gc.isenabled():
            gc.disable()
            _resume = True  # only ever set here, reset by the last exit: a pause entered by a
            # signal handler in the middle of an exit cannot make it forget to resume


def _resume_after() -> None:
    global _open, _resume
    with _lock:
        if _open <= 0:  # never entered (interrupted before), or reset in a forked child
            return
        _open -= 1
        if not _open:
            if _resume:
                gc.enable()
            _resume = False


def collect_young() -> None:
    """Collect the young generations if over :data:`YOUNG_LIMIT` containers were allocated since their last one.

    For a long pause (a background snapshot, paused from its first slice to
    its last): other threads' cyclic garbage does not pile up meanwhile. A
    young collection traverses only the objects made since the previous
    one (then older: not traversed again by the next), not the whole graph
    as a full one does. Nothing is collected if the collector was off
    before the pause (the application turned it off).
    """
    if _resume and gc.get_count()[0] > YOUNG_LIMIT:
        gc.collect(1)


#: Reentrant: a signal handler that commits runs in the thread it interrupted,
#: maybe inside one of these blocks.
_lock = threading.RLock()
#: pauses open now (in every thread), and whether the collector was on before the first of them
_open = 0
_resume = False


def _after_fork_in_child() -> None:
    """A forked child has only the forking thread: other threads' pauses (and the lock) end there."""
    global _lock, _open, _resume
    _lock = threading.RLock()
    if _open and _resume:
        gc.enable()
    _open, _resume = 0, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
