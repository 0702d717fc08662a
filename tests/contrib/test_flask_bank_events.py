"""The example bank's live balance: server-sent events from a change-feed subscription, and a page showing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.versions import ROOT


@pytest.fixture
def bank_app(tmp_path: Any) -> Iterator[Flask]:
    """The example app on this test's SQLite file, with ada's account holding 100, and a short keep-alive."""
    from examples.flask_bank import create_app, memimg_ext

    app = create_app({"MEMIMG_TARGET": str(tmp_path / "bank.db"), "TESTING": True, "BANK_SSE_KEEPALIVE": 0.2})
    assert app.test_client().post("/accounts", json={"owner": "ada", "amount": "100"}).status_code == 201
    yield app
    with app.app_context():
        memimg_ext.image.close()


class Events:
    """Reads server-sent events from a streamed test-client response."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.chunks = iter(response.response)
        self.buffer = ""

    def next(self, timeout: float = 15.0) -> dict[str, Any]:
        """The next event (keep-alive comments skipped): its fields, ``data`` decoded.

        Fails after *timeout* seconds without one (the stream sends a keep-alive comment every 0.2 s here).
        """
        deadline = time.monotonic() + timeout
        while True:
            while "\n\n" not in self.buffer:
                assert time.monotonic() < deadline, f"no event within {timeout} s"
                chunk = next(self.chunks)
                self.buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
            block, self.buffer = self.buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
            if fields:
                fields["data"] = json.loads(fields["data"])
                return fields

    def close(self) -> None:
        self.response.close()


def _deposit_from_another_process(path: str, owner: str, amount: str) -> int:
    """Deposit in another process; returns the seq of its commit."""
    code = (
        "import memimg\nfrom decimal import Decimal\nfrom examples.flask_bank.models import Bank\n"
        f"with memimg.open({path!r}, root=Bank) as img:\n"
        f"    img.root.accounts[{owner!r}].deposit(Decimal({amount!r}))\n"
        "    print(img.seq)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True
    )
    return int(done.stdout.decode().split()[-1])


def test_the_event_stream_gives_the_balance_then_each_change(bank_app: Flask, tmp_path: Any) -> None:
    """``/accounts/<owner>/events`` is a text/event-stream: the balance now, then one event per commit that
    changes it -- this app's requests and another process's commits alike -- each with the commit's seq as id;
    commits that do not touch the balance send nothing."""
    client = bank_app.test_client()
    response = client.get("/accounts/ada/events", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = Events(response)
    try:
        first = events.next()
        assert first["event"] == "balance"
        assert first["data"] == {"owner": "ada", "balance": "100", "seq": int(first["id"])}
        assert client.post("/accounts", json={"owner": "bob"}).status_code == 201  # not ada's balance
        assert client.post("/accounts/ada/deposit", json={"amount": "5.25"}).status_code == 200
        second = events.next()
        assert second["data"]["balance"] == "105.25"
        assert int(second["id"]) > int(first["id"])
        _deposit_from_another_process(str(tmp_path / "bank.db"), "ada", "10")
        assert events.next()["data"]["balance"] == "115.25"
    finally:
        events.close()


def test_a_reconnecting_client_gets_what_it_missed(bank_app: Flask) -> None:
    """A client reconnecting with ``Last-Event-ID`` gets the balance changes after that id, none before."""
    client = bank_app.test_client()
    events = Events(client.get("/accounts/ada/events", buffered=False))
    first = events.next()
    events.close()
    for amount in ("1", "2"):
        assert client.post("/accounts/ada/deposit", json={"amount": amount}).status_code == 200
    events = Events(client.get("/accounts/ada/events", headers={"Last-Event-ID": first["id"]}, buffered=False))
    try:
        assert [events.next()["data"]["balance"] for _ in range(2)] == ["101", "103"]
    finally:
        events.close()


def test_a_client_ahead_of_this_process_gets_only_later_changes(bank_app: Flask, tmp_path: Any) -> None:
    """A client whose ``Last-Event-ID`` is a commit this process has not read yet (it saw it through another
    server) gets neither the balance before it nor that commit again: its next event is the next change."""
    seen = _deposit_from_another_process(str(tmp_path / "bank.db"), "ada", "10")
    client = bank_app.test_client()
    events = Events(client.get("/accounts/ada/events", headers={"Last-Event-ID": str(seen)}, buffered=False))
    try:
        assert client.post("/accounts/ada/deposit", json={"amount": "1"}).status_code == 200
        event = events.next()
        assert event["data"]["balance"] == "111"
        assert int(event["id"]) > seen
    finally:
        events.close()


def test_a_client_behind_a_compaction_starts_over_from_the_balance_now(bank_app: Flask) -> None:
    """A client whose ``Last-Event-ID`` is older than what the log still holds (a compaction dropped the
    changes after it) gets the balance now, then the following changes: the stream does not end."""
    from examples.flask_bank import memimg_ext

    client = bank_app.test_client()
    events = Events(client.get("/accounts/ada/events", buffered=False))
    first = events.next()
    events.close()
    assert client.post("/accounts/ada/deposit", json={"amount": "1"}).status_code == 200
    with bank_app.app_context():
        img = memimg_ext.image
        seq = img.snapshot()
        img.store.delete_events_before(seq)
        img.store.delete_snapshots_before(seq)
    events = Events(client.get("/accounts/ada/events", headers={"Last-Event-ID": first["id"]}, buffered=False))
    try:
        now = events.next()
        assert now["data"]["balance"] == "101"
        assert client.post("/accounts/ada/deposit", json={"amount": "2"}).status_code == 200
        assert events.next()["data"]["balance"] == "103"
    finally:
        events.close()


def test_a_client_that_goes_away_leaves_no_subscription(bank_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the client disconnects -- after reading events, or before reading any -- the stream's subscription
    to the image is closed (commits are no longer queued for it)."""
    import memimg

    made: list[memimg.Subscription] = []
    subscribe = memimg.MemoryImage.subscribe

    def recording(self: memimg.MemoryImage, *args: Any, **kwargs: Any) -> memimg.Subscription:
        sub = subscribe(self, *args, **kwargs)
        made.append(sub)
        return sub

    monkeypatch.setattr(memimg.MemoryImage, "subscribe", recording)
    client = bank_app.test_client()
    events = Events(client.get("/accounts/ada/events", buffered=False))
    events.next()
    unread = client.get("/accounts/ada/events", buffered=False)
    assert len(made) == 2 and not any(sub.closed for sub in made)
    events.close()
    unread.close()
    assert all(sub.closed for sub in made)


def test_the_stream_of_an_unknown_account_is_a_404(bank_app: Flask) -> None:
    """Asking for the events of an account that does not exist answers 404 with the JSON error, no stream."""
    response = bank_app.test_client().get("/accounts/nobody/events")
    assert response.status_code == 404
    assert response.get_json() == {"error": "no account 'nobody'"}


@pytest.fixture
def served(bank_app: Flask) -> Iterator[str]:
    """The app served on 127.0.0.1 (a werkzeug server in a thread); yields its base URL."""
    server = make_server("127.0.0.1", 0, bank_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def test_the_live_page_shows_a_deposit_made_by_another_process(served: str, browser_page: Any, tmp_path: Any) -> None:
    """In a real browser, ``/accounts/<owner>/live`` shows the balance and updates it when another process
    commits a deposit, without reloading."""
    page = browser_page
    page.goto(f"{served}/accounts/ada/live")
    balance = page.locator("#balance")
    assert balance.text_content() == "100"
    page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=10_000)
    _deposit_from_another_process(str(tmp_path / "bank.db"), "ada", "42.50")
    page.wait_for_function("document.getElementById('balance').textContent === '142.50'", timeout=10_000)
    page.close()  # the stream ends with the page
