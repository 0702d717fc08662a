"""``memimg.copy`` / ``memimg copy``: an image's log from any store to any store, row for row, verified."""

from __future__ import annotations

import itertools
import os
import uuid
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

import memimg
from memimg._api import store_for
from memimg.cli import cli
from memimg.stores import EventRow
from tests.conftest import POSTGRES_URL
from tests.models import Account, Bank, Box, Entry


def build(path: str) -> memimg.MemoryImage:
    """An image with transactions carrying metadata, a snapshot in the middle, and events after it (left open)."""
    img = memimg.open(path, root=Bank, snapshot_every=None)
    with img.transaction(meta={"user": "ada", "reason": "opening"}):
        img.root.accounts["ada"] = Account("ada", Decimal("10"), {"vip"})
        img.root.accounts["bob"] = Account("bob")
    img.snapshot()
    for i in range(3):
        with img.transaction(meta={"user": "bob"}):
            img.root.accounts["bob"].entries.append(Entry(f"e{i}", Decimal(i)))
            img.root.accounts["ada"].balance -= 1
    return img


def rows(store: memimg.Store) -> list[tuple[Any, ...]]:
    return [tuple(bytes(c) if isinstance(c, memoryview) else c for c in EventRow(*r)) for r in store.read()]


def snapshots(store: memimg.Store) -> list[tuple[Any, ...]]:
    return [tuple(store.read_snapshot(i.seq)) for i in sorted(store.snapshots())]


def state(img: memimg.MemoryImage) -> Any:
    bank = img.root
    return {k: (a.owner, a.balance, a.tags, [(e.label, e.amount) for e in a.entries]) for k, a in bank.accounts.items()}


@pytest.fixture
def last_store(tmp_path: Any) -> Any:
    """The chain's last store: PostgreSQL when configured (as in CI), else an in-memory store."""
    if not POSTGRES_URL:
        yield memimg.MemoryStore()
        return
    import sqlalchemy as sa

    from memimg.stores._sqlalchemy import SQLAlchemyStore

    schema = f"copy_{uuid.uuid4().hex[:12]}"
    store = SQLAlchemyStore(POSTGRES_URL, schema=schema)
    yield store
    store.close()
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def test_a_copy_keeps_every_row_snapshot_and_the_graph(tmp_path: Any, last_store: Any) -> None:
    """SQLite -> NDJSON -> SQLite -> PostgreSQL (or memory): every event (seq, tx, time, kind, target, payload,
    checksum), every snapshot and the transactions' metadata are the source's, and each copy opens as the
    same graph."""
    source = str(tmp_path / "a.db")
    img = build(source)
    expected, head = state(img), img.seq
    img.close()
    chain: list[Any] = [source, str(tmp_path / "b.ndjson"), str(tmp_path / "c.db"), last_store]
    original = memimg.SQLiteStore(source, readonly=True)
    for src, dst in itertools.pairwise(chain):
        assert memimg.copy(src, dst) == head
        copy = dst if isinstance(dst, memimg.Store) else store_for(dst, readonly=True)
        assert rows(copy) == rows(original) and snapshots(copy) == snapshots(original)
        with memimg.open(copy, root=Bank) as again:
            assert state(again) == expected and again.seq == head
            assert [e.meta for e in again.events() if e.kind == "tx.meta"] == [
                {"user": "ada", "reason": "opening"},
                {"user": "bob"},
                {"user": "bob"},
                {"user": "bob"},
            ]
        if copy is not dst:
            copy.close()
    original.close()


def test_a_compacted_log_is_copied_from_where_it_starts(tmp_path: Any) -> None:
    """A log whose first events were compacted away is copied as it is: the same first seq, after the same
    snapshot, and it opens as the same graph."""
    source = str(tmp_path / "a.ndjson")
    build(source).close()
    result = CliRunner().invoke(cli, ["compact", source], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = memimg.NDJSONStore(source, readonly=True)
    assert store.first_seq() > 1
    for dst in (str(tmp_path / "b.db"), str(tmp_path / "b.ndjson"), memimg.MemoryStore()):
        memimg.copy(source, dst)
        copy = dst if isinstance(dst, memimg.Store) else store_for(dst, readonly=True)
        assert (copy.first_seq(), copy.head()) == (store.first_seq(), store.head())
        assert rows(copy) == rows(store) and snapshots(copy) == snapshots(store)
        with memimg.open(copy, root=Bank) as again, memimg.open(source, root=Bank, readonly=True) as old:
            assert state(again) == state(old)
        if copy is not dst:
            copy.close()
    store.close()


def test_a_destination_that_holds_a_log_is_refused_unless_overwritten(tmp_path: Any) -> None:
    """A destination that already holds a log is refused and left as it was; with overwrite=True (a path only)
    its files are replaced by the copy; a store object that holds a log cannot be overwritten."""
    source, dst = str(tmp_path / "a.db"), str(tmp_path / "b.ndjson")
    build(source).close()
    with memimg.open(dst, root=Box) as other:
        other.root.content = "keep me"
        other.snapshot()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name.startswith("b.")}
    with pytest.raises(memimg.MemimgError, match="already holds a memimg log.*overwrite=True"):
        memimg.copy(source, dst)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name.startswith("b.")} == before
    memimg.copy(source, dst, overwrite=True)
    with memimg.open(dst, root=Bank) as img:
        assert img.root.accounts["ada"].balance == 7
    held = memimg.MemoryStore()
    memimg.copy(source, held)
    with pytest.raises(memimg.MemimgError, match="only a path can be overwritten"):
        memimg.copy(source, held, overwrite=True)


def test_overwriting_an_ndjson_log_keeps_its_lock_file(tmp_path: Any) -> None:
    """overwrite=True replaces an NDJSON log's files but not its lock file, so that a process that has the log
    open still takes its turns on the same lock as the copy and later writers; through a symlink, the files it
    names are replaced and the symlink is kept."""
    source, dst = str(tmp_path / "a.db"), str(tmp_path / "b.ndjson")
    build(source).close()
    with memimg.open(dst, root=Box) as other:
        other.root.content = "old"
    lock = os.stat(dst + ".lock").st_ino
    os.symlink("b.ndjson", tmp_path / "link.ndjson")
    memimg.copy(source, str(tmp_path / "link.ndjson"), overwrite=True)
    assert os.stat(dst + ".lock").st_ino == lock and os.path.islink(tmp_path / "link.ndjson")
    with memimg.open(dst, root=Bank) as img:
        assert img.root.accounts["ada"].balance == 7


@pytest.mark.parametrize("name", ["a.ndjson", "a.db"])
def test_a_log_is_never_copied_onto_itself(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A copy whose destination is its source -- the same path, another path to the same file, the same store
    object -- is refused with overwrite=True too, nothing changed."""
    path = str(tmp_path / name)
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = 1
        img.snapshot()
        img.root.content = 2

    def files() -> dict[str, bytes]:  # (SQLite's -wal and -shm come and go with its connections)
        found = (p for p in tmp_path.rglob("*") if p.is_file())
        return {p.name: p.read_bytes() for p in found if p.suffix not in (".db-shm", ".db-wal")}

    before = files()
    monkeypatch.chdir(tmp_path)
    for dst in (path, "./" + name):
        with pytest.raises(memimg.MemimgError, match="cannot be copied onto itself"):
            memimg.copy(path, dst, overwrite=True)
    assert files() == before
    with memimg.open(path, root=Box) as img:
        assert img.root.content == 2
    held = memimg.MemoryStore()
    memimg.copy(path, held)
    with pytest.raises(memimg.MemimgError, match="cannot be copied onto itself"):
        memimg.copy(held, held, overwrite=True)


def test_a_snapshot_deleted_while_copying_is_a_clear_error(tmp_path: Any) -> None:
    """A source snapshot that a compaction deletes between the listing and the read stops the copy with a
    MemimgError naming its seq (not a KeyError)."""
    path = str(tmp_path / "a.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = 1
        seq = img.snapshot()
    source = memimg.NDJSONStore(path, readonly=True)
    listing = source.snapshots

    def snapshots_then_compacted() -> list[Any]:
        listed = listing()
        os.unlink(os.path.join(path + ".snapshots", f"{seq:020d}.ndjson"))
        return listed

    source.snapshots = snapshots_then_compacted  # type: ignore[method-assign]
    with pytest.raises(memimg.MemimgError, match=f"snapshot at seq {seq} .* was deleted while the copy ran"):
        memimg.copy(source, str(tmp_path / "b.ndjson"))
    source.close()


def test_a_live_writer_never_makes_the_copy_hold_a_snapshot_past_its_log(tmp_path: Any) -> None:
    """A writer that commits and snapshots while the copy starts (between its first looks at the source's head
    and snapshots) is not a problem: the copy holds only snapshots its log reaches, and opens."""
    src, dst = str(tmp_path / "src.ndjson"), str(tmp_path / "dst.ndjson")
    writer = memimg.open(src, root=Box, snapshot_every=None)
    writer.root.content = 1
    source = memimg.NDJSONStore(src, readonly=True)
    looks = {"n": 0}

    def then_a_commit(look: Any) -> Any:
        def wrapped() -> Any:
            result = look()
            looks["n"] += 1
            if looks["n"] == 1:
                writer.root.content = 2
                writer.snapshot()
            return result

        return wrapped

    source.head = then_a_commit(source.head)  # type: ignore[method-assign]
    source.snapshots = then_a_commit(source.snapshots)  # type: ignore[method-assign]
    memimg.copy(source, dst)
    copy = memimg.NDJSONStore(dst, readonly=True)
    assert all(s.seq <= copy.head() for s in copy.snapshots())
    copy.close()
    with memimg.open(dst, root=Box) as img:
        assert img.root.content in (1, 2)
    source.close()
    writer.close()


def test_what_belongs_to_processes_is_not_copied(tmp_path: Any) -> None:
    """The leases and positions of processes that have the source open, the SQLite store's checkpoint mark, and
    a store's own bookkeeping, stay behind; the image's other meta entries are copied."""
    source = str(tmp_path / "a.db")
    img = build(source)  # still open: its position is in the source's meta
    store = memimg.SQLiteStore(source)
    store.set_meta("app.note", "kept")
    store.reclaim()  # (its checkpoints write the mark)
    assert any(k.startswith("position.") for k in store.meta()) and "checkpoint.mark" in store.meta()
    dst = memimg.MemoryStore()
    memimg.copy(store, dst)
    assert {k for k in dst.meta() if k != "format_version"} == {"app.note"}
    store.close()
    img.close()


def test_a_damaged_source_row_stops_the_copy_at_whole_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source row that fails its checksum raises CorruptLogError naming it; what was copied before it ends at
    a whole transaction (the copy appends whole transactions, however small its batches)."""
    from memimg import _copy
    from tests.stores.contract import row

    monkeypatch.setattr(_copy, "BATCH", 2)
    store = memimg.MemoryStore()
    store.append([row(1, tx=1), row(2, tx=1)], 0)
    bad = row(6, tx=3)
    store.append([row(3, tx=3), row(4, tx=3), row(5, tx=3), bad._replace(checksum=bad.checksum ^ 1)], 2)
    dst = memimg.MemoryStore()
    with pytest.raises(memimg.CorruptLogError, match="seq 6"):
        memimg.copy(store, dst)
    assert [r[0] for r in dst.read()] == [1, 2]


def test_a_copy_that_reads_back_differently_is_refused() -> None:
    """The copy is read back and compared with the source, row by row: a destination that stored something
    else (here: another payload, with a checksum to match) fails the copy, naming the seq."""
    from memimg.core._rows import event_checksum

    class Garbling(memimg.MemoryStore):
        def append(self, rows: Any, expected_head: int) -> None:
            out = []
            for r in rows:
                if r.seq == 3:
                    payload = r.payload.replace(b"bob", b"eve")
                    r = r._replace(payload=payload, checksum=event_checksum(*r[:5], payload))
                out.append(r)
            super().append(out, expected_head)

    source = memimg.MemoryStore()
    img = memimg.open(source, root=Box)
    img.root.content = "ada"
    img.root.content = "bob"
    img.close()
    with pytest.raises(memimg.MemimgError, match="differs from the source at event seq 3"):
        memimg.copy(source, Garbling())


def test_nothing_to_copy_is_refused(tmp_path: Any) -> None:
    """A source that does not exist or holds no log raises MemimgError, and no destination is made."""
    dst = tmp_path / "b.ndjson"
    with pytest.raises(memimg.MemimgError, match="does not exist"):
        memimg.copy(str(tmp_path / "missing.db"), str(dst))
    with pytest.raises(memimg.MemimgError, match="holds no memimg image"):
        memimg.copy(memimg.MemoryStore(), str(dst))
    assert not dst.exists()


def test_the_command_line_copies_and_reports(tmp_path: Any) -> None:
    """``memimg copy SRC DST`` copies and says what it copied; a destination that holds a log is refused
    (status 1) unless ``--overwrite``; progress reports reach the callback."""
    source, dst = str(tmp_path / "a.db"), str(tmp_path / "b.ndjson")
    img = build(source)
    head = img.seq
    img.close()
    out = CliRunner().invoke(cli, ["copy", source, dst], catch_exceptions=False)
    assert out.exit_code == 0 and f"copied {head} events (seqs 1..{head}) and 1 snapshot(s)" in out.output
    assert "verified" in out.output
    again = CliRunner().invoke(cli, ["copy", source, dst])
    assert again.exit_code == 1 and "--overwrite" in again.output
    forced = CliRunner().invoke(cli, ["copy", source, dst, "--overwrite"])
    assert forced.exit_code == 0, forced.output
    seen: list[tuple[str, int, int]] = []
    memimg.copy(source, str(tmp_path / "c.db"), progress=lambda *a: seen.append(a))
    assert seen and seen[-1] == ("copy", head, head)
    assert os.path.exists(tmp_path / "c.db")
