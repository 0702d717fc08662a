"""One log, many processes: exact totals, crashes mid-commit, followers.

Every test runs on a SQLite file, on an NDJSON log and, when configured, on PostgreSQL (each
in a schema of its own), with real OS processes.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

import pytest

import memimg
from tests.conftest import POSTGRES_URL
from tests.models import Box

KINDS = ["sqlite", "ndjson"] + (["postgres"] if POSTGRES_URL else [])

OPEN = textwrap.dedent(
    """
    import sys, time, memimg
    from tests.models import Box

    def open_image(kind, where, **kw):
        if kind in ("sqlite", "ndjson"):
            return memimg.open(where, root=Box, **kw)
        from memimg.stores._sqlalchemy import SQLAlchemyStore
        url, schema = where.split("|")
        return memimg.open(SQLAlchemyStore(url, schema=schema, readonly=kw.get("readonly", False)), root=Box, **kw)
    """
)

WORKER = OPEN + textwrap.dedent(
    """
    kind, where, wid, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    img = open_image(kind, where)
    d = img.root.content

    @img.transaction(retries=1_000_000)
    def bump():
        d["count"] += 1

    @img.transaction(retries=1_000_000)
    def own():
        d[wid] = d.get(wid, 0) + 1

    print("ready", flush=True)
    for _ in range(n):
        bump()
        own()
    img.close()
    print("done", flush=True)
    """
)

ENDLESS = OPEN + textwrap.dedent(
    """
    kind, where = sys.argv[1], sys.argv[2]
    img = open_image(kind, where)
    d = img.root.content

    @img.transaction(retries=1_000_000)
    def move():
        d["a"] -= 1
        d["b"] += 1
        d["log"].append(d["b"])

    print("ready", flush=True)
    while True:
        move()
    """
)


@pytest.fixture(params=KINDS)
def shared(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    kind = request.param
    if kind in ("sqlite", "ndjson"):
        where = str(tmp_path / f"shared.{'db' if kind == 'sqlite' else 'ndjson'}")
        yield kind, where
        return
    import sqlalchemy as sa

    schema = f"mp_{uuid.uuid4().hex[:12]}"
    yield kind, f"{POSTGRES_URL}|{schema}"
    engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def open_here(kind: str, where: str, **kw: Any) -> memimg.MemoryImage:
    if kind in ("sqlite", "ndjson"):
        return memimg.open(where, root=Box, **kw)
    from memimg.stores._sqlalchemy import SQLAlchemyStore

    url, schema = where.split("|")
    return memimg.open(SQLAlchemyStore(url, schema=schema, readonly=kw.get("readonly", False)), root=Box, **kw)


def spawn(script: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=stdin, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    # read "ready" a byte at a time from the pipe itself: a buffered readline() may read what follows too (a fast
    # worker's "done"), which communicate(timeout=...) -- reading the pipe, not that buffer -- would then miss
    line = b""
    while not line.endswith(b"\n") and (byte := os.read(proc.stdout.fileno(), 1)):
        line += byte
    assert line.decode().strip() == "ready"
    return proc


def test_processes_never_lose_an_update(shared: Any) -> None:
    """Three processes increment one counter and their own keys: the totals are exact."""
    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = {"count": 0}
    n, procs = 30, []
    for wid in ("w1", "w2", "w3"):
        procs.append(spawn(WORKER, kind, where, wid, str(n)))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip().endswith("done")
    with open_here(kind, where) as img:
        d = img.root.content
        assert d["count"] == 3 * n
        assert (d["w1"], d["w2"], d["w3"]) == (n, n, n)
        seqs = [e.seq for e in img.events()]
        assert seqs == list(range(1, len(seqs) + 1))
        assert memimg.replay(img.events()).content == d


def test_a_writer_killed_mid_commit_leaves_the_log_consistent(shared: Any) -> None:
    """SIGKILL a writer while others keep committing; every process agrees, nothing is partial."""
    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = {"a": 10_000, "b": 0, "log": []}
    victims = [spawn(ENDLESS, kind, where) for _ in range(2)]
    survivor = spawn(ENDLESS, kind, where)
    time.sleep(0.6)
    for v in victims:
        v.send_signal(signal.SIGKILL)
        v.wait()
    time.sleep(0.4)
    survivor.send_signal(signal.SIGTERM)
    survivor.wait()
    with open_here(kind, where) as img:
        d = img.root.content
        assert d["a"] + d["b"] == 10_000
        assert d["log"] == list(range(1, d["b"] + 1))
        assert d["b"] > 0
        assert memimg.replay(img.events()).content == d
        img.root.content["a"] -= 1  # and the log still takes new commits
        assert img.seq == max(e.seq for e in img.events())


def test_a_follower_converges(shared: Any) -> None:
    """A read-only follower with follow=True reaches the writers' state without being asked."""
    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = {"count": 0}
    follower = open_here(kind, where, readonly=True, follow=True)
    procs = [spawn(WORKER, kind, where, wid, "10") for wid in ("w1", "w2")]
    for p in procs:
        p.communicate(timeout=300)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and follower.root.content.get("count") != 20:
        time.sleep(0.02)
    assert follower.root.content == {"count": 20, "w1": 10, "w2": 10}
    with pytest.raises(memimg.ReadOnlyError):
        follower.root.content["count"] = 0
    follower.close()


def test_wait_returns_when_another_process_commits(shared: Any) -> None:
    """img.wait() returns 0 at its timeout when nothing happens, and returns once another process
    commits, with the commit applied."""
    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = {"count": 0}
    img = open_here(kind, where)
    assert img.wait(timeout=0.2) == 0
    proc = spawn(WORKER, kind, where, "w1", "1")
    applied = img.wait(timeout=10)
    proc.communicate(timeout=60)
    assert applied >= 1 and img.root.content["count"] >= 1
    img.close()


SNAPSHOTTING = OPEN + textwrap.dedent(
    """
    kind, where, wid, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    img = open_image(kind, where, snapshot_every=50)
    d = img.root.content
    print("ready", flush=True)
    sys.stdin.readline()  # all start together
    for i in range(n):
        d[wid] = i
        time.sleep(0.001)  # a worker's pace: the background snapshot threads get their turns
    img.close()
    print("done", flush=True)
    """
)


def test_processes_sharing_a_log_write_one_snapshot_per_threshold(shared: Any) -> None:
    """Four processes with snapshot_every=50 committing to one log: no two snapshots are begun fewer
    than 50 events apart (one process at a time holds the snapshot lease and the others see its
    ``snapshot`` event), snapshots are written, and the log reopens to every process's last write."""
    kind, where = shared
    with open_here(kind, where, snapshot_every=None) as img:
        img.root.content = {}
    procs = [spawn(SNAPSHOTTING, kind, where, f"w{i}", "150", stdin=subprocess.PIPE) for i in range(4)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "done"
    with open_here(kind, where, snapshot_every=None) as img:
        begun = [e.seq for e in img.events() if e.kind == "snapshot"]
        written = {s.seq for s in img.store.snapshots()}
        assert dict(img.root.content) == {f"w{i}": 149 for i in range(4)}
    assert len(begun) >= 2 and written and written <= set(begun)
    assert all(b - a >= 50 for a, b in itertools.pairwise(begun)), begun


LAGGING = OPEN + textwrap.dedent(
    """
    kind, where = sys.argv[1], sys.argv[2]
    img = open_image(kind, where)
    held = img.root.content
    held["count"] += 1  # a commit: its position is recorded
    print("ready", flush=True)
    sys.stdin.readline()  # the log is compacted meanwhile
    img.refresh()
    print(img.root.content is held, held["count"], flush=True)
    held["count"] += 1
    img.close()
    print("done", flush=True)
    """
)


def test_a_process_behind_memimg_compact_reloads_keeps_its_objects_and_writes(shared: Any) -> None:
    """A process that opened the log and committed (its position recorded), then fell behind a ``memimg
    compact`` that dropped the events it needed, refreshes: the dict it held is still the image's, with the
    current count; its next commit lands."""
    from click.testing import CliRunner

    from memimg.cli import cli

    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = {"count": 0}
    proc = spawn(LAGGING, kind, where, stdin=subprocess.PIPE)
    with open_here(kind, where) as img:
        for _ in range(5):
            img.root.content["count"] += 1
    target = where if kind != "postgres" else where.split("|")[0]
    options = [] if kind != "postgres" else ["--schema", where.split("|")[1]]
    result = CliRunner().invoke(cli, ["compact", target, "--ignore-positions", *options], catch_exceptions=False)
    assert result.exit_code == 0 and "reload from the snapshot" in result.output, result.output
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.split() == ["True", "6", "done"], out
    with open_here(kind, where) as img:
        assert img.root.content["count"] == 7


def test_a_snapshot_finishes_while_another_process_commits_without_pause(shared: Any) -> None:
    """img.snapshot() while another process commits in a tight loop: it is written at its own seq and
    returns (it never chases the other's commits), and the log reopens from it."""
    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = {"a": 1_000_000, "b": 0, "log": []}
        img.root.other = [list(range(50)) for _ in range(2_000)]  # some bulk to write
    proc = spawn(ENDLESS, kind, where)
    try:
        with open_here(kind, where, snapshot_every=None) as img:
            time.sleep(0.3)
            img.refresh()
            started = time.monotonic()
            seq = img.snapshot()
            took = time.monotonic() - started
            assert seq in [s.seq for s in img.store.snapshots()]
    finally:
        proc.kill()
        proc.wait()
    assert took < 60, took
    with open_here(kind, where, snapshot_every=None) as img:
        content = img.root.content
        assert content["a"] + content["b"] == 1_000_000 and len(content["log"]) == content["b"]


def test_any_process_may_snapshot(shared: Any) -> None:
    """Snapshots written by one process are used by the others' recovery."""
    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = {"count": 0}
    one, two = open_here(kind, where), open_here(kind, where)
    one.root.content["count"] += 1
    seq = two.snapshot()  # two catches up first, then collects and snapshots
    assert two.root.content["count"] == 1
    one.root.content["count"] += 1  # one learns of the gc event before appending
    assert seq in [s.seq for s in one.store.snapshots()]
    one.close()
    two.close()
    with open_here(kind, where) as img:
        assert img.root.content["count"] == 2


COUNTING = OPEN + textwrap.dedent(
    """
    kind, where, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    img = open_image(kind, where)
    t = img.root.content
    print("ready", flush=True)
    sys.stdin.readline()  # all start together
    for _ in range(n):
        if mode == "tx":
            with img.transaction():  # no retries: a conflict would end the process with an error
                t.hits += 1
                t.total -= 1
        else:
            t.hits += 1
            t.total -= 1
    img.close()
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["tx", "auto"])
def test_processes_adding_to_a_counter_never_conflict(shared: Any, mode: str) -> None:
    """6 processes each add 1 to a ``merge="add"`` counter 50 times (in transactions without retries, or
    outside any): nothing conflicts, and the counter ends at 300 in every process's view."""
    from tests.models import Tally

    kind, where = shared
    with open_here(kind, where) as img:
        img.root.content = Tally()
    procs = [spawn(COUNTING, kind, where, mode, "50", stdin=subprocess.PIPE) for _ in range(6)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip().endswith("done")
    with open_here(kind, where) as img:
        assert (img.root.content.hits, img.root.content.total) == (300, -300)
        assert memimg.replay(img.events()).content.hits == 300
