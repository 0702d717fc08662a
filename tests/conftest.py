"""Shared fixtures: images on every store, and the PostgreSQL switch.

Image-level behaviour is tested through one fixture, ``make_image``: a test
that takes it runs once per store -- ``memory``, ``sqlite``, ``ndjson``, and
``postgres`` when ``MEMIMG_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it;
in CI those runs must not skip, so an unreachable server fails them). Each
PostgreSQL test works in a schema of its own::

    def test_a_change_survives_reopening(make_image: Images) -> None:
        img = make_image(root=Box)  # this test's log, empty at first
        img.root.content = 1
        img.close()
        assert make_image(root=Box).root.content == 1  # the same log, opened again

Every call opens the same log, so calling it while an image is still open
gives a second image on that log (another process, as far as the image can
tell). ``make_image.store()`` is a raw :class:`memimg.Store` on the log, for
writing rows no image would write.

Tests about one store or one target form (a path, a URL, ``":memory:"``, an
SQLite file's bytes, a log recorded by another process) open it directly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import memimg

POSTGRES_URL = os.environ.get("MEMIMG_TEST_POSTGRES_URL")
#: MEMIMG_TEST_PROTECTION=1: every image make_image opens is encrypted, chained and compressed (keys of the tests')
PROTECTION: dict[str, Any] = (
    {"encryption_key": bytes(range(32)), "integrity_key": bytes(range(32, 64)), "compression": "zstd"}
    if os.environ.get("MEMIMG_TEST_PROTECTION")
    else {}
)
STORE_KINDS = ["memory", "sqlite", "ndjson"] + (["postgres"] if POSTGRES_URL else [])
if os.environ.get("MEMIMG_REQUIRE_POSTGRES") and not POSTGRES_URL:
    raise RuntimeError("MEMIMG_REQUIRE_POSTGRES is set but MEMIMG_TEST_POSTGRES_URL is not")


def pytest_report_header(config: Any) -> str:
    if POSTGRES_URL:
        return f"memimg stores under test: {', '.join(STORE_KINDS)} (postgres at {POSTGRES_URL.split('@')[-1]})"
    return "memimg stores under test: memory, sqlite, ndjson (set MEMIMG_TEST_POSTGRES_URL to add postgres)"


class StoreFactory:
    """Makes stores of one kind that all point at the same log (for reopening)."""

    def __init__(self, kind: str, tmp_path: Any) -> None:
        self.kind = kind
        self.path = str(tmp_path / ("image.ndjson" if kind == "ndjson" else "image.db"))
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self._memory: memimg.MemoryStore | None = None
        self._made: list[Any] = []

    def target(self, *, readonly: bool = False) -> Any:
        """What ``memimg.open`` takes to open the log: the memory store, the SQLite or NDJSON path, or a
        PostgreSQL store."""
        if self.kind == "memory":
            if self._memory is None:
                self._memory = memimg.MemoryStore()
            return self._memory
        if self.kind in ("sqlite", "ndjson"):
            return self.path
        from memimg.stores._sqlalchemy import SQLAlchemyStore

        store = SQLAlchemyStore(POSTGRES_URL, schema=self.schema, readonly=readonly)  # type: ignore[arg-type]
        self._made.append(store)
        return store

    def store(self) -> memimg.Store:
        """A store on the log as the images see it: its rows as written and read (closed after the test)."""
        store = self.raw_store()
        if PROTECTION:
            from memimg._api import store_for

            return store_for(store, **PROTECTION)
        return store

    def raw_store(self) -> memimg.Store:
        """The store on the log, its rows as stored (protected rows sealed)."""
        target = self.target()
        if isinstance(target, str):
            target = memimg.NDJSONStore(target) if self.kind == "ndjson" else memimg.SQLiteStore(target)
            self._made.append(target)
        return target  # type: ignore[no-any-return]

    def open(self, **options: Any) -> memimg.MemoryImage:
        if PROTECTION and not {"encryption_key", "integrity_key", "compression"} & set(options):
            options = {**PROTECTION, **options}
        return memimg.open(self.target(readonly=options.get("readonly", False)), **options)

    def close(self) -> None:
        """Close the stores made here (the log stays)."""
        for store in self._made:
            store.close()
        self._made = []

    def cleanup(self) -> None:
        self.close()
        if self.kind == "postgres":
            import sqlalchemy as sa

            engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            engine.dispose()


def log_meta(store: Any) -> dict[str, str]:
    """*store*'s meta without the SQLite store's checkpoint mark, which its checkpoint thread rewrites whenever it
    runs (snapshot leases and image positions are kept: what a test of "writes nothing" must see)."""
    return {k: v for k, v in store.meta().items() if not k.startswith("checkpoint.")}


class Images:
    """``make_image(root=..., **options)`` opens this test's log on its store (see the module docstring)."""

    def __init__(self, stores: StoreFactory) -> None:
        self._stores = stores
        self._opened: list[memimg.MemoryImage] = []

    def __call__(self, **options: Any) -> memimg.MemoryImage:
        img = self._stores.open(**options)
        self._opened.append(img)
        return img

    def store(self) -> memimg.Store:
        """A raw store on this test's log, for writing rows no image would write."""
        return self._stores.store()

    def close(self) -> None:
        for img in self._opened:
            img.close()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stores(store_kind: str, tmp_path: Any) -> Iterator[StoreFactory]:
    factory = StoreFactory(store_kind, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def make_image(stores: StoreFactory) -> Iterator[Images]:
    """Opens (or reopens) this test's image, once per store (see the module docstring)."""
    images = Images(stores)
    yield images
    images.close()


@pytest.fixture
def postgres(tmp_path: Any) -> Iterator[StoreFactory]:
    """PostgreSQL stores in a schema of this test's own (skipped without MEMIMG_TEST_POSTGRES_URL)."""
    if not POSTGRES_URL:
        pytest.skip("needs PostgreSQL: set MEMIMG_TEST_POSTGRES_URL (.ci/run does)")
    factory = StoreFactory("postgres", tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A page in a real headless browser (system Chromium driven by Playwright; see ``tests/browser.py``)."""
    from tests import browser

    yield from browser.page()


@pytest.fixture
def sqlite_path(tmp_path: Any) -> str:
    return str(tmp_path / "image.db")
