"""Flask integration: one memory image per app and process, one transaction per request.

::

    from memimg.contrib.flask import MemImg

    memimg_ext = MemImg()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["MEMIMG_ROOT"] = "bank.models:Bank"
        memimg_ext.init_app(app)
        return app

**Protection at rest** (see docs/security.md): ``MEMIMG_ENCRYPTION_KEY_ENV``
and ``MEMIMG_INTEGRITY_KEY_ENV`` name the environment variables holding the
keys (or ``MEMIMG_ENCRYPTION_KEY`` / ``MEMIMG_INTEGRITY_KEY`` give them, from
a secret store); ``MEMIMG_COMPRESSION`` is ``"zstd"`` or ``"zlib"``. Keys are
never shown in messages.

**Opening.** :meth:`MemImg.init_app` reads the ``MEMIMG_*`` settings and
opens the image at once, so a wrong setting stops the app from being created
with a :class:`ConfigError` that names the setting. There is one image per
app and per process: a worker forked after the app was created (``gunicorn
--preload``) must not share its parent's database connection, so the first
use in a new process opens the image again there. Every image opened here is
closed when the interpreter exits (``atexit``); ``ext.image.close()`` closes
one sooner.

**The request transaction.** ``init_app`` sets ``app.dispatch_request`` --
on the app instance, wrapping whatever was there -- to run the view *and turn
its return value into a response* inside one transaction. Flask calls
``dispatch_request`` after the ``before_request`` functions and before the
error handlers and ``after_request`` functions, so the transaction covers
exactly the view and the making of its response (JSON encoding included):
what the response shows is what the transaction saw. A response with a
status ``MEMIMG_DISCARD_STATUS`` selects (by default 400 and above) discards
the transaction, any other commits it. An exception discards it too, except
an ``HTTPException`` (``abort(401)``) whose status that setting does not
select: its transaction commits before Flask answers.

**Retries.** A :class:`memimg.ConflictError` -- at commit, or raised by a
read of something a concurrent commit changed -- discards the transaction and
runs the view again in a new one, up to ``MEMIMG_RETRIES`` times, after a
short randomized pause. Past that the request fails with
:class:`TransactionConflict` (HTTP 409, a JSON body). Rerunning is safe for
the request itself -- Flask caches the body for ``request.get_data()``,
``request.get_json()`` and ``request.form`` -- but not for anything a view
does outside the image: ``g``, the session, ``flash`` and
``after_this_request`` keep what an earlier attempt put there, and an email
sent by a failed attempt stays sent. Register such things with
:func:`after_commit`, which runs them once, after the commit that made their
attempt count, or make them idempotent.

**Who and what.** Each request's commits -- its transaction, and the
changes of a ``no_transaction`` view -- carry metadata (``img.annotate``):
``user`` (Flask-Login's ``current_user.get_id()`` when one is signed in,
else the id of ``g.user`` when a ``before_request`` function set it),
``request`` (the ``X-Request-ID`` header, or a new random id) and
``endpoint`` (``request.endpoint``). ``MEMIMG_ANNOTATE``,
``MEMIMG_ANNOTATE_KEYS`` and ``MEMIMG_ANNOTATE_WITH`` configure it (see
:class:`MemImg`).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Container, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import click
from flask import Blueprint, Flask, current_app, g, has_app_context, request
from flask.cli import with_appcontext
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Conflict, HTTPException
from werkzeug.local import LocalProxy
from werkzeug.utils import ImportStringError, import_string
from werkzeug.wrappers import Response

import memimg
from memimg import MemoryImage
from memimg.cli import cli as memimg_cli
from memimg.cli._embed import target_index
from memimg.contrib import _requests
from memimg.contrib._keys import protection_options, redacted
from memimg.image._retry import backoff

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "DEFAULT_DISCARD_STATUS",
    "DEFAULT_RETRIES",
    "ConfigError",
    "MemImg",
    "TransactionConflict",
    "after_commit",
    "image",
    "inspector",
    "no_transaction",
    "root",
]

F = TypeVar("F", bound=Callable[..., Any])

#: ``MEMIMG_RETRIES`` when unset: reruns of a view whose transaction conflicted.
DEFAULT_RETRIES: Final = 3
#: ``MEMIMG_DISCARD_STATUS`` when unset: responses with this status or above discard the transaction.
DEFAULT_DISCARD_STATUS: Final = 400

_EXTENSION_KEY: Final = "memimg"
_NO_TX_MARK: Final = "_memimg_no_transaction"

log = logging.getLogger("memimg.flask")

# the after-commit callbacks of the running attempt of the request's view
_callbacks: contextvars.ContextVar[list[Callable[[], object]] | None] = contextvars.ContextVar(
    "memimg_flask_after_commit", default=None
)


class ConfigError(memimg.MemimgError, RuntimeError):
    """A ``MEMIMG_*`` setting is missing or wrong, so the app cannot start.

    Attribute: ``setting`` (the config key at fault).
    """

    setting: str


class TransactionConflict(Conflict):
    """HTTP 409: the request's transaction still conflicted after ``MEMIMG_RETRIES`` reruns.

    Rendered as JSON: ``{"error": "conflict", "message": ..., "attempts": n}``.
    Register ``@app.errorhandler(TransactionConflict)`` to answer otherwise.
    Attributes: ``conflict`` (the last :class:`memimg.ConflictError`),
    ``attempts`` (how many times the view ran).
    """

    def __init__(self, conflict: memimg.ConflictError, attempts: int) -> None:
        times = "once" if attempts == 1 else f"{attempts} times"
        super().__init__(
            f"the request conflicted with concurrent changes and was run {times}; nothing was changed, try again"
        )
        self.conflict = conflict
        self.attempts = attempts

    def get_body(self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None) -> str:
        return json.dumps({"error": "conflict", "message": self.description, "attempts": self.attempts})

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json")]


def no_transaction(view: F) -> F:
    """Mark a view to run outside the request transaction.

    For views that stream their response, wait a long time, or manage their
    own transactions: each mutation they make outside a ``with
    image.transaction():`` commits by itself, and nothing is retried.
    """
    view.__dict__[_NO_TX_MARK] = True
    return view


def after_commit(fn: F) -> F:
    """Run *fn* (no arguments) once the request's transaction has committed.

    For what must not happen twice, or at all if the changes are discarded:
    sending an email, calling another service, enqueueing a task. The
    callbacks of an attempt that is discarded or rerun are dropped; those of
    the committed attempt run in order, after the commit and before the
    ``after_request`` functions. A callback that raises is logged and the
    others still run: the response reports the committed state. Returns *fn*,
    so it also works as a decorator.

    Raises:
        RuntimeError: called outside a view running in a request transaction.
    """
    pending = _callbacks.get()
    if pending is None:
        raise RuntimeError("after_commit needs a view running in the request transaction of a MemImg app")
    pending.append(fn)
    return fn


# -- open images, closed at exit -----------------------------------------------------

_opened: weakref.WeakKeyDictionary[MemoryImage, int] = weakref.WeakKeyDictionary()


@atexit.register
def _close_all() -> None:
    """Close the images this process opened (a forked child leaves its parent's alone)."""
    pid = os.getpid()
    for img, owner in list(_opened.items()):
        if owner == pid:
            try:
                img.close()
            except Exception as err:  # exiting anyway: say so, close the others
                log.warning("closing %r at exit failed: %s", img, err)


# -- settings ----------------------------------------------------------------------------


def _config_error(setting: str, message: str) -> ConfigError:
    return ConfigError(f"{setting}: {message}", setting=setting)


def _protection_error(setting: str, message: str) -> ConfigError:
    return _config_error(f"MEMIMG_{setting}", message)


def _resolve_root(value: Any) -> Callable[[], Any]:
    if value is None:
        raise _config_error(
            "MEMIMG_ROOT",
            "not set; set it to the root class, e.g. app.config['MEMIMG_ROOT'] = 'myapp.models:Bank'",
        )
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportStringError as err:
            raise _config_error(
                "MEMIMG_ROOT",
                f"{value!r} does not name an importable object ({err.exception}); "
                "write 'package.module:Class' or 'package.module.Class'",
            ) from err
    if not callable(value):
        raise _config_error("MEMIMG_ROOT", f"must be a class or a zero-argument factory, not {value!r}")
    return value  # type: ignore[no-any-return]


def _resolve_target(app: Flask, value: Any) -> str | memimg.Store:
    if value is None:
        os.makedirs(app.instance_path, exist_ok=True)
        return os.path.join(app.instance_path, "memimg.db")
    if isinstance(value, memimg.Store):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise _config_error(
            "MEMIMG_TARGET", f"must be a file path, a database URL or a memimg.Store, not {type(value).__qualname__}"
        )
    text = os.fspath(value)
    if not text:
        raise _config_error("MEMIMG_TARGET", "is empty; leave it unset for instance_path/memimg.db")
    if text == ":memory:" or "://" in text or os.path.isabs(text):
        return text
    os.makedirs(app.instance_path, exist_ok=True)
    return os.path.join(app.instance_path, text)


def _resolve_discard_status(value: Any) -> Callable[[int], bool]:
    if value is None:
        return lambda status: False
    if isinstance(value, int) and not isinstance(value, bool):
        return lambda status: status >= value
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, Container) and not isinstance(value, (str, bytes)):
        return value.__contains__
    raise _config_error(
        "MEMIMG_DISCARD_STATUS",
        "must be a status (responses at or above it discard), a container of statuses, "
        f"a function of the status, or None (no status discards), not {value!r}",
    )


# -- per app -------------------------------------------------------------------------------


@final
class _AppState:
    """One app's image (reopened in a forked process) and request-transaction settings."""

    __slots__ = (
        "_image",
        "_lock",
        "_pid",
        "annotate_keys",
        "annotate_with",
        "discards",
        "options",
        "protection",
        "retries",
        "root",
        "target",
    )

    def __init__(self, app: Flask) -> None:
        config = app.config
        self.root = _resolve_root(config.get("MEMIMG_ROOT"))
        self.target = _resolve_target(app, config.get("MEMIMG_TARGET"))
        options = config.get("MEMIMG_OPTIONS") or {}
        if not isinstance(options, Mapping):
            raise _config_error("MEMIMG_OPTIONS", f"must be a dict of memimg.open options, not {options!r}")
        if "root" in options:
            raise _config_error("MEMIMG_OPTIONS", "must not hold 'root'; set MEMIMG_ROOT instead")
        self.options: dict[str, Any] = dict(options)
        #: the protection options (keys), kept out of ``options``, whose values messages show
        self.protection = protection_options(lambda name: config.get(f"MEMIMG_{name}"), _protection_error)
        retries = config.get("MEMIMG_RETRIES", DEFAULT_RETRIES)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise _config_error("MEMIMG_RETRIES", f"must be an int >= 0, not {retries!r}")
        self.retries: int = retries
        self.discards = _resolve_discard_status(config.get("MEMIMG_DISCARD_STATUS", DEFAULT_DISCARD_STATUS))
        self.annotate_keys, self.annotate_with = _resolve_annotate(config)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._image = self._open()

    def _open(self) -> MemoryImage:
        described = self.target if isinstance(self.target, str) else type(self.target).__qualname__
        try:
            img = memimg.open(self.target, root=self.root, **self.options, **self.protection)
        except (memimg.SchemaError, memimg.CorruptLogError, memimg.LockedError):
            raise  # about the stored data, not the settings; their messages say what to do
        except memimg.MemimgError as err:
            raise _config_error("MEMIMG_TARGET", f"cannot open {described!r}: {err.message}") from err
        except (TypeError, ValueError) as err:
            raise _config_error(
                "MEMIMG_OPTIONS",
                f"memimg.open({described!r}, root=MEMIMG_ROOT, **MEMIMG_OPTIONS) failed: {err}; "
                f"check MEMIMG_OPTIONS={redacted(self.options)!r} and MEMIMG_ROOT",
            ) from err
        _opened[img] = os.getpid()
        return img

    @property
    def image(self) -> MemoryImage:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._image = self._open()
                    self._pid = os.getpid()
        return self._image

    def annotation(self) -> contextlib.AbstractContextManager[Any]:
        """The annotation of the current request's commits (a no-op when ``MEMIMG_ANNOTATE`` is off)."""
        if self.annotate_keys is None:
            return contextlib.nullcontext()
        meta = _requests.request_meta(
            self.annotate_keys,
            user=_request_user,
            request=lambda: _requests.request_id(request.headers.get("X-Request-ID")),
            endpoint=lambda: request.endpoint,
        )
        if self.annotate_with is not None:
            meta = self.annotate_with(meta) or {}
        return self.image.annotate(**meta)

    def run(self, app: Flask, dispatch: Callable[[], ResponseReturnValue]) -> Response:
        """Run the view in a transaction, rerunning it on conflict (see the module docstring)."""
        image = self.image
        attempt = 0
        while True:
            attempt += 1
            tx = image.begin()
            pending: list[Callable[[], object]] = []
            token = _callbacks.set(pending)
            try:
                with tx:
                    try:
                        response = app.make_response(dispatch())
                    except HTTPException as exc:
                        status = exc.response.status_code if exc.response is not None else exc.code
                        if status is not None and not self.discards(status):
                            tx.save()
                            _run_callbacks(app, pending)
                        raise
                    if self.discards(response.status_code):
                        tx.discard()
                        return response
                _run_callbacks(app, pending)
                return response
            except memimg.ConflictError as err:
                if tx.nested:  # the caller's transaction is the one to rerun
                    raise
                if attempt > self.retries:
                    app.logger.warning("%s %s: %s (ran %d times)", request.method, request.path, err, attempt)
                    raise TransactionConflict(err, attempt) from err
                app.logger.debug("%s %s: rerunning after a conflict: %s", request.method, request.path, err)
                time.sleep(backoff(attempt))
            finally:
                _callbacks.reset(token)


def _resolve_annotate(config: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, Callable[..., Any] | None]:
    """The ``MEMIMG_ANNOTATE*`` settings: the keys to record (None: off) and the function."""
    return _requests.annotate_settings(
        config.get("MEMIMG_ANNOTATE", True),
        config.get("MEMIMG_ANNOTATE_KEYS", _requests.KEYS),
        config.get("MEMIMG_ANNOTATE_WITH"),
        error=lambda suffix, message: _config_error(f"MEMIMG_ANNOTATE{suffix}", message),
        load=_import_callable,
    )


def _import_callable(path: str) -> Any:
    try:
        return import_string(path)
    except ImportStringError as err:
        raise ImportError(str(err.exception)) from err


def _request_user() -> Any:
    """The signed-in user's id: Flask-Login's ``current_user``, else ``g.user``; None when there is none."""
    login = sys.modules.get("flask_login")  # only an app that imported Flask-Login uses it
    if login is not None and hasattr(current_app, "login_manager"):
        user = login.current_user
        if user is not None and user.is_authenticated:
            return user.get_id()
    return _requests.user_id(g.get("user"))


def _run_callbacks(app: Flask, pending: list[Callable[[], object]]) -> None:
    for fn in pending:
        try:
            fn()
        except Exception:
            app.logger.exception("after_commit callback %r failed (the transaction is committed)", fn)


def _wrap_dispatch(app: Flask, state: _AppState) -> None:
    dispatch = app.dispatch_request

    def dispatch_request() -> ResponseReturnValue:
        rule = request.url_rule
        if request.routing_exception is not None or rule is None:
            return dispatch()
        view = app.view_functions.get(rule.endpoint)
        with state.annotation():
            if getattr(view, _NO_TX_MARK, False):
                return dispatch()
            return state.run(app, dispatch)

    app.dispatch_request = dispatch_request  # type: ignore[method-assign]


# -- the extension ---------------------------------------------------------------------


class MemImg:
    """The Flask extension: ``MemImg(app)``, or ``ext = MemImg()`` then ``ext.init_app(app)``.

    Settings (``app.config``, read by :meth:`init_app`):

    ``MEMIMG_ROOT`` (required)
        the root class or zero-argument factory, or its import string
        (``"package.module:Class"`` or ``"package.module.Class"``).
    ``MEMIMG_TARGET``
        what :func:`memimg.open` opens: a file path (relative paths are
        relative to ``app.instance_path``), ``":memory:"``, a SQLAlchemy URL
        or a :class:`memimg.Store`. Default: ``instance_path/memimg.db``.
    ``MEMIMG_OPTIONS``
        a dict of further :func:`memimg.open` options (``sync``,
        ``snapshot_every``, ``follow``, ...).
    ``MEMIMG_RETRIES``
        reruns of a view whose transaction conflicted (default 3; 0: none).
    ``MEMIMG_DISCARD_STATUS``
        which responses discard the request's transaction: a status (those at
        or above it; default 400), a container of statuses
        (``range(500, 600)``), a function of the status, or ``None`` (none).
    ``MEMIMG_ANNOTATE``
        ``False`` turns off the metadata each request's commits carry
        (default ``True``; see the module docstring).
    ``MEMIMG_ANNOTATE_KEYS``
        which of ``"user"``, ``"request"``, ``"endpoint"`` to record (default
        all three).
    ``MEMIMG_ANNOTATE_WITH``
        a function (or its import string) called in the request context with
        the metadata of those keys, returning the metadata to record: add
        keys (``{**meta, "tenant": g.tenant}``), change or drop them.

    Raises:
        ConfigError: from :meth:`init_app`, naming the setting at fault.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._states: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Open *app*'s image and wrap each of its requests in a transaction.

        Also registers ``app.extensions["memimg"]`` (this extension) and the
        ``flask memimg`` command (the memimg command line on the app's image).

        Raises:
            ConfigError: a ``MEMIMG_*`` setting is missing or wrong, or the
                target cannot be opened.
            RuntimeError: a MemImg is already registered on *app*.
        """
        if _EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"a MemImg extension is already registered on the app {app.name!r}")
        state = _AppState(app)
        self._states[app] = state
        app.extensions[_EXTENSION_KEY] = self
        _wrap_dispatch(app, state)
        app.cli.add_command(_cli)

    @property
    def image(self) -> MemoryImage:
        """The image of the current app (or, outside an app context, of the only app initialised)."""
        return self._state().image

    @property
    def root(self) -> Any:
        """The root object of :attr:`image`."""
        return self._state().image.root

    def _state(self) -> _AppState:
        if has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
            state = self._states.get(app)
            if state is None:
                raise RuntimeError(f"MemImg is not initialised on the app {app.name!r}; call init_app(app) first")
            return state
        states = list(self._states.values())
        if len(states) == 1:
            return states[0]
        if not states:
            raise RuntimeError("MemImg is not initialised on any app; call init_app(app) first")
        raise RuntimeError(
            f"MemImg is initialised on {len(states)} apps: use it inside an app context (with app.app_context():)"
        )

    def __repr__(self) -> str:
        return f"<MemImg on {len(self._states)} app(s)>"


def _current_image() -> MemoryImage:
    ext = current_app.extensions.get(_EXTENSION_KEY)
    if not isinstance(ext, MemImg):
        raise RuntimeError(f"MemImg is not initialised on the app {current_app.name!r}; call init_app(app) first")
    return ext.image


#: The current app's :class:`memimg.MemoryImage` (a proxy; needs an app context).
image: MemoryImage = LocalProxy(_current_image)  # type: ignore[assignment]
#: The root object of the current app's image (a proxy; needs an app context).
#: ``root._get_current_object()`` is the object itself, for ``is`` comparisons.
root: Any = LocalProxy(lambda: _current_image().root)


# -- the inspector -------------------------------------------------------------------------------


def inspector(
    img: MemoryImage | None = None,
    *,
    url_prefix: str = "/_memimg",
    permission: Callable[[], bool] | None = None,
    debug: bool = False,
    name: str = "memimg_inspector",
    live: bool = True,
    stream_lifetime: float = 300.0,
) -> Blueprint:
    """The inspector (``memimg serve``'s read-only web UI) as a blueprint to mount in the app.

    ::

        app.register_blueprint(
            memimg.contrib.flask.inspector(permission=lambda: current_user.is_admin)
        )

    *img* is the image to show; ``None``: the :class:`MemImg` image of the
    app serving the request. *permission* is called in each of the
    inspector's requests (``request``, ``g`` and Flask-Login's
    ``current_user`` are there) and returns whether the request may look;
    when it returns false the answer is 403. The inspector shows every
    value of the image, so a hook is required: without one the blueprint
    is refused unless *debug* is true (local development only: everyone who
    reaches the app then sees everything). Its views never write and run
    outside the request transaction. Other processes' commits appear live
    when the image follows them (``img.follow()``).

    *live*: whether open pages follow commits through a server-sent event
    stream. A stream holds a connection for up to *stream_lifetime*
    seconds (then the browser reconnects): under gunicorn's sync workers
    it holds a worker that long, so use threaded or async workers, or
    ``live=False`` (pages show the state when loaded). All the tabs of
    one browser share one stream.

    Raises:
        ValueError: no *permission* and not *debug*; *permission* is not callable.
    """
    from memimg.inspector import Inspector, blueprint, require_permission

    require_permission(
        permission,
        debug=debug,
        mount=f"memimg.contrib.flask.inspector(url_prefix={url_prefix!r})",
        takes="no arguments",
        example="lambda: current_user.is_admin",
    )
    target: MemoryImage | Callable[[], MemoryImage] = img if img is not None else _current_image
    return blueprint(
        Inspector(target),
        name=name,
        url_prefix=url_prefix,
        permission=permission,
        decorate=no_transaction,
        live=live,
        stream_lifetime=stream_lifetime,
    )


# -- flask memimg ... -------------------------------------------------------------------------


@click.command(
    "memimg",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def _cli(args: tuple[str, ...]) -> None:
    """The memimg command line on the app's image ('flask memimg --help' lists its commands).

    A command's TARGET defaults to the app's MEMIMG_TARGET; 'flask memimg snapshot' alone snapshots the
    app's image itself.
    """
    ext = current_app.extensions.get(_EXTENSION_KEY)
    if not isinstance(ext, MemImg):
        raise click.UsageError(f"MemImg is not initialised on the app {current_app.name!r}")
    state = ext._state()
    if list(args) == ["snapshot"]:  # the process's own image: works for targets the command line cannot open
        click.echo(f"snapshot written at seq {state.image.snapshot()}")
        return
    memimg_cli.main(args=_with_app_target(list(args), state), prog_name="flask memimg", standalone_mode=True)


def _with_app_target(args: list[str], state: _AppState) -> list[str]:
    """*args* with the app's target (and the schema and prefix of its options) where the user left TARGET out."""
    index = target_index(args)
    if index is None:
        return args
    target = state.target
    if not isinstance(target, str) or target == ":memory:":
        described = target if isinstance(target, str) else type(target).__qualname__
        click.echo(f"memimg: the app's MEMIMG_TARGET ({described}) cannot be opened again here: give TARGET", err=True)
        return args
    options = [
        f"--{key}={state.options[key]}"
        for key in ("schema", "prefix")
        if state.options.get(key) is not None and not any(a.split("=")[0] == f"--{key}" for a in args)
    ]
    return [*args[:index], target, *options, *args[index:]]
