"""A brute-force walk of an image's graph, the reference the property tests compare extents and indexes with."""

from __future__ import annotations

from typing import Any

import attrs

from memimg import TrackedDict, TrackedList, TrackedSet
from memimg.core import _types


def reachable(root: Any) -> list[Any]:
    """Every entity and tracked collection reachable from *root*, read as this thread reads (a transaction's
    own view inside one): fields of entities, items, dict keys and values, set members, and what tuples,
    frozensets and value objects hold."""
    seen: dict[int, Any] = {}
    out: list[Any] = []
    work = [root]
    while work:
        obj = work.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        t = type(obj)
        if isinstance(obj, (TrackedList, TrackedSet)) or type(obj) in (tuple, frozenset, list, set):
            work.extend(obj)
        elif isinstance(obj, (TrackedDict, dict)):
            work.extend(obj.keys())
            work.extend(obj.values())
        elif attrs.has(t):
            work.extend(getattr(obj, a.name) for a in attrs.fields(t) if hasattr(obj, a.name))
        else:
            continue
        if _types.entity_info(t) is not None or isinstance(obj, (TrackedList, TrackedDict, TrackedSet)):
            out.append(obj)
    return out
