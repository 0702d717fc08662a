"""The value codec: dispatch by exact type between Python values and their stored JSON.

A stored value is JSON data (the tags are listed in :mod:`memimg.core._values`).
:class:`Codec` classifies each exact type once into a *shape* (native, leaf,
tuple, entity, tracked collection...) and caches it, the cache cleared when
its converter changes. Encoding and decoding are done by functions *bound*
to what a walk needs, made by :meth:`Codec.encoder` and :meth:`Codec.decoder`:

* an encoder is bound to ``ref(obj) -> oid`` -- how this walk writes a
  reference to an entity or tracked collection (a commit gives new objects
  their ids, a snapshot marks them seen, ``serialize`` numbers them) -- and
  to ``declare(info)``, told of every value-object class it writes (whose
  schema the log or the snapshot must declare);
* a decoder is bound to ``deref(oid) -> obj`` (the object table), to the
  schema-aware decoder of value objects, and to whether unknown enums and
  user values are read into stand-ins (tools).

So no state is swapped into the codec around a call: each walk holds its own
bound functions.

**The inline rule.** The values stored as themselves -- ``str``, ``bool``,
``None`` and ints of 64 bits -- are written without a call by every hot
encoder; :data:`INLINE` is that test as source text (compiled into the
generated encoders, :mod:`memimg.core._encoders`) and :func:`inline` the
same test as a function. Finite floats are themselves too, but go through
the encoder (``nan`` and the infinities are tagged).
"""

from __future__ import annotations

import enum
import functools
import math
import operator
from collections.abc import Callable
from typing import Any, Final

from memimg._errors import CorruptLogError, UnknownTypeError
from memimg.core import _types
from memimg.core._counters import COUNTED
from memimg.core._generic import CustomValue, EnumValue
from memimg.core._gone import Gone
from memimg.core._markers import ERASED, Marker
from memimg.core._shell import Shell
from memimg.core._values import (
    Converter,
    describe_unsupported,
    flag_encoder,
    int_from_text,
    int_text,
)

__all__ = [
    "COUNTED_SHAPE",
    "CUSTOM",
    "ENTITY",
    "ENUM",
    "ERASED_DATA",
    "ERASED_SHAPE",
    "FROZENSET",
    "GENERIC",
    "GONE",
    "INLINE",
    "LEAF",
    "NATIVE",
    "PLAIN",
    "TRACKED",
    "TUPLE",
    "UNSUPPORTED",
    "VALUE",
    "Codec",
    "kind_mismatch",
]

# Shape classes, decided once per exact type by Codec.classify.
NATIVE: Final = "native"
LEAF: Final = "leaf"
TUPLE: Final = "tuple"
FROZENSET: Final = "frozenset"
ENUM: Final = "enum"
VALUE: Final = "value"
CUSTOM: Final = "custom"
ENTITY: Final = "entity"
TRACKED: Final = "tracked"
PLAIN: Final = "plain"  # a plain list/dict/set: converted to a tracked one when stored
UNSUPPORTED: Final = "unsupported"
GONE: Final = "gone"  # an object of a removed type, while replaying
GENERIC: Final = "generic"  # a stand-in for an enum member or user value whose class is not loaded
COUNTED_SHAPE: Final = "counted"  # a number read from a counter field: stored as the plain number
ERASED_SHAPE: Final = "erased"  # memimg.ERASED, where memimg.MemoryImage.erase excised a past value
#: How :data:`~memimg.ERASED` is stored (read back as the marker; see :mod:`memimg.core._values`).
ERASED_DATA: Final = ("erased",)
#: The shapes stored as references to objects of the graph.
LINKED: Final = frozenset({ENTITY, TRACKED, PLAIN})

#: The inline rule, as source text: ``{v}`` is stored as itself (``t`` is bound to its type;
#: ``X`` must be ``2**63`` in the namespace of the code it is compiled into).
INLINE: Final = "(t := type({v})) is str or (t is int and -X <= {v} < X) or t is bool or {v} is None"
_X: Final = 2**63


def _no_declare(info: _types.TypeInfo) -> None:
    pass


class Codec:
    """Classify, encode and decode the values of one converter (see the module docstring)."""

    def __init__(self, conv: Converter, shell: Shell) -> None:
        self.converter = conv
        self.shell = shell
        self._seen_version = -1
        self._shapes: dict[type, str] = {}
        self._reset()

    def _reset(self) -> None:
        # cleared in place: the value writers hold this very dict
        self._shapes.clear()
        self._shapes.update({str: NATIVE, bool: NATIVE, int: NATIVE, float: NATIVE, type(None): NATIVE})
        self._seen_version = self.converter.version

    # -- classification -----------------------------------------------------

    def classify(self, t: type) -> str:
        """The shape of values of exact type *t* (see the constants above)."""
        if self._seen_version != self.converter.version:
            self._reset()
        shape = self._shapes.get(t)
        if shape is None:
            shape = self._classify(t)
            self._shapes[t] = shape
        return shape

    def _classify(self, t: type) -> str:
        if t is Gone:
            return GONE
        if t is EnumValue or t is CustomValue:
            return GENERIC
        if t is Marker:
            return ERASED_SHAPE
        if t in COUNTED:
            return COUNTED_SHAPE
        if issubclass(t, self.shell.entity_base):
            return ENTITY if _types.info_of(t) is not None else UNSUPPORTED
        if t in self.shell.tracked:
            return TRACKED
        if t in (list, dict, set):
            return PLAIN
        if t in self.converter._leaves:
            return LEAF
        if t is tuple:
            return TUPLE
        if t is frozenset:
            return FROZENSET
        if t in self.converter._custom:
            return CUSTOM
        if isinstance(t, enum.EnumMeta):
            return ENUM
        if _types.is_value_class(t):
            return VALUE
        return UNSUPPORTED

    def is_value(self, t: type) -> bool:
        """Whether *t* is a value-object class (a frozen attrs class)."""
        return t not in _NATIVE_TYPES and self.classify(t) is VALUE

    # -- encoding -----------------------------------------------------------

    def encoder(
        self, ref: Callable[[Any], int], declare: Callable[[_types.TypeInfo], Any] = _no_declare
    ) -> Callable[[Any], Any]:
        """A function giving the JSON data of a value (already validated by attaching).

        References to objects are written ``["r", ref(obj)]``; *declare* is
        told of each value-object class written.
        """
        table: dict[type, Callable[[Any], Any]] = {}
        conv = self.converter
        seen = [conv.version]  # this encoder's own: another's clearing must not make its entries look current
        encoder_for = self._encoder_for

        def encode(v: Any) -> Any:
            t = type(v)
            if t is str or t is bool or v is None:
                return v
            if t is int:
                return v if -_X <= v < _X else ["i", int_text(v)]  # the INLINE rule
            if t is float:
                return v if math.isfinite(v) else ["f", repr(v)]
            if seen[0] != conv.version:
                table.clear()
                seen[0] = conv.version
            enc = table.get(t)
            if enc is None:
                enc = table[t] = encoder_for(t, encode, ref, declare)
            return enc(v)

        return encode

    def _encoder_for(
        self,
        t: type,
        encode: Callable[[Any], Any],
        ref: Callable[[Any], int],
        declare: Callable[[_types.TypeInfo], Any],
    ) -> Callable[[Any], Any]:
        shape = self.classify(t)
        if shape in LINKED:  # plain containers only in free-standing graphs
            return lambda v: ["r", ref(v)]
        if shape == GONE:
            return lambda v: ["r", v.oid] if v.oid else v.raw
        if shape == GENERIC:
            if t is EnumValue:
                return lambda v: ["e", v.type_name, list(v.member) if type(v.member) is tuple else v.member]
            return lambda v: ["x", v.type_name, v.data]
        if shape == LEAF:
            return self.converter._leaves[t].encode
        if shape == ERASED_SHAPE:
            return _encode_erased
        if shape == TUPLE:
            return lambda v: ["T", [encode(i) for i in v]]
        if shape == FROZENSET:
            return lambda v: ["F", [encode(i) for i in v]]
        if shape == ENUM:
            name = _types.info_of(t).name  # type: ignore[union-attr]
            return flag_encoder(t, name) if issubclass(t, enum.Flag) else lambda v: ["e", name, v.name]
        if shape == VALUE:
            return _value_encoder(_types.info_of(t), encode, declare)  # type: ignore[arg-type]
        if shape == CUSTOM:
            name = self.converter._custom[t]
            unstructure = self.converter.get_unstructure_hook(t)
            return lambda v: ["x", name, unstructure(v)]

        def unsupported(v: Any) -> Any:
            raise describe_unsupported(v, "")

        return unsupported

    # -- decoding -----------------------------------------------------------

    def decoder(
        self, deref: Callable[[Any], Any], value: Callable[[list[Any]], Any], *, generic: bool = False
    ) -> Callable[[Any], Any]:
        """A function giving the value that JSON data encodes.

        References are looked up with *deref*, value objects built by *value*
        (schema-aware: it reads states written under older declarations);
        with *generic*, enums and user values no class claims are read into
        stand-ins instead of raising :class:`UnknownTypeError`.
        """
        converter = self.converter
        resolve = _resolver(generic)

        def dec_enum(x: list[Any]) -> Any:
            info = resolve(x, _enum_stand_in, _types.ENUM)
            if not isinstance(info, _types.TypeInfo):
                return info
            return _enum_member(info, x)

        def dec_custom(x: list[Any]) -> Any:
            info = resolve(x, CustomValue, _types.CUSTOM)
            if not isinstance(info, _types.TypeInfo):
                return info
            return converter.structure(x[2], info.cls)

        table: dict[str, Callable[[list[Any]], Any]] = {
            "r": lambda x: deref(x[1] if len(x) == 2 else x),  # ["r", id] and nothing more
            "i": lambda x: int_from_text(x[1]),
            "f": lambda x: float(x[1]),
            "T": lambda x: tuple([decode(i) for i in x[1]]),
            "F": lambda x: frozenset([decode(i) for i in x[1]]),
            "e": dec_enum,
            "v": value,
            "x": dec_custom,
            "erased": lambda x: ERASED,
        }
        for leaf in converter._leaves.values():
            table[leaf.tag] = leaf.decode

        def decode(x: Any) -> Any:
            if type(x) is list:
                try:
                    dec = table[x[0]]
                except (KeyError, IndexError):
                    raise CorruptLogError(f"unknown value tag in stored data: {x!r:.80}", seq=None, table="") from None
                return dec(x)
            return x

        return decode


_NATIVE_TYPES: Final = _types.NATIVE_TYPES


def _encode_erased(v: Any) -> Any:
    """:data:`~memimg.ERASED` as stored; any other marker is no value at all."""
    if v is ERASED:
        return list(ERASED_DATA)
    raise describe_unsupported(v, "")


def _resolver(generic: bool) -> Callable[[list[Any], Callable[[str, Any], Any], str], Any]:
    """``resolve(x, stand_in, kind)``: the class of kind *kind* the stored value *x* names.

    With *generic*, a name no class claims gives ``stand_in(name, data)``
    instead of raising, and stays unclaimed for the resolver's life: one
    reading of a log never mixes stand-ins and real values of one type, and
    a miss (an exception) is paid once per name, not once per value.
    """
    unclaimed: set[str] = set()

    def resolve(x: list[Any], stand_in: Callable[[str, Any], Any], kind: str) -> Any:
        if unclaimed and x[1] in unclaimed:
            return stand_in(x[1], x[2])
        try:
            info = _types.resolve(x[1], kind)
        except UnknownTypeError:
            if generic:
                unclaimed.add(x[1])
                return stand_in(x[1], x[2])
            raise
        if info.kind != kind:
            raise kind_mismatch(x[0], x[1], info)
        return info

    return resolve


@functools.lru_cache(maxsize=4096)
def _enum_member_stand_in(name: str, member: str) -> EnumValue:
    return EnumValue(name, member)


def _enum_stand_in(name: str, member: Any) -> EnumValue:
    """The stand-in of an enum member no class claims: one per member (a tool reads one per object)."""
    if type(member) is str and type(name) is str:
        return _enum_member_stand_in(name, member)
    return EnumValue(name, member)


def _value_encoder(
    info: _types.TypeInfo, encode: Callable[[Any], Any], declare: Callable[[_types.TypeInfo], Any]
) -> Callable[[Any], Any]:
    fields = info.fields
    name = info.name

    def enc(v: Any) -> Any:
        declare(info)
        state = {}
        for f in fields:
            try:
                state[f] = encode(getattr(v, f))
            except AttributeError:
                pass
        return ["v", name, state]

    return enc


def _enum_member(info: _types.TypeInfo, x: list[Any]) -> Any:
    cls: Any = info.cls
    member = x[2]
    try:
        if type(member) is list:  # a combination of flags, by the names of its members
            return functools.reduce(operator.or_, (cls[m] for m in member), cls(0))
        return cls[member]
    except KeyError as err:
        member = err.args[0] if err.args else member
        raise UnknownTypeError(
            f"enum {x[1]} has no member {member!r} any more: add it back, or add an alias "
            f"member ({member} = <its value>) so stored values can be read",
            type_name=x[1],
        ) from None


#: What each value tag stores, and each kind of class is, in messages.
_TAG_KINDS: Final = {"e": _types.ENUM, "v": _types.VALUE, "x": _types.CUSTOM}
_KIND_TEXT: Final = {
    _types.ENTITY: "an entity class (@persistent)",
    _types.VALUE: "a frozen attrs class (a value object)",
    _types.ENUM: "an enum",
    _types.CUSTOM: "a value type registered with its own hooks (register_value)",
}


def kind_mismatch(tag: str, name: str, info: _types.TypeInfo) -> CorruptLogError:
    """The error for a stored value whose tag says one kind of class and whose type name is of another.

    Each tag is read only by its own kind's way of building values (an enum
    member by name, a value object field by field, a registered type by its
    hooks): reading it the other way would run code the log chose -- an
    entity's ``__init__`` and validators, say -- and make an object that is
    no part of the graph.
    """
    if tag == "x" and info.kind in (_types.VALUE, _types.ENUM):
        fix = (
            f"if {name} was registered with its own hooks where the log was written, register it the same "
            "way (memimg.converter.register_value(..., unstructure=..., structure=...)) before opening"
        )
    else:
        fix = (
            f"if the class named {name} changed kind since (an enum that became a class, say), keep the old "
            "name for a class of the old kind and give the new class another name; otherwise restore the log "
            "from a backup"
        )
    cls = info.cls
    return CorruptLogError(
        f"a stored value tagged {tag!r} ({_KIND_TEXT[_TAG_KINDS[tag]]}) names type {name!r}, which in this "
        f"process is {_KIND_TEXT[info.kind]} ({cls.__module__}.{cls.__qualname__}): it is not read, and no code "
        f"of that class runs. The log was damaged or crafted, or {fix}",
        seq=None,
        table="",
    )
