"""Markers: one object per meaning, shared by every module that needs it.

A private ``object()`` per module is how two modules come to disagree on
what "no value" is (a read returned another module's sentinel once), so each
meaning has one marker, here, and every module imports it.
"""

from __future__ import annotations

from typing import Any, Final, final

__all__ = ["ABSENT", "DELETED", "ERASED", "MISSING", "NOT_GIVEN", "SELF", "WHOLE", "Marker"]


@final
class Marker:
    """A named singleton, compared with ``is``."""

    __slots__ = ("_name", "_text")

    def __init__(self, name: str, text: str | None = None) -> None:
        self._name = name
        self._text = text or name

    def __repr__(self) -> str:
        return self._text

    def __reduce__(self) -> str:
        return self._name  # pickled and copied as the module global of that name


#: "No value here": a lookup in an overlay, a view or a cache found nothing (not the value ``None``).
ABSENT: Final[Any] = Marker("ABSENT")
#: A transaction deleted this field or key (its overlays and views hold it in the value's place).
DELETED: Final[Any] = Marker("DELETED")
#: Read/write key meaning "the whole collection" (length, order, iteration).
WHOLE: Final[Any] = Marker("WHOLE")
#: A planner result meaning "the method returns the collection itself" (``+=``).
SELF: Final[Any] = Marker("SELF")
#: An optional argument that was not given (``dict.pop(key)`` without a default).
NOT_GIVEN: Final[Any] = Marker("NOT_GIVEN")
#: What :meth:`MemoryImage.erase` left where a past value was stored (public as ``memimg.ERASED``).
ERASED: Final[Any] = Marker("ERASED", "memimg.ERASED")
#: Public (``memimg.MISSING``): there was, or is, no value here -- a field unset, a key or set member absent
#: (a :class:`memimg.Difference`'s ``old`` or ``new``; a :class:`memimg.Change`'s).
MISSING: Final[Any] = Marker("MISSING")
