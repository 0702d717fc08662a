"""The NDJSON store: the contract, and what only an NDJSON file has (its lines, torn tails, the lock file)."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import memimg
from memimg.stores import NDJSONStore, Store
from memimg.stores._ndjsonformat import encode_rows
from tests.models import Box
from tests.stores.contract import StoreContract, row


class TestNDJSONStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Any) -> None:
        self.path = str(tmp_path / "log.ndjson")

    def make_store(self) -> Store:
        return NDJSONStore(self.path)

    def reopen(self, store: Store, *, readonly: bool = False) -> Store:
        return NDJSONStore(self.path, readonly=readonly)

    @contextlib.contextmanager
    def broken(self, store: Store) -> Iterator[bool]:
        # every file of the log is named from its path: under a regular file, each access fails (ENOTDIR)
        assert isinstance(store, NDJSONStore)
        path = store.path
        store.path = "/dev/null/broken.ndjson"
        try:
            yield True
        finally:
            store.path = path


def _lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().split(b"\n")


def test_a_log_round_trips_and_every_line_is_json(tmp_path: Any) -> None:
    """``memimg.open("x.ndjson")`` is an NDJSON store: a header line naming the format, then one JSON object per
    event (seq, tx, ts, kind, target, checksum, and the payload as JSON, not encoded again; the last line of each
    transaction also ``"end": true``); reopened, the same."""
    path = str(tmp_path / "shop.ndjson")
    with memimg.open(path, root=Box) as img:
        assert isinstance(img._engine.store, NDJSONStore)
        img.root.content = {"ada": [1, 2.5, "x\ny"], "bob": None}
        with img.transaction():
            img.root.content["ada"].append(3)
            img.root.other = "é"
        events = list(img.events())
    lines = _lines(path)
    assert lines[-1] == b""
    header, *records = (orjson.loads(line) for line in lines[:-1])
    assert header == {"format": "memimg-ndjson", "version": 2, "first": 1}
    assert [r["seq"] for r in records] == [e.seq for e in events] == list(range(1, len(events) + 1))
    for i, (record, event) in enumerate(zip(records, events, strict=True)):
        last = i == len(events) - 1 or events[i + 1].tx != event.tx
        assert list(record) == ["seq", "tx", "ts", "kind", "target", "checksum", "payload"] + ["end"] * last
        assert record.get("end") is (True if last else None)
        assert (record["tx"], record["kind"], record["target"]) == (event.tx, event.kind, event.target)
        assert record["payload"] == orjson.loads(event.payload)
        assert record["checksum"] == event.to_row().checksum
    with memimg.open(path, root=Box) as img:
        assert img.root.content == {"ada": [1, 2.5, "x\ny", 3], "bob": None} and img.root.other == "é"


def test_a_payload_that_is_not_json_is_kept_in_base64(tmp_path: Any) -> None:
    """A payload that is not JSON (or holds a line break) is stored base64-encoded, the line still JSON, and
    reads back byte for byte."""
    store = NDJSONStore(str(tmp_path / "log.ndjson"))
    odd = [b"\x00\xffnot json", b'["a",\n1]', b""]
    store.append([row(i + 1, payload=p) for i, p in enumerate(odd)], 0)
    store.close()
    records = [orjson.loads(line) for line in _lines(store.path)[1:-1]]
    assert [base64.b64decode(r["payload64"]) for r in records] == odd
    again = NDJSONStore(store.path, readonly=True)
    assert [bytes(r[5]) for r in again.read()] == odd
    again.close()


def test_lines_of_every_shape_read_back_in_order(tmp_path: Any) -> None:
    """Lines as memimg writes them, lines whose kind needs escapes, and base64 payloads, mixed in one log and
    in one transaction, read back exactly, in seq order, from any point."""
    store = NDJSONStore(str(tmp_path / "mixed.ndjson"))
    rows = [
        row(1),
        row(2, 2, kind='k"quoted\\'),
        row(3, 2, payload=b"\x00binary"),
        row(4, 2, payload=b'[["x",1]]', target=7),
        row(5, kind="café", payload='["été"]'.encode()),
        row(6, 6, payload=b"[[],{}]"),
    ]
    store.append(rows[:1], 0)
    store.append(rows[1:4], 1)
    store.append(rows[4:], 4)
    store.close()
    again = NDJSONStore(store.path, readonly=True)
    for after in range(len(rows)):
        assert [tuple(r) for r in again.read(after=after)] == [tuple(r) for r in rows[after:]]
    again.close()


def test_sync_full_fsyncs_each_commit_in_one_write(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction's lines go to the log in one write of complete lines; sync="full" fsyncs the log after
    each commit, sync="normal" never does."""
    calls: list[tuple[str, int]] = []
    write, fsync = os.write, os.fsync
    monkeypatch.setattr(
        os, "write", lambda fd, data: calls.append(("write", bytes(data).count(b"\n"))) or write(fd, data)
    )
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", 0)) or fsync(fd))
    for sync, fsyncs in (("normal", 0), ("full", 1)):
        store = NDJSONStore(str(tmp_path / f"{sync}.ndjson"), sync=sync)
        calls.clear()
        store.append([row(1, 1), row(2, 1), row(3, 1)], 0)
        assert calls == [("write", 3)] + [("fsync", 0)] * fsyncs, sync
        store.close()


def test_a_commit_whose_fsync_failed_stays_and_its_outcome_is_unknown(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit written whole but whose fsync failed is never cut back out (a follower may have read it
    already): the writer is told its outcome is unknown and its store writes no more; a follower that read it
    and a fresh open agree, and the image opened again goes on from it."""
    path = str(tmp_path / "fsync.ndjson")
    writer = memimg.open(path, root=Box, sync="full")
    follower = memimg.open(path, root=Box)
    writer.root.content = "A"
    fsync = os.fsync
    seen: list[Any] = []

    def failing(fd: int) -> None:
        follower.refresh()  # reads the lines while the writer is still in its commit
        seen.append(follower.root.content)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(memimg.CommitUnknownError, match="UNKNOWN"):
        writer.root.content = "B"
    monkeypatch.setattr(os, "fsync", fsync)
    assert seen == ["B"]
    with pytest.raises(memimg.StoreError, match="writes no more|fsync"):
        writer.root.content = "C"
    writer.close()
    follower.root.content = "B2"
    with memimg.open(path, root=Box) as again:
        assert again.root.content == "B2" == follower.root.content
    follower.close()


def test_a_short_write_leaves_nothing_of_its_transaction(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the disk cut short (it was full) leaves nothing of the transaction in the log, and the log
    goes on."""
    store = NDJSONStore(str(tmp_path / "short.ndjson"))
    store.append([row(1, 1)], 0)
    write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: write(fd, bytes(data)[: len(data) // 2]))
    with pytest.raises(memimg.StoreError):
        store.append([row(2, 2), row(3, 2)], 1)
    monkeypatch.setattr(os, "write", write)
    assert store.head() == 1
    store.append([row(2, 2)], 1)
    assert [r[0] for r in store.read()] == [1, 2]
    store.close()


def test_an_interrupt_after_the_write_leaves_the_written_transaction(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt (a signal) landing after the write returned -- the lines are in the file, where lock-free
    readers may have read them -- does not cut them back out: another store reads them, and the writer's store
    finds them at its next append."""
    path = str(tmp_path / "interrupt.ndjson")
    store = NDJSONStore(path)
    store.append([row(1, 1)], 0)
    write = os.write

    def interrupted(fd: int, data: Any) -> int:
        write(fd, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.append([row(2, 2), row(3, 2)], 1)
    monkeypatch.setattr(os, "write", write)
    reader = NDJSONStore(path, readonly=True)
    assert [r[0] for r in reader.read()] == [1, 2, 3]
    reader.close()
    with pytest.raises(memimg.stores.SeqTaken):
        store.append([row(2, 2)], 1)
    store.append([row(4, 4)], 3)
    assert [r[0] for r in store.read()] == [1, 2, 3, 4]
    store.close()


def test_a_sync_full_open_makes_the_logs_directory_entry_durable(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log created with sync="normal" (its directory entry never fsynced) opened with sync="full" gets its
    directory fsynced once at that open; a sync="normal" open does not."""
    import memimg.stores._ndjson as ndjson_module

    path = str(tmp_path / "dir.ndjson")
    NDJSONStore(path).close()
    synced: list[str] = []
    real = ndjson_module.sync_directory
    monkeypatch.setattr(ndjson_module, "sync_directory", lambda d: synced.append(d) or real(d))
    NDJSONStore(path).close()
    assert synced == []
    store = NDJSONStore(path, sync="full")
    assert synced == [os.path.dirname(os.path.realpath(path))]
    store.append([row(1, 1)], 0)
    assert len(synced) == 1  # once per open, not per commit
    store.close()


def test_a_torn_last_line_is_cut_at_open_and_the_log_goes_on(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A partial last line (a crash mid-write) is never replayed: a read-only open leaves the file as it is and
    ignores it; an open for writing cuts it off, logs what it cut, and the log takes new commits."""
    path = str(tmp_path / "torn.ndjson")
    with memimg.open(path, root=Box) as img:
        img.root.content = 1
        head = img.seq
    with open(path, "ab") as f:
        f.write(b'{"seq":%d,"tx":%d,"ts":1,"kind":"obj.set","target":1,"chec' % (head + 1, head + 1))
    torn = pathlib.Path(path).read_bytes()
    with memimg.open(path, root=Box, readonly=True) as ro:
        assert ro.root.content == 1 and ro.seq == head
    assert pathlib.Path(path).read_bytes() == torn
    with caplog.at_level(logging.WARNING, logger="memimg"), memimg.open(path, root=Box) as img:
        assert img.root.content == 1 and img.seq == head
        assert "cut off" in caplog.text and "then a partial line" in caplog.text and '"chec' in caplog.text
        img.root.content = 2
    assert all(orjson.loads(line) for line in _lines(path)[:-1])
    with memimg.open(path, root=Box) as img:
        assert img.root.content == 2 and img.seq == head + 1


@pytest.mark.parametrize("cut_inside", [0, 30], ids=["after-a-whole-line", "inside-a-line"])
def test_a_transaction_cut_short_between_whole_lines_is_never_replayed(
    tmp_path: Any, caplog: pytest.LogCaptureFixture, cut_inside: int
) -> None:
    """A write a crash cut short may leave whole lines of a transaction (the OS wrote part of one large write):
    without the transaction's end mark they are not replayed. A read-only open leaves the file as it is and sees
    the log up to the last whole transaction; an open for writing cuts back to it, logs what it cut, and goes on."""
    path = str(tmp_path / "half.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content, img.root.other = 0, 0
        head, before = img.seq, os.path.getsize(path)
        with img.transaction():  # a transfer: both or neither
            img.root.content = 100
            img.root.other = -100
    data = pathlib.Path(path).read_bytes()
    assert data[before:].count(b"\n") >= 2
    cut = before + data[before:].index(b"\n") + 1 + cut_inside
    pathlib.Path(path).write_bytes(data[:cut])
    with memimg.open(path, root=Box, readonly=True) as ro:
        assert (ro.root.content, ro.root.other, ro.seq) == (0, 0, head)
    assert pathlib.Path(path).read_bytes() == data[:cut]
    with caplog.at_level(logging.WARNING, logger="memimg"), memimg.open(path, root=Box) as img:
        assert (img.root.content, img.root.other, img.seq) == (0, 0, head)
        assert f"cut off {cut - before} bytes after event seq {head} (1 whole lines" in caplog.text
        img.root.content = 5
    assert pathlib.Path(path).read_bytes().startswith(data[:before])
    with memimg.open(path, root=Box) as img:
        assert (img.root.content, img.root.other, img.seq) == (5, 0, head + 1)


def test_a_transaction_without_its_end_before_the_tail_is_named(tmp_path: Any) -> None:
    """A transaction whose last line has no end mark, followed by other transactions (lines lost or edited), is
    CorruptLogError naming the line and seq, on every open; the file is left as it is."""
    path = str(tmp_path / "noend.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        for i in range(4):
            img.root.content = i
    lines = _lines(path)
    assert orjson.loads(lines[3])["seq"] == 3 and lines[3].endswith(b',"end":true}')
    lines[3] = lines[3].replace(b',"end":true}', b"}")
    pathlib.Path(path).write_bytes(b"\n".join(lines))
    for readonly in (True, False):
        with pytest.raises(memimg.CorruptLogError, match="line 4 \\(event seq 3\\) .* no end mark") as info:
            memimg.open(path, root=Box, readonly=readonly)
        assert (info.value.seq, info.value.line) == (3, 4)
    store = NDJSONStore(path, readonly=True)
    with pytest.raises(memimg.CorruptLogError, match="event seq 3"):
        list(store.read(after=3))  # read from the next transaction on: still named
    store.close()
    assert pathlib.Path(path).read_bytes() == b"\n".join(lines)


def test_a_version_1_log_without_end_marks_is_refused_untouched(tmp_path: Any) -> None:
    """A log in NDJSON format 1 (a development build's: no end marks, so a transaction a crash cut short cannot
    be told from a whole one) is refused, for reading and for writing, with the file left as it was."""
    path = str(tmp_path / "v1.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = 1
        img.root.other = 2
    lines = [line.replace(b',"end":true}', b"}") for line in _lines(path)]
    lines[0] = lines[0].replace(b'"version":2', b'"version":1')
    pathlib.Path(path).write_bytes(b"\n".join(lines))
    before = pathlib.Path(path).read_bytes()
    for readonly in (True, False):
        with pytest.raises(memimg.MemimgError, match="format 1.*end marks"):
            memimg.open(path, root=Box, readonly=readonly)
    assert pathlib.Path(path).read_bytes() == before


def test_a_damaged_end_mark_is_corruption_not_a_torn_tail(tmp_path: Any) -> None:
    """A last line whose end mark was damaged (one byte changed) is not taken for a write a crash cut short: a
    writer opening the log raises CorruptLogError naming the line and seq and cuts nothing."""
    path = str(tmp_path / "flip.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = 1
    data = pathlib.Path(path).read_bytes()
    assert data.endswith(b',"end":true}\n')
    damaged = data[: -len(b"true}\n")] + b"trUe}\n"
    pathlib.Path(path).write_bytes(damaged)
    with pytest.raises(memimg.CorruptLogError, match=r"line \d+ \(event seq \d+\)"):
        memimg.open(path, root=Box)
    assert pathlib.Path(path).read_bytes() == damaged


def test_a_line_of_any_length_is_read(tmp_path: Any) -> None:
    """An event line longer than the chunks the log is read in (a 20 MB value) is committed, and the log opens
    again, for reading and for writing."""
    path = str(tmp_path / "big.ndjson")
    big = "x" * 20_000_000
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = big
        img.root.other = 1
    for readonly in (True, False):
        with memimg.open(path, root=Box, readonly=readonly) as img:
            assert img.root.content == big and img.root.other == 1


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda line: line.replace(b'"obj.set"', b'"obj.sex"'), "fails its checksum"),
        (lambda line: line[:-5], "is not a well-formed event line"),
        (lambda line: b"", "is not a well-formed event line"),
        (lambda line: line.replace(b'"seq":3', b'"seq":4'), "holds seq 4"),
    ],
)
def test_a_damaged_line_before_the_tail_is_named(tmp_path: Any, damage: Any, what: str) -> None:
    """A line before the tail that fails its checksum, does not parse, or holds the wrong seq raises
    CorruptLogError naming the line and the seq, and is left as it is."""
    path = str(tmp_path / "bad.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        for i in range(4):
            img.root.content = i
    lines = _lines(path)
    assert orjson.loads(lines[3])["seq"] == 3 and b'"obj.set"' in lines[3]
    lines[3] = damage(lines[3])
    pathlib.Path(path).write_bytes(b"\n".join(lines))
    for readonly in (True, False):
        with pytest.raises(memimg.CorruptLogError, match=f"line 4 \\(event seq 3\\) {what}") as info:
            memimg.open(path, root=Box, readonly=readonly)
        assert (info.value.seq, info.value.line) == (3, 4)
    assert pathlib.Path(path).read_bytes() == b"\n".join(lines)


def test_a_file_that_is_not_a_log_is_refused_untouched(tmp_path: Any) -> None:
    """A .ndjson file whose first line is not the header, or whose header names a newer format, is refused and
    left as it was, with no file made beside it."""
    plain = tmp_path / "other.ndjson"
    plain.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    newer = tmp_path / "newer.ndjson"
    newer.write_bytes(b'{"format":"memimg-ndjson","version":99,"first":1}\n')
    for path, message in ((plain, "not an NDJSON memimg log"), (newer, "format 99")):
        before = path.read_bytes()
        for readonly in (True, False):
            with pytest.raises(memimg.MemimgError, match=message):
                memimg.open(str(path), readonly=readonly)
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newer.ndjson", "other.ndjson"]  # no lock file beside


def test_snapshots_are_files_beside_the_log(tmp_path: Any) -> None:
    """Snapshots are files in NAME.ndjson.snapshots/ (a JSON header line, then the payload), with no temp file
    left; the newest valid one is loaded, a damaged one is skipped with a warning."""
    path = str(tmp_path / "snap.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = "a"
        first = img.snapshot()
        img.root.content = "b"
        second = img.snapshot()
        img.root.content = "c"
    directory = tmp_path / "snap.ndjson.snapshots"
    assert sorted(p.name for p in directory.iterdir()) == [f"{first:020d}.ndjson", f"{second:020d}.ndjson"]
    newest = directory / f"{second:020d}.ndjson"
    assert orjson.loads(newest.read_bytes().split(b"\n")[0])["seq"] == second
    newest.write_bytes(newest.read_bytes().replace(b'"b"', b'"x"'))
    with pytest.warns(UserWarning, match=f"skipping snapshot at seq {second}"), memimg.open(path, root=Box) as img:
        assert img.root.content == "c"


def test_a_log_deleted_under_a_writer_is_refused(tmp_path: Any) -> None:
    """A commit into a log whose file was deleted raises FileGoneError and is not applied."""
    path = str(tmp_path / "gone.ndjson")
    img = memimg.open(path, root=Box)
    img.root.content = 1
    os.unlink(path)
    with pytest.raises(memimg.FileGoneError):
        img.root.content = 2
    assert img.root.content == 1
    img.close()


def test_three_processes_increment_to_exactly_300(tmp_path: Any) -> None:
    """Three processes each run 100 transactional increments of one counter on one NDJSON log: it ends at 300."""
    from tests.test_multiprocess import WORKER, spawn

    path = str(tmp_path / "count.ndjson")
    with memimg.open(path, root=Box) as img:
        img.root.content = {"count": 0}
    procs = [spawn(WORKER, "ndjson", path, wid, "100") for wid in ("w1", "w2", "w3")]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip().endswith("done")
    with memimg.open(path, root=Box) as img:
        assert img.root.content == {"count": 300, "w1": 100, "w2": 100, "w3": 100}
        assert [e.seq for e in img.events()] == list(range(1, img.seq + 1))


def test_writers_take_turns_through_the_lock_file(tmp_path: Any) -> None:
    """While another process holds the lock file's lock, a writer waits for it, then raises LockedError after
    busy_timeout with nothing written; once the lock is free it appends. Readers never wait for it."""
    import fcntl

    store = NDJSONStore(str(tmp_path / "locked.ndjson"), busy_timeout=0.2)
    store.append([row(1)], 0)
    holder = os.open(store.path + ".lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(memimg.LockedError, match="another writer held the lock"):
            store.append([row(2)], 1)
        assert store.head() == 1 and [r[0] for r in store.read()] == [1]
    finally:
        os.close(holder)
    store.append([row(2)], 1)
    assert store.head() == 2
    store.close()


def test_every_path_to_a_log_shares_one_lock_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log opened through a symlink or a relative path (then the working directory changed) is the same log:
    its writers take the same lock file, and a compaction through the symlink replaces the file it names, not
    the symlink."""
    import fcntl

    real = tmp_path / "real.ndjson"
    NDJSONStore(str(real)).close()
    link = tmp_path / "link.ndjson"
    link.symlink_to("real.ndjson")
    monkeypatch.chdir(tmp_path)
    stores = [NDJSONStore(str(link), busy_timeout=0.1), NDJSONStore("real.ndjson", busy_timeout=0.1)]
    monkeypatch.chdir("/")
    holder = os.open(str(real) + ".lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        for store in stores:
            with pytest.raises(memimg.LockedError):
                store.append([row(1)], 0)
    finally:
        os.close(holder)
    stores[0].append([row(1)], 0)
    stores[1].append([row(2)], 1)
    stores[0].delete_events_before(2)
    assert link.is_symlink() and os.readlink(link) == "real.ndjson"
    assert [r[0] for r in NDJSONStore(str(real), readonly=True).read()] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.ndjson", "real.ndjson", "real.ndjson.lock"]
    for store in stores:
        store.close()


@pytest.mark.parametrize("gone", ["deleted", "renamed away"])
def test_a_lock_file_no_longer_at_its_path_still_excludes(tmp_path: Any, gone: str) -> None:
    """A writer whose lock file was deleted or renamed away (and another made in its place, held by another
    process) takes its turn on the file now at the path: it waits for the holder, not on the file it had."""
    import fcntl

    store = NDJSONStore(str(tmp_path / "lock.ndjson"), busy_timeout=0.1)
    store.append([row(1)], 0)
    if gone == "deleted":
        os.unlink(store.path + ".lock")
    else:
        os.rename(store.path + ".lock", store.path + ".lock.bak")
    holder = os.open(store.path + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(memimg.LockedError):
            store.append([row(2)], 1)
    finally:
        os.close(holder)
    store.append([row(2)], 1)
    assert store.head() == 2
    store.close()


def test_a_log_with_hard_links_is_refused_for_writing(tmp_path: Any) -> None:
    """A log with a second name (a hard link) would get a lock file per name: opening it for writing is refused,
    naming the links, and nothing is created beside either name."""
    path = tmp_path / "one.ndjson"
    NDJSONStore(str(path)).append([row(1)], 0)
    os.unlink(str(path) + ".lock")
    os.link(path, tmp_path / "two.ndjson")
    for name in ("one.ndjson", "two.ndjson"):
        with pytest.raises(memimg.MemimgError, match="has 2 hard links"):
            NDJSONStore(str(tmp_path / name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.ndjson", "two.ndjson"]
    assert [r[0] for r in NDJSONStore(str(path), readonly=True).read()] == [1]


def test_readers_never_see_part_of_a_write(tmp_path: Any) -> None:
    """Lines a writer is still writing are not read, even complete ones: a reader sees the transaction once its
    last line (with the end mark) is written, all of it."""
    import fcntl

    store = NDJSONStore(str(tmp_path / "busy.ndjson"))
    store.append([row(1)], 0)
    reader = NDJSONStore(store.path, readonly=True)
    assert reader.head() == 1
    lines = encode_rows([row(2, 2), row(3, 2), row(4, 2)]).split(b"\n")
    holder = os.open(store.path + ".lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    with open(store.path, "ab") as f:
        f.write(b"\n".join(lines[:2]) + b"\n")  # two of the transaction's three lines, so far
    assert reader.head() == 1 and [r[0] for r in reader.read()] == [1]
    with open(store.path, "ab") as f:
        f.write(lines[2] + b"\n")
    os.close(holder)
    assert reader.head() == 4 and [r[0] for r in reader.read()] == [1, 2, 3, 4]
    reader.close()
    store.close()


class _Crash(BaseException):
    """The process dies here."""


@pytest.mark.parametrize("crash_at", [0, 1, 2], ids=["first-snapshot", "second-snapshot", "log"])
def test_an_erase_cut_short_never_leaves_its_audit_event_beside_an_unerased_copy(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    """Erase rewrites each snapshot file, then renames the new log (with the audit event) over the old one: a
    crash at any of these files leaves the audit event absent unless every copy is erased, the image opening
    with its current state, and erasing again finishes the job."""
    import memimg.stores._ndjson as ndjson_store
    import memimg.stores._ndjsonlog as ndjson_log

    path = str(tmp_path / "erase.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        img.root.content = "SECRET-1"
        img.snapshot()
        img.root.content = "SECRET-2"
        img.snapshot()
        img.root.content = "public"

    def files() -> list[bytes]:
        snaps = sorted((tmp_path / "erase.ndjson.snapshots").iterdir())
        return [pathlib.Path(path).read_bytes()] + [p.read_bytes() for p in snaps]

    writes = {"n": 0}

    def crashing(real: Any) -> Any:
        def write(target: str, chunks: Any, **kw: Any) -> None:
            if target == path or target.startswith(path + ".snapshots"):
                writes["n"] += 1
                if writes["n"] == crash_at + 1:
                    raise _Crash(target)
            real(target, chunks, **kw)

        return write

    img = memimg.open(path, root=Box, snapshot_every=None)
    monkeypatch.setattr(ndjson_store, "write_atomically", crashing(ndjson_store.write_atomically))
    monkeypatch.setattr(ndjson_log, "write_atomically", crashing(ndjson_log.write_atomically))
    with pytest.raises(_Crash):
        img.erase(img.root, "content", reason="gdpr")
    monkeypatch.undo()
    img.close()
    log, *snaps = files()
    assert b'"kind":"erase"' not in log and b"SECRET" in log
    assert sum(b"SECRET" in snap for snap in snaps) == 2 - crash_at
    with memimg.open(path, root=Box, snapshot_every=None) as again:
        assert again.root.content == "public"
        again.erase(again.root, "content", reason="gdpr")
    log, *snaps = files()
    assert b'"kind":"erase"' in log and not any(b"SECRET" in f for f in files())
    with memimg.open(path, root=Box) as img:
        assert img.root.content == "public"


def test_readers_see_every_commit_while_a_writer_holds_the_lock(tmp_path: Any) -> None:
    """A reader's refresh() applies every acknowledged commit even while another process holds the lock file's
    lock for long (a compaction), and a read-only open neither waits for it nor raises LockedError."""
    import fcntl

    path = str(tmp_path / "stale.ndjson")
    writer = memimg.open(path, root=Box, snapshot_every=None)
    reader = memimg.open(path, root=Box, snapshot_every=None, readonly=True)
    writer.root.content = 1
    holder = os.open(path + ".lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert reader.refresh() > 0 and reader.root.content == 1 and reader.seq == writer.seq
        store = NDJSONStore(path, readonly=True, busy_timeout=0.05)
        assert store.head() == writer.seq
        store.close()
    finally:
        os.close(holder)
    reader.close()
    writer.close()


def test_temp_files_of_dead_processes_are_removed_at_a_writers_open(tmp_path: Any) -> None:
    """Temp files a crashed process left (a log rewrite or a snapshot never renamed in) are deleted when a writer
    opens the log, once they are old enough that no writer can still be at them (a pid on another host says
    nothing); a running process's temp files, and recent ones, are left alone; a name with an impossible pid
    is no trouble."""
    import subprocess

    path = str(tmp_path / "tmp.ndjson")
    NDJSONStore(path).close()
    os.makedirs(path + ".snapshots")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [
        f"{path}.{dead.pid}.7f00.tmp",
        f"{path}.snapshots/{1:020d}.ndjson.{dead.pid}.7f01.tmp",
        f"{path}.{10**20}.7f03.tmp",
    ]
    live = [f"{path}.{os.getpid()}.7f02.tmp"]
    recent = [f"{path}.{dead.pid}.7f04.tmp"]
    old = time.time() - 3600
    for name in stale + live + recent:
        pathlib.Path(name).write_bytes(b"partial")
        if name not in recent:
            os.utime(name, (old, old))
    NDJSONStore(path).close()
    assert [os.path.exists(name) for name in stale + live + recent] == [False, False, False, True, True]
    NDJSONStore(path, readonly=True).close()


def test_compaction_can_keep_the_dropped_events_as_a_segment(tmp_path: Any) -> None:
    """``memimg compact --keep-segment`` moves the dropped lines, unchanged, to NAME.ndjson.segments/FIRST-LAST.ndjson,
    a log of its own that opens read-only as the image at its last seq; the log starts a new file from the cut.
    On another store the option is refused, nothing changed."""
    from click.testing import CliRunner

    from memimg.cli import cli

    path = str(tmp_path / "seg.ndjson")
    with memimg.open(path, root=Box, snapshot_every=None) as img:
        for i in range(5):
            img.root.content = i
        head = img.seq
    pathlib.Path(tmp_path / "before.ndjson").write_bytes(pathlib.Path(path).read_bytes())
    result = CliRunner().invoke(cli, ["compact", path, "--keep-segment"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = _lines(path)
    first = orjson.loads(log[0])["first"]  # the seq of compact's snapshot (a snapshot is an event too)
    assert first > head and [orjson.loads(line)["seq"] for line in log[1:-1]] == [first]
    (segment,) = (tmp_path / "seg.ndjson.segments").iterdir()
    assert segment.name == f"{1:020d}-{first - 1:020d}.ndjson"
    kept = segment.read_bytes().split(b"\n")
    assert orjson.loads(kept[0])["first"] == 1 and kept[1:] == _lines(str(tmp_path / "before.ndjson"))[1:]
    with memimg.open(str(segment), root=Box, readonly=True) as old:
        assert old.seq == first - 1 and old.root.content == 4
    with memimg.open(path, root=Box) as img:
        assert img.root.content == 4 and img.seq == first
    sqlite = str(tmp_path / "x.db")
    with memimg.open(sqlite, root=Box) as img:
        img.root.content = 1
    refused = CliRunner().invoke(cli, ["compact", sqlite, "--keep-segment"])
    assert refused.exit_code != 0 and "--keep-segment is for NDJSON logs" in refused.output
    assert len(list(memimg.SQLiteStore(sqlite, readonly=True).read())) == 2


def test_changed_is_exact_past_a_torn_tail(tmp_path: Any) -> None:
    """changed(seen) is exact: False while the log holds nothing whole past what the store indexed -- a torn
    transaction at the end included, however often asked -- and True once a transaction is whole, even one a
    writer appended after cutting the torn tail off, to the very size and modification time the tail had."""
    path = str(tmp_path / "torn.ndjson")
    store = NDJSONStore(path)
    store.append([row(1)], 0)
    reader = NDJSONStore(path, readonly=True)
    assert not reader.changed(1) and reader.changed(0)
    whole = encode_rows([row(2)])
    torn = encode_rows([row(2, 2), row(3, 2)])[: len(whole)]  # a two-line write cut short, as long as `whole`
    assert not torn.endswith(b"\n")
    with open(path, "ab") as f:
        f.write(torn)
    before = os.stat(path)
    assert not reader.changed(1) and not reader.changed(1)
    assert not reader.wait_for_change(1, 0.05) and reader.head() == 1
    store.append([row(2)], 1)  # cuts the torn tail off, then writes as many bytes
    assert os.path.getsize(path) == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same time too (a coarse clock may say so)
    assert reader.changed(1) and reader.head() == 2 and not reader.changed(2)
    assert [r[0] for r in reader.read()] == [1, 2]
    reader.close()
    store.close()


def test_the_lock_file_is_free_while_a_commit_is_fsynced(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With sync="full", a commit's fsync runs after its write and after the lock file's lock is released: the
    next writer appends meanwhile (its own fsync flushes both), and the commit returns only once it is durable."""
    import fcntl

    path = str(tmp_path / "turns.ndjson")
    store = NDJSONStore(path, sync="full")
    store.append([row(1)], 0)
    free: list[bool] = []
    fsync = os.fsync

    def check_lock(fd: int) -> None:
        other = os.open(path + ".lock", os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free.append(True)
        except BlockingIOError:
            free.append(False)
        finally:
            os.close(other)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", check_lock)
    store.append([row(2)], 1)
    assert free == [True] and store.head() == 2
    store.close()


def _open_file(img: memimg.Image) -> str:
    """What the descriptor of *img*'s NDJSON log points at (``... (deleted)``: a file no longer at its path)."""
    store = img._engine.store
    assert isinstance(store, NDJSONStore)
    return os.readlink(f"/proc/self/fd/{store._fd}")


def test_a_follower_lets_go_of_a_log_an_erase_replaced(tmp_path: Any) -> None:
    """An erase (as a compaction) renames a new file over the log. A process that follows the log (or waits on
    it) applies the erase and closes the old file within a poll, so the old file's blocks -- the erased values --
    are freed; an idle one holds the old file, and the values, until its next refresh, read or commit."""
    path = str(tmp_path / "erased.ndjson")
    writer = memimg.open(path, root=Box, snapshot_every=None)
    writer.root.content = "secret"
    writer.root.content = "public"
    follower = memimg.open(path, root=Box, snapshot_every=None, readonly=True)
    idle = memimg.open(path, root=Box, snapshot_every=None, readonly=True)
    follower.follow()
    assert _open_file(follower) == _open_file(idle) == path
    writer.erase(writer.root, "content", reason="asked to")
    assert b"secret" not in pathlib.Path(path).read_bytes() and _open_file(writer) == path
    deadline = time.monotonic() + 10
    while _open_file(follower) != path and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _open_file(follower) == path and follower.seq == writer.seq
    assert _open_file(idle) == path + " (deleted)"
    assert idle.refresh() > 0 and _open_file(idle) == path
    for img in (follower, idle, writer):
        img.close()
