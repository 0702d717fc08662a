"""The permission hook every embedding of the inspector takes (Flask's blueprint, Django's include).

One rule for all of them: the inspector shows every value in the image, so
mounting it needs a hook saying whether a request may look, unless the
application says ``debug=True`` (local development); a hook that raises
refuses the request, and what it raised is logged, never shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("memimg")


def require_permission(
    permission: Callable[..., bool] | None, *, debug: bool, mount: str, takes: str, example: str
) -> None:
    """Check the *permission* hook given to *mount* (the call that mounts the inspector, as the user wrote it).

    *takes* says what the hook is called with, *example* is one for the
    framework. Without a hook and without *debug* this raises; with *debug*
    it logs a warning.

    Raises:
        ValueError: no *permission* and not *debug*; *permission* is not callable.
    """
    if permission is None and not debug:
        raise ValueError(
            f"{mount} needs permission=, a function of {takes} saying whether the request may look at the image "
            f"(e.g. {example}): the inspector shows every value in it. For local development only, debug=True "
            "mounts it without one."
        )
    if permission is not None and not callable(permission):
        raise ValueError(f"permission must be a function of {takes} returning a bool, not {permission!r}")
    if permission is None:
        log.warning("the memimg inspector is mounted by %s without a permission hook (debug=True)", mount)


def permitted(permission: Callable[..., bool] | None, path: str, *args: Any) -> bool:
    """Whether the request for *path* may look: *permission* called with *args* (no hook: yes). A hook that
    raises refuses; the exception is logged, with the path."""
    if permission is None:
        return True
    try:
        return bool(permission(*args))
    except Exception:  # a hook that fails refuses: nothing of the image, not even its name
        log.exception("the inspector's permission hook raised on %s: the request is refused", path)
        return False
