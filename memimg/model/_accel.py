"""The optional compiled accelerator, or the pure-Python code: chosen here, once, at import.

``memimg.model._speedups`` (one C file, built by ``hatch_build.py`` when a C
compiler is at hand) compiles the fast paths of the two hottest operations of
the model -- a tracked field read while some transaction is open, and a plain
field set inside a transaction -- and the rows of a commit's scalar
field sets (``encode_sets``, :mod:`memimg.image._encode`), and calls the
pure-Python code for everything else, so both give the same results. Without it (no compiler, no
wheel for the platform) the pure-Python code runs.

Environment:

* ``MEMIMG_PURE_PYTHON=1`` -- run the pure-Python code even when the
  extension is built (to compare, or to rule it out);
* ``MEMIMG_REQUIRE_ACCEL=1`` -- refuse to import memimg without the extension
  (CI sets it, so that a broken build cannot pass unnoticed).
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["speedups"]


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
    return _speedups


#: the compiled accelerator, or None: the pure-Python code runs
speedups: ModuleType | None = _load()
