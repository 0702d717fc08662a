"""What the inspector's pages show, read from an image: no Flask here, no HTML.

An :class:`Inspector` wraps one open image (the live one: read-only for
``memimg serve``, the application's own when embedded) and answers the
pages' questions -- the objects by type, one object's fields and who refers
to it, the log filtered, a field's history, a diff -- as plain values that
the templates render. It never writes: it reads the object table, the
store's events and snapshots, and past states through ``img.at`` (a few of
which it keeps, since a person moving a slider asks for the same seqs
again).

Every question can be asked *at* a seq: :meth:`Inspector.point` turns what a
URL gives (``?at=1200`` or ``?at=2026-12-01T12:00Z``) into a checked seq or
a :class:`BadRequest` that says what is wrong and what range is available.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, final

import attrs

from memimg._errors import HistoryError, MemimgError, value_repr
from memimg.core import _types
from memimg.core._diff import type_name
from memimg.core._generic import CustomValue, EnumValue
from memimg.core._history import Change, Collected
from memimg.core._markers import ERASED, MISSING
from memimg.core._meta import META_KIND, read_events
from memimg.image import _past
from memimg.image._image import MemoryImage
from memimg.model._base import PersistentBase
from memimg.model._collections import TrackedDict, TrackedList, TrackedSet

__all__ = [
    "PAGE_SIZE",
    "BadRequest",
    "Cell",
    "Inspector",
    "NotFound",
    "Page",
    "describe",
]

#: Items per page of a collection, of a type's instances, of the log.
PAGE_SIZE: Final = 50
#: Past images kept open (a slider going back and forth asks for the same seqs).
PAST_CACHE: Final = 3
#: Past images built at once (each replays the log up to its seq); more requests wait for one.
PAST_BUILDS: Final = 2
#: Diffs kept (a history page's diff links are followed back and forth).
DIFF_CACHE: Final = 8
#: Digits a number in a URL may have (Python refuses to parse longer ones; no seq or id is near this).
MAX_DIGITS: Final = 30
#: Characters of a string shown before it is cut (the object page shows more).
SHORT_TEXT: Final = 300
LONG_TEXT: Final = 20_000
#: Items of a tuple or frozenset shown inline (the rest are counted).
INLINE_ITEMS: Final = 20
#: How deep values inside values (tuples in value objects in tuples...) are shown.
DEPTH: Final = 4

_SEQ: Final = re.compile(r"[0-9]+")


class BadRequest(MemimgError):
    """What a URL asks for makes no sense here (HTTP 400); the message says why and what to ask instead."""


class NotFound(MemimgError):
    """What a URL names does not exist (HTTP 404); the message says where to look instead."""


def whole_number(text: str, what: str) -> int:
    """*text* (ASCII digits) as an int.

    Raises:
        BadRequest: *text* has more than :data:`MAX_DIGITS` digits (no seq, id or page is that big).
    """
    if len(text) > MAX_DIGITS:
        raise BadRequest(f"{what} {text[:20]}… has {len(text)} digits: no {what} is that big (at most {MAX_DIGITS})")
    return int(text)


# -- values, for the templates ------------------------------------------------------------


@attrs.frozen
class Cell:
    """A value as a page shows it: ``kind`` picks the rendering, ``text`` is plain text (escaped by the template).

    Kinds: ``none``, ``missing``, ``erased``, ``bool``, ``number``, ``str``,
    ``bytes``, ``time``, ``other`` (text only); ``ref`` (an entity or
    collection: ``oid`` links to it, ``text`` labels it, ``count`` its size
    for a collection); ``gone`` (an object no longer in the image, ``oid``);
    ``seq`` (``items``, shown inline: a tuple, a frozenset, a value object --
    ``text`` is its type -- or what a list change carried).
    """

    kind: str
    text: str = ""
    oid: int | None = None
    count: int | None = None
    items: tuple[tuple[str | None, Cell], ...] = ()
    cut: int = 0  # characters left out of a long text


def _is_object(value: Any) -> bool:
    return isinstance(value, (PersistentBase, TrackedList, TrackedDict, TrackedSet))


def label(obj: Any) -> str:
    """``Account #12`` (the type's last dotted part and the object id)."""
    return f"{type_name(obj).rsplit('.', 1)[-1]} #{obj._mi_oid}"


def _text(value: str, limit: int) -> Cell:
    if len(value) > limit:
        return Cell("str", value[:limit], cut=len(value) - limit)
    return Cell("str", value)


def describe(value: Any, *, limit: int = SHORT_TEXT, depth: int = DEPTH) -> Cell:
    """*value* as a :class:`Cell` (references by id, values by their text, nested values to *depth*)."""
    if value is None:
        return Cell("none", "None")
    if value is MISSING:
        return Cell("missing", "(none)")
    if value is ERASED:
        return Cell("erased", "ERASED")
    if isinstance(value, Collected):
        return Cell("gone", f"#{value.oid} (collected)", oid=value.oid)
    if _is_object(value):
        oid = value._mi_oid
        count = None if isinstance(value, PersistentBase) else len(value)
        if oid is None:  # filled in by a read-only image: no id to link to
            return Cell("other", value_repr(value)[:limit])
        return Cell("ref", label(value), oid=oid, count=count)
    t = type(value)
    if t is bool:
        return Cell("bool", repr(value))
    if t is str:
        return _text(value, limit)
    if t in (int, float):
        return Cell("number", value_repr(value))
    if t.__name__ in ("Decimal", "Fraction"):
        try:
            return Cell("number", str(value))
        except ValueError:  # too many digits for decimal
            return Cell("number", value_repr(value))
    if t is bytes:
        text = value_repr(value)
        return Cell("bytes", text[:limit], cut=max(len(text) - limit, 0))
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta)):
        return Cell("time", value.isoformat() if hasattr(value, "isoformat") else str(value))
    if depth > 0 and t in (tuple, list, frozenset):
        items = sorted(value, key=value_repr) if t is frozenset else value
        name = {"tuple": "", "list": "", "frozenset": "frozenset"}[t.__name__]
        shown = tuple((None, describe(v, limit=limit, depth=depth - 1)) for v in itertools.islice(items, INLINE_ITEMS))
        return Cell("seq", name, items=shown, cut=max(len(value) - INLINE_ITEMS, 0))
    if depth > 0 and attrs.has(t) and not isinstance(value, (EnumValue, CustomValue)):
        fields = tuple(
            (a.name, describe(getattr(value, a.name, MISSING), limit=limit, depth=depth - 1))
            for a in attrs.fields(t)
            if a.repr
        )
        return Cell("seq", type_name(value).rsplit(".", 1)[-1], items=fields)
    text = value_repr(value)
    return Cell("other", text[:limit], cut=max(len(text) - limit, 0))


# -- pages of things ---------------------------------------------------------------------------


@attrs.frozen
class Page:
    """One page of a longer sequence: ``items``, its 1-based ``number``, and how many there are in all."""

    items: list[Any]
    number: int
    total: int
    size: int = PAGE_SIZE

    @property
    def pages(self) -> int:
        return max((self.total + self.size - 1) // self.size, 1)

    @property
    def first(self) -> int:
        """The 0-based position of the first item shown."""
        return (self.number - 1) * self.size


def page_number(text: str | None) -> int:
    """The page a ``?page=`` asks for (1 when absent).

    Raises:
        BadRequest: not a positive whole number.
    """
    if text is None or text == "":
        return 1
    if not _SEQ.fullmatch(text) or whole_number(text, "page") < 1:
        raise BadRequest(f"page {text!r} is not a page number: give a whole number from 1")
    return int(text)


def paginate(items: Iterable[Any], total: int, number: int, show: Callable[[Any], Any] = lambda item: item) -> Page:
    """The *number*-th page of *items* (*total* of them), each passed through *show*; a page past the last is
    the last. Only the items of the page are shown (those before it are skipped unread)."""
    pages = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    number = min(number, pages)
    start = (number - 1) * PAGE_SIZE
    return Page([show(item) for item in itertools.islice(items, start, start + PAGE_SIZE)], number, total)


# -- the inspector ----------------------------------------------------------------------------


def parse_time(text: str) -> dt.datetime:
    """An ISO time from a URL (UTC when it has no offset; ``12:00 01:00`` -- a ``+`` turned into a space by
    the address bar -- is ``12:00+01:00``).

    Raises:
        ValueError: not an ISO time.
    """
    text = text.strip()
    if len(text) > 64:
        raise ValueError(text)
    text = re.sub(r"(\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)$", r"\1+\2", text)
    when = dt.datetime.fromisoformat(text.replace(" ", "T"))
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def fields_of(obj: Any) -> list[tuple[str, Any]]:
    """The fields of entity *obj* in declaration order, ``MISSING`` for one not set."""
    info = _types.info_of(type(obj))
    out = []
    for name in info.fields if info is not None else ():
        get = info.getters.get(name) if info is not None else None
        try:
            out.append((name, get(obj) if get is not None else getattr(obj, name)))
        except AttributeError:
            out.append((name, MISSING))
    return out


def _refs_in(value: Any, depth: int = DEPTH) -> Iterator[Any]:
    """The entities and collections *value* refers to (itself, or inside tuples and value objects)."""
    if _is_object(value):
        yield value
        return
    if depth <= 0:
        return
    t = type(value)
    if t in (tuple, frozenset):
        for v in value:
            yield from _refs_in(v, depth - 1)
    elif attrs.has(t) and not isinstance(value, (EnumValue, CustomValue)):
        for a in attrs.fields(t):
            yield from _refs_in(getattr(value, a.name, None), depth - 1)


def children(obj: Any) -> Iterator[tuple[str, Any]]:
    """What *obj* holds, as ``(where, value)``: fields, list items, dict keys and values, set members."""
    if isinstance(obj, PersistentBase):
        for name, value in fields_of(obj):
            yield name, value
    elif isinstance(obj, dict):
        for key, value in list(dict.items(obj)):  # a copy: read outside the image's lock
            yield "key", key
            yield f"[{value_repr(key)[:60]}]", value
    elif isinstance(obj, list):
        for i, value in enumerate(list.copy(obj)):
            yield f"[{i}]", value
    elif isinstance(obj, set):
        for value in set.copy(obj):
            yield "member", value


class _Past:
    """A past image kept by an :class:`Inspector`, with how many requests are reading it (closed when none is
    and it has been dropped from the cache)."""

    def __init__(self, source: MemoryImage, image: MemoryImage) -> None:
        self.source = source
        self.image = image
        self.users = 0
        self.dropped = False


class _Census:
    """What a scan of every object of an image at one seq found: the objects of each type, and (built on first
    use) who refers to whom. Built from a copy of the object table, outside the image's lock."""

    def __init__(self, seq: int, objects: list[Any]) -> None:
        self.seq = seq
        self.by_type: dict[str, list[Any]] = collections.defaultdict(list)
        for obj in objects:
            if obj is not None:
                self.by_type[type_name(obj)].append(obj)
        self.objects = objects
        self.referrers: dict[int, list[tuple[Any, str]]] | None = None

    def index_referrers(self) -> dict[int, list[tuple[Any, str]]]:
        index: dict[int, list[tuple[Any, str]]] = collections.defaultdict(list)
        for holder in self.objects:
            if holder is None:
                continue
            for where, value in children(holder):
                for ref in _refs_in(value):
                    index[ref._mi_oid].append((holder, where))
        return index


def _close_pasts(pasts: collections.OrderedDict[tuple[int, int], _Past], lock: threading.Lock) -> None:
    with lock:
        while pasts:
            entry = pasts.popitem()[1]
            entry.dropped = True
            if entry.users == 0:
                entry.image.close()


@final
class Inspector:
    """The read side of the inspector over one open image (see the module docstring).

    Thread-safe: pages are served from several threads while the image
    follows other processes' commits (or, embedded, the application
    commits). A page reads what it shows of one object under the image's
    lock, so it never shows half of a commit there; what needs every
    object (the counts by type, a type's instances, who refers to an
    object) is computed from a copy of the object table taken under the
    lock, *outside* it -- once per seq, shared by the requests asking -- so
    a large image's pages never hold up its commits for long.
    """

    def __init__(self, image: MemoryImage | Callable[[], MemoryImage], *, title: str | None = None) -> None:
        self._image = image
        self._title = title
        self._lock = threading.Lock()
        self._past: collections.OrderedDict[tuple[int, int], _Past] = collections.OrderedDict()
        self._past_building: dict[tuple[int, int], threading.Lock] = {}
        self._builds = threading.BoundedSemaphore(PAST_BUILDS)
        self._census: dict[int, tuple[MemoryImage, _Census]] = {}
        self._census_lock = threading.Lock()
        self._diffs: collections.OrderedDict[tuple[int, int, int], list[Any]] = collections.OrderedDict()
        # the past images kept are closed when the inspector goes (or at exit), whoever forgets close()
        weakref.finalize(self, _close_pasts, self._past, self._lock)

    @property
    def image(self) -> MemoryImage:
        """The image shown (for a function given instead of an image: what it returns now)."""
        image = self._image
        return image if isinstance(image, MemoryImage) else image()

    @property
    def title(self) -> str:
        """What the pages call the image: the title given, else the store's description."""
        return self._title or self.image.store.description

    # -- points in time --------------------------------------------------------------

    @property
    def head(self) -> int:
        """The newest seq: the image's (which follows the log)."""
        return self.image.seq

    def oldest(self) -> int:
        """The oldest seq a past state can be shown at."""
        return min(_past.oldest_seq(self.image.store), max(self.head, 1))

    def point(self, text: str | None) -> int | None:
        """The seq ``?at=`` names: ``None`` (now) when absent or empty; a seq, or an ISO time (UTC when it has
        no offset), checked against what the log keeps. A space before the offset's hours stands for ``+``
        (what a ``+`` typed in the address bar arrives as).

        Raises:
            BadRequest: neither a seq nor an ISO time, or a state the log cannot give (the message says
                which range can).
        """
        if text is None or not text.strip():
            return None
        text = text.strip()
        store = self.image.store
        try:
            if _SEQ.fullmatch(text):
                seq = whole_number(text, "seq")
                if seq > self.head:
                    raise BadRequest(
                        f"seq {seq} is past the newest seq ({self.head}); ask for a seq from {self.oldest()} "
                        f"to {self.head}"
                    )
                return _past.check_seq(store, seq)
            try:
                when = parse_time(text)
            except ValueError:
                raise BadRequest(
                    f"at={text!r} is neither a seq nor an ISO time: give a seq from {self.oldest()} to {self.head}, "
                    "or a time such as 2026-12-01T12:00:00+00:00 (UTC when no offset is given)"
                ) from None
            seq = _past.resolve(store, None, when)
            return min(seq, self.head)
        except HistoryError as err:
            raise BadRequest(str(err)) from None

    def time_of(self, seq: int) -> dt.datetime | None:
        """When the commit holding *seq* was made (``None`` for an empty log)."""
        if seq < 1:
            return None
        return _past.commit_time(self.image.store, seq)

    def tx_end(self, seq: int) -> int | None:
        """The last seq of the transaction holding *seq* when *seq* is inside one (``None``: it ends there)."""
        if seq < 1:
            return None
        last = None
        for event in read_events(self.image.store.read, seq - 1):
            if last is None:
                if event.seq != seq:
                    return None
                tx = event.tx
            elif event.tx != tx:
                break
            last = event.seq
            if last - seq > 100_000:  # a huge transaction: say so without reading it all
                break
        return last if last is not None and last > seq else None

    @contextlib.contextmanager
    def state(self, seq: int | None) -> Iterator[MemoryImage]:
        """The image to read at *seq* (``None`` or the head: the live image), read under its lock; a past image
        stays open while the block runs, even when dropped from the cache meanwhile."""
        with self.image_at(seq) as img, img._engine.lock:
            yield img

    @contextlib.contextmanager
    def image_at(self, seq: int | None) -> Iterator[MemoryImage]:
        """The image to read at *seq*, *not* locked (a past image leased for the block): for the questions that
        take the lock themselves, briefly (:meth:`census`, :meth:`referrers`, :meth:`history`)."""
        image = self.image
        if seq is None or seq >= image.seq:
            yield image
            return
        with self.past(seq) as past:
            yield past

    @contextlib.contextmanager
    def past(self, seq: int) -> Iterator[MemoryImage]:
        """The state after *seq* as a read-only image, leased for the block (closed once dropped and unused).

        Each seq's image is built once however many requests ask at the same time, and at most
        :data:`PAST_BUILDS` are built at once.
        """
        entry = self._lease(seq)
        try:
            yield entry.image
        finally:
            self._release(entry)

    def _lease(self, seq: int) -> _Past:
        source = self.image
        key = (id(source), seq)
        while True:
            with self._lock:
                self._drop_closed()
                entry = self._past.get(key)
                if entry is not None and entry.source is source:
                    self._past.move_to_end(key)
                    entry.users += 1
                    return entry
                building = self._past_building.setdefault(key, threading.Lock())
            with building:  # one build per seq: the others wait here, then find it cached
                with self._lock:
                    entry = self._past.get(key)
                    if entry is not None and entry.source is source:
                        continue
                try:
                    with self._builds:
                        image = source.at(seq, on_schema_drift="drop")
                    with self._lock:
                        entry = _Past(source, image)
                        entry.users = 1
                        self._past[key] = entry
                        while len(self._past) > PAST_CACHE:
                            self._drop(self._past.popitem(last=False)[1])
                        return entry
                except HistoryError as err:
                    raise BadRequest(str(err)) from None
                finally:
                    with self._lock:
                        self._past_building.pop(key, None)

    def _release(self, entry: _Past) -> None:
        with self._lock:
            entry.users -= 1
            close = entry.dropped and entry.users == 0
        if close:
            entry.image.close()

    def _drop(self, entry: _Past) -> None:
        """Forget *entry* (called with ``self._lock`` held); closed now if unused, else by its last user."""
        entry.dropped = True
        if entry.users == 0:
            entry.image.close()

    def _drop_closed(self) -> None:
        """Forget the past images of images closed since (called with ``self._lock`` held)."""
        for key in [k for k, e in self._past.items() if e.source.closed]:
            self._drop(self._past.pop(key))

    def close(self) -> None:
        """Close the past states kept (not the image); one a request still reads is closed when it is done.
        (Done by itself when the inspector is garbage-collected, or at exit.)"""
        _close_pasts(self._past, self._lock)
        with self._lock:
            self._census.clear()
            self._diffs.clear()

    # -- objects ------------------------------------------------------------------------

    @staticmethod
    def objects(img: MemoryImage) -> list[Any]:
        return img._engine.table.objects

    def get(self, img: MemoryImage, oid: int, seq: int | None) -> Any:
        """The object *oid* of *img*.

        Raises:
            NotFound: no such object there (never made, made later, or collected).
        """
        objects = self.objects(img)
        obj = objects[oid] if 0 < oid < len(objects) else None
        if obj is None:
            when = "now" if seq is None else f"at seq {seq}"
            raise NotFound(
                f"there is no object #{oid} in the image {when}: it was never made, is made later, or was "
                f"collected once unreachable (the log, filtered by object {oid}, shows its events)"
            )
        return obj

    def census(self, img: MemoryImage) -> _Census:
        """The objects of *img* by type at its seq: built from a copy of the object table taken under the
        image's lock (held only for the copy), once per seq; requests at the same seq share it.

        Call it *outside* :meth:`state` (it takes the lock itself, briefly).
        """
        with img._engine.lock:
            seq = img.seq
            cached = self._census.get(id(img))
            if cached is not None and cached[0] is img and cached[1].seq == seq:
                return cached[1]
            objects = list(self.objects(img))
        with self._census_lock:  # one scan at a time: a request arriving during it waits and shares it
            cached = self._census.get(id(img))
            if cached is not None and cached[0] is img and cached[1].seq >= seq:
                return cached[1]
            census = _Census(seq, objects)
            for key in [k for k, (i, _) in self._census.items() if i.closed]:
                del self._census[key]
            self._census[id(img)] = (img, census)
            return census

    def counts(self, img: MemoryImage, census: _Census | None = None) -> list[tuple[str, int]]:
        """How many objects of each type *img* holds, most first (from *census*; else call it outside
        :meth:`state`)."""
        by_type = (census or self.census(img)).by_type
        return sorted(((name, len(objs)) for name, objs in by_type.items()), key=lambda kv: (-kv[1], kv[0]))

    def instances(self, img: MemoryImage, name: str) -> list[Any]:
        """The objects of type *name* in *img*, by id (call it outside :meth:`state`)."""
        return self.census(img).by_type.get(name, [])

    def type_fields(self, name: str, img: MemoryImage) -> tuple[str, ...]:
        """The fields of type *name* (as loaded), or ``()`` for a collection type."""
        for obj in self.instances(img, name)[:1]:
            info = _types.info_of(type(obj))
            return info.fields if info is not None else ()
        return ()

    def referrers(self, img: MemoryImage, oid: int) -> list[tuple[Any, str]]:
        """The objects of *img* that refer to object *oid*, with where (a field, ``[key]``, ``[index]``).

        Read from an index of every object's references, built outside the image's lock once per seq (call
        it outside :meth:`state`): on an image taking commits, it is the index as of the commit before the
        build began, and a holder collected since is left out.
        """
        census = self.census(img)
        if census.referrers is None:
            with self._census_lock:
                if census.referrers is None:
                    census.referrers = census.index_referrers()
        objects = self.objects(img)

        def present(holder: Any) -> bool:  # not collected since the scan
            at = holder._mi_oid
            return type(at) is int and at < len(objects) and objects[at] is holder

        return [(h, w) for h, w in census.referrers.get(oid, ()) if present(h)]

    def schema(self, img: MemoryImage, census: _Census | None = None) -> list[dict[str, Any]]:
        """Every type the log declared (in the events and snapshots read): each stored version with its fields,
        and the version of the class loaded for it (``None``: none, or a generic stand-in)."""
        by_name: dict[str, dict[str, Any]] = {}

        def note(name: str, version: int, fields: tuple[str, ...], info: _types.TypeInfo | None) -> None:
            entry = by_name.setdefault(
                name,
                {"name": name, "versions": {}, "loaded": None, "class": None, "stand_in": False, "removed": True},
            )
            entry["versions"][version] = fields
            if info is not None:
                entry["removed"] = False
                entry["stand_in"] = info.stand_in
                if not info.stand_in:
                    entry["loaded"] = info.version
                    entry["class"] = info.name

        for plan in img._engine.reader.plans_read():  # what replay read: every declaration, old versions too
            note(plan.stored_name, plan.version, plan.stored_fields, plan.info)
        for name, (version, fields, _) in img._engine.table.declarations.by_name.items():
            note(name, version, fields, _types.claimed(name))
        by_type = (census or self.census(img)).by_type
        classes = {type(objs[0]) for objs in by_type.values() if isinstance(objs[0], PersistentBase)}
        for cls in classes:  # what this image wrote itself (it read no declaration of it)
            info = _types.info_of(cls)
            if info is not None and (info.name not in by_name or info.stand_in):
                note(info.name, info.version, info.fields, info)
        for entry in by_name.values():
            entry["versions"] = sorted(entry["versions"].items())
        return [by_name[name] for name in sorted(by_name)]

    # -- the log ------------------------------------------------------------------------

    def log(
        self,
        *,
        after: int,
        until: int,
        oid: int | None = None,
        kinds: tuple[str, ...] = (),
        since_time: dt.datetime | None = None,
        until_time: dt.datetime | None = None,
        meta: dict[str, str] | None = None,
        limit: int = PAGE_SIZE * 4,
    ) -> tuple[list[list[Any]], int | None]:
        """Events with ``after < seq <= until`` that match every filter, grouped by transaction (each group a
        list of events, its meta on each); and the seq to continue after when *limit* events were found
        (``None``: none are left)."""
        groups: list[list[Any]] = []
        shown = 0
        for event in read_events(self.image.store.read, after):
            if event.seq > until:
                return groups, None
            if shown >= limit:
                return groups, groups[-1][-1].seq if groups else None
            if oid is not None and event.target != oid:
                continue
            if kinds and not any(event.kind == k or (k.endswith("*") and event.kind.startswith(k[:-1])) for k in kinds):
                continue
            if since_time is not None and event.ts < since_time:
                continue
            if until_time is not None and event.ts > until_time:
                continue
            if meta and any(str(event.meta.get(k)) != v for k, v in meta.items()):
                continue
            if event.kind == META_KIND and (oid is not None or kinds):
                continue
            if groups and groups[-1][-1].tx == event.tx:
                groups[-1].append(event)
            else:
                groups.append([event])
            shown += 1
        return groups, None

    # -- history and diffs -------------------------------------------------------------------

    def history(self, img: MemoryImage, obj: Any, field: str | None) -> list[Change]:
        """The changes of *obj* (its *field*) up to *img*'s seq, newest first (call it outside :meth:`state`:
        reading the log, and indexing it first on a writable image, happens without the image's lock).

        Raises:
            NotFound: *obj* has no field *field*.
        """
        if field is not None and isinstance(obj, PersistentBase):
            info = _types.info_of(type(obj))
            fields = info.fields if info is not None else ()
            if field not in fields:
                raise NotFound(f"{label(obj)} has no field {field!r}; its fields are {', '.join(fields)}")
        try:
            return list(reversed(img.history(obj, field)))
        except MemimgError as err:
            raise BadRequest(str(err)) from None

    def diff(self, a: int, b: int) -> list[Any]:
        """The differences from the state after seq *a* to that after seq *b* (the last :data:`DIFF_CACHE`
        asked are kept; at most :data:`PAST_BUILDS` are computed at once)."""
        image = self.image
        key = (id(image), a, b)
        with self._lock:
            cached = self._diffs.get(key)
            if cached is not None:
                self._diffs.move_to_end(key)
                return cached
        with self._builds:
            try:
                rows = list(image.diff(a, b, on_schema_drift="drop"))
            except HistoryError as err:
                raise BadRequest(str(err)) from None
        with self._lock:
            self._diffs[key] = rows
            while len(self._diffs) > DIFF_CACHE:
                self._diffs.popitem(last=False)
        return rows
