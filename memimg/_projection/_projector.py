"""``memimg.project``: one SQL table per class, kept current from the image's change feed.

**What it follows.** At the start the projection subscribes to everything
(``img.subscribe``), so every commit applied from then on reaches its queue,
and makes the image follow the log (``img.follow()``). Then, from the seq
stored in the target (the meta table, :mod:`memimg._projection._target`):

* no meta table, one of another image, or a seq a compaction left behind
  (``img.changes(since=...)`` raises ``HistoryError``): a **rebuild** --
  every table dropped, created and filled from the image as it is, labelled
  with the image's seq read *before* the objects were read;
* else a **resume**: tables whose class gained, lost or retyped fields are
  altered, every row is rewritten from the objects as they are (an upgrader
  run at open or ``open(removed_types=...)`` changes objects with no commit
  saying so), the rows of objects that left the image meanwhile are
  deleted, and ``img.changes(since=seq)`` gives
  the commits after the stored seq; those and then the queued ones are
  applied (a commit at or below the seq stored is skipped).

**Applying commits**, in batches (all that wait, up to :data:`BATCH`), each
batch in one SQL transaction with the new seq: the rows of the entities the
batch changed are rewritten from the objects as they are *now* -- an entity
that is a change's target, the entities holding a collection that is one (a
map from collection to the rows that spelled it out), and the entities new
to the image, found in the changes' new and old values (an entity attached
and detached again before the batch reads the objects is reached only
through the old value of the change that detached it, and stays in the
image until a snapshot collects it). Then the count check: an extent
(``img.all``) smaller than what the projection knows of its class means
objects left the image (collected at a snapshot); their rows are deleted;
one larger (for a class of which it knows no object too) means objects it
missed, whose rows are written. The count check runs on idle moments too.

**Why reading the objects now is right.** A row is written after every
commit up to the batch's seq changed it, from a state no older than that:
so the tables hold every commit up to the stored seq, and perhaps some of
the following ones, which are applied again after a restart (the row is
rewritten from the state then). Each batch is one SQL transaction with the
seq, so a process killed at any point leaves the tables at a stored seq,
and a restart converges to the image.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Final

import orjson
import sqlalchemy as sa

from memimg._errors import HistoryError, MemimgError
from memimg._projection._columns import Misfit, Walk, kinds_of
from memimg._projection._target import FORMAT, ClassTable, Target, _first_line
from memimg.core import _types
from memimg.core._history import Collected
from memimg.image._feeds import Commit
from memimg.model import TrackedDict, TrackedList, TrackedSet

__all__ = ["BATCH", "RETRY_FOR", "Projection"]

log = logging.getLogger("memimg")

#: the most commits written in one SQL transaction
BATCH: Final = 1000
#: how long a batch is tried again while the target's connection fails, in seconds
RETRY_FOR: Final = 60.0
_COLLECTIONS: Final = (TrackedList, TrackedDict, TrackedSet)


class Projection:
    """A running SQL projection of an image, made by :func:`memimg.project`; ``close()`` it, or use it as a
    context manager."""

    def __init__(
        self, img: Any, target: Any, *, classes: Iterable[Any] | None, prefix: str, schema: str | None
    ) -> None:
        self._img = img
        self._chosen = _choose(classes)
        self._target = Target(target, prefix=prefix, schema=schema)
        #: what the projection knows of the image: every entity, by oid and by (exact) class
        self._objs: dict[int, Any] = {}
        self._by_class: dict[type, set[int]] = {}
        #: the image table's removal count when the projection last compared its objects with the image's
        #: (-1: never; see :meth:`_gone`)
        self._removals = -1
        #: collection oid -> the projected entities whose rows spell it out, and the reverse
        self._holders: dict[int, set[int]] = {}
        self._contains: dict[int, set[int]] = {}
        self._tables: dict[type, ClassTable | None] = {}
        self._new_tables: list[ClassTable] = []
        self._old_kinds: dict[str, dict[str, str]] = {}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._seq = 0
        self._replay: Iterator[Commit] | None = None
        self._sub = img.subscribe(self._queue.put)
        try:
            img.follow()
            self._start()
        except BaseException:
            self._sub.close()
            self._target.close()
            raise
        self._thread = threading.Thread(target=self._run, name=f"memimg-project-{id(self):x}", daemon=True)
        self._thread.start()

    # -- the handle -------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The seq stored in the target: every commit up to it is in the tables."""
        return self._seq

    @property
    def tables(self) -> dict[str, str]:
        """``class name -> table name`` of the classes projected so far."""
        return {t.class_name: t.name for t in self._tables.values() if t is not None}

    @property
    def error(self) -> BaseException | None:
        """What stopped the projection, if something did (it is logged too); ``None`` while it runs."""
        return self._error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def catch_up(self, timeout: float | None = None) -> int:
        """Bring in other processes' commits (``img.refresh()``), wait until everything the image holds now is in
        the tables, and return the seq stored.

        Raises:
            MemimgError: the projection stopped on an error (its cause attached), or was closed.
            TimeoutError: *timeout* seconds went by first.
        """
        if self._thread.is_alive():
            self._img.refresh()
        done = threading.Event()
        self._queue.put(done)
        waited = 0.0
        while not done.wait(0.1):
            waited += 0.1
            if not self._thread.is_alive():
                break
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"the projection did not catch up within {timeout} s (it is at seq {self._seq})")
        self._raise_error()
        if not done.is_set():
            raise MemimgError(f"the projection to {self._target.description} is closed (at seq {self._seq})")
        return self._seq

    def close(self) -> None:
        """Stop following the image (after the batch being written), and close the connection to the target.

        Raises:
            MemimgError: the projection had stopped on an error (logged when it happened).
        """
        self._stop.set()
        self._sub.close()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._target.close()
        self._raise_error()

    def __enter__(self) -> Projection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._thread.is_alive() else ("failed" if self._error else "closed")
        return f"<memimg.Projection to {self._target.description} at seq {self._seq}, {state}>"

    def _raise_error(self) -> None:
        err = self._error
        if err is not None:
            if isinstance(err, MemimgError):
                raise MemimgError(str(err)) from err
            raise MemimgError(
                f"the projection to {self._target.description} stopped at seq {self._seq}: {err!r}; its tables hold "
                "every commit up to that seq: fix the cause and project again to resume"
            ) from err

    # -- starting: rebuild or resume ------------------------------------------------

    def _start(self, gone: str | None = None) -> None:
        """Rebuild or resume (see the module docstring); *gone*: why the stored seq cannot be resumed from."""
        img, target = self._img, self._target
        image_id = _image_id(img)
        with target.engine.connect() as conn:
            meta = target.read_meta(conn)
        since: int | None = None
        why = "the target holds no projection yet"
        if meta is not None:
            if meta.get("format") != FORMAT:
                why = f"the target's tables are of format {meta.get('format')!r}, not {FORMAT}"
            elif meta.get("image") != image_id:
                why = "the target's tables are of another image"
            elif gone is not None:
                why = gone
            else:
                since = int(meta["seq"])
                store = img.store
                head = max(store.head(), img.seq)
                if since > head:
                    why = f"the target's seq {since} is past the image's head (seq {head}): restored from a backup?"
                    since = None
                elif since < store.first_seq() - 1:
                    why = f"the commits after seq {since} were compacted away"
                    since = None
        if since is None and meta is not None:
            log.warning("projection to %s: rebuilding every table: %s", target.description, why)
        start = img.seq  # before the objects are read: the state read holds every commit up to it
        self._learn()
        stored: dict[str, Any] = orjson.loads(meta.get("tables", "{}")) if meta is not None else {}
        with target.engine.begin() as conn:
            if since is None:
                for entry in stored.values():
                    target.drop(conn, entry["table"])
                stored = {}
            kept = self._define(stored)
            for cls, table in self._tables.items():
                if table is not None:
                    self._fill(conn, cls, table, kept.get(table.class_name))
            for name, entry in stored.items():
                if name not in target.tables:
                    target.drop(conn, entry["table"])
            self._new_tables.clear()
            self._seq = start if since is None else since
            target.write_meta(
                conn,
                {"format": FORMAT, "image": image_id, "seq": str(self._seq), "tables": target.tables_entry()},
            )
        if since is not None:
            try:  # made last: it subscribes until read to the end, which only the thread does
                self._replay = img.changes(since=since, timeout=0)
            except HistoryError as err:  # compacted meanwhile
                self._reset()
                self._start(gone=f"the commits after seq {since} are gone ({err})")

    def _reset(self) -> None:
        self._objs.clear()
        self._by_class.clear()
        self._holders.clear()
        self._contains.clear()
        for table in self._tables.values():
            if table is not None:
                self._target.forget(table.class_name)
        self._tables.clear()
        self._new_tables.clear()
        self._old_kinds.clear()

    def _learn(self) -> None:
        """Know every entity of the image (its extents)."""
        img = self._img
        for info in _types.entity_infos():
            cls = info.cls
            for obj in img.all(cls):
                if type(obj) is cls:
                    self._know(obj)

    def _define(self, stored: dict[str, Any]) -> dict[str, str]:
        """Define the tables of the classes projected; returns ``class name -> how`` for the tables kept
        (``"same"`` or ``"altered"``; those not listed are new)."""
        infos = {i.name: i for i in _types.entity_infos()}
        wanted = {cls for cls in self._by_class if self._chosen_class(cls)}
        if self._chosen is not None:
            wanted |= {c for c in self._chosen if isinstance(c, type)}
        for name in stored:
            info = infos.get(name)
            if info is not None and self._chosen_class(info.cls):
                wanted.add(info.cls)
        kept: dict[str, str] = {}
        taken = {e["table"] for e in stored.values()}
        for cls in sorted(wanted, key=lambda c: _types.info_of(c).name):  # type: ignore[union-attr]
            info = _types.info_of(cls)
            assert info is not None
            entry = stored.get(info.name)
            kinds = kinds_of(info)
            if entry is None:
                name = self._target.name_for(info.name, taken)
                taken.add(name)
            else:
                name = entry["table"]
                kept[info.name] = "same" if entry["kinds"] == kinds else "altered"
                self._old_kinds[info.name] = entry["kinds"]
            self._tables[cls] = self._target.define(info.name, name, kinds)
        return kept

    def _fill(self, conn: sa.Connection, cls: type, table: ClassTable, how: str | None) -> None:
        """Make *table* hold the objects of *cls* the image holds (see :meth:`_start`)."""
        target = self._target
        objs = [self._objs[oid] for oid in self._by_class.get(cls, ())]
        rows = [row for row in map(self._row, objs, itertools.repeat(table)) if row is not None]
        if how is None:
            target.create(conn, table)
            target.upsert(conn, table, rows)
            return
        if not target.exists(conn, table.name):
            target.create(conn, table)
            target.upsert(conn, table, rows)
            return
        if how == "altered":
            target.alter(conn, table, self._old_kinds[table.class_name])
        # every row is rewritten, not only those of objects new meanwhile: what an object holds may have changed
        # with no commit saying so (an upgrader run at open, ``open(removed_types=...)``, a row edited by hand)
        target.upsert(conn, table, rows)
        target.delete(conn, table, target.oids(conn, table) - {r["oid"] for r in rows})

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            replay, self._replay = self._replay, None
            if replay is not None:
                batch: list[Commit] = []
                for commit in replay:
                    batch.append(commit)
                    if len(batch) >= BATCH:
                        self._flush(batch)
                        batch = []
                    if self._stop.is_set():
                        return
                if batch:
                    self._flush(batch)
            markers: list[threading.Event] = []
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    self._flush([])
                    continue
                commits: list[Commit] = []
                while True:
                    if isinstance(item, threading.Event):
                        markers.append(item)
                    elif item.seq > self._seq:
                        commits.append(item)
                    if len(commits) >= BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                self._flush(commits)
                for marker in markers:
                    marker.set()
                markers.clear()
        except BaseException as err:
            self._error = err
            self._sub.close()  # nothing reads the queue any more: commits must not pile up in it
            log.error("projection to %s stopped at seq %d: %s", self._target.description, self._seq, err, exc_info=err)

    def _flush(self, commits: list[Commit]) -> None:
        """Write what *commits* changed, and the rows of objects that left the image, in one SQL transaction."""
        dirty: dict[int, Any] = {}
        for commit in commits:
            for change in commit.changes:
                target = change.target
                if type(target) is Collected:
                    continue
                oid = target._mi_oid
                if oid is None:  # collected since (a snapshot detached it): the count check deletes its row
                    continue
                if isinstance(target, _COLLECTIONS):
                    for holder in self._holders.get(oid, ()):
                        dirty[holder] = self._objs[holder]
                elif oid in self._objs:
                    dirty[oid] = target
                else:
                    self._discover(target, dirty)
                # the old value too: an entity attached by one commit and detached by a later one (or the same
                # transaction) before this reads the objects is reached only through what the detaching change took
                # out, and it stays in the image (so in its table) until a snapshot collects it
                self._discover(change.new, dirty)
                self._discover(change.old, dirty)
                self._discover(change.key, dirty)
        gone = self._gone(dirty)
        rows: dict[ClassTable, list[dict[str, Any]]] = {}
        todo = list(dirty.values())
        while todo:
            obj = todo.pop()
            table = self._table_for(type(obj))
            if table is None:
                continue
            found: dict[int, Any] = {}
            row = self._row(obj, table, found)
            if row is not None:
                rows.setdefault(table, []).append(row)
            todo.extend(found.values())
        seq = commits[-1].seq if commits else self._seq
        if not rows and not gone and seq == self._seq and not self._new_tables:
            return
        self._write(rows, gone, seq)

    def _write(self, rows: dict[ClassTable, list[dict[str, Any]]], gone: dict[ClassTable, set[int]], seq: int) -> None:
        """Write a batch in one SQL transaction; retried, with backoff, for up to :data:`RETRY_FOR` seconds while
        the connection fails (the transaction rolled back, and rewriting the same rows is harmless)."""
        delay = 0.1
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                self._transaction(rows, gone, seq)
                return
            except sa.exc.DBAPIError as err:
                if self._stop.is_set() or not (isinstance(err, sa.exc.OperationalError) or err.connection_invalidated):
                    raise
                if time.monotonic() + delay > deadline:
                    raise MemimgError(
                        f"the projection to {self._target.description} stopped at seq {self._seq}: the target "
                        f"failed for {RETRY_FOR:g} s ({_first_line(err)}); its tables hold every commit up to that "
                        "seq: project again once the database answers, to resume",
                        seq=self._seq,
                    ) from err
                log.warning(
                    "projection to %s: writing up to seq %d failed (%s); trying again in %.1f s",
                    self._target.description,
                    seq,
                    _first_line(err),
                    delay,
                )
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)

    def _transaction(
        self, rows: dict[ClassTable, list[dict[str, Any]]], gone: dict[ClassTable, set[int]], seq: int
    ) -> None:
        target = self._target
        with target.engine.begin() as conn:
            if self._new_tables:
                for table in self._new_tables:
                    target.create(conn, table)
                conn.execute(
                    target.meta.update().where(target.meta.c.key == "tables").values(value=target.tables_entry())
                )
            for table, table_rows in rows.items():
                target.upsert(conn, table, table_rows)
            for table, oids in gone.items():
                target.delete(conn, table, oids)
            target.advance(conn, self._seq, seq)
        self._new_tables.clear()
        self._seq = seq

    # -- what the image holds -------------------------------------------------------------

    def _know(self, obj: Any) -> None:
        oid = obj._mi_oid
        self._objs[oid] = obj
        self._by_class.setdefault(type(obj), set()).add(oid)

    def _discover(self, value: Any, found: dict[int, Any]) -> None:
        """Know the entities new to the projection that *value* holds or leads to (into *found*)."""
        stack = [value]
        seen: set[int] = set()
        while stack:
            v = stack.pop()
            t = type(v)
            if v is None or t in _types.NATIVE_TYPES:
                continue
            if isinstance(v, _COLLECTIONS):
                oid = v._mi_oid
                if oid is None or oid in seen:
                    continue
                seen.add(oid)
                if isinstance(v, TrackedDict):  # copies made in one call, as another thread may commit meanwhile
                    for k, item in dict.copy(v).items():
                        stack.append(k)
                        stack.append(item)
                else:
                    stack.extend(list.copy(v) if isinstance(v, TrackedList) else set.copy(v))
            elif t is tuple or t is frozenset:
                stack.extend(v)
            else:
                info = _types.info_of(t)
                if info is None:
                    continue
                if info.kind == _types.ENTITY:
                    oid = getattr(v, "_mi_oid", None)
                    if oid is None or oid in self._objs:
                        continue
                    self._know(v)
                    found[oid] = v
                    stack.extend(_field_values(info, v))
                elif info.kind == _types.VALUE:
                    stack.extend(getattr(v, f, None) for f in info.fields)

    def _gone(self, missed: dict[int, Any]) -> dict[ClassTable, set[int]]:
        """Forget the objects that left the image (collected at a snapshot): their rows to delete, by table.

        Objects of the image the projection did not know yet (none should be) go into *missed*."""
        img = self._img
        by_class = self._by_class
        gone: dict[ClassTable, set[int]] = {}
        # equal counts prove nothing left only if no object left the image since the last look: a collected
        # object and one not known yet would cancel out
        removals = img._engine.table.removals
        counts_tell = removals == self._removals
        # the classes of which the projection knows no object yet are looked at too: objects of a class new to it
        # that it missed would otherwise never be counted
        classes = [*by_class, *(i.cls for i in _types.entity_infos() if i.cls not in by_class)]
        for cls in classes:
            held = len(img.all(cls))
            if cls not in by_class and not held:
                continue
            subtree = [d for d in classes if issubclass(d, cls)]
            if counts_tell and held == sum(len(by_class.get(d, ())) for d in subtree):
                continue
            for d in subtree:
                present: dict[int, Any] = {o._mi_oid: o for o in img.all(d) if type(o) is d}  # type: ignore[attr-defined]
                left = by_class.get(d, set()) - present.keys()
                for oid in left:
                    del self._objs[oid]
                    for coll in self._contains.pop(oid, ()):
                        holders = self._holders.get(coll)
                        if holders is not None:
                            holders.discard(oid)
                            if not holders:
                                del self._holders[coll]
                if left:
                    by_class[d] -= left
                    table = self._table_for(d)
                    if table is not None:
                        gone.setdefault(table, set()).update(left)
                for oid, obj in present.items():
                    if oid not in self._objs:
                        self._know(obj)
                        missed[oid] = obj
        self._removals = removals
        return gone

    # -- rows ---------------------------------------------------------------------------

    def _chosen_class(self, cls: type) -> bool:
        chosen = self._chosen
        return chosen is None or any(issubclass(cls, c) for c in chosen if isinstance(c, type))

    def _table_for(self, cls: type) -> ClassTable | None:
        try:
            return self._tables[cls]
        except KeyError:
            pass
        table = None
        if self._chosen_class(cls):
            info = _types.info_of(cls)
            assert info is not None
            name = self._target.name_for(info.name, (t.name for t in self._target.tables.values()))
            table = self._target.define(info.name, name, kinds_of(info))
            self._new_tables.append(table)
        self._tables[cls] = table
        return table

    def _row(self, obj: Any, table: ClassTable, found: dict[int, Any] | None = None) -> dict[str, Any] | None:
        """The row of entity *obj*; notes the collections it spells out (and, into *found*, entities new to the
        projection it references). ``None`` if *obj* has left the image (a snapshot collected it, maybe while
        this runs: then the row is written, and deleted by the count check of the next batch)."""
        info = _types.info_of(type(obj))
        assert info is not None
        oid = obj._mi_oid
        if oid is None:
            return None
        walk = Walk()
        row: dict[str, Any] = {"oid": oid}
        getters = info.getters
        for f, column in table.columns.items():
            try:
                value = getters[f](obj) if f in getters else getattr(obj, f)
            except AttributeError:
                value = None
            if value is None:
                row[column] = None
                continue
            try:
                row[column] = table.encoders[f](value, walk)
            except Misfit as misfit:
                raise MemimgError(
                    f"projection to {self._target.description}: {info.name} #{oid} .{f} {misfit} (the column "
                    f"{table.name}.{column} is {table.kinds[f]}, from the field's annotation); fix the value or the "
                    "annotation (a field annotated Any is written as JSON) and project again",
                    target=oid,
                    field=f,
                ) from None
        for coll in self._contains.pop(oid, ()):
            holders = self._holders.get(coll)
            if holders is not None:
                holders.discard(oid)
        for coll in walk.collections:
            self._holders.setdefault(coll, set()).add(oid)
        self._contains[oid] = walk.collections
        if found is not None:
            for entity in walk.entities:
                if entity._mi_oid not in self._objs:
                    self._discover(entity, found)
        return row


def _field_values(info: _types.TypeInfo, obj: Any) -> list[Any]:
    getters = info.getters
    values = []
    for f in info.fields:
        try:
            values.append(getters[f](obj) if f in getters else getattr(obj, f))
        except AttributeError:
            continue
    return values


def _choose(classes: Iterable[Any] | None) -> tuple[type, ...] | None:
    """The classes *classes* names (classes or stable names), checked; ``None`` for every class."""
    if classes is None:
        return None
    if isinstance(classes, str | type):
        classes = [classes]
    infos = _types.entity_infos()
    chosen: list[type] = []
    for c in classes:
        if isinstance(c, type):
            info = _types.info_of(c)
            if info is None or info.kind != _types.ENTITY:
                raise MemimgError(
                    f"project(classes=...): {c.__qualname__} is not a @persistent class; name the persistent "
                    "classes to project (or none: every class)"
                )
            chosen.append(c)
            continue
        if not isinstance(c, str):
            raise TypeError(f"project(classes=...): a class is given as a @persistent class or its name, not {c!r}")
        exact = [i for i in infos if i.name == c or c in i.aliases]
        short = [i for i in infos if i.name.rsplit(".", 1)[-1] == c]
        match = exact or short
        if len(match) != 1:
            names = ", ".join(sorted(i.name for i in infos)) or "none"
            what = "names several classes" if match else "is not a class of the image"
            raise MemimgError(
                f"project(classes=...): {c!r} {what}; give a class's stored name (the image's classes: {names})"
            )
        chosen.append(match[0].cls)
    return tuple(chosen)


def _image_id(img: Any) -> str:
    """The id of the image: the ``image_id`` entry of its store's meta table, made on first use (see
    :func:`name_image`); for a store this process may only read and that has none, its log's first event
    (which a compaction may drop: the projection is then rebuilt)."""
    found = name_image(img.store)
    if found is not None:
        return found
    first = next(iter(img.events()), None)
    log.warning(
        "projection: the image %s has no id and is read-only here: the tables are labelled with its first event, "
        "so a compaction of its log rebuilds them; open the image writable once (or run memimg project with "
        "write access once) to give it an id",
        img.store.description,
    )
    return f"log:{first.seq}:{first.ts.isoformat()}" if first is not None else "log:empty"


def name_image(store: Any, wait: float = 30.0) -> str | None:
    """The ``image_id`` entry of *store*'s meta table, made if there is none; ``None`` if it cannot be written.

    Processes naming the same image at once agree on one id: the one writing it holds the store's
    ``image_id`` lease (atomic in the database), and the others wait for it and read it back, so no process
    labels tables with an id another process overwrites.

    Raises:
        MemimgError: another process held the lease for *wait* seconds without writing the id.
    """
    found = store.meta().get("image_id")
    if found:
        return str(found)
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        try:
            taken = store.lease("image_id", holder, wait)
        except Exception:  # a store this process may only read
            return None
        if taken:
            break
        time.sleep(0.05)
        found = store.meta().get("image_id")
        if found:
            return str(found)
        if time.monotonic() > deadline:
            raise MemimgError(
                f"project(): another process has been naming the image {store.description} for {wait:g} s "
                "(its image_id lease) without finishing; project again"
            )
    try:
        found = store.meta().get("image_id")
        if found:
            return str(found)
        try:
            store.set_meta("image_id", holder)
        except Exception:
            return None
        return holder
    finally:
        try:
            store.release("image_id", holder)
        except Exception:
            log.debug("projection: releasing the image_id lease of %s failed", store.description, exc_info=True)
