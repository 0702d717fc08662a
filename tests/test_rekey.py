"""``memimg.rekey`` / ``memimg rekey``: keys rotated, logs protected and unprotected, safe against kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from decimal import Decimal
from typing import Any, Final

import pytest
from click.testing import CliRunner

import memimg
from memimg.cli import cli
from tests.conftest import POSTGRES_URL
from tests.models import Account, Bank
from tests.protection import INTEGRITY_KEY, KEY, OTHER_KEY, SECRET

OLD = {"encryption_key": KEY.hex(), "integrity_key": INTEGRITY_KEY}
NEW = {"encryption_key": OTHER_KEY.hex(), "integrity_key": INTEGRITY_KEY, "compression": "zstd"}


def _target(kind: str, tmp_path: Any) -> tuple[Any, dict[str, Any]]:
    """A target of *kind* and the store options that reach its log."""
    if kind == "sqlite":
        return str(tmp_path / "bank.db"), {}
    if kind == "ndjson":
        return str(tmp_path / "bank.ndjson"), {}
    if not POSTGRES_URL:
        pytest.skip("needs PostgreSQL: set MEMIMG_TEST_POSTGRES_URL (.ci/run does)")
    return POSTGRES_URL, {"schema": f"t_rekey_{os.getpid()}_{tmp_path.name[-12:].replace('-', '_')}"}


def _make(target: Any, store_options: dict[str, Any], options: dict[str, Any]) -> None:
    with memimg.open(target, root=Bank, **options, **store_options) as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
        for _ in range(30):
            img.root.accounts["ada"].balance += 1
        img.snapshot()
        img.root.accounts["ada"].balance += 1
        seq = img.snapshot()
        img.root.accounts["ada"].balance += 1
    if options:  # a compacted log: the oldest kept event chains from a snapshot
        store = memimg._api.store_for(target, **options, **store_options)
        try:
            store.delete_events_before(seq)
            store.delete_snapshots_before(seq)
        finally:
            store.close()


def _balance(target: Any, store_options: dict[str, Any], options: dict[str, Any]) -> Decimal:
    with memimg.open(target, root=Bank, **options, **store_options) as img:
        assert img.root.accounts["ada"].owner == SECRET
        return img.root.accounts["ada"].balance  # type: ignore[no-any-return]


def _drop(kind: str, store_options: dict[str, Any]) -> None:
    if kind == "postgres":
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{store_options["schema"]}" CASCADE'))
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "ndjson", "postgres"])
@pytest.mark.parametrize(
    ("before", "after"),
    [({}, NEW), (OLD, NEW), (OLD, {}), (OLD, {"integrity_key": INTEGRITY_KEY})],
    ids=["protect-a-plain-log", "rotate", "unprotect", "drop-encryption"],
)
def test_rekey_changes_the_keys_a_log_opens_with(kind: str, before: Any, after: Any, tmp_path: Any) -> None:
    """After a rekey the log opens with the new options to the same state, and no longer with the old ones."""
    target, store_options = _target(kind, tmp_path)
    try:
        _make(target, store_options, before)
        memimg.rekey(target, old_options=before, new_options=after, **store_options)
        assert _balance(target, store_options, after) == Decimal("132")
        with pytest.raises(memimg.ProtectionError):
            _balance(target, store_options, before)
        if kind != "postgres":
            data = b"".join(
                open(os.path.join(root, name), "rb").read()
                for root, _, names in os.walk(tmp_path)
                for name in names
                if os.path.relpath(os.path.join(root, name), tmp_path).startswith("bank")
            )
            assert (SECRET.encode() in data) == ("encryption_key" not in after)
    finally:
        _drop(kind, store_options)


def test_rekey_with_the_wrong_old_key_changes_nothing(tmp_path: Any) -> None:
    """A rekey given keys that do not open the log is refused before anything is written."""
    path = str(tmp_path / "bank.db")
    _make(path, {}, OLD)
    before = open(path, "rb").read()
    with pytest.raises(memimg.ProtectionError):
        memimg.rekey(path, old_options={**OLD, "encryption_key": OTHER_KEY}, new_options=NEW)
    assert open(path, "rb").read() == before
    assert _balance(path, {}, OLD) == Decimal("132")


def test_rekey_refuses_a_log_another_image_has_open(tmp_path: Any) -> None:
    """A live image's position in the log (recorded once it has committed) refuses the rekey: that image would
    go on writing under the old keys."""
    path = str(tmp_path / "bank.db")
    _make(path, {}, OLD)
    with memimg.open(path, root=Bank, **OLD) as img:
        img.root.accounts["ada"].balance += 0  # a commit: its position is recorded
        with pytest.raises(memimg.MemimgError, match="open in 1 other image"):
            memimg.rekey(path, old_options=OLD, new_options=NEW)
    assert _balance(path, {}, OLD) == Decimal("132")


_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {root!r})
    import memimg
    target, store_options, kill_at = json.loads(sys.argv[1])
    old, new = json.loads(sys.argv[2])
    count = 0
    def profile(frame, event, arg):
        global count
        if event in ("call", "c_call") and ("/memimg/stores/" in frame.f_code.co_filename
                                            or "/memimg/_rekey" in frame.f_code.co_filename):
            count += 1
            name = frame.f_code.co_name if event == "call" else None
            if count == kill_at or kill_at in (name, f"{{frame.f_back.f_code.co_name}}>{{name}}"):
                os.kill(os.getpid(), signal.SIGKILL)
    sys.setprofile(profile)
    memimg.rekey(target, old_options=old, new_options=new, **store_options)
    sys.setprofile(None)
    print(count)
    """
)


def _rekey_child(
    target: Any, store_options: dict[str, Any], kill_at: int | str, change: tuple[dict[str, Any], dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    script = _CHILD.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "schema" in store_options:  # PostgreSQL: a child waiting on the server fails in time rather than hangs
        store_options = {**store_options, "connect_timeout": 20, "connect_args": {"options": "-c lock_timeout=60s"}}
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps([target, store_options, kill_at]), json.dumps(list(change))],
        capture_output=True,
        text=True,
        timeout=300,
    )


#: name -> (old options, new options) of a rekey the kill test cuts short
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "rotate": (OLD, NEW),
    "protect": ({}, {"encryption_key": KEY.hex()}),
    "unprotect": (OLD, {}),
    "compression": ({"encryption_key": KEY.hex()}, {"encryption_key": KEY.hex(), "compression": "zstd"}),
    "zlib-off": ({"compression": "zlib"}, {}),
    "zlib-on": ({}, {"compression": "zlib"}),
}
#: the changes without keys: their rows are bound to no log id, so the old and the new options read them alike
_KEYLESS = {"zlib-off", "zlib-on"}


def _make_keyless(target: Any, store_options: dict[str, Any], options: dict[str, Any]) -> None:
    """A log whose rows alone cannot say whether a keyless rekey's rewrite committed: no snapshot, an older
    event big enough to be compressed, the newest ones small (stored plain under any compression)."""
    with memimg.open(target, root=Bank, **options, **store_options) as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
        img.root.accounts["pad"] = Account("x" * 4000, Decimal("0"))
        for _ in range(32):
            img.root.accounts["ada"].balance += 1


#: kind -> named steps of a rekey (a call in the rekey's code) -> whether its rows were rewritten by then:
#: the SQL rewrite not yet run (the pending entry written), the settings flip after its commit
#: (_commit_settings, and between its two meta writes), the space given back (reclaim); the NDJSON swap
#: before its marker (commit_swap) and its renames (finish_swap called by commit_swap, not by an open)
_NAMED_KILLS: dict[str, dict[str, bool]] = {
    "sql": {"rekey>rewrite": False, "_commit_settings": True, "_commit_settings>_drop_pending": True, "reclaim": True},
    "ndjson": {"commit_swap": False, "commit_swap>finish_swap": True},
}


def _opened(target: Any, store_options: dict[str, Any], options: dict[str, Any]) -> tuple[Decimal, int] | None:
    """The balance and head seq of the log opened with *options*; None when they are refused."""
    try:
        with memimg.open(target, root=Bank, **options, **store_options) as img:
            assert img.root.accounts["ada"].owner == SECRET
            return img.root.accounts["ada"].balance, img.seq
    except memimg.ProtectionError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("kind", ["sqlite", "ndjson", "postgres"])
def test_a_rekey_killed_at_any_point_leaves_the_old_or_the_new_keys_valid(
    kind: str, change: str, tmp_path: Any
) -> None:
    """kill -9 of a rekey -- to other keys, protecting a plain log, unprotecting one, or changing the
    compression alone, with keys or without -- at points spread over its whole run (counted calls into the
    stores) and at its named steps: the log then opens, to the same state, with the old options or with the
    new ones (both, when only the compression changes); with the new ones exactly when the rows were
    rewritten (the rekey's marker event is there), and with keys that open settles the rekey (no pending
    entry is left). Without keys an open keeps settings that read every row (the old ones when they
    compress: a plain open of a zlib log whose rekey to plain was cut short before its rewrite keeps the
    compression its older rows need). A rekey run again finishes it."""
    old, new = CHANGES[change]
    make = _make_keyless if change in _KEYLESS else _make
    target, store_options = _target(kind, tmp_path)
    try:
        make(target, store_options, old)
        probe = str(tmp_path / ("probe.ndjson" if kind == "ndjson" else "probe.db"))
        if kind != "postgres":
            make(probe, {}, old)
            done = _rekey_child(probe, {}, 0, (old, new))
        else:
            done = _rekey_child(target, store_options, 0, (old, new))
            memimg.rekey(target, old_options=new, new_options=old, **store_options)  # back, for the kills
        assert done.returncode == 0, done.stderr
        total = int(done.stdout.split()[-1])
        spread = range(1, 8) if change == "rotate" else range(2, 8, 2)
        points: list[int | str] = sorted({max(1, total * i // 8) for i in spread} | {total - k for k in (1, 3, 8)})
        named = _NAMED_KILLS["ndjson" if kind == "ndjson" else "sql"]
        outcomes = set()
        for point in [*points, *named]:
            before = _opened(target, store_options, old)
            assert before is not None and before[0] == Decimal("132")
            killed = _rekey_child(target, store_options, point, (old, new))
            if isinstance(point, str):  # each named step is reached: the child dies there
                assert killed.returncode == -signal.SIGKILL, f"no kill at {point}: {killed.stderr}"
            else:  # (a run may make a few calls fewer than the probe's -- a busy retry less --: then it finishes)
                assert killed.returncode in (-signal.SIGKILL, 0), killed.stderr
            opened = {name: _opened(target, store_options, options) for name, options in (("new", new), ("old", old))}
            valid = {name: state for name, state in opened.items() if state is not None}
            assert valid and {balance for balance, _ in valid.values()} == {Decimal("132")}, f"at {point}: {opened}"
            rewritten = max(seq for _, seq in valid.values()) > before[1]  # the rekey's marker event is there
            if isinstance(point, str):
                assert rewritten == named[point], f"kill at {point}: {opened}"
            both = change == "compression" or change in _KEYLESS
            expected = {"old", "new"} if both else {"new" if rewritten else "old"}
            assert set(valid) == expected, f"kill at call {point} of {total}: {opened}"
            if rewritten and kind != "ndjson" and change not in _KEYLESS:  # the open with the new options
                assert "protection.pending" not in _raw_meta(target, store_options), f"kill at {point}"
            outcomes.add("new" if rewritten else "old")
            if rewritten:  # back to the old options, so that the next kill cuts a rekey again
                if kind != "ndjson" and "protection.pending" in _raw_meta(target, store_options):
                    memimg.rekey(target, old_options=old, new_options=new, **store_options)  # run again: finished
                memimg.rekey(target, old_options=new, new_options=old, **store_options)
        assert outcomes == {"old", "new"}  # the kills fell before and after the commit point
    finally:
        _drop(kind, store_options)


def _raw_meta(target: Any, store_options: dict[str, Any]) -> dict[str, str]:
    store = memimg._api.plain_store(target, sync="normal", readonly=True, busy_timeout=10.0, **store_options)
    try:
        return store.meta()
    finally:
        store.close()


def test_the_rekey_command_reads_keys_from_the_environment(tmp_path: Any) -> None:
    """``memimg rekey`` takes the current keys as every command does and the new ones from named variables;
    ``info`` and ``verify`` then need the new key."""
    path = str(tmp_path / "bank.db")
    _make(path, {}, OLD)
    env = {"MEMIMG_ENCRYPTION_KEY": OLD["encryption_key"], "IK": INTEGRITY_KEY, "NEWKEY": NEW["encryption_key"]}
    runner = CliRunner()
    result = runner.invoke(
        cli, ["rekey", path, "--integrity-key-env", "IK", "--new-encryption-key-env", "NEWKEY"], env=env
    )
    assert result.exit_code == 0, result.output
    assert KEY.hex() not in result.output and OTHER_KEY.hex() not in result.output
    result = runner.invoke(cli, ["info", path, "--integrity-key-env", "IK"], env=env)
    assert result.exit_code == 1 and "is another" in result.output
    env["MEMIMG_ENCRYPTION_KEY"] = NEW["encryption_key"]
    result = runner.invoke(cli, ["verify", path, "--integrity-key-env", "IK"], env=env)
    assert result.exit_code == 0, result.output
    assert "integrity chain: ok" in result.output
    result = runner.invoke(cli, ["rekey", path, "--integrity-key-env", "UNSET_VARIABLE_X", "--no-integrity"], env=env)
    assert result.exit_code == 1 and "UNSET_VARIABLE_X" in result.output


def test_commands_keep_a_protected_log_protected(tmp_path: Any) -> None:
    """``compact --archive`` writes a protected log's dropped events sealed, ``import`` with keys makes a
    protected image, and ``copy`` makes a protected copy: no plain value leaks through a command."""
    path = str(tmp_path / "bank.db")
    _make(path, {}, {"encryption_key": KEY})
    env = {"MEMIMG_ENCRYPTION_KEY": KEY.hex()}
    runner = CliRunner()
    with memimg.open(path, root=Bank, encryption_key=KEY) as img:
        img.root.accounts["ada"].owner = SECRET + "-2"
    archive = tmp_path / "archive.ndjson"
    result = runner.invoke(cli, ["compact", path, "--archive", str(archive)], env=env)
    assert result.exit_code == 0, result.output
    assert archive.read_bytes() and SECRET.encode() not in archive.read_bytes()
    result = runner.invoke(cli, ["copy", path, str(tmp_path / "copy.ndjson")], env=env)
    assert result.exit_code == 0, result.output
    copied = b"".join(p.read_bytes() for p in tmp_path.rglob("copy.ndjson*") if p.is_file())
    assert copied and SECRET.encode() not in copied
    result = runner.invoke(cli, ["export", path, "-o", str(tmp_path / "dump.json")], env=env)
    assert result.exit_code == 0, result.output
    assert SECRET.encode() in (tmp_path / "dump.json").read_bytes()  # an export is the state, in the clear
    result = runner.invoke(cli, ["import", str(tmp_path / "new.db"), str(tmp_path / "dump.json")], env=env)
    assert result.exit_code == 0, result.output
    assert SECRET.encode() not in (tmp_path / "new.db").read_bytes()
    with memimg.open(str(tmp_path / "new.db"), encryption_key=KEY) as img:
        assert img.root.accounts["ada"].owner == SECRET + "-2"


def test_an_ndjson_rekey_keeps_the_archived_segments(tmp_path: Any) -> None:
    """Segments ``compact --keep-segment`` archived survive a rekey of the NDJSON log, byte for byte (they stay
    under the keys they were written with), and the log opens with the new keys."""
    path = str(tmp_path / "bank.ndjson")
    _make(path, {}, OLD)
    env = {"MEMIMG_ENCRYPTION_KEY": OLD["encryption_key"], "MEMIMG_INTEGRITY_KEY": OLD["integrity_key"]}
    with memimg.open(path, root=Bank, **OLD) as img:
        img.root.accounts["ada"].balance += 1
    result = CliRunner().invoke(cli, ["compact", path, "--keep-segment"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    segments = tmp_path / "bank.ndjson.segments"
    before = {p.name: p.read_bytes() for p in segments.iterdir()}
    assert before
    memimg.rekey(path, old_options=OLD, new_options=NEW)
    assert {p.name: p.read_bytes() for p in segments.iterdir()} == before
    assert _balance(path, {}, NEW) == Decimal("133")


def _expire_positions(target: Any, store_options: dict[str, Any]) -> None:
    """Expire every image's position in the log, as 600 idle seconds would."""
    store = memimg._api.plain_store(target, sync="normal", readonly=False, busy_timeout=10.0, **store_options)
    try:
        for key, value in store.meta().items():
            if key.startswith("position."):
                store.set_meta(key, "00000000000000000001 " + value.partition(" ")[2])
    finally:
        store.close()


#: a writer left open across a rekey: the settings it opened with, and those the rekey moves the log to
_STALE_CASES: Final = {
    "protected": (OLD, NEW),
    "plain": ({}, NEW),
    "compression alone": (OLD, {**OLD, "compression": "zstd"}),
}


@pytest.mark.parametrize("kind", ["sqlite", "ndjson", "postgres"])
@pytest.mark.parametrize("case", list(_STALE_CASES))
def test_a_writer_left_open_across_a_rekey_stops_with_a_clear_error_and_writes_nothing(
    kind: str, case: str, tmp_path: Any
) -> None:
    """An image that had the log open when the rekey ran (its position expired, so the rekey went ahead) and
    commits afterwards gets a ProtectionError naming the rekey -- also when the rekey kept the keys and changed
    the compression alone (it binds the rows to a new log id: the stale image's commit meets a row it cannot
    open, and the error names the rekey, not tampering); nothing of its commit is in the log, which opens with
    the new settings and verifies."""
    before, after = _STALE_CASES[case]
    target, store_options = _target(kind, tmp_path)
    try:
        _make(target, store_options, OLD)
        if not before:
            memimg.rekey(target, old_options=OLD, new_options={}, **store_options)
        stale = memimg.open(target, root=Bank, **before, **store_options)
        _expire_positions(target, store_options)
        memimg.rekey(target, old_options=before, new_options=after, **store_options)
        with pytest.raises(memimg.ProtectionError, match="rekey"):
            stale.root.accounts["ada"].balance += 1000
        stale.close()
        assert _balance(target, store_options, after) == Decimal("132")
        if kind != "postgres":
            result = CliRunner().invoke(
                cli,
                ["verify", target],
                env={"MEMIMG_ENCRYPTION_KEY": after["encryption_key"], "MEMIMG_INTEGRITY_KEY": after["integrity_key"]},
            )
            assert result.exit_code == 0, result.output
    finally:
        _drop(kind, store_options)


def _intruded_upon(path: str) -> memimg.SQLiteStore:
    """The store of a new SQLite log at *path* (old keys) into which another image commits 1000 to ada as a
    rekey starts (as it sets ``protection.pending``), after the rekey's check for live images."""
    _make(path, {}, OLD)

    class Intruding(memimg.SQLiteStore):
        def set_meta(self, key: str, value: str | None) -> None:
            if key == "protection.pending" and value is not None:  # once: as the rekey starts
                with memimg.open(path, root=Bank, **OLD) as other:
                    other.root.accounts["ada"].balance += 1000
            super().set_meta(key, value)

    return Intruding(path)


def test_a_writer_that_commits_while_an_sql_rekey_runs_makes_the_rekey_fail_whole(tmp_path: Any) -> None:
    """An image opening after the rekey's check for live images and committing before its rewrite: the rekey
    refuses (its rewrite finds the head moved) and changes nothing; the log opens with the old keys, that
    commit in it."""
    path = str(tmp_path / "bank.db")
    store = _intruded_upon(path)
    with pytest.raises(memimg.MemimgError, match="appended to .* during the rekey"):
        memimg.rekey(store, old_options=OLD, new_options=NEW)
    store.close()
    assert _balance(path, {}, OLD) == Decimal("1132")


def test_an_ndjson_commit_during_the_rekeys_copy_waits_and_then_stops(tmp_path: Any, monkeypatch: Any) -> None:
    """A commit that comes while an NDJSON rekey copies the log waits for the rekey's write turn (it is not
    appended to the old file and lost at the swap), then stops with a ProtectionError naming the rekey."""
    import threading

    import memimg._rekey

    path = str(tmp_path / "bank.ndjson")
    _make(path, {}, OLD)
    stale = memimg.open(path, root=Bank, **OLD)
    _expire_positions(path, {})
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            stale.root.accounts["ada"].balance += 1000
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    real_copy = memimg._rekey.copy
    writer = threading.Thread(target=commit)

    def copy_with_a_commit(src: Any, dst: Any) -> int:
        writer.start()
        writer.join(0.5)  # the commit is waiting for the write turn, not done
        assert not outcome
        return real_copy(src, dst)

    monkeypatch.setattr(memimg._rekey, "copy", copy_with_a_commit)
    memimg.rekey(path, old_options=OLD, new_options=NEW)
    writer.join(10)
    stale.close()
    assert len(outcome) == 1 and isinstance(outcome[0], memimg.ProtectionError), outcome
    assert _balance(path, {}, NEW) == Decimal("132")


def test_a_failed_rekey_leaves_nothing_pending_and_can_be_run_again(tmp_path: Any) -> None:
    """A rekey whose rewrite fails (here: a commit came in meanwhile) removes its ``protection.pending`` entry:
    the log opens with the old keys, the new keys are refused as plainly not the log's (not as an unfinished
    rekey), and the same rekey run again succeeds."""
    path = str(tmp_path / "bank.db")
    store = _intruded_upon(path)
    with pytest.raises(memimg.MemimgError, match="during the rekey"):
        memimg.rekey(store, old_options=OLD, new_options=NEW)
    assert "protection.pending" not in store.meta()
    store.close()
    assert _balance(path, {}, OLD) == Decimal("1132")
    with pytest.raises(memimg.ProtectionError) as info:
        _balance(path, {}, NEW)
    assert "did not finish" not in str(info.value) and "is another" in str(info.value)
    memimg.rekey(path, old_options=OLD, new_options=NEW)
    assert _balance(path, {}, NEW) == Decimal("1132")


@pytest.mark.parametrize("kind", ["sqlite", "ndjson"])
def test_the_rekey_marker_is_never_stamped_before_the_last_commit(kind: str, tmp_path: Any, monkeypatch: Any) -> None:
    """With the clock stepped back, the rekey's marker event gets the newest commit time, not an earlier one:
    commit times never decrease with seq (``img.at(time=...)`` relies on it)."""
    import memimg.stores._rekeying as rekeying

    target, store_options = _target(kind, tmp_path)
    _make(target, store_options, OLD)
    monkeypatch.setattr(rekeying.time, "time_ns", lambda: 1_000_000_000)  # 1970: the clock went back
    memimg.rekey(target, old_options=OLD, new_options=NEW, **store_options)
    monkeypatch.undo()
    with memimg.open(target, root=Bank, **NEW, **store_options) as img:
        events = list(img.events(img.seq - 3))
    assert events[-1].kind == "tx.meta" and b"rekey" in events[-1].payload
    times = [event.ts for event in events]
    assert times == sorted(times) and times[0].year > 2000


def _other_rekeys_entry(path: str) -> str:
    """The ``protection.pending`` entry another rekey (from ``OLD`` to key ``3`` * 32) of the log at *path*
    would write."""
    return _pending_entry(path, OLD, {"encryption_key": bytes([3]) * 32})


def test_a_failed_rekey_leaves_another_rekeys_pending_entry_alone(tmp_path: Any) -> None:
    """A rekey whose rewrite fails removes its own ``protection.pending`` entry only: one another rekey wrote
    over it meanwhile stays (that rekey may have committed its rows, and the entry is how the log's next open
    finishes it)."""
    path = str(tmp_path / "bank.db")
    _make(path, {}, OLD)
    other = _other_rekeys_entry(path)

    class Raced(memimg.SQLiteStore):
        def rewrite(self, plan: Any, after: int) -> None:
            self.set_meta("protection.pending", other)  # the other rekey, started at the same moment
            raise memimg.MemimgError("the rewrite failed")

    store = Raced(path)
    with pytest.raises(memimg.MemimgError, match="the rewrite failed"):
        memimg.rekey(store, old_options=OLD, new_options=NEW)
    assert store.meta()["protection.pending"] == other
    store.close()
    assert _balance(path, {}, OLD) == Decimal("132")


def test_a_rekey_refuses_to_start_while_another_rekeys_entry_is_pending(tmp_path: Any) -> None:
    """With another rekey's ``protection.pending`` entry in the log (running, or killed before its rewrite
    committed), a rekey to other keys is refused, saying so and how to finish the other, and changes nothing;
    the same rekey as the pending one runs (that is how an interrupted one is finished)."""
    path = str(tmp_path / "bank.db")
    _make(path, {}, OLD)
    other = {"encryption_key": bytes([3]) * 32}
    store = memimg.SQLiteStore(path)
    store.set_meta("protection.pending", _other_rekeys_entry(path))  # what a rekey killed mid-way leaves
    with pytest.raises(memimg.MemimgError, match="another `memimg rekey` .* run that rekey again"):
        memimg.rekey(store, old_options=OLD, new_options=NEW)
    store.close()
    assert _balance(path, {}, OLD) == Decimal("132")
    memimg.rekey(path, old_options=OLD, new_options=other)
    assert _balance(path, {}, other) == Decimal("132")
    store = memimg.SQLiteStore(path)
    assert "protection.pending" not in store.meta()
    store.close()


@pytest.mark.parametrize("data", ["snapshots", "no snapshot"])
def test_a_plain_to_compression_rekey_that_fails_after_its_commit_is_finished(tmp_path: Any, data: str) -> None:
    """A rekey of a plain log to compression alone whose rewrite committed and then raised (a connection lost
    after COMMIT) is finished, not undone: the log records its compression and opens, its rows being compressed.
    Also when its newest rows are small (stored plain) and no snapshot is compressed: the rekey's marker, the
    newest row, says the rewrite committed."""
    path = str(tmp_path / "bank.db")
    (_make if data == "snapshots" else _make_keyless)(path, {}, {})

    class LostAfterCommit(memimg.SQLiteStore):
        def rewrite(self, plan: Any, after: int) -> None:
            super().rewrite(plan, after)
            raise OSError("connection lost after COMMIT")

    store = LostAfterCommit(path)
    with pytest.raises(OSError, match="after COMMIT"):
        memimg.rekey(store, old_options={}, new_options={"compression": "zstd"})
    meta = store.meta()
    store.close()
    assert "protection.pending" not in meta and json.loads(meta["protection"])["compression"] == "zstd"
    assert _balance(path, {}, {}) == Decimal("132")
    assert _balance(path, {}, {"compression": "zstd"}) == Decimal("132")


def _small_log(path: str, options: dict[str, Any]) -> None:
    """A log of a few small events and no snapshot: its newest event alone says where a rekey got to."""
    with memimg.open(path, root=Bank, **options) as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("1"))
        for _ in range(5):
            img.root.accounts["ada"].balance += 1


def _pending_entry(path: str, old: dict[str, Any], new: dict[str, Any], log_id: str | None = None) -> str:
    """The ``protection.pending`` entry a rekey of the SQLite log at *path* from *old* to *new* options writes
    first, its MACs under both (*log_id*: its new log id)."""
    from memimg.core._protect import Protection, new_log_id, read_settings
    from memimg.stores._pending import pending_entry

    settings = read_settings(_raw_meta(path, {}))
    source = Protection(**old).for_log(settings.get("log_id") if settings else None)
    return pending_entry(settings, source, Protection(**new).for_log(log_id or new_log_id()))


def _damage_checksums(path: str, which: str) -> int:
    """The checksum of the newest event (*which* ``"newest"``) or of every event (``"all"``) damaged; the
    newest seq."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        (seq,) = conn.execute("SELECT max(seq) FROM memimg_events").fetchone()
        where = "" if which == "all" else f" WHERE seq = {int(seq)}"
        conn.execute(f"UPDATE memimg_events SET checksum = checksum + 1{where}")
        conn.commit()
    finally:
        conn.close()
    return int(seq)


_PENDING_CHANGES = [{"encryption_key": KEY.hex(), "compression": "zlib"}, {"encryption_key": OTHER_KEY.hex()}]


@pytest.mark.parametrize("damaged", ["newest", "all"])
@pytest.mark.parametrize("new", _PENDING_CHANGES, ids=["compression", "keys"])
def test_a_damaged_newest_row_settles_no_pending_rekey(tmp_path: Any, new: dict[str, Any], damaged: str) -> None:
    """A rekey cut short before its rewrite, then the newest event's checksum damaged (no snapshot): the newest
    intact row says the rewrite did not commit, so an open with the old keys reports the damage, naming the
    row, and one with the rekey's keys alone is sent to the old keys. With every row damaged nothing tells
    where the rekey got to: an open finishes nothing and says so. Either way the log keeps its log id and the
    pending entry (finishing would bind the log to an id no row is bound to, its old id lost for good)."""
    path = str(tmp_path / "bank.db")
    old = {"encryption_key": KEY.hex()}
    _small_log(path, old)
    store = memimg.SQLiteStore(path)
    store.set_meta("protection.pending", _pending_entry(path, old, new))
    store.close()
    seq = _damage_checksums(path, damaged)
    before = _raw_meta(path, {})
    for options in (old, new):
        if options is new and "compression" not in new:  # only the rekey's keys
            if damaged == "all":
                with pytest.raises(memimg.CorruptLogError, match=r"checksum mismatch.*cannot be told"):
                    memimg.open(path, root=Bank, **options)
            else:
                with pytest.raises(memimg.ProtectionError, match="started and did not finish"):
                    memimg.open(path, root=Bank, **options)
        else:
            first = 1 if damaged == "all" else seq
            with pytest.raises(memimg.CorruptLogError, match=rf"event seq {first} is corrupt \(checksum mismatch\)"):
                memimg.open(path, root=Bank, **options)
        after = _raw_meta(path, {})
        assert after["protection.pending"] == before["protection.pending"]
        assert json.loads(after["protection"])["log_id"] == json.loads(before["protection"])["log_id"]


@pytest.mark.parametrize("new", _PENDING_CHANGES, ids=["compression", "keys"])
def test_a_committed_rekey_is_finished_past_a_damaged_newest_row(
    tmp_path: Any, new: dict[str, Any], monkeypatch: Any
) -> None:
    """A rekey whose rewrite committed and whose settings flip never ran, then the newest event's checksum
    damaged (no snapshot): the newest intact row shows the rewrite, so the old keys are sent to the new
    ones, and an open with the new ones finishes the rekey and reports the damaged row -- not a MAC failure
    of the oldest row under the old keys."""
    from memimg.stores import _rekeying

    path = str(tmp_path / "bank.db")
    old = {"encryption_key": KEY.hex(), "integrity_key": INTEGRITY_KEY}
    new = {**new, "integrity_key": INTEGRITY_KEY}
    _small_log(path, old)
    with monkeypatch.context() as patch:
        patch.setattr(_rekeying, "_commit_settings", lambda *args: None)  # killed before its flip
        memimg.rekey(path, old_options=old, new_options=new)
    entry = json.loads(_raw_meta(path, {})["protection.pending"])
    seq = _damage_checksums(path, "newest")
    if "compression" not in new:
        with pytest.raises(memimg.ProtectionError, match="finished moving the log to other keys"):
            memimg.open(path, root=Bank, **old)
    for options in (old, new) if "compression" in new else (new,):
        with pytest.raises(memimg.CorruptLogError, match=rf"event seq {seq} is corrupt \(checksum mismatch\)"):
            memimg.open(path, root=Bank, **options)
    meta = _raw_meta(path, {})
    assert "protection.pending" not in meta and json.loads(meta["protection"])["log_id"] == entry["log_id"]


@pytest.mark.parametrize("keys", ["both", "integrity"])
def test_a_pending_entry_does_not_turn_tampering_into_a_rekey(tmp_path: Any, keys: str) -> None:
    """An event edited (its checksum recomputed) in a log that also holds a ``protection.pending`` entry (left
    over, or forged) is reported as tampering -- by ``memimg verify`` with both keys or the integrity key
    alone, and by an open -- not blamed on a rekey: the log's newest rows still open under its keys, and a
    rekey rewrites every row."""
    import sqlite3

    from memimg.core._rows import event_checksum

    path = str(tmp_path / "bank.db")
    _small_log(path, {"encryption_key": KEY, "integrity_key": INTEGRITY_KEY})
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT * FROM memimg_events WHERE seq = 4").fetchone()
    payload = bytearray(row[5])
    payload[-3] ^= 1
    conn.execute(
        "UPDATE memimg_events SET payload = ?, checksum = ? WHERE seq = 4",
        (bytes(payload), event_checksum(4, *row[1:5], bytes(payload))),
    )
    entry = _pending_entry(path, {"encryption_key": KEY, "integrity_key": INTEGRITY_KEY}, {"encryption_key": OTHER_KEY})
    conn.execute("INSERT INTO memimg_meta VALUES ('protection.pending', ?)", (entry,))
    conn.commit()
    conn.close()
    env = {"MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY}
    if keys == "both":
        env["MEMIMG_ENCRYPTION_KEY"] = KEY.hex()
    result = CliRunner().invoke(cli, ["verify", path], env=env)
    assert result.exit_code == 1
    assert "event seq 4 fails its integrity MAC" in result.output and "rekey" not in result.output
    if keys == "both":
        with pytest.raises(memimg.CorruptLogError, match="event seq 4 fails its integrity MAC") as info:
            memimg.open(path, root=Bank, encryption_key=KEY, integrity_key=INTEGRITY_KEY)
        assert not isinstance(info.value, memimg.ProtectionError)


_BOTH = {"encryption_key": KEY, "integrity_key": INTEGRITY_KEY}
_SECRETS = (KEY.hex(), OTHER_KEY.hex(), INTEGRITY_KEY, str(KEY), str(OTHER_KEY))


def _forge(path: str, attack: str) -> None:
    """What someone who can write the meta table and the rows (but holds no key) does to a log sealed with
    ``_BOTH``: (a) a pending entry to plain rows, the newest event replaced by a plain ``[]`` row and the
    snapshots deleted; (b) a pending entry to other keys and the oldest and newest events edited; (rows) a
    pending entry to plain rows alone, the rows untouched."""
    import sqlite3

    from memimg.core._protect import Protection, new_log_id
    from memimg.core._rows import event_checksum

    conn = sqlite3.connect(path)
    try:
        first, head = conn.execute("SELECT min(seq), max(seq) FROM memimg_events").fetchone()

        def edit(seq: int, payload: bytes) -> None:
            row = conn.execute("SELECT * FROM memimg_events WHERE seq = ?", (seq,)).fetchone()
            checksum = event_checksum(seq, *row[1:5], payload)
            conn.execute("UPDATE memimg_events SET payload = ?, checksum = ? WHERE seq = ?", (payload, checksum, seq))

        if attack == "b":
            entry = Protection(encryption_key=OTHER_KEY).for_log(new_log_id()).settings_text()
            for seq in (first, head):
                (payload,) = conn.execute("SELECT payload FROM memimg_events WHERE seq = ?", (seq,)).fetchone()
                edit(seq, payload[:-3] + bytes([payload[-3] ^ 1]) + payload[-2:])
        else:
            entry = Protection().settings_text()
            if attack == "a":
                conn.execute("DELETE FROM memimg_snapshots")
                edit(head, b"[]")
        conn.execute("INSERT INTO memimg_meta VALUES ('protection.pending', ?)", (entry,))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("attack", ["a", "b"])
def test_a_forged_pending_entry_is_reported_as_tampering_and_changes_nothing(tmp_path: Any, attack: str) -> None:
    """A forged ``protection.pending`` entry (one no rekey wrote: no MAC under the log's keys) with the rows
    edited to look rekeyed -- (a) to plain rows, (b) to other keys -- is not believed: an open with the keys,
    ``memimg verify`` with both keys and with the integrity key alone report the tampering (the rows', and
    verify the entry's), never a finished rekey; and nothing -- not even an open without keys -- wipes or
    changes the log's settings. No key in any message."""
    path = str(tmp_path / "bank.db")
    _small_log(path, _BOTH)
    with memimg.open(path, root=Bank, **_BOTH) as img:
        img.snapshot()
        img.root.accounts["ada"].balance += 1
    _forge(path, attack)
    before = _raw_meta(path, {})
    with pytest.raises(memimg.CorruptLogError) as info:
        memimg.open(path, root=Bank, **_BOTH)
    assert getattr(info.value, "tampered", None) is True and "rekey" not in str(info.value)
    assert not any(secret in str(info.value) for secret in _SECRETS)
    for env in (
        {"MEMIMG_ENCRYPTION_KEY": KEY.hex(), "MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY},
        {"MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY},
    ):
        result = CliRunner().invoke(cli, ["verify", path], env=env)
        assert result.exit_code == 1, result.output
        assert "'protection.pending' entry is not trusted" in result.output
        assert "finished moving" not in result.output and "re-sealed the log" not in result.output
        assert not any(secret in result.output for secret in _SECRETS)
    with pytest.raises(memimg.MemimgError):
        memimg.open(path, root=Bank)  # without keys: nothing to check the entry with; the rows do not say plain
    assert _raw_meta(path, {}) == before


def test_a_forged_pending_entry_over_intact_rows_is_warned_about_and_reported_by_verify(
    tmp_path: Any, caplog: Any
) -> None:
    """A forged pending entry in a log whose rows are intact: the log opens with its keys as its settings say
    (a warning names the entry), ``memimg verify`` fails naming the entry, and the entry is left for the
    operator (nothing settles it)."""
    path = str(tmp_path / "bank.db")
    _make(path, {}, _BOTH)
    _forge(path, "rows")
    before = _raw_meta(path, {})
    with caplog.at_level("WARNING", logger="memimg"), memimg.open(path, root=Bank, **_BOTH) as img:
        assert img.root.accounts["ada"].balance == Decimal("132")
    warned = [r.getMessage() for r in caplog.records if "'protection.pending'" in r.getMessage()]
    assert warned and "not trusted" in warned[0] and not any(s in warned[0] for s in _SECRETS)
    result = CliRunner().invoke(
        cli, ["verify", path], env={"MEMIMG_ENCRYPTION_KEY": KEY.hex(), "MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY}
    )
    assert result.exit_code == 1 and "'protection.pending' entry of memimg_meta" in result.output
    assert "integrity chain: ok" in result.output  # the rows were checked too
    assert _raw_meta(path, {}) == before


@pytest.mark.parametrize("entry", ["other keys", "no MAC"])
def test_a_pending_entry_not_authenticated_by_the_logs_keys_is_untrusted(tmp_path: Any, entry: str) -> None:
    """A genuine rekey's rewrite committed and its flip cut short, its pending entry then replaced by one with
    the same settings whose MACs are under other keys (a forger's, with keys of their own), or by one with no
    MAC (as a memimg before these MACs wrote it): the rekey's keys do not finish it -- the open fails as
    tampering of the meta entry, naming it -- and the old keys are not sent to the new ones; no key in a
    message."""
    from memimg.core._protect import Protection
    from memimg.stores import _rekeying
    from memimg.stores._pending import pending_entry

    path = str(tmp_path / "bank.db")
    new = {"encryption_key": OTHER_KEY, "integrity_key": INTEGRITY_KEY}
    _small_log(path, _BOTH)
    settings = json.loads(_raw_meta(path, {})["protection"])
    original = _rekeying._commit_settings
    _rekeying._commit_settings = lambda *args: None  # killed before its flip
    try:
        memimg.rekey(path, old_options=_BOTH, new_options=new)
    finally:
        _rekeying._commit_settings = original
    genuine = json.loads(_raw_meta(path, {})["protection.pending"])
    to = Protection(**new).for_log(genuine["log_id"])
    if entry == "other keys":
        forger = {"encryption_key": bytes([7]) * 32, "integrity_key": bytes([8]) * 32}
        text = pending_entry(settings, Protection(**forger), Protection(**forger).for_log(genuine["log_id"]))
        text = json.dumps({**json.loads(text), **{k: genuine[k] for k in ("key_id", "integrity_key_id")}})
    else:
        text = to.settings_text()
    store = memimg.SQLiteStore(path)
    store.set_meta("protection.pending", text)
    store.close()
    with pytest.raises(
        memimg.CorruptLogError, match="'protection.pending' entry of memimg_meta .* fails its MAC"
    ) as info:
        memimg.open(path, root=Bank, **new)
    assert info.value.tampered and not any(secret in str(info.value) for secret in _SECRETS)
    with pytest.raises(memimg.CorruptLogError) as info:
        memimg.open(path, root=Bank, **_BOTH)  # the rows are under the new keys: they fail, and nothing is blamed
    assert "rekey" not in str(info.value)
    assert _raw_meta(path, {})["protection.pending"] == text


def test_a_pending_entry_of_another_log_under_the_same_keys_is_untrusted(tmp_path: Any) -> None:
    """A genuine rekey's pending entry (its rewrite not begun) put into another log sealed with the same keys
    (its own log id): the MACs cover the old log id too, so the rekey's keys do not finish it there -- the open
    fails as tampering of the meta entry -- and the log's own keys open it as before (a warning names the
    entry), its settings unchanged."""
    from memimg.stores import _rekeying

    first, second = str(tmp_path / "first.db"), str(tmp_path / "second.db")
    new = {"encryption_key": OTHER_KEY, "integrity_key": INTEGRITY_KEY}
    _small_log(first, _BOTH)
    _small_log(second, _BOTH)
    original = _rekeying._commit_settings
    _rekeying._commit_settings = lambda *args: None  # killed before its flip
    try:
        memimg.rekey(first, old_options=_BOTH, new_options=new)
    finally:
        _rekeying._commit_settings = original
    store = memimg.SQLiteStore(second)
    store.set_meta("protection.pending", _raw_meta(first, {})["protection.pending"])
    store.close()
    before = _raw_meta(second, {})
    with pytest.raises(memimg.CorruptLogError, match="'protection.pending' entry of memimg_meta .* fails its MAC"):
        memimg.open(second, root=Bank, **new)
    with memimg.open(second, root=Bank, **_BOTH) as img:
        assert img.root.accounts["ada"].balance == Decimal("6")
    assert _raw_meta(second, {}) == before


@pytest.mark.parametrize("keys", ["keys", "no keys"])
def test_a_damaged_pending_entry_is_named(tmp_path: Any, keys: str) -> None:
    """A ``protection.pending`` entry that is not settings (with keys), or whose log id is damaged (without
    keys, which have no MAC to check it with), is reported as that entry's damage, not the ``protection``
    entry's."""
    path = str(tmp_path / "bank.db")
    options: dict[str, Any] = {"encryption_key": KEY} if keys == "keys" else {"compression": "zlib"}
    _small_log(path, options)
    store = memimg.SQLiteStore(path)
    if keys == "keys":
        store.set_meta("protection.pending", '{"key_id": "')
    else:
        entry = json.loads(_pending_entry(path, options, {}))
        store.set_meta("protection.pending", json.dumps({**entry, "log_id": "not hex"}))
    store.close()
    with pytest.raises(memimg.CorruptLogError, match="'protection.pending' entry of memimg_meta .* is damaged"):
        memimg.open(path, root=Bank, **options)


def test_a_pending_rekey_to_zstd_does_not_need_zstandard_before_its_rewrite(tmp_path: Any, monkeypatch: Any) -> None:
    """A rekey to zstd (the same key) cut short before its rewrite, in a log whose rows need no zstandard:
    the log opens with its keys where zstandard is missing (the pending entry asking for zstd is checked
    against the rows, not compressed with)."""
    from memimg.core import _protect

    path = str(tmp_path / "bank.db")
    _small_log(path, {"encryption_key": KEY})
    store = memimg.SQLiteStore(path)
    store.set_meta(
        "protection.pending",
        _pending_entry(path, {"encryption_key": KEY}, {"encryption_key": KEY, "compression": "zstd"}),
    )
    store.close()
    monkeypatch.setitem(sys.modules, "zstandard", None)
    for cached in ("zc", "zd"):
        monkeypatch.delattr(_protect._local, cached, raising=False)
    with memimg.open(path, root=Bank, encryption_key=KEY) as img:
        assert img.root.accounts["ada"].balance == Decimal("6")
    assert "protection.pending" in _raw_meta(path, {})
