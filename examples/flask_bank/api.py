"""The JSON API.

Every view runs in the request's transaction (``memimg.contrib.flask``): its
changes are committed together when it answers 2xx, and discarded when it
answers 4xx/5xx or raises. A view may be run again after a conflict with a
concurrent request, so it does nothing outside the image itself: the
"notification" of a transfer is registered with ``after_commit``.
"""

from __future__ import annotations

import functools
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from memimg.contrib.flask import after_commit, image

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
