"""Erasure: ``img.erase`` excises past values from every stored row, keeps the current state, and audits."""

from __future__ import annotations

import glob
import os
import pathlib
import sqlite3
import threading
from typing import Any

import attrs
import pytest

import memimg
from memimg.cli._verify import _verify
from memimg.core._rows import verify_event, verify_snapshot
from memimg.stores import EventRow, SnapshotRow
from tests.conftest import Images


@memimg.persistent
class Person:
    name: str = ""
    ssn: str = ""
    emails: list[str] = attrs.field(factory=list)
    notes: dict[str, str] = attrs.field(factory=dict)
    tags: set[str] = attrs.field(factory=set)
    friend: Person | None = None


def stored_bytes(store: memimg.Store) -> bytes:
    """Every event and snapshot payload the store holds, concatenated."""
    parts = [bytes(r[5]) for r in store.read()]
    parts += [bytes(store.read_snapshot(i.seq).payload) for i in store.snapshots()]
    return b"\n".join(parts)


def stored_bytes_before(store: memimg.Store, head: int, before: bytes) -> bytes:
    """What :func:`stored_bytes` gave when the head was *head*, if the rows up to it are unchanged since."""
    added = [bytes(r[5]) for r in store.read(after=head)]
    events = len(list(store.read())) - len(added)
    parts = before.split(b"\n")
    return b"\n".join(parts[:events] + added + parts[events:])


def rows_intact(store: memimg.Store) -> None:
    for raw in store.read():
        verify_event(EventRow(*raw))
    for info in store.snapshots():
        verify_snapshot(SnapshotRow(*store.read_snapshot(info.seq)))


def verified(store: memimg.Store, capsys: Any) -> str:
    """``memimg verify``'s report on *store* (raises if the replay disagrees with a snapshot)."""
    capsys.readouterr()
    _verify(store)
    return str(capsys.readouterr().out)


def ada_with_history(img: memimg.MemoryImage) -> Person:
    """Ada's ssn: OLD-SSN-1 (created), a snapshot, OLD-SSN-2, a snapshot, CURRENT-SSN."""
    img.root["ada"] = ada = Person(name="ada", ssn="OLD-SSN-1")
    img.snapshot()
    ada.ssn = "OLD-SSN-2"
    img.snapshot()
    ada.ssn = "CURRENT-SSN"
    return ada


def test_past_values_are_replaced_everywhere_and_the_current_value_stays(make_image: Images, capsys: Any) -> None:
    """Every past value of the field is gone from events and snapshots; checksums hold; reopening and
    replay give the current value; the replay shows ERASED in the past; verify passes."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    result = img.erase(ada, "ssn", reason="GDPR request 42")
    assert result.erased == 4  # the creation record, the set to OLD-SSN-2, and each snapshot's copy
    assert result.fields == ("ssn",) and result.oid == ada._mi_oid
    assert ada.ssn == "CURRENT-SSN"  # the live image is untouched
    img.close()
    store = make_image.store()
    data = stored_bytes(store)
    assert b"OLD-SSN" not in data
    assert b"CURRENT-SSN" in data
    assert b'["erased"]' in data
    rows_intact(store)
    assert "2 snapshot(s) equal the replayed state" in verified(store, capsys)
    again = make_image()
    assert again.root["ada"].ssn == "CURRENT-SSN"
    seen = []
    for event in again.events():
        partial = memimg.replay(e for e in again.events() if e.seq <= event.seq)
        if "ada" in partial:
            seen.append(partial["ada"].ssn)
    assert seen[0] is memimg.ERASED and seen[-1] == "CURRENT-SSN"
    assert "OLD-SSN-1" not in seen and "OLD-SSN-2" not in seen


def test_the_audit_event_says_who_when_why_and_what_never_the_value(make_image: Images) -> None:
    """The erase event names the reason, who asked, the object, its type and fields, and the count -- not the value."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    result = img.erase(ada, "ssn", reason="GDPR request 42", by="dpo@example.com")
    last = list(img.events())[-1]
    assert (last.seq, last.kind) == (result.seq, "erase") and img.seq == result.seq
    assert last.data == ["GDPR request 42", ada._mi_oid, "tests.test_erase.Person", ["ssn"], "dpo@example.com", 4, []]
    assert b"SSN" not in last.payload
    assert result.as_dict()["by"] == "dpo@example.com"


def test_without_by_the_audit_event_names_the_annotating_user_and_carries_the_annotation(make_image: Images) -> None:
    """erase() without by=, inside img.annotate(user=...), records that user as by (an int id as its str) and
    commits the audit event with the active annotation as its transaction's meta; by= given wins."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    with img.annotate(user=42, request="r-7"):
        result = img.erase(ada, "ssn", reason="GDPR request 42")
    audit = list(img.events())[-1]
    assert (audit.seq, audit.kind) == (result.seq, "erase") and img.seq == result.seq
    assert result.by == "42" and audit.data[4] == "42"
    assert audit.meta == {"user": 42, "request": "r-7"}
    with img.annotate(user="ada"):
        result = img.erase(ada, "ssn", reason="again", by="dpo@example.com")
    audit = list(img.events())[-1]
    assert result.by == audit.data[4] == "dpo@example.com" and audit.meta == {"user": "ada"}
    img.close()
    again = make_image()
    assert [e.meta for e in again.events() if e.kind == "erase"] == [{"user": 42, "request": "r-7"}, {"user": "ada"}]
    assert again.root["ada"].ssn == "CURRENT-SSN"


def test_the_audit_event_names_every_other_object_whose_values_were_erased(make_image: Images) -> None:
    """The audit event and the result name, besides the object asked for, each object whose stored values
    were erased with it -- a list or dict it holds, an unreachable object a past value referred to -- by id,
    never the values; objects of which nothing was erased are not named."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(emails=["OLD-MAIL"], notes={"k": "KEPT"})
    ada.emails[0] = "NEW-MAIL"
    ada.friend = old_friend = Person(name="OLD-FRIEND")
    ada.friend = None
    result = img.erase(ada, reason="r")
    audit = list(img.events())[-1]
    expected = sorted([ada.emails._mi_oid, old_friend._mi_oid])
    assert list(result.targets) == expected and audit.data[6] == expected
    assert ada.notes._mi_oid not in result.targets  # nothing past in it
    assert b"MAIL" not in audit.payload and b"FRIEND" not in audit.payload
    assert str(old_friend._mi_oid) in result.note


def test_a_field_never_changed_has_nothing_to_erase_and_says_so(make_image: Images) -> None:
    """The only stored value of a field never changed is its current one: nothing is erased, the result and
    the audit event say so (count 0), and no row changes."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(name="ada", ssn="ONLY-SSN")
    img.snapshot()
    store = make_image.store()
    before = stored_bytes(store)
    head = store.head()
    result = img.erase(ada, "ssn", reason="GDPR request 7")
    assert (result.erased, result.events, result.snapshots) == (0, 0, 0)
    assert result.current == 2  # the creation record and the snapshot
    assert "nothing to erase" in result.note
    assert list(img.events())[-1].data[5] == 0
    assert store.head() == head + 1
    assert stored_bytes(store) == stored_bytes_before(store, head, before)


def test_erasing_every_field_of_an_object(make_image: Images, capsys: Any) -> None:
    """field=None erases the past of every field; a deleted field's values are all past."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(name="OLD-NAME", ssn="OLD-SSN")
    ada.name = "ada"
    del ada.ssn
    result = img.erase(ada, reason="right to erasure")
    assert result.fields == ("name", "ssn", "emails", "notes", "tags", "friend")
    assert result.erased == 2
    img.close()
    store = make_image.store()
    assert b"OLD-" not in stored_bytes(store)
    verified(store, capsys)
    again = make_image()
    assert again.root["ada"].name == "ada" and not hasattr(again.root["ada"], "ssn")


def test_a_list_and_a_dict_lose_the_items_they_no_longer_hold(make_image: Images, capsys: Any) -> None:
    """Erasing a field that holds a list or dict erases the items removed or replaced since, by position
    for a list and by key for a dict; what the collection holds now stays, and so do the dict's keys."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(emails=["OLD-MAIL-0"])
    ada.emails.extend(["KEEP-MAIL-1", "OLD-MAIL-2"])
    img.snapshot()
    ada.emails.insert(0, "KEEP-MAIL-3")
    ada.emails.remove("OLD-MAIL-0")
    ada.emails[2] = "KEEP-MAIL-4"
    ada.emails.sort()
    ada.notes["k"] = "OLD-NOTE"
    ada.notes.update({"k": "KEEP-NOTE", "gone": "OLD-NOTE-2"})
    del ada.notes["gone"]
    img.erase(ada, "emails", reason="r")
    result = img.erase(ada.notes, reason="r")
    assert result.type_name == "dict" and result.erased == 2
    img.close()
    store = make_image.store()
    data = stored_bytes(store)
    assert b"OLD-MAIL" not in data and b"OLD-NOTE" not in data
    assert b"KEEP-MAIL-1" in data and b"gone" in data
    verified(store, capsys)
    again = make_image().root["ada"]
    assert list(again.emails) == ["KEEP-MAIL-1", "KEEP-MAIL-3", "KEEP-MAIL-4"]
    assert dict(again.notes) == {"k": "KEEP-NOTE"}


def test_dict_keys_and_set_members_are_never_erased(make_image: Images) -> None:
    """Erasure replaces values only: a dict's past keys, and a set's past members, stay stored after the
    object is erased (the result's not_erased names the set); the values the keys held are gone."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person()
    ada.notes["KEY-ada@example.com"] = "OLD-VALUE"
    del ada.notes["KEY-ada@example.com"]
    ada.tags.add("MEMBER-ada@example.com")
    ada.tags.discard("MEMBER-ada@example.com")
    result = img.erase(ada, reason="r")
    assert result.erased == 1 and f"the members of set {ada.tags._mi_oid}" in result.not_erased
    data = stored_bytes(make_image.store())
    assert b"OLD-VALUE" not in data
    assert b"KEY-ada@example.com" in data and b"MEMBER-ada@example.com" in data


def test_references_are_kept_and_objects_still_reachable_are_not_followed(make_image: Images) -> None:
    """A past value that is a reference stays a reference; the object it names is left alone while it is
    still reachable (erase it to erase what it holds)."""
    img = make_image(root=dict)
    img.root["bob"] = bob = Person(name="BOB-NAME")
    img.root["ada"] = ada = Person(friend=bob)
    ada.friend = None
    result = img.erase(ada, "friend", reason="r")
    assert result.erased == 0 and result.followed == ()
    assert b"BOB-NAME" in stored_bytes(make_image.store())


def test_bad_requests_change_nothing(make_image: Images) -> None:
    """No reason, a field the class lacks, an object not in the image, a non-persistent value, a set, and a
    call inside a transaction are refused with a clear error; nothing is written."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    store = make_image.store()
    before, head = stored_bytes(store), store.head()
    other = make_image(root=dict)
    bad: list[tuple[Any, str]] = [
        (lambda: img.erase(ada, "ssn", reason=""), "needs a reason"),
        (lambda: img.erase(ada, "ssn", reason=None), "needs a reason"),  # type: ignore[arg-type]
        (lambda: img.erase(ada, "shoe_size", reason="r"), "has no field 'shoe_size'"),
        (lambda: img.erase(Person(), "ssn", reason="r"), "is not in the image"),
        (lambda: other.erase(ada, "ssn", reason="r"), "is not in the image"),
        (lambda: img.erase({"a": 1}, reason="r"), "not a builtins.dict"),
        (lambda: img.erase(ada.tags, reason="r"), "members of a set"),
        (lambda: img.erase(ada, "tags", reason="r"), "holds a set"),
        (lambda: img.erase(ada.emails, "x", reason="r"), "has no fields"),
    ]
    for call, message in bad:
        with pytest.raises(memimg.MemimgError, match=message):
            call()
    with img.transaction(), pytest.raises(memimg.MemimgError, match="inside a transaction"):
        img.erase(ada, "ssn", reason="r")
    with pytest.raises(TypeError):
        img.erase(ada, "ssn")  # type: ignore[call-arg]
    assert store.head() == head and stored_bytes(store) == before


def test_a_readonly_image_refuses(make_image: Images) -> None:
    """erase on a read-only image raises ReadOnlyError; nothing is written."""
    img = make_image(root=dict)
    ada_with_history(img)
    head = img.seq
    ro = make_image(readonly=True)
    with pytest.raises(memimg.ReadOnlyError):
        ro.erase(ro.root["ada"], "ssn", reason="r")
    assert make_image.store().head() == head


def test_followers_keep_their_past_and_keep_following(make_image: Images) -> None:
    """An image already open elsewhere keeps its state and follows commits made after the erase; one opened
    later sees the current value."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    follower = make_image()
    img.erase(ada, "ssn", reason="r")
    ada.name = "ada lovelace"
    follower.refresh()
    assert follower.root["ada"].ssn == "CURRENT-SSN" and follower.root["ada"].name == "ada lovelace"
    assert follower.seq == img.seq
    follower.root["ada"].ssn = "NEWER"
    img.refresh()
    assert ada.ssn == "NEWER"
    assert make_image().root["ada"].ssn == "NEWER"


def test_commits_made_while_erase_reads_the_log_neither_restart_it_nor_wait_for_it(make_image: Images) -> None:
    """Another image commits each time erase reads the log, and a thread of the erasing image commits while
    it reads: the erase reads the log once, stores in one write turn (the commits made meanwhile folded in:
    the value set meanwhile is the current one, every earlier one past), and the thread's commit does not
    wait for the erase."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    other = make_image()
    store = img.store
    real_read, real_rewrite = store.read, store.rewrite
    rewrites: list[int] = []
    waited: list[bool] = []

    def busy_read(after: int = 0, limit: int | None = None) -> Any:
        if after == 0 and threading.current_thread() is erasing and len(waited) < 5:
            other.root["ada"].ssn = f"RACING-SSN-{len(waited)}"  # the head moves while the log is read
            t = threading.Thread(target=lambda: setattr(img.root["bob"], "name", f"bob{len(waited)}"))
            t.start()
            t.join(5)
            waited.append(t.is_alive())
        return real_read(after, limit)

    def counted(*args: Any) -> None:
        rewrites.append(1)
        real_rewrite(*args)

    img.root["bob"] = Person()
    store.read = busy_read  # type: ignore[method-assign]
    store.rewrite = counted  # type: ignore[method-assign]
    results: list[memimg.Erasure] = []
    erasing = threading.Thread(target=lambda: results.append(img.erase(ada, "ssn", reason="r")))
    try:
        erasing.start()
        erasing.join(60)
    finally:
        del store.read, store.rewrite
    assert results and rewrites == [1] and waited == [False]
    assert ada.ssn == "RACING-SSN-0"
    img.close()
    data = stored_bytes(make_image.store())
    assert b"OLD-SSN" not in data and b'"CURRENT-SSN"' not in data and b"RACING-SSN-0" in data


def test_a_snapshot_that_outlived_its_lease_is_not_stored_after_an_erase(make_image: Images) -> None:
    """Another image's snapshot stalls past its lease; erase takes the lease and erases; the stalled
    snapshot, holding the old value, is then refused by the store instead of written."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(ssn="STALE-SSN")
    other = make_image(snapshot_every=None)
    real_write = other.store.write_snapshot
    stalled = threading.Event()
    go_on = threading.Event()

    def stalling(row: Any, holder: str | None = None) -> bool:
        stalled.set()
        go_on.wait(30)
        return real_write(row, holder)

    other.store.write_snapshot = stalling  # type: ignore[method-assign]
    failures: list[BaseException] = []

    def snapshot() -> None:
        try:
            other.snapshot()
        except memimg.MemimgError as err:
            failures.append(err)

    t = threading.Thread(target=snapshot)
    t.start()
    assert stalled.wait(30)
    other.store.release("snapshot", other._engine.snapshots.holder)  # as if its lease expired
    img.refresh()
    ada.ssn = "NEW-SSN"
    img.erase(ada, "ssn", reason="r")
    go_on.set()
    t.join(30)
    assert failures and "not stored" in str(failures[0])
    other.close()
    img.close()
    assert b"STALE-SSN" not in stored_bytes(make_image.store())


def test_erase_waits_for_a_snapshot_being_written(make_image: Images) -> None:
    """While another image holds the snapshot lease, erase waits; it proceeds once the lease is released."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    store = make_image.store()
    assert store.lease("snapshot", "someone-else", 30)
    done = threading.Event()

    def run() -> None:
        img.erase(ada, "ssn", reason="r")
        done.set()

    t = threading.Thread(target=run)
    t.start()
    assert not done.wait(0.3)
    store.release("snapshot", "someone-else")
    t.join(10)
    assert done.is_set()


def test_sqlite_files_no_longer_hold_the_erased_bytes(sqlite_path: str) -> None:
    """The database file and its -wal hold none of the erased bytes once erase returns (the image still open)."""
    img = memimg.open(sqlite_path, root=dict)
    ada = ada_with_history(img)
    for i in range(200):  # enough writes for pages to split and be freed
        img.root[f"k{i}"] = Person(name=f"p{i}" * 20)
    ada.ssn = "CURRENT-SSN-2"
    img.erase(ada, "ssn", reason="r")

    def on_disk() -> bytes:
        return b"".join(open(f, "rb").read() for f in sorted(glob.glob(sqlite_path + "*")))

    try:
        data = on_disk()
        assert b"OLD-SSN" not in data and b"CURRENT-SSN-2" in data
        assert b"CURRENT-SSN\x22" not in data and b'"CURRENT-SSN"' not in data
    finally:
        img.close()
    assert b"OLD-SSN" not in on_disk()
    assert memimg.open(sqlite_path).root["ada"].ssn == "CURRENT-SSN-2"


def test_a_reader_holding_the_wal_is_reported(sqlite_path: str) -> None:
    """With another connection mid-read, the WAL cannot be emptied: the erasure is committed, the result
    says the old bytes remain and what to run; once the reader is gone, compaction removes them."""
    img = memimg.open(sqlite_path, root=dict, snapshot_every=None)
    img.root["ada"] = ada = Person(ssn="OLD-SSN-WAL")
    ada.ssn = "NEW-SSN"
    reader = sqlite3.connect(sqlite_path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM memimg_events").fetchall()
    result = img.erase(ada, "ssn", reason="r")
    assert result.scrubbed is False and "write-ahead log" in result.note and "memimg compact" in result.note
    reader.rollback()
    reader.close()
    assert img.store.reclaim() is True
    img.close()
    assert b"OLD-SSN-WAL" not in b"".join(open(f, "rb").read() for f in glob.glob(sqlite_path + "*"))


def test_past_states_show_erased_after_the_erase(make_image: Images) -> None:
    """img.at(s) for a seq before the erase shows ERASED where a past value was, the current value from the
    seq that set it on."""
    img = make_image(root=dict)
    ada = ada_with_history(img)
    first = img.seq - 3  # the creation of ada
    img.erase(ada, "ssn", reason="r")
    with img.at(first) as past:
        assert past.root["ada"].ssn is memimg.ERASED
    with img.at(img.seq - 1) as past:
        assert past.root["ada"].ssn == "CURRENT-SSN"


def test_erased_is_a_public_marker() -> None:
    """memimg.ERASED has a readable repr, survives copying, and cannot be stored by the application."""
    import copy
    import pickle

    assert repr(memimg.ERASED) == "memimg.ERASED"
    assert copy.deepcopy(memimg.ERASED) is memimg.ERASED
    assert pickle.loads(pickle.dumps(memimg.ERASED)) is memimg.ERASED
    img = memimg.open(":memory:", root=dict)
    with pytest.raises(memimg.UnsupportedValueError, match="marker"):
        img.root["x"] = memimg.ERASED


def test_the_command_line_erases_a_field_or_every_field(sqlite_path: str) -> None:
    """``memimg erase TARGET OID.FIELD --reason ...`` erases and says what it did (``--json`` as data);
    an unknown object or field, or no --reason, is an error and changes nothing."""
    import json

    from click.testing import CliRunner

    from memimg.cli import cli

    img = memimg.open(sqlite_path, root=dict)
    oid = ada_with_history(img)._mi_oid
    img.close()
    runner = CliRunner()
    out = runner.invoke(cli, ["erase", sqlite_path, f"{oid}.ssn", "--reason", "GDPR 1"], catch_exceptions=False)
    assert out.exit_code == 0 and "erased 4 past value(s)" in out.output
    out = runner.invoke(cli, ["erase", sqlite_path, str(oid), "--reason", "GDPR 2", "--by", "dpo", "--json"])
    assert json.loads(out.output)["fields"][:2] == ["name", "ssn"] and json.loads(out.output)["by"] == "dpo"
    head = memimg.SQLiteStore(sqlite_path).head()
    for args in ([f"{oid}.zz", "--reason", "r"], ["999", "--reason", "r"], [f"{oid}.ssn"], ["x.ssn", "--reason", "r"]):
        bad = runner.invoke(cli, ["erase", sqlite_path, *args])
        assert bad.exit_code != 0
    assert memimg.SQLiteStore(sqlite_path).head() == head
    assert b"OLD-SSN" not in b"".join(open(f, "rb").read() for f in glob.glob(sqlite_path + "*"))


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("-1", "erase: -1 is not an object id (object ids run from 1 up); nothing was changed"),
        ("0.ssn", "erase: 0 is not an object id (object ids run from 1 up); nothing was changed"),
        ("\u00b2", "'\u00b2' is not OID or OID.FIELD"),
    ],
)
def test_cli_erase_names_an_object_id_out_of_range(sqlite_path: str, what: str, message: str) -> None:
    """``memimg erase`` given an object id below 1, or not of ASCII digits, is an error naming it, given before
    the image is opened: no file of the store is written (opening for writing would touch it)."""
    from click.testing import CliRunner

    from memimg.cli import cli

    img = memimg.open(sqlite_path, root=dict)
    ada_with_history(img)
    img.close()
    for name in glob.glob(sqlite_path + "*"):
        os.utime(name, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))

    def files() -> dict[str, tuple[bytes, int]]:
        return {
            name: (pathlib.Path(name).read_bytes(), os.stat(name).st_mtime_ns) for name in glob.glob(sqlite_path + "*")
        }

    before = files()
    bad = CliRunner().invoke(cli, ["erase", sqlite_path, "--reason", "r", "--", what])
    assert bad.exit_code == 1 and message in bad.output, bad.output
    assert files() == before
