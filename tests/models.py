"""Domain classes shared by the tests (module level, so their names are stable)."""

from __future__ import annotations

import enum
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs

import memimg
from memimg import persistent


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Money:
    amount: Decimal
    currency: str = "EUR"


@attrs.frozen
class Point:
    x: int
    y: int


@persistent
class Entry:
    label: str
    amount: Decimal = Decimal("0")


@persistent
class Account:
    owner: str
    balance: Decimal = Decimal("0")
    tags: set[str] = attrs.field(factory=set)
    entries: list[Entry] = attrs.field(factory=list)


@persistent(name="tests.Bank")
class Bank:
    accounts: dict[str, Account] = attrs.field(factory=dict)
    name: str = "bank"


@persistent
class Node:
    value: Any = None
    next: Any = None
    children: list[Any] = attrs.field(factory=list)
    meta: dict[Any, Any] = attrs.field(factory=dict)


@persistent
class Box:
    """A root for tests: one field of anything."""

    content: Any = None
    other: Any = None


@persistent
class Validated:
    count: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    label: str = attrs.field(default="", converter=str)


class NotPersistent:
    def __init__(self) -> None:
        self.x = 1


@attrs.define
class MutableAttrs:
    x: int = 0


memimg_field_alias = memimg.field


@persistent
class Tally:
    """Counters (``merge="add"``) of each number type, and a plain field beside them."""

    hits: int = memimg.field(default=0, merge="add")
    total: Decimal = memimg.field(default=Decimal("0"), merge="add")
    share: Fraction = memimg.field(default=Fraction(0), merge="add")
    ranked: int = memimg.field(default=0, merge="add", index=True)
    note: str = ""
