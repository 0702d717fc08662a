"""The NDJSON store: the contract, and what only an NDJSON file has (its lines, torn tails, the lock file)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from memimg.stores import NDJSONStore, Store
from tests.stores.contract import StoreContract


class TestNDJSONStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.path = str(tmp_path / "log.ndjson")

    def make_store(self) -> Store:
        return NDJSONStore(self.path)

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        return NDJSONStore(self.path, readonly=readonly)

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        # every file of the log is named from its path: under a regular file, each access fails (ENOTDIR)
        assert isinstance(store, NDJSONStore)
        path = store.path
        store.path = "/dev/null/broken.ndjson"
        try:
            yield True
        finally:
            store.path = path
