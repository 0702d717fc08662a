"""Tracked ``list``, ``dict`` and ``set``: still instances of the builtins.

The classes are built from tables, as SQLAlchemy's ``orm/collections.py``
does, rather than written out method by method (the tables and planners are
in :mod:`memimg.model._planners`):

* a *mutator table* per type maps each mutating method to a *planner*: a
  function that looks at the current contents and returns the events the
  call amounts to (outcomes, not calls: ``sort`` yields the resulting order,
  ``remove(x)`` the index it removed) plus the method's return value,
  without changing anything. The owner prepares values, logs, and applies
  the events; a planner that raises (``remove`` of a missing item, an
  unsupported value) leaves everything as it was;
* a *read table* per type lists the read methods that get a tracking hook
  while transactions are open (see :mod:`memimg.model._tracking`); outside
  them reads are the builtin C methods.

A tracked collection that is not attached (``_mi_img is None``) behaves
exactly like its builtin.

Deliberate gaps, as in every builtin subclass: a few C functions read a
list's or set's storage directly rather than through its methods --
``str.join``, the C JSON encoder on lists, ``set(s)``, ``frozenset(s)`` and
``a_plain_set.union(s)`` -- so inside a transaction they see the committed
contents, not the transaction's own pending changes (wrap the collection in
``list(...)`` first); and ``heapq`` functions mutate a list's storage without
calling its methods, so their changes are not recorded (use ``insert``/``pop``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from memimg.model import _tracking
from memimg.model._base import Planner
from memimg.model._planners import (
    CONSUMING,
    DICT_MUTATORS,
    DICT_READS,
    KEYWORDS,
    LIST_MUTATORS,
    LIST_READS,
    PAIRS,
    SET_MUTATORS,
    SET_READS,
    _list_setitem,
)

__all__ = ["TrackedDict", "TrackedList", "TrackedSet", "reusable_args"]


# -- building the classes from the tables ---------------------------------------


def _mutator(base: Callable[..., Any], name: str, planner: Planner) -> Callable[..., Any]:
    def method(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = self._mi_img
        if owner is None:
            return base(self, *args, **kwargs)
        return owner._mi_current.get().mutate(self, planner, args, kwargs)

    method.__name__ = name
    method.__doc__ = base.__doc__
    return method


def _build(cls: type, builtin: type, mutators: dict[str, Planner], reads: dict[str, bool]) -> None:
    for name, planner in mutators.items():
        method = _mutator(getattr(builtin, name), name, planner)
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)
    readers = {}
    for name, keyed in reads.items():
        reader = _tracking.make_reader(name, getattr(builtin, name), keyed, f"{cls.__qualname__}.{name}")
        readers[name] = reader
    _tracking.register_collection(cls, readers)


class TrackedList(list):  # type: ignore[type-arg]
    """A ``list`` whose mutations are recorded when it is attached to an image."""

    __module__ = "memimg"
    __slots__ = ("_mi_img", "_mi_oid")
    _mi_img: Any
    _mi_oid: int | None

    def __new__(cls, /, *args: Any, **kwargs: Any) -> Any:
        self = list.__new__(cls)
        self._mi_img = None
        self._mi_oid = None
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (list, (), None, iter(self))


class TrackedDict(dict):  # type: ignore[type-arg]
    """A ``dict`` whose mutations are recorded when it is attached to an image."""

    __module__ = "memimg"
    __slots__ = ("_mi_img", "_mi_oid")
    _mi_img: Any
    _mi_oid: int | None

    def __new__(cls, /, *args: Any, **kwargs: Any) -> Any:
        self = dict.__new__(cls)
        self._mi_img = None
        self._mi_oid = None
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (dict, (), None, None, iter(self.items()))


class TrackedSet(set):  # type: ignore[type-arg]
    """A ``set`` whose mutations are recorded when it is attached to an image."""

    __module__ = "memimg"
    __slots__ = ("_mi_img", "_mi_oid")
    _mi_img: Any
    _mi_oid: int | None

    def __new__(cls, /, *args: Any, **kwargs: Any) -> Any:
        self = set.__new__(cls)
        self._mi_img = None
        self._mi_oid = None
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (set, (list(iter(self)),))

    def __repr__(self) -> str:
        return repr(set(iter(self)))


_build(TrackedList, list, LIST_MUTATORS, LIST_READS)
_build(TrackedDict, dict, DICT_MUTATORS, DICT_READS)
_build(TrackedSet, set, SET_MUTATORS, SET_READS)


#: Argument types that are read again from the start (the common ones, tested before the ABC).
_REREADABLE: frozenset[type] = frozenset(
    [list, tuple, dict, set, frozenset, str, range, TrackedList, TrackedDict, TrackedSet]
)


def _once(arg: Any, pairs: bool) -> Any:
    """*arg* as a list if reading it again might not give the same items.

    A collection is left as it is, to be read again by a replan: after the
    catch-up, a tracked one holds the state the mutation now follows.
    """
    if pairs:
        if hasattr(arg, "keys"):
            return arg  # a mapping
        if isinstance(arg, Collection) and all(type(p) in _REREADABLE for p in arg):
            return arg
        # pairs may be one-shot iterators too (elements of the wrong shape are left to the planner)
        return [tuple(p) if isinstance(p, Iterator) else p for p in arg]
    if type(arg) in _REREADABLE or isinstance(arg, Collection):
        return arg
    return list(arg)


def reusable_args(planner: Planner, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """*args* with what *planner* iterates read into lists where it could be read only once.

    A mutation made outside a transaction is planned again when another
    process committed first; the second plan must see the same items, not
    the rest of an exhausted generator. Only arguments the planner iterates
    are read (``lst.append(generator)`` still refuses the generator), and
    only in a call the planner accepts (a wrong count, or keywords where it
    takes none, is refused with the arguments unread).
    """
    most = CONSUMING.get(planner)
    if most is not None:
        pairs = planner in PAIRS
        if not args or (most and len(args) > most) or (kwargs and planner not in KEYWORDS):
            return args
        if not pairs and all(type(a) in _REREADABLE for a in args):
            return args  # the common case, without the ABC test
        return tuple(_once(a, pairs) for a in args)
    if planner is _list_setitem and len(args) == 2 and type(args[0]) is slice and not kwargs:
        return (args[0], _once(args[1], False))
    return args
