"""What the functional core needs of the imperative shell, handed to it rather than imported.

The core makes and recognises the shell's objects -- entities and tracked
collections -- when it reads a log, encodes a state or applies an event,
but it imports nothing of the model: the layer above hands it a
:class:`Shell` (``memimg.model.SHELL``) naming the three tracked collection
classes and the base every entity class derives from. So the core can be
read, tested and reasoned about on its own, and the dependency runs one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

__all__ = ["Shell"]


@final
class Shell:
    """The tracked collection classes and the entity base of one model.

    Every entity and tracked collection carries two slots: ``_mi_img``, the
    owner it is attached to (``None`` while free-standing), and ``_mi_oid``,
    its object id (``None`` until a commit gives it one).
    """

    __slots__ = (
        "by_name",
        "dict",
        "entity_base",
        "list",
        "names",
        "reads_hooked",
        "set",
        "set_oid",
        "set_owner",
        "tracked",
        "tracked_for",
    )

    def __init__(
        self,
        *,
        tracked_list: type,
        tracked_dict: type,
        tracked_set: type,
        entity_base: type,
        reads_hooked: Callable[[], bool],
    ) -> None:
        self.list, self.dict, self.set = tracked_list, tracked_dict, tracked_set
        self.entity_base = entity_base
        #: whether read hooks are installed on the model's classes right now: while they are not,
        #: a plain attribute load of a field is a raw slot read (the generated encoders use them)
        self.reads_hooked = reads_hooked
        #: collection class -> the type name the log stores for it, and back
        self.names: dict[type, str] = {tracked_list: "list", tracked_dict: "dict", tracked_set: "set"}
        self.by_name: dict[str, type] = {name: cls for cls, name in self.names.items()}
        #: builtin container -> its tracked class
        self.tracked_for: dict[type, type] = {list: tracked_list, dict: tracked_dict, set: tracked_set}
        self.tracked: frozenset[type] = frozenset(self.names)
        #: the raw (never hooked) setters of an entity's two slots
        self.set_owner: Callable[[Any, Any], None] = entity_base.__dict__["_mi_img"].__set__
        self.set_oid: Callable[[Any, Any], None] = entity_base.__dict__["_mi_oid"].__set__

    def set_identity(self, obj: Any, owner: Any, oid: int | None) -> None:
        """Set the owner and object id of an entity or a tracked collection."""
        if isinstance(obj, self.entity_base):
            self.set_owner(obj, owner)
            self.set_oid(obj, oid)
        else:
            obj._mi_img = owner
            obj._mi_oid = oid
