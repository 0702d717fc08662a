"""``python -m memimg demo``: a small bank kept in an SQLite file.

Run it twice: the first run creates the bank; every later run recovers it
(printing how: snapshot + replayed events), makes a few transfers in
transactions, and shows the history of one account. Nothing here is special
to the demo: it is the ordinary use of memimg.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import attrs
import click

import memimg
from memimg import persistent


@persistent(name="memimg.demo.Entry")
class Entry:
    """One line of an account's statement."""

    when: dt.datetime
    amount: Decimal
    memo: str


@persistent(name="memimg.demo.Account")
class Account:
    owner: str
    balance: Decimal = Decimal("0")
    entries: list[Entry] = attrs.field(factory=list)
    tags: set[str] = attrs.field(factory=set)

    def post(self, amount: Decimal, memo: str) -> None:
        self.balance += amount
        self.entries.append(Entry(dt.datetime.now(dt.UTC), amount, memo))


@persistent(name="memimg.demo.Bank")
class Bank:
    name: str = "Demo Bank"
    accounts: dict[str, Account] = attrs.field(factory=dict)
    runs: int = 0


def transfer(img: memimg.MemoryImage, bank: Bank, src: str, dst: str, amount: Decimal) -> None:
    """Move money atomically: both postings commit together, or neither does."""
    with img.transaction():
        if bank.accounts[src].balance < amount:
            raise ValueError(f"{src} cannot pay {amount}")
        bank.accounts[src].post(-amount, f"to {dst}")
        bank.accounts[dst].post(amount, f"from {src}")


def run(path: str) -> None:
    started = time.perf_counter()
    img = memimg.open(path, root=Bank)
    took = time.perf_counter() - started
    bank: Bank = img.root
    echo = click.echo
    if bank.runs == 0:
        echo(f"Created a new image in {path}")
        with img.transaction():
            for name, opening in (("ada", "100"), ("grace", "50"), ("linus", "20")):
                bank.accounts[name] = Account(name)
                bank.accounts[name].post(Decimal(opening), "opening deposit")
            bank.accounts["ada"].tags.add("founder")
    else:
        snaps = img.store.snapshots()
        base = f"the snapshot at seq {snaps[0].seq} + {img.seq - snaps[0].seq} events" if snaps else f"{img.seq} events"
        echo(f"Recovered {path} (run #{bank.runs + 1}) from {base} in {took * 1000:.1f} ms")
    bank.runs += 1
    transfer(img, bank, "ada", "grace", Decimal("7.50"))
    transfer(img, bank, "grace", "linus", Decimal("2.25"))
    try:
        transfer(img, bank, "linus", "ada", Decimal("1000"))
    except ValueError as err:
        echo(f"Refused: {err} (the transaction was discarded; nothing was logged)")
    if bank.runs % 3 == 0:
        echo(f"Snapshot written at seq {img.snapshot()}")
    echo("")
    echo(f"{bank.name}, after {bank.runs} run(s):")
    for acct in bank.accounts.values():
        tags = f"  [{', '.join(sorted(acct.tags))}]" if acct.tags else ""
        echo(f"  {acct.owner:<6} {acct.balance:>9}  ({len(acct.entries)} entries){tags}")
    total = sum(a.balance for a in bank.accounts.values())
    echo(f"  total  {total:>9}  (money is neither created nor lost)")
    echo("")
    echo("The last events in the log:")
    events = list(img.events(since=max(0, img.seq - 5)))
    for e in events:
        echo(f"  seq {e.seq:>4}  tx {e.tx:>4}  {e.kind:<12} object {e.target:<4} {str(e.data)[:60]}")
    echo("")
    echo(f"Run `python -m memimg demo` again to see it recovered, or `memimg show {path}`.")
    img.close()
