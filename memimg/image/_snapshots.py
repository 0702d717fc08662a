"""Writing snapshots without stalling commits: one seq, slices, a background thread, a lease.

A snapshot is the state after one definite event: the ``snapshot`` event
this module commits first (*S*). The reachable graph at *S* is then
written a slice at a time (:class:`~memimg.core._snapshotter.SnapshotWriter`),
the image's lock held for each slice only -- a few milliseconds -- so
commits from other threads go on in between; every event applied
meanwhile, this process's or another's, is announced to the writer first,
which keeps the state at *S* of what it changes (copy-on-update). Other
processes' commits are never chased: the snapshot stays the state at *S*.
When the walk is done, a ``gc.drop`` event forgets the objects unreachable
at *S* (and not linked again since), and the snapshot row is stored.

Automatic snapshots (``snapshot_every``) run in a background thread of the
image, never in the committing call. Across all the processes sharing a log
at most one writes a snapshot at a time: it holds the store's ``snapshot``
lease (renewed while it writes; it expires if its holder dies), and the
others skip theirs. After storing a snapshot, its writer fills the store's
target index up to it (:meth:`memimg.Store.index_targets`: the index
history reads by, which commits do not write).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Final, Protocol

from memimg._errors import LockedError, MemimgError
from memimg.core._gc import collect_young, paused_gc
from memimg.core._kinds import KINDS
from memimg.core._rows import SnapshotRow, snapshot_checksum
from memimg.core._snapshotter import SnapshotWriter
from memimg.image import _feeds, _recovery

__all__ = ["LEASE", "Snapshots"]

log = logging.getLogger("memimg")

_SNAPSHOT = KINDS["snapshot"]
_GC_DROP = KINDS["gc.drop"]
#: How long a slice of the walk holds the lock, at most (seconds; give or take one batch of objects). A commit
#: of this process that comes during a slice waits for its end, and often for the next one too (the walk may take
#: the lock again before the waiting thread wakes): 4 PostgreSQL writers with automatic snapshots had a p99 commit
#: latency of 3.5-6.2 ms with 5 ms slices, 3.0-5.0 ms with 2 ms (``python -m benchmarks --only snapshots``, two
#: runs each); commits from another thread during a snapshot of 300k objects, p99: 0.6-9.4 ms with 2 ms slices,
#: 0.13-3.1 ms with 0.5 ms (and twice as many commits made meanwhile; busy machine, 8 snapshots each). A slice end
#: costs a few µs: ~0.5% of a snapshot alone at 0.5 ms.
SLICE_SECONDS: Final = 0.0005
#: The store lease that one snapshot writer at a time holds, and for how long it is taken.
LEASE: Final = "snapshot"
LEASE_SECONDS: Final = 30.0
#: How long a snapshot asked for by a call (not an automatic one) waits for another process's to finish.
WAIT_SECONDS: Final = 2 * LEASE_SECONDS
#: How long automatic snapshots rest after finding another process's lease.
RETRY_SECONDS: Final = 0.1


class Host(_recovery.Host, Protocol):
    """What snapshots need of an image's engine: upkeep's needs, where the running writer goes, and the closed flag."""

    snapshot_writer: SnapshotWriter | None
    snapshot_turn: threading.Event | None
    closed: bool
    writer: Any  # its AutoWriter: the change feed, if any, is there (see _feeds)

    def snapshot_due(self) -> bool: ...


class Snapshots:
    """The snapshots of one image (see the module docstring)."""

    def __init__(self, engine: Host) -> None:
        self.engine = engine
        #: who this image is, as a lease holder
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: held while this process writes a snapshot (and while it erases: see _erase)
        self.lock = self._one = threading.Lock()
        self._thread: threading.Thread | None = None
        #: set once the background snapshot is written (its thread then delivers what it caught up with)
        self._written = threading.Event()
        self._written.set()
        #: an automatic snapshot found the lease held: not tried again before then (monotonic)
        self._quiet_until = 0.0
        #: when this image last took or renewed the lease (monotonic)
        self._renewed = 0.0

    def take(self, *, wait: float = WAIT_SECONDS, automatic: bool = False) -> int | None:
        """Write a snapshot now, in this thread; the seq it covers.

        Waits up to *wait* seconds for another process's snapshot to finish
        (``None`` if it is still writing then, with *wait* 0). An *automatic*
        one is written only if it is still due once the lease is held (the
        snapshot another process just wrote may have made it needless).

        Raises:
            LockedError: another process held the lease past *wait* seconds.
        """
        self.engine.check_writable()
        try:
            with self._one:
                if not self._lease(wait):
                    if not wait:
                        self._quiet_until = time.monotonic() + RETRY_SECONDS
                        return None
                    raise self._locked(wait, "try again later")
                try:
                    seq = self._write(automatic)
                    if seq is not None:
                        self._index_targets(seq)
                    return seq
                finally:
                    self._release()
        finally:
            if threading.current_thread() is self._thread:
                self._written.set()
            # other processes' commits the snapshot caught up with, delivered once it is done and the lease
            # given back: a subscriber's callback may take a snapshot or erase (never inside this one's turn)
            feed = self.engine.writer.feed
            if feed is not None:
                feed.drain()

    @contextlib.contextmanager
    def held(self, doing: str) -> Iterator[None]:
        """The snapshot lease held, by this image, while the block runs (*doing*: for the error).

        No snapshot is written meanwhile, by this process or another, and an
        ``erase`` waits: what the block writes from a state it read (a
        snapshot, an erase's rewrite) cannot be overtaken by another writer
        of the same rows. Waits up to :data:`WAIT_SECONDS` for another holder.
        The lease is renewed every third of :data:`LEASE_SECONDS` while the
        block runs, however long it takes (a thread of its own; the lease
        still expires if this process dies).

        Raises:
            LockedError: another process held the lease past :data:`WAIT_SECONDS`.
        """
        with self._one:
            if not self._lease(WAIT_SECONDS):
                raise self._locked(WAIT_SECONDS, f"{doing} again later; nothing was changed")
            done = threading.Event()
            renewer = threading.Thread(target=self._renew, args=(done,), name=f"memimg-lease-{doing}", daemon=True)
            renewer.start()
            try:
                yield
            finally:
                done.set()
                renewer.join()
                self._release()

    def _renew(self, done: threading.Event) -> None:
        """Renew the lease every third of its time until *done* (a renewal that fails is tried again)."""
        store = self.engine.store
        while not done.wait(LEASE_SECONDS / 3):
            try:
                store.lease(LEASE, self.holder, LEASE_SECONDS)
            except Exception as err:
                log.warning("renewing the snapshot lease of %s: %s", store.description, err)

    def _locked(self, waited: float, advice: str) -> LockedError:
        """The error for a lease another process held past *waited* seconds."""
        where = self.engine.store.description
        return LockedError(
            f"another process has been writing a snapshot of {where} for over {waited:g} s (it holds the "
            f"snapshot lease); {advice}",
            store=where,
            operation="taking the snapshot lease",
        )

    def _release(self) -> None:
        """Give the lease back (if that fails, it expires by itself)."""
        try:
            self.engine.store.release(LEASE, self.holder)
        except Exception as err:
            log.warning("releasing the snapshot lease of %s: %s", self.engine.store.description, err)

    def _index_targets(self, seq: int) -> None:
        """Fill the store's target index up to *seq* (what history reads by; see Store.index_targets)."""
        store = self.engine.store
        try:
            store.index_targets(seq)
        except Exception as err:  # history scans what is left: nothing to report to the snapshot's caller
            log.warning("indexing the targets of %s up to seq %d: %s", store.description, seq, err)

    def schedule(self) -> None:
        """Write a snapshot in the background, unless one is being written (by this process or another)."""
        if (self._thread is not None and self._thread.is_alive()) or time.monotonic() < self._quiet_until:
            return
        self._written = threading.Event()
        self._thread = threading.Thread(target=self._automatic, name=f"memimg-snapshot-{id(self):x}", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self._written.set()
            raise

    def join_write(self) -> None:
        """Wait until the background snapshot, if one is being written, is written (not for the callbacks its
        thread then calls)."""
        if self._thread is not threading.current_thread():
            self._written.wait()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the background snapshot's thread, if one runs (a closed image's stops at its next slice),
        up to *timeout* seconds; whether it is done."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _automatic(self) -> None:
        _feeds.contain_callbacks()  # a callback's KeyboardInterrupt here (delivering, see take) is logged
        try:
            self.take(wait=0, automatic=True)
        except Exception as err:  # the commits that made it due are durable: nothing to report to them
            if not self.engine.closed:
                log.warning("automatic snapshot of %s failed: %s", self.engine.store.description, err)

    def _lease(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while not self.engine.store.lease(LEASE, self.holder, LEASE_SECONDS):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        self._renewed = time.monotonic()
        return True

    def _keep_lease(self, seq: int | None) -> None:
        """Renew the lease if a third of its time went by since it was last taken or renewed (every step of a
        snapshot calls this: the walk's slices, and each race its ``snapshot`` or ``gc.drop`` commit lost).

        *seq*: the snapshot's, once its first commit is made (None before).

        Raises:
            MemimgError: the lease expired meanwhile and another process took it.
        """
        if time.monotonic() - self._renewed <= LEASE_SECONDS / 3:
            return
        store = self.engine.store
        if not store.lease(LEASE, self.holder, LEASE_SECONDS):
            which = "a snapshot (before its first commit)" if seq is None else f"the snapshot at seq {seq}"
            raise MemimgError(
                f"{which} of {store.description} lost its lease (it took over "
                f"{LEASE_SECONDS:g} s between two renewals) and was abandoned",
                seq=seq,
                store=store.description,
            )
        self._renewed = time.monotonic()

    def _write(self, automatic: bool) -> int | None:
        """Begin (the ``snapshot`` event), write in slices, finish (``gc.drop``), store the row."""
        engine = self.engine
        started = time.perf_counter()
        previous = engine.snapshot_seq
        writer = self._begin(automatic)
        if writer is None:
            return None
        # the collector stays paused from the first slice to the last (not only inside each): resumed
        # between slices, it traversed the whole graph again and again (measured: a third of a 100,000-item
        # snapshot); the states the walk makes are long-lived until stored. Other threads' cyclic garbage
        # is collected between slices (young generations only: collect_young) once it piles up
        pause = paused_gc()
        try:
            pause.__enter__()  # inside the try: interrupted here, the writer is still removed
            while True:
                with self._turn():
                    engine.check_writable()  # closed meanwhile: give up
                    self._check(writer)
                    # the objects events since named are walked in slices too, not all when finishing
                    done = writer.step(time.perf_counter() + SLICE_SECONDS) and not writer.keep_named()
                if engine.progress is not None:
                    engine.progress("snapshot", writer.done, max(writer.done, len(writer.queue)))
                if done:
                    break
                self._keep_lease(writer.seq)
                collect_young()
                _let_others_in()
            payload = self._finish(writer)
        except BaseException:
            with engine.lock:
                if engine.snapshot_seq == writer.seq:
                    engine.snapshot_seq = previous  # nothing stored: the next automatic one is not put off
            raise
        finally:
            pause.__exit__()
            with engine.lock:
                engine.snapshot_writer = None
        ts = time.time_ns() // 1000
        seq = writer.seq
        row = SnapshotRow(seq, ts, payload, snapshot_checksum(seq, ts, payload))
        if not engine.store.write_snapshot(row, self.holder):
            with engine.lock:
                if engine.snapshot_seq == seq:
                    engine.snapshot_seq = previous
            raise MemimgError(
                f"the snapshot at seq {seq} of {engine.store.description} was not stored: this image no longer "
                f"held the snapshot lease when it was done (over {LEASE_SECONDS:g} s since it was renewed, and "
                "another process -- an erase, say -- took it meanwhile); take another with snapshot()",
                seq=seq,
                store=engine.store.description,
            )
        log.info("snapshot at seq %d: %d bytes in %.3fs", seq, len(payload), time.perf_counter() - started)
        return seq

    def _begin(self, automatic: bool) -> SnapshotWriter | None:
        """Commit the ``snapshot`` event and install the writer of the state after it (None: no longer due).

        As in :meth:`_finish`, the image's lock is held for one attempt at a time.
        """
        engine = self.engine
        while True:
            with self._turn():
                engine.check_writable()
                engine.refuse_if_busy()
                _recovery.attach_fills(engine)  # a snapshot holds no object without an id
                if engine.reader.has_gone:
                    _recovery.strip_removed(engine)  # placeholders a refresh met: a snapshot holds no dangling ids
                if automatic and not engine.snapshot_due():
                    return None  # another process's snapshot, caught up with, made it needless
                if engine.commit([(_SNAPSHOT, None, ())], replan=True, auto_snapshot=False):
                    engine.snapshot_seq = engine.seq
                    writer = engine.snapshot_writer = SnapshotWriter(engine.table, engine.seq)
                    return writer
            # another writer came first (caught up with now): the snapshot is of the state after their events
            self._keep_lease(None)  # however many races it loses to a process committing back to back
            _let_others_in()

    def _finish(self, writer: SnapshotWriter) -> bytes:
        """Finish the walk and commit the ``gc.drop`` of the objects the snapshot leaves out; the payload.

        The image's lock is held for one attempt at a time: when another
        process's commit came first, the lock is let go before the walk is
        finished again (over those events) and the ``gc.drop`` retried, so
        that this process's commits go on meanwhile; and the payload is
        joined after the lock is let go, once no commit is told to the
        writer any more. (Held across every attempt, with other processes
        committing, it once stalled a commit for a second on PostgreSQL:
        ``python -m benchmarks --only snapshots``.)
        """
        engine = self.engine
        while True:
            with self._turn():
                engine.check_writable()
                self._check(writer)
                forget = writer.complete()
                self._check(writer)
                if not forget or engine.commit([(_GC_DROP, None, (forget,))], replan=True, auto_snapshot=False):
                    engine.snapshot_writer = None  # the state at its seq is all written: nothing to keep any more
                    self._check(writer)  # abandoned by an event applied with the gc.drop
                    header = writer.header()
                    break
            # another writer came first: its events may have linked an object of *forget* again
            self._keep_lease(writer.seq)
            _let_others_in()
        payload, count = writer.payload(header)
        if engine.progress is not None:
            engine.progress("snapshot", count, count)
        return payload

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """The image's lock, taken before the next commit takes it (see Engine.give_turn); the collector paused."""
        engine = self.engine
        turn = engine.snapshot_turn = threading.Event()
        try:
            with engine.lock:
                engine.snapshot_turn = None
                turn.set()
                with paused_gc():
                    yield
        finally:
            if engine.snapshot_turn is turn:
                engine.snapshot_turn = None
            turn.set()

    def _check(self, writer: SnapshotWriter) -> None:
        """Raise if *writer* was abandoned (an event it could not keep the state of)."""
        if writer.abandoned is not None:
            raise MemimgError(
                f"the snapshot at seq {writer.seq} of {self.engine.store.description} was abandoned: "
                f"{writer.abandoned}; nothing was stored; take another with snapshot()",
                seq=writer.seq,
                store=self.engine.store.description,
            ) from writer.abandoned


def _let_others_in() -> None:
    """Between two holds of the image's lock: let a commit of another thread waiting for it take it.

    Only the interpreter is handed over (``sleep(0)``), never a measurable
    pause: a pause after a lost race (it was 1 ms) let a process committing
    back to back win every race for many seconds -- a snapshot began
    22 s late, past its lease, while another process committed.
    """
    if threading.active_count() > 1 and _others_may_wait():
        _sleep(0)  # (a wait of Linux's timer slack, ~60 µs: not for nothing on every slice)


#: time.sleep, as :func:`_let_others_in` calls it
_sleep = time.sleep


def _others_may_wait() -> bool:
    """Whether a thread besides this one may be waiting for an image's lock: not memimg's checkpoint threads
    (marked ``never_waits_for_an_image``), which never take one."""
    me = threading.current_thread()
    return any(t is not me and not getattr(t, "never_waits_for_an_image", False) for t in threading.enumerate())
