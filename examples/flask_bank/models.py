"""The bank's domain: plain attrs classes made durable by ``@memimg.persistent``.

The ``name=`` of each class is what the log stores, so the module can move or
be renamed without touching the data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import attrs

import memimg


class InsufficientFunds(Exception):
    """A withdrawal or transfer would take an account below zero."""


@memimg.persistent(name="flask_bank.Entry")
class Entry:
    """One line of an account's statement."""

    label: str
    amount: Decimal
    at: datetime = attrs.field(factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "amount": str(self.amount), "at": self.at.isoformat()}


@memimg.persistent(name="flask_bank.Account")
class Account:
    owner: str
    balance: Decimal = Decimal("0")
    entries: list[Entry] = attrs.field(factory=list)

    def deposit(self, amount: Decimal, label: str = "deposit") -> None:
        self.balance += amount
        self.entries.append(Entry(label, amount))

    def withdraw(self, amount: Decimal, label: str = "withdrawal") -> None:
        if amount > self.balance:
            raise InsufficientFunds(f"{self.owner} has {self.balance}, cannot take {amount}")
        self.balance -= amount
        self.entries.append(Entry(label, -amount))

    def to_json(self, *, entries: bool = False) -> dict[str, object]:
        data: dict[str, object] = {"owner": self.owner, "balance": str(self.balance)}
        if entries:
            data["entries"] = [e.to_json() for e in self.entries]
        return data


@memimg.persistent(name="flask_bank.Bank")
class Bank:
    """The root of the image."""

    accounts: dict[str, Account] = attrs.field(factory=dict)

    def open_account(self, owner: str, balance: Decimal = Decimal("0")) -> Account:
        account = self.accounts[owner] = Account(owner)
        if balance:
            account.deposit(balance, "opening deposit")
        return account

    def transfer(self, source: Account, target: Account, amount: Decimal) -> None:
        source.withdraw(amount, f"to {target.owner}")
        target.deposit(amount, f"from {source.owner}")

    def total(self) -> Decimal:
        return sum((a.balance for a in self.accounts.values()), Decimal("0"))
