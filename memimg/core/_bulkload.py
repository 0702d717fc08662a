"""Loading a format-2 snapshot's chunks a run of objects at a time.

A snapshot lists its objects in chunks, each a directory (ids, type
indexes) and a line of states; the objects of one type mostly come in long
runs (every item of a graph, every tag list). A run is loaded with no call
of memimg's own per object:

* **made** by the builtins: ``object.__new__`` for the entities (attrs'
  ``__init__`` and validators never run, as everywhere in replay), the
  tracked collection's own ``__new__`` for collections; their owner and id
  set through ``map`` over the raw slot setters;
* **placed** at once when the ids follow the table's end (they do, in a
  snapshot memimg wrote);
* **filled** field by field: every state is checked to list the run's
  declared fields first, each field's column of values is decoded (a
  reference resolved inline) and set through its raw slot setter by
  ``map``; a list's items, a dict's values are decoded the same way.

Everything else -- a type whose stored declaration differs from the code
(upgraders, renames, defaults), a removed type, a reload in place
(:attr:`Reader.reuse`), a state that does not fit -- goes the general way,
object by object (:meth:`Reader.create`, :meth:`Reader.fill_states`), which
also names what is wrong. A run is only changed once all of it decoded, so
a failure leaves nothing half-filled for the general way to fill again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import accumulate, groupby, repeat
from typing import Any

from memimg.core import _types

#: a :class:`memimg.core._reader.Reader` (not imported: it imports this module)
Reader = Any

__all__ = ["Run", "decode_values", "fill_run", "make_runs"]


class Run:
    """Objects of one type at consecutive places of a chunk: ``states[start:stop]`` are theirs.

    *made* is what :meth:`Reader.create` returns for them when they are not
    made in bulk (``objs`` is then ``None``).
    """

    __slots__ = ("made", "name", "objs", "start", "stop")

    def __init__(self, start: int, stop: int, name: str, objs: list[Any] | None, made: list[Any] | None) -> None:
        self.start, self.stop, self.name, self.objs, self.made = start, stop, name, objs, made


def _consume(it: Any) -> None:
    deque(it, maxlen=0)


def make_runs(reader: Reader, names: list[str], oids: list[int], kinds: list[int]) -> list[Run]:
    """Make and place the (empty) objects of one chunk, a run of one type at a time."""
    runs: list[Run] = []
    start = 0
    for k, group in groupby(kinds):
        stop = start + len(list(group))
        name = names[k]
        run_oids = oids[start:stop]
        objs = None if reader.reuse is not None else _make(reader, name, run_oids)
        if objs is None:
            runs.append(Run(start, stop, name, None, reader.create([(oid, name) for oid in run_oids])))
        else:
            reader.table.place_run(run_oids, objs)
            runs.append(Run(start, stop, name, objs, None))
        start = stop
    return runs


def _make(reader: Reader, name: str, oids: list[int]) -> list[Any] | None:
    """The objects of a run of type *name*, made with their owner and ids (not placed); ``None``: not in bulk."""
    shell = reader.shell
    owner = reader.table.owner
    n = len(oids)
    cls: Any = shell.by_name.get(name)
    if cls is not None:  # a tracked collection
        objs = list(map(cls.__new__, repeat(cls, n)))
        _consume(map(setattr, objs, repeat("_mi_img", n), repeat(owner, n)))
        _consume(map(setattr, objs, repeat("_mi_oid", n), oids))
        return objs
    plan = reader.plan(name)
    info = plan.info
    if info is None or info.kind != _types.ENTITY:
        return None  # a removed type's placeholders, or not an entity: named by the general way
    objs = list(map(object.__new__, repeat(info.cls, n)))
    _consume(map(shell.set_owner, objs, repeat(owner, n)))
    _consume(map(shell.set_oid, objs, oids))
    return objs


def decode_values(reader: Reader) -> Callable[[list[Any]], list[Any]]:
    """``values -> decoded``: stored values decoded, a reference resolved inline (the table's objects as they are
    now: every object of a snapshot is made before any is filled)."""
    objects = reader.table.objects
    dec = reader.decode
    n = len(objects)

    def decode(values: list[Any]) -> list[Any]:
        return [
            x
            if type(x) is not list
            else o
            if len(x) == 2 and x[0] == "r" and type(i := x[1]) is int and 0 < i < n and (o := objects[i]) is not None
            else dec(x)
            for x in values
        ]

    return decode


def fill_run(reader: Reader, run: Run, states: list[Any], decode: Callable[[list[Any]], list[Any]]) -> bool:
    """Fill the objects of *run* (made in bulk) from their *states*; ``False``: nothing was filled, fill them
    the general way."""
    objs = run.objs
    assert objs is not None
    shell = reader.shell
    t = type(objs[0])
    try:
        if t is shell.list:
            if set(map(type, states)) != {list}:
                return False
            # every item of the run decoded in one pass, then cut back into the lists
            flat = decode([x for s in states for x in s])
            ends = list(accumulate(map(len, states)))
            _consume(map(list.extend, objs, map(flat.__getitem__, map(slice, [0, *ends[:-1]], ends))))
            return True
        if t is shell.dict:
            kinds = set(map(type, states))
            if kinds == {dict}:  # string keys
                items = [dict(zip(s, decode(list(s.values())))) for s in states]
            elif kinds == {list} and all(set(map(len, s)) <= {2} for s in states):  # [key, value] pairs
                items = [dict(zip(decode([p[0] for p in s]), decode([p[1] for p in s]))) for s in states]
            else:
                return False
            _consume(map(dict.update, objs, items))
            return True
        if t is shell.set:
            return False
        plan = reader.plan(run.name)
        info = plan.info
        fields = plan.stored_fields
        if (
            info is None
            or not plan.identity
            or fields != info.fields
            or set(map(type, states)) != {list}
            or set(map(len, states)) != {len(fields)}
        ):
            return False
        columns = [decode([s[i] for s in states]) for i in range(len(fields))]
    except Exception:
        return False  # the general way reads them again, and names what is wrong
    setters = info.setters
    for f, column in zip(fields, columns):
        _consume(map(setters[f], objs, column))
    return True
