"""Helpers of the time-travel tests: random programs on the bank model, a plain projection of a graph, and a
small interpreter of :class:`memimg.Difference` records on that projection."""

from __future__ import annotations

import ast
from decimal import Decimal
from typing import Any

import attrs
from hypothesis import strategies as st

import memimg
from tests.models import Account, Bank, Entry

NAMES = ("ada", "bob", "cy")

#: One mutation of the bank: (operation, name index, number).
op = st.tuples(
    st.sampled_from(
        ["open", "close", "link", "deposit", "tag", "untag", "entry", "pop", "amend", "rename", "reverse", "unset"]
    ),
    st.integers(0, len(NAMES) - 1),
    st.integers(0, 3),
)
#: A step of a program: a mutation, a transaction of several, or a snapshot.
step = st.one_of(
    op.map(lambda o: ("op", [o])),
    st.lists(op, min_size=1, max_size=4).map(lambda ops: ("tx", ops)),
    st.just(("snapshot", [])),
)
program = st.lists(step, min_size=1, max_size=25)


def apply_op(bank: Bank, o: tuple[str, int, int]) -> None:
    """Apply mutation *o* to *bank* (a mutation that does not apply does nothing)."""
    name, i, n = o
    who = NAMES[i]
    accounts = bank.accounts
    acct = accounts.get(who)
    if name == "open":
        accounts[who] = Account(who, balance=Decimal(n))
    elif name == "close":
        accounts.pop(who, None)
    elif name == "link":  # the same account under two names: shared, reported once at its shortest path
        other = accounts.get(NAMES[n % len(NAMES)])
        if other is not None:
            accounts[who] = other
    elif name == "rename":
        bank.name = f"bank{n}"
    elif acct is None:
        return
    elif name == "deposit":
        acct.balance = getattr(acct, "balance", Decimal(0)) + n
    elif name == "tag":
        acct.tags.add(f"t{n}")
    elif name == "untag":
        acct.tags.discard(f"t{n}")
    elif name == "entry":
        acct.entries.append(Entry(f"e{n}", Decimal(n)))
    elif name == "pop" and acct.entries:
        acct.entries.pop()
    elif name == "amend" and acct.entries:
        acct.entries[0].amount = Decimal(n)
    elif name == "reverse":
        acct.entries.reverse()
    elif name == "unset" and hasattr(acct, "balance"):
        del acct.balance  # an unset field: MISSING in a Difference


def run(img: memimg.MemoryImage, prog: list[tuple[str, list[Any]]]) -> dict[int, dict[str, Any]]:
    """Run *prog* on *img*; the state observed right after each commit, by seq."""
    seen = {img.seq: project(img.root)}
    for kind, ops in prog:
        if kind == "snapshot":
            img.snapshot()
        elif kind == "tx":
            with img.transaction():
                for o in ops:
                    apply_op(img.root, o)
        else:
            apply_op(img.root, ops[0])
        seen.setdefault(img.seq, project(img.root))
    return seen


# -- the projection ------------------------------------------------------------------


def _is_object(v: Any) -> bool:
    return isinstance(v, (memimg.TrackedList, memimg.TrackedDict, memimg.TrackedSet)) or (
        attrs.has(type(v)) and hasattr(v, "_mi_oid")
    )


def project(root: Any) -> dict[str, Any]:
    """The reachable graph from *root* as plain data: ``{"root": oid, "nodes": {oid: node}}``, references as
    ``("@", oid)`` -- so two states are equal exactly when they hold equal values with the same identities."""
    nodes: dict[int, Any] = {}
    add_node(nodes, root)
    return {"root": root._mi_oid, "nodes": nodes}


def add_node(nodes: dict[int, Any], obj: Any) -> tuple[str, int]:
    """Add *obj* and what it reaches (the objects not in *nodes* yet) to *nodes*; its reference."""
    work = [obj]
    while work:
        o = work.pop()
        if o._mi_oid in nodes:
            continue
        nodes[o._mi_oid] = node = _node_of(o)
        for v in _values(node):
            if _is_object(v):
                work.append(v)
        _refs_in_place(node)
    return ("@", obj._mi_oid)


def _node_of(o: Any) -> dict[str, Any]:
    if isinstance(o, memimg.TrackedDict):
        return {"$dict": dict(o)}
    if isinstance(o, memimg.TrackedList):
        return {"$list": list(o)}
    if isinstance(o, memimg.TrackedSet):
        return {"$set": set(o)}
    fields = {}
    for a in attrs.fields(type(o)):
        try:
            fields[a.name] = getattr(o, a.name)
        except AttributeError:
            pass
    return {"$type": type(o).__name__, "fields": fields}


def _values(node: dict[str, Any]) -> list[Any]:
    if "$dict" in node:
        return list(node["$dict"].values())
    if "$list" in node:
        return list(node["$list"])
    if "$set" in node:
        return list(node["$set"])
    return list(node["fields"].values())


def ref(v: Any) -> Any:
    return ("@", v._mi_oid) if _is_object(v) else v


def _refs_in_place(node: dict[str, Any]) -> None:
    if "$dict" in node:
        node["$dict"] = {k: ref(v) for k, v in node["$dict"].items()}
    elif "$list" in node:
        node["$list"] = [ref(v) for v in node["$list"]]
    elif "$set" in node:
        node["$set"] = {ref(v) for v in node["$set"]}
    else:
        node["fields"] = {k: ref(v) for k, v in node["fields"].items()}


# -- applying a diff -----------------------------------------------------------------


def apply_diff(state: dict[str, Any], diff: memimg.Diff) -> dict[str, Any]:
    """*state* (a projection) with every Difference of *diff* applied in order, checking each ``old``.

    A Difference names its place by a path from the root in the new state;
    applied in order, every step of the path is already as it is in the new
    state. New objects (not in *state*) are projected from the object the
    Difference holds.
    """
    nodes = {oid: _copy(node) for oid, node in state["nodes"].items()}

    def conv(v: Any) -> Any:
        if _is_object(v):
            return add_node(nodes, v) if v._mi_oid not in nodes else ("@", v._mi_oid)
        return v

    for d in diff:
        steps = _steps(d.path)
        whole = _walk(nodes, state["root"], steps)
        if whole is not None and "$list" in whole and type(d.old) is list and type(d.new) is list:
            assert whole["$list"] == [ref(v) for v in d.old], d
            whole["$list"] = [conv(v) for v in d.new]
            continue
        if whole is not None and "$set" in whole and (d.old is memimg.MISSING) != (d.new is memimg.MISSING):
            if d.old is memimg.MISSING:
                assert d.new not in whole["$set"], d
                whole["$set"].add(d.new)
            else:
                whole["$set"].remove(d.old)
            continue
        holder = _walk(nodes, state["root"], steps[:-1])
        assert holder is not None, d
        slots = holder["$dict"] if "$dict" in holder else holder["fields"]
        assert slots.get(steps[-1], memimg.MISSING) == (memimg.MISSING if d.old is memimg.MISSING else ref(d.old)), d
        if d.new is memimg.MISSING:
            del slots[steps[-1]]
        else:
            slots[steps[-1]] = conv(d.new)
    kept = _reachable(nodes, state["root"])
    return {"root": state["root"], "nodes": {oid: n for oid, n in nodes.items() if oid in kept}}


def _copy(node: dict[str, Any]) -> dict[str, Any]:
    out = dict(node)
    for k in ("$dict", "$list", "$set", "fields"):
        if k in out:
            out[k] = type(out[k])(out[k])
    return out


def _steps(path: str) -> list[Any]:
    """``root.accounts['ada'].balance`` -> ``['accounts', 'ada', 'balance']`` (a Python expression, parsed)."""
    node = ast.parse(path, mode="eval").body
    out: list[Any] = []
    while not isinstance(node, ast.Name):
        if isinstance(node, ast.Attribute):
            out.append(node.attr)
            node = node.value
        else:
            assert isinstance(node, ast.Subscript), path
            out.append(ast.literal_eval(node.slice))
            node = node.value
    assert node.id == "root", path
    return out[::-1]


def _walk(nodes: dict[int, Any], root: int, steps: list[Any]) -> dict[str, Any] | None:
    node = nodes[root]
    for s in steps:
        if "$dict" in node:
            v = node["$dict"].get(s)
        elif "$list" in node:
            v = node["$list"][s] if isinstance(s, int) and s < len(node["$list"]) else None
        elif "fields" in node:
            v = node["fields"].get(s)
        else:
            return None
        if not (isinstance(v, tuple) and v[:1] == ("@",)):
            return None
        node = nodes[v[1]]
    return node


def _reachable(nodes: dict[int, Any], root: int) -> set[int]:
    seen, work = {root}, [root]
    while work:
        for v in _values(nodes[work.pop()]):
            if isinstance(v, tuple) and v[:1] == ("@",) and v[1] not in seen:
                seen.add(v[1])
                work.append(v[1])
    return seen
