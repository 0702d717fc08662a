"""A real headless browser for the tests that need one (Chromium from the OS packages, driven by Playwright).

``browser_page`` (a fixture in ``tests/conftest.py``) gives a fresh Playwright page on the system Chromium.
Playwright's own browser download is never used: the browser comes from the OS (``apt-get install chromium``)
and Playwright drives it through ``executable_path``.  On a machine without it the tests skip, naming what
to install; ``.ci/run`` installs it and sets ``MEMIMG_REQUIRE_BROWSER=1``, so in CI they must run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """The system Chromium: ``MEMIMG_CHROMIUM`` if set, else the first of the usual names on PATH."""
    configured = os.environ.get("MEMIMG_CHROMIUM")
    if configured:
        return configured
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("MEMIMG_REQUIRE_BROWSER"):
        pytest.fail(f"MEMIMG_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


def page() -> Iterator[Any]:
    """A Playwright page on a fresh headless Chromium; skips (or fails in CI) when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        _unavailable("no system Chromium (apt-get install chromium, or set MEMIMG_CHROMIUM to its path)")
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            context = browser.new_context()
            yield context.new_page()
            context.close()
        finally:
            browser.close()
