"""``memimg.rekey``: a log's protection changed in place -- keys rotated, a plain log protected, or the reverse."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from typing import Any

from memimg._api import plain_store, protection_for
from memimg._copy import copy
from memimg._errors import MemimgError
from memimg.stores._ndjsonswap import commit_swap, swap_path
from memimg.stores._protocol import Store, live_positions
from memimg.stores._rekeying import rekey as rekey_store

__all__ = ["rekey"]


def rekey(
    target: str | os.PathLike[str] | Store,
    *,
    old_options: Mapping[str, Any] | None = None,
    new_options: Mapping[str, Any] | None = None,
    **store_options: Any,
) -> int:
    """Re-seal every event and snapshot of the log at *target* under *new_options*; returns how many rows.

    *old_options* are the protection options the log is opened with now
    (``encryption_key``, ``integrity_key``; ``{}`` or None for a plain
    log), *new_options* those it gets (``{}`` or None: plain;
    ``compression`` too). The log must not be open elsewhere (a process
    still writing would write under the old keys): the position of a live
    image -- one that has committed, caught up or begun a transaction since
    it opened -- refuses the rekey; any other image stops at its next
    commit (the rekey's ``tx.meta`` event is sealed under the new keys).

    Crash-safe: a process killed at any point leaves the log openable with
    the old options or with the new ones, never neither. The SQL stores and
    the memory store rewrite every row in one database transaction, between
    two ``memimg_meta`` entries that say which keys the rows are under; an
    NDJSON log is written anew beside the old one and swapped in behind a
    commit marker (see ``memimg/stores/_ndjsonswap.py``). The space of the
    old rows is given back (``Store.reclaim``): a plain log's values do not
    linger in free pages of an SQLite file once it is encrypted.

    Raises:
        ProtectionError: *old_options* do not open the log (nothing changed).
        MemimgError: another image that has committed, caught up or begun a
            transaction holds the log open, or the log is empty.
    """
    old, failure = protection_for(**_options(old_options))
    if failure is None:
        new, failure = protection_for(**_options(new_options))
    del old_options, new_options  # no key in this frame's locals when a later error's traceback shows them
    if failure is not None:
        raise failure.with_traceback(None)
    if isinstance(target, Store):
        return rekey_store(target, old, new)
    path = os.fspath(target)
    if path.endswith(".ndjson") and "://" not in path:
        return _rekey_ndjson(path, old, new)
    store = plain_store(path, sync="full", readonly=False, busy_timeout=10.0, **store_options)
    try:
        n = rekey_store(store, old, new)
        store.reclaim()
        return n
    finally:
        store.close()


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unexpected = set(options) - {"encryption_key", "integrity_key", "compression"}
    if unexpected:
        raise TypeError(f"unexpected protection options: {', '.join(sorted(unexpected))}")
    return {k: options.get(k) for k in ("encryption_key", "integrity_key", "compression")}


def _rekey_ndjson(path: str, old: Any, new: Any) -> int:
    """The NDJSON log at *path* copied under *new* beside itself, then swapped in (see the module docstring).

    The log's write turn (its lock file's lock) is held from the check for
    live images to the swap: no writer appends to the old file meanwhile (its
    rows would be lost at the swap). A writer that had the log open commits
    after the swap onto the rekey's marker event (see
    :func:`memimg.stores._rekeying.rekey_marker`) and stops.
    """
    if not os.path.exists(path):
        raise MemimgError(f"{path!r} does not exist; nothing was changed")
    from memimg.core._protect import Protection
    from memimg.stores._protected import protect
    from memimg.stores._rekeying import rekey_marker

    with contextlib.ExitStack() as stack:
        src = plain_store(path, sync="full", readonly=False, busy_timeout=10.0)
        stack.callback(src.close)
        wrapped = protect(src, old)  # refuses wrong keys (before the write turn: it may record a setting)
        stack.enter_context(src._writing("rekeying the log"))  # type: ignore[attr-defined]
        live = live_positions(src.meta())
        if live:
            raise MemimgError(
                f"{path!r} is open in {len(live)} other image(s) ({', '.join(sorted(live))}); close them before a "
                "rekey (they would keep writing under the old keys); nothing was changed"
            )
        tmp = swap_path(path)
        _remove(tmp)
        with contextlib.ExitStack() as inner:
            dst = plain_store(tmp, sync="full", readonly=False, busy_timeout=10.0)
            inner.callback(dst.close)
            target = protect(dst, new)
            copied = copy(wrapped, target)
            count = copied + len(src.snapshots())
            head = dst.head()
            if head >= 1:
                after_ts = max([row.ts for row in target.read(head - 1, 1)] + [0])
                target.append([rekey_marker(head, new or Protection(), after_ts)], head)
        commit_swap(path)
    return count


def _remove(path: str) -> None:
    """Remove what an earlier, unfinished rekey left at *path* (never committed: the marker is not there)."""
    for suffix in ("", ".meta", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    for suffix in (".snapshots", ".segments"):
        shutil.rmtree(path + suffix, ignore_errors=True)
