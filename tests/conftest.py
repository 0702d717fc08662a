"""Shared fixtures: images on every store, and the PostgreSQL switch.

Tests that take ``store_kind`` (or ``make_image``) run once per store:
``memory``, ``sqlite``, and ``postgres`` when ``MEMIMG_TEST_POSTGRES_URL`` is
set (``.ci/run`` sets it; in CI those runs must not skip, so an unreachable
server fails them). Each PostgreSQL test works in a schema of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import memimg

POSTGRES_URL = os.environ.get("MEMIMG_TEST_POSTGRES_URL")
STORE_KINDS = ["memory", "sqlite"] + (["postgres"] if POSTGRES_URL else [])
if os.environ.get("MEMIMG_REQUIRE_POSTGRES") and not POSTGRES_URL:
    raise RuntimeError("MEMIMG_REQUIRE_POSTGRES is set but MEMIMG_TEST_POSTGRES_URL is not")


def pytest_report_header(config: Any) -> str:
    if POSTGRES_URL:
        return f"memimg stores under test: {', '.join(STORE_KINDS)} (postgres at {POSTGRES_URL.split('@')[-1]})"
    return "memimg stores under test: memory, sqlite (set MEMIMG_TEST_POSTGRES_URL to add postgres)"


class StoreFactory:
    """Makes stores of one kind that all point at the same log (for reopening)."""

    def __init__(self, kind: str, tmp_path: Any) -> None:
        self.kind = kind
        self.path = str(tmp_path / "image.db")
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self._memory: memimg.MemoryStore | None = None
        self._made: list[Any] = []

    def target(self) -> Any:
        if self.kind == "memory":
            if self._memory is None:
                self._memory = memimg.MemoryStore()
            return self._memory
        if self.kind == "sqlite":
            return self.path
        from memimg.stores._sqlalchemy import SQLAlchemyStore

        store = SQLAlchemyStore(POSTGRES_URL, schema=self.schema)  # type: ignore[arg-type]
        self._made.append(store)
        return store

    def open(self, **options: Any) -> memimg.MemoryImage:
        return memimg.open(self.target(), **options)

    def cleanup(self) -> None:
        if self.kind == "postgres":
            import sqlalchemy as sa

            engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            engine.dispose()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stores(store_kind: str, tmp_path: Any) -> Iterator[StoreFactory]:
    factory = StoreFactory(store_kind, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def make_image(stores: StoreFactory) -> Iterator[Callable[..., memimg.MemoryImage]]:
    """``make_image(root=..., **options)`` opens (or reopens) the image of this test."""
    opened: list[memimg.MemoryImage] = []

    def make(**options: Any) -> memimg.MemoryImage:
        img = stores.open(**options)
        opened.append(img)
        return img

    yield make
    for img in opened:
        img.close()


@pytest.fixture
def postgres(tmp_path: Any) -> Iterator[StoreFactory]:
    """PostgreSQL stores in a schema of this test's own (skipped without MEMIMG_TEST_POSTGRES_URL)."""
    if not POSTGRES_URL:
        pytest.skip("needs PostgreSQL: set MEMIMG_TEST_POSTGRES_URL (.ci/run does)")
    factory = StoreFactory("postgres", tmp_path)
    yield factory
    for store in factory._made:
        store.close()
    factory.cleanup()


@pytest.fixture
def sqlite_path(tmp_path: Any) -> str:
    return str(tmp_path / "image.db")
