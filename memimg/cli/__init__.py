"""The ``memimg`` command line (also ``python -m memimg``); each module adds its commands to :data:`cli`."""

from memimg.cli import (  # noqa: F401 -- each registers its commands
    _erase,
    _history,
    _inspect,
    _keys,
    _ops,
    _past,
    _project,
    _serve,
    _verify,
)
from memimg.cli._main import cli

__all__ = ["cli"]
