"""What every tracked object carries, and the contract between the model and its owner.

Entities (``@persistent`` instances) and tracked collections hold two hidden
slots, never part of the user's fields:

* ``_mi_img`` -- the *owner* (the image's engine) the object is attached
  to, or ``None`` while the object is free-standing;
* ``_mi_oid`` -- its stable object id in that owner, or ``None`` while it is
  being attached by an open transaction (ids are given at commit, so they are
  a pure function of the log).

The model layer never imports the image or the stores. It hands every read
and write of an attached object to the owner's *current writer*
(``owner._mi_current.get()``, a :class:`Writer`): the open transaction of this
thread or task, or the owner's writer that commits each change by itself.
Which one it is, is decided in one place -- where the owner sets that
context variable when a transaction begins and ends -- never in the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ["Owner", "PersistentBase", "Planner", "Prep", "Writer"]


class PersistentBase:
    """Hidden base of every ``@persistent`` class: two slots, nothing else."""

    __slots__ = ("_mi_img", "_mi_oid")

    _mi_img: Owner | None
    _mi_oid: int | None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = object.__new__(cls)
        _SET_OWNER(self, None)
        _SET_OID(self, None)
        return self


_SET_OWNER = PersistentBase.__dict__["_mi_img"].__set__
_SET_OID = PersistentBase.__dict__["_mi_oid"].__set__

#: ``prep(value, where)`` makes a value storable (attaching new objects,
#: converting plain containers) or raises ``UnsupportedValueError``.
Prep = Callable[[Any, str], Any]
#: A planner turns one collection method call into events, without mutating:
#: ``planner(coll, prep, *args, **kwargs) -> (events, result)`` where each
#: event is ``(kind_name, args_tuple)``.
Planner = Callable[..., tuple[Sequence[tuple[str, tuple[Any, ...]]], Any]]


class Writer(Protocol):
    """Where an attached object's reads and writes go: a transaction, or the owner's committing writer.

    While read hooks are installed, a read goes to the writer if it
    :attr:`tracks_reads` (a transaction: it shows its own writes and records
    what it read) or if a commit is being applied (:attr:`publishing`: the
    reader sees all of it or none); otherwise it is a plain read. A writer
    that tracks reads also checks a unique field's new value
    (:meth:`check_unique`) before the write; the others check at commit.
    """

    tracks_reads: bool
    publishing: Any
    #: the fast path of the hottest write, for a transaction: its journal -- a flat list of ``(kind, object,
    #: args)`` triples -- when a field with no setattr hook, set to a scalar (``None``, bool, int, float, ASCII
    #: str), needs nothing but one ``obj.set`` event appended there (the writer brings the rest up to date
    #: when it next looks); the entity's ``__setattr__`` then appends it itself, with no call. None: every
    #: set goes to :meth:`set_field`.
    fast: list[Any] | None

    def set_field(self, obj: Any, name: str, value: Any) -> None: ...

    def del_field(self, obj: Any, name: str) -> None: ...

    def mutate(self, coll: Any, planner: Planner, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

    def read_field(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any: ...

    def read_counter(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any: ...

    def counter_generation(self, obj: Any, name: str) -> int: ...

    def counter_written(self, obj: Any, name: str, value: Any) -> None: ...

    def read_coll(self, coll: Any, method: str, args: tuple[Any, ...], key: Any) -> Any: ...

    def check_unique(self, obj: Any, name: str, value: Any) -> None: ...


class Owner(Protocol):
    """What tracked objects need from the image they are attached to."""

    _mi_current: ContextVar[Writer]
