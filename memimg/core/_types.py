"""The type registry: stable names <-> classes, and what memimg knows of each class.

Every class whose instances can be stored has a :class:`TypeInfo`, found by
class (``info_of``) or by stored name (``resolve``). Entity classes register
themselves when ``@persistent`` decorates them; enums and frozen attrs value
classes are registered the first time one of their values is stored (or
explicitly, to give them a stable name); user value types are registered on
the converter.

Names are what the log stores, so they must outlive refactorings: the default
is ``module.QualName``, and ``@persistent(name=..., aliases=(...))`` fixes it.

A log is data, and reading it never runs code it names: a stored name
resolves only to a class already registered, or -- for enums and frozen
attrs classes, registered lazily when a value of theirs is first stored --
to such a class found under its default name in a module *already imported*,
read through the module's and classes' ``__dict__`` (no ``getattr``, which
could run a module's ``__getattr__``). Nothing is ever imported to find a
name: a crafted log naming ``antigravity.X`` or a module lying in the
working directory gets :class:`UnknownTypeError`, which says what to import.
Importing is the caller's explicit choice: ``memimg.open(...,
import_types=(...))``, or the command line's ``--import``.
"""

from __future__ import annotations

import enum
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, Final

import attrs

from memimg._errors import UnknownTypeError

__all__ = [
    "ENTITY",
    "ENUM",
    "NATIVE_TYPES",
    "VALUE",
    "TypeInfo",
    "check_names",
    "claimed",
    "default_name",
    "entity_info",
    "entity_infos",
    "forget_stand_ins",
    "generation",
    "info_of",
    "is_storable_class",
    "is_value_class",
    "missing_class_advice",
    "name_value_class",
    "names",
    "register",
    "registered",
    "resolve",
]

#: The types stored as themselves in JSON (an int beyond 64 bits aside: see the codec's inline rule).
NATIVE_TYPES: Final = frozenset({str, int, float, bool, type(None)})
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
    deleters: dict[str, Callable[[Any], None]] = attrs.field(factory=dict)
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
    #: ``(registry generation, declared type of each field as text)`` (made and kept by :mod:`._typetext`).
    types: tuple[int, tuple[str, ...]] | None = attrs.field(default=None, repr=False)


_lock = threading.RLock()
_by_name: dict[str, TypeInfo] = {}
_by_cls: dict[type, TypeInfo] = {}
_generation = [0]  # bumped whenever a name changes hands (spellings of types may change with it)


def generation() -> int:
    """A number that changes whenever the registry does."""
    return _generation[0]


def registered(cls: type) -> TypeInfo | None:
    """The :class:`TypeInfo` *cls* is registered with, if any (nothing is registered by asking)."""
    return _by_cls.get(cls)


def claimed(name: str) -> TypeInfo | None:
    """The class that claims stored name *name* now (by name or alias; not a tool's stand-in), if any."""
    info = _by_name.get(name)
    return None if info is None or info.stand_in else info


def is_storable_class(cls: type) -> bool:
    """An enum or a frozen attrs class: stored by value, registered when first stored."""
    return isinstance(cls, enum.EnumMeta) or is_value_class(cls)


def register(info: TypeInfo, *, check: bool = False) -> TypeInfo:
    """Record *info* under its name and aliases; the newest class of a name wins.

    With *check* (a class named by its author: ``@persistent``,
    ``register_value``), a name or alias another live class already claims
    is refused first (see :func:`check_names`); nothing is recorded then.
    """
    with _lock:
        if check:
            check_names(info)
        _generation[0] += 1
        _by_cls[info.cls] = info
        _by_name[info.name] = info
        for alias in info.aliases:
            owner = _by_name.get(alias)
            # a class still named so keeps it; a stand-in (a tool read the log without the class) does not
            if owner is None or owner.name != alias or owner.stand_in:
                _by_name[alias] = info
    return info


def _same_class(a: type, b: type) -> bool:
    """Whether *b* is *a* again: the same class, or one defined again at the same place (a module
    reloaded, a test's class defined once per run), which takes its names over."""
    return a is b or default_name(a) == default_name(b)


def check_names(info: TypeInfo) -> None:
    """Refuse names of *info* that another live class claims, naming both classes and what to do.

    Two classes of different kinds may not share a stable name (the log could
    not say which one a stored value is), and an alias may be neither another
    class's name nor another class's alias (replay could not say which class
    reads the old states).

    Raises:
        TypeError: the clash, with both classes and the fix (nothing is registered).
    """
    this = f"{info.cls.__module__}.{info.cls.__qualname__}"
    owner = _by_name.get(info.name)
    if (
        owner is not None
        and not owner.stand_in
        and owner.name == info.name
        and owner.kind != info.kind
        and not _same_class(owner.cls, info.cls)
    ):
        other = f"{owner.cls.__module__}.{owner.cls.__qualname__}"
        raise TypeError(
            f"{_KIND_WORD[info.kind]} {this} and {_KIND_WORD[owner.kind]} {other} both claim the stable name "
            f"{info.name!r}: the log could not say which one a stored value is. Give one of them another "
            "name (@persistent(name=...)); to read what the other one stored under this name, list the name "
            "in its new class's aliases",
        )
    for alias in info.aliases:
        if alias == info.name:
            continue
        claimed = [
            i
            for i in {id(i): i for i in _by_name.values()}.values()
            if not i.stand_in and not _same_class(i.cls, info.cls) and (i.name == alias or alias in i.aliases)
        ]
        for other_info in claimed:
            other = f"{other_info.cls.__module__}.{other_info.cls.__qualname__}"
            if other_info.name == alias:
                fix = (
                    f"{other} still has that name: if {info.cls.__qualname__} replaces it, rename or delete "
                    f"{other_info.cls.__qualname__} (a class keeps its own name before any alias); otherwise "
                    "drop the alias"
                )
            else:
                fix = (
                    f"{other} already lists it in its aliases: keep the alias on one class only, the one that "
                    f"now reads the states stored as {alias!r}"
                )
            raise TypeError(
                f"alias {alias!r} of {this} is claimed by another class, so replay could not say which class "
                f"reads the states stored under it: {fix}"
            )


_KIND_WORD: Final = {ENTITY: "entity", VALUE: "value class", ENUM: "enum", CUSTOM: "value type"}


def name_value_class(
    cls: type,
    *,
    name: str | None,
    aliases: tuple[str, ...],
    version: int | None = None,
    removed: tuple[str, ...] = (),
) -> TypeInfo:
    """Give an enum or a frozen attrs class a stable name (and, for the latter, a schema version).

    The one path of ``@persistent(name=..., aliases=...)`` on such a class
    and of ``Converter.register_value(cls, name=..., aliases=...)``: the
    class is registered, never rebuilt.

    Raises:
        TypeError: the name or an alias is another class's (see :func:`check_names`).
    """
    info = info_of(cls)
    if info is None or info.kind not in (ENUM, VALUE):
        raise TypeError(f"{cls.__qualname__} is neither an enum nor a frozen attrs class")
    named = TypeInfo(
        cls=cls,
        name=name or default_name(cls),
        kind=info.kind,
        aliases=tuple(aliases),
        version=info.version if version is None else version,
        fields=info.fields,
        renamed=info.renamed,
        removed=tuple(removed),
        defaults=info.defaults,
    )
    with _lock:
        check_names(named)
        info.name, info.aliases, info.version, info.removed = named.name, named.aliases, named.version, named.removed
        register(info)
    return info


def names() -> frozenset[str]:
    """The type names classes claim now (the registry's names)."""
    with _lock:
        return frozenset(_by_name)


def forget_stand_ins(keep: frozenset[str] = frozenset()) -> None:
    """Stop resolving stored names to the stand-ins earlier reads made (:mod:`memimg.core._generic`), but
    those named in *keep* (:func:`names`, taken before a read, keeps the stand-ins that were there).

    The next read of a log makes its own from the declarations it meets,
    not from another log's. Objects of the old stand-ins keep their classes,
    and those classes their :class:`TypeInfo` (:func:`info_of`).
    """
    with _lock:
        for name in [n for n, info in _by_name.items() if info.stand_in and n not in keep]:
            del _by_name[name]
        _generation[0] += 1


def entity_info(cls: Any) -> TypeInfo | None:
    """The :class:`TypeInfo` of *cls* if it is a registered entity class (``@persistent``), else None."""
    info = _by_cls.get(cls) if isinstance(cls, type) else None
    return info if info is not None and info.kind == ENTITY else None


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


def resolve(name: str, kind: str | None = None) -> TypeInfo:
    """The class stored under *name* (or one of its aliases).

    A name no registered class claims is looked for, in its default
    ``module.QualName`` form, among the modules already imported (see the
    module docstring); only enums and frozen attrs classes -- classes memimg
    builds without running their code -- are registered this way. No module
    is imported.

    Args:
        kind: what the log says the stored thing is (``ENTITY``, ``ENUM``,
            ``VALUE``, ``CUSTOM``), for the advice of the error; ``None``
            when the log does not say.

    Raises:
        UnknownTypeError: no class claims *name*.
    """
    info = _by_name.get(name)
    if info is not None:
        return info
    with _lock:
        info = _find_loaded(name)
    if info is None:
        what = f"{_STORED_WORD[kind]} of type" if kind in _STORED_WORD else "values or objects of type"
        raise UnknownTypeError(
            f"the log stores {what} {name!r}, but no class in this process claims "
            f"that name: {missing_class_advice(name, kind)}",
            type_name=name,
        )
    return info


_STORED_WORD: Final = {
    ENTITY: "objects",
    VALUE: "value objects",
    ENUM: "enum members",
    CUSTOM: "values",
}


def missing_class_advice(name: str, kind: str | None = None) -> str:
    """What to do about a stored type *name* that no class in this process claims.

    The fix for a renamed or moved class depends on its *kind* (what the log
    says the stored thing is; ``None``: the advice covers every kind).
    """
    module = name.rpartition(".")[0]
    where = (
        f"import {module} (or whichever module defines it) before opening the image, or pass "
        f"memimg.open(..., import_types=({module!r},))"
        if module
        else "import the module that defines it before opening the image"
    )
    alias = f"aliases=({name!r},)"
    renamed = {
        ENTITY: f"@persistent(name=..., {alias}) on its new class",
        ENUM: f"@persistent(name=..., {alias}) on the Enum class that replaces it",
        VALUE: f"@persistent(name=..., {alias}) on the frozen attrs class that replaces it",
        CUSTOM: f"memimg.converter.register_value(NewType, name=..., {alias}, unstructure=..., structure=...)",
    }.get(kind or "")
    if renamed is None:
        renamed = (
            f"@persistent(name=..., {alias}) on its new class (an entity, an Enum or a frozen attrs class; "
            "register_value(..., aliases=...) for a value type with its own hooks)"
        )
    # an enum member cannot be dropped from where it is stored: only the classes with states can be removed
    removed = "" if kind == ENUM else f"; if it was removed, open with removed_types=({name!r},)"
    return f"{where}; if the class was renamed or moved, declare the old name with {renamed}{removed}"


# Raw reads of a module's and a class's own namespace and names: no __getattr__ or metaclass runs.
_MODULE_DICT = vars(types.ModuleType)["__dict__"].__get__
_CLASS_DICT = vars(type)["__dict__"].__get__
_CLASS_MRO = vars(type)["__mro__"].__get__
_CLASS_QUALNAME = vars(type)["__qualname__"].__get__


def _find_loaded(name: str) -> TypeInfo | None:
    """The enum or frozen attrs class whose default name is *name*, in a module already imported."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        module = sys.modules.get(module_name)
        if not issubclass(type(module), types.ModuleType):
            continue
        obj: Any = _MODULE_DICT(module).get(parts[cut])
        for attr in parts[cut + 1 :]:
            if not issubclass(type(obj), type):
                break
            obj = _CLASS_DICT(obj).get(attr)
        if not issubclass(type(obj), type):
            continue
        own = _CLASS_DICT(obj)
        if own.get("__module__") != module_name or _CLASS_QUALNAME(obj) != ".".join(parts[cut:]):
            continue  # found under another name than its own (imported into that module)
        info = _by_cls.get(obj)
        if info is not None:
            return info
        if issubclass(type(obj), enum.EnumMeta) or (
            any("__attrs_attrs__" in _CLASS_DICT(c) for c in _CLASS_MRO(obj)) and is_value_class(obj)
        ):
            return info_of(obj)
    return None
