from __future__ import annotations

from memimg.stores import MemoryStore, Store
from tests.stores.contract import StoreContract


class TestMemoryStore(StoreContract):
    def make_store(self) -> Store:
        return MemoryStore()

    def reopen(self, store: Store) -> Store:
        return store
