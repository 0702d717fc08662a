"""Reading ``settings.MEMIMG``: every mistake is an ``ImproperlyConfigured`` naming its key.

The setting is a dict::

    MEMIMG = {
        "TARGET": "default",               # a DATABASES alias, a path, ":memory:", a URL or a Store
        "ROOT": "bank.domain.Bank",        # dotted path to the root class or factory, or the object
        "OPTIONS": {"snapshot_every": 50_000},   # more keyword arguments of memimg.open
        "RETRIES": 3,                      # reruns of a request's view on ConflictError
        "DISCARD_STATUS": 400,             # responses with a status >= this are discarded
        "SCHEMA": None, "PREFIX": None,    # where the tables go in a database (SQLAlchemy targets)
        "LAZY": False,                     # open at the first use instead of at startup
        "ANNOTATE": True,                  # each request's commits carry who and what (False: off)
        "ANNOTATE_KEYS": ("user", "request", "endpoint"),   # which of those to record
        "ANNOTATE_WITH": None,             # fn(request, meta) -> the metadata to record (or its dotted path)
        "ENCRYPTION_KEY_ENV": "APP_MEMIMG_KEY",   # protection at rest (docs/security.md): the environment
        "INTEGRITY_KEY_ENV": "APP_MEMIMG_MAC",    # variables holding the keys (or ENCRYPTION_KEY /
        "COMPRESSION": "zstd",                    # INTEGRITY_KEY: the keys themselves); never shown
    }

A ``TARGET`` that names an entry of ``settings.DATABASES`` means "the
project's own database", so memimg's tables sit beside Django's. An SQLite
database is opened by its file path, with memimg's own SQLite store (WAL:
the same store, and the same speed, as a path given directly). The store
leaves the file in WAL mode, which Django's connections then use too (WAL is
a property of the file); that suits Django, whose readers then no longer
wait for writers. A PostgreSQL database -- or an SQLite one with ``SCHEMA``
or ``PREFIX``, which only the SQLAlchemy store takes -- is reached through
the SQLAlchemy URL built from its settings (:func:`database_url`). On SQLite
that route is several times slower per commit: it writes through
SQLAlchemy, in the journal mode the file is in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped, unused-ignore]
from django.utils.module_loading import import_string  # type: ignore[import-untyped, unused-ignore]

from memimg.contrib import _requests
from memimg.contrib._keys import SETTINGS, Hidden, protection_options
from memimg.stores import Store

__all__ = ["KEYS", "MemimgSettings", "database_url", "parse_settings", "sqlite_path", "url_for_database"]

#: Every key ``settings.MEMIMG`` may hold.
KEYS: Final = (
    "TARGET",
    "ROOT",
    "OPTIONS",
    "RETRIES",
    "DISCARD_STATUS",
    "SCHEMA",
    "PREFIX",
    "LAZY",
    "ANNOTATE",
    "ANNOTATE_KEYS",
    "ANNOTATE_WITH",
    *SETTINGS,
)

DEFAULT_RETRIES: Final = 3
DEFAULT_DISCARD_STATUS: Final = 400

# Django-only keys of a PostgreSQL OPTIONS dict (the rest are libpq connection parameters).
_DJANGO_PG_OPTIONS: Final = frozenset(
    {"assume_role", "isolation_level", "pool", "server_side_binding", "cursor_factory", "context", "prepare_threshold"}
)


def _error(key: str | None, message: str) -> ImproperlyConfigured:
    where = "settings.MEMIMG" if key is None else f"settings.MEMIMG[{key!r}]"
    return ImproperlyConfigured(f"{where} {message}")


@dataclass(frozen=True, slots=True)
class MemimgSettings:
    """``settings.MEMIMG``, checked and resolved.

    ``target`` is what ``memimg.open`` receives: the ``TARGET`` as given,
    or, for the database it names (``alias``), the SQLite file or the
    SQLAlchemy URL built from its settings.
    ``description`` is the same without a password, for messages.
    """

    target: str | os.PathLike[str] | Store = field(repr=False)
    description: str
    root: Callable[[], Any]
    root_name: str
    options: dict[str, Any] = field(default_factory=dict)
    retries: int = DEFAULT_RETRIES
    discard_status: int | None = DEFAULT_DISCARD_STATUS
    alias: str | None = None
    lazy: bool = False
    #: the request metadata keys to record (None: annotating is off), and the function that adds to them
    annotate_keys: tuple[str, ...] | None = _requests.KEYS
    annotate_with: Callable[[Any, dict[str, Any]], Any] | None = None
    #: the protection options (keys): apart from ``options``, never shown
    protection: Hidden = field(default_factory=Hidden, repr=False)

    def open_options(self) -> dict[str, Any]:
        """The keyword arguments of ``memimg.open`` besides the target."""
        return {"root": self.root, **self.options, **self.protection}


def parse_settings(value: Any, databases: Mapping[str, Any]) -> MemimgSettings:
    """Check ``settings.MEMIMG`` (*value*) and resolve its target and root.

    Raises:
        ImproperlyConfigured: a key is missing, unknown or of the wrong kind;
            the root cannot be imported; the target is not a usable URL or
            names a database memimg cannot reach.
    """
    if value is None:
        raise ImproperlyConfigured(
            'settings.MEMIMG is missing: set it to a dict such as {"TARGET": "default", "ROOT": "app.domain.Root"}'
        )
    if not isinstance(value, Mapping):
        raise _error(None, f"must be a dict, not {type(value).__qualname__}")
    unknown = sorted(str(k) for k in value if k not in KEYS)
    if unknown:
        raise _error(None, f"has unknown keys {', '.join(unknown)}; the keys are {', '.join(KEYS)}")
    root, root_name = _root(value.get("ROOT"))
    options = _options(value.get("OPTIONS", {}))
    retries = value.get("RETRIES", DEFAULT_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise _error("RETRIES", f"must be an int >= 0 (reruns of a conflicting request), not {retries!r}")
    discard = value.get("DISCARD_STATUS", DEFAULT_DISCARD_STATUS)
    if discard is not None and (isinstance(discard, bool) or not isinstance(discard, int) or not 100 <= discard <= 600):
        raise _error(
            "DISCARD_STATUS",
            f"must be an HTTP status (responses with a status >= it are discarded) or None, not {discard!r}",
        )
    lazy = value.get("LAZY", False)
    if not isinstance(lazy, bool):
        raise _error("LAZY", f"must be True or False, not {lazy!r}")
    annotate_keys, annotate_with = _requests.annotate_settings(
        value.get("ANNOTATE", True),
        value.get("ANNOTATE_KEYS", _requests.KEYS),
        value.get("ANNOTATE_WITH"),
        error=lambda suffix, message: _error(f"ANNOTATE{suffix}", message),
        load=import_string,
    )
    protection = protection_options(value.get, _error)
    by_url = any(value.get(key) is not None for key in ("SCHEMA", "PREFIX"))
    target, description, alias = _target(value.get("TARGET"), databases, by_url=by_url)
    for key in ("SCHEMA", "PREFIX"):
        given = value.get(key)
        if given is None:
            continue
        if not isinstance(given, str) or not given:
            raise _error(key, f"must be a non-empty string, not {given!r}")
        if not isinstance(target, str) or "://" not in target:
            raise _error(
                key,
                f"applies to a database TARGET (a DATABASES alias or a SQLAlchemy URL), not {description}",
            )
        options[key.lower()] = given
    return MemimgSettings(
        target=target,
        description=description,
        root=root,
        root_name=root_name,
        options=options,
        retries=retries,
        discard_status=discard,
        alias=alias,
        lazy=lazy,
        annotate_keys=annotate_keys,
        annotate_with=annotate_with,
        protection=protection,
    )


def _root(value: Any) -> tuple[Callable[[], Any], str]:
    if value is None:
        raise _error(
            "ROOT",
            "is missing: set it to the dotted path of the root class (such as 'bank.domain.Bank') or to the class",
        )
    if isinstance(value, str):
        try:
            obj = import_string(value)
        except ImportError as err:
            raise _error("ROOT", f"= {value!r} cannot be imported: {err}") from err
        name = value
    else:
        obj = value
        name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    if not callable(obj):
        raise _error("ROOT", f"= {name} is not a class or a zero-argument factory")
    return obj, name


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _error("OPTIONS", f"must be a dict of memimg.open keyword arguments, not {value!r}")
    if "root" in value:
        raise _error("OPTIONS", "must not hold 'root': set settings.MEMIMG['ROOT'] instead")
    return dict(value)


def _target(
    value: Any, databases: Mapping[str, Any], *, by_url: bool
) -> tuple[str | os.PathLike[str] | Store, str, str | None]:
    if value is None:
        raise _error(
            "TARGET",
            "is missing: set it to a DATABASES alias such as 'default', an SQLite file path, a SQLAlchemy URL "
            "or ':memory:'",
        )
    if isinstance(value, Store):
        return value, getattr(value, "description", type(value).__qualname__), None
    if isinstance(value, os.PathLike):
        return value, os.fspath(value), None
    if not isinstance(value, str) or not value:
        raise _error("TARGET", f"must be a DATABASES alias, a path, a URL or a memimg Store, not {value!r}")
    if value in databases:
        path = None if by_url else sqlite_path(value, databases[value])
        if path is not None:
            return path, f"DATABASES[{value!r}] ({path})", value
        url = url_for_database(value, databases[value])
        return url, f"DATABASES[{value!r}] ({_redact(url)})", value
    if "://" in value:
        _check_url(value)
        return value, _redact(value), None
    return value, value, None


def _check_url(url: str) -> None:
    try:
        import sqlalchemy as sa
        from sqlalchemy import exc as sa_exc
    except ImportError as err:
        raise _error("TARGET", f"is a URL, which needs SQLAlchemy: pip install 'memimg[sqlalchemy]' ({err})") from err
    try:
        parsed = sa.make_url(url)
    except (sa_exc.ArgumentError, ValueError) as err:
        raise _error("TARGET", f"= {url!r} is not a database URL: {err}") from err
    try:
        parsed.get_dialect()
    except (sa_exc.NoSuchModuleError, ImportError) as err:
        raise _error(
            "TARGET",
            f"= {_redact(url)} names a database driver SQLAlchemy cannot load ({err}); "
            "for PostgreSQL write postgresql+psycopg://user:password@host:port/name",
        ) from err


def _redact(url: str) -> str:
    try:
        import sqlalchemy as sa

        return str(sa.make_url(url).render_as_string(hide_password=True))
    except Exception:  # not parseable: say nothing that could hold a password
        return url.split("://", 1)[0] + "://..."


def database_url(alias: str = "default") -> str:
    """The SQLAlchemy URL of the Django database *alias* (``settings.DATABASES[alias]``).

    Raises:
        ImproperlyConfigured: there is no such database, or its engine is
            neither SQLite nor PostgreSQL.
    """
    from django.conf import settings  # type: ignore[import-untyped, unused-ignore]

    databases = settings.DATABASES
    if alias not in databases:
        raise ImproperlyConfigured(f"settings.DATABASES has no {alias!r} entry")
    return url_for_database(alias, databases[alias])


def sqlite_path(alias: str, db: Mapping[str, Any]) -> str | None:
    """The file of an SQLite ``DATABASES`` entry, or ``None`` for other engines.

    Raises:
        ImproperlyConfigured: the database is in memory (not a file memimg can share).
    """
    if not str(db.get("ENGINE", "")).endswith(("sqlite3", "spatialite")):
        return None
    name = db.get("NAME")
    text = os.fspath(name) if isinstance(name, (str, os.PathLike)) else ""
    if not text or text == ":memory:" or "mode=memory" in text:
        raise _error(
            "TARGET",
            f"names settings.DATABASES[{alias!r}], an in-memory SQLite database that memimg cannot share "
            "with Django: give that database a file NAME, or set TARGET to ':memory:' or a file of its own",
        )
    return text


def url_for_database(alias: str, db: Mapping[str, Any]) -> str:
    """The SQLAlchemy URL for one ``DATABASES`` entry (SQLite and PostgreSQL engines).

    SQLite: ``sqlite:///NAME``. PostgreSQL:
    ``postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME``, with the libpq
    parameters of ``OPTIONS`` (``sslmode``, ``options``, ...) in the query
    string and a ``HOST`` that is a socket directory passed as ``?host=``.
    """
    engine = str(db.get("ENGINE", ""))
    name = db.get("NAME")
    path = sqlite_path(alias, db)
    if path is not None:
        return f"sqlite:///{path}"
    if not engine.endswith(("postgresql", "postgis")):
        raise _error(
            "TARGET",
            f"names settings.DATABASES[{alias!r}], whose ENGINE {engine!r} memimg.contrib.django cannot map "
            "(SQLite and PostgreSQL only): set TARGET to a SQLAlchemy URL instead",
        )
    try:
        import sqlalchemy as sa
    except ImportError as err:
        raise _error(
            "TARGET",
            f"names the PostgreSQL database settings.DATABASES[{alias!r}], which memimg reaches through "
            f"SQLAlchemy: pip install 'memimg[sqlalchemy]' ({err})",
        ) from err
    query: dict[str, str] = {}
    for key, value in (db.get("OPTIONS") or {}).items():
        if key not in _DJANGO_PG_OPTIONS and isinstance(value, (str, int)) and not isinstance(value, bool):
            query[key] = str(value)
    host = str(db.get("HOST") or "") or None
    if host is not None and host.startswith("/"):
        query["host"] = host
        host = None
    port = db.get("PORT")
    url = sa.URL.create(
        "postgresql+psycopg",
        username=str(db.get("USER") or "") or None,
        password=str(db.get("PASSWORD") or "") or None,
        host=host,
        port=int(port) if port not in (None, "") else None,
        database="postgres" if name is None else (str(name) or None),
        query=query,
    )
    return str(url.render_as_string(hide_password=False))
