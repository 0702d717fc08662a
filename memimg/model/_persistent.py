"""``@persistent``: attrs entity classes whose writes are tracked and whose reads stay fast.

The decorator records its options and hands the class to one builder
(:class:`_EntityBuilder`), whose small steps run in order:

1. ``add_base`` -- rebuild the class with :class:`PersistentBase` among its
   bases, so instances carry the two hidden slots (owner, object id);
2. ``build_attrs`` -- ``attrs.define(slots=True, eq=False)``: fields become
   slots, so a read is CPython's specialised slot load, as fast as a plain
   attrs class (nothing of memimg runs on a read outside a transaction);
3. ``add_setattr`` -- one ``__setattr__``/``__delattr__`` that runs the
   field's attrs ``on_setattr`` hooks (converters, validators) and then hands
   the write to the owner, or stores it directly while the object is
   free-standing;
4. ``register`` -- the :class:`TypeInfo` (stable name, raw slot accessors) and
   the read-tracking hooks of :mod:`memimg.model._tracking`.

Replay never goes through any of this: it writes slots through the raw
accessors recorded in the ``TypeInfo``, so no user code runs.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar, dataclass_transform, overload

import attrs
from attrs import setters

from memimg.core import _counters, _indexes, _types
from memimg.core._kinds import KINDS
from memimg.model import _tracking
from memimg.model._accel import speedups
from memimg.model._base import PersistentBase

__all__ = ["field", "persistent"]

T = TypeVar("T", bound=type)

_OBJ_SETATTR = object.__setattr__
_OBJ_SET = KINDS["obj.set"]
#: values a field set stores as they are, with no preparing (str too, when ASCII: see ``Writer.fast``)
_SCALARS: Final = _types.NATIVE_TYPES - {str}
_OBJ_DELATTR = object.__delattr__
_FORBIDDEN_OPTIONS = {"slots", "frozen", "eq", "order", "unsafe_hash", "hash", "these"}


def field(
    *,
    renamed_from: str | None = None,
    index: bool = False,
    unique: bool = False,
    merge: str | None = None,
    **kwargs: Any,
) -> Any:
    """``attrs.field`` plus memimg options.

    Args:
        renamed_from: the field's previous name; values stored under it are
            read into this field on replay (schema evolution).
        index: keep an index of the field's values, so that ``img.find``
            on it costs the size of the result (hashable values only).
        unique: no two reachable instances of the class (subclasses
            included) may hold the same value (``None`` excepted); implies
            an index, and ``img.get`` looks instances up by it.
        merge: ``"add"`` makes the field a counter (an int, Decimal or
            Fraction): ``obj.f += n`` (and ``-=``) is recorded as the delta,
            and concurrent adds never conflict (see the querying guide,
            "Counters"). Checked when the class is defined.
        **kwargs: anything ``attrs.field`` accepts.
    """
    options: dict[str, Any] = {}
    if renamed_from is not None:
        options["renamed_from"] = renamed_from
    if index or unique:
        options["index"] = True
    if unique:
        options["unique"] = True
    if merge is not None:
        options["merge"] = merge
    if options:
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata["memimg"] = {**metadata.get("memimg", {}), **options}
        kwargs["metadata"] = metadata
    return attrs.field(**kwargs)


def _keep(instance: Any, attribute: Any, value: Any) -> Any:
    return value


class _EntityBuilder:
    """Builds one entity class, step by step (see the module docstring)."""

    def __init__(
        self,
        cls: type,
        *,
        name: str | None,
        aliases: Iterable[str],
        version: int,
        removed: Iterable[str],
        options: dict[str, Any],
    ) -> None:
        bad = _FORBIDDEN_OPTIONS & options.keys()
        if bad:
            raise TypeError(
                f"@persistent does not accept {', '.join(sorted(bad))}: entities are slotted, "
                "mutable and compare by identity; use a frozen attrs class for a value object"
            )
        if "__slots__" in cls.__dict__:
            raise TypeError(f"@persistent class {cls.__qualname__} must not define __slots__")
        if not isinstance(version, int) or version < 1:
            raise TypeError(f"@persistent(version=...) must be an int >= 1, not {version!r}")
        self._original = cls
        self._cls = cls
        self._name = name or _types.default_name(cls)
        self._aliases = tuple(aliases)
        # a clash is refused before the class is built (nothing half-made)
        _types.check_names(_types.TypeInfo(cls=cls, name=self._name, kind=_types.ENTITY, aliases=self._aliases))
        self._version = version
        self._removed = tuple(removed)
        self._options = options
        self._hook: Any = None
        self._default_hook = True

    def add_base(self) -> _EntityBuilder:
        cls = self._cls
        if issubclass(cls, PersistentBase):
            return self
        bases = (*(b for b in cls.__bases__ if b is not object), PersistentBase)
        ns = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        ns["__qualname__"] = cls.__qualname__  # not in __dict__: kept so a nested or local class keeps its place
        meta: Any = type(cls)
        self._cls = meta(cls.__name__, bases, ns)
        return self

    def build_attrs(self) -> _EntityBuilder:
        user_hook = self._options.pop("on_setattr", None)
        self._default_hook = user_hook is None
        if user_hook is None:
            user_hook = [setters.convert, setters.validate]
        if isinstance(user_hook, (list, tuple)):
            user_hook = setters.pipe(*user_hook)
        # A hook that is never "no hook" makes attrs' __init__ write slots
        # directly instead of through our __setattr__ (construction stays fast).
        self._hook = setters.pipe(user_hook, _keep) if user_hook is not setters.NO_OP else _keep
        built = attrs.define(self._cls, slots=True, eq=False, weakref_slot=True, on_setattr=self._hook, **self._options)
        _repoint_cells(built, (self._original, self._cls))
        self._cls = built
        return self

    def add_setattr(self) -> _EntityBuilder:
        cls = self._cls
        hooks: dict[str, tuple[Any, Callable[[Any, Any, Any], Any] | None]] = {}
        counters: set[str] = set()
        for a in attrs.fields(cls):
            hook = a.on_setattr if a.on_setattr is not None else self._hook
            if hook is self._hook and self._default_hook and a.converter is None and a.validator is None:
                hook = None  # attrs' default convert+validate has nothing to do for this field
            hook = None if hook is setters.NO_OP or hook is _keep else hook
            if a.name in _indexes.indexed_fields(cls) and _indexes.indexed_fields(cls)[a.name] is not None:
                hook = _unique_hook(hook)
            if _counters.is_counter(a):
                hook = _counter_hook(hook)
                counters.add(a.name)
            hooks[a.name] = (a, hook)
        plain = frozenset(name for name, (_, hook) in hooks.items() if hook is None)

        def __setattr__(self: Any, name: str, value: Any) -> None:
            owner = self._mi_img
            if owner is not None and name in plain:
                writer = owner._mi_current.get()
                # the hot path inside a transaction (see Writer.fast): a field with no hook set to a scalar is
                # one append to the transaction's journal, no further call
                journal = writer.fast
                if journal is not None and (type(value) in _SCALARS or (type(value) is str and value.isascii())):
                    journal += (_OBJ_SET, self, (name, value))
                else:  # no hook to run: straight to the writer (outside a transaction, its own commit)
                    writer.set_field(self, name, value)
                return
            entry = hooks.get(name)
            if entry is None:
                _OBJ_SETATTR(self, name, value)
                return
            attribute, hook = entry
            if hook is not None:
                value = hook(self, attribute, value)
            owner = self._mi_img
            if owner is None:
                _OBJ_SETATTR(self, name, value)
            else:  # the hot path inside a transaction: one call, no I/O
                owner._mi_current.get().set_field(self, name, value)

        def __delattr__(self: Any, name: str) -> None:
            if name in counters:
                raise _counters.refuse_del(type(self), name)
            owner = self._mi_img
            if owner is None or name not in hooks:
                _OBJ_DELATTR(self, name)
            else:
                owner._mi_current.get().del_field(self, name)

        for fn in (__setattr__, __delattr__):
            fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
            fn.__module__ = cls.__module__
        # with the compiled accelerator its twin runs the fast path above and calls this one for the rest
        setter: Any = __setattr__ if speedups is None else speedups.FastSetattr(plain, _OBJ_SET, _SCALARS, __setattr__)
        cls.__setattr__ = setter  # type: ignore[method-assign]
        cls.__delattr__ = __delattr__  # type: ignore[assignment]
        return self

    def register(self) -> type:
        cls = self._cls
        fields = attrs.fields(cls)
        localns = {self._original.__name__: cls}
        _indexes.check_declaration(cls, localns)
        _counters.check_declaration(cls, localns)
        _tracking.install_counters(cls, _counters.counter_fields(cls))
        getters: dict[str, Callable[[Any], Any]] = {}
        setters_: dict[str, Callable[[Any, Any], None]] = {}
        deleters: dict[str, Callable[[Any], None]] = {}
        for a in fields:
            slot = _tracking.raw_slot(cls, a.name)
            getters[a.name] = slot.__get__
            setters_[a.name] = slot.__set__
            deleters[a.name] = slot.__delete__
        renamed = {}
        for a in fields:
            old = a.metadata.get("memimg", {}).get("renamed_from")
            if old:
                renamed[a.name] = old
        info = _types.TypeInfo(
            cls=cls,
            name=self._name,
            kind=_types.ENTITY,
            aliases=self._aliases,
            version=self._version,
            fields=tuple(a.name for a in fields),
            getters=getters,
            setters=setters_,
            deleters=deleters,
            renamed=renamed,
            removed=self._removed,
            defaults={a.name: a.default for a in fields if a.default is not attrs.NOTHING},
        )
        _types.register(info, check=True)
        _tracking.register_entity(info)
        return cls


def _counter_hook(hook: Callable[[Any, Any, Any], Any] | None) -> Callable[[Any, Any, Any], Any]:
    """The setattr hook of a counter field: *hook* (if any), then the value refused unless it is a finite
    number of the field's type (see :func:`memimg.core._counters.check_value`)."""
    check = _counters.check_value

    def check_counter(obj: Any, attribute: Any, value: Any) -> Any:
        if hook is not None:
            value = hook(obj, attribute, value)
        value = check(type(obj), attribute.name, value)
        owner = obj._mi_img
        if owner is not None:
            owner._mi_current.get().counter_written(obj, attribute.name, value)
        return value

    return check_counter


def _unique_hook(hook: Callable[[Any, Any, Any], Any] | None) -> Callable[[Any, Any, Any], Any]:
    """*hook* (a field's own on-setattr hook, or none) followed by the check of a unique field's new value
    against the other instances the transaction writing it sees (outside one, the commit checks it)."""

    def check_unique(instance: Any, attribute: Any, value: Any) -> Any:
        if hook is not None:
            value = hook(instance, attribute, value)
        owner = instance._mi_img
        if owner is not None:
            writer = owner._mi_current.get()
            if writer.tracks_reads:
                writer.check_unique(instance, attribute.name, value)
        return value

    return check_unique


def _repoint_cells(new: type, olds: tuple[type, ...]) -> None:
    """Make ``super()`` and ``__class__`` in the class's methods refer to *new*.

    The compiler bakes the class into methods that use them; the class was
    rebuilt, so those references are rewritten (as attrs does for slots).
    """
    for item in new.__dict__.values():
        if isinstance(item, (classmethod, staticmethod)):
            func: Any = item.__func__
        elif isinstance(item, property):
            func = item.fget
        else:
            func = item
        for cell in getattr(func, "__closure__", None) or ():
            try:
                if any(cell.cell_contents is old for old in olds):
                    cell.cell_contents = new
            except ValueError:  # an empty cell
                pass


@overload
@dataclass_transform(field_specifiers=(attrs.field, field))
def persistent(
    maybe_cls: None = None,
    *,
    name: str | None = None,
    aliases: Iterable[str] = (),
    version: int = 1,
    removed: Iterable[str] = (),
    **options: Any,
) -> Callable[[T], T]: ...


@overload
@dataclass_transform(field_specifiers=(attrs.field, field))
def persistent(maybe_cls: T) -> T: ...


@dataclass_transform(field_specifiers=(attrs.field, field))
def persistent(
    maybe_cls: T | None = None,
    *,
    name: str | None = None,
    aliases: Iterable[str] = (),
    version: int = 1,
    removed: Iterable[str] = (),
    **options: Any,
) -> T | Callable[[T], T]:
    """Make a class a persistent entity (an attrs class whose mutations are tracked), or give an enum
    or a frozen attrs value class a stable name.

    Used bare (``@persistent``) or with options (``@persistent(name=...)``).
    On a plain class, the class keeps ``attrs.define`` semantics --
    annotations are fields; defaults, factories, validators and converters
    work -- except that it is always slotted and compares and hashes by
    identity (``eq=False``), so entities can be dict keys and set members.

    On an ``enum.Enum`` subclass or a frozen attrs class (put it above
    ``@attrs.frozen``), the class is returned unchanged: its values are
    stored by value, and the decorator only registers its stable name and
    aliases (and, for a value class, its version and removed fields) --
    exactly what ``memimg.converter.register_value(cls, name=...,
    aliases=...)`` does. See the schema-evolution guide, "Enums and value
    classes".

    Args:
        name: the stable type name written to the log (default
            ``module.QualName``); set it before renaming or moving the class.
        aliases: older names still accepted on replay.
        version: the schema version, raised when a field changes type or
            meaning (see ``memimg.upgrader``); not for an enum.
        removed: stored fields that no longer exist; their values are
            dropped; not for an enum.
        **options: other ``attrs.define`` options (``repr``, ``kw_only``,
            ``init``, ``on_setattr``, ...), for an entity only.

    Raises:
        TypeError: not a class; an option that contradicts entity semantics
            (``frozen``, ``eq``, ``slots``...) or that an enum or value
            class does not take; a name another kind of class already has,
            or an alias another class has as its name or alias (both
            classes are named; nothing is registered).
    """

    def wrap(cls: T) -> T:
        if not isinstance(cls, type) or isinstance(cls, types.GenericAlias):
            raise TypeError(
                f"@persistent decorates a class -- an entity class, an enum.Enum subclass or a frozen attrs "
                f"class -- not {_describe(cls)}: put it on a class statement"
            )
        if isinstance(cls, enum.EnumMeta) or _types.is_value_class(cls):
            _name_value_class(cls, name=name, aliases=aliases, version=version, removed=removed, options=options)
            return cls
        builder = _EntityBuilder(
            cls, name=name, aliases=aliases, version=version, removed=removed, options=dict(options)
        )
        built: Any = builder.add_base().build_attrs().add_setattr().register()
        return built  # type: ignore[no-any-return]

    if maybe_cls is None:
        return wrap
    return wrap(maybe_cls)


def _describe(obj: Any) -> str:
    """*obj* as an error message names it."""
    name = getattr(obj, "__qualname__", None)
    if callable(obj) and name:
        return f"the {type(obj).__name__} {name}"
    return f"{type(obj).__name__} {obj!r:.60}"


def _name_value_class(
    cls: type,
    *,
    name: str | None,
    aliases: Iterable[str],
    version: int,
    removed: Iterable[str],
    options: dict[str, Any],
) -> None:
    """``@persistent`` on an enum or a frozen attrs class: give it a stable name; the class is not rebuilt
    (its values are stored by value, so there is nothing to track)."""
    what = "an enum" if isinstance(cls, enum.EnumMeta) else "a frozen attrs class"
    if options:
        raise TypeError(
            f"@persistent on {what} ({cls.__qualname__}) takes only name, aliases"
            f"{'' if isinstance(cls, enum.EnumMeta) else ', version and removed'}, not "
            f"{', '.join(sorted(options))}: the class is only named, not rebuilt"
            + ("" if isinstance(cls, enum.EnumMeta) else "; pass attrs options to @attrs.frozen")
        )
    if isinstance(cls, enum.EnumMeta):
        if version != 1 or tuple(removed):
            raise TypeError(
                f"@persistent(version=..., removed=...) on the enum {cls.__qualname__}: an enum has no fields "
                "to upgrade or drop (members are stored by name); to rename a member, keep the old name as an "
                "alias member (OLD = NEW's value)"
            )
        _types.name_value_class(cls, name=name, aliases=tuple(aliases))
        return
    if not isinstance(version, int) or version < 1:
        raise TypeError(f"@persistent(version=...) must be an int >= 1, not {version!r}")
    _types.name_value_class(cls, name=name, aliases=tuple(aliases), version=version, removed=tuple(removed))
