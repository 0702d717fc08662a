"""The generated state encoders: equal to the plain path on any state, and debuggable.

An entity's state is written by code generated per class (every field read
and tested inline); :func:`memimg.core._encoders.slow_state` is the plain
path it must agree with, on every kind of value, with fields unset, in both
access modes (plain attribute loads and raw slot getters).
"""

from __future__ import annotations

import linecache
import traceback
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memimg
from memimg import persistent
from memimg.core import _types
from memimg.core._codec import Codec
from memimg.core._encoders import REF_CALL, container_encoders, slow_state, state_encoder, value_writer
from memimg.model import SHELL
from tests.models import Color, Money


@persistent(name="enc.Sample")
class Sample:
    a: Any = None
    b: Any = None
    c: Any = None


INFO = _types.info_of(Sample)
REFS: dict[int, int] = {}

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.tuples(st.integers(-3, 3), st.text(max_size=2)),
    st.frozensets(st.integers(0, 5), max_size=3),
    st.sampled_from([Color.RED, Money(Decimal("1.5"))]),
    st.just("entity"),  # replaced by another Sample: a reference
)


def _ref(obj: Any) -> int:
    return REFS.setdefault(id(obj), len(REFS) + 1)


def _sample(state: dict[str, Any]) -> Any:
    obj: Any = object.__new__(Sample)
    for f, v in state.items():
        INFO.setters[f](obj, Sample() if v == "entity" else v)
    return obj


def _encoders(direct: bool) -> tuple[Any, Any, Any]:
    codec = Codec(memimg.converter, SHELL)
    value, linked = value_writer(codec, codec.encoder(_ref), _ref)
    slow = slow_state(INFO, value)
    keyed = state_encoder(INFO, direct, REF_CALL, keyed=True)(value, linked, slow, ref=_ref)
    listed = state_encoder(INFO, direct, REF_CALL, keyed=False)(value, linked, slow, ref=_ref)
    return slow, keyed, listed


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"a": values, "b": values, "c": values}), st.booleans())
def test_generated_state_encoders_equal_the_plain_path(state: dict[str, Any], direct: bool) -> None:
    """On any state -- every kind of value, references, fields unset -- the generated encoders give what
    the plain path gives: a dict of the set fields (keyed), the values in field order (listed, all set)."""
    obj = _sample(state)
    slow, keyed, listed = _encoders(direct)
    expected = slow(obj)
    assert keyed(obj) == expected
    if len(state) == len(INFO.fields):
        assert listed(obj) == [expected[f] for f in INFO.fields]
    else:
        assert listed(obj) == expected  # an unset field: the plain path's dict


@given(st.lists(values, max_size=6))
def test_generated_collection_encoders_equal_the_value_writer(items: list[Any]) -> None:
    """The generated list, dict and set encoders write each item as the value writer does."""
    items = [Sample() if v == "entity" else v for v in items]
    codec = Codec(memimg.converter, SHELL)
    value, linked = value_writer(codec, codec.encoder(_ref), _ref)
    list_state, dict_state, set_state = container_encoders(REF_CALL)(value, linked, ref=_ref)
    assert list_state(list(items)) == [value(x) for x in items]
    keyed = {f"k{i}": x for i, x in enumerate(items)}
    assert dict_state(keyed) == {k: value(x) for k, x in keyed.items()}
    hashable = {x for x in items if not isinstance(x, float) or x == x}
    assert sorted(map(repr, set_state(hashable))) == sorted(repr(value(x)) for x in hashable)


def test_generated_code_shows_in_tracebacks() -> None:
    """Generated encoders are registered with linecache: a traceback through one shows its source."""
    codec = Codec(memimg.converter, SHELL)

    def value(v: Any) -> Any:
        raise RuntimeError("boom")

    slow = slow_state(INFO, value)
    encode = state_encoder(INFO, False, REF_CALL, keyed=True)(value, set(), slow, ref=_ref)
    obj = _sample({"a": Decimal("1"), "b": 1, "c": 2})
    with pytest.raises(RuntimeError) as info:
        encode(obj)
    frames = traceback.extract_tb(info.value.__traceback__)
    generated = [f for f in frames if f.filename.startswith("<memimg state encoder of enc.Sample")]
    assert generated and generated[0].line  # the source line is known
    assert linecache.getline(generated[0].filename, generated[0].lineno).strip() == generated[0].line
    assert codec.classify(Sample) == "entity"
