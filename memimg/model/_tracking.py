"""Read tracking: hooks on reads exist only while some transaction is open.

Outside transactions a read must cost what a plain attrs read costs, so
entity fields are plain slots and tracked collections inherit the builtin
read methods: CPython's specialised attribute loads and C methods run, and no
memimg code at all. Transactions, however, need every read to go through
memimg -- to show the transaction its own writes (the delta layer) and to
record what it read (serializable commits).

This module switches between the two *per class*, process-wide:

* when the first transaction opens, each entity field slot is replaced on its
  class by a :class:`TrackedField` (a data descriptor that asks the current
  transaction, if any, and otherwise reads the slot), and the tracked
  collection classes get Python read methods from their read tables;
* the hooks stay while transactions come and go, and are removed once no
  transaction is open and a few thousand reads have gone by untouched
  (hysteresis: a loop of small transactions does not pay the switch each
  time).

Raw accessors -- the original member descriptors and builtin methods -- are
what replay and the commit path use, whatever the mode.

With the compiled accelerator (:mod:`memimg.model._accel`) the hook of a
field is its compiled twin, and each hooked class gets a compiled attribute
lookup: a read that needs nothing but the slot is done there, and every
other read calls :meth:`TrackedField.__get__` below, so the two agree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from memimg.core._counters import check_value, plain, refuse_del
from memimg.core._markers import WHOLE
from memimg.model._accel import speedups
from memimg.model._base import PersistentBase

__all__ = [
    "CounterField",
    "TrackedField",
    "changed",
    "enabled",
    "install_counters",
    "make_reader",
    "raw_slot",
    "register_collection",
    "register_entity",
    "tx_closed",
    "tx_opened",
]

#: Untracked reads, with no transaction open, after which the hooks go away.
IDLE_READS: Final = 2000


class _State:
    __slots__ = ("collections", "enabled", "entities", "hooked", "idle", "lock", "open", "saved")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.open = 0
        self.enabled = False
        self.idle = 0
        self.entities: list[Any] = []
        self.collections: list[tuple[type, dict[str, Callable[..., Any]]]] = []
        self.saved: list[tuple[type, str, Any]] = []
        #: classes given the compiled attribute lookup while the hooks are on (accelerator only)
        self.hooked: list[type] = []

    def idle_read(self) -> None:
        self.idle += 1
        if self.idle > IDLE_READS:
            with self.lock:
                if not self.open and self.enabled:
                    _disable()


_S = _State()


class TrackedField:
    """The hook that stands in for an entity field's slot while tracking is on."""

    __slots__ = ("get", "name", "set", "slot")

    def __init__(self, name: str, slot: Any) -> None:
        self.name = name
        self.slot = slot
        self.get: Callable[[Any], Any] = slot.__get__
        self.set: Callable[[Any, Any], None] = slot.__set__

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self.slot
        owner = obj._mi_img
        if owner is not None:
            writer = owner._mi_current.get()
            if writer.tracks_reads:  # a transaction: it shows its own writes and records the read
                return writer.read_field(obj, self.name, self.get)
            if writer.publishing:  # another thread's commit is being applied: all of it or none
                return writer.read_field(obj, self.name, self.get)
        s = _S
        if not s.open:
            s.idle_read()
        return self.get(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        self.set(obj, value)

    def __delete__(self, obj: Any) -> None:
        self.slot.__delete__(obj)


class CounterField(TrackedField):
    """The descriptor of a counter field (``memimg.field(merge="add")``), installed for good, tracking on or off.

    A read of an attached object's counter hands out a *counted* value, so
    that ``obj.f += n`` is told from ``obj.f = v`` when it is assigned back
    (see :mod:`memimg.core._counters`); a write stores plain numbers only.
    """

    __slots__ = ()

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self.slot
        owner = obj._mi_img
        if owner is None:
            return self.get(obj)
        return owner._mi_current.get().read_counter(obj, self.name, self.get)

    def __set__(self, obj: Any, value: Any) -> None:
        self.set(obj, plain(check_value(type(obj), self.name, value)))

    def __delete__(self, obj: Any) -> None:
        raise refuse_del(type(obj), self.name)


def _unchanged() -> None:
    """Nothing: the pure-Python hooks remember nothing between reads."""


#: Tell the compiled accelerator that what a read's fast path depends on may have changed: call it after
#: a transaction opens or closes, after an image's ``_mi_current`` is set (``ContextVar.set`` does not
#: tell the accelerator's cache of the context), and when an engine makes its context variable. Its
#: cached answers of whether a context's writer is quiet are forgotten (memimg/model/_speedups.c, "the
#: quiet cache"); the pure-Python code remembers nothing, and has nothing to forget.
changed: Callable[[], None] = _unchanged

#: what stands in for a field's slot while tracking is on: the compiled hook, or :class:`TrackedField`
_FIELD: Callable[[str, Any], Any] = TrackedField
#: the hooks of fields, whichever kind
_HOOKS: tuple[type[Any], ...] = (TrackedField,)
if speedups is not None:
    speedups.configure(PersistentBase, _S, TrackedField.__get__)
    _FIELD = speedups.TrackedField
    _HOOKS = (TrackedField, speedups.TrackedField)
    changed = speedups.changed


def install_counters(cls: type, names: Iterable[str]) -> None:
    """Make fields *names* of *cls* (slots of its own) counters: :class:`CounterField` in place of their slots."""
    for name in names:
        current = cls.__dict__.get(name)
        if current is not None and type(current).__name__ == "member_descriptor":
            type.__setattr__(cls, name, CounterField(name, current))


def make_reader(name: str, base: Callable[..., Any], keyed: bool, qualname: str | None = None) -> Callable[..., Any]:
    """A tracked read method of a collection class, standing in for builtin *base* (named *qualname*).

    *keyed* reads (``d[k]``, ``k in s``) record the key they looked at; the
    others record the whole collection. With the compiled accelerator, a
    dict's ``d[k]`` is its ``DictRead``: the common read inside a transaction
    compiled, everything else by the reader made here.
    """
    if keyed:

        def reader(self: Any, *args: Any) -> Any:
            owner = self._mi_img
            if owner is not None:
                writer = owner._mi_current.get()
                if writer.tracks_reads or writer.publishing:
                    return writer.read_coll(self, name, args, args[0])
            s = _S
            if not s.open:
                s.idle_read()
            return base(self, *args)

    else:

        def reader(self: Any, *args: Any) -> Any:
            owner = self._mi_img
            if owner is not None:
                writer = owner._mi_current.get()
                if writer.tracks_reads or writer.publishing:
                    return writer.read_coll(self, name, args, WHOLE)
            s = _S
            if not s.open:
                s.idle_read()
            return base(self, *args)

    reader.__name__ = name
    reader.__qualname__ = qualname or name
    reader.__doc__ = getattr(base, "__doc__", None)
    if speedups is not None and base is dict.__getitem__:
        return speedups.DictRead(reader)  # type: ignore[no-any-return]
    return reader


def raw_slot(cls: type, name: str) -> Any:
    """The member descriptor that stores field *name* of *cls* (never a hook)."""
    for klass in cls.__mro__:
        found = klass.__dict__.get(name)
        if isinstance(found, _HOOKS):
            return found.slot
        if found is not None and type(found).__name__ == "member_descriptor":
            return found
    raise TypeError(f"{cls.__qualname__}.{name} is not a slot")  # pragma: no cover


def _install_entity(info: Any) -> None:
    cls = info.cls
    installed = False
    for name in info.fields:
        current = cls.__dict__.get(name)
        if current is not None and type(current).__name__ == "member_descriptor":
            _S.saved.append((cls, name, current))
            type.__setattr__(cls, name, _FIELD(name, current))
            installed = True
    if installed and speedups is not None and speedups.hook(cls):
        _S.hooked.append(cls)


def _install_collection(cls: type, readers: dict[str, Callable[..., Any]]) -> None:
    for name, reader in readers.items():
        _S.saved.append((cls, name, cls.__dict__.get(name)))
        type.__setattr__(cls, name, reader)


def _enable() -> None:
    for info in _S.entities:
        _install_entity(info)
    for cls, readers in _S.collections:
        _install_collection(cls, readers)
    _S.enabled = True


def _disable() -> None:
    for cls, name, previous in reversed(_S.saved):
        if previous is None:
            type.__delattr__(cls, name)
        else:
            type.__setattr__(cls, name, previous)
    _S.saved.clear()
    if speedups is not None:
        # subclasses made while their base was hooked may have inherited its lookup: they get theirs back too
        todo = list(_S.hooked)
        while todo:
            cls = todo.pop()
            speedups.unhook(cls)
            todo.extend(type.__subclasses__(cls))
        _S.hooked.clear()
    _S.enabled = False
    _S.idle = 0


def register_entity(info: Any) -> None:
    """Track reads of *info*'s class from now on whenever tracking is on."""
    with _S.lock:
        _S.entities.append(info)
        if _S.enabled:
            _install_entity(info)


def register_collection(cls: type, readers: dict[str, Callable[..., Any]]) -> None:
    """Install *readers* on *cls* whenever tracking is on."""
    with _S.lock:
        _S.collections.append((cls, readers))
        if _S.enabled:
            _install_collection(cls, readers)


def tx_opened() -> None:
    """A transaction opened somewhere in the process: reads must be tracked."""
    with _S.lock:
        _S.open += 1
        _S.idle = 0
        if not _S.enabled:
            _enable()
        changed()


def tx_closed() -> None:
    """A transaction ended; the hooks stay until reads go untracked for a while."""
    with _S.lock:
        _S.open -= 1
        changed()


def enabled() -> bool:
    """Whether read hooks are installed right now (for tests and benchmarks)."""
    return _S.enabled


def disable_now() -> bool:
    """Remove the hooks at once if no transaction is open; returns whether they are off."""
    with _S.lock:
        if not _S.open and _S.enabled:
            _disable()
        return not _S.enabled
