"""A protected log (encrypted, chained, compressed) passes the store contract, over SQLite and NDJSON."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from memimg.core._protect import Protection
from memimg.stores import NDJSONStore, SQLiteStore, Store
from memimg.stores._protected import ProtectedStore, protect
from tests.protection import INTEGRITY_KEY, KEY
from tests.stores.contract import StoreContract, snap


def _protection() -> Protection:
    return Protection(encryption_key=KEY, integrity_key=INTEGRITY_KEY, compression="zstd")


class _Sealed(StoreContract):
    def test_snapshots(self, store: Store) -> None:
        """Snapshots are listed newest first -- with the size they take in the store, sealed -- and read back
        whole."""
        store.write_snapshot(snap(3, b'{"a":1}'))
        store.write_snapshot(snap(7, b'{"b":2}' * 100))
        sizes = [(i.seq, i.size) for i in store.snapshots()]
        assert [seq for seq, _ in sizes] == [7, 3]
        assert sizes[0][1] < 700  # compressed
        assert sizes[1][1] == len(store.inner.read_snapshot(3).payload)  # type: ignore[attr-defined]
        assert store.read_snapshot(3) == snap(3, b'{"a":1}')


class TestProtectedSQLite(_Sealed):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.path = str(tmp_path / "log.db")

    def make_store(self) -> Store:
        return protect(SQLiteStore(self.path), _protection())

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        return protect(SQLiteStore(self.path, readonly=readonly), _protection())

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        assert isinstance(store, ProtectedStore)
        inner = store.inner
        conn = inner._conn  # type: ignore[attr-defined]
        dead = sqlite3.connect(":memory:")
        dead.close()
        inner._conn = dead  # type: ignore[attr-defined]
        try:
            yield True
        finally:
            inner._conn = conn  # type: ignore[attr-defined]


class TestProtectedNDJSON(_Sealed):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.path = str(tmp_path / "log.ndjson")

    def make_store(self) -> Store:
        return protect(NDJSONStore(self.path), _protection())

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        return protect(NDJSONStore(self.path, readonly=readonly), _protection())

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        assert isinstance(store, ProtectedStore)
        inner = store.inner
        path = inner.path  # type: ignore[attr-defined]
        inner.path = "/dev/null/broken.ndjson"  # type: ignore[attr-defined]
        try:
            yield True
        finally:
            inner.path = path  # type: ignore[attr-defined]
