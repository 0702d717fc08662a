"""The protection settings of the web integrations: keys from the environment (or a secret store), never shown."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from memimg._api import protection_for

__all__ = ["SETTINGS", "Hidden", "protection_options", "redacted"]

#: The setting names (after the integration's prefix) and the ``memimg.open`` option each gives.
SETTINGS: Final = (
    "ENCRYPTION_KEY",
    "ENCRYPTION_KEY_ENV",
    "INTEGRITY_KEY",
    "INTEGRITY_KEY_ENV",
    "COMPRESSION",
)


class Hidden(dict[str, Any]):
    """``memimg.open`` keyword arguments holding keys: a dict whose repr shows the option names only."""

    def __repr__(self) -> str:
        return (
            "{"
            + ", ".join(f"{k!r}: <hidden>" if k.endswith("_key") else f"{k!r}: {v!r}" for k, v in self.items())
            + "}"
        )

    __str__ = __repr__


def redacted(options: dict[str, Any]) -> dict[str, Any]:
    """*options* with the value of every key option hidden (for messages)."""
    return {k: "<hidden>" if k.endswith("_key") else v for k, v in options.items()}


def protection_options(get: Callable[[str], Any], error: Callable[[str, str], Exception]) -> Hidden:
    """The protection options of ``memimg.open`` that the settings give (``get(NAME)``: a setting or None).

    A key is given as its value (``ENCRYPTION_KEY``: bytes, hex or base64
    text, e.g. read from a secret manager) or, better, as the name of the
    environment variable holding it (``ENCRYPTION_KEY_ENV``).

    Raises:
        whatever *error(setting, message)* makes: a setting is wrong -- the
            message names the setting, never a key.
    """
    out = Hidden()
    for option in ("encryption_key", "integrity_key"):
        name = option.upper()
        value, variable = get(name), get(name + "_ENV")
        if value is not None and variable is not None:
            raise error(name, f"and {name}_ENV are both set: give one")
        if variable is not None:
            if not isinstance(variable, str) or not variable:
                raise error(name + "_ENV", "must be the name of an environment variable")
            value = os.environ.get(variable)
            if not value:
                raise error(name + "_ENV", f"names the environment variable {variable}, which is not set")
        if value is not None:
            out[option] = value
    compression = get("COMPRESSION")
    if compression is not None:
        out["compression"] = compression
    _, failure = protection_for(out.get("encryption_key"), out.get("integrity_key"), out.get("compression"))
    if failure is not None:
        message = str(failure)
        setting = (
            "COMPRESSION"
            if "compression" in message
            else ("INTEGRITY_KEY" if "integrity_key" in message else "ENCRYPTION_KEY")
        )
        raise error(setting, message)
    return out
