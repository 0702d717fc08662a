"""The guard against user code that changes the image in the middle of a change.

memimg calls user code while it plans a change (``__hash__`` and ``__eq__``
of keys and set members, sort key functions) and while it applies committed
events (the builtin dict and set operations hash and compare keys again). A
change made by that code would land inside the one being planned or applied
-- before it, or between its events -- so while this thread is doing either,
the image's ``busy`` says what it is doing, and every way to change the
image (and to catch up with other processes) refuses with :func:`reentered`.
"""

from __future__ import annotations

import sys

from memimg._errors import MemimgError

__all__ = ["reentered"]


def reentered(during: str) -> MemimgError:
    """The error of user code changing the image while memimg runs it in the middle of a change.

    memimg calls user code while it plans a change (``__hash__`` and
    ``__eq__`` of keys and set members, sort key functions) and while it
    applies committed events (the builtin dict and set operations hash and
    compare keys again). A change made by that code would land inside the
    one being planned or applied -- before it, or between its events --
    so it is refused. The culprit is the outermost frame of user code that
    memimg called (found only here, when refusing).
    """
    culprit = "user code"
    frame = sys._getframe(1)
    seen_user = False
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        if module == "memimg" or module.startswith("memimg."):
            if seen_user:
                break
        else:
            seen_user = True
            culprit = frame.f_code.co_qualname
        frame = frame.f_back  # type: ignore[assignment]
    return MemimgError(
        f"{culprit} tried to change the image while memimg was {during}: code that memimg runs then "
        "(__hash__ and __eq__ of dict keys and set members, sort key functions) must not change the "
        "image; this change was refused, nothing of it was written",
        culprit=culprit,
        during=during,
    )
