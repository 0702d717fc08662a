"""The pace of every store's waits for what another connection or process holds (:mod:`memimg.stores._waits`)."""

from __future__ import annotations

from typing import Any

import pytest

from memimg.stores import _waits
from memimg.stores._waits import FIRST_WAIT, MAX_WAIT, lock_waits


class _Clock:
    """A clock that moves only when slept on (as ``time``: ``monotonic`` and ``sleep``)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: Any) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(_waits, "time", fake)
    return fake


def test_the_waits_double_from_50_microseconds_to_2_ms_and_end_at_the_deadline(clock: _Clock) -> None:
    """Each next try comes after a wait of 50 µs doubling up to 2 ms; the last wait is cut short at the deadline,
    so the tries go on for the whole timeout and end there."""
    tries = sum(1 for _ in lock_waits(0.02))
    assert tries == len(clock.slept)
    doubling = [min(FIRST_WAIT * 2**i, MAX_WAIT) for i in range(tries)]
    assert clock.slept[:-1] == pytest.approx(doubling[:-1])
    assert 0 < clock.slept[-1] <= doubling[-1]
    assert sum(clock.slept) == pytest.approx(0.02)  # never less than the timeout, never more
    assert max(clock.slept) == MAX_WAIT


def test_no_wait_for_a_timeout_of_zero(clock: _Clock) -> None:
    """A timeout of 0: the first try (the caller's, before the loop) was the only one."""
    assert list(lock_waits(0)) == [] and clock.slept == []


def test_the_timeout_runs_from_the_call(clock: _Clock) -> None:
    """The deadline is set when lock_waits is called, not when the loop first asks for a wait: a loop whose
    first try took the whole timeout makes no other."""
    waits = lock_waits(0.01)
    clock.now += 0.01  # the first try, before the loop
    assert list(waits) == [] and clock.slept == []
