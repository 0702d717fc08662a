"""The systems compared, each behind the interface of :mod:`benchmarks.systems._base`.

Peers are optional: a system whose library cannot be imported is reported
as skipped, with the reason, instead of failing the run (install them with
``pip install 'memimg[bench]'``).
"""

from __future__ import annotations

import importlib

from benchmarks.systems._base import Accounts, System

__all__ = ["SYSTEMS", "Accounts", "System", "load_system", "load_systems"]

#: name -> (module, class); the order of the table's columns.
SYSTEMS: dict[str, tuple[str, str]] = {
    "memimg": ("benchmarks.systems._memimg", "MemimgSystem"),
    "sqlite3": ("benchmarks.systems._sqlite", "SQLiteSystem"),
    "ZODB": ("benchmarks.systems._zodb", "ZODBSystem"),
    "eventsourcing": ("benchmarks.systems._eventsourcing", "EventSourcingSystem"),
}


def load_systems(names: list[str] | None = None) -> tuple[list[System], dict[str, str]]:
    """The importable systems (in table order) and ``{name: reason}`` for those skipped."""
    systems: list[System] = []
    skipped: dict[str, str] = {}
    for name, (module, cls) in SYSTEMS.items():
        if names is not None and name not in names:
            continue
        try:
            systems.append(getattr(importlib.import_module(module), cls)())
        except ImportError as err:
            skipped[name] = f"not installed ({err}); pip install 'memimg[bench]'"
    return systems, skipped


def load_system(name: str) -> System:
    """One system by name (in a child process)."""
    module, cls = SYSTEMS[name]
    return getattr(importlib.import_module(module), cls)()  # type: ignore[no-any-return]
