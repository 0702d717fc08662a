"""Bulk work pauses the cyclic collector; pauses nest and overlap across threads."""

from __future__ import annotations

import gc
import threading

from memimg._gc import paused_gc


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
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_threads_pausing_at_once_leave_the_collector_on() -> None:
    inside = threading.Barrier(4)
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
