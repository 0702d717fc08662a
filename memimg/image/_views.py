"""A transaction's views of the collections it changed: the delta over the base.

A view is created the first time a transaction writes a collection and holds
only what the transaction changed, never a copy made up front, so writing
one key of a dict of a million entries costs what writing one key costs:

* :class:`DictView` -- changed keys (value or deleted) and, in order, the keys
  the transaction added at the end; reads fall back to the base dict;
* :class:`SetView` -- members added and removed (and whether it was cleared);
* :class:`ListView` -- items appended at the end while nothing else changed;
  a positional change (insert, delete, sort...) copies the list once.

Each view answers the read methods of its builtin by name (:meth:`call`):
the common ones directly, the rest on a materialized plain copy. The base is
read with raw builtin methods, never through tracking hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from memimg.core._markers import ABSENT, DELETED
from memimg.model._collections import TrackedDict, TrackedList, TrackedSet

__all__ = ["RAW", "DictView", "ListView", "SetView", "raw_method"]


#: A tracked collection class -> its builtin (whose methods read the raw storage).
RAW: Final[dict[type, type]] = {TrackedList: list, TrackedDict: dict, TrackedSet: set}
_raw_methods: dict[tuple[type, str], Callable[..., Any]] = {}


def raw_method(t: type, method: str) -> Callable[..., Any]:
    """The builtin method *method* of tracked collection class *t* (never a tracking hook)."""
    fn = _raw_methods.get((t, method))
    if fn is None:
        fn = _raw_methods[(t, method)] = getattr(RAW[t], method)
    return fn


class ListView:
    """A list as one transaction sees it."""

    __slots__ = ("base", "frozen", "items", "tail")

    def __init__(self, base: list[Any]) -> None:
        self.base = base
        self.items: list[Any] | None = None
        self.tail: list[Any] = []
        #: the base's length when the commit of these appends began to be applied
        self.frozen: int | None = None

    def freeze(self) -> None:
        """The base is about to receive the appended items: read only its first items from now on."""
        if self.items is None and self.frozen is None:
            self.frozen = list.__len__(self.base)

    def _base(self) -> list[Any]:
        base = list.copy(self.base)
        if self.frozen is not None:
            del base[self.frozen :]
        return base

    def _base_len(self) -> int:
        return self.frozen if self.frozen is not None else list.__len__(self.base)

    def materialize(self) -> list[Any]:
        if self.items is None:
            self.items = self._base() + self.tail
            self.tail = []
        return self.items

    # primitives
    def append(self, items: list[Any]) -> None:
        if self.items is None:
            self.tail.extend(items)
        else:
            self.items.extend(items)

    def splice(self, start: int, stop: int, items: list[Any]) -> None:
        self.materialize()[start:stop] = items

    def clear(self) -> None:
        self.items = []
        self.tail = []

    def reorder(self, order: list[int]) -> None:
        current = self.materialize()
        current[:] = [current[i] for i in order]

    def reverse(self) -> None:
        self.materialize().reverse()

    # reads
    def __len__(self) -> int:
        if self.items is None:
            return self._base_len() + len(self.tail)
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        if self.items is None:
            yield from self._base()
            yield from list(self.tail)
        else:
            yield from list(self.items)

    def __getitem__(self, index: Any) -> Any:
        if self.items is None and type(index) is int:
            n = self._base_len()
            i = index + n + len(self.tail) if index < 0 else index
            if 0 <= i < n:
                return list.__getitem__(self.base, i)
            if n <= i < n + len(self.tail):
                return self.tail[i - n]
            raise IndexError("list index out of range")
        return self.materialize()[index]

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "__len__":
            return self.__len__()
        if method == "__getitem__":
            return self.__getitem__(*args)
        if method == "__iter__":
            return self.__iter__()
        return getattr(list, method)(self.materialize(), *args)


class DictView:
    """A dict as one transaction sees it."""

    __slots__ = ("added", "base", "changes", "cleared")

    def __init__(self, base: dict[Any, Any]) -> None:
        self.base = base
        self.changes: dict[Any, Any] = {}
        #: keys that now sit after the base's keys, in insertion order
        self.added: dict[Any, None] = {}
        self.cleared = False

    def _present(self, key: Any) -> bool:
        v = self.changes.get(key, ABSENT)
        if v is not ABSENT:
            return v is not DELETED
        return not self.cleared and dict.__contains__(self.base, key)

    # primitives
    def set(self, key: Any, value: Any) -> None:
        if not self._present(key):
            self.added[key] = None
        self.changes[key] = value

    def delete(self, key: Any) -> None:
        self.changes[key] = DELETED
        self.added.pop(key, None)

    def update(self, pairs: list[tuple[Any, Any]]) -> None:
        for k, v in pairs:
            self.set(k, v)

    def clear(self) -> None:
        self.changes.clear()
        self.added.clear()
        self.cleared = True

    # reads
    def __getitem__(self, key: Any) -> Any:
        v = self.changes.get(key, ABSENT)
        if v is ABSENT:
            if self.cleared:
                raise KeyError(key)
            return dict.__getitem__(self.base, key)
        if v is DELETED:
            raise KeyError(key)
        return v

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self.__getitem__(key)
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        return self._present(key)

    def __iter__(self) -> Iterator[Any]:
        if not self.cleared:
            changes, added = self.changes, self.added
            for k in list(dict.__iter__(self.base)):
                if k in added or changes.get(k, ABSENT) is DELETED:
                    continue
                yield k
        yield from list(self.added)

    def __len__(self) -> int:
        if self.cleared:
            return len(self.added)
        base = self.base
        gone = sum(1 for k, v in self.changes.items() if v is DELETED and dict.__contains__(base, k))
        moved = sum(1 for k in self.added if dict.__contains__(base, k))
        return dict.__len__(base) - gone - moved + len(self.added)

    def materialize(self) -> dict[Any, Any]:
        return {k: self.__getitem__(k) for k in self.__iter__()}

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "__getitem__":
            return self.__getitem__(*args)
        if method == "get":
            return self.get(*args)
        if method == "__contains__":
            return self.__contains__(*args)
        if method == "__len__":
            return self.__len__()
        if method == "__iter__":
            return self.__iter__()
        return getattr(dict, method)(self.materialize(), *args)


class SetView:
    """A set as one transaction sees it."""

    __slots__ = ("added", "base", "cleared", "removed")

    def __init__(self, base: set[Any]) -> None:
        self.base = base
        self.added: set[Any] = set()
        self.removed: set[Any] = set()
        self.cleared = False

    # primitives
    def add(self, items: list[Any]) -> None:
        for m in items:
            self.removed.discard(m)
            if self.cleared or not set.__contains__(self.base, m):
                self.added.add(m)

    def discard(self, items: list[Any]) -> None:
        for m in items:
            self.added.discard(m)
            if not self.cleared:
                self.removed.add(m)

    def clear(self) -> None:
        self.added.clear()
        self.removed.clear()
        self.cleared = True

    # reads
    def __contains__(self, member: Any) -> bool:
        if member in self.added:
            return True
        if self.cleared or member in self.removed:
            return False
        return set.__contains__(self.base, member)

    def __iter__(self) -> Iterator[Any]:
        if not self.cleared:
            removed, added = self.removed, self.added
            for m in set.copy(self.base):
                if m not in removed and m not in added:
                    yield m
        yield from list(self.added)

    def __len__(self) -> int:
        if self.cleared:
            return len(self.added)
        base = self.base
        gone = sum(1 for m in self.removed if set.__contains__(base, m))
        return set.__len__(base) - gone + sum(1 for m in self.added if not set.__contains__(base, m))

    def materialize(self) -> set[Any]:
        return set(self.__iter__())

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "__contains__":
            return self.__contains__(*args)
        if method == "__len__":
            return self.__len__()
        if method == "__iter__":
            return self.__iter__()
        return getattr(set, method)(self.materialize(), *args)
