"""The ``memimg`` command line (also ``python -m memimg``).

Every command takes a TARGET -- an SQLite file path or a database URL -- and
works without the application's code: types no loaded class claims are read
into generic stand-ins made from the schema the log declares. Pass
``--import myapp.models`` (or set ``MEMIMG_IMPORT``) to use the real classes.

Errors print one line and exit with status 1 (``--debug`` shows the
traceback); long operations show a progress bar on a terminal and stay quiet
in pipes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Final, NoReturn

import click

import memimg
from memimg import _api
from memimg._errors import MemimgError
from memimg.image import _past
from memimg.image._image import open_past
from memimg.stores._protocol import Store

__all__ = [
    "CLOSED_PIPE_STATUS",
    "PAST_OPTIONS",
    "cli",
    "key_from_env",
    "open_at",
    "open_image",
    "open_store",
    "past_image",
    "past_store",
    "point",
    "progress_callback",
    "protection_option",
    "url_options",
    "with_progress",
]


class _Group(click.Group):
    """The memimg group: global options anywhere on the line, one clear line per error, quiet on a closed pipe.

    Every subcommand added gets the global options too (see :func:`_global_options`),
    so ``memimg verify x.db --import m`` works like ``memimg --import m verify x.db``.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(_global_options(cmd))
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a reader that went away is found here, not by Python's flush at exit
            return result
        except BrokenPipeError:
            _reader_gone()
        except (MemimgError, OSError, KeyError, ValueError) as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            click.echo(f"memimg: error: {message}", err=True)
            sys.exit(1)


#: The exit status after the reader of the output went away: 128 + SIGPIPE, what a shell reports for a
#: program a closed pipe ended (``yes | head``, ``git log | head``).
CLOSED_PIPE_STATUS = 141


def _reader_gone() -> NoReturn:
    """End quietly: whoever read the output went away (``memimg log x.db | head -1``).

    Standard output is pointed at ``/dev/null`` first, so that Python's own
    flush at exit has nowhere to fail (the recipe of Python's documentation,
    "Note on SIGPIPE"); no message, and the status a closed pipe gives.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (a test's captured output)
        pass
    sys.exit(CLOSED_PIPE_STATUS)


def _global_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the subcommand: into ``ctx.obj``, as the group does (modules imported now,
    before the command opens anything)."""
    if ctx.resilient_parsing or value in (None, False, ()):
        return
    if param.name == "imports":
        _import_modules(value)
    else:
        ctx.ensure_object(dict)[param.name] = value


def _global_options(cmd: click.Command) -> list[click.Option]:
    """The group's own options, for *cmd* to take after its name (those *cmd* does not define itself)."""
    taken = {opt for p in cmd.params for opt in p.opts}
    return [
        click.Option(
            [*o.opts, *o.secondary_opts, o.name or ""],
            is_flag=o.is_flag,
            multiple=o.multiple,
            metavar=o.metavar,
            help=o.help,
            expose_value=False,
            callback=_global_option,
        )
        for o in _GLOBAL_OPTIONS
        if not taken & set(o.opts)
    ]


def _import_modules(modules: Iterable[str]) -> None:
    """Import what --import and MEMIMG_IMPORT name: the only code the command line runs besides memimg's.

    Reading a log never imports a module it names (a crafted log could name
    any); only with names given here is the working directory put on
    ``sys.path``, so an application's own modules import as with ``python -m``.
    """
    names = [n.strip() for n in [*modules, *os.environ.get("MEMIMG_IMPORT", "").split(",")] if n.strip()]
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _api.import_modules(names, "--import/MEMIMG_IMPORT")


def oid_and_field(what: str) -> tuple[int, str | None] | None:
    """``OID[.FIELD]`` as ``(oid, field or None)``, or None if *what* is not of that form.

    The id is read from ASCII digits, a minus sign allowed: an id out of
    range is for the command to name, with the range.
    """
    oid_text, dot, field = what.partition(".")
    digits = oid_text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or (dot and not field):
        return None
    return int(oid_text), field or None


def open_store(target: str, *, readonly: bool) -> Store:
    if "://" not in target and target != ":memory:" and not os.path.exists(target):
        raise MemimgError(f"{target!r} does not exist")
    return _api.store_for(target, readonly=readonly, protection=protection_option(), **url_options(target))


#: The environment variables a key is read from when no --*-key-env option names another.
KEY_VARIABLES: Final = {"encryption_key": "MEMIMG_ENCRYPTION_KEY", "integrity_key": "MEMIMG_INTEGRITY_KEY"}


def key_from_env(name: str | None, what: str) -> str | None:
    """The key in environment variable *name* (None: the default variable's, if set).

    Keys are read from the environment, never the command line (where
    ``ps`` and the shell history would show them).
    """
    if name is None:
        return os.environ.get(KEY_VARIABLES[what]) or None
    value = os.environ.get(name)
    if not value:
        raise MemimgError(f"the environment variable {name} (named for the {what.replace('_', ' ')}) is not set")
    return value


def protection_option() -> Any:
    """The :class:`Protection` the global --encryption-key-env/--integrity-key-env options give (None: none)."""
    ctx = click.get_current_context(silent=True)
    obj = (ctx.obj if ctx is not None else None) or {}
    protection, failure = _api.protection_for(
        key_from_env(obj.get("encryption_key_env"), "encryption_key"),
        key_from_env(obj.get("integrity_key_env"), "integrity_key"),
        None,
    )
    if failure is not None:
        raise failure.with_traceback(None)
    return protection


def url_options(target: str) -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    if "://" not in target or ctx is None or not ctx.obj:
        return {}
    return {k: ctx.obj[k] for k in ("schema", "prefix") if ctx.obj.get(k)}


def open_image(target: str, *, writable: bool = False) -> memimg.MemoryImage:
    store = open_store(target, readonly=True)  # refuses, untouched, anything that is not an image
    if store.head() == 0 and not store.snapshots():
        store.close()
        raise MemimgError(f"{target!r} holds no memimg image (its log is empty)")
    if writable:
        store.close()
        store = open_store(target, readonly=False)
    try:
        img = memimg.open(
            store,
            readonly=not writable,
            generic_types=True,
            on_schema_drift="drop",
            snapshot_every=None,
            progress=progress_callback(),
        )
    except BaseException:
        store.close()
        raise
    differences = img.schema_report.differences
    if writable and differences:
        img.close()
        lines = "\n".join(f"  - {d}" for d in differences)
        raise MemimgError(
            f"refusing to write to {target!r}: the stored schema differs from the classes loaded, and a "
            f"snapshot would write that loss into the image; nothing was changed:\n{lines}"
        )
    return img


#: A seq as the command line takes it: ASCII digits (``int`` would take other scripts' digits too).
_SEQ: Final = re.compile(r"-?[0-9]+")


def point(store: Store, text: str) -> int:
    """The seq a SEQ|TIME argument (a seq, or an ISO time with its offset) names in *store*, checked as ``img.at``."""
    text = text.strip()
    if _SEQ.fullmatch(text):
        return _past.check_seq(store, int(text))
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise MemimgError(
            f"{text!r} is neither a seq nor an ISO time (such as 2026-12-01T12:00:00+00:00 or 2026-12-01T12:00Z)"
        ) from None
    if when.tzinfo is None:
        raise MemimgError(
            f"the time {text!r} has no UTC offset: write it as {text}+00:00 (UTC), {text}Z, or with your offset"
        )
    return _past.resolve(store, None, when)


@contextlib.contextmanager
def past_store(target: str) -> Iterator[Store]:
    """*target*'s store, read-only, for opening past states of it (closed at the end)."""
    store = open_store(target, readonly=True)  # refuses, untouched, anything that is not an image
    try:
        if store.head() == 0 and not store.snapshots():
            raise MemimgError(f"{target!r} holds no memimg image (its log is empty)")
        yield store
    finally:
        store.close()


#: How the tools read a past state (:func:`open_at`, ``diff``): as they read the present.
PAST_OPTIONS: Final[dict[str, Any]] = {"generic_types": True, "on_schema_drift": "drop"}


def open_at(store: Store, seq: int) -> memimg.MemoryImage:
    """The image of *store* as of *seq* (checked), read as the tools read: the snapshot at or before it and the
    events up to it, so the state now is never read first."""
    return open_past(store, seq, progress=progress_callback(), **PAST_OPTIONS)


@contextlib.contextmanager
def past_image(target: str, at: str) -> Iterator[memimg.MemoryImage]:
    """The image of *target* as of *at* (a SEQ|TIME argument), closed at the end."""
    with past_store(target) as store, open_at(store, point(store, at)) as img:
        yield img


def _tty() -> bool:
    return sys.stderr.isatty()


def progress_callback() -> Any:
    if not _tty():
        return None
    state: dict[str, Any] = {}

    def report(phase: str, done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label=phase, file=sys.stderr)
            bar.__enter__()
            state["bar"] = bar
        bar.update(done - state.get("done", 0))
        state["done"] = done
        if done >= total:
            bar.__exit__(None, None, None)
            state.clear()

    return report


def with_progress(items: Iterable[Any], total: int, label: str) -> Iterator[Any]:
    """*items*, a progress bar on a terminal's stderr counting them (up to *total*); *items* as they are
    elsewhere (no generator in the way of each item)."""
    if not _tty() or total < 1000:
        return iter(items)
    return _progress(items, total, label)


def _progress(items: Iterable[Any], total: int, label: str) -> Iterator[Any]:
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        for i, item in enumerate(items, 1):
            yield item
            if not i % 500:
                bar.update(500)


#: The options of the group that every subcommand takes too (anywhere on the line).
_GLOBAL_OPTIONS = (
    click.Option(["--debug"], is_flag=True, help="Show full tracebacks on errors."),
    click.Option(
        ["--import", "-i", "imports"],
        multiple=True,
        metavar="MODULE",
        help="Import MODULE first, so its classes are used (repeatable; also MEMIMG_IMPORT=a,b).",
    ),
    click.Option(["--schema"], default=None, help="For a database URL: the schema holding memimg's tables."),
    click.Option(["--prefix"], default=None, help="For a database URL: the tables' prefix (default memimg_)."),
    click.Option(
        ["--encryption-key-env"],
        metavar="NAME",
        default=None,
        help="Read the log's encryption key from environment variable NAME (default: MEMIMG_ENCRYPTION_KEY, if set).",
    ),
    click.Option(
        ["--integrity-key-env"],
        metavar="NAME",
        default=None,
        help="Read the log's integrity key from environment variable NAME (default: MEMIMG_INTEGRITY_KEY, if set).",
    ),
)


@click.group(cls=_Group, params=list(_GLOBAL_OPTIONS))
@click.version_option(memimg.__version__, prog_name="memimg")
@click.pass_context
def cli(
    ctx: click.Context,
    debug: bool,
    imports: tuple[str, ...],
    schema: str | None,
    prefix: str | None,
    encryption_key_env: str | None,
    integrity_key_env: str | None,
) -> None:
    """Look into and operate memimg images. TARGET is an SQLite file or a database URL.

    The options below may also be given after the command (memimg verify shop.db --import shop.models).
    """
    ctx.obj = {
        "debug": debug,
        "schema": schema,
        "prefix": prefix,
        "encryption_key_env": encryption_key_env,
        "integrity_key_env": integrity_key_env,
    }
    _import_modules(imports)


# -- demo ------------------------------------------------------------------------


@cli.command()
@click.argument("path", default="memimg-demo.db")
def demo(path: str) -> None:
    """Run a small bank demo on an SQLite image (run it twice)."""
    from memimg._demo import run

    run(path)
