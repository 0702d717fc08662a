"""The other process of the change-feed law (``tests/test_feeds.py``): an image on the same log, in a process of
its own, driven step by step over a pipe.

The parent sends commands, each as ``(number, name, *args)`` and answered ``(number, "ok", answer)`` (the
number of the command answered, so that an answer is never taken for another's): ``("open", kind, folder,
schema)``, then steps (``("op", op)``, ``("tx", ops, discard, with_meta)``, ``("refresh",)``,
``("subscribe",)``), each answered with this image's seq after it, then ``("finish",)``, answered with what
each all-subscription made here was delivered and the history of the log after it, as this image tells it (as
plain data: objects as their ids), then ``("close",)``. An error in a step is answered ``(number, "error",
traceback)``; ``None`` ends the process.
"""

from __future__ import annotations

import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import memimg
from memimg import MISSING
from tests.conftest import StoreFactory
from tests.models import Box, Node
from tests.test_history_laws import Discard, canon, run


def step(node: Node, op: tuple[Any, ...]) -> None:
    """Run *op* on *node* (see ``tests.test_history_laws.run``), outside a transaction: what it checks on this
    image's state may no longer hold once it has caught up with the other process's commits, in the call."""
    try:
        run(node, op)
    except AttributeError:  # del of a field the other process deleted meanwhile
        assert op[0] == "del"
    except IndexError:  # an item the other process took out meanwhile
        assert op[0] in ("setitem", "delitem")


def take(img: memimg.MemoryImage, name: str, args: list[Any], *, by: str) -> None:
    """Take the step *name* of a program, with *args*, on *img*'s graph: ``op`` (see :func:`step`), ``tx``
    (its ops in one transaction, whose metadata names *by* if asked, discarded if asked; a conflict leaves it
    out) or ``refresh``."""
    node: Node = img.root.content
    if name == "op":
        step(node, args[0])
    elif name == "tx":
        body, discard, with_meta = args
        try:
            with img.transaction(meta={"by": by} if with_meta else None):
                for o in body:
                    run(node, o)
                if discard:
                    raise Discard
        except (Discard, memimg.ConflictError):
            pass
    elif name == "refresh":
        img.refresh()
    else:
        raise ValueError(f"no step {name!r} in a program (op, tx, refresh)")


def plain(v: Any) -> Any:
    """*v* as data another process compares: objects of the graph as their ids, MISSING as a marker."""
    if v is MISSING:
        return ("MISSING",)
    if type(v) is tuple:
        return tuple(plain(x) for x in v)
    return canon(v)


def said(c: memimg.Change) -> tuple[Any, ...]:
    """A change as plain data (its fields, the time as the log's microseconds)."""
    return (c.seq, c.tx, c.time, c.meta, plain(c.target), c.kind, c.field, plain(c.key), plain(c.old), plain(c.new))


def told(commit: memimg.Commit) -> tuple[Any, ...]:
    """A delivered commit as plain data."""
    return (commit.first_seq, commit.seq, commit.tx, commit.time, commit.meta, commit.local)


def retold(img: memimg.MemoryImage, since: int) -> list[memimg.Change]:
    """The history of the log after *since*, as *img* tells it: every object's history() merged in seq order."""
    objects = [o for o in img._engine.table.objects if o is not None]
    return sorted((c for o in objects for c in img.history(o, since=since)), key=lambda c: c.seq)


def serve(conn: Connection) -> None:
    """Answer the parent's commands until it sends None (see the module docstring)."""
    img: memimg.MemoryImage | None = None
    stores: StoreFactory | None = None
    everything: list[tuple[int, list[memimg.Commit]]] = []
    while (command := conn.recv()) is not None:
        number, name, *args = command
        try:
            if name == "open":
                kind, folder, schema = args
                stores = StoreFactory(kind, Path(folder))
                stores.schema = schema
                img = stores.open(root=Box, snapshot_every=None)
                everything = []
                conn.send((number, "ok", img.seq))
                continue
            assert img is not None and stores is not None
            if name == "subscribe":
                got: list[memimg.Commit] = []
                img.subscribe(got.append)
                everything.append((img.seq, got))
            elif name == "finish":
                img.refresh()
                conn.send(
                    (
                        number,
                        "ok",
                        [
                            (
                                since,
                                [(told(c), [said(x) for x in c.changes]) for c in got],
                                [said(x) for x in retold(img, since)],
                                {e.tx: e.seq for e in img.events(since=since)},
                            )
                            for since, got in everything
                        ],
                    )
                )
                continue
            elif name == "close":
                img.close()
                stores.close()
                img = stores = None
                conn.send((number, "ok", 0))
                continue
            else:
                take(img, name, args, by="B")
            conn.send((number, "ok", img.seq))
        except BaseException:
            conn.send((number, "error", traceback.format_exc()))
