"""When the SQLite store can trust a directory's ctime to tell that its files were not replaced.

See the SQLite store's module docstring: after each write the store checks
that its path still names the database and WAL it opened.
"""

from __future__ import annotations

import sys
import time
from typing import Final

__all__ = ["stamped_after"]

# The clock inode timestamps are read from on Linux (CLOCK_REALTIME_COARSE: it moves once a tick).
_COARSE_CLOCK: Final = 5 if sys.platform.startswith("linux") else None
_TICK_NS: Final = 50_000_000  # elsewhere: a bound on the timestamp clock's step


def stamped_after(ctime: int) -> bool:
    """Whether every later change of the directory is sure to get a ctime other than *ctime*.

    A change made within the same step of the filesystem's timestamp clock
    (a kernel tick; a whole second or two on filesystems that keep no
    fraction) could get the same ctime, so the directory is trusted only once
    that clock has moved past *ctime* by the filesystem's granularity (read
    from *ctime*'s trailing zeros).
    """
    grain = 1
    while grain < 1_000_000_000 and ctime % (grain * 10) == 0:
        grain *= 10
    if grain == 1_000_000_000:
        grain *= 2  # FAT keeps even seconds
    if _COARSE_CLOCK is not None:
        return time.clock_gettime_ns(_COARSE_CLOCK) >= ctime + grain
    return time.time_ns() - _TICK_NS >= ctime + grain
