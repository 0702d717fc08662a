"""The inspector in a real headless browser (system Chromium driven by Playwright): what a person sees and does.

The server is ``memimg serve`` in a subprocess; this test process writes to the same log, as another process
would. Screenshots of the main pages go to the test's temporary directory (and, when
``MEMIMG_INSPECTOR_SCREENSHOTS`` names a directory, there too: that is how docs/img/ was made).
"""

from __future__ import annotations

import os
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")
from playwright.sync_api import expect

import memimg
from tests.inspector.serving import serve
from tests.inspector.shop import XSS_ATTR, build
from tests.models import Bank


def shoot(page: Any, tmp_path: Path, name: str) -> None:
    """Save a screenshot of the page as NAME.png under *tmp_path* (and the docs' directory when asked)."""
    target = tmp_path / f"{name}.png"
    page.screenshot(path=str(target), full_page=False)
    assert target.stat().st_size > 1000
    docs = os.environ.get("MEMIMG_INSPECTOR_SCREENSHOTS")
    if docs:
        shutil.copy(target, Path(docs) / f"inspector-{name}.png")


def value_of(page: Any, field: str) -> str:
    """The text a person reads in the value column of *field* on an object page."""
    return page.locator(f'tr[data-field="{field}"] td.value').inner_text().strip()


def test_browsing_time_travel_diff_and_live_updates(browser_page: Any, tmp_path: Path) -> None:
    """Overview → the root → a reference → a field's history → the slider back in time → a diff → a live update
    when another process commits; no value's script ever runs."""
    page = browser_page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.set_viewport_size({"width": 1100, "height": 760})
    path = str(tmp_path / "bank.db")
    img = memimg.open(path, root=Bank)
    marks = build(img)
    with serve(path, "--import", "tests.models") as url:
        # the overview
        page.goto(url)
        assert page.locator("h1").inner_text() == "Overview"
        row = page.locator("table.grid tr", has_text="tests.models.Account")
        assert row.first.locator("td.num").inner_text() == "3"
        shoot(page, tmp_path, "overview")

        # click through to the root, then follow references to ada's account
        page.get_by_role("link", name="Root", exact=True).click()
        assert page.locator("h1").inner_text().startswith("Bank #")
        page.locator('tr[data-field="accounts"] a.ref').click()
        assert page.locator("h1").inner_text().startswith("dict #")
        page.locator("table.items tr", has_text="ada").locator("a.ref").click()
        assert page.locator("h1").inner_text() == f"Account #{marks.ada}"
        assert value_of(page, "owner") == "ada" and value_of(page, "balance") == "20"
        shoot(page, tmp_path, "object")
        expect(page.locator("h2", has_text="Referred to by")).to_be_visible()  # back-links are on the page
        assert page.locator("ul.refs a.ref").first.inner_text().startswith("dict #")

        # the balance's history: one change, 10 → 20, by bob
        page.locator('tr[data-field="balance"] a.hist').click()
        history = page.locator("table.history tbody tr")
        assert history.count() == 1
        assert history.first.locator("td.old").inner_text() == "10"
        assert history.first.locator("td.new").inner_text() == "20"
        assert "bob" in history.first.inner_text()
        shoot(page, tmp_path, "history")

        # a diff from the history
        history.first.get_by_role("link", name="diff").click()
        assert page.locator("h1").inner_text() == "Diff"
        diff_row = page.locator("table.diff tbody tr").first
        assert "root.accounts['ada'].balance" in diff_row.inner_text()
        assert diff_row.locator("td.old").inner_text() == "10" and diff_row.locator("td.new").inner_text() == "20"
        shoot(page, tmp_path, "diff")

        # move the slider back to the seq when ada was opened: the old value shows
        page.goto(f"{url}object/{marks.ada}")
        slider = page.locator("#at-slider")
        assert slider.get_attribute("value") == str(img.seq)
        slider.focus()
        for _ in range(img.seq - marks.opened):
            page.keyboard.press("ArrowLeft")
        page.wait_for_url(f"**/object/{marks.ada}?at={marks.opened}")
        assert value_of(page, "balance") == "10"
        assert f"Showing the state after seq {marks.opened}" in page.locator("#past-banner").inner_text()
        assert page.locator("#at-value").inner_text() == f"seq {marks.opened}"
        shoot(page, tmp_path, "past")
        page.get_by_role("link", name="Back to now").first.click()
        assert value_of(page, "balance") == "20"

        # live: another process commits, the open page shows it without a reload
        page.locator("#live").wait_for(state="visible")
        page.evaluate("window.__same_document = true")
        img.root.accounts["ada"].balance = Decimal("77.50")
        page.wait_for_function(
            "() => document.querySelector('tr[data-field=\"balance\"] td.value').innerText.trim() === '77.50'",
            timeout=20_000,
        )
        assert page.evaluate("window.__same_document") is True  # updated in place, not reloaded
        assert page.locator("#head-seq").inner_text() == str(img.seq)
        shoot(page, tmp_path, "live")

        # values that hold script are shown, never run
        page.goto(f"{url}object/{marks.shady}")
        assert value_of(page, "owner") == XSS_ATTR + "!"
        page.locator('tr[data-field="owner"] td.value span').hover()
        page.goto(f"{url}object/{img.root._mi_oid}")
        assert value_of(page, "name") == '<script>alert("pwned")</script>'
        page.goto(f"{url}log")
        assert page.locator("section.tx").count() >= 4
    img.close()
    assert dialogs == []


def test_plain_browsing_works_without_javascript(browser_page: Any, tmp_path: Path) -> None:
    """With JavaScript off, links, filters and the slider's form still work (the Show button submits it)."""
    page = browser_page
    context = page.context.browser.new_context(java_script_enabled=False)
    page = context.new_page()
    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank) as img:
        marks = build(img)
    with serve(path) as url:
        page.goto(f"{url}object/{marks.ada}")
        page.locator("#at-slider").fill(str(marks.opened))
        page.get_by_role("button", name="Show").click()
        page.wait_for_url(f"**?at={marks.opened}")
        assert value_of(page, "balance") == "10"
        page.goto(f"{url}type/tests.models.Account")
        page.locator("#f-field").select_option("owner")
        page.locator("#f-q").fill("bo")
        page.get_by_role("button", name="Filter").click()
        assert page.locator("table.instances tbody tr").count() == 1
    context.close()


def test_pages_fit_a_phone(browser_page: Any, tmp_path: Path) -> None:
    """On a phone-sized screen the pages need no sideways scrolling."""
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 800})
    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank) as img:
        marks = build(img)
    with serve(path) as url:
        for where in (
            "",
            f"object/{marks.ada}",
            f"object/{marks.ada}/history/balance",
            "log",
            "type/tests.models.Entry",
        ):
            page.goto(url + where)
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, (where, overflow)
        shoot(page, tmp_path, "phone")


def test_live_updates_never_wipe_a_form_being_filled_in(browser_page: Any, tmp_path: Path) -> None:
    """A commit arriving while a person types in a page's form leaves the form (and its focus) alone; the page
    catches up once the form is left as it was."""
    page = browser_page
    path = str(tmp_path / "bank.db")
    img = memimg.open(path, root=Bank)
    build(img)
    with serve(path) as url:
        page.goto(f"{url}log")
        page.locator("#live").wait_for(state="visible")
        field = page.locator('input[name="object"]')
        field.fill("12")
        field.focus()
        img.root.accounts["ada"].balance = Decimal(5)
        expect(page.locator("#head-seq")).to_have_text(str(img.seq), timeout=20_000)
        expect(page.locator("#main.stale")).to_have_count(1, timeout=20_000)  # the refresh was held back
        assert field.input_value() == "12"
        assert page.evaluate("document.activeElement && document.activeElement.name") == "object"
        page.locator("h1").click()  # left, but changed: still held
        expect(page.locator("#main.stale")).to_have_count(1)
        assert field.input_value() == "12"
        field.fill("")
        page.locator("h1").click()  # left as it was: the page catches up
        expect(page.locator("#main.updated")).to_have_count(1, timeout=20_000)
        expect(page.locator("#main.stale")).to_have_count(0)
    img.close()


def test_many_tabs_share_one_event_stream(browser_page: Any, tmp_path: Path) -> None:
    """Eight tabs of the inspector all load (a browser allows six connections per host, and each tab's own
    stream would hold one), and each follows commits live through the one stream they share."""
    context = browser_page.context
    path = str(tmp_path / "bank.db")
    img = memimg.open(path, root=Bank)
    marks = build(img)
    with serve(path) as url:
        pages = []
        for _ in range(8):
            tab = context.new_page()
            tab.goto(f"{url}object/{marks.ada}", timeout=20_000)
            expect(tab.locator("h1")).to_have_text(f"Account #{marks.ada}")
            pages.append(tab)
        expect(pages[0].locator("#live")).to_be_visible(timeout=20_000)
        img.root.accounts["ada"].balance = Decimal("8.88")
        for tab in pages:
            expect(tab.locator('tr[data-field="balance"] td.value')).to_have_text("8.88", timeout=20_000)
            expect(tab.locator("#head-seq")).to_have_text(str(img.seq))
        pages[0].close()  # the tab holding the stream goes: another takes it over
        img.root.accounts["ada"].balance = Decimal("9.99")
        for tab in pages[1:]:
            expect(tab.locator('tr[data-field="balance"] td.value')).to_have_text("9.99", timeout=20_000)
        for tab in pages[1:]:
            tab.close()
    img.close()


def test_without_web_locks_a_hidden_tab_releases_its_stream(browser_page: Any, tmp_path: Path) -> None:
    """Where Web Locks are missing (plain HTTP on another host), each tab has its own stream: closed while the
    tab is hidden, reopened when it is shown, from the last commit it saw (none is missed)."""
    context = browser_page.context.browser.new_context()
    context.add_init_script("delete Navigator.prototype.locks;")
    page = context.new_page()
    path = str(tmp_path / "bank.db")
    img = memimg.open(path, root=Bank)
    marks = build(img)
    hide = """hidden => {
        Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    with serve(path) as url:
        page.goto(f"{url}object/{marks.ada}")
        assert page.evaluate("navigator.locks === undefined")
        expect(page.locator("#live")).to_be_visible(timeout=20_000)
        page.evaluate(hide, True)
        expect(page.locator("#live")).to_be_hidden()  # its stream is closed
        img.root.accounts["ada"].balance = Decimal("4.44")
        page.evaluate(hide, False)
        expect(page.locator("#live")).to_be_visible(timeout=20_000)
        expect(page.locator('tr[data-field="balance"] td.value')).to_have_text("4.44", timeout=20_000)
        expect(page.locator("#head-seq")).to_have_text(str(img.seq))
    img.close()
    context.close()
