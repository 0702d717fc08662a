"""Event kinds: each declared once, with its parameters and its conflict rule as data."""

from __future__ import annotations

from typing import Any

import pytest

from memimg.core._kinds import APPEND, FIELD, KEY, KINDS, MEMBERS, NONE, PAIRS, PARAMS, WHOLE, Kind, Rule, kind
from memimg.core._markers import WHOLE as WHOLE_KEY


def test_every_kind_has_known_parameters_a_rule_and_a_doc() -> None:
    """Each registered kind stores its arguments by known codes, conflicts by a Rule, and says what it means."""
    assert len(KINDS) >= 19
    for k in KINDS.values():
        assert set(k.params) <= PARAMS.keys() and isinstance(k.conflict, Rule) and k.doc


@pytest.mark.parametrize(
    ("rule", "args", "keys"),
    [
        (FIELD, ("balance", 1), ["balance"]),
        (KEY, ("ada", 1), ["ada"]),
        (PAIRS, ([("a", 1), ("b", 2)],), ["a", "b"]),
        (MEMBERS, (["x", "y"],), ["x", "y"]),
        (APPEND, ([1, 2],), []),
        (WHOLE, (), [WHOLE_KEY]),
        (NONE, (), []),
    ],
)
def test_a_rule_names_the_parts_an_event_writes(rule: Rule, args: tuple[Any, ...], keys: list[Any]) -> None:
    """The conflict index reads what an event writes from its rule: no switch on the kind."""
    assert list(rule.keys(args)) == keys


def test_a_kind_is_declared_once_with_known_parameter_codes() -> None:
    """Declaring a kind twice, or with an unknown parameter code, is refused."""
    with pytest.raises(ValueError, match="defined twice"):
        kind("obj.set", "sv", FIELD)(lambda a, obj, name, value: None)
    with pytest.raises(ValueError, match="unknown parameter codes"):
        Kind(name="x.new", params="sz", conflict=FIELD, apply=lambda a, obj: None, doc="")
