"""The optional compiled accelerator, or the pure-Python code: chosen here, once, at import.

``memimg.model._speedups`` (one C file, built by ``hatch_build.py`` when a C
compiler is at hand) compiles the fast paths of the two hottest operations of
the model -- a tracked field read while some transaction is open, and a plain
field set inside a transaction --, the rows of a commit's scalar field sets
and their apply (``encode_sets``/``apply_sets``, :mod:`memimg.image._encode`), reads inside
a transaction (fields and dicts), a transaction's outcome (``outcome``), the steps a change feed adds to a
single-field commit (``memimg.image._feeds``: noting the change, delivering
the queue), and two loops of the functional core, handed over through
:mod:`memimg.core._compiled`: replay's (``fold_sets``) and a snapshot's walk
(``encode_states``); it calls the pure-Python code for everything else, so both give
the same results. Without it (no compiler, no
wheel for the platform) the pure-Python code runs.

Environment:

* ``MEMIMG_PURE_PYTHON=1`` -- run the pure-Python code even when the
  extension is built (to compare, or to rule it out);
* ``MEMIMG_REQUIRE_ACCEL=1`` -- refuse to import memimg without the extension
  (CI sets it, so that a broken build cannot pass unnoticed), or with a build
  of another version than this code's (:data:`SPEEDUPS_VERSION`; without it,
  such a build is not used, with a warning).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Final

from memimg.core import _compiled

__all__ = ["SPEEDUPS_VERSION", "speedups"]

#: The version of ``_speedups`` this code calls (its ``VERSION``, bumped with every change of its functions): a build
#: of another version -- an editable install's file left from before a pull -- is not used.
SPEEDUPS_VERSION: Final = 12


def _load() -> ModuleType | None:
    if os.environ.get("MEMIMG_PURE_PYTHON"):
        return None
    try:
        from memimg.model import _speedups
    except ImportError as exc:
        if os.environ.get("MEMIMG_REQUIRE_ACCEL"):
            raise ImportError(
                f"MEMIMG_REQUIRE_ACCEL is set but memimg's compiled accelerator did not load ({exc}); "
                "build it with `pip install -e .` (needs a C compiler) or `python hatch_build.py`, "
                "or unset MEMIMG_REQUIRE_ACCEL to run the pure-Python code"
            ) from exc
        return None
    built = getattr(_speedups, "VERSION", 1)
    if built != SPEEDUPS_VERSION:  # built from an older (or newer) C file than this Python code's
        if os.environ.get("MEMIMG_REQUIRE_ACCEL"):
            raise ImportError(
                f"MEMIMG_REQUIRE_ACCEL is set but memimg's compiled accelerator is out of date (version {built}, "
                f"this code needs {SPEEDUPS_VERSION}); rebuild it with `pip install -e .` or `python hatch_build.py`"
            )
        warnings.warn(
            f"memimg's compiled accelerator is out of date (version {built}, this code needs {SPEEDUPS_VERSION}): "
            "running the pure-Python code; rebuild it with `pip install -e .` or `python hatch_build.py`",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _speedups


#: the compiled accelerator, or None: the pure-Python code runs
speedups: ModuleType | None = _load()
_compiled.use(speedups)  # the core's loops (it knows no model)
