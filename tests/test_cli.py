"""The memimg command line, run through click's test runner."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import attrs
import orjson
import pytest
from click.testing import CliRunner

import memimg
from memimg.cli import cli
from tests.models import Account, Bank, Entry
from tests.tampering import PlantedModule, append_event, edit_snapshot, format_1, plant_module, rewrite_snapshot
from tests.versions import ROOT, Versions


@pytest.fixture
def bank_db(tmp_path: Any) -> str:
    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank) as img:
        img.root.accounts["ada"] = Account("ada", entries=[Entry("in")], tags={"x"})
        img.root.accounts["bob"] = Account("bob")
        img.root.accounts["ada"].entries.append(img.root.accounts["ada"].entries[0])  # shared
        img.snapshot()
        img.root.accounts["ada"].balance += 5
    return path


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def test_info(bank_db: str) -> None:
    """info reports the log, snapshots and objects by type."""
    r = run("info", bank_db)
    assert r.exit_code == 0, r.output
    assert "seq 1.." in r.output and "tests.models.Account" in r.output and "snapshots:  1" in r.output
    data = json.loads(run("info", bank_db, "--json").output)
    assert data["types"]["tests.models.Account"] == 2 and data["root"] == "tests.Bank"


def test_log_filters(bank_db: str) -> None:
    """log lists events and filters by seq, object, kind and limit; --json is one object per line."""
    lines = run("log", bank_db, "--json").output.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["kind"] == "root"
    only_sets = [json.loads(x) for x in run("log", bank_db, "--json", "--kind", "obj.*").output.splitlines()]
    assert only_sets and all(e["kind"].startswith("obj.") for e in only_sets)
    assert len(run("log", bank_db, "--limit", "2").output.splitlines()) == 2
    target = only_sets[0]["target"]
    assert all(
        json.loads(x)["target"] == target
        for x in run("log", bank_db, "--json", "--object", str(target)).output.splitlines()
    )
    assert run("log", bank_db, "--since", "100").output == ""


def test_show_paths_and_cycles(bank_db: str) -> None:
    """show renders the graph from the root or a path; shared objects are shown once."""
    r = run("show", bank_db, "--depth", "6")
    assert "Bank #1" in r.output and "(shown above)" in r.output
    assert run("show", bank_db, "accounts.ada.balance").output.strip() == "Decimal('5')"
    assert run("show", bank_db, "accounts.ada.entries[0].label").output.strip() == "'in'"
    data = json.loads(run("show", bank_db, "accounts.ada", "--json").output)
    assert data["$type"] == "tests.models.Account" and data["balance"] == {"$decimal": "5"}
    bad = CliRunner().invoke(cli, ["show", bank_db, "accounts.zed"])
    assert bad.exit_code == 1 and "no key 'zed'" in bad.output and "Traceback" not in bad.output


def test_snapshot_verify_compact(bank_db: str, tmp_path: Any) -> None:
    """snapshot writes one; verify checks everything; compact drops what the new snapshot covers."""
    assert "snapshot written at seq" in run("snapshot", bank_db).output
    ok = run("verify", bank_db)
    assert ok.exit_code == 0 and "2 snapshot(s) equal the replayed state" in ok.output
    archive = str(tmp_path / "old.ndjson")
    out = run("compact", bank_db, "--archive", archive).output
    assert "dropped" in out
    with open(archive) as f:
        archived = [json.loads(line) for line in f]
    assert archived[0]["seq"] == 1
    assert run("verify", bank_db).exit_code == 0
    with memimg.open(bank_db, root=Bank) as img:
        assert img.root.accounts["ada"].balance == 5


def test_compact_gives_the_space_back(tmp_path: Any) -> None:
    """compact shrinks the file to about the size of what it keeps (the new snapshot and the events after
    it), and says so; the image reads the same."""
    path = str(tmp_path / "big.db")
    with memimg.open(path, snapshot_every=None) as img:
        for i in range(300):
            img.root["text"] = f"{i:05}" + "x" * 20_000

    def on_disk() -> int:
        return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))

    before = on_disk()
    r = run("compact", path)
    assert r.exit_code == 0 and "MB -> " in r.output and "KB on disk" in r.output, r.output
    after = on_disk()
    assert before > 6_000_000 and after < 200_000, (before, after)
    with memimg.open(path) as img:
        assert img.root["text"].startswith("00299")


def test_compact_archives_each_event_as_it_is_read(bank_db: str, tmp_path: Any, monkeypatch: Any) -> None:
    """compact --archive writes each dropped event to the archive before it reads the next (it never holds
    the log in memory)."""
    from memimg.cli import _ops

    steps: list[str] = []
    read = memimg.SQLiteStore.read

    def reading(self: Any, after: int = 0, limit: int | None = None) -> Any:
        for row in read(self, after, limit):
            steps.append("read")
            yield row

    def dumping(obj: Any, *args: Any) -> bytes:
        steps.append("write")
        return orjson.dumps(obj, *args)

    monkeypatch.setattr(memimg.SQLiteStore, "read", reading)
    monkeypatch.setattr(_ops, "orjson", types.SimpleNamespace(dumps=dumping))
    archive = str(tmp_path / "old.ndjson")
    assert run("compact", bank_db, "--archive", archive).exit_code == 0
    with open(archive) as f:
        archived = [json.loads(line)["seq"] for line in f]
    assert archived == list(range(1, len(archived) + 1)) and len(archived) > 3
    start = steps.index("write") - 1  # the reads before are the image's, opening
    assert steps[start : start + 2 * len(archived)] == ["read", "write"] * len(archived)


def test_verify_names_the_first_bad_seq(bank_db: str) -> None:
    """A tampered event makes verify exit non-zero naming its seq."""
    conn = sqlite3.connect(bank_db)
    conn.execute("UPDATE memimg_events SET payload = CAST(replace(payload, 'ada', 'eve') AS BLOB) WHERE seq = 2")
    conn.commit()
    conn.close()
    r = CliRunner().invoke(cli, ["verify", bank_db])
    assert r.exit_code == 1 and "seq 2" in r.output


def test_verify_finds_a_snapshot_that_disagrees_with_the_log(bank_db: str) -> None:
    """A snapshot whose content differs from the replay is reported even with a valid checksum."""
    seq = rewrite_snapshot(bank_db, b'"bob"', b'"rob"')
    r = CliRunner().invoke(cli, ["verify", bank_db])
    assert r.exit_code == 1 and f"snapshot at seq {seq} differs" in r.output


@pytest.mark.parametrize(
    ("renumbered", "line"),
    # the snapshot's object lines hold ids 1, 2, 3, 7, 4, 5, 8, 9, 6
    [({6: -1}, 9), ({3: -4}, 3), ({3: 12, 6: -2}, 9)],
    ids=["on-an-object", "before-the-start", "on-a-free-place"],
)
def test_verify_names_a_snapshot_object_id_below_1(bank_db: str, renumbered: dict[int, int], line: int) -> None:
    """A (format-1) snapshot holding an object under a negative id is reported naming that id and its line,
    whether the id counted from the end would fall on an object, before the table's start, or on a free place
    (object 3 moved to 12 leaves 11 free for -2); no object is read into the wrong place."""
    edit_snapshot(bank_db, lambda payload: format_1(payload, lambda oid: renumbered.get(oid, oid)))
    r = CliRunner().invoke(cli, ["verify", bank_db])
    assert r.exit_code == 1, r.output
    wrong = min(renumbered.values())
    assert f"has object id {wrong} on object line {line} (object ids run from 1 up)" in r.output, r.output


def test_verify_names_a_missing_seq(tmp_path: Any) -> None:
    """An event deleted from the middle of the log (after the last snapshot, so no comparison would
    notice) makes verify exit non-zero naming the missing seq."""
    path = str(tmp_path / "gap.db")
    with memimg.open(path) as img:
        img.root["n"] = 0
        img.snapshot()
        for i in range(3):
            img.root["n"] = i + 1
        head = img.store.head()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM memimg_events WHERE seq = ?", (head - 1,))
    conn.commit()
    conn.close()
    r = CliRunner().invoke(cli, ["verify", path])
    assert r.exit_code == 1 and f"event seq {head - 1} is missing" in r.output, r.output


def test_verify_finds_a_snapshot_differing_in_its_last_chunk(tmp_path: Any) -> None:
    """A snapshot of several chunks edited (checksum kept valid) in its last object only is found to differ:
    every chunk is compared, whether the bytes of the replay's are alike or not."""
    path = str(tmp_path / "chunks.db")
    with memimg.open(path) as img:
        img.root["items"] = [Entry(f"e{i}") for i in range(5000)]  # more than two chunks of 2,048
        img.snapshot()
    seq = rewrite_snapshot(path, b'"e4999"', b'"e4998"')
    r = CliRunner().invoke(cli, ["verify", path])
    assert r.exit_code == 1 and f"snapshot at seq {seq} differs" in r.output, r.output


def test_verify_settles_a_snapshot_written_alike_without_reading_it_object_by_object(
    bank_db: str, monkeypatch: Any
) -> None:
    """A snapshot this memimg wrote of the replayed state (same process hash order) is the replay written
    again, byte for byte: verify settles it so, never splitting it into objects to compare one by one."""
    from memimg.cli import _verify

    def object_by_object(line: bytes, count: int, chunk: int, seq: int | None) -> Any:
        raise AssertionError(f"the snapshot at seq {seq} was compared object by object")

    monkeypatch.setattr(_verify, "load_states", object_by_object)
    r = CliRunner().invoke(cli, ["verify", bank_db])
    assert r.exit_code == 0 and "1 snapshot(s) equal the replayed state" in r.output, r.output


def test_verify_compares_a_snapshot_with_the_replay_as_stored(tmp_path: Any, monkeypatch: Any) -> None:
    """A snapshot written by the classes the replay reads with is compared with the replay object by object as
    stored -- never loaded into a second graph -- whatever order the writer's hash seed gave its sets."""
    from memimg.cli import _verify

    v = Versions(tmp_path)
    v.record(
        """
        @persistent(name="{P}.Product")
        class Product:
            title: str

        @persistent(name="{P}.Shop")
        class Shop:
            tags: set = attrs.field(factory=set)
            products: set = attrs.field(factory=set)
            by_number: dict = attrs.field(factory=dict)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.tags.update("abcdefghijklmnop")
            img.root.products.update(models.Product(t) for t in "abcdefgh")
            img.root.by_number.update({n: str(n) for n in range(10)})
            img.snapshot()
        """,
        env={"PYTHONHASHSEED": "1"},
    )

    def second_graph(store: Any, seq: int) -> Any:
        raise AssertionError(f"the snapshot at seq {seq} was loaded into a second graph")

    monkeypatch.setattr(_verify, "_stored_snapshot", second_graph)
    r = CliRunner().invoke(cli, ["verify", v.path])
    assert r.exit_code == 0 and "1 snapshot(s) equal the replayed state" in r.output, r.output


def test_verify_tells_numbers_and_booleans_apart(tmp_path: Any) -> None:
    """A snapshot storing ``true`` or ``1.0`` where the replay gives ``1`` differs from it (as JSON, not
    as Python compares them)."""
    path = str(tmp_path / "n.db")
    with memimg.open(path) as img:
        img.root["n"] = 1
        img.root["f"] = 2.5
        img.snapshot()
    for old, new in ((b'"n":1', b'"n":true'), (b'"n":1', b'"n":1.0')):
        shutil.copy(path, tmp_path / "copy.db")
        seq = rewrite_snapshot(str(tmp_path / "copy.db"), old, new)
        r = CliRunner().invoke(cli, ["verify", str(tmp_path / "copy.db")])
        assert r.exit_code == 1 and f"snapshot at seq {seq} differs" in r.output, (new, r.output)


def test_export_and_import(bank_db: str, tmp_path: Any) -> None:
    """export writes the snapshot format; import builds a new image from it."""
    out = str(tmp_path / "bank.json")
    run("export", bank_db, "-o", out)
    target = str(tmp_path / "copy.db")
    assert "imported" in run("import", target, out).output
    with memimg.open(target, root=Bank) as img:
        ada = img.root.accounts["ada"]
        assert ada.balance == 5 and ada.entries[0] is ada.entries[1] and ada.tags == {"x"}
    again = CliRunner().invoke(cli, ["import", target, out])
    assert again.exit_code == 1 and "already holds an image" in again.output


def test_works_without_the_application_classes(tmp_path: Any) -> None:
    """Types no loaded class claims are read into generic stand-ins, and written back the same."""
    path = str(tmp_path / "foreign.db")
    script = textwrap.dedent(
        f"""
        import enum, attrs, memimg
        from decimal import Decimal
        class Mood(enum.Enum):
            OK = 1
        @attrs.frozen
        class Tag:
            text: str
        memimg.converter.register_value(Tag, name="far.Tag")
        @memimg.persistent(name="far.Thing")
        class Thing:
            label: str = ""
            mood: object = None
            tags: tuple = ()
        with memimg.open({path!r}) as img:
            img.root["t"] = Thing("hello", Mood.OK, (Tag("a"),))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert "far.Thing" in run("info", path).output
    shown = run("show", path, "t").output
    assert "label: 'hello'" in shown and "__main__.Mood.OK" in shown
    assert run("snapshot", path).exit_code == 0
    assert "equal the replayed state" in run("verify", path).output


def test_tools_read_only_the_newest_snapshot_and_the_events_after_it(tmp_path: Any) -> None:
    """Opening an image as the tools do (stand-ins for unclaimed types) reads the newest intact snapshot and
    the events after it -- not the events a snapshot covers, nor older snapshots -- and a field a later
    version of a class added after the snapshot is read."""
    v = Versions(tmp_path)
    v.record(
        """
        @persistent(name="{P}.Product")
        class Product:
            title: str

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple")
            img.snapshot()
            img.root.products["b"] = models.Product("bread")
            img.snapshot()
            img.root.products["c"] = models.Product("cheese")
        """,
    )
    v.record(
        """
        @persistent(name="{P}.Product")
        class Product:
            title: str
            stock: int = 0

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
        """,
        'with memimg.open(path, root=models.Shop) as img:\n    img.root.products["c"].stock = 3\n',
    )
    reads: list[tuple[str, int]] = []

    class Watched(memimg.SQLiteStore):
        def read(self, after: int = 0, limit: int | None = None) -> Any:
            reads.append(("events after", after))
            return super().read(after, limit)

        def read_snapshot(self, seq: int) -> Any:
            reads.append(("snapshot", seq))
            return super().read_snapshot(seq)

    store = Watched(v.path, readonly=True)
    newest = store.snapshots()[0].seq
    with memimg.open(store, readonly=True, generic_types=True, snapshot_every=None) as img:
        assert {k: (p.title, getattr(p, "stock", None)) for k, p in img.root.products.items()} == {
            "a": ("apple", None),
            "b": ("bread", None),
            "c": ("cheese", 3),
        }
    assert reads and set(reads) == {("snapshot", newest), ("events after", newest)}


def test_ints_too_long_for_decimal_are_shown_in_hex(tmp_path: Any) -> None:
    """Ints past 4,300 digits (which Python will not write in decimal) are shown in hex by show (text and
    JSON, where they are strings), and log, export and verify read them like any value."""
    from fractions import Fraction

    from tests.models import Box, Point

    huge = 10**5000
    path = str(tmp_path / "big.db")
    with memimg.open(path, root=Box) as img:
        img.root.content = {huge: (huge, -huge), "set": {huge, 1}, "f": Fraction(huge, 3), "p": Point(huge, 1)}
        img.snapshot()
        img.root.other = [-huge]
    shown = run("show", path, "--depth", "5").output
    assert f"{hex(huge)}: ({hex(huge)}, {hex(-huge)})" in shown and f"-: {hex(huge)}" in shown
    assert f"Fraction({hex(huge)}, 0x3)" in shown and f"Point(x={hex(huge)}, y=1)" in shown
    assert run("show", path, f"content.{hex(huge)}").output.strip() == f"({hex(huge)}, {hex(-huge)})"
    data = json.loads(run("show", path, "other", "--json").output)
    assert data["items"] == [{"$int": hex(-huge)}]
    assert run("log", path).exit_code == 0 and hex(-huge) in run("log", path, "--json").output
    exported = json.loads(run("export", path).output)
    assert [["i", hex(-huge)]] in [state for _, _, state in exported["objects"]]
    assert "1 snapshot(s) equal the replayed state" in run("verify", path).output


def test_verify_reads_decimal_ints_of_any_length_as_equal_to_hex(tmp_path: Any) -> None:
    """A snapshot holding an int past 4,300 digits in decimal (an older memimg, with Python's limit
    raised, wrote it so) equals the replayed state, which this memimg writes in hex."""
    from tests.models import Box
    from tests.tampering import edit_snapshot

    huge = 10**5000
    path = str(tmp_path / "old.db")
    with memimg.open(path, root=Box) as img:
        img.root.content = (huge,)
        img.snapshot()
    edit_snapshot(path, lambda payload: payload.replace(hex(huge).encode(), b"1" + b"0" * 5000))
    assert "1 snapshot(s) equal the replayed state" in run("verify", path).output
    with memimg.open(path, root=Box) as img:
        assert img.root.content == (huge,)


@pytest.fixture
def planted(tmp_path: Any, monkeypatch: Any) -> Iterator[PlantedModule]:
    module = plant_module(tmp_path, monkeypatch)
    yield module
    sys.modules.pop(module.name, None)


def _log_naming(planted: PlantedModule, path: str) -> None:
    """An image whose log names types of *planted*: an enum value, a value object, and an entity."""
    from tests.models import Box

    thing, point, node = (f"{planted.name}.{n}" for n in ("Thing", "Point", "Node"))
    with memimg.open(path, root=Box):
        pass
    append_event(path, "obj.set", 1, [["content", ["T", [["e", thing, "X"], ["v", point, {}]]]]])
    append_event(path, "obj.set", 1, [["other", ["r", 2]], [[2, node, {}]], {node: [1, []]}])


@pytest.mark.parametrize("command", ["info", "show", "verify", "log", "export", "snapshot"])
def test_commands_never_import_what_the_log_names(planted: PlantedModule, tmp_path: Any, command: str) -> None:
    """A log naming a module that lies importable in the working directory: no command imports it
    (its types are read into stand-ins); --import is the only way to run an application's code."""
    path = str(tmp_path / "img.db")
    _log_naming(planted, path)
    r = CliRunner().invoke(cli, [command, path])
    assert r.exit_code == 0, r.output
    assert not planted.imported


@pytest.mark.parametrize("where", ["before", "after", "between", "short"])
def test_import_option_imports_the_named_module(planted: PlantedModule, tmp_path: Any, where: str) -> None:
    """--import MODULE (the explicit opt-in) imports it first, so its classes are used -- given before
    the command or anywhere after it."""
    path = str(tmp_path / "img.db")
    _log_naming(planted, path)
    args = {
        "before": ["--import", planted.name, "show", path, "content"],
        "after": ["show", path, "content", "--import", planted.name],
        "between": ["show", path, "--import", planted.name, "content"],
        "short": ["show", "-i", planted.name, path, "content"],
    }[where]
    r = CliRunner().invoke(cli, args)
    assert planted.imported
    assert r.exit_code == 0 and "<Thing.X: 1>" in r.output, r.output


def test_verify_reports_a_value_tag_naming_an_entity_class(tmp_path: Any) -> None:
    """A registered-value tag naming an entity class fails verify (and show) with its seq, as corrupt."""
    from tests.models import Box

    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Box):
        pass
    seq = append_event(path, "obj.set", 1, [["content", ["x", "tests.models.Entry", {"label": "made"}]]])
    for command in ("verify", "show"):
        r = CliRunner().invoke(cli, [command, path])
        assert r.exit_code == 1 and f"event seq {seq} " in r.output and "'tests.models.Entry'" in r.output


@pytest.mark.parametrize("field", ["class", "__init__", "_mi_oid", "x=print('ran') or 1, y", ""])
def test_a_declared_field_no_class_can_have_is_corrupt_for_the_tools(tmp_path: Any, field: str) -> None:
    """A log declaring a type with a field name that is no identifier (or is a keyword, or private) is
    reported as corrupt with its seq: the tools never build a stand-in class from it (attrs would write
    the name into generated code)."""
    from tests.models import Box

    path = str(tmp_path / "img.db")
    with memimg.open(path, root=Box):
        pass
    seq = append_event(path, "obj.set", 1, [["content", ["r", 2]], [[2, "far.Odd", {}]], {"far.Odd": [1, [field]]}])
    for command in ("info", "show", "verify"):
        r = CliRunner().invoke(cli, [command, path])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
        assert f"event seq {seq}" in r.output and "'far.Odd' with a field named" in r.output


def test_not_a_memimg_file_changes_nothing(tmp_path: Any) -> None:
    """A non-memimg file gets one clear line, exit status 1, and is left as it was."""
    path = tmp_path / "notes.txt"
    path.write_text("not a database")
    for command in ("info", "log", "show", "snapshot", "verify", "compact", "export"):
        r = CliRunner().invoke(cli, [command, str(path)])
        assert r.exit_code == 1 and "not an SQLite database" in r.output and "Traceback" not in r.output
    assert path.read_text() == "not a database"
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    for command in ("info", "snapshot", "compact", "verify"):
        r = CliRunner().invoke(cli, [command, str(other)])
        assert r.exit_code == 1 and "no memimg image" in r.output
    assert other.read_bytes() == before


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_tracebacks(tmp_path: Any, where: str) -> None:
    """With --debug (before the command or after it), an error is raised as the exception (with its
    traceback), not printed as one line."""
    missing = str(tmp_path / "missing.db")
    r = CliRunner().invoke(cli, ["--debug", "info", missing] if where == "before" else ["info", missing, "--debug"])
    assert r.exit_code == 1 and isinstance(r.exception, memimg.MemimgError)
    quiet = CliRunner().invoke(cli, ["info", missing])
    assert quiet.exit_code == 1 and isinstance(quiet.exception, SystemExit) and "does not exist" in quiet.output


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Any) -> None:
    """When the reader of its output goes away (`memimg log x.db | head -1`), a command stops at once,
    prints nothing more (no "Broken pipe") and exits with status 141, as a closed pipe ends `yes` or `git`."""
    path = str(tmp_path / "long.db")
    with memimg.open(path, snapshot_every=None) as img:
        with img.transaction():
            for i in range(3000):
                img.root[f"key {i}"] = i
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memimg", "log", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().split()[0] == b"1"
    proc.stdout.close()  # as `head -1` does: more than a pipe's buffer of lines is still to be written
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""


def test_python_dash_m(tmp_path: Any) -> None:
    """python -m memimg runs the same command line."""
    out = subprocess.run([sys.executable, "-m", "memimg", "--version"], capture_output=True, text=True, check=True)
    assert "memimg" in out.stdout


def test_demo_runs_twice(tmp_path: Any) -> None:
    """The demo creates an image, and a second run recovers it."""
    path = str(tmp_path / "demo.db")
    first = run("demo", path).output
    second = run("demo", path).output
    assert "Created a new image" in first and "Recovered" in second and "total     170.00" in second


def test_database_url_with_schema(tmp_path: Any) -> None:
    """--schema points the commands at memimg's tables in a schema of a PostgreSQL database."""
    from tests.conftest import POSTGRES_URL

    if not POSTGRES_URL:
        pytest.skip("set MEMIMG_TEST_POSTGRES_URL to test PostgreSQL")
    import uuid

    import sqlalchemy as sa

    from memimg.stores._sqlalchemy import SQLAlchemyStore

    schema = f"cli_{uuid.uuid4().hex[:10]}"
    try:
        with memimg.open(SQLAlchemyStore(POSTGRES_URL, schema=schema), root=Bank) as img:
            img.root.accounts["pg"] = Account("pg")
        r = run("--schema", schema, "info", POSTGRES_URL)
        assert r.exit_code == 0 and "tests.models.Account" in r.output
        assert run("--schema", schema, "show", POSTGRES_URL, "accounts.pg.owner").output.strip() == "'pg'"
        assert run("show", POSTGRES_URL, "accounts.pg.owner", "--schema", schema).output.strip() == "'pg'"
        assert "holds no memimg image" in run("show", POSTGRES_URL, "--schema", schema, "--prefix", "other_").output
        assert run("--schema", schema, "snapshot", POSTGRES_URL).exit_code == 0
        assert "1 snapshot(s) equal" in run("--schema", schema, "verify", POSTGRES_URL).output
    finally:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


# -- verify after a migration ------------------------------------------------------

PRODUCT_V1 = """
@persistent(name="{P}.Product")
class Product:
    title: str
    cents: int = 0
    label: str = ""
    legacy: str = "x"

@persistent(name="{P}.Shop")
class Shop:
    products: dict = attrs.field(factory=dict)
"""

SHOP = """
@persistent(name="{P}.Shop")
class Shop:
    products: dict = attrs.field(factory=dict)
"""

MIGRATIONS = {
    "version bump and upgrader": """
        @persistent(name="{P}.Product", version=2)
        class Product:
            title: str
            price: Decimal = Decimal("0")
            label: str = ""
            legacy: str = "x"

        @memimg.upgrader("{P}.Product", from_version=1)
        def cents_to_price(state: dict) -> dict:
            if "cents" in state:
                state["price"] = Decimal(state.pop("cents")) / 100
            return state
        """,
    "field rename": """
        @persistent(name="{P}.Product")
        class Product:
            title: str
            cents: int = 0
            name: str = memimg.field(default="", renamed_from="label")
            legacy: str = "x"
        """,
    "field removal": """
        @persistent(name="{P}.Product", removed=("legacy",))
        class Product:
            title: str
            cents: int = 0
            label: str = ""
        """,
    "added field with a default": """
        @persistent(name="{P}.Product")
        class Product:
            title: str
            cents: int = 0
            label: str = ""
            legacy: str = "x"
            stock: int = 5
        """,
}


def _migrated(tmp_path: Any, monkeypatch: Any, change: str, after: str = "") -> tuple[Versions, str]:
    """A log written by PRODUCT_V1 and migrated by the *change*'s models in another process (so
    this one has none of their classes until it imports the module it returns the name of)."""
    v = Versions(tmp_path)
    v.record(
        PRODUCT_V1,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"] = models.Product("apple", 120, label="A")
            img.snapshot()
            img.root.products["b"] = models.Product("bread", 250)
            img.root.products["a"].cents = 130
            img.root.products["a"].legacy = "y"
        """,
    )
    models = textwrap.dedent(MIGRATIONS[change]) + SHOP
    v.record(models, "memimg.migrate(path, root=models.Shop)\n" + textwrap.dedent(after))
    module = f"verify_{v.prefix}"
    (tmp_path / f"{module}.py").write_text(v.source(models))
    monkeypatch.syspath_prepend(str(tmp_path))
    return v, module


@pytest.mark.parametrize("change", list(MIGRATIONS))
def test_verify_passes_after_a_migration(tmp_path: Any, monkeypatch: Any, change: str) -> None:
    """A log memimg migrated verifies with and without the application's classes. Without them, the
    states of the migrated type are compared by id and type only, the output says so, and the replay
    goes on from the migration's snapshot; with them, every snapshot equals the replayed state."""
    v, module = _migrated(
        tmp_path,
        monkeypatch,
        change,
        after="""
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["c"] = models.Product("cake")
            img.root.products["a"].title = "green apple"
            img.snapshot()
        """,
    )
    bare = CliRunner().invoke(cli, ["verify", v.path])
    assert bare.exit_code == 0, bare.output
    assert "2 snapshot(s) equal the replayed state" in bare.output
    assert f"snapshot at seq 7: 2 {v.prefix}.Product state(s) compared by object id and type only" in bare.output
    assert "--import" in bare.output
    full = CliRunner().invoke(cli, ["--import", module, "verify", v.path])
    assert full.exit_code == 0, full.output
    assert "3 snapshot(s) equal the replayed state" in full.output and "compared by" not in full.output


def test_verify_passes_after_fields_holding_objects_were_added(tmp_path: Any, monkeypatch: Any) -> None:
    """A log whose newer program added list and dict fields (their objects filled in and logged for the
    older products) verifies with and without the classes, snapshots before and after included."""
    models = """
    @persistent(name="{P}.Product")
    class Product:
        title: str
        cents: int = 0
        name: str = memimg.field(default="", renamed_from="label")
        legacy: str = "x"
        tags: list = attrs.field(factory=list)
        stock: dict = attrs.field(factory=lambda: {"sizes": []})
    """
    v, module = _migrated(tmp_path, monkeypatch, "field rename")  # an older snapshot, then the migration's
    v.record(
        textwrap.dedent(models) + SHOP,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["a"].tags.append("red")
            img.snapshot()
            img.root.products["b"].stock["sizes"].append(3)
        """,
    )
    (tmp_path / f"{module}_objects.py").write_text(v.source(textwrap.dedent(models) + SHOP))
    for args in (["verify", v.path], ["--import", f"{module}_objects", "verify", v.path]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "verified" in result.output


def test_verify_after_a_migration_still_finds_a_snapshot_edited_with_a_valid_checksum(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A migration's snapshot whose content was edited is reported, with and without the classes,
    wherever the edit is in what can be compared; a migrated state is compared only with the classes."""
    v, module = _migrated(tmp_path, monkeypatch, "version bump and upgrader")
    key, title = str(tmp_path / "key.db"), str(tmp_path / "title.db")
    shutil.copy(v.path, key)
    shutil.copy(v.path, title)
    seq = rewrite_snapshot(key, b'"a":', b'"z":')
    rewrite_snapshot(title, b'"bread"', b'"broad"')
    for args in ([], ["--import", module]):  # without the classes first: importing them is for good
        edited_key = CliRunner().invoke(cli, [*args, "verify", key])
        assert edited_key.exit_code == 1 and f"snapshot at seq {seq} differs" in edited_key.output
        edited_title = CliRunner().invoke(cli, [*args, "verify", title])
        if args:
            assert edited_title.exit_code == 1 and f"snapshot at seq {seq} differs" in edited_title.output
        else:
            assert edited_title.exit_code == 0 and f"snapshot at seq {seq}: 2 {v.prefix}.Product" in edited_title.output


def test_verify_after_a_migration_whose_upgrader_was_deleted(tmp_path: Any, monkeypatch: Any) -> None:
    """With classes that no longer read the states written before a migration (its upgrader deleted,
    as the migration allows), verify compares those states by id and type only and says why."""
    v, _ = _migrated(tmp_path, monkeypatch, "version bump and upgrader")
    source = MIGRATIONS["version bump and upgrader"].split("@memimg.upgrader")[0]
    module = f"verify_{v.prefix}_later"
    (tmp_path / f"{module}.py").write_text(v.source(textwrap.dedent(source) + SHOP))
    r = CliRunner().invoke(cli, ["--import", module, "verify", v.path])
    assert r.exit_code == 0, r.output
    assert f"snapshot at seq 7: 2 {v.prefix}.Product state(s) compared by object id and type only" in r.output
    assert f'add @memimg.upgrader("{v.prefix}.Product", from_version=1)' in r.output


def test_verify_after_migrating_a_renamed_class_and_a_value_class(tmp_path: Any, monkeypatch: Any) -> None:
    """A class renamed with an alias and a value class given a new version, migrated: verify passes
    with and without the classes; without them, values of the old version can still be dict keys."""
    v = Versions(tmp_path)
    v.record(
        """
        @attrs.frozen
        class Sku:
            code: str

        memimg.converter.register_value(Sku, name="{P}.Sku")

        @persistent(name="{P}.Item")
        class Item:
            label: str
            sku: object = None

        @persistent(name="{P}.Shop")
        class Shop:
            products: dict = attrs.field(factory=dict)
            skus: set = attrs.field(factory=set)
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products[models.Sku("a")] = models.Item("apple", models.Sku("a"))
            img.root.skus.add(models.Sku("b"))
            img.snapshot()
            img.root.products[models.Sku("c")] = models.Item("cake")
        """,
    )
    models = """
    @attrs.frozen
    class Sku:
        code: str
        region: str = "eu"

    memimg.converter.register_value(Sku, name="{P}.Sku", version=2)

    @memimg.upgrader("{P}.Sku", from_version=1)
    def upper(state: dict) -> dict:
        if "code" in state:
            state["code"] = state["code"].upper()
        return state

    @persistent(name="{P}.Product", aliases=("{P}.Item",))
    class Product:
        title: str = memimg.field(default="", renamed_from="label")
        sku: object = None

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
        skus: set = attrs.field(factory=set)
    """
    v.record(models, "memimg.migrate(path, root=models.Shop)")
    bare = CliRunner().invoke(cli, ["verify", v.path])
    assert bare.exit_code == 0, bare.output
    for line in (
        f"2 {v.prefix}.Item object(s) compared by id only: only the log declares",
        f"2 {v.prefix}.Product object(s) compared by id only: only the snapshot declares",
        f"3 {v.prefix}.Sku value(s) compared by type only",
    ):
        assert line in bare.output
    module = f"verify_{v.prefix}"
    (tmp_path / f"{module}.py").write_text(v.source(models))
    monkeypatch.syspath_prepend(str(tmp_path))
    full = CliRunner().invoke(cli, ["--import", module, "verify", v.path])
    assert full.exit_code == 0, full.output
    assert "2 snapshot(s) equal the replayed state" in full.output


@memimg.persistent(name="cli.Coupon")
class Coupon:
    code: str = ""


@memimg.persistent(name="cli.Shop")
class Shop:
    items: list = attrs.field(factory=list)
    best: Any = None


def test_verify_passes_after_migrating_with_removed_types(tmp_path: Any) -> None:
    """A migration with removed_types logs the clean-up (references cleared, elements dropped) before its
    snapshot, so verify finds the snapshot equal to the replayed log."""
    path = str(tmp_path / "shop.db")
    with memimg.open(path, root=Shop) as img:
        c = Coupon("x")
        img.root.items.extend([c, "keep"])
        img.root.best = c
    memimg.migrate(path, root=Shop, removed_types=("cli.Coupon",))
    result = CliRunner().invoke(cli, ["verify", path])
    assert result.exit_code == 0, result.output


# -- without the application's classes, in a fresh process --------------------------


def run_in_a_fresh_process(
    args: list[str], env: dict[str, str] | None = None, cwd: Any = None
) -> subprocess.CompletedProcess[str]:
    """The memimg command line in a fresh process that has none of the application's classes."""
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    full_env.pop("MEMIMG_IMPORT", None)
    return subprocess.run(
        [sys.executable, "-m", "memimg", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )


def test_compact_without_the_classes_keeps_fields_added_later(tmp_path: Any) -> None:
    """Without the application's code, each stored type is read with every field its declarations in the
    log list, the first and the later ones: compact keeps the fields a later version added."""
    v = Versions(tmp_path)
    v1 = """
    @persistent(name="{P}.Product")
    class Product:
        title: str

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
    """
    v2 = """
    @persistent(name="{P}.Product")
    class Product:
        title: str
        stock: int = 0

    @persistent(name="{P}.Shop")
    class Shop:
        products: dict = attrs.field(factory=dict)
    """
    v.record(
        v1, 'with memimg.open(path, root=models.Shop) as img:\n    img.root.products["a"] = models.Product("apple")\n'
    )
    v.record(
        v2,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.products["b"] = models.Product("bread", 7)
            img.root.products["a"].stock = 3
        """,
    )
    out = run_in_a_fresh_process(["compact", v.path], cwd=v.tmp)
    assert out.returncode == 0, out.stderr
    new = v.load(v2)
    with memimg.open(v.path, root=new.Shop) as img:
        assert {k: p.stock for k, p in img.root.products.items()} == {"a": 3, "b": 7}


def test_verify_reads_frozensets_written_under_another_hash_seed(tmp_path: Any) -> None:
    """A snapshot holding a frozenset, written by a process whose hash seed (so iteration order) differs
    from verify's, is found equal to the replayed log."""
    v = Versions(tmp_path)
    v.record(
        """
        @persistent(name="{P}.Shop")
        class Shop:
            tags: frozenset = frozenset()
        """,
        """
        with memimg.open(path, root=models.Shop) as img:
            img.root.tags = frozenset("abcdefghijklmnop")
            img.snapshot()
        """,
        env={"PYTHONHASHSEED": "1"},
    )
    out = run_in_a_fresh_process(["verify", v.path], env={"PYTHONHASHSEED": "2"}, cwd=v.tmp)
    assert out.returncode == 0, out.stderr


def test_snapshot_without_the_classes_is_refused_when_stored_states_need_an_upgrader(tmp_path: Any) -> None:
    """States of one type stored at two versions: without the class (and its upgrader) the command line
    cannot upgrade the old ones, so `snapshot` refuses, naming the version, and writes nothing."""
    v = Versions(tmp_path)
    for version in (1, 2):
        v.record(
            f"""
            @persistent(name="{{P}}.Product", version={version})
            class Product:
                amount: int = 0

            @memimg.upgrader("{{P}}.Product", from_version=1)
            def _up(state):
                return state

            @persistent(name="{{P}}.Shop")
            class Shop:
                products: list = attrs.field(factory=list)
            """,
            """
            with memimg.open(path, root=models.Shop) as img:
                img.root.products.append(models.Product(5))
            """,
        )
    before = memimg.SQLiteStore(v.path)
    snapshots = before.snapshots()
    before.close()
    out = run_in_a_fresh_process(["snapshot", v.path], cwd=v.tmp)
    assert out.returncode != 0
    assert "refusing to write" in out.stderr and "version" in out.stderr
    after = memimg.SQLiteStore(v.path)
    assert after.snapshots() == snapshots
    after.close()
