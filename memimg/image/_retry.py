"""Retrying after a conflict: one randomized, exponential backoff for every caller.

``@img.transaction(retries=N)``, the Flask integration and the Django
middleware rerun work that lost a race with another commit
(:class:`~memimg.ConflictError`); all wait as :func:`backoff` says, so that
two processes that conflicted do not meet again at once.
"""

from __future__ import annotations

import random

__all__ = ["backoff"]


def backoff(attempt: int) -> float:
    """Seconds to wait before rerunning a transaction for the *attempt*-th time (1 for the first rerun).

    Random between half a millisecond and an upper bound that doubles with
    every attempt, from 2 ms up to 50 ms.
    """
    return random.uniform(0.0005, min(0.05, 0.001 * 2**attempt))
