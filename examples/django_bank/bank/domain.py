"""The bank's domain model: plain classes with behaviour, kept durable by memimg.

Nothing here knows about Django or a database. The stable names given to
``@memimg.persistent`` are what the log stores, so the classes can move.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

import memimg


class BankError(Exception):
    """A request the bank refuses; the views answer it with 400."""


@memimg.persistent(name="django_bank.Entry")
class Entry:
    """One line of an account's statement."""

    amount: Decimal
    memo: str


@memimg.persistent(name="django_bank.Account")
class Account:
    owner: str
    balance: Decimal = Decimal("0")
    entries: list[Entry] = attrs.field(factory=list)

    def deposit(self, amount: Decimal, memo: str = "deposit") -> None:
        if amount <= 0:
            raise BankError(f"amounts must be positive, not {amount}")
        self.balance += amount
        self.entries.append(Entry(amount, memo))

    def withdraw(self, amount: Decimal, memo: str = "withdrawal") -> None:
        if amount <= 0:
            raise BankError(f"amounts must be positive, not {amount}")
        if amount > self.balance:
            raise BankError(f"{self.owner} has {self.balance}, less than {amount}")
        self.balance -= amount
        self.entries.append(Entry(-amount, memo))


@memimg.persistent(name="django_bank.Bank")
class Bank:
    accounts: dict[str, Account] = attrs.field(factory=dict)

    def open_account(self, owner: str) -> Account:
        if not owner or owner in self.accounts:
            raise BankError(f"cannot open an account for {owner!r}: the name is empty or taken")
        account = self.accounts[owner] = Account(owner)
        return account

    def account(self, owner: str) -> Account:
        try:
            return self.accounts[owner]
        except KeyError:
            raise LookupError(f"no account {owner!r}") from None

    def transfer(self, source: str, target: str, amount: Decimal) -> None:
        # The deposit comes first on purpose: when the withdrawal is refused, the request's
        # transaction is discarded, and the deposit with it.
        self.account(target).deposit(amount, f"from {source}")
        self.account(source).withdraw(amount, f"to {target}")
