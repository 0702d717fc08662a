"""What the tests of reads inside a transaction share (``test_tx_field_reads``, ``test_tx_dict_reads``), and a
transaction held open in another thread (``test_tx_concurrency`` too)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from decimal import Decimal

import memimg
from memimg.image._tx import TxState
from tests.conftest import Images
from tests.models import Account, Bank


def bank(make_image: Images) -> memimg.MemoryImage:
    """An image of a bank with three accounts, ``a``, ``b`` and ``c``, of 10 each."""
    img = make_image(root=Bank)
    img.root.accounts.update({k: Account(k, balance=Decimal(10)) for k in "abc"})
    return img


def open_state(img: memimg.MemoryImage) -> TxState:
    """The transaction open in this context."""
    state = img._engine.current_tx()
    assert state is not None
    return state


@contextlib.contextmanager
def open_elsewhere(img: memimg.MemoryImage) -> Iterator[None]:
    """A transaction of *img* held open in another thread while the block runs (then closed, the thread joined)."""
    opened, done = threading.Event(), threading.Event()

    def hold() -> None:
        with img.transaction():
            opened.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert opened.wait(10)
        yield
    finally:
        done.set()
        thread.join()
