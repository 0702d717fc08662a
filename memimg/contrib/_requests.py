"""Who and what made a web request's commits: the metadata the Flask and Django integrations annotate it with.

Each request is annotated (``img.annotate``) with, by default:

``user``
    the id of the signed-in user, when the framework knows one;
``request``
    the request id: the ``X-Request-ID`` header when the request has one
    that is 1 to 200 printable ASCII characters (so the id a proxy or a
    client gave is the one in the log), else a new random one
    (:func:`request_id`);
``endpoint``
    what the request ran: Flask's endpoint, Django's view name (or path).

Which of these are recorded is configurable, a function of the request can
add keys of its own (or replace them), and the whole can be turned off; see
each framework's settings.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

from memimg.core._meta import MAX_INT

__all__ = ["KEYS", "MAX_TEXT", "annotate_settings", "request_id", "request_meta", "scalar", "user_id"]

#: The keys the integrations can record, and record by default.
KEYS: Final = ("user", "request", "endpoint")
#: The longest str value recorded from a request (a header or an id is cut there).
MAX_TEXT: Final = 200


def annotate_settings(
    on: Any,
    keys: Any,
    fn: Any,
    *,
    error: Callable[[str, str], Exception],
    load: Callable[[str], Any],
) -> tuple[tuple[str, ...] | None, Callable[..., Any] | None]:
    """The three annotation settings checked: the keys to record (None: off) and the function (None: none).

    *error* makes the exception for a wrong setting from the suffix of its
    name (``""``, ``"_KEYS"``, ``"_WITH"``) and a message; *load* imports a
    function named by a string (raising ImportError).
    """
    if not isinstance(on, bool):
        raise error("", f"must be True or False, not {on!r}")
    if isinstance(keys, str) or not isinstance(keys, Iterable):
        raise error("_KEYS", f"must be a list of keys among {', '.join(KEYS)}, not {keys!r}")
    keys = tuple(keys)
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise error("_KEYS", f"has unknown keys {unknown!r}; the keys are {', '.join(KEYS)}")
    if isinstance(fn, str):
        try:
            fn = load(fn)
        except ImportError as err:
            raise error("_WITH", f"{fn!r} cannot be imported ({err})") from err
    if fn is not None and not callable(fn):
        raise error("_WITH", f"must be a function returning the request's metadata dict (or None), not {fn!r}")
    return (keys if on else None), fn


def user_id(user: Any) -> Any:
    """The id of a user object: itself (a str or an int), ``get_id()``, ``.id`` or ``["id"]``; None when none."""
    if user is None or isinstance(user, (str, int)):
        return user
    if callable(getattr(user, "get_id", None)):
        return user.get_id()
    if hasattr(user, "id"):
        return user.id
    try:
        return user["id"]  # a sqlite3.Row, a dict
    except (TypeError, KeyError, IndexError):
        return None


def scalar(value: Any) -> str | int | float | bool | None:
    """*value* as a metadata value: an int, float, bool or None as it is; anything else as its str, cut short.

    An int out of metadata's range (beyond 2**53 - 1 either way: a 64-bit
    id) or a float that is not finite is stored as its str too, rather than
    refused, which would fail the request.
    """
    kind = type(value)
    if value is None or kind is bool:
        return value  # type: ignore[no-any-return]
    if kind is int and -MAX_INT <= value <= MAX_INT:
        return value  # type: ignore[no-any-return]
    if kind is float and math.isfinite(value):
        return value  # type: ignore[no-any-return]
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT]


def request_id(header: str | None) -> str:
    """The request's id: its ``X-Request-ID`` header if it is a plausible id, else a new random id.

    The header comes from the client (or a proxy) and is stored in the log
    as it is, so only 1 to :data:`MAX_TEXT` printable ASCII characters
    (space to ``~``, not all spaces) are taken; anything else -- longer,
    a control character (a forged line in ``memimg log``), non-ASCII -- is
    replaced by a new random id, never cut or cleaned (an altered id would
    match no other system's logs).
    """
    if header and len(header) <= MAX_TEXT and header.isascii() and header.isprintable() and not header.isspace():
        return header
    return uuid.uuid4().hex


def request_meta(
    keys: tuple[str, ...], *, user: Callable[[], Any], request: Callable[[], str], endpoint: Callable[[], Any]
) -> dict[str, Any]:
    """The metadata of one request: each of *keys* whose value is known (each value computed only if asked)."""
    meta: dict[str, Any] = {}
    for key in keys:
        value = user() if key == "user" else request() if key == "request" else endpoint()
        if value is not None:
            meta[key] = scalar(value)
    return meta
