"""The compiled loops of the functional core (and the stores' one compiled look), when the accelerator is loaded.

The core knows nothing of the model, where the optional accelerator lives
(``memimg.model._speedups``, see :mod:`memimg.model._accel`): the model hands
its functions over here (:func:`use`) when it loads them, and the core's
loops call them if they are set, their pure-Python code otherwise. Both give
the same results: each compiled loop takes only the common case and hands
everything else back to the Python code.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["catch_sets", "encode_states", "fold_sets", "same_dir", "use"]

#: replay's loop over its commonest rows (``memimg.core._fold._fold_rows``), or None
fold_sets: Callable[..., tuple[int, Any] | int] | None = None
#: a running image's catch-up over its commonest transactions, one field set each
#: (``memimg.core._fold._fold_transactions``), or None
catch_sets: Callable[..., tuple[int, int, Any, Any, BaseException | None, bool]] | None = None
#: a snapshot's walk over a batch of objects (``memimg.core._snapshotter.SnapshotWriter.step``), or None
encode_states: Callable[..., None] | None = None
#: ``same_dir(path, ctime_ns, ino)``: whether the directory at *path* (``os.fsencode``'s bytes) still has that ctime
#: and inode number -- the SQLite store's look after each commit (``memimg.stores._sqlite``; stores sit beside the
#: model, so this is where they find it) -- or None
same_dir: Callable[[bytes, int, int], bool] | None = None


def use(speedups: ModuleType | None) -> None:
    """Call *speedups*' compiled loops from now on (None: the pure-Python code runs)."""
    global fold_sets, catch_sets, encode_states, same_dir
    fold_sets = None if speedups is None else speedups.fold_sets
    catch_sets = None if speedups is None else speedups.catch_sets
    encode_states = None if speedups is None else speedups.encode_states
    same_dir = None if speedups is None else speedups.same_dir
