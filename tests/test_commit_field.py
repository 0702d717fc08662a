"""The single field set's own commit path (``Engine.commit_field``): taken when nothing else must see the
commit, and left for the general path whenever a feature must (unique fields, an annotation,
a transaction open elsewhere, a snapshot being written, another writer's commits to catch up with).

Each test first commits twice on the class, so that the direct path is the one a plain set takes, and checks
that it is; then that the feature still sees the commit."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

import memimg
from memimg import persistent
from memimg.core import _snapshotter
from memimg.image import _snapshots
from memimg.image._engine import Engine
from tests.accel import compiled
from tests.conftest import Images


@persistent(name="tests.commit_field.Member")
class Member:
    email: str | None = memimg.field(default=None, unique=True)


@persistent(name="tests.commit_field.Holder")
class Holder:
    n: Any = 0
    members: list[Any] = attrs.field(factory=list)


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """What each call of ``Engine.commit_field`` returned (True: the set was committed by it)."""
    calls: list[bool] = []
    original = Engine.commit_field

    def counting(self: Engine, obj: Any, name: str, value: Any) -> bool:
        done = original(self, obj, name, value)
        calls.append(done)
        return done

    monkeypatch.setattr(Engine, "commit_field", counting)
    yield calls


def _warm(img: memimg.MemoryImage, direct: list[bool]) -> None:
    """Commit on the root's class until a plain set takes the direct path, and check it does."""
    img.root.n = -2
    img.root.n = -1
    direct.clear()
    img.root.n = 0
    assert direct == [True] and img.root.n == 0


def _obj_sets(img: memimg.MemoryImage) -> list[Any]:
    return [e for e in img.events() if e.kind == "obj.set"]


def test_a_set_taken_by_the_direct_path_is_logged_once_and_read_back(make_image: Images, direct: list[bool]) -> None:
    """A set committed directly is one obj.set row, applied, and the value a reopened image reads."""
    img = make_image(root=Holder)
    _warm(img, direct)
    before = len(_obj_sets(img))
    img.root.n = 7
    assert direct[-1] is True and img.root.n == 7
    assert len(_obj_sets(img)) == before + 1
    img.close()
    assert make_image(root=Holder).root.n == 7


def test_a_unique_fields_set_is_checked(make_image: Images, direct: list[bool]) -> None:
    """A set of a unique field to a value another object holds raises UniqueError and changes nothing."""
    img = make_image(root=Holder)
    img.root.members.extend([Member("a"), Member("b")])
    _warm(img, direct)
    second = img.root.members[1]
    second.email = "c"
    second.email = "d"
    with pytest.raises(memimg.UniqueError):
        second.email = "a"
    assert second.email == "d"
    assert img.find(Member, email="a") == [img.root.members[0]]
    img.close()
    again = make_image(root=Holder)
    assert [m.email for m in again.root.members] == ["a", "d"]


def test_a_subscribed_set_is_committed_directly_and_delivered_as_the_general_path_delivers(
    make_image: Images, direct: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set of a field that a subscription follows (and one to the whole class) still takes the direct path,
    and each subscription is delivered the Commit the general path delivers: seq, tx, time, meta, the local
    flag, and the change with its old and new value; a subscription to another object gets nothing."""
    img = make_image(root=Holder)
    img.root.members.append(Holder())
    _warm(img, direct)
    field: list[memimg.Commit] = []
    whole: list[memimg.Commit] = []
    elsewhere: list[memimg.Commit] = []
    img.subscribe(field.append, to=(img.root, "n"))
    img.subscribe(whole.append, to=Holder)
    img.subscribe(elsewhere.append, to=img.root.members[0])
    img.root.n = 5
    assert direct[-1] is True
    monkeypatch.setattr(Engine, "commit_field", lambda *args: False)  # the general path from here on
    img.root.n = 6

    def shape(commit: memimg.Commit) -> Any:
        (change,) = commit.changes
        assert change.target is img.root and (change.seq, change.tx, change.time) == (
            commit.seq,
            commit.tx,
            commit.time,
        )
        assert commit.first_seq == commit.seq and commit.meta == {} == change.meta
        return commit.local, change.kind, change.field, change.key, change.old, change.new, change.index

    for seen in (field, whole):
        assert [shape(c) for c in seen] == [
            (True, "obj.set", "n", None, 0, 5, None),
            (True, "obj.set", "n", None, 5, 6, None),
        ]
        assert seen[1].seq == seen[0].seq + 1 and seen[1].time >= seen[0].time
    assert [c.seq for c in field] == [c.seq for c in whole] and elsewhere == []


def test_each_way_of_following_a_directly_committed_set_is_noted_and_delivered(
    make_image: Images, direct: list[bool], caplog: pytest.LogCaptureFixture
) -> None:
    """A set committed by the direct path is noted and delivered, once each, to a lone subscription to the
    field, to the whole object (the field not named by any subscription), to two subscriptions to the field
    (each its own Commit), and with ``old`` MISSING for a field with no value before; a callback raising is
    logged and the next commits are delivered as usual (the compiled noting and delivery, and the Python ones,
    give the same)."""
    img = make_image(root=Holder)
    img.root.members.append(Holder())
    member = img.root.members[0]
    _warm(img, direct)
    member.n = 0
    lone: list[memimg.Commit] = []
    whole: list[memimg.Commit] = []
    twice: tuple[list[memimg.Commit], list[memimg.Commit]] = ([], [])

    def said(commits: list[memimg.Commit]) -> list[Any]:
        return [(c.seq, [(ch.target, ch.field, ch.old, ch.new, ch.meta) for ch in c.changes]) for c in commits]

    img.subscribe(lone.append, to=(img.root, "n"))
    img.subscribe(whole.append, to=member)
    img.root.n = 1
    member.n = 2
    img.subscribe(twice[0].append, to=(member, "n"))
    img.subscribe(twice[1].append, to=(member, "n"))
    member.n = 3
    del img.root.n  # (the general path)
    img.root.n = 4
    assert direct[-4:] == [True, True, True, True]
    seq = img.seq
    assert said(lone) == [
        (seq - 4, [(img.root, "n", 0, 1, {})]),
        (seq - 1, [(img.root, "n", 1, memimg.MISSING, {})]),
        (seq, [(img.root, "n", memimg.MISSING, 4, {})]),
    ]
    assert lone[0].local and lone[0].tx == lone[0].seq == seq - 4 and lone[0].changes[0].kind == "obj.set"
    assert said(whole) == [(seq - 3, [(member, "n", 0, 2, {})]), (seq - 2, [(member, "n", 2, 3, {})])]
    assert said(twice[0]) == said(twice[1]) == [(seq - 2, [(member, "n", 2, 3, {})])]
    assert twice[0][0] is not twice[1][0] and twice[0][0].changes is not whole[1].changes

    assert all(c.meta is c.changes[0].meta for c in (*lone, *whole, *twice[0]))

    def fails(commit: memimg.Commit) -> None:
        raise ValueError("not today")

    img.root.members.append(Holder())
    third = img.root.members[1]
    img.subscribe(fails, to=(third, "n"))  # alone on that field
    with caplog.at_level("ERROR", logger="memimg"):
        third.n = 5
        img.root.n = 5
        third.n = 6
    assert direct[-3:] == [True, True, True]
    assert [c.changes[0].new for c in lone[-2:]] == [4, 5]
    failures = [r for r in caplog.records if "raised on the commit" in r.getMessage()]
    assert [r.exc_info[1].args for r in failures if r.exc_info] == [("not today",), ("not today",)]
    assert f"seq {img.seq}" in failures[-1].getMessage()


def test_a_set_that_fails_after_committing_still_delivers_its_change(
    make_image: Images, direct: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set committed by the direct path whose upkeep afterwards raises (a snapshot thread that cannot
    start, say): the error reaches the caller, and the subscriber is delivered the change before it does."""
    img = make_image(root=Holder)
    _warm(img, direct)
    seen: list[Any] = []
    img.subscribe(lambda commit: seen.extend(c.new for c in commit.changes), to=(img.root, "n"))

    def cannot_start(self: Engine) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Engine, "after_commit", cannot_start)
    with pytest.raises(RuntimeError, match="new thread"):
        img.root.n = 42
    assert direct[-1] is True and seen == [42] and img.root.n == 42


def test_an_annotation_is_the_sets_meta(make_image: Images, direct: list[bool]) -> None:
    """A set inside annotate() commits with the annotation as its metadata."""
    img = make_image(root=Holder)
    _warm(img, direct)
    with img.annotate(user="ada"):
        img.root.n = 3
    last = list(img.events())[-2:]
    assert [(e.kind, e.meta) for e in last] == [("tx.meta", {"user": "ada"}), ("obj.set", {"user": "ada"})]


def test_a_transaction_open_in_another_thread_conflicts(make_image: Images, direct: list[bool]) -> None:
    """A transaction that read a field another thread then set fails with ConflictError when it commits."""
    img = make_image(root=Holder)
    _warm(img, direct)
    read, written = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def transact() -> None:
        try:
            with img.transaction():
                n = img.root.n
                read.set()
                written.wait(10)
                img.root.n = n + 1
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=transact)
    thread.start()
    assert read.wait(10)
    img.root.n = 50
    written.set()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], memimg.ConflictError)
    assert img.root.n == 50


def test_a_snapshot_being_written_keeps_the_state_it_began_on(
    make_image: Images, direct: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set made while a snapshot is written (between its slices, on an object not yet written) leaves the
    snapshot with the value it started from; the image has the set's value."""
    monkeypatch.setattr(_snapshots, "SLICE_SECONDS", 0.0)  # slices of 64 objects: commits go on between them
    monkeypatch.setattr(_snapshotter, "BATCH", 64)
    monkeypatch.setattr(_snapshotter, "CHUNK", 64)
    between, set_done = threading.Event(), threading.Event()

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "snapshot" and done == 64:  # between two slices: the lock free, no turn waited for
            between.set()
            set_done.wait(10)

    img = make_image(root=Holder, snapshot_every=None, progress=progress)
    img.root.members.extend(Holder() for _ in range(500))
    first, last = img.root.members[-2:]
    last.n = 1
    last.n = 2

    def setter() -> None:
        between.wait(10)
        for n in (96, 97, 98):  # (the snapshot declared the classes anew: these sets declare Holder again)
            first.n = n
        last.n = 99
        set_done.set()

    thread = threading.Thread(target=setter)
    thread.start()
    seq = img.snapshot()
    thread.join(10)
    assert between.is_set() and (first.n, last.n) == (98, 99) and seq < img.seq
    with img.at(seq) as past:  # loaded from the snapshot just written
        assert [m.n for m in past.root.members[-2:]] == [0, 2]


def test_another_writers_commit_is_caught_up_with_and_the_value_written_once(
    make_image: Images, direct: list[bool]
) -> None:
    """Two images on one log: a set on the one behind catches up first; each value is logged once and both
    images agree."""
    a = make_image(root=Holder)
    b = make_image(root=Holder)
    _warm(a, direct)
    b.refresh()
    _warm(b, direct)
    a.refresh()
    a.root.n = 1
    assert direct[-1] is True
    b.root.n = 2  # b is behind a
    a.refresh()
    assert a.root.n == b.root.n == 2
    sets = [json.loads(e.payload)[0] for e in _obj_sets(a) if e.target == a.root._mi_oid]
    assert sets[-2:] == [["n", 1], ["n", 2]]
    assert b.root.n == make_image(root=Holder).root.n == 2


VALUES = [1, True, False, 0, None, 1.5, float("inf"), 2**70, -(2**63), "abc", "", "x" * 5000, -0.0]


def test_set_row_is_the_row_the_general_path_encodes(make_image: Images) -> None:
    """``EncodeSession.set_row`` gives, for every kind of native scalar, the row ``encode_events`` makes of
    the same single set."""
    img = make_image(root=Holder)
    session = img._engine.session
    oid = img.root._mi_oid
    from memimg.core._kinds import KINDS

    for value in VALUES:
        direct_row = session.set_row(10, 1234, oid, "n", value)
        general = session.encode_events([(KINDS["obj.set"], img.root, ("n", value))], 10, 1234)
        assert [direct_row] == general, value


@compiled
def test_the_compiled_setattr_commits_a_set_outside_a_transaction_itself(make_image: Images) -> None:
    """With the accelerator, a plain field set outside a transaction goes from the compiled ``__setattr__`` to
    ``set_field`` with no Python ``__setattr__`` frame between, and holds no reference it does not give back."""
    img = make_image(root=Holder)
    holder = img.root
    holder.n = -1
    writer = img._mi_current.get()
    frames: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            frames.append(frame.f_code.co_name)

    before = sys.getrefcount(writer)
    sys.setprofile(profile)
    try:
        holder.n = 1
    finally:
        sys.setprofile(None)
    assert "set_field" in frames and "__setattr__" not in frames, frames
    for i in range(1000):
        holder.n = i
    assert sys.getrefcount(writer) - before < 10
    assert holder.n == 999 and len(_obj_sets(img)) == 1002
