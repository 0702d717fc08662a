"""How an event's arguments are stored: by parameter code, as each kind declares them.

Each kind lists a code per argument (:data:`memimg.core._kinds.PARAMS`):
stored as it is, one value, a list of values, or a list of key/value pairs,
the values through the value codec. :func:`arg_encoder` and
:func:`arg_decoder` build, once per parameter string, the function that
turns a kind's arguments into their stored JSON and back. The commonest
signatures (``sv``: a field and its value; ``V``: items; ``vv``: a key and
its value) get a function of their own -- they are the commit and replay
hot paths -- made from the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memimg.core._kinds import PARAMS

__all__ = ["arg_decoder", "arg_encoder"]


def arg_encoder(params: str, encode: Callable[[Any], Any]) -> Callable[[tuple[Any, ...]], list[Any]]:
    """The function storing a kind's arguments (*params* its codes; *encode* a bound value encoder)."""

    def values(xs: list[Any]) -> list[Any]:
        return [encode(i) for i in xs]

    def pairs(xs: list[Any]) -> list[list[Any]]:
        return [[encode(a), encode(b)] for a, b in xs]

    if params == "sv":
        return lambda args: [args[0], encode(args[1])]
    if params == "V":
        return lambda args: [values(args[0])]
    if params == "vv":
        return lambda args: [encode(args[0]), encode(args[1])]
    how: dict[str, Callable[[Any], Any] | None] = {"raw": None, "value": encode, "values": values, "pairs": pairs}
    per = [how[PARAMS[c]] for c in params]

    def encode_args(args: tuple[Any, ...]) -> list[Any]:
        return [x if f is None else f(x) for f, x in zip(per, args)]

    return encode_args


def arg_decoder(params: str, decode: Callable[[Any], Any], optional: int = 0) -> Callable[[list[Any]], tuple[Any, ...]]:
    """The function reading a kind's stored arguments back (*decode* a bound value decoder).

    The stored arguments must be a list of one item per code (rows written
    before the last *optional* were added may lack them); any other shape is
    a :class:`ValueError` (the caller names the row).
    """

    def values(xs: list[Any]) -> list[Any]:
        return [decode(i) for i in xs]

    def pairs(xs: list[Any]) -> list[tuple[Any, Any]]:
        return [(decode(a), decode(b)) for a, b in _pairs(xs)]

    if not params:
        return lambda raw: ()
    if params == "sv":
        return lambda raw: (raw[0], decode(raw[1])) if type(raw) is list and len(raw) == 2 else _misshapen(raw, 2)
    if params == "V":
        return lambda raw: (values(raw[0]),) if type(raw) is list and len(raw) == 1 else _misshapen(raw, 1)
    if params == "vv":
        return lambda raw: (
            (decode(raw[0]), decode(raw[1])) if type(raw) is list and len(raw) == 2 else _misshapen(raw, 2)
        )
    how: dict[str, Callable[[Any], Any] | None] = {"raw": None, "value": decode, "values": values, "pairs": pairs}
    per = [how[PARAMS[c]] for c in params]
    most = len(per)
    least = most - optional

    def decode_args(raw: list[Any]) -> tuple[Any, ...]:
        if type(raw) is not list or not least <= len(raw) <= most:
            _misshapen(raw, most)
        return tuple([x if f is None else f(x) for f, x in zip(per, raw)])

    return decode_args


def _pairs(xs: Any) -> list[Any]:
    """*xs*, checked to be a list of two-item lists."""
    if type(xs) is not list or any(type(x) is not list or len(x) != 2 for x in xs):
        raise ValueError(
            f"the stored pairs {xs!r:.80} are not a list of [key, value] lists: the row was damaged or crafted; "
            "restore the log from a backup"
        )
    return xs


def _misshapen(raw: Any, count: int) -> Any:
    raise ValueError(
        f"the stored arguments {raw!r:.80} are not a list of {count}: the row was damaged or crafted; "
        "restore the log from a backup"
    )
