"""The pytest plugin users get: memimg_image and memimg_reopen."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import memimg
from tests.models import Account, Bank

pytest_plugins = ["pytester"]


@pytest.fixture
def memimg_root() -> Any:
    return Bank


def test_image_fixture_uses_the_root_override(memimg_image: memimg.MemoryImage) -> None:
    """memimg_image is a fresh image whose root comes from memimg_root."""
    assert isinstance(memimg_image.root, Bank) and memimg_image.seq == 1


@pytest.mark.memimg(snapshot_every=None)
def test_reopen_recovers(memimg_image: memimg.MemoryImage, memimg_reopen: Any) -> None:
    """memimg_reopen closes the image and recovers it from its log."""
    memimg_image.root.accounts["a"] = Account("a", balance=Decimal(3))
    again = memimg_reopen()
    assert again.root.accounts["a"].balance == 3 and memimg_image.closed


def test_plugin_in_another_project(pytester: pytest.Pytester) -> None:
    """A project with memimg installed gets the fixtures without configuration."""
    pytester.makepyfile(
        """
        import memimg

        def test_it(memimg_image, memimg_reopen):
            memimg_image.root["n"] = 1
            assert memimg_reopen().root == {"n": 1}
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
