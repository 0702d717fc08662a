"""The image the inspector's tests look at: a bank with values that try to inject script, and a long list."""

from __future__ import annotations

import re
from decimal import Decimal

import attrs

import memimg
from tests.models import Account, Entry

#: A value that would run if a page did not escape it.
XSS_SCRIPT = '<script>alert("pwned")</script>'
#: A value that would add an attribute if a page put it unescaped inside one.
XSS_ATTR = '"onmouseover="alert(1)'
#: How many entries bob's list holds: more than a page.
LONG = 120


@attrs.define
class Marks:
    """The seqs and object ids the tests look for."""

    opened: int = 0  # ada made, balance 10
    raised: int = 0  # ada's balance 20 (by bob)
    xss: int = 0  # the values with script in them
    head: int = 0
    ada: int = 0
    bob: int = 0
    shady: int = 0
    entry: int = 0
    entries: int = 0


def build(img: memimg.MemoryImage) -> Marks:
    """Fill *img* (root ``Bank``) and say where things are."""
    marks = Marks()
    bank = img.root
    with img.transaction(meta={"user": "ada", "reason": "opening"}):
        bank.accounts["ada"] = Account("ada", Decimal(10))
    marks.opened = img.seq
    with img.annotate(user="bob"):
        bank.accounts["ada"].balance = Decimal(20)
    marks.raised = img.seq
    with img.transaction(meta={"user": XSS_SCRIPT}):
        shady = bank.accounts[XSS_ATTR] = Account(XSS_ATTR, tags={XSS_SCRIPT})
        shady.entries.append(Entry(XSS_SCRIPT, Decimal(1)))
        bank.name = XSS_SCRIPT
    shady.owner = XSS_ATTR + "!"
    marks.xss = img.seq
    with img.transaction(meta={"user": "carol"}):
        bob = bank.accounts["bob"] = Account("bob")
        bob.entries.extend(Entry(f"e{i}", Decimal(i)) for i in range(LONG))
    marks.head = img.seq
    marks.ada = bank.accounts["ada"]._mi_oid
    marks.bob = bob._mi_oid
    marks.shady = shady._mi_oid
    marks.entry = shady.entries[0]._mi_oid
    marks.entries = bob.entries._mi_oid
    return marks


def assert_escaped(body: str, *, shown: bool = True) -> None:
    """*body* holds no raw script or attribute from the values (and, if *shown*, shows one of them escaped)."""
    assert "<script>alert" not in body
    assert '"onmouseover="alert' not in body
    assert 'onmouseover="alert' not in body
    if shown:
        assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in body or "&#34;onmouseover=&#34;alert(1)" in body


def text(body: str) -> str:
    """*body* as a person reads it: tags out, whitespace folded, entities kept (escaped values stay visible)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()
