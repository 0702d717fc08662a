"""``python manage.py memimg ...``: the memimg command line, on this project's image.

Every argument goes to the ``memimg`` click group (``memimg.cli:cli``), as
if ``python -m memimg`` had been run -- but inside the Django process, so the
project's ``@persistent`` classes are imported, and a subcommand whose first
argument is ``TARGET`` gets the configured image's target when it is left
out (``manage.py memimg info``, ``manage.py memimg show accounts.ada``).
``manage.py memimg snapshot``, with no other argument, snapshots the
configured image itself (which also works for ``SCHEMA``/``PREFIX`` and
``Store`` targets, that the command line cannot reopen).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped, unused-ignore]

from memimg import MemimgError, Store
from memimg.cli import cli
from memimg.cli._embed import target_index
from memimg.contrib.django import _runtime

__all__ = ["Command"]

_PROG = "manage.py memimg"
# options manage.py has already applied (ManagementUtility reads them before running a command)
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def _strip_django_options(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _DJANGO_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in _DJANGO_OPTIONS)):
            out.append(arg)
    return out


def with_default_target(args: list[str], notes: list[str]) -> list[str]:
    """*args* with the configured TARGET inserted where the subcommand expects it and the user left it out
    (see :func:`memimg.cli._embed.target_index`); a target the command line cannot open adds a note instead."""
    index = target_index(args)
    if index is None:
        return args
    config = _runtime.current_settings()
    target = config.target
    if isinstance(target, Store) or os.fspath(target) == ":memory:":
        notes.append(f"memimg: the configured TARGET ({config.description}) cannot be opened again here: give TARGET")
        return args
    for key in ("schema", "prefix"):
        if config.options.get(key) is not None:
            notes.append(
                f"memimg: settings.MEMIMG[{key.upper()!r}] is set, which the memimg command line does not take: "
                "give TARGET (or use 'manage.py memimg snapshot' for a snapshot)"
            )
            return args
    return [*args[:index], os.fspath(target), *args[index:]]


class Command(BaseCommand):  # type: ignore[misc, unused-ignore]
    help = (
        "Run the memimg command line on this project's image: manage.py memimg [--debug] COMMAND [ARGS]... "
        "('manage.py memimg --help' lists the commands; TARGET defaults to settings.MEMIMG['TARGET'])."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="a memimg command and its arguments")

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        # call_command() parses with this parser: hand every argument (--help, --debug, ...) to click.
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parse = parser.parse_args

        def parse_all(args: Any = None, namespace: Any = None) -> Any:
            options = parse([], namespace)
            options.args = [str(a) for a in args or ()]
            return options

        parser.parse_args = parse_all
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        # Django's option parser would claim --help and the memimg options: click gets every argument.
        args = _strip_django_options(argv[2:])
        code = self.run_memimg(args, f"{os.path.basename(argv[0])} {argv[1]}", sys.stdout, sys.stderr)
        if code:
            sys.exit(code)

    def handle(self, *args: str, **options: Any) -> None:
        out, err = io.StringIO(), io.StringIO()
        code = self.run_memimg(list(args), _PROG, out, err)
        self.stdout.write(out.getvalue(), ending="")
        self.stderr.write(err.getvalue(), ending="")
        if code:
            raise CommandError(f"memimg {' '.join(args)} exited with status {code}", returncode=code)

    def run_memimg(self, args: list[str], prog: str, out: Any, err: Any) -> int:
        """Run one memimg command line; returns its exit status."""
        if args == ["snapshot"]:
            try:
                seq = _runtime.image().snapshot()
            except MemimgError as error:
                err.write(f"memimg: error: {error}\n")
                return 1
            out.write(f"snapshot of {_runtime.current_settings().description} at seq {seq}\n")
            return 0
        notes: list[str] = []
        args = with_default_target(args, notes)
        for note in notes:
            err.write(note + "\n")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(args=args, prog_name=prog, standalone_mode=True)
            except SystemExit as exit_:
                code = exit_.code
            else:  # pragma: no cover - standalone mode always exits
                code = 0
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        err.write(f"{code}\n")
        return 1
