"""The imperative shell: entity classes, tracked collections, read tracking."""

from memimg.model._collections import TrackedDict, TrackedList, TrackedSet
from memimg.model._persistent import field, persistent
from memimg.model._shell import SHELL

__all__ = ["SHELL", "TrackedDict", "TrackedList", "TrackedSet", "field", "persistent"]
