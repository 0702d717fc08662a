"""AES-GCM nonces for :mod:`memimg.core._protect`: a per-process random prefix and a counter, never repeated."""

from __future__ import annotations

import itertools
import os
import threading
from typing import Final

__all__ = ["NONCE_LAST", "Nonces", "nonces", "renew_nonces"]

#: the counter value at which a nonce prefix is used up
NONCE_LAST: Final = 0xFFFF_FFFF


class Nonces:
    """96-bit GCM nonces, never repeated: a random 64-bit prefix and a 32-bit counter (NIST SP 800-38D 8.2.1).

    The prefix is drawn anew when the counter runs out and in a forked
    child (which would otherwise repeat its parent's stream): the state
    records the pid that drew it, checked once per sealing call
    (:meth:`current`; one ``getpid``), so a fork that skips Python's fork
    hooks (a C server forking workers, e.g. uWSGI without
    ``--py-call-osafterfork``) is caught too. A process restored from a
    snapshot (CRIU, Lambda SnapStart, a cloned VM) can keep its pid: it
    calls :func:`renew_nonces` after the restore. Two processes share a
    prefix with a chance of 2**-64 per pair. One ``os.urandom`` per 2**32
    nonces instead of one per row (a system call: the bulk of an encrypted
    commit's cost).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # one tuple, swapped whole: a reader never pairs one prefix with another prefix's counter
        self._state = (os.urandom(8), itertools.count(), os.getpid())

    def current(self) -> tuple[bytes, itertools.count[int], int]:
        """``(prefix, counter, pid)`` to draw nonces from: renewed first if this is not the process that drew
        it (the one place a sealing call takes its state from)."""
        state = self._state
        if state[2] != os.getpid():
            with self._lock:
                if self._state is state:
                    self._reset()
            state = self._state
        return state

    def __call__(self) -> bytes:
        prefix, counter, _ = self.current()
        n = next(counter)  # atomic under the GIL
        if n >= NONCE_LAST:
            with self._lock:
                if self._state[1] is counter:
                    self._reset()
            return self()
        return prefix + n.to_bytes(4, "little")


#: the process's nonces (every protection draws from them)
nonces = Nonces()


def renew_nonces() -> None:
    """Draw a new nonce prefix for this process: call it after restoring a process from a snapshot (CRIU,
    Lambda SnapStart, a cloned VM), whose copies would otherwise go on from the same nonces. Forks need
    nothing (see :class:`Nonces`)."""
    nonces._reset()
