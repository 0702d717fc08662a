"""JSON views over the bank. Each request runs in one memimg transaction (MemimgMiddleware):
a 2xx answer commits what the view changed, a 4xx/5xx answer or an exception discards it."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from examples.django_bank.bank.domain import Account, Bank, BankError
from memimg.contrib.django import root


def api(*methods: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A JSON endpoint: refused requests become ``{"error": ...}`` with 400 or 404."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def run(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except BankError as err:
                return JsonResponse({"error": str(err)}, status=400)
            except LookupError as err:
                return JsonResponse({"error": str(err.args[0])}, status=404)

        return csrf_exempt(require_http_methods(list(methods))(run))

    return decorate


def bank() -> Bank:
    return cast(Bank, root())


def body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError as err:
        raise BankError(f"the body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise BankError("the body must be a JSON object")
    return data


def amount(data: dict[str, Any]) -> Decimal:
    try:
        return Decimal(str(data["amount"]))
    except (KeyError, InvalidOperation):
        raise BankError('give "amount" as a decimal number, such as "12.50"') from None


def show(account: Account) -> dict[str, Any]:
    return {
        "owner": account.owner,
        "balance": str(account.balance),
        "entries": [{"amount": str(e.amount), "memo": e.memo} for e in account.entries],
    }


@api("GET", "POST")
def accounts(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return JsonResponse({"accounts": [show(a) for a in bank().accounts.values()]})
    account = bank().open_account(str(body(request).get("owner", "")))
    return JsonResponse(show(account), status=201)


@api("GET")
def account(request: HttpRequest, owner: str) -> HttpResponse:
    return JsonResponse(show(bank().account(owner)))


@api("POST")
def deposit(request: HttpRequest, owner: str) -> HttpResponse:
    account = bank().account(owner)
    account.deposit(amount(body(request)))
    return JsonResponse(show(account))


@api("POST")
def withdraw(request: HttpRequest, owner: str) -> HttpResponse:
    account = bank().account(owner)
    account.withdraw(amount(body(request)))
    return JsonResponse(show(account))


@api("POST")
def transfer(request: HttpRequest) -> HttpResponse:
    data = body(request)
    source, target = str(data.get("from", "")), str(data.get("to", ""))
    bank().transfer(source, target, amount(data))
    return JsonResponse({"from": show(bank().account(source)), "to": show(bank().account(target))})
