"""The mark of a test of the compiled accelerator's own functions."""

from __future__ import annotations

from typing import Any

import pytest

from memimg.model._accel import speedups

#: why a test of the accelerator's own functions does not run here
NOT_BUILT = "the compiled accelerator is not loaded: `python hatch_build.py` builds it (with a C compiler)"


def compiled(test: Any) -> Any:
    """A test of the accelerator's own functions: it needs the extension built and loaded (CI's main pass
    requires it; its pure-Python pass deselects these with ``-m "not compiled"``)."""
    return pytest.mark.compiled(pytest.mark.skipif(speedups is None, reason=NOT_BUILT)(test))
