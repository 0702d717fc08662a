"""Replacing an NDJSON log by another, whole, as one step that a crash cannot split.

An NDJSON log is several files (the log, ``.meta``, ``.snapshots/``), and
no rename moves them together. (Its ``.segments/``, archives of events
compaction dropped, stay where they are: a swap leaves them alone.) So the new log is
written complete beside the old one (``NAME.swap.ndjson`` and its files),
then a marker file ``NAME.ndjson.swap`` is written atomically: that is the
commit point. Moving the new files over the old ones, which follows, is
idempotent, and whoever opens the log next (:func:`finish_swap`, called
before every NDJSON open) finishes it if a crash cut it short. Before the
marker the old log is untouched; after it, the new one wins.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from memimg.stores._ndjsonformat import sync_directory, write_atomically

__all__ = ["commit_swap", "finish_swap", "swap_path"]

_COMPANIONS = ("", ".meta")
#: ``.segments/`` is not swapped: the segments ``compact --keep-segment`` keeps are archives of their own, left
#: as they are (under the keys they were written with).
_DIRECTORIES = (".snapshots",)


def swap_path(path: str) -> str:
    """Where the log replacing *path* is written before :func:`commit_swap`."""
    return path[: -len(".ndjson")] + ".swap.ndjson"


def commit_swap(path: str) -> None:
    """Make the log at :func:`swap_path` (complete and synced) the log at *path*."""
    new = swap_path(path)
    for suffix in _DIRECTORIES:
        os.makedirs(new + suffix, exist_ok=True)  # present, so that the old log's is replaced even when empty
    if not os.path.exists(new + ".meta"):
        write_atomically(new + ".meta", [b"{}"])  # likewise: the old log's meta must not survive the swap
    sync_directory(os.path.dirname(os.path.abspath(path)))
    write_atomically(path + ".swap", [new.encode()])
    finish_swap(path)


def finish_swap(path: str) -> None:
    """Finish a swap of the log at *path* that was committed (its marker written) and not finished."""
    marker = path + ".swap"
    if not os.path.exists(marker):
        return
    new = swap_path(path)
    for suffix in _DIRECTORIES:
        if os.path.isdir(new + suffix):
            old = path + suffix
            if os.path.exists(old):
                shutil.rmtree(old + ".old", ignore_errors=True)
                os.rename(old, old + ".old")
            os.rename(new + suffix, old)
    for suffix in _COMPANIONS:
        if os.path.exists(new + suffix):
            os.replace(new + suffix, path + suffix)
    sync_directory(os.path.dirname(os.path.abspath(path)))
    for suffix in _DIRECTORIES:
        shutil.rmtree(path + suffix + ".old", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(new + ".lock")
    os.unlink(marker)
