"""The Django integration: settings, the request transaction and its retries, the project database, the command.

Django is configured once per process (``settings.configure``) from the
example project's settings, with its database in a temporary directory and
this module as the URLconf (the example's URLs plus a few test views). Each
test points ``settings.MEMIMG`` at an image of its own with
``override_settings``, which reopens the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import CommandError  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import AsyncClient, Client, RequestFactory  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402

import memimg  # noqa: E402
from examples.django_bank.bank.domain import Account, Bank  # noqa: E402
from memimg.contrib.django import _runtime, image, inspector, non_transactional, reopen, root  # noqa: E402
from memimg.contrib.django._config import url_for_database  # noqa: E402
from memimg.contrib.django.management.commands.memimg import with_default_target  # noqa: E402
from memimg.stores._protocol import poll  # noqa: E402
from memimg.stores._sqlite import SQLiteStore  # noqa: E402
from tests.conftest import POSTGRES_URL  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ROOT = "examples.django_bank.bank.domain.Bank"


# -- test views (served beside the example's URLs) -----------------------------------


class Race:
    """Makes two requests read before either writes: both wait here on their first attempt."""

    barrier: threading.Barrier | None = None


def race(request: HttpRequest) -> HttpResponse:
    account = root().accounts["ada"]
    balance = account.balance
    if Race.barrier is not None and request.memimg_attempt == 0:
        Race.barrier.wait(timeout=10)
    account.balance = balance + 1
    return JsonResponse({"attempt": request.memimg_attempt})


def stale_read(request: HttpRequest) -> HttpResponse:
    """Reads ada, then (first attempt only) lets another commit change ada and bob, then reads bob."""
    bank = root()
    seen = bank.accounts["ada"].balance
    if request.memimg_attempt == 0:
        img = image()

        def commit_elsewhere() -> None:
            with img.transaction():
                bank.accounts["ada"].balance += 100
                bank.accounts["bob"].balance -= 100

        t = threading.Thread(target=commit_elsewhere)
        t.start()
        t.join()
    total = seen + bank.accounts["bob"].balance  # a stale read on the first attempt: ConflictError
    bank.accounts["ada"].entries.clear()
    return JsonResponse({"total": str(total), "attempt": request.memimg_attempt})


def boom(request: HttpRequest) -> HttpResponse:
    root().accounts["ada"].balance = Decimal(999)
    raise RuntimeError("boom")


def unavailable(request: HttpRequest) -> HttpResponse:
    root().accounts["ada"].balance = Decimal(999)
    return JsonResponse({"error": "try later"}, status=503)


@non_transactional
def outside(request: HttpRequest) -> HttpResponse:
    root().accounts["ada"].balance = Decimal(7)
    return JsonResponse({"error": "refused, but the change was already committed"}, status=400)


async def async_bump(request: HttpRequest) -> HttpResponse:
    account = root().accounts["ada"]
    account.balance += 1
    if request.GET.get("fail"):
        raise RuntimeError("async boom")
    return JsonResponse({"balance": str(account.balance)})


class FakeUserMiddleware:
    """Sets ``request.user`` from the ``X-Test-User`` header (an authenticated user with that pk), else anonymous."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        pk = request.headers.get("X-Test-User")
        request.user = FakeUser(int(pk) if pk else None)  # type: ignore[attr-defined]
        return self.get_response(request)


@dataclasses.dataclass
class FakeUser:
    pk: int | None

    @property
    def is_authenticated(self) -> bool:
        return self.pk is not None


urlpatterns = [
    path("test/async-bump/", async_bump),
    path("test/race/", race),
    path("test/stale-read/", stale_read),
    path("test/boom/", boom),
    path("test/unavailable/", unavailable),
    path("test/outside/", outside),
    path(
        "admin/image/",
        include(inspector.urls(permission=lambda request: getattr(request.user, "pk", None) == 1)),
    ),
    path("", include("examples.django_bank.urls")),
]


# -- fixtures ----------------------------------------------------------------------------


def _postgres_database() -> dict[str, Any]:
    import sqlalchemy as sa

    url = sa.make_url(POSTGRES_URL)  # type: ignore[arg-type]
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.database,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
    }


@pytest.fixture(scope="module", autouse=True)
def project_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Django, set up once per process from the example's settings; yields the project's SQLite file."""
    if not settings.configured:
        from examples.django_bank import settings as example

        values = {name: getattr(example, name) for name in dir(example) if name.isupper()}
        databases: dict[str, Any] = {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(tmp_path_factory.mktemp("django") / "project.sqlite3"),
            }
        }
        if POSTGRES_URL:
            databases["pg"] = _postgres_database()
        values.update(
            DEBUG=False,
            DATABASES=databases,
            ROOT_URLCONF=__name__,
            MEMIMG={"TARGET": ":memory:", "ROOT": ROOT},
        )
        settings.configure(**values)
        django.setup()
    yield Path(settings.DATABASES["default"]["NAME"])
    _runtime.close()


@pytest.fixture
def configure(tmp_path: Path) -> Iterator[Callable[..., memimg.MemoryImage]]:
    """``configure(**keys)`` sets settings.MEMIMG (an image file of this test, ROOT Bank, plus *keys*)."""
    with contextlib.ExitStack() as stack:

        def apply(**keys: Any) -> memimg.MemoryImage:
            value = {"TARGET": str(tmp_path / "image.db"), "ROOT": ROOT, **keys}
            stack.enter_context(override_settings(MEMIMG=value))
            return image()

        yield apply


@pytest.fixture
def bank(configure: Callable[..., memimg.MemoryImage]) -> memimg.MemoryImage:
    """An image with accounts ada (10) and bob (0), opened through the settings."""
    img = configure()
    img.root.accounts["ada"] = Account("ada", balance=Decimal(10))
    img.root.accounts["bob"] = Account("bob")
    return img


def post(client: Client, url: str, **data: Any) -> Any:
    return client.post(url, data, content_type="application/json")


# -- commit and discard ------------------------------------------------------------------


def test_success_commits(bank: memimg.MemoryImage, tmp_path: Path) -> None:
    """A 2xx response commits the view's changes as one transaction, durable in the log."""
    seq = bank.seq
    response = post(Client(), "/accounts/ada/deposit/", amount="5.50")
    assert response.status_code == 200 and response.json()["balance"] == "15.50"
    events = list(bank.events(since=seq))
    assert bank.seq > seq and len({e.tx for e in events}) == 1
    with memimg.open(str(tmp_path / "image.db")) as again:
        assert again.root.accounts["ada"].balance == Decimal("15.50")


def test_4xx_response_discards(bank: memimg.MemoryImage) -> None:
    """A 4xx response discards what the view changed before refusing: the half-done transfer leaves no trace."""
    seq = bank.seq
    response = post(Client(), "/transfers/", **{"from": "bob", "to": "ada", "amount": "5"})
    assert response.status_code == 400 and "less than" in response.json()["error"]
    assert bank.seq == seq
    assert bank.root.accounts["ada"].balance == Decimal(10) and len(bank.root.accounts["ada"].entries) == 0


def test_5xx_response_discards(bank: memimg.MemoryImage) -> None:
    """A 5xx response returned by the view discards its changes."""
    seq = bank.seq
    assert Client().get("/test/unavailable/").status_code == 503
    assert bank.seq == seq and bank.root.accounts["ada"].balance == Decimal(10)


def test_exception_discards(bank: memimg.MemoryImage) -> None:
    """An exception in the view discards its changes: 500, nothing logged (and the test client re-raises it)."""
    seq = bank.seq
    assert Client(raise_request_exception=False).get("/test/boom/").status_code == 500
    with pytest.raises(RuntimeError, match="boom"):
        Client().get("/test/boom/")
    assert bank.seq == seq and bank.root.accounts["ada"].balance == Decimal(10)


def test_discard_status_is_configurable(configure: Callable[..., memimg.MemoryImage]) -> None:
    """DISCARD_STATUS=500 commits 4xx responses and still discards 5xx; None discards only on exceptions."""
    img = configure(DISCARD_STATUS=500)
    img.root.accounts["ada"] = Account("ada")
    img.root.accounts["bob"] = Account("bob")
    assert post(Client(), "/transfers/", **{"from": "bob", "to": "ada", "amount": "1"}).status_code == 400
    assert img.root.accounts["ada"].balance == 1  # the deposit half of the refused transfer was committed
    assert Client().get("/test/unavailable/").status_code == 503
    assert img.root.accounts["ada"].balance == 1
    img = configure(DISCARD_STATUS=None)
    assert Client().get("/test/unavailable/").status_code == 503
    assert img.root.accounts["ada"].balance == Decimal(999)


def test_non_transactional_view_commits_each_change(bank: memimg.MemoryImage) -> None:
    """A view marked @non_transactional runs outside the request transaction: its changes stay even on 400."""
    assert Client().get("/test/outside/").status_code == 400
    assert bank.root.accounts["ada"].balance == Decimal(7)


def test_reads_and_404_run_without_logging(bank: memimg.MemoryImage) -> None:
    """GETs and unknown URLs log nothing; the JSON reflects the committed state."""
    seq = bank.seq
    client = Client()
    assert client.get("/accounts/").json()["accounts"][0] == {"owner": "ada", "balance": "10", "entries": []}
    assert client.get("/accounts/nobody/").status_code == 404
    assert client.get("/no/such/url/").status_code == 404
    assert bank.seq == seq


def test_async_stack(bank: memimg.MemoryImage) -> None:
    """Under ASGI (AsyncClient) the middleware runs async: success commits, an exception discards."""

    async def run() -> tuple[int, int]:
        client = AsyncClient(raise_request_exception=False)
        ok = await client.post("/accounts/ada/deposit/", {"amount": "1"}, content_type="application/json")
        failed = await client.get("/test/boom/")
        return ok.status_code, failed.status_code

    assert asyncio.run(run()) == (200, 500)
    assert bank.root.accounts["ada"].balance == Decimal(11)


def test_async_views(bank: memimg.MemoryImage) -> None:
    """An async view runs in the request transaction too, under ASGI and under WSGI."""

    async def run() -> tuple[int, int]:
        client = AsyncClient(raise_request_exception=False)
        ok = await client.get("/test/async-bump/")
        failed = await client.get("/test/async-bump/", {"fail": "1"})
        return ok.status_code, failed.status_code

    assert asyncio.run(run()) == (200, 500)
    assert bank.root.accounts["ada"].balance == Decimal(11)
    client = Client(raise_request_exception=False)
    assert client.get("/test/async-bump/").json() == {"balance": "12"}
    assert client.get("/test/async-bump/", {"fail": "1"}).status_code == 500
    assert bank.root.accounts["ada"].balance == Decimal(12)


# -- conflicts and retries ---------------------------------------------------------------


def _race(n: int = 2) -> list[Any]:
    """Sends *n* concurrent requests to the race view; returns the responses."""
    Race.barrier = threading.Barrier(n)
    responses: list[Any] = [None] * n

    def send(i: int) -> None:
        responses[i] = Client().post("/test/race/")

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        Race.barrier = None
    return responses


def test_conflicting_requests_are_retried(configure: Callable[..., memimg.MemoryImage]) -> None:
    """Two concurrent read-modify-write requests both succeed: the loser's view runs again; the count is exactly 2."""
    img = configure(RETRIES=3)
    img.root.accounts["ada"] = Account("ada")
    responses = _race()
    assert [r.status_code for r in responses] == [200, 200]
    assert sorted(r.json()["attempt"] for r in responses) == [0, 1]
    assert img.root.accounts["ada"].balance == 2


def test_conflict_without_retries_is_409(configure: Callable[..., memimg.MemoryImage]) -> None:
    """With RETRIES=0 the request that commits second gets 409 with a JSON body, and nothing of it is applied."""
    img = configure(RETRIES=0)
    img.root.accounts["ada"] = Account("ada")
    responses = _race()
    assert sorted(r.status_code for r in responses) == [200, 409]
    conflict = next(r for r in responses if r.status_code == 409)
    assert conflict["Content-Type"] == "application/json"
    body = conflict.json()
    assert body["error"] == "conflict" and body["attempts"] == 1 and "balance" in body["message"]
    assert img.root.accounts["ada"].balance == 1


def test_conflict_raised_inside_the_view_is_retried(bank: memimg.MemoryImage) -> None:
    """A stale read raises ConflictError inside the view; the view runs again and sees one consistent state."""
    response = Client().get("/test/stale-read/")
    assert response.status_code == 200
    assert response.json() == {"total": "10", "attempt": 1}
    assert bank.root.accounts["ada"].balance == Decimal(110)


def test_conflict_inside_the_view_without_retries_is_409(configure: Callable[..., memimg.MemoryImage]) -> None:
    """With RETRIES=0 a stale read inside the view answers 409 (not 500)."""
    img = configure(RETRIES=0)
    img.root.accounts["ada"] = Account("ada")
    img.root.accounts["bob"] = Account("bob")
    response = Client().get("/test/stale-read/")
    assert response.status_code == 409 and response.json()["error"] == "conflict"


# -- the project's own database --------------------------------------------------------


def test_image_in_the_project_database(configure: Callable[..., memimg.MemoryImage], project_db: Path) -> None:
    """TARGET 'default' keeps memimg's tables in Django's SQLite file, beside Django's own tables."""
    call_command("migrate", verbosity=0)
    img = configure(TARGET="default")
    assert img.store.description == str(project_db)
    client = Client()
    assert post(client, "/accounts/", owner="ada").status_code == 201
    assert post(client, "/accounts/ada/deposit/", amount="3").status_code == 200
    with contextlib.closing(sqlite3.connect(project_db)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"memimg_events", "memimg_snapshots", "memimg_meta"} <= tables
        assert {"django_migrations", "django_content_type"} <= tables
        assert db.execute("SELECT count(*) FROM memimg_events").fetchone()[0] == img.seq
    assert reopen().root.accounts["ada"].balance == Decimal(3)


def test_project_sqlite_database_uses_memimgs_sqlite_store(
    configure: Callable[..., memimg.MemoryImage], project_db: Path
) -> None:
    """TARGET 'default' on SQLite opens the file with memimg's SQLite store (WAL), as a path TARGET would.

    Django's own connection to the file then runs in WAL mode too, and its
    reads and writes go on beside memimg's commits.
    """
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection

    call_command("migrate", verbosity=0)
    img = configure(TARGET="default")
    assert isinstance(img.store, SQLiteStore) and img.store.path == str(project_db)
    assert _runtime.current_settings().description == f"DATABASES['default'] ({project_db})"
    connection.close()  # Django's next connection opens the file as it is now
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
    img.root.accounts["wal"] = Account("wal")
    ContentType.objects.get_or_create(app_label="memimg_test", model="wal")
    assert post(Client(), "/accounts/wal/deposit/", amount="4").status_code == 200
    assert ContentType.objects.filter(app_label="memimg_test").count() == 1
    with memimg.open(str(project_db)) as again:
        assert again.root.accounts["wal"].balance == Decimal(4)


def test_django_leaves_checkpoints_of_the_shared_file_to_memimg(
    configure: Callable[..., memimg.MemoryImage], project_db: Path, tmp_path: Path
) -> None:
    """With TARGET 'default' on SQLite, Django's connections to the file -- the one open when the image opened,
    and each new one -- run with SQLite's automatic checkpoints off (they would checkpoint outside memimg's
    guard against SQLite's WAL-reset bug), and memimg's checkpoint thread copies what they commit into the
    database file; once the image is in a file of its own, the open connection gets SQLite's default back."""
    from django.db import connection

    call_command("migrate", verbosity=0)

    def autocheckpoint() -> int:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_autocheckpoint")
            return int(cursor.fetchone()[0])

    connection.close()
    assert autocheckpoint() == 1000  # (opens Django's connection before the image)
    img = configure(TARGET="default")
    assert isinstance(img.store, SQLiteStore)
    checkpointer = img.store._checkpointer
    assert checkpointer is not None and checkpointer._others
    assert autocheckpoint() == 0
    connection.close()
    assert autocheckpoint() == 0
    runs, deadline = -1, time.monotonic() + 10
    while checkpointer.runs != runs and time.monotonic() < deadline:  # the adoption's checkpoint is over
        runs = checkpointer.runs
        time.sleep(0.3)
    pages = project_db.stat().st_size // 4096
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS app_blobs (b BLOB)")
        for _ in range(100):
            cursor.execute("INSERT INTO app_blobs VALUES (zeroblob(16000))")  # 400 pages of Django's own
    # (the file grows while the checkpoint copies; the run is counted once it has ended, its RESTART and syncs done)
    poll(lambda: project_db.stat().st_size // 4096 >= pages + 350 and checkpointer.runs > runs, 10, 0.05)
    assert project_db.stat().st_size // 4096 >= pages + 350 and checkpointer.runs > runs
    configure(TARGET=str(tmp_path / "own.db"))
    assert autocheckpoint() == 1000  # the same connection, given its checkpoints back
    connection.close()
    assert autocheckpoint() == 1000


def test_prefix_in_the_project_database(configure: Callable[..., memimg.MemoryImage], project_db: Path) -> None:
    """PREFIX names memimg's tables in the project database, so several images can share it."""
    img = configure(TARGET="default", PREFIX="bank_")
    assert img.store.description == f"sqlite:///{project_db}"  # a prefix is the SQLAlchemy store's
    img.root.accounts["zoe"] = Account("zoe")
    with contextlib.closing(sqlite3.connect(project_db)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"bank_events", "bank_snapshots", "bank_meta"} <= tables


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="set MEMIMG_TEST_POSTGRES_URL to test PostgreSQL")
def test_image_in_a_postgres_project_database(configure: Callable[..., memimg.MemoryImage]) -> None:
    """A PostgreSQL DATABASES entry is reached through its settings; SCHEMA puts the tables in a schema of their own."""
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        img = configure(TARGET="pg", SCHEMA=schema)
        assert img.store.description.startswith("postgresql+psycopg://")
        img.root.accounts["ada"] = Account("ada")
        assert post(Client(), "/accounts/ada/deposit/", amount="2").status_code == 200
        engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
        try:
            assert {"memimg_events", "memimg_snapshots", "memimg_meta"} <= set(
                sa.inspect(engine).get_table_names(schema=schema)
            )
        finally:
            engine.dispose()
        assert reopen().root.accounts["ada"].balance == Decimal(2)
    finally:
        _runtime.close()
        engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_database_urls() -> None:
    """DATABASES entries become SQLAlchemy URLs: SQLite files; PostgreSQL with escaping, sockets, libpq options."""
    assert url_for_database("default", {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/db.sqlite3"}) == (
        "sqlite:////srv/db.sqlite3"
    )
    pg = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "app",
        "PASSWORD": "p@ss:/word",
        "HOST": "db.example",
        "PORT": "5433",
        "OPTIONS": {"sslmode": "require", "isolation_level": 3, "pool": True},
    }
    assert url_for_database("default", pg) == (
        "postgresql+psycopg://app:p%40ss%3A%2Fword@db.example:5433/shop?sslmode=require"
    )
    socket = {"ENGINE": "django.contrib.gis.db.backends.postgis", "NAME": "geo", "HOST": "/var/run/postgresql"}
    assert url_for_database("geo", socket) == "postgresql+psycopg:///geo?host=%2Fvar%2Frun%2Fpostgresql"
    with pytest.raises(ImproperlyConfigured, match=r"MEMIMG\['TARGET'\].*in-memory"):
        url_for_database("default", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"})
    with pytest.raises(ImproperlyConfigured, match=r"MEMIMG\['TARGET'\].*mysql.*SQLAlchemy URL"):
        url_for_database("default", {"ENGINE": "django.db.backends.mysql", "NAME": "x"})


# -- settings and startup --------------------------------------------------------------


@pytest.mark.parametrize(
    "value,key,words",
    [
        (None, None, "settings.MEMIMG is missing"),
        ([], None, "must be a dict"),
        ({"TARGET": ":memory:"}, "ROOT", "is missing"),
        ({"TARGET": ":memory:", "ROOT": "examples.django_bank.bank.domain.Nope"}, "ROOT", "cannot be imported"),
        ({"TARGET": ":memory:", "ROOT": "no_such_module.Bank"}, "ROOT", "cannot be imported"),
        ({"TARGET": ":memory:", "ROOT": "examples.django_bank.settings.DEBUG"}, "ROOT", "not a class"),
        ({"ROOT": ROOT}, "TARGET", "is missing"),
        ({"TARGET": "nosuchdb://host/x", "ROOT": ROOT}, "TARGET", "driver"),
        ({"TARGET": "postgresql+nosuchdriver://u@h/db", "ROOT": ROOT}, "TARGET", "driver"),
        ({"TARGET": "postgresql+psycopg://u@h:notaport/db", "ROOT": ROOT}, "TARGET", "not a database URL"),
        ({"TARGET": 42, "ROOT": ROOT}, "TARGET", "not 42"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "RETRIES": -1}, "RETRIES", "int >= 0"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "DISCARD_STATUS": "4xx"}, "DISCARD_STATUS", "HTTP status"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "OPTIONS": {"root": dict}}, "OPTIONS", "ROOT"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "PREFIX": "x_"}, "PREFIX", "database TARGET"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "LAZY": "yes"}, "LAZY", "True or False"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "RETRY": 3}, None, "unknown keys RETRY"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "ANNOTATE": "yes"}, "ANNOTATE", "True or False"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "ANNOTATE_KEYS": ["user", "ip"]}, "ANNOTATE_KEYS", "unknown keys"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "ANNOTATE_KEYS": "user"}, "ANNOTATE_KEYS", "list of keys"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "ANNOTATE_WITH": "no_such_module.f"}, "ANNOTATE_WITH", "imported"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "ANNOTATE_WITH": 3}, "ANNOTATE_WITH", "must be a function"),
        ({"TARGET": ":memory:", "ROOT": ROOT, "OPTIONS": {"snapshot_every": 0}}, None, "OPTIONS"),
    ],
)
def test_wrong_settings_fail_at_startup(
    value: Any, key: str | None, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's ready() raises ImproperlyConfigured naming the wrong key; the running image is kept."""
    from django.apps import apps

    before = image()
    if value is None:
        monkeypatch.delattr(settings, "MEMIMG")
    else:
        monkeypatch.setattr(settings, "MEMIMG", value)
    with pytest.raises(ImproperlyConfigured) as info:
        apps.get_app_config("memimg").ready()
    message = str(info.value)
    if key is not None:
        assert f"settings.MEMIMG[{key!r}]" in message
    assert words in message
    assert image() is before and not before.closed


def test_root_must_match_the_stored_image(configure: Callable[..., memimg.MemoryImage], tmp_path: Path) -> None:
    """A ROOT class that is not the class of the stored root (the wrong TARGET, say) is refused at startup."""
    with memimg.open(str(tmp_path / "other.db")):
        pass  # a dict root
    with pytest.raises(ImproperlyConfigured, match=r"settings.MEMIMG\['ROOT'\] is .*Bank.*holds a root of type"):
        configure(TARGET=str(tmp_path / "other.db"))


def test_startup_fails_in_a_real_process(tmp_path: Path) -> None:
    """`manage.py check` with ROOT missing stops at startup with ImproperlyConfigured naming the key."""
    (tmp_path / "bad_settings.py").write_text(
        "from examples.django_bank.settings import *  # noqa: F403\nMEMIMG = {'TARGET': ':memory:'}\n"
    )
    result = _manage(tmp_path, "check", settings_module="bad_settings")
    assert result.returncode != 0
    assert "ImproperlyConfigured: settings.MEMIMG['ROOT'] is missing" in result.stderr


def test_lazy_opens_at_first_use(tmp_path: Path) -> None:
    """With LAZY the settings are checked at startup, but the image is opened at its first use."""
    with override_settings(MEMIMG={"TARGET": str(tmp_path / "lazy.db"), "ROOT": ROOT, "LAZY": True}):
        assert not (tmp_path / "lazy.db").exists()
        assert isinstance(root(), Bank) and (tmp_path / "lazy.db").exists()


# -- the accessors and reopening -------------------------------------------------------


def test_image_and_root_accessors(bank: memimg.MemoryImage) -> None:
    """image() is the process's MemoryImage and root() its root; without the app open, image() says what to do."""
    assert image() is bank and root() is bank.root and isinstance(root(), Bank)
    _runtime.close()
    try:
        with pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS"):
            image()
    finally:
        reopen()
    assert image() is not bank and bank.closed


def test_changed_setting_reopens(configure: Callable[..., memimg.MemoryImage], tmp_path: Path) -> None:
    """override_settings(MEMIMG=...) closes the image and opens the new one."""
    first = configure()
    second = configure(TARGET=str(tmp_path / "second.db"))
    assert first.closed and image() is second and second.store.description.endswith("second.db")


def test_forked_child_opens_its_own_image(bank: memimg.MemoryImage) -> None:
    """After a fork the image is opened again in the child; the inherited one is left alone (not closed)."""
    current = _runtime._current
    assert current is not None
    _runtime._current = dataclasses.replace(current, pid=-1)  # as a forked child sees it
    child = image()
    assert child is not bank and not bank.closed and child.root.accounts["ada"].balance == Decimal(10)
    assert _runtime._inherited.pop() is bank
    bank.close()


def test_closed_image_is_opened_again(bank: memimg.MemoryImage) -> None:
    """An image that closed itself (as after a failed apply) is opened again at the next use."""
    bank.close()
    assert image() is not bank and root().accounts["ada"].balance == Decimal(10)


# -- the management command ------------------------------------------------------------


def test_snapshot_command(bank: memimg.MemoryImage) -> None:
    """`manage.py memimg snapshot` snapshots the configured image."""
    out = _call("snapshot")
    assert f"at seq {bank.seq}" in out and bank.store.snapshots()[0].seq == bank.seq


def test_command_passes_through_with_the_configured_target(bank: memimg.MemoryImage) -> None:
    """Other arguments go to the memimg command line; TARGET defaults to the configured image."""
    assert "django_bank.Bank" in _call("info")
    shown = _call("show", "accounts")
    assert "'ada'" in shown and "'bob'" in shown
    assert "Commands:" in _call("--help")
    with pytest.raises(CommandError) as info:
        _call("info", "/no/such/image.db")
    assert info.value.returncode == 1


def test_default_target_insertion(bank: memimg.MemoryImage, tmp_path: Path) -> None:
    """TARGET is inserted only where the subcommand expects it and the user left it out."""
    target = str(tmp_path / "image.db")
    notes: list[str] = []
    assert with_default_target(["info"], notes) == ["info", target]
    assert with_default_target(["--debug", "-i", "json", "log", "--since", "3"], notes) == [
        "--debug",
        "-i",
        "json",
        "log",
        target,
        "--since",
        "3",
    ]
    assert with_default_target(["info", target], notes) == ["info", target]
    assert with_default_target(["show", "accounts.ada"], notes) == ["show", target, "accounts.ada"]
    assert with_default_target(["import", "dump.json"], notes) == ["import", target, "dump.json"]
    assert with_default_target(["demo"], notes) == ["demo"]
    assert with_default_target(["nosuch"], notes) == ["nosuch"] and notes == []


def test_manage_py_runs_the_memimg_command_line(tmp_path: Path) -> None:
    """`python manage.py memimg ...` of the example hands every argument to click, --help included."""
    env_db = tmp_path / "example.sqlite3"
    result = _manage(tmp_path, "memimg", "--help", db=env_db)
    assert result.returncode == 0, result.stderr
    assert "Usage: manage.py memimg" in result.stdout
    result = _manage(tmp_path, "memimg", "info", db=env_db)
    assert result.returncode == 0, result.stderr
    assert "django_bank.Bank" in result.stdout and str(env_db) in result.stdout
    result = _manage(tmp_path, "memimg", "nosuch", db=env_db)
    assert result.returncode == 2 and "No such command" in result.stderr


def _call(*args: str) -> str:
    out = io.StringIO()
    call_command("memimg", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _manage(
    tmp_path: Path, *args: str, settings_module: str = "examples.django_bank.settings", db: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DJANGO_BANK_DB": str(db or tmp_path / "project.sqlite3"),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / "django_bank" / "manage.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


# -- who and what: request metadata ---------------------------------------------------------

WITH_USERS = [
    "django.middleware.common.CommonMiddleware",
    "tests.contrib.test_django.FakeUserMiddleware",
    "memimg.contrib.django.middleware.MemimgMiddleware",
]


def _request_txs(img: memimg.MemoryImage, since: int) -> list[list[memimg.Event]]:
    by_tx: dict[int, list[memimg.Event]] = {}
    for e in img.events(since):
        by_tx.setdefault(e.tx, []).append(e)
    return list(by_tx.values())


def test_each_request_is_annotated_with_user_request_id_and_view(bank: memimg.MemoryImage) -> None:
    """A request's transaction carries the authenticated user's pk, its X-Request-ID and its view name; a
    non-transactional view's changes carry the same keys; an anonymous request records no user and a new id."""
    seq = bank.seq
    with override_settings(MIDDLEWARE=WITH_USERS):
        client = Client()
        ok = client.post(
            "/accounts/ada/deposit/",
            {"amount": "1"},
            content_type="application/json",
            headers={"X-Test-User": "42", "X-Request-ID": "req-1"},
        )
        assert ok.status_code == 200
        assert client.get("/test/outside/").status_code == 400
    (deposit, outside) = _request_txs(bank, seq)
    assert deposit[0].kind == "tx.meta" and deposit[0].meta == {"user": 42, "request": "req-1", "endpoint": "deposit"}
    assert all(e.meta == deposit[0].meta for e in deposit)
    meta = outside[0].meta
    assert set(meta) == {"request", "endpoint"} and len(meta["request"]) == 32
    assert meta["endpoint"] == "tests.contrib.test_django.outside"


def test_an_x_request_id_that_is_no_short_printable_ascii_is_replaced(bank: memimg.MemoryImage) -> None:
    """An X-Request-ID over 200 characters, or holding a control character, is not recorded: the request
    gets a new random id instead (request.memimg_request_id too); a plausible one is recorded as it is."""
    seq = bank.seq
    for header in ("x" * 201, "ok\x01forged", "Root=1-abc;Parent=53995c3f"):
        environ = {"HTTP_X_REQUEST_ID": header}
        r = Client().post("/accounts/ada/deposit/", {"amount": "1"}, content_type="application/json", **environ)
        assert r.status_code == 200
    recorded = [tx[0].meta["request"] for tx in _request_txs(bank, seq)]
    assert [len(r) for r in recorded[:2]] == [32, 32] and recorded[0] != recorded[1]
    assert recorded[2] == "Root=1-abc;Parent=53995c3f"


def test_a_user_pk_beyond_the_metadata_int_range_is_recorded_as_its_str(bank: memimg.MemoryImage) -> None:
    """A 64-bit user pk (beyond 2**53 - 1) is no metadata int: the request succeeds and records it as a str."""
    seq = bank.seq
    big = 2**63 - 1
    with override_settings(MIDDLEWARE=WITH_USERS):
        headers = {"X-Test-User": str(big)}
        ok = Client().post("/accounts/ada/deposit/", {"amount": "1"}, content_type="application/json", headers=headers)
    assert ok.status_code == 200
    (deposit,) = _request_txs(bank, seq)
    assert deposit[0].meta["user"] == str(big)


def test_request_annotation_is_configurable_and_can_be_turned_off(
    configure: Callable[..., memimg.MemoryImage],
) -> None:
    """ANNOTATE_KEYS picks the keys, ANNOTATE_WITH(request, meta) returns the meta to record, ANNOTATE=False
    records none."""

    def with_tenant(request: HttpRequest, meta: dict[str, Any]) -> dict[str, Any]:
        return {**meta, "tenant": request.headers.get("X-Tenant")}

    img = configure(ANNOTATE_KEYS=["request"], ANNOTATE_WITH=with_tenant)
    img.root.accounts["ada"] = Account("ada")
    seq = img.seq
    headers = {"X-Request-ID": "r-9", "X-Tenant": "acme"}
    post_json = {"content_type": "application/json", "headers": headers}
    assert Client().post("/accounts/ada/deposit/", {"amount": "1"}, **post_json).status_code == 200
    assert _request_txs(img, seq)[0][0].meta == {"request": "r-9", "tenant": "acme"}
    img = configure(ANNOTATE=False)
    seq = img.seq
    assert Client().post("/accounts/ada/deposit/", {"amount": "1"}, **post_json).status_code == 200
    assert all(e.kind != "tx.meta" and e.meta == {} for e in img.events(seq))
    assert img.seq > seq


def test_a_retried_request_keeps_its_request_id(configure: Callable[..., memimg.MemoryImage]) -> None:
    """Requests rerun after a conflict commit once, with the request id and view they had."""
    img = configure(RETRIES=3)
    img.root.accounts["ada"] = Account("ada")
    seq = img.seq
    responses = _race(2)
    assert [r.status_code for r in responses] == [200, 200]
    assert sorted(r.json()["attempt"] for r in responses) == [0, 1]
    txs = _request_txs(img, seq)
    assert len(txs) == 2
    assert all(tx[0].kind == "tx.meta" and tx[0].meta["endpoint"] == "tests.contrib.test_django.race" for tx in txs)
    assert len({tx[0].meta["request"] for tx in txs}) == 2


def test_async_requests_are_annotated(bank: memimg.MemoryImage) -> None:
    """Under ASGI the request's transaction carries its metadata too, and concurrent requests keep theirs."""

    async def run() -> list[int]:
        client = AsyncClient()
        got = await asyncio.gather(
            *[
                client.post(
                    "/accounts/ada/deposit/",
                    {"amount": "1"},
                    content_type="application/json",
                    headers={"X-Request-ID": f"a-{i}"},
                )
                for i in range(3)
            ]
        )
        return [r.status_code for r in got]

    seq = bank.seq
    assert asyncio.run(run()) == [200, 200, 200]
    ids = sorted(tx[0].meta["request"] for tx in _request_txs(bank, seq))
    assert ids == ["a-0", "a-1", "a-2"]


# -- the inspector ----------------------------------------------------------------------------


def test_the_inspector_include_needs_a_permission_hook() -> None:
    """inspector.urls() without permission= is refused, saying why; debug=True gives the patterns anyway."""
    with pytest.raises(ValueError, match="needs permission=.*debug=True"):
        inspector.urls()
    assert len(inspector.urls(debug=True)) == 1


def test_the_inspector_is_behind_the_projects_permission(bank: memimg.MemoryImage) -> None:
    """Under the include's prefix, the hook sees Django's request.user: 403 for others, the pages for the
    allowed user, links under the prefix, other methods 405 and nothing written."""
    seq = bank.seq
    with override_settings(MIDDLEWARE=WITH_USERS):
        client = Client()
        assert client.get("/admin/image/").status_code == 403
        assert client.get("/admin/image/", headers={"X-Test-User": "2"}).status_code == 403
        allowed = {"X-Test-User": "1"}
        page = client.get("/admin/image/", headers=allowed)
        assert page.status_code == 200
        body = b"".join(page.streaming_content).decode()
        assert f'head <b id="head-seq">{seq}</b>' in body
        assert 'href="/admin/image/type/django_bank.Account"' in body
        ada = bank.root.accounts["ada"]
        obj = client.get(f"/admin/image/object/{ada._mi_oid}?page=1", headers=allowed)
        assert obj.status_code == 200 and "balance" in b"".join(obj.streaming_content).decode()
        missing = client.get("/admin/image/object/99999", headers=allowed)
        assert missing.status_code == 404 and b"there is no object #99999" in b"".join(missing.streaming_content)
        assert client.put("/admin/image/", headers=allowed).status_code == 405
    assert bank.seq == seq


def test_the_inspectors_stream_and_static_files_are_behind_the_permission(bank: memimg.MemoryImage) -> None:
    """The include's event stream and its static files answer 403 to a request the hook refuses, like its
    pages; the allowed user gets them."""
    with override_settings(MIDDLEWARE=WITH_USERS):
        client = Client()
        for headers in ({}, {"X-Test-User": "2"}):
            for url in (f"/admin/image/events?since={bank.seq}", "/admin/image/static/inspector.js"):
                refused = client.get(url, headers=headers)
                assert refused.status_code == 403, (url, headers)
                assert bank.store.description.encode() not in refused.content
        script = client.get("/admin/image/static/inspector.js", headers={"X-Test-User": "1"})
        assert script.status_code == 200 and b"EventSource" in b"".join(script.streaming_content)


def test_an_inspector_permission_hook_that_raises_refuses(
    bank: memimg.MemoryImage, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises refuses the request (403, nothing of the image) and logs the error."""

    def permission(request: Any) -> bool:
        raise AttributeError("'AnonymousUser' object has no attribute 'is_staff'")

    urls = inspector.urls(permission=permission, image=bank)
    request = RequestFactory().get("/_memimg/")
    with caplog.at_level(logging.ERROR, logger="memimg.django"):
        response = urls[0].callback(request, rest="")
    assert response.status_code == 403 and bank.store.description.encode() not in response.content
    assert "permission hook raised" in caplog.text and "is_staff" in caplog.text


def test_the_inspector_streams_live_under_asgi(bank: memimg.MemoryImage) -> None:
    """Under ASGI the pages are served, and the event stream sends each commit as it happens (not at its end)."""

    async def run() -> tuple[int, str, str]:
        client = AsyncClient()
        allowed = {"X-Test-User": "1"}
        page = await client.get("/admin/image/", headers=allowed)
        body = b"".join([chunk async for chunk in page.streaming_content]).decode()
        stream = await asyncio.wait_for(client.get(f"/admin/image/events?since={bank.seq}", headers=allowed), 20)
        chunks = stream.streaming_content.__aiter__()
        await chunks.__anext__()  # the retry line
        await asyncio.get_running_loop().run_in_executor(None, _deposit_in_ada, bank)
        message = (await asyncio.wait_for(chunks.__anext__(), timeout=20)).decode()
        await chunks.aclose()
        return page.status_code, body, message

    with override_settings(MIDDLEWARE=WITH_USERS):
        status, body, message = asyncio.run(run())
    assert status == 200 and "Overview" in body
    assert message.startswith(f"id: {bank.seq}\nevent: commit\n")


def _deposit_in_ada(img: memimg.MemoryImage) -> None:
    img.root.accounts["ada"].balance += 1


# -- protection at rest ------------------------------------------------------------------


def test_keys_come_from_environment_variables_named_by_the_setting(
    configure: Callable[..., memimg.MemoryImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MEMIMG['ENCRYPTION_KEY_ENV'] / ['INTEGRITY_KEY_ENV'] name the variables holding the keys: the image is
    stored encrypted; a variable that is not set is ImproperlyConfigured naming the key, and neither the
    error nor the parsed settings' repr shows a key."""
    key, mac = "5a" * 32, "6b" * 32
    monkeypatch.setenv("APP_KEY", key)
    monkeypatch.setenv("APP_MAC", mac)
    img = configure(ENCRYPTION_KEY_ENV="APP_KEY", INTEGRITY_KEY="6b" * 32, COMPRESSION="zlib")
    img.root.accounts["ada"] = Account("ada-SECRET-NAME")
    assert mac not in repr(_runtime.current_settings()) and key not in repr(_runtime.current_settings())
    _runtime.close()
    assert b"ada-SECRET-NAME" not in (tmp_path / "image.db").read_bytes()
    with memimg.open(str(tmp_path / "image.db"), encryption_key=key, integrity_key=mac) as again:
        assert again.root.accounts["ada"].owner == "ada-SECRET-NAME"
    with pytest.raises(ImproperlyConfigured, match=r"MEMIMG\['ENCRYPTION_KEY_ENV'\].*NOT_SET_VARIABLE") as info:
        configure(ENCRYPTION_KEY_ENV="NOT_SET_VARIABLE", INTEGRITY_KEY_ENV="APP_MAC")
    assert mac not in str(info.value)


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("/srv/app/db.sqlite3", "/srv/app/db.sqlite3"),
        (Path("db.sqlite3"), "db.sqlite3"),
        ("file:/srv/app/my%20db.sqlite3?mode=rwc", "/srv/app/my db.sqlite3"),
        ("file:memdb1?mode=memory&cache=shared", None),
        (":memory:", None),
        ("", None),
    ],
)
def test_the_file_a_django_sqlite_name_opens(name: Any, file: str | None) -> None:
    """A Django SQLite NAME is matched against the image's file by the file it opens: a path, or a file: URI's
    path; an in-memory database has none."""
    assert _runtime._file_of(name) == file
