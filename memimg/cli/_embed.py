"""The command line inside an application: ``flask memimg ...`` and ``manage.py memimg ...``.

Both hand every argument to the :data:`memimg.cli.cli` group, in the
application's process -- so its ``@persistent`` classes are imported -- and
give a subcommand whose first argument is TARGET the application's
configured target when the user leaves it out (``flask memimg info``,
``manage.py memimg show accounts.ada``). Where TARGET goes is decided here,
once, by parsing the line as click will; what the configured target is, and
whether the command line can open it again, is each integration's business.
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.core import ParameterSource

from memimg.cli._main import cli

__all__ = ["target_index"]


def _given(ctx: click.Context, name: str | None) -> bool:
    if name is None:
        return False
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _command_index(args: list[str]) -> int | None:
    """Where the subcommand's name is in *args* (after the group's own options)."""
    takes_value = {
        opt for p in cli.params if isinstance(p, click.Option) and not p.is_flag and not p.count for opt in p.opts
    }
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return i + 1 if i + 1 < len(args) else None
        if not arg.startswith("-") or arg == "-":
            return i
        i += 2 if arg in takes_value else 1
    return None


def _looks_like_target(value: Any) -> bool:
    text = str(value)
    return "://" in text or text == ":memory:" or os.path.exists(text)


def target_index(args: list[str]) -> int | None:
    """Where in *args* the configured TARGET goes, or ``None``: the subcommand takes none, or it was given.

    TARGET counts as left out when it is not given, when a required argument
    after it is missing (``import dump.json``), or when what stands in its
    place is neither a URL nor an existing file and the next argument is
    free (``show accounts.ada``).
    """
    index = _command_index(args)
    if index is None or not isinstance(cli, click.Group):
        return None
    command = cli.commands.get(args[index])
    if command is None:
        return None
    positionals = [p for p in command.params if isinstance(p, click.Argument)]
    if not positionals or positionals[0].name != "target":
        return None
    try:
        ctx = command.make_context(args[index], args[index + 1 :], resilient_parsing=True)
    except click.ClickException:
        return None  # click will report it
    with ctx:  # closes what parsing opened (click.File arguments)
        later = positionals[1:]
        if _given(ctx, "target"):
            shifted = any(p.required and not _given(ctx, p.name) for p in later)
            free = bool(later) and not _given(ctx, later[0].name)
            if not shifted and (_looks_like_target(ctx.params.get("target")) or not free):
                return None
    return index + 1
