"""The small interface every compared system implements, once per workload.

A workload (see :mod:`benchmarks.workloads`) is written once against this
interface; each system -- memimg, raw ``sqlite3``, ZODB, eventsourcing --
implements it in its own module with its own idioms (a transaction manager
for ZODB, aggregates and ``app.save`` for eventsourcing, ``INSERT`` rows for
raw sqlite3). Every method works inside a directory the harness gives it, so
file sizes can be measured by summing the directory.

Methods return checksums (sums over the loaded state) so the harness can
check that every system really stored and reloaded the same data: a
benchmark that silently loads nothing is worse than none.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol

__all__ = ["Accounts", "System"]


class Accounts(Protocol):
    """An open store of ``n`` accounts whose balances are updated (workloads a, b)."""

    def update(self, key: int, balance: int) -> None:
        """Set one account's balance and make it durable (one commit)."""

    def update_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Set many balances in one atomic, durable transaction."""

    def deposit_many(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Add ``amount`` to account ``key``'s balance for each pair (read-modify-write; keys may repeat), in one
        atomic, durable transaction."""

    def close(self) -> None: ...


class System:
    """A persistence system under test. Subclasses implement every workload."""

    #: the name shown in the table
    name: ClassVar[str]
    #: sync modes it distinguishes for durable commits (others ignore ``sync``)
    sync_modes: ClassVar[tuple[str, ...]] = ()

    # (a), (b) -- commits
    def open_accounts(self, where: Path, n: int, sync: str) -> Accounts:
        """Create *n* accounts ``0..n-1`` (owner ``owner-<key>``, balance 0) in *where*, open for updates."""
        raise NotImplementedError

    # (c) -- recovery
    def write_history(self, where: Path, n: int, mutations: Sequence[tuple[int, int]], batch: int) -> None:
        """Create *n* accounts, then apply *mutations* ``(key, balance)`` in transactions of *batch*; close."""
        raise NotImplementedError

    def add_snapshot(self, where: Path) -> bool:
        """Make reopening *where* start from a snapshot; ``False`` when the system has no such thing."""
        return False

    def copy_with_snapshot(self, where: Path, copy: Path) -> bool:
        """Copy the closed log in *where* to *copy* and add a snapshot there; ``False`` if there is none to add.

        Called right after :meth:`write_history`; a system may reuse what it
        still holds in memory from writing instead of reopening the copy.
        """
        shutil.copytree(where, copy)
        if self.add_snapshot(copy):
            return True
        shutil.rmtree(copy)
        return False

    def recover(self, where: Path) -> int:
        """Reopen *where*, load every account; return the sum of balances."""
        raise NotImplementedError

    # (d) -- a graph of small objects
    def write_graph(self, where: Path, n: int) -> dict[str, float]:
        """Store the *n*-item graph of :mod:`benchmarks.models`; return seconds per phase.

        Phases: ``commit`` (making the new graph durable) and, where the
        system has one, ``snapshot``. Building the objects in memory is not
        timed.
        """
        raise NotImplementedError

    def load_graph(self, where: Path) -> int:
        """Reopen *where* and touch every item (runs in a child process); return the graph checksum."""
        raise NotImplementedError
