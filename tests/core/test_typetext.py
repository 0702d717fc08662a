"""Declared field types are spelled one way whatever way the code writes the same type."""

from __future__ import annotations

import datetime
import enum
import typing
from decimal import Decimal
from typing import Annotated, Any, Dict, List, Optional, Union  # noqa: UP035

import attrs
import pytest

from memimg import persistent
from memimg.core import _types
from memimg.core._typetext import field_types, same_type, spell


class Colour(enum.Enum):
    RED = 1


@persistent(name="typetext.Part")
class Part:
    n: int = 0


@persistent(name="typetext.Widget")
class Widget:
    """Annotations as strings (this module imports annotations from the future), resolved in the module."""

    count: int = 0
    price: Optional[Decimal] = None  # noqa: UP045
    parts: List[Part] = attrs.field(factory=list)  # noqa: UP006
    colour: Colour = Colour.RED
    size: Annotated[int, "cm"] = 0
    when: datetime.datetime | None = None
    loose: Any = None


@pytest.mark.parametrize(
    ("annotations", "spelled"),
    [
        ((Optional[int], int | None, Union[None, int], "Optional[int]"), "int | None"),  # noqa: UP007, UP045
        ((List[int], list[int], typing.List[int]), "list[int]"),  # noqa: UP006
        ((Dict[str, Decimal], dict[str, Decimal]), "dict[str, Decimal]"),  # noqa: UP006
        ((Annotated[str, "x"], str), "str"),
        ((tuple[int, ...],), "tuple[int, ...]"),
        ((list[Part], List["Part"]), "list[typetext.Part]"),  # noqa: UP006
    ],
)
def test_one_type_has_one_spelling(annotations: tuple[Any, ...], spelled: str) -> None:
    """Optional/Union/|, typing's and builtins' generics, Annotated, forward references: one spelling each,
    with a class of the image's spelled by its stable name."""

    def resolved(annotation: Any) -> Any:
        holder = type("T", (), {"__annotations__": {"a": annotation}, "__module__": __name__})
        return typing.get_type_hints(holder)["a"]

    assert {spell(resolved(a)) for a in annotations} == {spelled}


def test_a_class_spells_its_fields_in_order() -> None:
    """Each field's declared type, resolved in the class's module, in field order."""
    info = _types.info_of(Widget)
    assert info is not None
    assert field_types(info) == (
        "int",
        "Decimal | None",
        "list[typetext.Part]",
        f"{__name__}.Colour",
        "int",
        "datetime | None",
        "Any",
    )


def test_same_type_reads_names_through_the_registry() -> None:
    """A stored spelling naming a class by an alias of its new class is the same type; an empty spelling
    (no annotation, or not recorded) matches anything; a changed type does not match."""

    @persistent(name="typetext.Gadget", aliases=("typetext.OldGadget",))
    class Gadget:
        n: int = 0

    assert same_type("list[typetext.OldGadget]", "list[typetext.Gadget]")
    assert same_type("", "Decimal") and same_type("int", "")
    assert not same_type("int", "Decimal")
    assert not same_type("list[typetext.Part]", "list[typetext.Gadget]")


def test_an_unresolvable_annotation_is_kept_as_written() -> None:
    """A name that does not resolve (imported only for type checkers, say) is kept as written, less quotes
    and spaces, so the same code spells it the same way every time."""

    @persistent(name="typetext.Holder")
    class Holder:
        thing: "Optional[NotDefinedAnywhere]" = None  # type: ignore[name-defined]  # noqa: F821, UP037, UP045
        n: int = 0

    info = _types.info_of(Holder)
    assert info is not None
    assert field_types(info) == ("Optional[NotDefinedAnywhere]", "int")
