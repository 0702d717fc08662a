"""The SQL projection: one table per class of an image, kept current from its change feed (``memimg.project``).

SQLAlchemy is imported only when a projection is made (it is the optional
``sqlalchemy`` extra).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memimg._projection._projector import Projection
    from memimg.image._image import MemoryImage

__all__ = ["project"]


def project(
    img: MemoryImage,
    target: Any,
    *,
    classes: Iterable[Any] | None = None,
    prefix: str = "",
    schema: str | None = None,
) -> Projection:
    """Keep one SQL table per class of *img* current in *target*, from the image's change feed; returns the
    running projection (``close()`` it, or use it as a context manager).

    Each table has an ``oid`` primary key and one column per field (typed
    from the field's annotation; references to persistent objects as their
    oid, collections and value objects as JSON); a meta table stores the
    seq up to which the tables hold the image, so a projection made again
    resumes there. It rebuilds every table when the target holds another
    image's tables, or when the commits after its seq were compacted away.
    The image follows the log (``img.follow()``) from then on, so other
    processes' commits are projected too. See the *Change feeds* guide.

    Args:
        img: the image to project (left open by ``close()``).
        target: a SQLAlchemy URL of a SQLite or PostgreSQL database (a plain
            path is a SQLite file), or an ``sqlalchemy.Engine`` on PostgreSQL (on SQLite, give the URL).
        classes: the ``@persistent`` classes (or their stored names) to
            project, subclasses included; ``None``: every class.
        prefix: put before every table's name (the meta table's too).
        schema: the PostgreSQL schema of the tables (created if missing).

    Raises:
        MemimgError: a class named is not one of the image's, the target is
            not a usable URL, cannot be reached, or holds a table of the same
            name the projection did not make.
        ImportError: SQLAlchemy is not installed (``pip install 'memimg[sqlalchemy]'``).
    """
    try:
        from memimg._projection._projector import Projection
    except ImportError as err:
        raise ImportError(
            "memimg.project() needs SQLAlchemy: pip install 'memimg[sqlalchemy]' (and psycopg for PostgreSQL)"
        ) from err
    return Projection(img, target, classes=classes, prefix=prefix, schema=schema)
