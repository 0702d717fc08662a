"""Generated state encoders: an object's stored state in one pass, no call per field.

Walks that write many states -- a snapshot of a million objects, the records
of a big attach, ``serialize`` -- encode each object with code generated for
its class (and for each collection type) and compiled once: every field is
read and tested inline against the inline rule (:data:`memimg.core._codec.INLINE`)
-- values stored as themselves are written as they are, references to
objects as ``["r", oid]``, everything else through the walk's value function.

How a reference is written depends on the walk (``REF_*``): a snapshot
marks and queues the objects it meets for the first time inline; an
attach's records write objects that have an id inline and give new ones
their id through ``ref``; other walks call ``ref``.

The generated source is registered with :mod:`linecache` (as attrs does),
so tracebacks and debuggers show it; ``tests/core/test_encoders.py`` checks
the generated encoders against :func:`slow_state` on random states.
"""

from __future__ import annotations

import inspect
import itertools
import keyword
import linecache
import types
from collections.abc import Callable
from typing import Any, Final

from memimg.core import _types
from memimg.core._codec import INLINE, LINKED, Codec

__all__ = [
    "REF_CALL",
    "REF_COMMIT",
    "REF_MARK",
    "container_encoders",
    "field_reads",
    "field_slots",
    "slow_state",
    "state_encoder",
    "value_writer",
]

#: How generated code writes a reference to ``{v}``, an object of a linked type, by walk (see the docstring).
REF_MARK: Final = "o if seen[o := {v}._mi_oid] else mark(o, 1) or push({v}) or o"
REF_COMMIT: Final = "o if (o := {v}._mi_oid) is not None else ref({v})"
REF_CALL: Final = "ref({v})"

_X: Final = 2**63
_counter = itertools.count()


def _compile(source: str, what: str) -> dict[str, Any]:
    """Execute generated *source*, registered with linecache under a unique name; its namespace."""
    filename = f"<memimg {what} #{next(_counter)}>"
    lines = source.splitlines(True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    namespace: dict[str, Any] = {"X": _X}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def _item(v: str, ref: str) -> str:
    """The expression storing the value held in *v*."""
    inline = INLINE.format(v=v)
    return f"{v} if {inline} else ['r', {ref.format(v=v)}] if t in linked else value({v})"


def field_slots(info: _types.TypeInfo) -> tuple[Any, ...] | None:
    """The member descriptors of *info*'s fields in declared order -- what its raw slot getters read, and what the
    compiled walks read an entity's fields at -- or None if a field is not a plain slot."""
    slots = tuple(getattr(info.getters[f], "__self__", None) for f in info.fields)
    return slots if all(type(d) is types.MemberDescriptorType for d in slots) else None


def field_reads(info: _types.TypeInfo, direct: bool) -> tuple[dict[str, Any], str]:
    """Generated code reading every field of an *info* entity ``obj`` into ``v0``, ``v1``, ...

    Returns ``(getters, code)``: the code (indented for a ``try`` block in a
    nested function) reads a field as a plain attribute load if *direct*
    and nothing in the class intervenes (a raw slot read: only right while
    no read hook is installed), else through its raw slot getter ``g<i>``,
    which *getters* holds for the code's namespace.
    """
    cls = info.cls
    # a plain attribute load is a raw slot read only if nothing in the class intervenes
    direct = (
        direct
        and inspect.getattr_static(cls, "__getattribute__") is object.__dict__["__getattribute__"]
        and inspect.getattr_static(cls, "__getattr__", None) is None
    )
    getters: dict[str, Any] = {}
    reads = []
    for i, f in enumerate(info.fields):
        getters[f"g{i}"] = info.getters[f]
        plain = (
            direct
            and f.isascii()
            and f.isidentifier()
            and not keyword.iskeyword(f)
            and type(inspect.getattr_static(cls, f, None)) is types.MemberDescriptorType
        )
        reads.append(f"v{i} = obj.{f}" if plain else f"v{i} = g{i}(obj)")
    return getters, "\n            ".join(reads) or "pass"


def _state_encoder(info: _types.TypeInfo, direct: bool, ref: str, keyed: bool) -> Callable[..., Any]:
    """Compile the maker of an encoder of *info*'s entity states (see :func:`state_encoder`)."""
    getters, reads_code = field_reads(info, direct)
    items = [(f"{f!r}: " if keyed else "") + _item(f"v{i}", ref) for i, f in enumerate(info.fields)]
    # all fields are read first: only a read's AttributeError (an unset field) means the slow
    # path, never one raised while encoding a value (a user's hook would run twice)
    body = ",\n            ".join(items)
    opening, closing = "{}" if keyed else "[]"
    source = f"""
def make(value, linked, slow, seen=None, mark=None, push=None, ref=None):
    def encode(obj):
        try:
            {reads_code}
        except AttributeError:
            return slow(obj)
        return {opening}
            {body}
        {closing}
    return encode
"""
    namespace = _compile(source, f"state encoder of {info.name}")
    namespace.update(getters)
    return namespace["make"]  # type: ignore[no-any-return]


def state_encoder(info: _types.TypeInfo, direct: bool, ref: str, *, keyed: bool) -> Callable[..., Any]:
    """The maker of a compiled encoder of *info*'s entity states, in declared field order.

    ``make(value, linked, slow, seen, mark, push, ref)`` returns the encoder:
    the state is the list of the field values (snapshot format 2), or with
    *keyed* the dict of them by name (attach records, ``serialize``). *ref*
    is one of ``REF_*``. With *direct*, fields are read as plain attribute
    loads (only right while no read hook is installed on any class);
    otherwise through the raw slot getters. An object with an unset field
    goes to ``slow`` (:func:`slow_state`).

    Compiled once and kept on the class's :class:`TypeInfo` (a class
    decorated again gets a new one), keyed also by the class's own attribute
    hooks, so a ``__getattr__`` or ``__getattribute__`` added to the class
    later is honoured rather than read past.
    """
    cls = info.cls
    key = (direct, ref, keyed, cls.__getattribute__, getattr(cls, "__getattr__", None))
    make = info.encoders.get(key)
    if make is None:
        make = info.encoders[key] = _state_encoder(info, direct, ref, keyed)
    return make


def _container_encoders(ref: str) -> Callable[..., tuple[Callable[[Any], Any], ...]]:
    item = _item("x", ref)
    source = f"""
def make(value, linked, seen=None, mark=None, push=None, ref=None):
    def list_state(obj):
        return [{item} for x in list_iter(obj)]

    def dict_state(obj):
        if all(type(k) is str for k in dict_keys(obj)):
            return {{k: value(x) for k, x in dict_items(obj)}}
        return [[value(k), value(x)] for k, x in dict_items(obj)]

    def set_state(obj):
        return [value(x) for x in set_copy(obj)]

    return list_state, dict_state, set_state
"""
    namespace = _compile(source, f"collection encoders ({ref})")
    namespace.update(list_iter=list.__iter__, dict_keys=dict.keys, dict_items=dict.items, set_copy=set.copy)
    return namespace["make"]  # type: ignore[no-any-return]


_CONTAINERS: dict[str, Callable[..., tuple[Callable[[Any], Any], ...]]] = {}


def container_encoders(ref: str) -> Callable[..., tuple[Callable[[Any], Any], ...]]:
    """The maker of the list, dict and set state encoders for references written as *ref*.

    ``make(value, linked, seen, mark, push, ref)`` returns ``(list_state,
    dict_state, set_state)``: a list's items and a set's members as a list,
    a dict as a dict when every key is a str, else as a list of pairs.
    """
    make = _CONTAINERS.get(ref)
    if make is None:
        make = _CONTAINERS[ref] = _container_encoders(ref)
    return make


_VALUE_WRITER: Final = f"""
def make(shapes, classify, linked_shapes, linked, ref, encode):
    def value(v):
        if type(v) in linked:
            return ['r', ref(v)]
        if {INLINE.format(v="v")}:
            return v
        if (shapes.get(t) or classify(t)) in linked_shapes:
            linked.add(t)
            return ['r', ref(v)]
        return encode(v)
    return value
"""
_make_value_writer = _compile(_VALUE_WRITER, "value writer")["make"]


def value_writer(codec: Codec, encode: Callable[[Any], Any], ref: Callable[[Any], int]) -> tuple[Any, set[type]]:
    """How a walk stores one value: by the inline rule, as a reference, or through *encode*.

    Returns ``(value, linked)``: the function, and the set of object types
    met so far, which the generated encoders test inline before calling it.
    """
    linked: set[type] = set(codec.shell.tracked)
    return _make_value_writer(codec._shapes, codec.classify, LINKED, linked, ref, encode), linked


def slow_state(info: _types.TypeInfo, value: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    """An entity's state as a dict of the fields that are set (what the generated encoders fall back to)."""
    getters = tuple(info.getters.items())

    def state(obj: Any) -> dict[str, Any]:
        fields = {}
        for f, get in getters:
            try:
                v = get(obj)
            except AttributeError:  # unset; an AttributeError of the encoding is the value's to raise
                continue
            fields[f] = value(v)
        return fields

    return state
