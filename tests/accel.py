"""The mark of a test of the compiled accelerator's own functions."""

from __future__ import annotations

from typing import Any

import pytest

from memimg.model._accel import speedups


def compiled(test: Any) -> Any:
    """A test of the accelerator's own functions: it needs the extension built and loaded (CI's main pass
    requires it; its pure-Python pass deselects these with ``-m "not compiled"``)."""
    reason = "the compiled accelerator is not loaded: `python hatch_build.py` builds it (with a C compiler)"
    return pytest.mark.compiled(pytest.mark.skipif(speedups is None, reason=reason)(test))
