"""The results table: medians per system, and memimg's ratios against the baseline and the best peer.

One Markdown table per workload (readable in a terminal, pasteable into
docs). Columns are the systems measured in that workload; the two ratio
columns say **how many times better memimg is** -- faster, higher
throughput, smaller -- so ``>1x`` always favours memimg and ``<1x`` always
favours the other side, whatever the unit:

* *vs baseline* -- against the hand-written floor measured in the same row:
  raw ``sqlite3`` (or raw ``psycopg`` on PostgreSQL), or a plain ``attrs``
  object for in-memory costs;
* *vs best peer* -- against the better of ZODB and eventsourcing in that row.

A median marked ``*`` is a single sample (see ``Sizes.once_after``).
"""

from __future__ import annotations

from collections.abc import Iterable

from benchmarks.harness import Result, Results

__all__ = ["BASELINES", "PEERS", "better_factor", "format_value", "render_table"]

BASELINES = ("sqlite3", "psycopg", "attrs")
PEERS = ("ZODB", "eventsourcing")
_ORDER = ("memimg", *BASELINES, *PEERS)


def better_factor(memimg: float, other: float, higher_is_better: bool) -> float | None:
    """How many times better *memimg* is than *other* (``>1`` favours memimg)."""
    if higher_is_better:
        return memimg / other if other else None
    return other / memimg if memimg else None


def format_value(value: float) -> str:
    """A median, with as many digits as it is worth."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _factor(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _cell(result: Result | None, reps: int) -> str:
    if result is None:
        return "—"
    mark = "*" if reps > 1 and len(result.samples) == 1 else ""
    return format_value(result.median) + mark


def _best_peer(by_system: dict[str, Result]) -> Result | None:
    peers = [by_system[p] for p in PEERS if p in by_system]
    if not peers:
        return None
    if peers[0].higher_is_better:
        return max(peers, key=lambda r: r.median)
    return min(peers, key=lambda r: r.median)


def _table(rows: list[tuple[str, str, dict[str, Result]]], reps: int) -> Iterable[str]:
    present = {s for _, _, by_system in rows for s in by_system}
    columns = [s for s in _ORDER if s in present] + sorted(present - set(_ORDER))
    header = ["case", "metric", *columns, "memimg vs baseline", "memimg vs best peer"]
    yield "| " + " | ".join(header) + " |"
    yield "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"
    for case, metric, by_system in rows:
        mine = by_system.get("memimg")
        base = next((by_system[b] for b in BASELINES if b in by_system), None)
        peer = _best_peer(by_system)
        vs_base = vs_peer = None
        if mine is not None and base is not None:
            vs_base = better_factor(mine.median, base.median, mine.higher_is_better)
        if mine is not None and peer is not None:
            vs_peer = better_factor(mine.median, peer.median, mine.higher_is_better)
        peer_note = f" ({peer.system})" if peer is not None and vs_peer is not None else ""
        cells = [case, metric, *(_cell(by_system.get(s), reps) for s in columns)]
        cells += [_factor(vs_base), _factor(vs_peer) + peer_note]
        yield "| " + " | ".join(cells) + " |"


def render_table(results: Results, reps: int) -> str:
    """The whole results section: one table per workload, then the notes."""
    by_workload: dict[str, list[tuple[str, str, dict[str, Result]]]] = {}
    for workload, case, metric, by_system in results.rows():
        by_workload.setdefault(workload, []).append((case, metric, by_system))
    out: list[str] = [
        "Medians of each system; ratios say how many times better memimg is (>1x favours memimg,",
        "<1x the other side): vs baseline = raw sqlite3 / raw psycopg / plain attrs in that row,",
        "vs best peer = the better of ZODB and eventsourcing. * = a single sample.",
    ]
    for workload, rows in by_workload.items():
        out += ["", f"### {workload}", ""]
        out += list(_table(rows, reps))
    if results.skipped:
        out += ["", "Skipped systems:"]
        out += [f"- {name}: {reason}" for name, reason in results.skipped.items()]
    if results.notes:
        out += ["", "Notes:"]
        out += [f"- {note}" for note in results.notes]
    return "\n".join(out)
