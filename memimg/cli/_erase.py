"""``memimg erase``: excise the past values of one object's field (or of all its fields) from the log."""

from __future__ import annotations

import click
import orjson

from memimg._errors import MemimgError
from memimg.cli._main import cli, oid_and_field, open_image
from memimg.image._erase import not_an_oid

__all__ = ["erase"]


@cli.command()
@click.argument("target")
@click.argument("what", metavar="OID[.FIELD]")
@click.option("--reason", required=True, help="Why (stored in the audit event), e.g. 'GDPR request 42'.")
@click.option("--by", default=None, help="Who asked (stored in the audit event).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def erase(target: str, what: str, reason: str, by: str | None, as_json: bool) -> None:
    """Replace every stored past value of OBJECT.FIELD (every field: OID alone) by ERASED.

    The current value is left alone; an 'erase' audit event records why and
    who, never the value. OID is the object's id (memimg show, memimg log);
    an object no longer in the image (deleted, and forgotten by a snapshot)
    is read from the log, and every stored value of it is erased.
    """
    parsed = oid_and_field(what)
    if parsed is None:
        raise MemimgError(
            f"{what!r} is not OID or OID.FIELD (an object id, e.g. 12 or 12.email; to erase every field, give "
            "the id alone); nothing was changed"
        )
    oid, field = parsed
    if oid < 1:  # before the image is opened (opening for writing touches the store)
        raise not_an_oid(oid)
    img = open_image(target, writable=True)
    try:
        result = img.erase(oid, field, reason=reason, by=by)
    finally:
        img.close()
    click.echo(orjson.dumps(result.as_dict()).decode() if as_json else result.note)
