"""Transactions under concurrency, on every store.

Reads racing other threads' commits conflict instead of mixing states; a
commit is published whole; savepoints and transaction scopes belong to their
own thread or task; objects collected by a concurrent snapshot are attached
again; a mutation planned again after another image's commit applies what
its arguments held; a failure while a commit is applied leaves memory and log
in agreement.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import threading
from typing import Any

import pytest

import memimg
from tests.accel import compiled
from tests.conftest import Images
from tests.models import Box, Node
from tests.txreads import open_elsewhere


def _in_thread(fn: Any) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_a_field_read_twice_across_a_commit_conflicts(make_image: Images) -> None:
    """A transaction reading a field twice, with another thread's commit changing it in between, gets
    ConflictError, never two different committed values."""
    img = make_image(root=Box)
    img.root.content = Node(1)
    node = img.root.content
    seen = []
    with pytest.raises(memimg.ConflictError):
        with img.transaction():
            seen.append(node.value)
            _in_thread(lambda: setattr(node, "value", 2))
            seen.append(node.value)  # the newer value next to the older one: raises
    assert seen == [1]


def test_a_list_length_read_twice_across_a_commit_conflicts(make_image: Images) -> None:
    """len() of a list read twice in a read-only transaction, with another thread's append in between,
    raises ConflictError instead of giving two lengths."""
    img = make_image(root=Box)
    img.root.content = [1, 2]
    lst = img.root.content
    seen = []
    with pytest.raises(memimg.ConflictError):
        with img.transaction():
            seen.append(len(lst))
            _in_thread(lambda: lst.append(3))
            seen.append(len(lst))
    assert seen == [2]


def test_a_list_read_while_a_commit_is_applied_shows_its_appends_once(monkeypatch: Any, make_image: Images) -> None:
    """While a commit of an append and a field set is being applied, a reader in another thread sees the
    list with the appended item once."""
    img = make_image(root=Box)
    img.root.content = [0]
    img.root.other = Node(0)
    lst, node = img.root.content, img.root.other
    seen: list[Any] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        if target is node and not seen:  # the list.append event is already in the base
            _in_thread(lambda: seen.append((list(lst), len(lst))))

    monkeypatch.setattr(img._engine, "before_apply", hook)
    with img.transaction():
        lst.append(1)
        node.value = 1
    assert seen == [([0, 1], 2)]


def test_transaction_reading_during_another_commits_apply_sees_no_mix(monkeypatch: Any) -> None:
    """A transaction reading while another commit is being applied sees all of that commit or none of it
    (or conflicts).

    On the memory store only: publishing a commit is the image's work, whatever the store, and the
    writer waits out its 5-second timeout for a reader that blocks until the commit is published.
    """
    img = memimg.open(root=Box)
    img.root.content, img.root.other = Node(0), Node(0)
    a, b = img.root.content, img.root.other
    ready, go = threading.Event(), threading.Event()
    read = threading.Event()
    seen: list[Any] = []
    errors: list[Any] = []

    def reader() -> None:
        try:
            with img.transaction():  # read-only: nothing validates it at the end
                ready.set()
                go.wait(5)
                seen.append((a.value, b.value))
                read.set()
        except memimg.ConflictError as err:
            errors.append(err)

    t = threading.Thread(target=reader)
    t.start()
    ready.wait(5)

    def hook(kind: str, target: Any, args: Any) -> None:
        if target is b and not go.is_set():  # a is in the base now, b not yet
            go.set()
            read.wait(5)

    monkeypatch.setattr(img._engine, "before_apply", hook)
    with img.transaction():
        a.value = 1
        b.value = 1
    t.join(5)
    assert errors or seen[0] in ((0, 0), (1, 1)), seen


def test_a_discard_keeps_an_object_another_thread_committed_attached(make_image: Images) -> None:
    """Thread A attaches X and discards; thread B committed X meanwhile: X stays attached, and its
    changes are logged."""
    img = make_image(root=Box)
    x = Node(1)
    tx = img.begin()
    img.root.content = x  # attaches x (journaled in A's undo)
    _in_thread(lambda: setattr(img.root, "other", x))  # B commits x (not journaled: already owned)
    tx.discard()
    assert img.root.other is x
    assert x._mi_img is img and x._mi_oid is not None  # B's commit keeps it attached
    x.value = 2  # logged
    assert memimg.replay(img.events()).other.value == 2


def test_concurrent_nested_savepoints_in_asyncio_tasks(make_image: Images) -> None:
    """Two tasks run decorated (nested) transactions inside one outer transaction: the savepoint of the
    one that fails is discarded, the other's saved work stays."""
    img = make_image(root=Box)
    img.root.content = {}
    d = img.root.content

    async def main() -> None:
        b_done = asyncio.Event()

        @img.transaction()
        async def child_a() -> None:
            d["a"] = 1
            await b_done.wait()  # b runs its whole savepoint meanwhile, and saves it
            raise ValueError("a fails")

        @img.transaction()
        async def child_b() -> None:
            d["b"] = 1

        async def run_b() -> None:
            await child_b()
            b_done.set()

        @img.transaction()
        async def parent() -> None:
            await asyncio.gather(child_a(), run_b(), return_exceptions=True)

        await parent()

    asyncio.run(main())
    # only the failed savepoint ("a") is discarded; b's saved work stays
    assert dict(d) == {"b": 1}


def test_discarding_an_outer_savepoint_discards_the_inner_one(make_image: Images) -> None:
    """Discarding an outer savepoint while an inner one is open discards both."""
    img = make_image(root=Box)
    img.root.content = {}
    d = img.root.content
    with img.transaction():
        sp1 = img.begin()
        d["a"] = 1
        sp2 = img.begin()
        d["b"] = 2
        sp1.discard()
        assert "a" not in d and "b" not in d
        sp2.discard()
    assert dict(d) == {}


def test_a_task_created_in_a_transaction_reads_outside_it_once_it_ended(make_image: Images) -> None:
    """A task created inside a transaction that has ended since reads outside any transaction: it sees
    a later commit, with no ConflictError."""
    img = make_image(root=Box)
    img.root.content = Node(0)
    node = img.root.content
    holder: list[Any] = []
    _in_thread(lambda: holder.append(img.begin()))  # another thread's transaction stays open
    other = holder[0]
    result: list[Any] = []

    async def main() -> None:
        ev = asyncio.Event()

        async def child() -> None:
            await ev.wait()
            result.append(node.value)  # outside any transaction by now

        with img.transaction():
            task = asyncio.create_task(child())
            await asyncio.sleep(0)
        # the transaction is over; another commit changes the node
        _in_thread(lambda: setattr(node, "value", 5))
        ev.set()
        await task

    try:
        asyncio.run(main())  # `node.value` is read outside any transaction
    finally:
        other.discard()
    assert result == [5]


def test_a_delete_of_a_field_another_image_deleted_logs_no_second_delete(make_image: Images) -> None:
    """`del obj.f` outside a transaction, after another image deleted the field, is planned again on the
    caught-up state: it raises (AttributeError) and logs nothing, so the log stays replayable."""
    img1 = make_image(root=Box)
    img1.root.content = Node(1)
    img2 = make_image(root=Box)
    n1, n2 = img1.root.content, img2.root.content
    del n1.value  # process 1 deletes; process 2 has not seen it yet
    try:
        del n2.value  # checked on the stale state, appended after catch-up without replanning
    except (AttributeError, memimg.MemimgError):
        pass  # AttributeError is the right outcome: the field is already gone
    memimg.replay(img1.events())  # the log is replayable: it holds one delete
    assert not img2.closed


def test_implicit_multi_event_mutation_is_published_atomically(monkeypatch: Any, make_image: Images) -> None:
    """`s ^= {...}` outside a transaction is one commit of two events: a reader in another thread sees
    all of it or none."""
    img = make_image(root=Box)
    img.root.content = {"a"}
    s = img.root.content
    keep = img.begin()  # read hooks on (as whenever any transaction is open in the process)
    seen: list[Any] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        if target is s and kind == "set.add" and not seen:  # the discard is applied, the add not yet
            _in_thread(lambda: seen.append(("a" in s, "b" in s, len(s))))

    monkeypatch.setattr(img._engine, "before_apply", hook)

    def mutate() -> None:
        s.symmetric_difference_update({"a", "b"})

    _in_thread(mutate)
    keep.discard()
    assert s == {"b"}
    assert seen[0] in ((True, False, 1), (False, True, 1)), seen


def test_a_transaction_storing_an_object_collected_meanwhile_commits_it(make_image: Images) -> None:
    """A transaction storing a committed object that another thread made unreachable, and a snapshot
    collected, meanwhile commits it with its full state."""
    img = make_image(root=Box, snapshot_every=None)
    img.root.content = {"k": Node(1)}
    d = img.root.content
    node = d["k"]
    tx = img.begin()
    img.root.other = node  # no conflicting read: T never read d["k"]

    def drop() -> None:
        del d["k"]
        img.snapshot()  # the gc event forgets node

    _in_thread(drop)
    tx.save()  # serial order: drop, then T re-attaches node with its full state
    assert img.root.other is node and node._mi_img is img
    assert memimg.replay(img.events()).other.value == 1


def test_a_transaction_reattaching_an_object_a_snapshot_collects_before_its_commit_commits_it(
    make_image: Images,
) -> None:
    """An object detached before a transaction began, attached again in it, then collected by a snapshot
    (an automatic one, say, after another thread's commit) before the commit: the commit attaches it whole."""
    img = make_image(root=Box)
    a = Box("a")
    img.root.other = a
    img.root.other = None
    tx = img.begin()
    img.root.content = a
    img.snapshot()  # e.g. an automatic snapshot triggered by another thread's commit
    tx.save()
    assert memimg.replay(img.events()).content.content == "a"


def test_one_transaction_scope_used_by_two_threads(make_image: Images) -> None:
    """A scope object (`atomic = img.transaction()`) entered by two threads ends each thread's own transaction."""
    img = make_image(root=Box)
    img.root.content = {}
    d = img.root.content
    atomic = img.transaction()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def thread_a() -> None:
        with atomic:
            d["a"] = 1
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def thread_b() -> None:
        try:
            with atomic:
                a_in.wait(5)
                d["b"] = 1
                b_in.set()
                a_out.wait(5)
                raise ValueError("b fails")
        except ValueError:
            pass

    ta, tb = threading.Thread(target=thread_a), threading.Thread(target=thread_b)
    ta.start()
    tb.start()
    ta.join()
    tb.join()
    assert dict(d) == {"a": 1}


def test_object_collected_while_a_transaction_holds_it_is_attached_again(make_image: Images) -> None:
    """A transaction storing an object a concurrent snapshot collected commits it, in full."""
    img = make_image(root=Box, snapshot_every=None)
    img.root.content = {"k": Node(1)}
    d = img.root.content
    node = d["k"]
    tx = img.begin()
    img.root.other = [Node(2), node]

    def drop() -> None:
        del d["k"]
        img.snapshot()  # the gc event forgets node

    _in_thread(drop)
    tx.save()  # the collected node is attached again, in full
    assert img.root.other[1] is node and node._mi_img is img and node._mi_oid is not None
    img.root.content = 5  # and later, unrelated commits work
    assert img.root.content == 5
    assert memimg.replay(img.events()).other[1].value == 1


def test_an_interrupt_while_a_commit_is_applied_leaves_memory_and_log_in_agreement(
    monkeypatch: Any, make_image: Images
) -> None:
    """A KeyboardInterrupt between two events of a commit being applied leaves memory and log in
    agreement: the image is closed, or its next commit gives what replaying the log gives."""
    img = make_image(root=Box)
    img.root.content = [0]
    img.root.other = Node(0)
    lst, node = img.root.content, img.root.other
    fired: list[int] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        if target is node and not fired:
            fired.append(1)
            raise KeyboardInterrupt

    monkeypatch.setattr(img._engine, "before_apply", hook)
    with pytest.raises(KeyboardInterrupt):
        with img.transaction():
            lst.append(1)
            node.value = 1
    monkeypatch.undo()
    if not img.closed:
        node.value = 2  # the next commit: SeqTaken on our own events, caught up again
        assert list(lst) == list(memimg.replay(img.events()).content)


def test_comparing_two_tracked_collections_reads_the_other_one(make_image: Images) -> None:
    """`a == b` in a transaction compares a's pending writes with b's."""
    img = make_image(root=Box)
    img.root.content = {"a": [1], "b": [1]}
    a, b = img.root.content["a"], img.root.content["b"]
    with img.transaction():
        a.append(2)
        b.append(2)
        assert a == b  # both with their pending appends


def test_comparing_two_tracked_collections_records_the_read_of_the_other(make_image: Images) -> None:
    """`a == b` in a transaction records a read of b: another thread's change to b makes the commit conflict."""
    img = make_image(root=Box)
    img.root.content = {"a": [1], "b": [1]}
    a, b = img.root.content["a"], img.root.content["b"]
    tx = img.begin()
    img.root.other = a == b  # True; reads b
    _in_thread(lambda: b.append(3))
    with pytest.raises(memimg.ConflictError):
        tx.save()


class _OneShot:
    """An iterable (not an iterator) that can be read only once, as some file-like readers are."""

    def __init__(self, items: list[Any]) -> None:
        self._it = iter(items)

    def __iter__(self) -> Any:
        return self._it


_CONSUMING_CASES: list[tuple[str, Any, Any]] = [
    ("list.extend", [0, 1], lambda c: c.extend(x for x in (7, Node(8), 9))),
    ("list +=", [0, 1], lambda c: c.__iadd__(x for x in (7, Node(8), 9))),
    ("list[slice] =", [0, 1, 2], lambda c: c.__setitem__(slice(1, 2), (x for x in (7, Node(8))))),
    ("dict.update", {"a": 1}, lambda c: c.update((k, v) for k, v in (("b", 2), ("c", Node(3))))),
    ("dict |=", {"a": 1}, lambda c: c.__ior__((k, v) for k, v in (("b", 2), ("c", Node(3))))),
    ("set.update", {1, 2}, lambda c: c.update(x for x in (3, 4))),
    ("set.difference_update", {1, 2, 3}, lambda c: c.difference_update(x for x in (1, 3))),
    ("set.intersection_update", {1, 2, 3}, lambda c: c.intersection_update(x for x in (1, 3))),
    ("set.symmetric_difference_update", {1, 2}, lambda c: c.symmetric_difference_update(x for x in (2, 5))),
    ("dict.update, pairs as iterators", {"a": 1}, lambda c: c.update(iter(p) for p in (("b", 2), ("c", Node(3))))),
    ("dict.update, a list of iterator pairs", {"a": 1}, lambda c: c.update([iter(("b", 2)), iter(("c", 3))])),
    ("list.extend, a one-shot iterable", [0], lambda c: c.extend(_OneShot([1, Node(2)]))),
    ("list.__init__", [0, 1], lambda c: c.__init__(x for x in (7, Node(8)))),
    ("dict.__init__", {"a": 1}, lambda c: c.__init__(((k, v) for k, v in (("b", 2),)), c=3)),
    ("set.__init__", {1, 2}, lambda c: c.__init__(x for x in (2, 3))),
]


def _plain(value: Any) -> Any:
    if isinstance(value, Node):
        return ("Node", value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize(("name", "start", "mutate"), _CONSUMING_CASES, ids=[c[0] for c in _CONSUMING_CASES])
def test_a_generator_argument_survives_a_replan(name: str, start: Any, mutate: Any, make_image: Images) -> None:
    """A mutation outside a transaction, planned again because another image committed first, applies
    the generator's items (read once, before the first plan)."""
    expected = type(start)(start)
    mutate(expected)
    img1 = make_image(root=Box)
    img1.root.content = type(start)(start)
    img2 = make_image(root=Box)
    img1.root.other = "committed first"  # img2 is now behind: its next commit is planned twice
    mutate(img2.root.content)
    assert img2.root.other == "committed first"
    assert _plain(img2.root.content) == _plain(expected)
    img1.refresh()
    assert _plain(img1.root.content) == _plain(expected)
    assert _plain(memimg.replay(img1.events()).content) == _plain(expected)


def test_a_generator_as_a_value_is_refused(make_image: Images) -> None:
    """Only arguments a method iterates are read into lists: a generator as a value stays unstorable."""
    img = make_image(root=Box)
    img.root.content = []
    with pytest.raises(memimg.UnsupportedValueError, match="generator"):
        img.root.content.append(x for x in (1, 2))
    with pytest.raises(memimg.UnsupportedValueError, match="generator"):
        img.root.content[0:0] = [x for x in ()] + [(x for x in (1,))]
    assert img.root.content == []


@pytest.mark.parametrize("in_tx", [False, True], ids=["outside a transaction", "in a transaction"])
@pytest.mark.parametrize(("name", "start", "mutate"), _CONSUMING_CASES, ids=[c[0] for c in _CONSUMING_CASES])
def test_each_consuming_mutation_is_recorded_as_applied(
    name: str, start: Any, mutate: Any, in_tx: bool, make_image: Images
) -> None:
    """What a mutation does in memory (as the builtin would) is what replaying its events gives."""
    expected = type(start)(start)
    mutate(expected)
    img = make_image(root=Box)
    img.root.content = type(start)(start)
    if in_tx:
        with img.transaction():
            mutate(img.root.content)
    else:
        mutate(img.root.content)
    assert _plain(img.root.content) == _plain(expected)
    assert _plain(memimg.replay(img.events()).content) == _plain(expected)


@pytest.mark.parametrize("in_tx", [False, True], ids=["outside a transaction", "in a transaction"])
def test_a_slice_assigned_from_a_generator_that_grows_the_list(in_tx: bool, make_image: Images) -> None:
    """The generator is read before the list is copied, as the builtin does: what it appends stays."""

    def grow(c: Any) -> Any:
        for x in ("a", "b"):
            c.append(x)
            yield x

    expected = [0, 1, 2]
    expected[1:2] = grow(expected)
    img = make_image(root=Box)
    img.root.content = [0, 1, 2]
    with img.transaction() if in_tx else contextlib.nullcontext():
        lst = img.root.content
        lst[1:2] = grow(lst)
    assert img.root.content == expected == [0, "a", "b", 2, "a", "b"]
    assert memimg.replay(img.events()).content == expected


def test_init_of_an_attached_collection_with_wrong_arguments_changes_nothing(make_image: Images) -> None:
    """__init__ called again on an attached list or set with arguments the builtin refuses raises its
    TypeError and changes neither memory nor the log."""
    img = make_image(root=Box)
    img.root.content = [1, 2]
    with pytest.raises(TypeError, match="at most 1 argument"):
        img.root.content.__init__([3], [4])
    img.root.other = {1}
    with pytest.raises(TypeError, match="no keyword arguments"):
        img.root.other.__init__(x=1)
    assert img.root.content == [1, 2] and img.root.other == {1}
    assert memimg.replay(img.events()).content == [1, 2]


@pytest.mark.parametrize(
    "source",
    [lambda other: other, lambda other: other.items() if isinstance(other, dict) else iter(other)],
    ids=["the collection", "a view or iterator of it"],
)
@pytest.mark.parametrize("other_start", [[("a", 1)], {"a": 1}], ids=["a list of pairs", "a dict"])
def test_a_replanned_update_reads_a_tracked_source_as_caught_up(
    source: Any, other_start: Any, make_image: Images
) -> None:
    """``d.update(tracked)`` planned again after another process changed *tracked*: the mutation is ordered
    after that commit, so it applies the source as that commit left it (a one-shot iterator as first read)."""
    img1 = make_image(root=Box)
    img1.root.content, img1.root.other = {}, other_start
    img2 = make_image(root=Box)
    if isinstance(other_start, dict):
        img1.root.other["b"] = 2
    else:
        img1.root.other.append(("b", 2))
    arg = source(img2.root.other)  # made before the catch-up: an iterator sees the state it was made on
    one_shot = not isinstance(arg, collections.abc.Collection)
    img2.root.content.update(arg)
    expected = {"a": 1} if one_shot and not isinstance(other_start, dict) else {"a": 1, "b": 2}
    assert img2.root.content == expected
    img1.refresh()
    assert img1.root.content == expected == memimg.replay(img1.events()).content


def test_keyword_arguments_named_like_the_methods_parameters(make_image: Images) -> None:
    """``self``, ``d``, ``prep`` are keys like any other for a tracked dict, attached or not."""
    assert memimg.TrackedDict(self=1, cls=2) == {"self": 1, "cls": 2}
    img = make_image(root=Box)
    img.root.content = {}
    img.root.content.__init__(self=1, d=2)
    img.root.content.update(prep=3, args=4)
    assert img.root.content == {"self": 1, "d": 2, "prep": 3, "args": 4}
    assert memimg.replay(img.events()).content == img.root.content


def test_a_refused_call_leaves_its_generator_unread(make_image: Images) -> None:
    """A mutation refused for its arguments (as the builtin refuses them) does not read the generator it was given."""
    img = make_image(root=Box)
    img.root.content = [1]
    gen = (x for x in (5, 6))
    with pytest.raises(TypeError, match="no keyword arguments"):
        img.root.content.__init__(gen, x=1)
    with pytest.raises(TypeError):
        img.root.content.extend(gen, gen)
    assert list(gen) == [5, 6] and img.root.content == [1]


def test_dict_update_errors_are_the_builtins(make_image: Images) -> None:
    """update() and __init__() of an attached dict refuse bad arguments with the builtin's errors and
    messages, changing nothing."""
    img = make_image(root=Box)
    img.root.content = {"a": 1}
    d = img.root.content
    bad_arguments: list[tuple[Any, type[Exception]]] = [([1], TypeError), ([(1, 2, 3)], ValueError)]
    for bad, error in bad_arguments:
        with pytest.raises(error) as ours:
            d.update(bad)
        with pytest.raises(error) as builtin:
            {}.update(bad)
        assert str(ours.value) == str(builtin.value)
    with pytest.raises(TypeError, match="dict expected at most 1 argument, got 2"):
        d.__init__({}, {})
    assert d == {"a": 1} and memimg.replay(img.events()).content == {"a": 1}


def test_plain_read_during_a_published_commit_of_an_untouched_field_gives_its_value(
    monkeypatch: Any, make_image: Images
) -> None:
    """While a multi-event commit is applied, a plain read of a field it does not write returns that field's value."""
    img = make_image(root=Box)
    img.root.content, img.root.other = Node(0), Node(5)
    a, untouched = img.root.content, img.root.other
    seen: list[Any] = []

    def hook(kind: str, target: Any, args: Any) -> None:
        if target is a and not seen:  # the commit of a.value/a.other is being published
            _in_thread(lambda: seen.append(untouched.value))

    monkeypatch.setattr(img._engine, "before_apply", hook)
    with img.transaction():
        a.value = 1
        a.next = 2
    assert seen == [5]


def test_a_transaction_commit_after_other_writers_commits_encodes_its_events_once(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While other images write to the log (this one has lost a race to them), a transaction whose commit
    comes after another image's commit catches up with it before encoding: its events are encoded once,
    not again after losing the race -- on a store whose look for other writers is local; where that look is
    a round trip to the server (PostgreSQL), it is not made, and the refused append reads what it missed.
    The transaction's outcome and the conflict rule are the same either way."""
    img = make_image(root=Box)
    img.root.content = {"mine": 0, "theirs": 0}
    other = make_image(root=Box)
    encoded: list[int] = []
    session = img._engine.session
    encode = session.encode_events

    def counting(*args: Any, **kwargs: Any) -> Any:
        encoded.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(session, "encode_events", counting)

    def round_trip(n: int) -> None:
        with img.transaction():
            img.root.content["mine"] = n
            other.root.content["theirs"] = n  # another writer commits before this transaction does

    round_trip(1)  # the race is lost once: encoded again after catching up
    assert len(encoded) == 2
    encoded.clear()
    for n in range(2, 6):
        round_trip(n)
    local = not getattr(img.store, "changed_asks_the_server", False)
    assert len(encoded) == (4 if local else 8)  # once each, where the look is local
    assert img.root.content == {"mine": 5, "theirs": 5}
    with pytest.raises(memimg.ConflictError):
        with img.transaction():
            img.root.content["mine"] = img.root.content["theirs"] + 1  # read, then overwritten elsewhere
            other.root.content["theirs"] = 100
    assert img.root.content == {"mine": 5, "theirs": 100}
    other.refresh()
    assert other.root.content == {"mine": 5, "theirs": 100}


def test_a_catch_up_that_failed_is_tried_again_by_the_next_transaction(make_image: Images) -> None:
    """Another image committed; this image's catch-up at a transaction's begin fails (a read error): the
    error reaches the caller, and the next transaction catches up -- it sees the other image's commit."""
    img = make_image(root=Box)
    img.root.content = {"x": 0}
    other = make_image(root=Box)
    other.root.content["x"] = 2
    store = img._engine.store
    read = store.read

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        store.read = read  # type: ignore[method-assign]
        raise memimg.StoreError("the database failed (a test)", store=store.description, operation="reading")

    store.read = failing_once  # type: ignore[method-assign]
    with pytest.raises(memimg.StoreError, match="a test"), img.transaction():
        pass
    with img.transaction():
        assert img.root.content["x"] == 2
    img.root.content["x"] += 1  # and it writes on that state
    other.refresh()
    assert other.root.content["x"] == 3


# -- another process's single field sets, caught up with together ------------------------------------------------


def _nodes(make_image: Images) -> tuple[memimg.Image, memimg.Image, list[Any], list[Any]]:
    """An image holding three nodes, and another image on the same log (another process) with its own view."""
    img = make_image(root=Box)
    img.root.content = [Node(0), Node(0), Node(0)]
    other = make_image(root=Box)
    return img, other, list(img.root.content), list(other.root.content)


def test_other_processes_single_field_sets_caught_up_together_are_each_a_commit(make_image: Images) -> None:
    """Another process's single field sets, applied by one catch-up, are each a commit of its own: every one
    is applied in order (the last write of a field wins), the image ends at the last seq, and a transaction
    that read a field one of them wrote -- any of them -- gets ConflictError."""
    img, other, mine, theirs = _nodes(make_image)
    for culprit in range(3):
        seen = []
        with pytest.raises(memimg.ConflictError):
            with img.transaction():
                seen.append(mine[culprit].value)

                def commit_elsewhere(culprit: int = culprit) -> None:
                    for i, node in enumerate(theirs):
                        node.value = 10 * culprit + i + 1  # three commits of one event each
                    theirs[0].value = 100 + culprit  # and a fourth: the first node written twice
                    assert img.refresh() == 4  # caught up in this thread while the transaction is open

                _in_thread(commit_elsewhere)
                seen.append(mine[culprit].value)
        assert seen == [0 if culprit == 0 else 10 * (culprit - 1) + culprit + 1]  # its value before them
        assert [n.value for n in mine] == [100 + culprit, 10 * culprit + 2, 10 * culprit + 3]
        assert img._engine.seq == other._engine.seq


def test_a_commit_after_a_catch_up_is_stamped_no_earlier_than_the_commits_caught_up_with(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's single field sets stamped ahead of this process's clock (its clock runs fast): once this
    image has caught up with them, its own commits are stamped no earlier than the latest of them -- commit
    times never go back along the log."""
    from memimg.image import _direct

    img, _other, mine, theirs = _nodes(make_image)
    now = _direct.now_us()
    ahead = iter(range(now + 3_600_000_000, now + 3_700_000_000, 1000))  # an hour ahead, and moving on
    monkeypatch.setattr(_direct, "now_us", lambda: next(ahead))
    for i, node in enumerate(theirs):
        node.value = i + 1
    monkeypatch.undo()
    latest = list(img.store.read())[-1][2]  # (ts) the latest of them
    assert latest > now + 3_600_000_000 and img.refresh() == 3
    mine[0].value = 7
    with img.transaction():
        mine[1].value = 8
    rows = list(img.store.read())
    assert [n.value for n in mine] == [7, 8, 3]
    assert rows[-1][2] >= rows[-2][2] >= latest  # (ts)


@compiled
def test_other_processes_single_field_sets_are_applied_by_the_compiled_catch_up_unless_something_watches(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the accelerator, a catch-up applies another process's single field sets in its compiled loop -- the
    same values, in order, the image at the last seq -- unless something must see each: a transaction open in
    another thread (it may have read what they change), a subscription; then the Python path applies them,
    to the same outcome."""
    from memimg.core import _compiled

    img, other, mine, theirs = _nodes(make_image)
    loop = _compiled.catch_sets
    assert loop is not None
    calls: list[int] = []

    def counted(*args: Any) -> Any:
        out = loop(*args)
        calls.append(out[0] - args[2])  # the rows it applied
        return out

    monkeypatch.setattr(_compiled, "catch_sets", counted)
    for i in range(30):
        theirs[i % 3].value = i
    assert img.refresh() == 30
    assert [n.value for n in mine] == [27, 28, 29] and img._engine.seq == other._engine.seq
    assert sum(calls) >= 29  # (the first set after the attach may take the Python path once)
    calls.clear()
    with open_elsewhere(img):
        for i in range(6):
            theirs[i % 3].value = 100 + i
        assert img.refresh() == 6
    assert calls == [] and [n.value for n in mine] == [103, 104, 105]
    changes: list[Any] = []
    with img.subscribe(changes.append, to=mine[0]):
        theirs[0].value = 200
        theirs[1].value = 201
        assert img.refresh() == 2
    assert calls == [] and [n.value for n in mine[:2]] == [200, 201]


@compiled
@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_a_set_failing_while_the_compiled_catch_up_applies_it_closes_the_image(
    make_image: Images, error: type[BaseException]
) -> None:
    """An interrupt (KeyboardInterrupt), or an error, while a catch-up's compiled loop applies another process's
    field set: the sets before it are applied and counted, the interrupt (or a MemimgError naming the set)
    reaches the caller, and the image is closed -- that set's outcome in memory is unknown: open it again."""
    img, other, mine, theirs = _nodes(make_image)
    theirs[0].value = 1
    img.refresh()  # (the table's setters of Node made)
    real = img._engine.table.setters[Node]["value"]

    def interrupted(obj: Any, value: Any) -> None:
        if value == 3:
            raise error
        real(obj, value)

    img._engine.table.setters[Node] = {**img._engine.table.setters[Node], "value": interrupted}  # this image's only
    for i in range(2, 5):
        theirs[i % 3].value = i
    raised: Any = KeyboardInterrupt if error is KeyboardInterrupt else memimg.MemimgError
    with pytest.raises(raised) as info:
        img.refresh()
    assert error is KeyboardInterrupt or f"applying committed events {other._engine.seq - 1}" in str(info.value)
    assert [n.value for n in mine][2] == 2 and img._engine.seq == other._engine.seq - 2
    with pytest.raises(memimg.MemimgError, match="closed"):
        mine[0].value = 9


@pytest.mark.parametrize("damage", ["unreadable", "checksum", "read error"])
def test_a_run_of_other_processes_commits_is_applied_up_to_a_damaged_one(
    make_image: Images, monkeypatch: pytest.MonkeyPatch, damage: str, store_kind: str
) -> None:
    """Among another process's single field sets caught up with together (in runs), one that cannot be read
    is reported by its seq and every commit before it is applied, none after it; one whose checksum does not
    hold, alike, but for the commit just before it, whose end only an intact row can show (an NDJSON log
    checks a chunk of lines before it gives any: none of that chunk is applied); a read failing after the
    fifth commit, alike. The image is always at the end of a commit, holding exactly the commits up to it."""
    from memimg.core import _fold
    from memimg.core._rows import EventRow, event_checksum
    from tests.tampering import append_event

    monkeypatch.setattr(_fold, "RUN", 3)  # one run handed over, the next still gathering at the damaged row
    img, _other, mine, theirs = _nodes(make_image)
    for i in range(5):
        theirs[i % 3].value = i + 1
    store = make_image.store()
    bad = store.head() + 1
    if damage == "unreadable":
        append_event(store, "obj.set", 10**6, [["value", 7]])  # an object that does not exist
    elif damage == "checksum":
        oid, data, ts = mine[0]._mi_oid, b'[["value",7]]', 1_700_000_000_000_000
        checksum = event_checksum(bad, bad, ts, "obj.set", oid, data) ^ 1
        store.append([EventRow(bad, bad, ts, "obj.set", oid, data, checksum)], bad - 1)
    else:
        read = img.store.read

        def failing(after: int = 0, limit: int | None = None) -> Any:
            yield from read(after, bad - 1 - after)
            raise memimg.StoreError(f"event seq {bad} could not be read: the connection dropped")

        monkeypatch.setattr(img.store, "read", failing)
    append_event(store, "obj.set", mine[0]._mi_oid, [["value", 9]])  # after it: never applied
    with pytest.raises(memimg.MemimgError, match=rf"event seq {bad}\b"):
        img.refresh()
    applied = img._engine.seq - (bad - 6)  # of the five commits before the damaged one
    assert applied == {"unreadable": 5, "checksum": 0 if store_kind == "ndjson" else 4, "read error": 4}[damage]
    state = [0, 0, 0]
    for i in range(applied):
        state[i % 3] = i + 1
    assert [n.value for n in mine] == state
