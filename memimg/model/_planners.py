"""Planners: what each mutating method of a tracked collection amounts to, as events.

A *mutator table* per type (:data:`LIST_MUTATORS`, :data:`DICT_MUTATORS`,
:data:`SET_MUTATORS`) maps each mutating method to a *planner*: a function
that looks at the current contents and returns the events the call amounts
to (outcomes, not calls: ``sort`` yields the resulting order, ``remove(x)``
the index it removed) plus the method's return value, without changing
anything. The owner prepares values, logs, and applies the events; a
planner that raises (``remove`` of a missing item, an unsupported value)
leaves everything as it was. A *read table* per type lists the read methods
that get a tracking hook while transactions are open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from memimg._errors import value_repr
from memimg.core._markers import NOT_GIVEN, SELF
from memimg.model._base import Planner, Prep

__all__ = [
    "CONSUMING",
    "DICT_MUTATORS",
    "DICT_READS",
    "KEYWORDS",
    "LIST_MUTATORS",
    "LIST_READS",
    "PAIRS",
    "REREADING",
    "SET_MUTATORS",
    "SET_READS",
    "Events",
]

Events = list[tuple[str, tuple[Any, ...]]]
_dict_contains = dict.__contains__


# -- list planners --------------------------------------------------------------


def _index(index: Any, n: int) -> int:
    i: int = index.__index__()
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError("list index out of range")
    return i


def _splice(old: list[Any], new: list[Any]) -> Events:
    """The smallest single splice turning *old* into *new* (compared by identity)."""
    n, m = len(old), len(new)
    start = 0
    while start < n and start < m and old[start] is new[start]:
        start += 1
    end_old, end_new = n, m
    while end_old > start and end_new > start and old[end_old - 1] is new[end_new - 1]:
        end_old -= 1
        end_new -= 1
    if start == end_old and start == end_new:
        return []
    if start == end_old == n:
        return [("list.append", (new[start:end_new],))]
    return [("list.splice", (start, end_old, new[start:end_new]))]


def _list_append(lst: Any, prep: Prep, item: Any) -> tuple[Events, Any]:
    return [("list.append", ([prep(item, ".append()")],))], None


def _list_extend(lst: Any, prep: Prep, items: Iterable[Any]) -> tuple[Events, Any]:
    prepped = [prep(x, ".extend()") for x in (list(lst) if items is lst else items)]
    return ([("list.append", (prepped,))] if prepped else []), None


def _list_iadd(lst: Any, prep: Prep, items: Iterable[Any]) -> tuple[Events, Any]:
    return _list_extend(lst, prep, items)[0], SELF


def _list_insert(lst: Any, prep: Prep, index: Any, item: Any) -> tuple[Events, Any]:
    n = len(lst)
    i = index.__index__()
    i = max(0, i + n) if i < 0 else min(i, n)
    value = prep(item, f".insert({index}, ...)")
    if i == n:
        return [("list.append", ([value],))], None
    return [("list.insert", (i, value))], None


def _list_setitem(lst: Any, prep: Prep, index: Any, value: Any) -> tuple[Events, Any]:
    if isinstance(index, slice):
        items = list(value)  # first: reading it may change the list (as with the builtin)
        new = list(lst)
        new[index] = [prep(x, "[slice]") for x in items]
        return _splice(list(lst), new), None
    i = _index(index, len(lst))
    return [("list.set", (i, prep(value, f"[{i}]")))], None


def _list_delitem(lst: Any, prep: Prep, index: Any) -> tuple[Events, Any]:
    if isinstance(index, slice):
        new = list(lst)
        del new[index]
        return _splice(list(lst), new), None
    return [("list.del", (_index(index, len(lst)),))], None


def _list_pop(lst: Any, prep: Prep, index: Any = -1) -> tuple[Events, Any]:
    n = len(lst)
    if not n:
        raise IndexError("pop from empty list")
    i = _index(index, n)
    return [("list.del", (i,))], lst[i]


def _list_remove(lst: Any, prep: Prep, item: Any) -> tuple[Events, Any]:
    return [("list.del", (lst.index(item),))], None


def _list_clear(lst: Any, prep: Prep) -> tuple[Events, Any]:
    return ([("list.clear", ())] if len(lst) else []), None


def _list_sort(
    lst: Any, prep: Prep, *, key: Callable[[Any], Any] | None = None, reverse: bool = False
) -> tuple[Events, Any]:
    items = list(lst)
    if key is None:
        order = sorted(range(len(items)), key=items.__getitem__, reverse=reverse)
    else:
        keys = [key(x) for x in items]
        order = sorted(range(len(items)), key=keys.__getitem__, reverse=reverse)
    if order == list(range(len(items))):
        return [], None
    return [("list.reorder", (order,))], None


def _list_reverse(lst: Any, prep: Prep) -> tuple[Events, Any]:
    return ([("list.reverse", ())] if len(lst) > 1 else []), None


def _list_imul(lst: Any, prep: Prep, times: Any) -> tuple[Events, Any]:
    n = times.__index__()
    items = list(lst)
    if n <= 0:
        return ([("list.clear", ())] if items else []), SELF
    if n == 1 or not items:
        return [], SELF
    return [("list.append", (items * (n - 1),))], SELF


def _init_source(coll: Any, kind: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Iterable[Any]:
    """What ``coll.__init__(*args, **kwargs)`` fills an attached list or set with, refused as the builtin refuses it."""
    if kwargs:
        raise TypeError(f"{kind}() takes no keyword arguments")
    if len(args) > 1:
        raise TypeError(f"{kind} expected at most 1 argument, got {len(args)}")
    return args[0] if args and args[0] is not coll else ()  # the builtin empties itself first


def _list_init(lst: Any, prep: Prep, /, *args: Any, **kwargs: Any) -> tuple[Events, Any]:
    """``lst.__init__(iterable)`` on an attached list: emptied, then extended, as the builtin does.

    One difference: an iterator over the list itself (``iter(lst)``) gives
    its items, where the builtin, which empties the list first, gives none.
    """
    items = [prep(x, ".__init__()") for x in _init_source(lst, "list", args, kwargs)]
    events: Events = [("list.clear", ())] if len(lst) else []
    if items:
        events.append(("list.append", (items,)))
    return events, None


LIST_MUTATORS: dict[str, Planner] = {
    "__init__": _list_init,
    "append": _list_append,
    "extend": _list_extend,
    "__iadd__": _list_iadd,
    "insert": _list_insert,
    "__setitem__": _list_setitem,
    "__delitem__": _list_delitem,
    "pop": _list_pop,
    "remove": _list_remove,
    "clear": _list_clear,
    "sort": _list_sort,
    "reverse": _list_reverse,
    "__imul__": _list_imul,
}

LIST_READS: dict[str, bool] = dict.fromkeys(
    [
        "__getitem__",
        "__len__",
        "__iter__",
        "__reversed__",
        "__contains__",
        "index",
        "count",
        "copy",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__add__",
        "__mul__",
        "__rmul__",
        "__repr__",
    ],
    False,
)

# -- dict planners --------------------------------------------------------------


def _pairs(args: tuple[Any, ...], kwargs: Mapping[str, Any], method: str = "update") -> list[tuple[Any, Any]]:
    """The (key, value) pairs of a dict's ``update``/``__init__`` arguments, refused as the builtin refuses them."""
    if len(args) > 1:
        raise TypeError(f"{method} expected at most 1 argument, got {len(args)}")
    pairs: list[tuple[Any, Any]] = []
    if args:
        other = args[0]
        if isinstance(other, Mapping) or hasattr(other, "keys"):
            pairs.extend((k, other[k]) for k in list(other.keys()))
        else:
            for i, item in enumerate(other):
                try:
                    k, v = item
                except TypeError:
                    raise TypeError(f"cannot convert dictionary update sequence element #{i} to a sequence") from None
                except ValueError:
                    size = f"length {len(item)}" if hasattr(item, "__len__") else "the wrong length"
                    raise ValueError(f"dictionary update sequence element #{i} has {size}; 2 is required") from None
                pairs.append((k, v))
    pairs.extend(kwargs.items())
    return pairs


def _key_where(key: Any) -> str:
    text = value_repr(key)
    return f"[{text if len(text) < 60 else text[:57] + '...'}]"


def _dict_setitem(d: Any, prep: Prep, key: Any, value: Any) -> tuple[Events, Any]:
    _dict_contains(d, key)  # the lookup the commit makes (see _dict_set_pairs)
    where = _key_where(key)
    return [("dict.set", (prep(key, where + " (key)"), prep(value, where)))], None


def _dict_delitem(d: Any, prep: Prep, key: Any) -> tuple[Events, Any]:
    if key not in d:
        raise KeyError(key)
    return [("dict.del", (key,))], None


def _dict_pop(d: Any, prep: Prep, key: Any, default: Any = NOT_GIVEN) -> tuple[Events, Any]:
    if key in d:
        return [("dict.del", (key,))], d[key]
    if default is NOT_GIVEN:
        raise KeyError(key)
    return [], default


def _dict_popitem(d: Any, prep: Prep) -> tuple[Events, Any]:
    if not len(d):
        raise KeyError("popitem(): dictionary is empty")
    key = next(reversed(d))
    return [("dict.del", (key,))], (key, d[key])


def _dict_setdefault(d: Any, prep: Prep, key: Any, default: Any = None) -> tuple[Events, Any]:
    if key in d:
        return [], d[key]
    where = _key_where(key)
    value = prep(default, where)
    return [("dict.set", (prep(key, where + " (key)"), value))], value


def _dict_update(d: Any, prep: Prep, /, *args: Any, **kwargs: Any) -> tuple[Events, Any]:
    return _dict_set_pairs(d, _pairs(args, kwargs), prep), None


def _dict_init(d: Any, prep: Prep, /, *args: Any, **kwargs: Any) -> tuple[Events, Any]:
    """``d.__init__(...)`` on an attached dict: an update (the builtin's ``__init__`` does not empty a dict)."""
    return _dict_set_pairs(d, _pairs(args, kwargs, "dict"), prep), None


def _dict_set_pairs(d: Any, given: list[tuple[Any, Any]], prep: Prep) -> Events:
    pairs = []
    for k, v in given:
        # the lookup the commit will make -- the key's __hash__, and __eq__ on a collision -- made
        # now, on the committed storage (no read is recorded): user code in them that changes the
        # image is refused here, before anything is written, rather than while the commit is applied
        _dict_contains(d, k)
        where = _key_where(k)
        pairs.append((prep(k, where + " (key)"), prep(v, where)))
    return [("dict.update", (pairs,))] if pairs else []


def _dict_ior(d: Any, prep: Prep, other: Any) -> tuple[Events, Any]:
    return _dict_update(d, prep, other)[0], SELF


def _dict_clear(d: Any, prep: Prep) -> tuple[Events, Any]:
    return ([("dict.clear", ())] if len(d) else []), None


DICT_MUTATORS: dict[str, Planner] = {
    "__init__": _dict_init,
    "__setitem__": _dict_setitem,
    "__delitem__": _dict_delitem,
    "pop": _dict_pop,
    "popitem": _dict_popitem,
    "setdefault": _dict_setdefault,
    "update": _dict_update,
    "__ior__": _dict_ior,
    "clear": _dict_clear,
}

DICT_READS: dict[str, bool] = {
    **dict.fromkeys(["__getitem__", "get", "__contains__"], True),
    **dict.fromkeys(
        [
            "__len__",
            "__iter__",
            "__reversed__",
            "keys",
            "values",
            "items",
            "copy",
            "__eq__",
            "__ne__",
            "__or__",
            "__ror__",
            "__repr__",
        ],
        False,
    ),
}

# -- set planners ---------------------------------------------------------------


def _members(others: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for other in others:
        out.extend(other)
    return out


def _set_add(s: Any, prep: Prep, item: Any) -> tuple[Events, Any]:
    if item in s:
        return [], None
    return [("set.add", ([prep(item, ".add()")],))], None


def _set_discard(s: Any, prep: Prep, item: Any) -> tuple[Events, Any]:
    return ([("set.discard", ([item],))] if item in s else []), None


def _set_remove(s: Any, prep: Prep, item: Any) -> tuple[Events, Any]:
    if item not in s:
        raise KeyError(item)
    return [("set.discard", ([item],))], None


def _set_pop(s: Any, prep: Prep) -> tuple[Events, Any]:
    for item in s:
        return [("set.discard", ([item],))], item
    raise KeyError("pop from an empty set")


def _set_clear(s: Any, prep: Prep) -> tuple[Events, Any]:
    return ([("set.clear", ())] if len(s) else []), None


def _set_update(s: Any, prep: Prep, *others: Any) -> tuple[Events, Any]:
    new: dict[Any, None] = {}
    for m in _members(others):
        if m not in s and m not in new:
            new[prep(m, ".update()")] = None
    return ([("set.add", (list(new),))] if new else []), None


def _set_difference_update(s: Any, prep: Prep, *others: Any) -> tuple[Events, Any]:
    gone = [m for m in dict.fromkeys(_members(others)) if m in s]
    return ([("set.discard", (gone,))] if gone else []), None


def _set_intersection_update(s: Any, prep: Prep, *others: Any) -> tuple[Events, Any]:
    keep = [set(o) for o in others]
    gone = [m for m in s if not all(m in k for k in keep)]
    return ([("set.discard", (gone,))] if gone else []), None


def _set_symmetric_difference_update(s: Any, prep: Prep, other: Any) -> tuple[Events, Any]:
    members = list(dict.fromkeys(other))
    gone = [m for m in members if m in s]
    new = [prep(m, ".symmetric_difference_update()") for m in members if m not in s]
    events: Events = []
    if gone:
        events.append(("set.discard", (gone,)))
    if new:
        events.append(("set.add", (new,)))
    return events, None


def _set_init(s: Any, prep: Prep, /, *args: Any, **kwargs: Any) -> tuple[Events, Any]:
    """``s.__init__(iterable)`` on an attached set: emptied, then updated, as the builtin does.

    One difference: an iterator over the set itself gives its members, where
    the builtin, which empties the set first, raises ``RuntimeError``.
    """
    new: dict[Any, None] = {}
    for m in _init_source(s, "set", args, kwargs):
        if m not in new:
            new[prep(m, ".__init__()")] = None
    events: Events = [("set.clear", ())] if len(s) else []
    if new:
        events.append(("set.add", (list(new),)))
    return events, None


def _returning_self(planner: Planner) -> Planner:
    def inplace(s: Any, prep: Prep, other: Any) -> tuple[Events, Any]:
        if not isinstance(other, (set, frozenset)):
            return [], NotImplemented
        return list(planner(s, prep, other)[0]), SELF

    return inplace


SET_MUTATORS: dict[str, Planner] = {
    "__init__": _set_init,
    "add": _set_add,
    "discard": _set_discard,
    "remove": _set_remove,
    "pop": _set_pop,
    "clear": _set_clear,
    "update": _set_update,
    "difference_update": _set_difference_update,
    "intersection_update": _set_intersection_update,
    "symmetric_difference_update": _set_symmetric_difference_update,
    "__ior__": _returning_self(_set_update),
    "__isub__": _returning_self(_set_difference_update),
    "__iand__": _returning_self(_set_intersection_update),
    "__ixor__": _returning_self(_set_symmetric_difference_update),
}

#: Planners whose positional arguments are all iterables they read, by how many they take (0: any).
CONSUMING: dict[Planner, int] = {
    _list_init: 1,
    _list_extend: 1,
    _list_iadd: 1,
    _dict_update: 1,
    _dict_init: 1,
    _dict_ior: 1,
    _set_init: 1,
    _set_update: 0,
    _set_difference_update: 0,
    _set_intersection_update: 0,
    _set_symmetric_difference_update: 1,
}
#: ... of which these read (key, value) pairs when not given a mapping.
PAIRS: frozenset[Planner] = frozenset([_dict_update, _dict_init, _dict_ior])
#: ... and these take keyword arguments (more pairs).
KEYWORDS: frozenset[Planner] = frozenset([_dict_update, _dict_init])
#: The planners whose arguments :func:`reusable_args` may read (a caller on a hot path skips it for others).
REREADING: frozenset[Planner] = frozenset([*CONSUMING, _list_setitem])


SET_READS: dict[str, bool] = {
    "__contains__": True,
    **dict.fromkeys(
        [
            "__len__",
            "__iter__",
            "__eq__",
            "__ne__",
            "__lt__",
            "__le__",
            "__gt__",
            "__ge__",
            "__or__",
            "__ror__",
            "__and__",
            "__rand__",
            "__sub__",
            "__rsub__",
            "__xor__",
            "__rxor__",
            "isdisjoint",
            "issubset",
            "issuperset",
            "union",
            "intersection",
            "difference",
            "symmetric_difference",
            "copy",
        ],
        False,
    ),
}
