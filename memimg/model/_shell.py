"""The model's classes as the functional core sees them (see :mod:`memimg.core._shell`)."""

from __future__ import annotations

from memimg.core._shell import Shell
from memimg.model import _tracking
from memimg.model._base import PersistentBase
from memimg.model._collections import TrackedDict, TrackedList, TrackedSet

__all__ = ["SHELL"]

#: Handed to the core by the image and the module-level functions.
SHELL = Shell(
    tracked_list=TrackedList,
    tracked_dict=TrackedDict,
    tracked_set=TrackedSet,
    entity_base=PersistentBase,
    reads_hooked=_tracking.enabled,
)
