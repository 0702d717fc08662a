"""The JSON API.

Every view runs in the request's transaction (``memimg.contrib.flask``): its
changes are committed together when it answers 2xx, and discarded when it
answers 4xx/5xx or raises. A view may be run again after a conflict with a
concurrent request, so it does nothing outside the image itself: the
"notification" of a transfer is registered with ``after_commit``.

``GET /accounts/<owner>/events`` streams the account's balance as
server-sent events (a change-feed subscription, ``img.subscribe``), and
``GET /accounts/<owner>/live`` is a page that shows it updating.
"""

from __future__ import annotations

import functools
import json
import queue
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from flask import Blueprint, Response, current_app, jsonify, render_template_string, request, url_for
from flask.typing import ResponseReturnValue

import memimg
from memimg.contrib.flask import after_commit, image, no_transaction

from .models import Account, Bank, InsufficientFunds

bp = Blueprint("bank", __name__)


class ApiError(Exception):
    """Answer *status* with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@bp.errorhandler(ApiError)
def _api_error(err: ApiError) -> ResponseReturnValue:
    return jsonify(error=err.message), err.status


@bp.errorhandler(InsufficientFunds)
def _insufficient_funds(err: InsufficientFunds) -> ResponseReturnValue:
    return jsonify(error=str(err)), 400


def bank() -> Bank:
    """The root of the app's image."""
    return cast(Bank, image.root)


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "send a JSON object (Content-Type: application/json)")
    return data


def _amount(data: dict[str, Any]) -> Decimal:
    try:
        amount = Decimal(str(data.get("amount")))
    except (InvalidOperation, ValueError):
        amount = Decimal("NaN")
    exponent = amount.as_tuple().exponent
    if not amount.is_finite() or amount <= 0 or not isinstance(exponent, int) or exponent < -2:
        raise ApiError(400, 'amount must be a positive number with at most 2 decimals, e.g. "12.50"')
    return amount


def _account(owner: str) -> Account:
    account = bank().accounts.get(owner)
    if account is None:
        raise ApiError(404, f"no account {owner!r}")
    return account


@bp.get("/accounts")
def list_accounts() -> ResponseReturnValue:
    b = bank()
    return {"accounts": [a.to_json() for a in b.accounts.values()], "total": str(b.total())}


@bp.post("/accounts")
def open_account() -> ResponseReturnValue:
    data = _body()
    owner = data.get("owner")
    if not isinstance(owner, str) or not owner.strip():
        raise ApiError(400, "owner must be a non-empty string")
    if owner in bank().accounts:
        raise ApiError(409, f"account {owner!r} already exists")
    balance = _amount(data) if "amount" in data else Decimal("0")
    return bank().open_account(owner, balance).to_json(entries=True), 201


@bp.get("/accounts/<owner>")
def get_account(owner: str) -> ResponseReturnValue:
    return _account(owner).to_json(entries=True)


@bp.post("/accounts/<owner>/deposit")
def deposit(owner: str) -> ResponseReturnValue:
    account = _account(owner)
    account.deposit(_amount(_body()))
    return account.to_json()


@bp.post("/accounts/<owner>/withdraw")
def withdraw(owner: str) -> ResponseReturnValue:
    account = _account(owner)
    account.withdraw(_amount(_body()))
    return account.to_json()


@bp.post("/transfers")
def transfer() -> ResponseReturnValue:
    """Move money between two accounts: both change, or (on any error) neither."""
    data = _body()
    source, target = _account(str(data.get("source"))), _account(str(data.get("target")))
    if source is target:
        raise ApiError(400, "source and target must be different accounts")
    amount = _amount(data)
    bank().transfer(source, target, amount)
    after_commit(functools.partial(_notify, source.owner, target.owner, amount))
    return {"source": source.to_json(), "target": target.to_json()}


def _notify(source: str, target: str, amount: Decimal) -> None:
    """Stands in for an email or a message to another service: once, and only if committed."""
    current_app.logger.info("transfer of %s from %s to %s committed", amount, source, target)


# -- live balance: server-sent events ------------------------------------------------


@bp.get("/accounts/<owner>/events")
@no_transaction  # a stream outlives any transaction; it only reads
def account_events(owner: str) -> ResponseReturnValue:
    """The account's balance as server-sent events: now, then at every commit that changes it.

    Each event is ``event: balance``, ``id:`` the seq of the commit (or of
    the image, for the first) and ``data:`` ``{"owner", "balance", "seq"}``.
    A browser that reconnects sends the last id as ``Last-Event-ID``: the
    stream goes on from there (the changes after it, from the account's
    history) instead of starting over (it starts over, from the balance
    now, when a compaction dropped those changes). Other processes' commits arrive
    too: the image follows the log. A comment line is sent every
    ``BANK_SSE_KEEPALIVE`` seconds (15) so proxies keep the connection and
    a gone client is noticed.
    """
    account = _account(owner)
    img: memimg.MemoryImage = image._get_current_object()  # type: ignore[attr-defined]
    keepalive = float(current_app.config.get("BANK_SSE_KEEPALIVE", 15.0))
    last = request.headers.get("Last-Event-ID", "")
    commits: queue.SimpleQueue[memimg.Commit] = queue.SimpleQueue()
    subscription = img.subscribe(commits.put, to=(account, "balance"))  # first: nothing after it is missed
    img.follow()

    def event(balance: Decimal, seq: int) -> str:
        data = json.dumps({"owner": owner, "balance": str(balance), "seq": seq})
        return f"id: {seq}\nevent: balance\ndata: {data}\n\n"

    def missed() -> list[memimg.Change] | None:
        """The balance changes after ``Last-Event-ID``; ``None``: start over from the balance now (no id, an id
        past the log's head, or one whose changes a compaction dropped)."""
        if not last.isdigit():
            return None
        if int(last) > img.seq:
            img.refresh()  # the client saw, through another server, a commit this process has not read yet
            if int(last) > img.seq:
                return None
        if int(last) < img.store.first_seq() - 1:
            return None  # compacted away: history would miss the changes the compaction dropped
        try:
            return img.history(account, "balance", since=int(last))
        except memimg.MemimgError:  # the account's first state is no longer stored
            return None

    def stream() -> Iterator[str]:
        try:
            changes = missed()
            if changes is None:
                sent = img.seq
                yield event(account.balance, sent)
            else:
                sent = int(last)  # the client has everything up to it: a queued commit at or below it is old
                for change in changes:
                    yield event(change.new, change.seq)
                    sent = change.seq
            while True:
                try:
                    commit = commits.get(timeout=keepalive)
                except queue.Empty:
                    yield ": keep-alive\n\n"
                    continue
                if commit.seq > sent:
                    yield event(commit.changes[-1].new, commit.seq)
                    sent = commit.seq
        finally:
            subscription.close()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    response = Response(stream(), mimetype="text/event-stream", headers=headers)
    response.call_on_close(subscription.close)  # also when the stream is never read
    return response


_LIVE_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ owner }}'s balance</title></head>
<body>
  <h1>{{ owner }}</h1>
  <p>Balance: <output id="balance">{{ balance }}</output></p>
  <p id="status">connecting</p>
  <script>
    const events = new EventSource({{ events_url|tojson }});
    events.addEventListener("balance", (e) => {
      document.getElementById("balance").textContent = JSON.parse(e.data).balance;
    });
    events.onopen = () => { document.getElementById("status").textContent = "live"; };
    events.onerror = () => { document.getElementById("status").textContent = "reconnecting"; };
  </script>
</body>
</html>
"""


@bp.get("/accounts/<owner>/live")
def live_balance(owner: str) -> ResponseReturnValue:
    """A page showing the account's balance, updated live from ``/accounts/<owner>/events``."""
    account = _account(owner)
    return render_template_string(
        _LIVE_PAGE,
        owner=owner,
        balance=str(account.balance),
        events_url=url_for("bank.account_events", owner=owner),
    )
