"""The first states of objects that ``MemoryImage.history`` read from big events, remembered within a budget."""

from __future__ import annotations

import threading
from typing import Any, Final

import orjson

__all__ = ["FIRST_STATES_BYTES", "FirstStates"]

_loads = orjson.loads

#: How many bytes of stored first states :class:`FirstStates` keeps at most (their JSON's size).
FIRST_STATES_BYTES: Final = 16 * 1024 * 1024


class FirstStates:
    """First states ``MemoryImage.history`` read from big events, by object id: ``(seq, type name, stored
    state, declaration)`` -- at most :data:`FIRST_STATES_BYTES` of them, kept as their JSON (so the memory
    held is what is counted; each hit parses one object's state, not the big event), the oldest remembered
    forgotten first. Safe to use from several threads (history may be called from any)."""

    def __init__(self) -> None:
        self.limit = FIRST_STATES_BYTES
        self.size = 0
        self._states: dict[int, tuple[int, str, bytes, Any]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, oid: int) -> tuple[int, str, Any, Any] | None:
        """*oid*'s remembered ``(seq, type name, state, declaration)``: the state parsed anew (the caller's own)."""
        found = self._states.get(oid)
        if found is None:
            return None
        seq, name, data, declared = found
        return seq, name, _loads(data), declared

    def remember(self, oid: int, seq: int, name: str, state: Any, declared: Any) -> None:
        """Keep *oid*'s first state (not if it alone is over the limit), forgetting the oldest ones to fit."""
        data = orjson.dumps(state)
        with self._lock:
            states = self._states
            old = states.pop(oid, None)
            if old is not None:
                self.size -= len(old[2])
            if len(data) > self.limit:
                return
            while states and self.size + len(data) > self.limit:
                self.size -= len(states.pop(next(iter(states)))[2])
            states[oid] = (seq, name, data, declared)
            self.size += len(data)
