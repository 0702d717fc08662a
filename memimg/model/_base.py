"""What every tracked object carries, and the contract between the model and its owner.

Entities (``@persistent`` instances) and tracked collections hold two hidden
slots, never part of the user's fields:

* ``_mi_img`` -- the *owner* (the image's graph) the object is attached to,
  or ``None`` while the object is free-standing;
* ``_mi_oid`` -- its stable object id in that owner, or ``None`` while it is
  being attached by an open transaction (ids are given at commit, so they are
  a pure function of the log).

The model layer never imports the image or the stores. It talks to its owner
through the small :class:`Owner` protocol below and to the current
transaction through :class:`TxReader`; ``memimg/_graph.py`` and
``memimg/_tx.py`` implement them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = [
    "ABSENT",
    "OID",
    "OWNER",
    "SELF",
    "WHOLE",
    "Owner",
    "PersistentBase",
    "Planner",
    "Prep",
    "TxReader",
    "set_oid",
    "set_owner",
]


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: Read/write key meaning "the whole collection" (length, order, iteration).
WHOLE: Any = _Marker("WHOLE")
#: A planner result meaning "the method returns the collection itself" (``+=``).
SELF: Any = _Marker("SELF")
#: "No value here" in a transaction's overlays and views (distinct from a value of ``None``).
#: One marker for every module that looks values up: a copy of its own would not be recognised.
ABSENT: Any = _Marker("ABSENT")


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
#: Raw getter of the owner slot, usable on any entity (never hooked).
OWNER: Callable[[Any], Any] = PersistentBase.__dict__["_mi_img"].__get__
OID: Callable[[Any], Any] = PersistentBase.__dict__["_mi_oid"].__get__


def set_owner(obj: Any, owner: Owner | None) -> None:
    """Set the owner slot of an entity or a tracked collection."""
    type(obj)._mi_img.__set__(obj, owner)  # the slot of whichever base declares it


def set_oid(obj: Any, oid: int | None) -> None:
    """Set the object-id slot of an entity or a tracked collection."""
    type(obj)._mi_oid.__set__(obj, oid)


#: ``prep(value, where)`` makes a value storable (attaching new objects,
#: converting plain containers) or raises ``UnsupportedValueError``.
Prep = Callable[[Any, str], Any]
#: A planner turns one collection method call into events, without mutating:
#: ``planner(coll, prep, *args, **kwargs) -> (events, result)`` where each
#: event is ``(kind_name, args_tuple)``.
Planner = Callable[..., tuple[Sequence[tuple[str, tuple[Any, ...]]], Any]]


class TxReader(Protocol):
    """What tracked reads and field writes need from the current transaction."""

    def read_field(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any: ...

    def read_coll(self, coll: Any, method: str, args: tuple[Any, ...], key: Any) -> Any: ...

    def set_field(self, obj: Any, name: str, value: Any) -> None: ...


class Owner(Protocol):
    """What tracked objects need from the graph they are attached to."""

    _mi_current: ContextVar[Any]
    _mi_publishing: list[Any]

    def _mi_set_field(self, obj: Any, name: str, value: Any) -> None: ...  # outside a transaction

    def _mi_del_field(self, obj: Any, name: str) -> None: ...

    def _mi_mutate(self, coll: Any, planner: Planner, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

    def _mi_published_field(self, obj: Any, name: str, getter: Callable[[Any], Any]) -> Any: ...

    def _mi_published_coll(self, coll: Any, method: str, args: tuple[Any, ...]) -> Any: ...
