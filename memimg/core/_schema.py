"""Schema evolution: reading states written by older versions of the classes.

The log declares, for every class whose state it holds, the stable name,
version and field names the writer had (``types`` in events and snapshots).
When a declaration differs from the code, a :class:`Plan` says how to read
states written under it -- and what the user must still declare:

======================================  =========================================
change                                  what the user writes
======================================  =========================================
add a field with a default; reorder     nothing (old states get the default)
rename a field                          ``memimg.field(renamed_from="old")``
rename or move a class                  ``@persistent(name=..., aliases=("old",))``
remove a field                          ``@persistent(removed=("old",))``
remove a class                          ``memimg.open(..., removed_types=("x.Y",))``
change a field's type or meaning        ``@persistent(version=2)`` + ``@memimg.upgrader``
======================================  =========================================

A field whose declared type (recorded as text: :mod:`memimg.core._typetext`)
differs from the stored one at the same version is a difference too: its
fix is the version bump and upgrader of the last row; dropped, the values
are kept as stored.

A state is read by running the upgraders from the stored version to the
class's version (plain functions over plain dicts), then applying renames and
removals. Everything the code does not declare is collected as a
*difference* with its one-line fix; ``open`` raises :class:`SchemaError`
listing them all, unless ``on_schema_drift="drop"``. What was done is
counted in a :class:`SchemaReport` (``img.schema_report``).

An upgrader that raises, or returns something other than a dict, is a bug in
the code, not damage to the log: it is a :class:`SchemaError` naming the
upgrader, the type and the stored version, chained from what the upgrader
raised. The reader that knows where the state is stored (an event's seq, a
snapshot's) adds it with :func:`locate` on the way out, so every reader --
snapshot loading, attach records, field events, value objects -- reports it
the same way, never as a ``CorruptLogError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import attrs

from memimg._errors import MemimgError, SchemaError, UnknownTypeError
from memimg.core import _types, _typetext
from memimg.core._generic import StandInMaker

__all__ = ["Plan", "SchemaReport", "default_for", "plan_for", "upgrader"]

Upgrader = Callable[[dict[str, Any]], dict[str, Any]]

_UPGRADERS: dict[tuple[str, int], Upgrader] = {}


def upgrader(type_name: str, *, from_version: int) -> Callable[[Upgrader], Upgrader]:
    """Register a function that upgrades stored states of *type_name* from *from_version*.

    The function takes and returns a plain ``dict`` of field name to value
    (values already decoded: ``Decimal``, ``datetime``, entities...), and
    must not depend on anything else, so it can be tested on its own::

        @memimg.upgrader("shop.Product", from_version=1)
        def _cents_to_price(state: dict) -> dict:
            if "cents" in state:
                state["price"] = Decimal(state.pop("cents")) / 100
            return state

    States come whole from snapshots and attach events, and *partial* from
    field-set events (``{"cents": 250}`` alone), so transform only the keys
    present. Upgraders chain: a version 1 state goes through the
    ``from_version=1`` upgrader, then ``from_version=2``, and so on up to the
    class's ``@persistent(version=...)``.
    """
    if not isinstance(from_version, int) or from_version < 1:
        raise ValueError("from_version must be an int >= 1")

    def register(fn: Upgrader) -> Upgrader:
        _UPGRADERS[(type_name, from_version)] = fn
        return fn

    return register


def _find_upgrader(info: _types.TypeInfo, stored_name: str, version: int) -> Upgrader | None:
    for name in (info.name, stored_name, *info.aliases):
        fn = _UPGRADERS.get((name, version))
        if fn is not None:
            return fn
    return None


@attrs.define
class SchemaReport:
    """What reading the log under the current classes found and did.

    ``differences`` lists what the code does not declare (each line with its
    fix); the counters say how many stored values each declared change
    touched.
    """

    __module__ = "memimg"

    differences: list[str] = attrs.field(factory=list)
    unknown_types: list[str] = attrs.field(factory=list)
    renamed_types: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    renamed_fields: Counter[tuple[str, str, str]] = attrs.field(factory=Counter)
    dropped_fields: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    defaults_filled: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    upgraded: Counter[tuple[str, int, int]] = attrs.field(factory=Counter)
    removed_objects: Counter[str] = attrs.field(factory=Counter)
    references_cleared: int = 0
    elements_dropped: int = 0
    events_skipped: int = 0
    snapshot_seq: int | None = None

    def difference(self, line: str) -> None:
        if line not in self.differences:
            self.differences.append(line)

    @property
    def changed(self) -> bool:
        """Whether the stored data differs from the code's schema at all."""
        return bool(
            self.differences
            or self.renamed_types
            or self.renamed_fields
            or self.dropped_fields
            or self.defaults_filled
            or self.upgraded
            or self.removed_objects
            or self.references_cleared
            or self.elements_dropped
        )

    def lines(self) -> list[str]:
        """A human-readable account, one change per line."""
        out = [f"difference: {d}" for d in self.differences]
        out += [f"type {old} read as {new}: {n} object(s)" for (old, new), n in self.renamed_types.items()]
        out += [f"{t}.{old} read as .{new}: {n} value(s)" for (t, old, new), n in self.renamed_fields.items()]
        out += [f"{t}.{f} dropped: {n} value(s)" for (t, f), n in self.dropped_fields.items()]
        out += [f"{t}.{f} filled with its default: {n} object(s)" for (t, f), n in self.defaults_filled.items()]
        out += [f"{t} upgraded v{a} -> v{b}: {n} state(s)" for (t, a, b), n in self.upgraded.items()]
        out += [f"{t} removed: {n} object(s)" for t, n in self.removed_objects.items()]
        if self.references_cleared:
            out.append(f"references to removed objects set to None: {self.references_cleared}")
        if self.elements_dropped:
            out.append(f"collection elements that were removed objects dropped: {self.elements_dropped}")
        if self.events_skipped:
            out.append(f"events on removed objects skipped: {self.events_skipped}")
        if self.snapshot_seq is not None:
            out.append(f"snapshot written in the current schema at seq {self.snapshot_seq}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines()) or "no schema changes"


DROP: Final[Any] = object()


@attrs.define
class Plan:
    """How to read states stored under one (name, version, fields) declaration."""

    stored_name: str
    info: _types.TypeInfo | None  #: None: the type is removed or unknown
    version: int
    stored_fields: tuple[str, ...]
    #: upgraders to run, in order
    chain: list[Upgrader] = attrs.field(factory=list)
    #: stored (or upgraded) field name -> current field name, or DROP
    field_map: dict[str, Any] = attrs.field(factory=dict)
    #: current fields absent from stored states: filled with their default
    missing: tuple[str, ...] = ()
    #: states can be used as stored
    identity: bool = True
    #: the code does not declare how to read some of these states (a difference was reported)
    undeclared: bool = False

    @property
    def removed(self) -> bool:
        return self.info is None


def plan_for(
    stored_name: str,
    version: int,
    stored_fields: tuple[str, ...],
    report: SchemaReport,
    removed_types: frozenset[str],
    *,
    stand_ins: StandInMaker | None = None,
    value: bool = False,
    stored_types: tuple[str, ...] | None = None,
) -> Plan:
    """The plan for states declared as (*stored_name*, *version*, *stored_fields*).

    With *stand_ins*, a type no class claims gets a stand-in class made by it
    (see :mod:`memimg.core._generic`); *value* says the declaration is of a
    value type; *stored_types* are the declared field types (``None``: a
    declaration from before they were recorded).
    """
    if stored_name in removed_types:
        return Plan(stored_name, None, version, stored_fields, identity=False)
    kind = _types.VALUE if value else _types.ENTITY
    try:
        info = _types.resolve(stored_name, kind)
    except UnknownTypeError:
        if stand_ins is not None:
            info = stand_ins(stored_name, stored_fields, version, value, stored_types)
            return Plan(stored_name, info, version, stored_fields, field_map={f: f for f in stored_fields})
        if stored_name not in report.unknown_types:
            report.unknown_types.append(stored_name)
        report.difference(
            f"type {stored_name!r} is stored but no class claims it: {_types.missing_class_advice(stored_name, kind)}"
        )
        return Plan(stored_name, None, version, stored_fields, identity=False)
    if info.stand_in:
        return _stand_in_plan(info, stored_name, version, stored_fields, report)
    plan = Plan(stored_name, info, version, stored_fields)
    _plan_upgrades(plan, info, report)
    if not plan.chain:  # upgraders see states whole, renames and removals after them
        _plan_fields(plan, info, report)
        if stored_types is not None and plan.version == info.version:
            _check_types(plan, info, stored_types, report)
    plan.identity = (
        not plan.chain
        and stored_name == info.name
        and all(k == t for k, t in plan.field_map.items())
        and not plan.missing
    )
    return plan


def _plan_upgrades(plan: Plan, info: _types.TypeInfo, report: SchemaReport) -> None:
    """The chain of upgraders from the stored version to the class's (what is missing is a difference)."""
    cls = info.cls.__qualname__
    if plan.version > info.version:
        plan.undeclared = True
        report.difference(
            f"{info.name} is stored at version {plan.version} but {cls} is version {info.version}: the log was "
            "written by a newer version of the program; run that version"
        )
    v = plan.version
    while v < info.version:
        fn = _find_upgrader(info, plan.stored_name, v)
        if fn is None:
            plan.undeclared = True
            report.difference(
                f"{info.name} is stored at version {v} and {cls} is version {info.version}: add "
                f'@memimg.upgrader("{info.name}", from_version={v}) to convert its states'
            )
            break
        plan.chain.append(fn)
        v += 1


def _plan_fields(plan: Plan, info: _types.TypeInfo, report: SchemaReport) -> None:
    """Where each stored field goes (kept, renamed, dropped), and which fields get their default."""
    cls = info.cls.__qualname__
    current = set(info.fields)
    renamed_from = {old: new for new, old in info.renamed.items()}
    for name in plan.stored_fields:
        if name in current:
            plan.field_map[name] = name
        elif name in renamed_from:
            plan.field_map[name] = renamed_from[name]
        elif name in info.removed:
            plan.field_map[name] = DROP
        else:
            plan.undeclared = True
            report.difference(
                f"{info.name}.{name} is stored but {cls} has no field {name!r}: add it back, rename the "
                f'field that replaces it with memimg.field(renamed_from="{name}"), or declare '
                f'@persistent(removed=("{name}",))'
            )
            plan.field_map[name] = DROP
    provided = {t for t in plan.field_map.values() if t is not DROP}
    missing = tuple(f for f in info.fields if f not in provided)
    for f in missing:
        if f not in info.defaults:
            plan.undeclared = True
            report.difference(
                f"{cls}.{f} is not in the stored {info.name} states and has no default: give it a "
                f'default, or raise the version and fill it in with @memimg.upgrader("{info.name}", ...)'
            )
    plan.missing = tuple(f for f in missing if f in info.defaults)


def _check_types(plan: Plan, info: _types.TypeInfo, stored_types: tuple[str, ...], report: SchemaReport) -> None:
    """Report each field whose declared type differs from the stored one at the same version (type drift).

    Values are read as stored whatever is done about it: with
    ``on_schema_drift="drop"``, the field keeps its stored values and the
    log records the new type with the class's next write.
    """
    current = _typetext.field_types(info)
    if current is None:
        return
    now = dict(zip(info.fields, current, strict=True))
    cls = info.cls.__qualname__
    v = info.version
    for stored_field, stored_type in zip(plan.stored_fields, stored_types, strict=True):
        target = plan.field_map.get(stored_field)
        if target is None or target is DROP:
            continue
        declared = now[target]
        if not _typetext.same_type(stored_type, declared):
            plan.undeclared = True
            report.difference(
                f"{info.name}.{stored_field} is stored as {stored_type!r} but {cls}.{target} is declared "
                f"{declared!r} at the same version ({v}): raise it, @persistent(version={v + 1}), and convert "
                f'the stored values with @memimg.upgrader("{info.name}", from_version={v}) (one that returns the '
                "state as it is will do if the stored values fit the new type)"
            )


def _stand_in_plan(
    info: _types.TypeInfo, stored_name: str, version: int, stored_fields: tuple[str, ...], report: SchemaReport
) -> Plan:
    """States of a type read without its class: kept as stored, never upgraded or filled in."""
    extra = [f for f in stored_fields if f not in info.fields]
    if extra:
        report.difference(
            f"{stored_name} is stored with fields {extra} that its stand-in (made from earlier "
            "declarations) lacks: open the image again, or load its class with --import"
        )
    if version != info.version:
        report.difference(
            f"{stored_name} is stored at version {version} and at version {info.version}: without its "
            "class the older states cannot be upgraded; load the application's classes with --import"
        )
    plan = Plan(stored_name, info, version, stored_fields, field_map={f: f for f in stored_fields if f in info.fields})
    plan.identity = not extra and version == info.version
    return plan


def _upgrader_failed(
    info: _types.TypeInfo, fn: Upgrader, version: int, state: dict[str, Any], partial: bool, problem: str
) -> SchemaError:
    """The error of upgrader *fn* failing on *state*: a bug in the code, not in the log, so not corruption.

    Where the state is stored is not known here; the reader that knows adds it (:func:`locate`).
    """
    err = SchemaError(
        "",
        type_name=info.name,
        upgrader=f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', repr(fn))}",
        from_version=version,
        fields=tuple(state),
        partial=partial,
        problem=problem,
    )
    _describe_failure(err, None)
    return err


def _describe_failure(err: SchemaError, where: str | None) -> None:
    fields = ", ".join(map(repr, err.fields)) or "no fields"
    shape = f"a partial state (only {fields})" if err.partial else f"a state with fields {fields}"
    hint = (
        ": field-set events store only the fields they set, so an upgrader must transform only the keys present"
        if err.partial
        else ""
    )
    err.message = (
        f"upgrader {err.upgrader} (of {err.type_name} from version {err.from_version}) {err.problem} on {shape}"
        f"{f' stored in {where}' if where else ''}{hint}. Fix the upgrader; the log is intact and nothing "
        "was written"
    )
    err.args = (err.message,)
    err.differences = [err.message]


def locate(err: MemimgError, seq: int | None, where: str) -> None:
    """Add where the state is stored to *err*, if it is an upgrader's failure not yet located.

    Readers catch errors on their way out and call this with the seq of the
    event or snapshot they were reading; the innermost (most precise) wins.
    """
    if isinstance(err, SchemaError) and err.upgrader is not None and err.where is None:
        err.seq = seq
        err.where = where
        _describe_failure(err, where)


def upgrade_state(plan: Plan, state: dict[str, Any], report: SchemaReport, *, partial: bool) -> dict[str, Any]:
    """Turn a decoded stored state into ``{current field: value}`` following *plan*."""
    info = plan.info
    assert info is not None
    if plan.chain:
        v = plan.version
        for fn in plan.chain:
            given = state
            try:
                state = fn(dict(given))
            except Exception as err:
                raise _upgrader_failed(info, fn, v, given, partial, f"raised {type(err).__name__}: {err}") from err
            if not isinstance(state, dict):
                got = "None" if state is None else f"a {type(state).__name__}"
                raise _upgrader_failed(info, fn, v, given, partial, f"returned {got}, not the state dict")
            report.upgraded[(info.name, v, v + 1)] += 1
            v += 1
        current = set(info.fields)
        renamed_from = {old: new for new, old in info.renamed.items()}
        out = {}
        for k, value in state.items():
            if k in current:
                out[k] = value
            elif k in renamed_from:
                out[renamed_from[k]] = value
                report.renamed_fields[(info.name, k, renamed_from[k])] += 1
            elif k in info.removed:
                report.dropped_fields[(info.name, k)] += 1
            else:
                report.difference(
                    f"upgraded {info.name} states have a field {k!r} that {info.cls.__qualname__} lacks: "
                    "make the upgraders produce the current fields"
                )
        if not partial:
            for f in info.fields:
                if f not in out and f in info.defaults:
                    report.defaults_filled[(info.name, f)] += 1
        return out
    out = {}
    for k, value in state.items():
        target = plan.field_map.get(k)
        if target is None:  # a field the declaration did not list: drift in the data itself
            target = k if k in info.fields else DROP
            if target is DROP:
                report.difference(
                    f"{info.name}.{k} is stored but {info.cls.__qualname__} has no field {k!r}: add it back or "
                    f'declare @persistent(removed=("{k}",))'
                )
        if target is DROP:
            report.dropped_fields[(info.name, k)] += 1
        else:
            if target != k:
                report.renamed_fields[(info.name, k, target)] += 1
            out[target] = value
    if not partial:
        for f in plan.missing:
            report.defaults_filled[(info.name, f)] += 1
    if plan.stored_name != info.name:
        report.renamed_types[(plan.stored_name, info.name)] += 1
    return out


def default_for(info: _types.TypeInfo, field: str, obj: Any) -> Any:
    """The default of *field* for a stored state that lacks it (a field added since)."""
    if field not in info.defaults:
        raise MemimgError(
            f"stored {info.name} has no value for field {field!r}, which has no default: "
            f"give {info.cls.__qualname__}.{field} a default or factory, or write an upgrader "
            f"(@memimg.upgrader({info.name!r}, from_version=...)) that fills it in",
            type_name=info.name,
            field=field,
        )
    default = info.defaults[field]
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory(obj) if default.takes_self else default.factory()
    return default
