"""An image's position in its log, for compaction to see: which events live processes still need.

Each writable image keeps a ``position.<holder>`` entry in the store's
``memimg_meta``: the seq it has reached and an expiry. It is written when
the image first moves (its first commit, a catch-up that applies another
process's commits, or its first transaction begun: what that transaction
reads must stay in the log), again at most once a :data:`BEAT` as it
commits, catches up or begins a transaction, and removed when it closes if
it was written; a process that dies leaves an entry that expires after
:data:`TTL`. An image that is opened and closed without moving writes
nothing: opening a store costs no write (no sync, no new WAL file, no
checkpoint at close). ``memimg compact`` keeps the events after the oldest
live position, so a process that is merely behind finds them; one that
never moved, was stopped past its expiry, or is read-only (it cannot write
its position) finds them gone and reloads from the snapshot instead
(:func:`memimg.image._recovery.rebase`).
"""

from __future__ import annotations

import logging
import time
from typing import Final

from memimg.stores._protocol import Store, position_entry

__all__ = ["BEAT", "TTL", "Position"]

log = logging.getLogger("memimg")

#: How often an active image writes its position at most (seconds).
BEAT: Final = 60.0
#: How long a position stays live after it was last written (seconds).
TTL: Final = 600.0


class Position:
    """The position entry of one image (see the module docstring)."""

    __slots__ = ("due", "holder", "store", "written")

    def __init__(self, store: Store, holder: str) -> None:
        self.store = store
        self.holder = holder
        #: when the entry is to be written again (monotonic); 0: at the image's first move; inf: never
        #: (read-only, or closed)
        self.due = 0.0
        #: whether the entry was written (so that closing removes it)
        self.written = False

    def beat(self, seq: int) -> None:
        """Write the entry at *seq* (a failure is only logged: the position is advice, not a guarantee)."""
        self.due = time.monotonic() + BEAT
        key, value = position_entry(self.holder, seq, TTL)
        self.written = True  # even if this write failed: an earlier attempt may have got through
        try:
            self.store.set_meta(key, value)
        except Exception as err:
            log.warning("recording the position of this image in %s: %s", self.store.description, err)

    def leave(self) -> None:
        """Remove the entry if it was written (the image closes)."""
        self.due = float("inf")
        if not self.written:
            return
        try:
            self.store.set_meta(f"position.{self.holder}", None)
        except Exception as err:  # it expires by itself
            log.warning("removing the position of this image from %s: %s", self.store.description, err)
