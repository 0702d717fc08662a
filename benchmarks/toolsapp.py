"""The application of workload (j) ``tools``: a ledger whose classes the ``memimg`` command line never imports.

A ``Ledger`` root maps an owner's name to an ``Account``; each account has a
balance and a list of ``Entry`` objects, and each entry holds a datetime, an
enum member (``Kind``) and a frozen attrs value (``Money``) -- the value types
a tool reading the log without these classes must still read (as stand-ins).

:func:`build` writes an image of a given number of objects and events, with a
snapshot near its head; :func:`open_app` is the application's own open, timed
by the workload in a child process (``python -m benchmarks.child tools-open``).
"""

from __future__ import annotations

import datetime
import enum
from typing import Any

import attrs

from memimg import persistent

__all__ = ["Account", "Entry", "Kind", "Ledger", "Money", "build", "open_app", "owner"]


class Kind(enum.Enum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    FEE = "fee"


@attrs.frozen
class Money:
    cents: int
    currency: str = "EUR"


@persistent(name="bench.tools.Entry")
class Entry:
    at: datetime.datetime
    kind: Kind
    money: Money
    note: str = ""


@persistent(name="bench.tools.Account")
class Account:
    owner: str
    balance: int = 0
    entries: list[Entry] = attrs.field(factory=list)


@persistent(name="bench.tools.Ledger")
class Ledger:
    accounts: dict[str, Account] = attrs.field(factory=dict)


_KINDS = list(Kind)
_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def owner(i: int) -> str:
    """The key of account *i* in ``Ledger.accounts``."""
    return f"owner-{i}"


def _entry(k: int) -> Entry:
    at = _EPOCH + datetime.timedelta(seconds=37 * k)
    return Entry(at, _KINDS[k % 3], Money(100 + k % 9973, "EUR" if k % 5 else "USD"), f"entry {k}")


def _plan(objects: int, events: int) -> tuple[int, int, int]:
    """``(accounts, entries, balance updates)`` for about *objects* objects and *events* events.

    An account is two objects (itself and its entries list) and one event;
    an entry one object and one event (its append); the other events are
    balance updates.
    """
    accounts = max(1, objects // 6)
    entries = max(1, objects - 2 * accounts)
    return accounts, entries, max(0, events - accounts - entries)


def build(path: str, objects: int, events: int, *, batch: int = 1000) -> dict[str, int]:
    """Write the ledger image at *path*: about *objects* objects, *events* events, a snapshot 1% before the head.

    Returns what was written: ``objects`` (live, per the image), ``events``
    (the log's head) and ``snapshot_seq``.
    """
    import memimg

    n_accounts, n_entries, n_updates = _plan(objects, events)
    with memimg.open(path, root=Ledger, snapshot_every=None) as img:
        accounts = img.root.accounts
        for start in range(0, n_accounts, batch):
            with img.transaction():
                for i in range(start, min(start + batch, n_accounts)):
                    accounts[owner(i)] = Account(owner(i))
        ordered = [accounts[owner(i)] for i in range(n_accounts)]
        # the entries' appends and the balance updates, interleaved: (k, is an update)
        steps = [(k, False) for k in range(n_entries)] + [(k, True) for k in range(n_updates)]
        steps.sort(key=lambda s: s[0] / (n_updates if s[1] else n_entries))
        snapshot_at = len(steps) - max(1, len(steps) // 100)
        for start in range(0, len(steps), batch):
            if start <= snapshot_at < start + batch:
                _apply(img, ordered, steps[start:snapshot_at])
                img.snapshot()
                _apply(img, ordered, steps[snapshot_at : start + batch])
            else:
                _apply(img, ordered, steps[start : start + batch])
        snapshot_seq = img.store.snapshots()[0].seq
        return {"objects": img._engine.table.live_count(), "events": img.store.head(), "snapshot_seq": snapshot_seq}


def _apply(img: Any, ordered: list[Account], steps: list[tuple[int, bool]]) -> None:
    if not steps:
        return
    n = len(ordered)
    with img.transaction():
        for k, update in steps:
            account = ordered[(k * 7919) % n]
            if update:
                account.balance += 1 + k % 7
            else:
                account.entries.append(_entry(k))


def open_app(path: str) -> int:
    """The application's own open of the ledger at *path*: its classes are loaded; returns the number of accounts."""
    import memimg

    with memimg.open(path, root=Ledger) as img:
        return len(img.root.accounts)
