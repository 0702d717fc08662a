"""The type registry: stable names <-> classes, and what memimg knows of each class.

Every class whose instances can be stored has a :class:`TypeInfo`, found by
class (``info_of``) or by stored name (``resolve``). Entity classes register
themselves when ``@persistent`` decorates them; enums and frozen attrs value
classes are registered the first time one of their values is stored (or
explicitly, to give them a stable name); user value types are registered on
the converter.

Names are what the log stores, so they must outlive refactorings: the default
is ``module.QualName``, ``@persistent(name=..., aliases=(...))`` fixes it, and
a name that no loaded class claims is looked up by importing its module
before giving up with :class:`UnknownTypeError`.
"""

from __future__ import annotations

import enum
import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any, Final

import attrs

from memimg._errors import MemimgError, UnknownTypeError

__all__ = [
    "ENTITY",
    "ENUM",
    "VALUE",
    "TypeInfo",
    "default_name",
    "entity_infos",
    "info_of",
    "is_value_class",
    "register",
    "resolve",
]

ENTITY: Final = "entity"
VALUE: Final = "value"
ENUM: Final = "enum"
CUSTOM: Final = "custom"


def default_name(cls: type) -> str:
    """The name stored for *cls* when none is given: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


@attrs.define(eq=False)
class TypeInfo:
    """What memimg knows of one storable class."""

    cls: type
    name: str
    kind: str
    aliases: tuple[str, ...] = ()
    version: int = 1
    #: Field names in declaration order (entities and value classes).
    fields: tuple[str, ...] = ()
    #: Raw (never hooked) slot accessors, by field name (entities only).
    getters: dict[str, Callable[[Any], Any]] = attrs.field(factory=dict)
    setters: dict[str, Callable[[Any, Any], None]] = attrs.field(factory=dict)
    #: ``field -> old name`` declared with ``memimg.field(renamed_from=...)``.
    renamed: dict[str, str] = attrs.field(factory=dict)
    #: Stored fields declared gone with ``@persistent(removed=(...))``.
    removed: tuple[str, ...] = ()
    #: Fields whose value is missing from a stored state get their default.
    defaults: dict[str, Any] = attrs.field(factory=dict)
    #: A generic stand-in for a class that is not loaded (tools): states are kept as stored.
    stand_in: bool = False
    #: Compiled state encoders of the class, by access mode (made and kept by the graph module).
    encoders: dict[Any, Any] = attrs.field(factory=dict, repr=False)


_lock = threading.RLock()
_by_name: dict[str, TypeInfo] = {}
_by_cls: dict[type, TypeInfo] = {}


def register(info: TypeInfo) -> TypeInfo:
    """Record *info* under its name and aliases; the newest class of a name wins."""
    with _lock:
        _by_cls[info.cls] = info
        _by_name[info.name] = info
        for alias in info.aliases:
            owner = _by_name.get(alias)
            # a class still named so keeps it; a stand-in (a tool read the log without the class) does not
            if owner is None or owner.name != alias or owner.stand_in:
                _by_name[alias] = info
    return info


def entity_infos() -> list[TypeInfo]:
    """Every registered entity class (for installing read tracking)."""
    with _lock:
        return [i for i in _by_cls.values() if i.kind == ENTITY]


def is_value_class(cls: type) -> bool:
    """A frozen attrs class: stored by value."""
    if not attrs.has(cls):
        return False
    props = getattr(cls, "__attrs_props__", None)
    if props is not None:
        return bool(props.is_frozen)
    return getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"  # attrs < 25.4


def _attrs_defaults(cls: type) -> dict[str, Any]:
    return {a.name: a.default for a in attrs.fields(cls) if a.default is not attrs.NOTHING}


def _renamed(cls: type) -> dict[str, str]:
    """``field -> old name`` from ``memimg.field(renamed_from=...)`` on an attrs class."""
    out = {}
    for a in attrs.fields(cls):
        old = a.metadata.get("memimg", {}).get("renamed_from")
        if old is not None:
            out[a.name] = old
    return out


def info_of(cls: type) -> TypeInfo | None:
    """The :class:`TypeInfo` of *cls*, registering enums and frozen attrs classes on first use."""
    info = _by_cls.get(cls)
    if info is not None:
        return info
    if isinstance(cls, enum.EnumMeta):
        return register(TypeInfo(cls=cls, name=default_name(cls), kind=ENUM))
    if is_value_class(cls):
        return register(
            TypeInfo(
                cls=cls,
                name=default_name(cls),
                kind=VALUE,
                fields=tuple(a.name for a in attrs.fields(cls)),
                defaults=_attrs_defaults(cls),
                renamed=_renamed(cls),
            )
        )
    return None


def resolve(name: str) -> TypeInfo:
    """The class stored under *name* (or one of its aliases).

    A name no loaded class claims is looked up by importing the module it
    names (the default ``module.QualName`` form), which registers the classes
    defined there. Only classes that memimg can build without running their
    code (entities, enums, frozen attrs classes) are accepted this way.

    Raises:
        UnknownTypeError: no class claims *name*.
    """
    info = _by_name.get(name)
    if info is not None:
        return info
    with _lock:
        info = _import_by_name(name)
    if info is None:
        raise UnknownTypeError(
            f"the log stores objects of type {name!r}, but no class in this process claims "
            f"that name: import the module that defines it before opening the image, "
            f"declare the old name with @persistent(aliases=({name!r},)) on its new class, "
            f"or drop it with memimg.open(..., removed_types=({name!r},))",
            type_name=name,
        )
    return info


def _import_by_name(name: str) -> TypeInfo | None:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        if module_name not in sys.modules:
            try:
                importlib.import_module(module_name)
            except ImportError:
                continue
            except Exception as err:  # the module exists but fails to import
                raise MemimgError(f"importing {module_name!r} to find stored type {name!r} failed: {err}") from err
        info = _by_name.get(name)
        if info is not None:
            return info
        obj: Any = sys.modules.get(module_name)
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        if isinstance(obj, type) and default_name(obj) == name:
            found = info_of(obj)
            if found is not None:
                return found
        return None
    return None
