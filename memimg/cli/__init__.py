"""The ``memimg`` command line (also ``python -m memimg``); each module adds its commands to :data:`cli`."""

from memimg.cli import _erase, _history, _inspect, _keys, _ops, _past, _serve, _verify  # noqa: F401 -- each registers its commands
from memimg.cli._main import cli

__all__ = ["cli"]
