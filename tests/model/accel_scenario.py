"""A scenario of tracked reads and sets, run in a child process by tests/model/test_accel.py.

It prints, as JSON, which path ran (compiled accelerator or pure Python) and
what every step saw, so that the two paths can be compared step by step.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import memimg
from memimg.model import _accel, _tracking


@memimg.persistent(name="accel.Cell")
class Cell:
    value: Any = 0
    label: str = ""
    hits: int = memimg.field(default=0, merge="add")


@memimg.persistent(name="accel.Other")
class Other(Cell):
    extra: int = 0


def _in_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    return out[0]


def run(path: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    img = memimg.open(path, root=dict)
    img.root["a"], img.root["b"] = Cell(1, "one"), Other(2, "two", extra=3)
    a, b = img.root["a"], img.root["b"]
    _tracking.disable_now()

    # another thread holds a transaction open (hooks on): plain reads here, its writes unseen
    started, finish = threading.Event(), threading.Event()

    def hold() -> None:
        with img.transaction():
            a.value = "theirs"
            started.set()
            finish.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    started.wait(10)
    seen["other_tx"] = [
        _tracking.enabled(),
        a.value,
        a.label,
        b.value,
        b.extra,
        a.hits,
        Cell.value.__name__,
        Cell.__dict__["value"].name,
    ]
    finish.set()
    t.join(10)

    # inside a transaction: its own writes (fast path and not), unseen by other threads until commit
    with img.transaction():
        a.value = 10  # int: the journal fast path
        a.label = "ten"  # ASCII str: fast path
        b.value = "dix é"  # non-ASCII str: the slow path
        b.extra = 2.5
        a.hits += 4
        seen["inside"] = [a.value, a.label, b.value, b.extra, a.hits]
        seen["inside_other_thread"] = _in_thread(lambda: [a.value, a.label, b.value, b.extra, a.hits])
    seen["after"] = [a.value, a.label, b.value, b.extra, a.hits]

    # a discarded transaction leaves nothing; a field set outside one commits at once
    tx = img.begin()
    a.value, a.label = 99, "gone"
    tx.discard()
    b.value = None
    seen["discarded"] = [a.value, a.label, b.value]

    # a reader in another thread while a commit is being applied sees all of it or none
    during: list[Any] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        if target is b and not during:
            during.append(_in_thread(lambda: [a.value, b.value]))

    img._engine.before_apply = hook
    with img.transaction():
        a.value, b.value = 20, 21
    img._engine.before_apply = None
    seen["publishing"] = during

    # errors: a write of a bad field, a read of a missing one
    errors = []
    for fn in (lambda: setattr(a, "nope", 1), lambda: a.nope):
        try:
            fn()
        except AttributeError as exc:
            errors.append(type(exc).__name__)
    seen["errors"] = errors

    # idle reads with no transaction open remove the hooks
    with img.transaction():
        a.value = 30
    for _ in range(_tracking.IDLE_READS + 10):
        a.value
    seen["hooks_after_idle"] = [_tracking.enabled(), type(Cell.__dict__["value"]).__name__, a.value]
    seq = img.seq
    img.close()

    again = memimg.open(path, root=dict)
    seen["replayed"] = [again.seq == seq, again.root["a"].value, again.root["a"].label, again.root["b"].value]
    again.close()
    return seen


if __name__ == "__main__":
    result = run(Path(sys.argv[1]))
    print(json.dumps({"compiled": _accel.speedups is not None, "seen": result}, default=repr))
