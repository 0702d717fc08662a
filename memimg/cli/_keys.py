"""``memimg rekey``: change a log's keys (or protect a plain log, or unprotect one), crash-safely."""

from __future__ import annotations

import os

import click

import memimg
from memimg._errors import MemimgError
from memimg.cli._main import KEY_VARIABLES, cli, key_from_env, url_options


@cli.command()
@click.argument("target")
@click.option(
    "--new-encryption-key-env", metavar="NAME", default=None, help="Encrypt under the key in environment variable NAME."
)
@click.option("--no-encryption", is_flag=True, help="Store the rows unencrypted from now on.")
@click.option(
    "--new-integrity-key-env",
    metavar="NAME",
    default=None,
    help="Chain the rows under the integrity key in environment variable NAME.",
)
@click.option("--no-integrity", is_flag=True, help="Drop the integrity chain.")
@click.option(
    "--compression",
    type=click.Choice(["zstd", "zlib", "none"]),
    default=None,
    help="Compress with this from now on (default: as the log is).",
)
def rekey(
    target: str,
    new_encryption_key_env: str | None,
    no_encryption: bool,
    new_integrity_key_env: str | None,
    no_integrity: bool,
    compression: str | None,
) -> None:
    """Re-seal every row of TARGET under new keys (rotation), or protect a plain log, or unprotect one.

    The current keys are read as every command reads them (--encryption-key-env /
    --integrity-key-env NAME, or MEMIMG_ENCRYPTION_KEY / MEMIMG_INTEGRITY_KEY); a
    key neither replaced nor dropped is kept. Keys are never taken on the command
    line. Close every process that has TARGET open first. A crash at any point
    leaves TARGET openable with the old keys or the new ones.
    """
    if new_encryption_key_env and no_encryption:
        raise click.UsageError("--new-encryption-key-env and --no-encryption contradict each other")
    if new_integrity_key_env and no_integrity:
        raise click.UsageError("--new-integrity-key-env and --no-integrity contradict each other")
    ctx = click.get_current_context()
    obj = ctx.obj or {}
    old = {
        "encryption_key": key_from_env(obj.get("encryption_key_env"), "encryption_key"),
        "integrity_key": key_from_env(obj.get("integrity_key_env"), "integrity_key"),
    }
    new = dict(old)
    if new_encryption_key_env:
        new["encryption_key"] = key_from_env(new_encryption_key_env, "encryption_key")
    if no_encryption:
        new["encryption_key"] = None
    if new_integrity_key_env:
        new["integrity_key"] = key_from_env(new_integrity_key_env, "integrity_key")
    if no_integrity:
        new["integrity_key"] = None
    if compression is not None:
        new["compression"] = None if compression == "none" else compression
    else:
        new["compression"] = _stored_compression(target)
    if new == {**old, "compression": new["compression"]} and compression is None:
        raise click.UsageError(
            "nothing to change: give --new-encryption-key-env, --no-encryption, --new-integrity-key-env, "
            f"--no-integrity or --compression (the current keys come from {', '.join(KEY_VARIABLES.values())} "
            "or --encryption-key-env/--integrity-key-env)"
        )
    if "://" not in target and not os.path.exists(target):
        raise MemimgError(f"{target!r} does not exist")
    n = memimg.rekey(target, old_options=old, new_options=new, **url_options(target))
    del old, new
    click.echo(f"rekeyed {target}: {n} row(s) sealed anew")


def _stored_compression(target: str) -> str | None:
    from memimg._api import plain_store
    from memimg.core._protect import read_settings

    if "://" not in target and not os.path.exists(target):
        return None
    store = plain_store(target, sync="normal", readonly=True, busy_timeout=10.0, **url_options(target))
    try:
        settings = read_settings(store.meta()) or {}
    finally:
        store.close()
    value = settings.get("compression")
    return value if isinstance(value, str) else None
