"""pytest fixtures for testing your own domain code against a memimg image.

Installed with memimg as a pytest plugin, so the fixtures are available in any
project that has memimg installed:

``memimg_image``
    A fresh image for one test, closed afterwards. Its root comes from the
    ``memimg_root`` fixture (override it in your ``conftest.py``; default: a
    dict), its store from ``memimg_target`` (default: a temporary SQLite
    file; override it to return ``":memory:"`` for speed).

``memimg_reopen``
    A function that closes ``memimg_image`` and opens the same log again,
    returning the recovered image -- to test that your model survives a
    restart.

Options for ``memimg.open`` can be given per test with a marker::

    @pytest.mark.memimg(snapshot_every=None)
    def test_deposit(memimg_image): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import memimg

__all__ = ["memimg_image", "memimg_reopen", "memimg_root", "memimg_target"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "memimg(**options): options for memimg.open in the memimg_image fixture")


@pytest.fixture
def memimg_root() -> Callable[[], Any]:
    """The root factory of ``memimg_image`` (override in conftest.py)."""
    return dict


@pytest.fixture
def memimg_target(tmp_path: Any) -> Any:
    """Where ``memimg_image`` keeps its log (override to return ":memory:")."""
    return str(tmp_path / "memimg-test.db")


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("memimg")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
def memimg_image(
    request: pytest.FixtureRequest, memimg_root: Callable[[], Any], memimg_target: Any
) -> Iterator[memimg.MemoryImage]:
    """A fresh image for this test (closed afterwards)."""
    images: list[memimg.MemoryImage] = [memimg.open(memimg_target, root=memimg_root, **_options(request))]
    request.node._memimg_images = images
    yield images[0]
    for img in images:
        img.close()


@pytest.fixture
def memimg_reopen(
    request: pytest.FixtureRequest, memimg_image: memimg.MemoryImage, memimg_root: Callable[[], Any], memimg_target: Any
) -> Callable[[], memimg.MemoryImage]:
    """``reopen()`` closes the test's image and returns it recovered from its log."""

    def reopen() -> memimg.MemoryImage:
        images: list[memimg.MemoryImage] = request.node._memimg_images
        images[-1].close()
        target = memimg_target if memimg_target != ":memory:" else images[-1].store
        img = memimg.open(target, root=memimg_root, **_options(request))
        images.append(img)
        return img

    return reopen
