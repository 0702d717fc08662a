"""The process's image: opened from ``settings.MEMIMG``, reopened when it must be.

:class:`~memimg.contrib.django.apps.MemimgConfig` opens the image in
``ready()`` (or, with ``"LAZY": True``, only checks the setting there and
opens at the first use). After that, :func:`image` reopens it, from the same
settings, in three cases:

- the setting changed (``override_settings(MEMIMG=...)`` in tests sends
  ``setting_changed``);
- the process forked after opening (a pre-forking server that loads the
  application first): a child never uses its parent's database connections,
  so it opens an image of its own and leaves the inherited one untouched;
- the image closed itself because applying a commit failed (memimg's advice
  is to open it again).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped, unused-ignore]

import memimg
from memimg.contrib._keys import redacted
from memimg.contrib.django._config import MemimgSettings, parse_settings

__all__ = ["close", "current_settings", "image", "load_settings", "on_setting_changed", "reopen", "root", "start"]

log = logging.getLogger("memimg.contrib.django")


@dataclass(frozen=True, slots=True)
class _Opened:
    image: memimg.MemoryImage | None  # None until first use when LAZY
    settings: MemimgSettings
    pid: int


_lock = threading.RLock()
_current: _Opened | None = None
# Images a forked child inherited: their connections belong to the parent, so
# they are neither used nor closed (closing could disturb the parent's locks).
_inherited: list[memimg.MemoryImage] = []
_atexit_registered = False


def load_settings() -> MemimgSettings:
    """``settings.MEMIMG``, checked (see :func:`~memimg.contrib.django._config.parse_settings`)."""
    from django.conf import settings  # type: ignore[import-untyped, unused-ignore]

    return parse_settings(getattr(settings, "MEMIMG", None), settings.DATABASES)


def _open(config: MemimgSettings) -> memimg.MemoryImage:
    try:
        img = memimg.open(config.target, **config.open_options())
    except Exception as err:
        raise ImproperlyConfigured(
            f"settings.MEMIMG: cannot open the image at TARGET {config.description} with ROOT "
            f"{config.root_name} and OPTIONS {redacted(config.options)!r}: {err}"
        ) from err
    expected = config.root
    if isinstance(expected, type) and not isinstance(img.root, expected):
        found = type(img.root).__qualname__
        if not isinstance(config.target, memimg.Store):
            img.close()
        raise ImproperlyConfigured(
            f"settings.MEMIMG['ROOT'] is {config.root_name}, but the image at TARGET {config.description} "
            f"holds a root of type {found}: point TARGET at the right image, or fix ROOT"
        )
    log.info("memimg image open: %s at seq %d", config.description, img.seq)
    return img


def _release(old: _Opened | None, new: _Opened | None) -> None:
    if old is None or old.image is None:
        return
    if old.pid != os.getpid():
        _inherited.append(old.image)
        return
    if new is not None and isinstance(old.settings.target, memimg.Store) and old.settings.target is new.settings.target:
        return  # the new image uses the very same store object: closing the old one would close it
    try:
        old.image.close()
    except Exception as err:  # the new image is open; an old one that fails to close is only worth a line
        log.warning("closing the previous memimg image failed: %s", err)


def start() -> None:
    """Check ``settings.MEMIMG`` and open the image, unless it says ``"LAZY": True``.

    Raises:
        ImproperlyConfigured: the setting is wrong or the image cannot be
            opened; the message names the key to fix.
    """
    config = load_settings()
    if config.lazy:
        _install(_Opened(None, config, os.getpid()))
    else:
        _install(_Opened(_open(config), config, os.getpid()))


def reopen() -> memimg.MemoryImage:
    """Open the image again from the current settings (and DATABASES); the previous one is closed.

    Useful in tests once Django's test databases exist, since those are
    created after startup.
    """
    config = load_settings()
    img = _open(config)
    _install(_Opened(img, config, os.getpid()))
    return img


def _install(new: _Opened) -> None:
    global _current, _atexit_registered
    with _lock:
        old, _current = _current, new
        if not _atexit_registered:
            atexit.register(close)
            _atexit_registered = True
    _release(old, new)
    if (new.image is not None and isinstance(new.image.store, memimg.SQLiteStore)) or _adopted:
        _adopt_open_connections()


def _adopt_open_connections() -> None:
    """Adopt this thread's open Django connections to the image's file (see :func:`_adopt`); give those adopted
    for an image that is no longer open SQLite's own checkpoints back. Other threads' connections follow as
    they reconnect."""
    from django.db import connections  # type: ignore[import-untyped, unused-ignore]
    from django.db.backends.signals import connection_created  # type: ignore[import-untyped, unused-ignore]

    connection_created.connect(_adopt_created, dispatch_uid="memimg.contrib.django.adopt")
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or _adopt(connection):
            continue
        if _adopted.pop(connection, None) is connection.connection:
            try:
                connection.connection.execute("PRAGMA wal_autocheckpoint = 1000")  # (SQLite's default)
            except Exception as err:  # a broken connection: Django replaces it
                log.debug("giving a connection its checkpoints back failed: %s", err)


def _adopt_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    _adopt(connection)


def _adopt(connection: Any) -> bool:
    """Leave the checkpoints of a Django connection to the image's file to the image's SQLite store (see
    :meth:`memimg.SQLiteStore.adopt`): Django's own would run outside memimg's guard against SQLite's WAL-reset
    bug. Connections to other files are left as they are. Whether it was adopted."""
    current = _current
    if connection.vendor != "sqlite" or current is None or current.image is None or current.pid != os.getpid():
        return False
    image = current.image
    path = _file_of(connection.settings_dict.get("NAME"))
    if image.closed or not isinstance(image.store, memimg.SQLiteStore) or path is None:
        return False
    if not image.store.adopt(connection.connection, path):
        return False
    _adopted[connection] = connection.connection
    return True


def _file_of(name: Any) -> str | None:
    """The file a Django SQLite ``NAME`` opens (a path, or a ``file:`` URI), ``None`` for an in-memory one."""
    if not name:
        return None
    text = str(name)
    if text.startswith("file:"):
        parsed = urllib.parse.urlsplit(text)
        if "mode=memory" in parsed.query:
            return None
        text = urllib.parse.unquote(parsed.path)
    return None if not text or text == ":memory:" else text


#: Django connection -> its DB-API connection adopted for the image (given SQLite's own checkpoints back when the
#: image is no longer open; a DB-API connection takes no weak reference)
_adopted: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def close() -> None:
    """Close the image and forget it (:func:`image` then raises until :func:`start` or :func:`reopen`)."""
    global _current
    with _lock:
        old, _current = _current, None
    _release(old, None)
    if _adopted:
        try:
            _adopt_open_connections()
        except Exception as err:  # (at interpreter exit Django may be gone)
            log.debug("giving connections their checkpoints back failed: %s", err)


def image() -> memimg.MemoryImage:
    """The process's :class:`memimg.MemoryImage`, opened from ``settings.MEMIMG``.

    Raises:
        ImproperlyConfigured: ``memimg.contrib.django`` is not in
            ``INSTALLED_APPS`` (so nothing opened the image), or opening it
            at first use failed.
    """
    current = _current
    if current is not None and current.image is not None and current.pid == os.getpid():
        img = current.image
        if not img.closed:
            return img
    with _lock:
        current = _current
        if current is None:
            raise ImproperlyConfigured(
                "the memimg image is not open: add 'memimg.contrib.django' to INSTALLED_APPS (it opens the "
                "image from settings.MEMIMG when Django starts)"
            )
        if current.image is not None and current.pid == os.getpid() and not current.image.closed:
            return current.image
        if current.image is not None and current.pid == os.getpid():
            log.warning("the memimg image %s was closed; opening it again", current.settings.description)
        img = _open(current.settings)
        _install(_Opened(img, current.settings, os.getpid()))
        return img


def root() -> Any:
    """The root object of the process's image (``image().root``)."""
    return image().root


def current_settings() -> MemimgSettings:
    """The settings the current image was opened with."""
    current = _current
    if current is None:
        return load_settings()
    return current.settings


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: a new ``settings.MEMIMG`` reopens the image."""
    if setting == "MEMIMG":
        start()
