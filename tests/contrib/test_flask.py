"""The Flask integration: settings, the per-request transaction, conflict retries, the example app."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import sys
import threading
import types
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import attrs
import pytest
from flask import Flask, abort, current_app, g, jsonify, make_response

import memimg
from memimg.contrib import flask as memimg_flask
from memimg.contrib.flask import ConfigError, MemImg, TransactionConflict, after_commit, no_transaction


@memimg.persistent(name="tests.contrib.flask.Counter")
class Counter:
    count: int = 0
    other: int = 0
    log: list[str] = attrs.field(factory=list)


def counter() -> Counter:
    """The root of the current app's image (through the module's proxy)."""
    root: Counter = memimg_flask.image.root
    return root


def add_routes(app: Flask) -> None:
    """The views most tests use: each one changes the counter, then answers as its URL says."""

    @app.get("/count")
    def count() -> Any:
        return {"count": counter().count}

    @app.post("/inc")
    def inc() -> Any:
        c = counter()
        c.count += 1
        c.log.append("inc")
        return {"count": c.count}

    @app.post("/respond/<int:status>")
    def respond(status: int) -> Any:
        counter().count += 1
        return jsonify(count=counter().count), status

    @app.post("/abort/<int:status>")
    def aborting(status: int) -> Any:
        counter().count += 1
        abort(status)

    @app.post("/raise")
    def raising() -> Any:
        counter().count += 1
        raise RuntimeError("boom")


Make = Callable[..., tuple[Flask, MemImg]]


@pytest.fixture
def make_app(tmp_path: Any) -> Iterator[Make]:
    """``make_app(**config)``: a Flask app on the test's SQLite image, with :func:`add_routes`."""
    made: list[tuple[Flask, MemImg]] = []

    def make(**config: Any) -> tuple[Flask, MemImg]:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config.update({"MEMIMG_ROOT": Counter, "MEMIMG_TARGET": str(tmp_path / "image.db"), **config})
        ext = MemImg(app)
        made.append((app, ext))
        add_routes(app)
        return app, ext

    yield make
    for _app, ext in made:
        ext.image.close()


# -- the request transaction -------------------------------------------------------------


def test_success_commits_one_transaction(make_app: Make) -> None:
    """A 2xx response commits everything the view changed, as one transaction in the log."""
    app, ext = make_app()
    seq = ext.image.seq
    r = app.test_client().post("/inc")
    assert r.status_code == 200 and r.json == {"count": 1}
    assert ext.root.count == 1 and list(ext.root.log) == ["inc"]
    events = list(ext.image.events(since=seq))
    assert [e.kind for e in events] == ["tx.meta", "obj.set", "list.append"] and len({e.tx for e in events}) == 1


@pytest.mark.parametrize("status", [201, 202, 302])
def test_other_success_statuses_commit(make_app: Make, status: int) -> None:
    """Any status outside 4xx/5xx commits by default."""
    app, ext = make_app()
    assert app.test_client().post(f"/respond/{status}").status_code == status
    assert ext.root.count == 1


@pytest.mark.parametrize("status", [400, 404, 409, 422, 500, 503])
def test_error_status_discards(make_app: Make, status: int) -> None:
    """A returned 4xx/5xx response discards the view's changes: memory unchanged, nothing logged."""
    app, ext = make_app()
    seq = ext.image.seq
    r = app.test_client().post(f"/respond/{status}")
    assert r.status_code == status and r.json == {"count": 1}  # the response saw the transaction's state
    assert ext.root.count == 0 and ext.image.seq == seq


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_abort_discards(make_app: Make, status: int) -> None:
    """``abort()`` with a 4xx/5xx status discards the view's changes."""
    app, ext = make_app()
    seq = ext.image.seq
    assert app.test_client().post(f"/abort/{status}").status_code == status
    assert ext.root.count == 0 and ext.image.seq == seq


def test_exception_discards(make_app: Make) -> None:
    """An exception in the view discards its changes; Flask answers 500 (or, when testing, re-raises)."""
    app, ext = make_app()
    seq = ext.image.seq
    assert app.test_client().post("/raise").status_code == 500
    assert ext.root.count == 0 and ext.image.seq == seq
    app.testing = True
    with pytest.raises(RuntimeError, match="boom"):
        app.test_client().post("/raise")
    assert ext.root.count == 0 and ext.image.seq == seq


@pytest.mark.parametrize("setting", [500, range(500, 600)])
def test_discard_status_is_configurable(make_app: Make, setting: Any) -> None:
    """``MEMIMG_DISCARD_STATUS=500`` (or ``range(500, 600)``) commits 4xx responses, returned or aborted, not 5xx."""
    app, ext = make_app(MEMIMG_DISCARD_STATUS=setting)
    client = app.test_client()
    assert client.post("/respond/400").status_code == 400
    assert client.post("/abort/401").status_code == 401
    assert ext.root.count == 2
    seq = ext.image.seq
    assert client.post("/respond/500").status_code == 500
    assert client.post("/abort/503").status_code == 503
    assert client.post("/raise").status_code == 500  # exceptions other than HTTP errors always discard
    assert ext.root.count == 2 and ext.image.seq == seq


def test_discard_status_is_configurable_with_a_function(make_app: Make) -> None:
    """``MEMIMG_DISCARD_STATUS`` may be a function of the status code."""
    app, ext = make_app(MEMIMG_DISCARD_STATUS=lambda status: status != 200)
    client = app.test_client()
    assert client.post("/respond/201").status_code == 201
    assert ext.root.count == 0
    assert client.post("/inc").status_code == 200
    assert ext.root.count == 1


def test_discard_status_none_discards_only_on_exceptions(make_app: Make) -> None:
    """``MEMIMG_DISCARD_STATUS=None``: every response commits, even a 500; an exception still discards."""
    app, ext = make_app(MEMIMG_DISCARD_STATUS=None)
    client = app.test_client()
    assert client.post("/respond/500").status_code == 500
    assert client.post("/abort/404").status_code == 404
    assert ext.root.count == 2
    assert client.post("/raise").status_code == 500
    assert ext.root.count == 2


def test_abort_with_a_response_uses_its_status(make_app: Make) -> None:
    """``abort(response)`` is judged by the response's status."""
    app, ext = make_app()

    @app.post("/abort-response/<int:status>")
    def abort_response(status: int) -> Any:
        counter().count += 1
        abort(make_response({"why": "test"}, status))

    client = app.test_client()
    r = client.post("/abort-response/402")
    assert r.status_code == 402 and r.json == {"why": "test"} and ext.root.count == 0
    assert client.post("/abort-response/202").status_code == 202
    assert ext.root.count == 1


def test_unrouted_requests_open_no_transaction(make_app: Make) -> None:
    """A URL that matches no view gets Flask's 404 and leaves the image alone."""
    app, ext = make_app()
    seq = ext.image.seq
    assert app.test_client().get("/nowhere").status_code == 404
    assert app.test_client().get("/inc").status_code == 405
    assert ext.image.seq == seq


def test_no_transaction_views_commit_each_change(make_app: Make) -> None:
    """A ``@no_transaction`` view commits each change by itself and keeps them whatever it answers."""
    app, ext = make_app()

    @app.post("/untracked")
    @no_transaction
    def untracked() -> Any:
        counter().count += 1
        counter().log.append("x")
        return {}, 500

    seq = ext.image.seq
    assert app.test_client().post("/untracked").status_code == 500
    events = [e for e in ext.image.events(since=seq) if e.kind != "tx.meta"]  # each request's change is annotated
    assert ext.root.count == 1 and len(events) == 2 and events[0].tx != events[1].tx


def test_async_views_run_in_the_request_transaction(make_app: Make) -> None:
    """An async view's changes (and after_commit callbacks) are committed or discarded like a sync view's."""
    pytest.importorskip("asgiref")
    app, ext = make_app()
    calls: list[int] = []

    @app.post("/async/<int:status>")
    async def async_view(status: int) -> Any:
        counter().count += 1
        await asyncio.sleep(0)
        counter().log.append("async")
        after_commit(lambda: calls.append(status))
        return {"count": counter().count}, status

    client = app.test_client()
    seq = ext.image.seq
    assert client.post("/async/400").json == {"count": 1}
    assert ext.root.count == 0 and ext.image.seq == seq
    assert client.post("/async/200").json == {"count": 1}
    assert ext.root.count == 1 and list(ext.root.log) == ["async"]
    assert calls == [200]


# -- after_commit -----------------------------------------------------------------------


def test_after_commit_runs_once_after_the_commit(make_app: Make) -> None:
    """``after_commit`` callbacks run after a commit (seeing the committed state), and never after a discard."""
    app, ext = make_app()
    calls: list[tuple[int, int]] = []

    @app.post("/notify/<int:status>")
    def notify(status: int) -> Any:
        counter().count += 1
        after_commit(lambda: calls.append((ext.root.count, ext.image.seq)))
        return {}, status

    client = app.test_client()
    assert client.post("/notify/400").status_code == 400
    assert calls == []
    assert client.post("/notify/200").status_code == 200
    assert calls == [(1, ext.image.seq)]


def test_after_commit_keeps_only_the_committed_attempt(make_app: Make) -> None:
    """Callbacks registered by an attempt that conflicted are dropped; the rerun's run once."""
    app, ext = make_app()
    attempts: list[int] = []
    calls: list[int] = []

    @app.post("/conflict-once")
    def conflict_once() -> Any:
        attempts.append(len(attempts) + 1)
        attempt = attempts[-1]
        counter().count += 1
        after_commit(lambda: calls.append(attempt))
        if attempt == 1:
            raise memimg.ConflictError("simulated", target=None, key=None, seq=None)
        return {}

    assert app.test_client().post("/conflict-once").status_code == 200
    assert attempts == [1, 2] and calls == [2] and ext.root.count == 1


def test_a_failing_after_commit_callback_is_logged(make_app: Make, caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises is logged; the others still run and the response reports the commit."""
    app, ext = make_app()
    calls: list[str] = []

    def fail() -> None:
        raise OSError("mail server down")

    @app.post("/callbacks")
    def callbacks() -> Any:
        counter().count += 1
        after_commit(fail)
        after_commit(lambda: calls.append("second"))
        return {}

    with caplog.at_level(logging.ERROR):
        assert app.test_client().post("/callbacks").status_code == 200
    assert calls == ["second"] and ext.root.count == 1
    assert "mail server down" in caplog.text


def test_after_commit_outside_a_request_transaction_raises() -> None:
    """``after_commit`` refuses to run outside a view in a request transaction (the callback would be lost)."""
    with pytest.raises(RuntimeError, match="request transaction"):
        after_commit(lambda: None)


# -- conflicts and retries ----------------------------------------------------------------


def add_overlapping_increment(app: Flask, outcomes: list[int]) -> None:
    """``POST /slow-inc``: read the count, wait until two requests have read it, write count + 1."""
    barrier = threading.Barrier(2, timeout=10)
    waited = threading.local()

    @app.post("/slow-inc")
    def slow_inc() -> Any:
        c = counter()
        n = c.count
        if not getattr(waited, "done", False):  # only the first attempt of each request waits
            waited.done = True
            barrier.wait()
        c.count = n + 1
        return {"count": c.count}

    def request() -> None:
        outcomes.append(app.test_client().post("/slow-inc").status_code)

    app.extensions["test.request"] = request


def run_two(app: Flask) -> None:
    threads = [threading.Thread(target=app.extensions["test.request"]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_concurrent_conflicting_requests_are_retried(make_app: Make) -> None:
    """Two overlapping read-modify-write requests: the one that commits second conflicts, is rerun, and both count."""
    app, ext = make_app()
    outcomes: list[int] = []
    add_overlapping_increment(app, outcomes)
    seq = ext.image.seq
    run_two(app)
    assert outcomes == [200, 200]
    assert ext.root.count == 2 and len({e.tx for e in ext.image.events(since=seq)}) == 2


def test_without_retries_a_conflict_answers_409(make_app: Make) -> None:
    """With ``MEMIMG_RETRIES=0`` the request that conflicts gets 409 and a JSON error, and changes nothing."""
    app, ext = make_app(MEMIMG_RETRIES=0)
    outcomes: list[int] = []
    add_overlapping_increment(app, outcomes)
    seq = ext.image.seq
    run_two(app)
    assert sorted(outcomes) == [200, 409]
    assert ext.root.count == 1 and len({e.tx for e in ext.image.events(since=seq)}) == 1


def test_a_stale_read_in_the_view_is_retried(make_app: Make) -> None:
    """A read of a value another request committed meanwhile raises ConflictError in the view, which is rerun."""
    app, ext = make_app()
    started, committed = threading.Event(), threading.Event()
    stale: list[memimg.ConflictError] = []
    outcomes: list[Any] = []

    @app.post("/late-read")
    def late_read() -> Any:
        c = counter()
        assert c.other == 0  # the transaction has begun and read something
        if not started.is_set():
            started.set()
            committed.wait(10)
        try:
            c.count += 1
        except memimg.ConflictError as err:
            stale.append(err)
            raise
        return {"count": c.count}

    def slow() -> None:
        r = app.test_client().post("/late-read")
        outcomes.append((r.status_code, r.json))

    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(10)
    assert app.test_client().post("/inc").status_code == 200
    committed.set()
    t.join(30)
    assert len(stale) == 1 and outcomes == [(200, {"count": 2})]
    assert ext.root.count == 2


def test_retries_are_bounded(make_app: Make) -> None:
    """A view that conflicts every time runs ``MEMIMG_RETRIES + 1`` times, then the request answers 409."""
    app, ext = make_app(MEMIMG_RETRIES=2)
    runs: list[int] = []

    @app.post("/always-conflicts")
    def always_conflicts() -> Any:
        runs.append(1)
        counter().count += 1
        raise memimg.ConflictError("simulated", target=None, key=None, seq=None)

    seq = ext.image.seq
    r = app.test_client().post("/always-conflicts")
    assert r.status_code == 409 and r.mimetype == "application/json"
    assert r.json is not None and r.json["error"] == "conflict" and r.json["attempts"] == 3
    assert len(runs) == 3 and ext.root.count == 0 and ext.image.seq == seq


def test_the_conflict_response_can_be_customised(make_app: Make) -> None:
    """``@app.errorhandler(TransactionConflict)`` decides what an exhausted conflict answers."""
    app, _ext = make_app(MEMIMG_RETRIES=0)

    @app.post("/always-conflicts")
    def always_conflicts() -> Any:
        raise memimg.ConflictError("simulated", target=7, key="count", seq=9)

    @app.errorhandler(TransactionConflict)
    def busy(err: TransactionConflict) -> Any:
        return {"busy": True, "target": err.conflict.target, "attempts": err.attempts}, 503

    r = app.test_client().post("/always-conflicts")
    assert r.status_code == 503 and r.json == {"busy": True, "target": 7, "attempts": 1}


# -- lifecycle and access -----------------------------------------------------------------


def test_data_survives_recreating_the_app(make_app: Make) -> None:
    """A new app on the same SQLite file recovers what the previous one committed."""
    app, ext = make_app()
    for _ in range(3):
        app.test_client().post("/inc")
    ext.image.close()
    app2, ext2 = make_app()
    assert ext2.root.count == 3 and list(ext2.root.log) == ["inc"] * 3
    assert app2.test_client().post("/inc").json == {"count": 4}


def test_default_target_is_in_the_instance_folder(tmp_path: Any) -> None:
    """Without ``MEMIMG_TARGET`` the image is ``instance_path/memimg.db`` (the folder is created)."""
    app = Flask(__name__, instance_path=str(tmp_path / "inst"))
    app.config["MEMIMG_ROOT"] = Counter
    ext = MemImg(app)
    try:
        assert os.path.exists(tmp_path / "inst" / "memimg.db")
        assert ext.image.store.description.endswith("memimg.db")
    finally:
        ext.image.close()


def test_relative_targets_are_in_the_instance_folder(make_app: Make, tmp_path: Any) -> None:
    """A relative ``MEMIMG_TARGET`` path is relative to ``app.instance_path``."""
    _app, _ext = make_app(MEMIMG_TARGET="data.db")
    assert os.path.exists(tmp_path / "instance" / "data.db")


@pytest.mark.parametrize("target", [":memory:", "store"])
def test_memory_and_store_targets(make_app: Make, target: str) -> None:
    """``MEMIMG_TARGET`` may be ``":memory:"`` or a ``memimg.Store`` instance."""
    app, ext = make_app(MEMIMG_TARGET=memimg.MemoryStore() if target == "store" else target)
    assert app.test_client().post("/inc").json == {"count": 1}
    assert ext.root.count == 1


@pytest.mark.parametrize("root", ["tests.contrib.test_flask:Counter", "tests.contrib.test_flask.Counter"])
def test_root_import_strings(make_app: Make, root: str) -> None:
    """``MEMIMG_ROOT`` may be an import string, with a colon or a dot before the class."""
    _app, ext = make_app(MEMIMG_ROOT=root)
    assert isinstance(ext.root, Counter)


def test_options_are_passed_to_open(make_app: Make) -> None:
    """``MEMIMG_OPTIONS`` are passed to ``memimg.open``."""
    make_app()[1].image.close()
    app, ext = make_app(MEMIMG_OPTIONS={"readonly": True, "sync": "full"})
    assert ext.image.readonly
    assert app.test_client().post("/inc").status_code == 500  # ReadOnlyError, discarded


def test_the_image_is_reachable_every_way(make_app: Make) -> None:
    """``ext.image``/``ext.root``, ``app.extensions["memimg"]`` and the ``image``/``root`` proxies agree."""
    app, ext = make_app()
    img = ext.image
    assert ext.root is img.root  # outside an app context: the only app
    with app.app_context():
        assert current_app.extensions["memimg"] is ext
        assert ext.image is img
        assert memimg_flask.image._get_current_object() is img  # type: ignore[attr-defined]
        assert memimg_flask.root._get_current_object() is img.root
        assert isinstance(memimg_flask.root, Counter) and memimg_flask.root.count == 0
    with pytest.raises(RuntimeError, match="application context"):
        memimg_flask.image.seq


def test_one_extension_on_several_apps(tmp_path: Any) -> None:
    """``ext.init_app`` on several apps gives each its own image, chosen by the current app context."""
    ext = MemImg()
    apps = []
    for name in ("a", "b"):
        app = Flask(__name__, instance_path=str(tmp_path / name))
        app.config.update(MEMIMG_ROOT=Counter, MEMIMG_TARGET=str(tmp_path / f"{name}.db"))
        ext.init_app(app)
        add_routes(app)
        apps.append(app)
    try:
        apps[0].test_client().post("/inc")
        with apps[0].app_context():
            assert ext.root.count == 1
        with apps[1].app_context():
            assert ext.root.count == 0
        with pytest.raises(RuntimeError, match="2 apps"):
            ext.image
    finally:
        for app in apps:
            with app.app_context():
                ext.image.close()


def test_init_app_twice_raises(make_app: Make) -> None:
    """An app takes one MemImg."""
    app, _ext = make_app()
    with pytest.raises(RuntimeError, match="already registered"):
        MemImg().init_app(app)


def test_images_are_closed_at_exit_and_reopened_after_fork(make_app: Make) -> None:
    """A forked worker opens its own image on first use, shares the log, and at exit closes only its own."""
    app, ext = make_app()
    parent_image = ext.image
    assert memimg_flask._opened.get(parent_image) == os.getpid()

    def child() -> None:
        ok = app.test_client().post("/inc").status_code == 200
        own = ext.image
        ok = ok and own is not parent_image
        memimg_flask._close_all()
        ok = ok and own.closed and not parent_image.closed
        os._exit(0 if ok else 1)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert not parent_image.closed
    assert app.test_client().get("/count").json == {"count": 1}  # the next transaction sees the child's commit


def test_cli_snapshot_and_info(make_app: Make) -> None:
    """``flask memimg snapshot`` writes a snapshot; ``flask memimg info`` describes the image."""
    app, ext = make_app()
    app.test_client().post("/inc")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["memimg", "snapshot"])
    assert result.exit_code == 0 and f"seq {ext.image.seq}" in result.output
    result = runner.invoke(args=["memimg", "info"])
    assert result.exit_code == 0 and "image.db" in result.output and "Counter" in result.output


def test_cli_passes_every_command_through_with_the_app_target(make_app: Make, tmp_path: Any) -> None:
    """``flask memimg ...`` is the memimg command line, run in the app's process (its classes are used): every
    command, its options and the global ones anywhere, with TARGET defaulting to the app's image."""
    app, _ext = make_app()
    app.test_client().post("/inc")
    runner = app.test_cli_runner()

    def flask_memimg(*args: str) -> Any:
        return runner.invoke(args=["memimg", *args])

    shown = flask_memimg("show", "--debug")
    assert shown.exit_code == 0 and "Counter #" in shown.output and "count: 1" in shown.output, shown.output
    assert "log:        " in flask_memimg("info").output
    logged = flask_memimg("log", "--limit", "1", "--json")
    assert logged.exit_code == 0 and '"kind": "root"' in logged.output
    assert flask_memimg("verify").exit_code == 0
    assert flask_memimg("snapshot").exit_code == 0
    assert "equal the replayed state" in flask_memimg("verify", "--import", "tests.models").output
    exported = flask_memimg("export")
    assert exported.exit_code == 0 and "tests.contrib.flask.Counter" in exported.output
    other = str(tmp_path / "other.db")
    with memimg.open(other) as img:
        img.root["elsewhere"] = 1
    assert "'elsewhere'" in flask_memimg("show", other).output  # an explicit TARGET is used as given
    helped = flask_memimg("--help")
    assert helped.exit_code == 0 and "Usage: flask memimg" in helped.output and "verify" in helped.output
    assert flask_memimg("nosuch").exit_code == 2
    compacted = flask_memimg("compact")
    assert compacted.exit_code == 0 and "dropped" in compacted.output, compacted.output
    assert app.test_client().post("/inc").json == {"count": 2}  # the app's image goes on after the compaction


def test_cli_cannot_reopen_a_memory_target(make_app: Make) -> None:
    """With a ``:memory:`` target the command line cannot open the app's image again: it says to give TARGET;
    ``flask memimg snapshot`` alone still snapshots the app's own image."""
    app, ext = make_app(MEMIMG_TARGET=":memory:")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["memimg", "info"])
    assert result.exit_code == 2 and "cannot be opened again here: give TARGET" in result.output
    assert runner.invoke(args=["memimg", "snapshot"]).exit_code == 0 and ext.image.store.snapshots()


def test_cli_uses_the_schema_and_prefix_of_the_app_options(make_app: Make, postgres: Any) -> None:
    """The app's ``schema`` and ``prefix`` options reach the command line with its default TARGET."""
    from tests.conftest import POSTGRES_URL

    app, _ext = make_app(MEMIMG_TARGET=POSTGRES_URL, MEMIMG_OPTIONS={"schema": postgres.schema, "prefix": "app_"})
    app.test_client().post("/inc")
    result = app.test_cli_runner().invoke(args=["memimg", "show", "count"])
    assert result.exit_code == 0 and result.output.strip() == "1", result.output


# -- bad settings ---------------------------------------------------------------------------

MISSING = object()


@pytest.mark.parametrize(
    ("config", "setting", "words"),
    [
        ({"MEMIMG_ROOT": MISSING}, "MEMIMG_ROOT", "not set"),
        ({"MEMIMG_ROOT": "tests.contrib.no_such_module:Counter"}, "MEMIMG_ROOT", "no_such_module"),
        ({"MEMIMG_ROOT": "tests.contrib.test_flask:NoSuchClass"}, "MEMIMG_ROOT", "NoSuchClass"),
        ({"MEMIMG_ROOT": 42}, "MEMIMG_ROOT", "class"),
        ({"MEMIMG_TARGET": "nosuchdialect://host/db"}, "MEMIMG_TARGET", "nosuchdialect"),
        ({"MEMIMG_TARGET": "/nonexistent-dir/sub/image.db"}, "MEMIMG_TARGET", "nonexistent-dir"),
        ({"MEMIMG_TARGET": 3}, "MEMIMG_TARGET", "int"),
        ({"MEMIMG_TARGET": ""}, "MEMIMG_TARGET", "empty"),
        ({"MEMIMG_OPTIONS": ["sync"]}, "MEMIMG_OPTIONS", "dict"),
        ({"MEMIMG_OPTIONS": {"no_such_option": 1}}, "MEMIMG_OPTIONS", "no_such_option"),
        ({"MEMIMG_OPTIONS": {"sync": "sometimes"}}, "MEMIMG_OPTIONS", "sometimes"),
        ({"MEMIMG_OPTIONS": {"root": dict}}, "MEMIMG_OPTIONS", "MEMIMG_ROOT"),
        ({"MEMIMG_RETRIES": -1}, "MEMIMG_RETRIES", ">= 0"),
        ({"MEMIMG_RETRIES": "3"}, "MEMIMG_RETRIES", "int"),
        ({"MEMIMG_DISCARD_STATUS": "4xx"}, "MEMIMG_DISCARD_STATUS", "status"),
        ({"MEMIMG_DISCARD_STATUS": 4.5}, "MEMIMG_DISCARD_STATUS", "4.5"),
    ],
)
def test_bad_settings_fail_at_init_naming_the_setting(
    tmp_path: Any, config: dict[str, Any], setting: str, words: str
) -> None:
    """A missing or wrong setting raises ConfigError at ``init_app``, naming the setting; the app gets no extension."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    settings = {"MEMIMG_ROOT": Counter, "MEMIMG_TARGET": str(tmp_path / "image.db"), **config}
    app.config.update({k: v for k, v in settings.items() if v is not MISSING})
    with pytest.raises(ConfigError) as info:
        MemImg(app)
    err = info.value
    assert isinstance(err, memimg.MemimgError) and isinstance(err, RuntimeError)
    assert err.setting == setting and setting in str(err) and words in str(err)
    assert "memimg" not in app.extensions


# -- the example app ------------------------------------------------------------------------


@pytest.fixture
def make_bank(tmp_path: Any) -> Iterator[Callable[..., Flask]]:
    """``make_bank(**config)``: the example app on the test's SQLite file (again on each call)."""
    from examples.flask_bank import create_app, memimg_ext

    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        app = create_app({"MEMIMG_TARGET": str(tmp_path / "bank.db"), "TESTING": True, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            memimg_ext.image.close()


@pytest.fixture
def bank_app(make_bank: Callable[..., Flask]) -> Flask:
    return make_bank()


def bank_seq(app: Flask) -> int:
    with app.app_context():
        return memimg_flask.image.seq


def test_example_transfer_moves_money(bank_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    """The example bank opens accounts and moves money between them, both sides in one commit, then notifies."""
    client = bank_app.test_client()
    assert client.post("/accounts", json={"owner": "ada", "amount": "100"}).status_code == 201
    assert client.post("/accounts", json={"owner": "bob"}).status_code == 201
    seq = bank_seq(bank_app)
    with caplog.at_level(logging.INFO):
        r = client.post("/transfers", json={"source": "ada", "target": "bob", "amount": "30.50"})
    assert r.status_code == 200
    assert r.json == {"source": {"owner": "ada", "balance": "69.50"}, "target": {"owner": "bob", "balance": "30.50"}}
    assert "transfer of 30.50 from ada to bob committed" in caplog.text
    with bank_app.app_context():
        assert len({e.tx for e in memimg_flask.image.events(since=seq)}) == 1
    bob = client.get("/accounts/bob").json
    assert bob is not None and [e["label"] for e in bob["entries"]] == ["from ada"]
    assert client.post("/accounts/bob/deposit", json={"amount": 5}).json == {"owner": "bob", "balance": "35.50"}
    assert client.post("/accounts/bob/withdraw", json={"amount": "0.5"}).json == {"owner": "bob", "balance": "35.00"}
    listing = client.get("/accounts").json
    assert listing is not None and listing["total"] == "104.50"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"source": "ada", "target": "bob", "amount": "1000"}, 400),
        ({"source": "ada", "target": "zed", "amount": "1"}, 404),
        ({"source": "ada", "target": "bob", "amount": "0.001"}, 400),
        ({"source": "ada", "target": "bob", "amount": "-5"}, 400),
        ({"source": "ada", "target": "ada", "amount": "1"}, 400),
        (["not", "an", "object"], 400),
    ],
)
def test_example_failed_transfer_changes_nothing(bank_app: Flask, body: Any, status: int) -> None:
    """A refused transfer answers 4xx with a JSON error and leaves balances and log untouched."""
    client = bank_app.test_client()
    client.post("/accounts", json={"owner": "ada", "amount": "100"})
    client.post("/accounts", json={"owner": "bob"})
    before, seq = client.get("/accounts").json, bank_seq(bank_app)
    r = client.post("/transfers", json=body)
    assert r.status_code == status and r.json is not None and "error" in r.json
    assert client.get("/accounts").json == before and bank_seq(bank_app) == seq


def test_example_refuses_duplicate_accounts(bank_app: Flask) -> None:
    """Opening an account twice answers 409 and keeps the first."""
    client = bank_app.test_client()
    client.post("/accounts", json={"owner": "ada", "amount": "10"})
    assert client.post("/accounts", json={"owner": "ada"}).status_code == 409
    assert client.get("/accounts/ada").json["balance"] == "10"  # type: ignore[index]


def test_example_survives_a_restart(make_bank: Callable[..., Flask]) -> None:
    """The bank's state comes back when the app is created again on the same file."""
    bank_app = make_bank()
    client = bank_app.test_client()
    client.post("/accounts", json={"owner": "ada", "amount": "100"})
    client.post("/accounts", json={"owner": "bob"})
    client.post("/transfers", json={"source": "ada", "target": "bob", "amount": "40"})
    with bank_app.app_context():
        memimg_flask.image.close()
    again = make_bank()
    assert again.test_client().get("/accounts").json == {
        "accounts": [{"owner": "ada", "balance": "60"}, {"owner": "bob", "balance": "40"}],
        "total": "100",
    }


def test_example_concurrent_transfers_keep_the_total(make_bank: Callable[..., Flask]) -> None:
    """Many threads moving money at once: conflicts are retried, no money is created or lost, statements add up."""
    # six threads over three accounts conflict a lot: allow enough reruns that none runs out
    bank_app = make_bank(MEMIMG_RETRIES=100)
    owners = ["ada", "bob", "cy"]
    client = bank_app.test_client()
    for owner in owners:
        client.post("/accounts", json={"owner": owner, "amount": "100"})
    failures: list[Any] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        c = bank_app.test_client()
        for _ in range(15):
            source, target = rnd.sample(owners, 2)
            r = c.post("/transfers", json={"source": source, "target": target, "amount": str(rnd.randint(1, 30))})
            if r.status_code not in (200, 400):  # 400: insufficient funds
                failures.append((r.status_code, r.json))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    listing = client.get("/accounts").json
    assert listing is not None and listing["total"] == "300"
    for owner in owners:
        account = client.get(f"/accounts/{owner}").json
        assert account is not None
        assert Decimal(account["balance"]) == sum(Decimal(e["amount"]) for e in account["entries"])
        assert Decimal(account["balance"]) >= 0


# -- who and what: request metadata --------------------------------------------------------------


def _txs(img: memimg.MemoryImage, since: int) -> list[list[memimg.Event]]:
    by_tx: dict[int, list[memimg.Event]] = {}
    for e in img.events(since):
        by_tx.setdefault(e.tx, []).append(e)
    return list(by_tx.values())


def _add_views(app: Flask) -> None:
    @app.before_request
    def load_user() -> None:
        user = app.config.get("TEST_G_USER")
        if user is not None:
            g.user = user

    @app.post("/outside")
    @no_transaction
    def outside() -> Any:
        counter().other += 1
        return {"other": counter().other}


def test_a_requests_commit_carries_user_request_id_and_endpoint(make_app: Make) -> None:
    """The request transaction's meta: g.user's id (a before_request set it after init_app), the
    X-Request-ID header and the endpoint; every event of the transaction carries it."""
    app, ext = make_app(TEST_G_USER={"id": 7, "name": "ada"})
    _add_views(app)
    seq = ext.image.seq
    r = app.test_client().post("/inc", headers={"X-Request-ID": "req-1"})
    assert r.status_code == 200
    (tx,) = _txs(ext.image, seq)
    assert tx[0].kind == "tx.meta" and tx[0].meta == {"user": 7, "request": "req-1", "endpoint": "inc"}
    assert [e.kind for e in tx[1:]] == ["obj.set", "list.append"] and all(e.meta == tx[0].meta for e in tx)


def test_a_no_transaction_views_changes_are_annotated_with_a_new_request_id(make_app: Make) -> None:
    """Changes of a no_transaction view carry the request's meta too; without X-Request-ID a random id is
    made, and without a user no user key is written."""
    app, ext = make_app()
    _add_views(app)
    seq = ext.image.seq
    client = app.test_client()
    assert client.post("/outside").status_code == 200
    assert client.post("/outside").status_code == 200
    first, second = _txs(ext.image, seq)
    assert first[0].meta.keys() == {"request", "endpoint"} and first[0].meta["endpoint"] == "outside"
    assert len(first[0].meta["request"]) == 32 and first[0].meta["request"] != second[0].meta["request"]


def test_an_erase_made_in_a_request_records_its_user_and_meta(make_app: Make) -> None:
    """img.erase() called in a no_transaction view without by= records the request's user as by, and its
    audit event carries the request's meta (user, request id, endpoint)."""
    app, ext = make_app(TEST_G_USER={"id": 7})

    @app.post("/erase")
    @no_transaction
    def erase() -> Any:
        result = memimg_flask.image.erase(counter(), "count", reason="GDPR request 9")
        return {"by": result.by}

    _add_views(app)
    client = app.test_client()
    for _ in range(2):
        assert client.post("/inc").status_code == 200
    r = client.post("/erase", headers={"X-Request-ID": "req-erase"})
    assert r.status_code == 200 and r.json == {"by": "7"}
    audit = list(ext.image.events())[-1]
    assert audit.kind == "erase" and audit.data[4] == "7" and audit.data[5] > 0
    assert audit.meta == {"user": 7, "request": "req-erase", "endpoint": "erase"}


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("req-1", True),
        ("Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8", True),
        ("x" * 200, True),
        ("x" * 201, False),
        ("a\nforged: line", False),
        ("tab\there", False),
        ("caf\u00e9", False),
        ("   ", False),
    ],
)
def test_an_x_request_id_is_recorded_only_if_short_printable_ascii(make_app: Make, header: str, kept: bool) -> None:
    """An X-Request-ID of at most 200 printable ASCII characters is recorded as it is; a longer one, or one
    holding a control character or non-ASCII, is replaced by a new random id (never cut or cleaned)."""
    app, ext = make_app()
    seq = ext.image.seq
    environ = {"HTTP_X_REQUEST_ID": header}  # as a server passes it on, bypassing the client's header checks
    assert app.test_client().post("/inc", environ_overrides=environ).status_code == 200
    recorded = _txs(ext.image, seq)[0][0].meta["request"]
    if kept:
        assert recorded == header
    else:
        assert len(recorded) == 32 and all(c in "0123456789abcdef" for c in recorded)


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("ada", "ada"),
        (types.SimpleNamespace(id=5), 5),
        (types.SimpleNamespace(get_id=lambda: "u-1"), "u-1"),
        (2**53 - 1, 2**53 - 1),
        (2**63 - 1, str(2**63 - 1)),
        (-(2**53), str(-(2**53))),
        (types.SimpleNamespace(id=float("nan")), "nan"),
        (types.SimpleNamespace(id=float("-inf")), "-inf"),
    ],
)
def test_the_id_of_g_user(make_app: Make, user: Any, expected: Any) -> None:
    """g.user may be the id itself, an object with .id, or one with get_id(); an id that is no metadata
    scalar (an int beyond 2**53 - 1 either way, a float that is not finite) is recorded as its str."""
    app, ext = make_app(TEST_G_USER=user)
    _add_views(app)
    seq = ext.image.seq
    assert app.test_client().post("/inc").status_code == 200
    assert _txs(ext.image, seq)[0][0].meta["user"] == expected


def test_flask_login_current_user_is_the_user(make_app: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """With Flask-Login in use (imported, a login_manager on the app), an authenticated current_user's get_id()
    is the user, before g.user; an anonymous one falls back to g.user."""

    class CurrentUser:
        is_authenticated = True

        def get_id(self) -> str:
            return "login-3"

    login = types.ModuleType("flask_login")
    login.current_user = CurrentUser()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flask_login", login)
    app, ext = make_app(TEST_G_USER="from-g")
    app.login_manager = object()  # type: ignore[attr-defined]
    _add_views(app)
    seq = ext.image.seq
    client = app.test_client()
    assert client.post("/inc").status_code == 200
    login.current_user.is_authenticated = False  # type: ignore[attr-defined]
    assert client.post("/inc").status_code == 200
    assert [tx[0].meta["user"] for tx in _txs(ext.image, seq)] == ["login-3", "from-g"]


def test_request_annotation_is_configurable_and_can_be_turned_off(make_app: Make) -> None:
    """MEMIMG_ANNOTATE_KEYS picks the keys, MEMIMG_ANNOTATE_WITH returns the meta to record (here: one key
    added); MEMIMG_ANNOTATE=False records none."""
    app, ext = make_app(MEMIMG_ANNOTATE_KEYS=["endpoint"], MEMIMG_ANNOTATE_WITH=lambda meta: {**meta, "tenant": "acme"})
    seq = ext.image.seq
    assert app.test_client().post("/inc", headers={"X-Request-ID": "r"}).status_code == 200
    assert _txs(ext.image, seq)[0][0].meta == {"endpoint": "inc", "tenant": "acme"}


def test_request_annotation_off(tmp_path: Any) -> None:
    """MEMIMG_ANNOTATE=False: a request's commit writes no meta row."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(MEMIMG_ROOT=Counter, MEMIMG_TARGET=str(tmp_path / "image.db"), MEMIMG_ANNOTATE=False)
    ext = MemImg(app)

    @app.post("/inc")
    def inc() -> Any:
        counter().count += 1
        return {"count": counter().count}

    try:
        seq = ext.image.seq
        assert app.test_client().post("/inc", headers={"X-Request-ID": "r"}).status_code == 200
        assert ext.image.seq > seq
        assert all(e.kind != "tx.meta" and e.meta == {} for e in ext.image.events(seq))
    finally:
        ext.image.close()


@pytest.mark.parametrize(
    ("config", "setting", "words"),
    [
        ({"MEMIMG_ANNOTATE": "yes"}, "MEMIMG_ANNOTATE", "True or False"),
        ({"MEMIMG_ANNOTATE_KEYS": ["user", "ip"]}, "MEMIMG_ANNOTATE_KEYS", "unknown keys ['ip']"),
        ({"MEMIMG_ANNOTATE_KEYS": "user"}, "MEMIMG_ANNOTATE_KEYS", "list of keys"),
        ({"MEMIMG_ANNOTATE_WITH": "no_such_module:f"}, "MEMIMG_ANNOTATE_WITH", "cannot be imported"),
        ({"MEMIMG_ANNOTATE_WITH": 3}, "MEMIMG_ANNOTATE_WITH", "must be a function"),
    ],
)
def test_bad_annotation_settings_fail_at_init(tmp_path: Any, config: dict[str, Any], setting: str, words: str) -> None:
    """A wrong MEMIMG_ANNOTATE* setting raises ConfigError at init_app, naming it."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update({"MEMIMG_ROOT": Counter, "MEMIMG_TARGET": str(tmp_path / "image.db"), **config})
    with pytest.raises(ConfigError) as info:
        MemImg(app)
    assert info.value.setting == setting and words in str(info.value)


# -- protection at rest ------------------------------------------------------------------


def test_keys_come_from_environment_variables_named_by_the_settings(
    make_app: Make, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MEMIMG_ENCRYPTION_KEY_ENV / MEMIMG_INTEGRITY_KEY_ENV name the variables holding the keys: the image is
    stored encrypted and opens only with them; a variable that is not set is a ConfigError naming the setting,
    and no message shows a key."""
    key, mac = "5a" * 32, "6b" * 32
    monkeypatch.setenv("APP_KEY", key)
    monkeypatch.setenv("APP_MAC", mac)
    _app, ext = make_app(
        MEMIMG_ENCRYPTION_KEY_ENV="APP_KEY", MEMIMG_INTEGRITY_KEY_ENV="APP_MAC", MEMIMG_COMPRESSION="zstd"
    )
    ext.image.root.count = 424242
    ext.image.close()
    assert b"424242" not in (tmp_path / "image.db").read_bytes()
    with memimg.open(str(tmp_path / "image.db"), encryption_key=key, integrity_key=mac) as img:
        assert img.root.count == 424242
    with pytest.raises(ConfigError, match="MEMIMG_ENCRYPTION_KEY_ENV.*NOT_SET_VARIABLE") as info:
        make_app(MEMIMG_ENCRYPTION_KEY_ENV="NOT_SET_VARIABLE", MEMIMG_INTEGRITY_KEY_ENV="APP_MAC")
    assert mac not in str(info.value)
    with pytest.raises(ConfigError, match="MEMIMG_TARGET") as opened:
        make_app(MEMIMG_ENCRYPTION_KEY="7c" * 32, MEMIMG_INTEGRITY_KEY_ENV="APP_MAC")  # another key: refused
    assert "7c" * 32 not in str(opened.value) and mac not in str(opened.value)
