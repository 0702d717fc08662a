"""Declared field types as text: what the stored schema records to notice a changed annotation.

The log declares, with each class's fields, the type each field is
annotated with, spelled as text (``'int'``, ``'Decimal'``,
``'list[shop.Item]'``). Opening compares the stored spelling with the
code's: a field whose annotation changed (``int`` -> ``Decimal``) without a
version bump and an upgrader is schema drift (:mod:`memimg.core._schema`).

The spelling must not change when the code means the same type, or every
open would report drift that is not there:

* annotations are resolved first (``from __future__ import annotations``
  or not, ``'Item'`` or ``Item``, ``List[int]`` or ``list[int]``, and
  ``Optional[int]``, ``Union[None, int]`` or ``int | None`` spell alike:
  union members are sorted, ``None`` last);
* a class of the image's -- an entity, an enum, a frozen attrs class, a
  registered value type -- is spelled by its stable name, which survives a
  move, and a stored name is read through the registry before comparing, so
  a class renamed with ``aliases=`` is the same type; any other class is
  spelled by its qualified name (``Decimal``, ``datetime``), without its
  module;
* ``Annotated[...]`` is spelled as the type it annotates;
* an annotation that cannot be resolved (a name imported only under
  ``TYPE_CHECKING``, a class local to a function) is kept as written, less
  quotes and spaces;
* a field without an annotation spells as ``''``, which matches anything:
  there is nothing to compare.

Spellings are computed once per class (when its schema is first declared
or planned) and again only after the registry changed, never on a write.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from typing import Any, Final

import attrs

from memimg.core import _types

__all__ = ["field_types", "same_type", "spell"]


def field_types(info: _types.TypeInfo) -> tuple[str, ...] | None:
    """The declared type of each of *info*'s fields, in field order (``None``: not known, as for a stand-in).

    Cached on *info*; recomputed only when the registry changed since (a
    class was named or renamed, which may change a spelling).
    """
    if info.stand_in:  # no annotations: the types the log declares, if the stand-in was made with them
        return info.types[1] if info.types is not None else None
    if info.kind not in (_types.ENTITY, _types.VALUE) or not attrs.has(info.cls):
        return None
    generation = _types.generation()
    cached = info.types
    if cached is not None and cached[0] == generation:
        return cached[1]
    spelled = _spell_fields(info.cls, info.fields)
    info.types = (generation, spelled)
    return spelled


def _spell_fields(cls: type, fields: tuple[str, ...]) -> tuple[str, ...]:
    declared = {a.name: a.type for a in attrs.fields(cls)}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a name that cannot be resolved: each field on its own below
        hints = {}
    out = []
    for name in fields:
        tp = hints.get(name, _UNRESOLVED)
        if tp is _UNRESOLVED:
            tp = _resolve_one(cls, declared.get(name))
        out.append("" if tp is None else spell(tp))
    return tuple(out)


_UNRESOLVED: Final[Any] = object()


def _resolve_one(cls: type, annotation: Any) -> Any:
    """*annotation* resolved in *cls*'s module and namespace, or as written when it cannot be."""
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    namespace.update(vars(cls))
    namespace.setdefault(cls.__name__, cls)
    try:
        return typing._eval_type(typing.ForwardRef(annotation), namespace, None)  # type: ignore[attr-defined]
    except Exception:
        return annotation


def spell(tp: Any) -> str:
    """The stable spelling of the (resolved) type *tp* (see the module docstring)."""
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, str):
        return _text(tp)
    if isinstance(tp, typing.ForwardRef):
        return _text(tp.__forward_arg__)
    if tp is typing.Any:
        return "Any"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return spell(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(sorted({spell(a) for a in args}, key=lambda m: (m == "None", m)))  # None last
    if origin is typing.Literal:
        return f"Literal[{', '.join(sorted(repr(a) for a in args))}]"
    if origin is not None:
        head = _class_name(origin) if isinstance(origin, type) else spell(origin)
        return f"{head}[{', '.join(_spell_arg(a) for a in args)}]" if args else head
    if isinstance(tp, type):
        return _class_name(tp)
    if isinstance(tp, typing.TypeVar) or hasattr(tp, "__supertype__"):  # NewType
        return str(tp.__name__)
    return _text(repr(tp))


def _spell_arg(arg: Any) -> str:
    if isinstance(arg, (list, tuple)):  # Callable's parameters
        return f"[{', '.join(_spell_arg(a) for a in arg)}]"
    return spell(arg)


def _class_name(cls: type) -> str:
    """A class's stable name if it is one of the image's, else its qualified name."""
    info = _types.registered(cls)
    if info is not None:
        return info.name
    if _types.is_storable_class(cls):  # an enum or frozen attrs class not stored yet: the name it will get
        return _types.default_name(cls)
    return cls.__qualname__


_TYPING_PREFIX: Final = re.compile(r"\b(?:typing|t|typing_extensions)\.")
_SPACES: Final = re.compile(r"\s+")


def _text(annotation: str) -> str:
    """An unresolved annotation as written, in one spelling: no quotes, no ``typing.``, even spaces."""
    text = _TYPING_PREFIX.sub("", _SPACES.sub("", annotation.replace("'", "").replace('"', "")))
    return text.replace(",", ", ").replace("|", " | ")


_NAME: Final = re.compile(r"[A-Za-z_<][\w.<>]*")


def same_type(stored: str, current: str) -> bool:
    """Whether a stored spelling and the code's mean the same type.

    Class names in either are read through the registry first, so a class
    stored under a name its new class lists in ``aliases`` is the same type.
    An empty spelling (no annotation, or a declaration from before field
    types were recorded) matches anything.
    """
    if not stored or not current or stored == current:
        return True
    return _canonical(stored) == _canonical(current)


def _canonical(text: str) -> str:
    def current_name(match: re.Match[str]) -> str:
        info = _types.claimed(match.group(0))
        return info.name if info is not None else match.group(0)

    return _NAME.sub(current_name, text)
