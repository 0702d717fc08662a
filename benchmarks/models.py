"""The domain the workloads use, as memimg entities and as plain attrs classes.

Two shapes, kept deliberately small and identical across systems so that a
difference in time is a difference in persistence, not in the model:

* **accounts** -- a ``Bank`` root whose ``accounts`` dict maps an int key to an
  ``Account(owner, balance)``; workloads (a), (b), (c) and (f) update balances;
* **graph** -- a ``Forest`` root holding a list of ``Group`` objects, each with
  a list of ``Item(name, value, tags, ref)``; ``tags`` is a short list of
  strings and ``ref`` points at another item anywhere in the graph, so the
  graph has lists, shared references and cycles (workload (d) and the memory
  measurement of (e)).

``PlainAccount``, ``PlainItem`` and ``PlainGroup`` are the same classes as plain
``attrs.define`` classes: the baseline for in-memory costs. The peers (ZODB, eventsourcing) declare their
own versions of these classes in their system modules, since each library
needs its own base class.
"""

from __future__ import annotations

from typing import Any

import attrs

from memimg import persistent

__all__ = [
    "GROUP_SIZE",
    "Account",
    "Bank",
    "Forest",
    "Group",
    "Item",
    "PlainAccount",
    "PlainGroup",
    "PlainItem",
    "graph_checksum",
    "graph_shape",
    "history",
    "history_checksum",
    "item_fields",
    "item_ref",
]


@persistent(name="bench.Account")
class Account:
    owner: str
    balance: int = 0


@persistent(name="bench.Bank")
class Bank:
    accounts: dict[int, Account] = attrs.field(factory=dict)


@persistent(name="bench.Item")
class Item:
    name: str
    value: int = 0
    tags: list[str] = attrs.field(factory=list)
    ref: Any = None


@persistent(name="bench.Group")
class Group:
    name: str
    items: list[Item] = attrs.field(factory=list)


@persistent(name="bench.Forest")
class Forest:
    groups: list[Group] = attrs.field(factory=list)


@attrs.define
class PlainAccount:
    owner: str
    balance: int = 0


@attrs.define
class PlainItem:
    name: str
    value: int = 0
    tags: list[str] = attrs.field(factory=list)
    ref: Any = None


@attrs.define
class PlainGroup:
    name: str
    items: list[PlainItem] = attrs.field(factory=list)


#: Items per group in the graph workload.
GROUP_SIZE = 100


def graph_shape(n: int) -> list[range]:
    """The item indexes of each group of an *n*-item graph."""
    return [range(start, min(start + GROUP_SIZE, n)) for start in range(0, n, GROUP_SIZE)]


def item_ref(i: int, n: int) -> int:
    """The index of the item that item *i* references (a fixed, scattered permutation-like map)."""
    return (i * 7919 + 13) % n


def item_fields(i: int) -> tuple[str, int, list[str]]:
    """``(name, value, tags)`` of item *i*: the same data for every system."""
    return f"item-{i}", i, ["red" if i % 2 else "blue", f"t{i % 97}"]


def graph_checksum(n: int) -> int:
    """What every system's ``load_graph`` must return for an *n*-item graph: Σ value + ref.value + len(tags)."""
    return sum(i + item_ref(i, n) + 2 for i in range(n))


def history(n_objects: int, n_mutations: int) -> list[tuple[int, int]]:
    """The recovery workload's mutations ``(key, balance)``: scattered over the objects, the same for every system."""
    return [((k * 2654435761) % n_objects, k + 1) for k in range(n_mutations)]


def history_checksum(mutations: list[tuple[int, int]]) -> int:
    """The sum of balances after *mutations*."""
    final: dict[int, int] = {}
    for key, balance in mutations:
        final[key] = balance
    return sum(final.values())
