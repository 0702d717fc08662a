"""The ``memimg`` command line (``python -m memimg``)."""

from __future__ import annotations

import sys
from typing import Any

import click

import memimg


class _Group(click.Group):
    """Errors print one clear line and exit non-zero, unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except memimg.MemimgError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"memimg: error: {err}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(memimg.__version__, prog_name="memimg")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Look into and operate memimg images (TARGET is a file path or a database URL)."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("path", default="memimg-demo.db")
def demo(path: str) -> None:
    """Run a small bank demo on an SQLite image (run it twice)."""
    from memimg._demo import run

    run(path)
