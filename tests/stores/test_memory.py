"""The memory store passes the store contract."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

from memimg.stores import MemoryStore, Store
from tests.stores.contract import StoreContract


class TestMemoryStore(StoreContract):
    def make_store(self) -> Store:
        return MemoryStore()

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        if not readonly:
            return store
        handle = copy.copy(store)  # shares the log's lists
        handle.readonly = True  # type: ignore[attr-defined]
        return handle

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        yield False  # lists in this process: nothing of the memory store can fail
