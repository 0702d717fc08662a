"""Bulk work pauses the cyclic collector; pauses nest and overlap across threads."""

from __future__ import annotations

import gc
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from memimg.core import _gc
from memimg.core._gc import paused_gc


@pytest.fixture(autouse=True)
def _collector_on_after() -> Iterator[None]:
    """A failing test must not leave the collector off, or a pause counted, for the tests after it."""
    yield
    _gc._open, _gc._resume = 0, False
    gc.enable()


def test_the_collector_resumes_when_the_last_overlapping_pause_ends() -> None:
    """Two pauses ending out of order (as two threads' bulk work may): on again only after both."""
    assert gc.isenabled()
    first, second = paused_gc(), paused_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second is still open
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_off_before_the_pause_stays_off() -> None:
    """A pause leaves a collector that was already off, off."""
    gc.disable()
    with paused_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_exit_without_an_enter_does_not_unbalance_later_pauses() -> None:
    """A pause interrupted before it was entered is exited anyway by a ``finally``: nothing to undo."""
    paused_gc().__exit__(None, None, None)
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_threads_pausing_at_once_leave_the_collector_on() -> None:
    """Threads pausing over and over, and all at once, keep the collector off inside every pause and on
    after the last."""
    inside = threading.Barrier(4, timeout=30)
    on_while_paused: list[str] = []

    def work() -> None:
        for _ in range(200):
            with paused_gc():
                if gc.isenabled():
                    on_while_paused.append("loop")
        with paused_gc():
            inside.wait()  # all four open at once
            if gc.isenabled():
                on_while_paused.append("together")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert on_while_paused == []
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_pauses_has_the_collector_on() -> None:
    """The pausing thread does not exist in the child: its pause must not keep the child's collector off."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with paused_gc():
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(30) and not gc.isenabled()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once
            try:
                on = gc.isenabled()
                with paused_gc():
                    paused = not gc.isenabled()
                os.write(write, f"{on} {paused} {gc.isenabled()}".encode())
            finally:
                os._exit(0)
        os.close(write)
        report = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert report == "True True True"
    assert gc.isenabled()


def test_a_pause_taken_in_the_middle_of_an_exit_leaves_the_collector_on() -> None:
    """A signal handler that commits runs in the thread it interrupted, maybe inside an exit, after the
    count fell to zero and before the collector is resumed: the two must still end with it on."""
    fired: list[bool] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not _gc._resume_after.__code__:
            return None

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and not fired and _gc._open == 0:
                fired.append(True)
                with paused_gc():  # the handler's own pause, on the same thread
                    pass
            return local

        return local

    sys.settrace(tracer)
    try:
        with paused_gc():
            pass
    finally:
        sys.settrace(None)
    assert fired and _gc._open == 0
    assert gc.isenabled()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_young_garbage_is_collected_inside_a_pause_only_past_the_limit_and_if_the_collector_was_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """collect_young collects the cyclic garbage made inside a pause once over YOUNG_LIMIT new objects
    piled up (the pause goes on); under the limit, or with the collector off before the pause (the
    application's choice), it collects nothing."""
    with paused_gc():
        ref = weakref.ref(_Cycle())
        monkeypatch.setattr(_gc, "YOUNG_LIMIT", 10**9)
        _gc.collect_young()
        assert ref() is not None
        monkeypatch.setattr(_gc, "YOUNG_LIMIT", 0)
        _gc.collect_young()
        assert ref() is None and not gc.isenabled()
    gc.disable()
    with paused_gc():
        ref = weakref.ref(_Cycle())
        _gc.collect_young()
        assert ref() is not None
    gc.enable()
    gc.collect()
    assert ref() is None
