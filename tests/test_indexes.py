"""Indexes and unique constraints: ``memimg.field(index=True | unique=True)``, ``find`` and ``get``, on every store.

An index answers ``img.find`` for the committed state at the cost of the
result; it must always agree with a scan of the extent, whatever changed
the field: assignments, attaching a subgraph, transactions (committed,
discarded, reading their own writes), replay at open, another image's
commits at refresh, a snapshot's collection. A unique field's value is held
by at most one reachable instance; a clash raises ``UniqueError`` at the
assignment or at the commit, also between threads and between processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import memimg
from memimg import persistent
from memimg.image import _attach, _query, _unique
from tests.conftest import POSTGRES_URL, Images
from tests.graphs import reachable
from tests.versions import Versions


@attrs.frozen
class Code:
    letter: str


@attrs.define
class Mutable:
    x: int = 0


@persistent
class Item:
    tag: int = memimg.field(default=0, index=True)
    code: Code | None = memimg.field(default=None, index=True)
    link: Item | None = None


@persistent
class Special(Item):
    extra: str = "x"


@persistent
class Holder:
    items: list[Any] = attrs.field(factory=list)
    named: dict[str, Any] = attrs.field(factory=dict)


@persistent
class User:
    email: str | None = memimg.field(default=None, unique=True)
    city: str = memimg.field(default="", index=True)


@persistent
class Vip(User):
    level: int = 1


@persistent
class Users:
    users: list[Any] = attrs.field(factory=list)


@persistent
class Board:
    users: list[Any] = attrs.field(factory=list)
    spare: list[Any] = attrs.field(factory=list)


@persistent
class Order:
    user: User | None = None


def ids(objs: Any) -> set[int]:
    return {id(o) for o in objs}


def check(img: memimg.MemoryImage, committed: bool = True) -> None:
    """``find`` on the indexed fields equals a brute-force scan of the extent, for every value the program uses;
    the extent holds every reachable instance; in a committed state no two reachable users share an e-mail,
    and ``get`` finds each (inside a transaction a clash may wait for the commit)."""
    reach = reachable(img.root)
    users = [o for o in reach if isinstance(o, User)]
    if committed:
        emails = [u.email for u in users if u.email is not None]
        assert len(emails) == len(set(emails)), "two reachable instances hold one unique value"
        for u in users:
            assert u.email is None or img.get(User, email=u.email) is u
    assert ids(users) <= ids(img.all(User))
    for cls in (Item, Special):
        members = list(img.all(cls))
        assert ids(o for o in reach if isinstance(o, cls)) <= ids(members)
        for tag in range(3):
            assert ids(img.find(cls, tag=tag)) == ids(m for m in members if m.tag == tag)
        for code in (None, Code("a"), Code("b")):
            assert ids(img.find(cls, code=code)) == ids(m for m in members if getattr(m, "code", ...) == code)
        assert ids(img.find(cls, tag=1, code=Code("a"))) == ids(
            m for m in members if m.tag == 1 and getattr(m, "code", ...) == Code("a")
        )


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.booleans(), st.integers(0, 2), st.integers(0, 50)),
        st.tuples(st.just("name"), st.integers(0, 50), st.sampled_from("ab")),
        st.tuples(st.just("remove"), st.integers(0, 50)),
        st.tuples(st.just("tag"), st.integers(0, 50), st.integers(0, 2)),
        st.tuples(st.just("code"), st.integers(0, 50), st.sampled_from(["a", "b", ""])),
        st.tuples(st.just("untag"), st.integers(0, 50)),
        st.tuples(st.just("begin")),
        st.tuples(st.just("commit")),
        st.tuples(st.just("discard")),
        st.tuples(st.just("snapshot")),
        st.tuples(st.just("reopen"), st.booleans()),
        st.tuples(st.just("other"), st.integers(0, 50), st.integers(0, 2)),
        st.tuples(st.just("user"), st.integers(0, 2)),
        st.tuples(st.just("email"), st.integers(0, 50), st.integers(-1, 2)),
        st.tuples(st.just("relink"), st.integers(0, 50)),
        st.tuples(st.just("other_user"), st.integers(0, 2)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=ops)
@example(program=[("add", False, 1, 0), ("add", False, 1, 0), ("remove", 0), ("snapshot",), ("tag", 1, 2)])
@example(program=[("add", False, 0, 0), ("tag", 0, 2), ("begin",), ("tag", 0, 1), ("discard",), ("reopen", False)])
@example(program=[("add", True, 1, 1), ("add", False, 1, 1), ("other", 0, 2), ("code", 1, "a"), ("snapshot",)])
@example(program=[("add", False, 0, 0), ("untag", 0), ("begin",), ("add", True, 0, 1), ("tag", 1, 2), ("commit",)])
@example(program=[("user", 0), ("remove", 0), ("user", 0), ("relink", 0), ("reopen", False), ("relink", 0)])
@example(program=[("user", 1), ("remove", 0), ("other_user", 1), ("relink", 0), ("email", 1, 2), ("relink", 0)])
@example(
    program=[("add", False, 0, 0), ("user", 0), ("email", 0, -1), ("user", 0), ("email", 1, -1), ("add", False, 0, 1)]
)
def test_find_on_indexed_fields_equals_a_scan(make_image: Images, program: list[Any]) -> None:
    """After every step of a random program -- assignments, attaching linked subgraphs, deleting fields,
    dropping objects, transactions committed and discarded (checked inside too), snapshots, reopening, and
    another image on the log writing and refreshing -- find through the indexes equals a scan."""
    img = make_image(root=Holder, snapshot_every=None)
    img.root.items = []
    img.root.named = {}
    img.snapshot()
    other = make_image(root=Holder, snapshot_every=None)
    check(other)  # its indexes are built now, and must follow every commit from here on
    pool: list[Any] = []
    users: list[Any] = []
    tx: memimg.Transaction | None = None
    check(img)
    for op in program:
        name = op[0]
        live = [o for o in pool if o._mi_img is img]  # a collected object is free-standing
        if name == "add":
            _, special, tag, link = op
            obj = Special(tag=tag) if special else Item(tag=tag, code=Code("ab"[link % 2]))
            if pool and link % 2:
                obj.link = pool[link % len(pool)]  # a subgraph: the linked object may be new too
            pool.append(obj)
            img.root.items.append(obj)
        elif name == "name" and pool:
            img.root.named[op[2]] = pool[op[1] % len(pool)]
        elif name == "remove" and img.root.items:
            del img.root.items[op[1] % len(img.root.items)]
        elif name == "tag" and live:
            live[op[1] % len(live)].tag = op[2]
        elif name == "code" and live:
            live[op[1] % len(live)].code = Code(op[2]) if op[2] else None
        elif name == "untag" and live:
            obj = live[op[1] % len(live)]
            if getattr(obj, "code", None) is not None:
                del obj.code
        elif name == "begin" and tx is None:
            tx = img.begin()
        elif name == "commit" and tx is not None:
            with contextlib.suppress(memimg.UniqueError):  # a clash found at commit: discarded
                tx.save()
            tx = None
        elif name == "discard" and tx is not None:
            tx.discard()
            tx = None
        elif name == "snapshot" and tx is None:
            img.snapshot()
        elif name == "reopen" and tx is None:
            if op[1]:
                img.snapshot()
            img.close()
            img = make_image(root=Holder, snapshot_every=None)
            pool = list(img.all(Item))
            users = list(img.all(User))
        elif name == "user":
            u = User(f"{op[1]}@x.io")
            users.append(u)
            with contextlib.suppress(memimg.UniqueError):
                img.root.items.append(u)
        elif name == "email" and users:
            u = users[op[1] % len(users)]
            if u._mi_img is img:
                with contextlib.suppress(memimg.UniqueError):
                    u.email = None if op[2] < 0 else f"{op[2]}@x.io"
        elif name == "relink" and users:  # a user dropped earlier (maybe not collected yet) linked back
            u = users[op[1] % len(users)]
            if u._mi_img in (img, None):
                with contextlib.suppress(memimg.UniqueError):
                    img.root.named["u"] = u
        elif name == "other_user" and tx is None:  # another process adds a user, caught up by img
            other.refresh()
            with contextlib.suppress(memimg.UniqueError):
                other.root.items.append(User(f"{op[1]}@x.io"))
            img.refresh()
        elif name == "other" and tx is None:
            other.refresh()
            items = list(other.all(Item))
            if items:
                items[op[1] % len(items)].tag = op[2]  # another process's write, caught up by img below
            img.refresh()
        check(img, tx is None)
        if tx is None:
            other.refresh()
            check(other)
    if tx is not None:
        tx.discard()
        check(img)
    img.close()
    other.close()


def test_find_on_an_indexed_field_compares_only_the_matches(make_image: Images) -> None:
    """With an index, the candidates find compares are the matches (O(result)), not the extent;
    inside a transaction, plus the objects the transaction changed or attached."""
    img = make_image(root=Holder)
    img.root.items.extend(Item(tag=i % 100) for i in range(1000))
    pool, _ = _query.candidates(img._engine, Item, {"tag": 7})
    assert len(list(pool)) == 10
    assert len(img.find(Item, tag=7)) == 10
    pool, _ = _query.candidates(img._engine, Item, {"link": None})  # not indexed: the extent
    assert len(list(pool)) == 1000
    with img.transaction():
        img.root.items[0].tag = 7
        img.root.items.append(Item(tag=7))
        pool, _ = _query.candidates(img._engine, Item, {"tag": 7})
        assert len(list(pool)) == 12
        assert len(img.find(Item, tag=7)) == 12
    assert len(img.find(Item, tag=7)) == 12 and len(img.find(Item, tag=0)) == 9


def test_a_transaction_finds_its_own_writes_others_see_the_committed_state(make_image: Images) -> None:
    """Inside a transaction find through an index sees its own assignments and attached objects; another
    thread sees the committed state until the commit, and a discarded transaction leaves nothing."""
    img = make_image(root=Holder)
    a = Item(tag=1)
    img.root.items.append(a)
    seen: dict[str, Any] = {}

    def outside() -> None:
        seen["one"], seen["two"] = img.find(Item, tag=1), img.find(Item, tag=2)

    with img.transaction():
        a.tag = 2
        b = Item(tag=1)
        img.root.items.append(b)
        assert img.find(Item, tag=2) == [a] and img.find(Item, tag=1) == [b]
        t = threading.Thread(target=outside)
        t.start()
        t.join()
        assert seen == {"one": [a], "two": []}
    assert img.find(Item, tag=2) == [a] and img.find(Item, tag=1) == [b]
    tx = img.begin()
    b.tag = 0
    assert img.find(Item, tag=1) == []
    tx.discard()
    assert img.find(Item, tag=1) == [b]


def test_a_read_by_another_thread_of_the_transaction_in_the_middle_of_an_attach_misses_nothing(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query by another thread of the same transaction (a copied context) while an attach is half done
    leaves the transaction's own queries whole: all, find and get afterwards see every object it attached."""
    img = make_image(root=Board)
    real = _attach.Attacher._attach_contents
    reads: list[int] = []

    def halfway(self: Any, obj: Any, *args: Any) -> None:
        if type(obj) is Users and not reads:  # attached, the users it holds not yet
            ctx = contextvars.copy_context()
            t = threading.Thread(target=lambda: reads.append(ctx.run(lambda: len(img.all(User)))))
            t.start()
            t.join()
        real(self, obj, *args)

    monkeypatch.setattr(_attach.Attacher, "_attach_contents", halfway)
    with img.transaction():
        img.root.users.append(Users([User(f"u{i}@x.io", city="Oslo") for i in range(50)]))
        assert reads == [0]
        assert len(img.all(User)) == 50 and len(img.find(User, city="Oslo")) == 50
        assert img.get(User, email="u49@x.io") is img.root.users[0].users[49]
        with pytest.raises(memimg.UniqueError):
            img.root.users[0].users[0].email = "u49@x.io"
    assert len(img.all(User)) == 50


def test_find_and_get_in_a_transaction_leave_out_objects_committed_after_it_began(make_image: Images) -> None:
    """Objects another thread commits after a transaction began are not found by find or get through an
    index inside it (as they are not in its extents); after it ends they are."""
    img = make_image(root=Board)
    mine = User("me@x.io", city="Oslo")
    img.root.users.append(mine)
    with img.transaction():
        assert img.get(User, email="me@x.io") is mine  # the indexes are built before the other commit
        theirs = [User("new@x.io", city="Oslo"), Vip("vip@x.io", city="Oslo")]
        t = threading.Thread(target=lambda: img.root.users.extend(theirs))
        t.start()
        t.join()
        assert all(u._mi_oid is not None for u in theirs)  # committed
        assert img.find(User, city="Oslo") == [mine] and img.find(Vip, city="Oslo") == []
        assert img.get(User, email="new@x.io") is None and img.get(Vip, email="vip@x.io") is None
        assert img.find(User, email="new@x.io") == []
    assert ids(img.find(User, city="Oslo")) == ids([mine, *theirs])
    assert img.get(User, email="new@x.io") is theirs[0] and img.get(Vip, email="vip@x.io") is theirs[1]


def test_indexes_follow_a_schema_upgrade_at_open_and_at_refresh(tmp_path: Any) -> None:
    """Values an upgrader rewrites -- in the stored states at open, and in an old process's later writes caught
    up at refresh -- are what the index files."""
    v = Versions(tmp_path)
    old = """
        @persistent(name="{P}.City")
        class City:
            name: str = ""

        @persistent(name="{P}.Shop")
        class Shop:
            cities: list = attrs.field(factory=list)
        """
    v.record(old, "img = memimg.open(path, root=models.Shop)\nimg.root.cities.append(models.City('lisbon'))")
    new = v.load(
        """
        @persistent(name="{P}.City", version=2)
        class City:
            name: str = memimg.field(default="", index=True)

        @memimg.upgrader("{P}.City", from_version=1)
        def upper(state: dict) -> dict:
            if "name" in state:
                state["name"] = state["name"].upper()
            return state

        @persistent(name="{P}.Shop")
        class Shop:
            cities: list = attrs.field(factory=list)
        """
    )
    with v.open(new) as img:
        (city,) = img.find(new.City, name="LISBON")
        assert img.find(new.City, name="lisbon") == []
        v.record(old, "img = memimg.open(path, root=models.Shop)\nimg.root.cities[0].name = 'porto'")
        img.refresh()
        assert img.find(new.City, name="PORTO") == [city] and img.find(new.City, name="LISBON") == []


# -- unique constraints ------------------------------------------------------------------------------------


def test_get_finds_the_one_instance_by_a_unique_field(make_image: Images) -> None:
    """``img.get(Cls, field=value)`` is the instance holding the value (a subclass's too), or None;
    inside a transaction it sees the transaction's own writes."""
    img = make_image(root=Users)
    ada, bob = User("ada@x.io"), Vip("bob@x.io")
    img.root.users.extend([ada, bob])
    assert img.get(User, email="ada@x.io") is ada and img.get(User, email="bob@x.io") is bob
    assert img.get(Vip, email="bob@x.io") is bob and img.get(Vip, email="ada@x.io") is None
    assert img.get(User, email="eve@x.io") is None
    with img.transaction():
        ada.email = "ada@y.io"
        assert img.get(User, email="ada@y.io") is ada and img.get(User, email="ada@x.io") is None
    img.close()
    img = make_image(root=Users)
    assert img.get(User, email="ada@y.io") is img.root.users[0]


def test_a_clash_visible_at_the_assignment_raises_there(make_image: Images) -> None:
    """Assigning a unique value another reachable instance holds raises UniqueError naming class, field and
    value, and changes nothing -- outside a transaction, inside one, and against a subclass's instance."""
    img = make_image(root=Users)
    ada, bob = User("ada@x.io"), Vip("bob@x.io")
    img.root.users.extend([ada, bob])
    seq = img.seq
    with pytest.raises(memimg.UniqueError, match=r"User\.email is unique, and 'bob@x\.io' is held by another Vip"):
        ada.email = "bob@x.io"
    assert ada.email == "ada@x.io" and img.seq == seq
    with img.transaction():
        with pytest.raises(memimg.UniqueError) as err:
            bob.email = "ada@x.io"
        assert (err.value.cls, err.value.field, err.value.value, err.value.holder) == (User, "email", "ada@x.io", ada)
        assert isinstance(err.value, memimg.ConflictError)
        assert bob.email == "bob@x.io"
        ada.email = "ada@y.io"
        bob.email = "ada@x.io"  # freed by the transaction's own write first
    assert (ada.email, bob.email) == ("ada@y.io", "ada@x.io")
    ada.email = bob.email = None  # None is no value: any number may hold it
    assert img.find(User, email=None) == [ada, bob] or img.find(User, email=None) == [bob, ada]


def test_attaching_a_clashing_instance_raises_at_commit(make_image: Images) -> None:
    """A new instance holding a taken value, attached alone or inside a subgraph, raises UniqueError when the
    change commits (at once outside a transaction); the graph and the log are unchanged."""
    img = make_image(root=Users)
    img.root.users.append(User("ada@x.io"))
    seq = img.seq
    with pytest.raises(memimg.UniqueError, match="'ada@x.io'"):
        img.root.users.append(User("ada@x.io"))
    with pytest.raises(memimg.UniqueError):
        img.root.users.extend([User("new@x.io"), User("two@x.io"), User("two@x.io")])  # a clash among new ones
    assert img.seq == seq and len(img.root.users) == 1
    with pytest.raises(memimg.UniqueError), img.transaction():
        img.root.users.append(User("eve@x.io"))
        img.root.users.append(User("ada@x.io"))
    assert img.seq == seq and len(img.root.users) == 1 and img.get(User, email="eve@x.io") is None
    img.close()
    img = make_image(root=Users)
    assert [u.email for u in img.root.users] == ["ada@x.io"]


def test_a_value_freed_by_unreachability_can_be_reused(make_image: Images) -> None:
    """A holder made unreachable frees its value at once (before any snapshot collects it): in a later change
    and within one transaction; get returns the reachable holder."""
    img = make_image(root=Users, snapshot_every=None)
    ada = User("ada@x.io")
    img.root.users.append(ada)
    img.root.users.remove(ada)
    assert ada in img.all(User)  # not collected
    ada2 = User("ada@x.io")
    img.root.users.append(ada2)
    assert img.get(User, email="ada@x.io") is ada2
    with img.transaction():
        img.root.users.clear()
        img.root.users.append(User("ada@x.io"))
    assert img.get(User, email="ada@x.io") is img.root.users[0]
    img.snapshot()
    assert len(img.find(User, email="ada@x.io")) == 1


def _reused(img: memimg.MemoryImage) -> tuple[User, User]:
    """A user of *img* (its root's ``users``) removed, not collected yet, and a new one appended holding its
    e-mail: a value reused while its dropped holder is still in the index."""
    ada = User("ada@x.io")
    img.root.users.append(ada)
    img.root.users.remove(ada)
    ada2 = User("ada@x.io")
    img.root.users.append(ada2)
    return ada, ada2


def test_a_removed_holder_cannot_be_linked_back_while_its_value_is_reused(make_image: Images) -> None:
    """A holder made unreachable (not collected yet) whose value another instance then took cannot be linked
    back into the graph -- directly, inside a new subgraph, in a transaction, or after reopening -- while the
    other holds the value; nothing is changed. Once the other lets the value go, it can."""
    img = make_image(root=Users, snapshot_every=None)
    ada, _ = _reused(img)
    seq = img.seq
    with pytest.raises(memimg.UniqueError, match=r"User\.email is unique, and 'ada@x\.io'"):
        img.root.users.append(ada)
    with pytest.raises(memimg.UniqueError):
        img.root.users.append([ada])  # inside a new list
    with pytest.raises(memimg.UniqueError), img.transaction():
        img.root.users.append(Vip("vip@x.io"))
        img.root.users.append(ada)
    assert img.seq == seq and len(img.root.users) == 1 and img.get(User, email="ada@x.io") is img.root.users[0]
    img.close()
    img = make_image(root=Users, snapshot_every=None)
    (ada,) = (u for u in img.all(User) if u not in img.root.users)  # read back, not collected
    with pytest.raises(memimg.UniqueError):
        img.root.users.append(ada)
    with img.transaction():  # the value given up and the old holder linked back in one transaction
        img.root.users[0].email = "new@x.io"
        img.root.users.append(ada)
    assert img.get(User, email="ada@x.io") is ada and img.get(User, email="new@x.io") is img.root.users[0]


def test_a_removed_holder_linked_back_in_place_of_the_values_new_holder_takes_the_value_back(
    make_image: Images,
) -> None:
    """A removed holder whose value another instance took can be linked back *in place of* that instance --
    the change leaves one reachable holder, as replacing a holder with a new one does -- and get returns it;
    linked back *beside* it (a dict item, deep inside a newly attached graph, a list item, in or outside a
    transaction) it is refused, naming class, field and value, and nothing is changed."""
    img = make_image(root=Board, snapshot_every=None)
    ada = User("ada@x.io")
    img.root.users.append(ada)
    img.root.users.remove(ada)
    img.root.users.append(User("ada@x.io"))
    img.root.spare.append({})
    box = img.root.spare[0]
    img.root.users[0] = ada  # in place of its successor: the value passes back
    assert img.get(User, email="ada@x.io") is ada
    (ada2,) = (u for u in img.all(User) if u is not ada)  # the successor, removed now, not collected
    seq = img.seq
    match = r"User\.email is unique, and 'ada@x\.io' is held by another User"
    with pytest.raises(memimg.UniqueError, match=match):
        box["k"] = ada2
    with pytest.raises(memimg.UniqueError, match=match):
        img.root.spare.append([{"deep": [ada2]}])
    with pytest.raises(memimg.UniqueError, match=match), img.transaction():
        img.root.spare.append(ada2)
    assert img.seq == seq and img.root.users == [ada] and img.root.spare == [{}] and box == {}
    assert img.get(User, email="ada@x.io") is ada


def test_a_removed_holder_linked_back_in_another_image_is_refused(make_image: Images) -> None:
    """Two images on one log (two processes as far as they can tell): one drops a holder and gives its value
    to a new instance; the other, still holding a reference to the dropped one, cannot link it back -- after
    catching up, or in a transaction begun before and caught up at its commit."""
    one = make_image(root=Board, snapshot_every=None)
    ada = User("ada@x.io")
    one.root.users.append(ada)
    two = make_image(root=Board, snapshot_every=None)
    ada2 = two.root.users[0]
    late = two.begin()
    two.root.spare.append(ada2)  # a second reference to it, that the drop below does not remove
    one.root.users.remove(ada)
    one.root.users.append(User("ada@x.io"))
    with pytest.raises(memimg.UniqueError):
        late.save()
    two.refresh()
    seq = two.seq
    with pytest.raises(memimg.UniqueError):
        two.root.spare.append(ada2)
    assert two.seq == seq and [u.email for u in two.root.users] == ["ada@x.io"] and two.root.spare == []
    two.root.users[0].email = "eve@x.io"
    two.root.spare.append(ada2)
    one.refresh()
    assert one.get(User, email="ada@x.io") is one.root.spare[0] is ada


def test_a_commit_retried_after_another_images_commit_is_checked_again(make_image: Images) -> None:
    """A transaction linking a holder of a shadowed value back, whose commit finds that another image on the
    log committed first -- dropping that holder and giving the value to a third instance -- is checked again
    on the state after the other's commit, and refused."""
    one = make_image(root=Board, snapshot_every=None)
    _, ada2 = _reused(one)
    two = make_image(root=Board, snapshot_every=None)
    back = two.root.users[0]
    assert two.get(User, email="ada@x.io") is back
    tx = two.begin()
    two.root.spare.append(back)
    two.root.spare.append(back)  # (no new object: its id taken back would hide what is tested)
    with one.transaction():  # as many events as the transaction's
        one.root.users.remove(ada2)
        one.root.users.append(User("ada@x.io"))
    with pytest.raises(memimg.UniqueError):
        tx.save()
    assert two.seq == one.seq and two.root.spare == []
    assert [u.email for u in reachable(two.root) if isinstance(u, User)] == ["ada@x.io"]


@pytest.mark.parametrize("query_first", [False, True])
def test_a_removed_holder_linked_back_after_a_subclass_took_its_value_is_refused(
    make_image: Images, query_first: bool
) -> None:
    """As above when the value's new holder is an instance of a subclass (filed in the index of another
    class): the other image, caught up, cannot link the dropped holder back -- whether its indexes were
    built before the change or after."""
    one = make_image(root=Board, snapshot_every=None)
    ada = User("ada@x.io")
    one.root.users.append(ada)
    two = make_image(root=Board, snapshot_every=None)
    ada2 = two.root.users[0]
    if query_first:
        assert two.get(User, email="ada@x.io") is ada2
    one.root.users.remove(ada)
    one.root.users.append(Vip("ada@x.io"))
    two.refresh()
    seq = two.seq
    with pytest.raises(memimg.UniqueError, match=r"User\.email is unique, and 'ada@x\.io'"):
        two.root.spare.append(ada2)
    assert two.seq == seq and two.root.spare == [] and type(two.get(User, email="ada@x.io")) is Vip


def test_any_number_of_reachable_instances_may_hold_none_in_a_unique_field(make_image: Images) -> None:
    """None is no value of a unique field: while several reachable instances hold it -- given by assignments,
    attached holding it, caught up from another image, read back at open -- commits that link existing objects
    (those that check the values reused while a holder was dropped) go through."""
    img = make_image(root=Board, snapshot_every=None)
    other = make_image(root=Board, snapshot_every=None)
    assert other.find(User, email=None) == []  # its indexes are built now, and follow what it catches up
    ada, bob = User("ada@x.io"), User("bob@x.io")
    img.root.users.extend([ada, bob, User()])
    ada.email = bob.email = None
    assert len(img.find(User, email=None)) == 3
    img.root.spare.append(ada)  # an existing object linked
    other.refresh()
    other.root.spare.append(other.root.users[1])
    other.root.users.append(Vip())  # a subclass's instance holding None too
    img.refresh()
    img.root.spare.append(bob)
    img.close()
    img = make_image(root=Board, snapshot_every=None)
    img.root.spare.append(img.root.users[2])
    assert [u.email for u in img.root.users] == [None] * 4 and len(img.root.spare) == 4
    assert len(img.find(User, email=None)) == 4
    other.close()


def test_get_of_none_in_a_unique_field_is_an_error_whoever_holds_it(make_image: Images) -> None:
    """None is no value of a unique field, so no one instance holds it: ``img.get(Cls, field=None)`` raises
    ValueError naming class and field and pointing to find -- whether no instance, one or several (reachable or
    not) leave the field None, inside a transaction or not -- never an arbitrary one of them."""
    img = make_image(root=Users)
    message = r"img\.get\(User, email=None\): None is not a unique value .*img\.find\(User, email=None\)"

    def refused() -> None:
        with pytest.raises(ValueError, match=message):
            img.get(User, email=None)

    refused()  # none holds it
    img.root.users.append(User())
    refused()  # one
    img.root.users.extend([User(), Vip()])
    refused()  # several, a subclass's too
    with img.transaction():
        img.root.users.append(User())
        refused()
    img.root.users.pop(0)  # unreachable, not collected yet
    refused()
    found = {id(u) for u in img.find(User, email=None)}
    assert len(img.root.users) == 3 and all(id(u) in found for u in img.root.users)  # find lists them


def _calls(monkeypatch: pytest.MonkeyPatch, name: str, *modules: Any) -> list[int]:
    """A list that grows by one item at each call of the function *name* of *modules* (it is bound under that
    name in each), which still does what it did."""
    calls: list[int] = []
    real = getattr(modules[0], name)

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    for module in modules:
        monkeypatch.setattr(module, name, counted)
    return calls


def test_get_of_a_reused_value_walks_the_graph_once(make_image: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a removed holder of a value and its successor are both in the index, get returns the reachable
    one and finds out which that is once, not on every call -- commits that link no existing object in
    between included; a commit that links one back makes it look again."""
    img = make_image(root=Users, snapshot_every=None)
    ada, ada2 = _reused(img)
    walks = _calls(monkeypatch, "reachable_ids", _unique, _query)
    for i in range(50):
        assert img.get(User, email="ada@x.io") is ada2
        img.root.users.append(User(f"u{i}@x.io"))
    assert len(walks) == 1
    img.root.users.append(img.root.users[1])  # an existing object linked again: no dropped holder behind it
    assert img.get(User, email="ada@x.io") is ada2 and len(walks) == 1
    with pytest.raises(memimg.UniqueError):
        img.root.users.append(ada)  # the dropped holder: the commit looks at the whole graph, and refuses it
    assert img.get(User, email="ada@x.io") is ada2 and len(walks) == 3
    with img.transaction():
        assert img.get(User, email="ada@x.io") is ada2
        ada2.email = "other@x.io"
        assert img.get(User, email="other@x.io") is ada2


def test_a_commit_linking_objects_while_a_value_is_reused_walks_only_what_it_links(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a dropped holder of a unique value and its successor are both in the index (an account deleted
    and signed up for again), a commit linking existing objects -- an order naming a user -- walks what it
    links only as far as the objects known reachable: a few steps however big the image. Linking the dropped
    holder back is still refused -- directly, through a dropped part of the graph, in a transaction, and after
    its successor was dropped in turn and a third instance took the value."""
    img = make_image(root=Board, snapshot_every=None)
    n = 1000
    with img.transaction():
        img.root.users.extend(User(f"u{i}@x.io") for i in range(n))
    with img.transaction():
        img.root.spare.extend(Order(img.root.users[i]) for i in range(n - 1))  # none for the last
    gone = img.root.users.pop()
    box = [Order(gone)]
    img.root.spare.append(box)
    box = img.root.spare.pop()  # dropped too: a way back to the dropped holder
    img.root.users.append(User(gone.email))
    steps = _calls(monkeypatch, "_contents", _unique)
    for i in range(20):
        img.root.spare.append(Order(img.root.users[i]))
        with img.transaction():
            img.root.spare.append(Order(img.root.users[i + 2]))
            img.root.spare[i].user = img.root.users[i + 1]
    assert len(steps) < 100  # a few per commit; walking the graph would be ~3 * n per commit
    seq = img.seq
    for link in (lambda: img.root.spare.append(box), lambda: img.root.spare.append(Order(gone))):
        with pytest.raises(memimg.UniqueError, match=r"User\.email is unique"):
            link()
        with pytest.raises(memimg.UniqueError), img.transaction():
            img.root.spare.append(Order(img.root.users[0]))
            link()
    assert img.seq == seq and img.get(User, email=gone.email) is img.root.users[-1]
    img.root.spare.append(Order(img.root.users[0]))
    second = img.root.users.pop()  # the successor dropped in turn, a third instance takes the value
    img.root.users.append(User(gone.email))
    img.root.spare.append(Order(img.root.users[0]))
    for back in (second, gone):
        with pytest.raises(memimg.UniqueError):
            img.root.spare.append(Order(back))
    assert [u.email for u in reachable(img.root) if isinstance(u, User)].count(gone.email) == 1


def test_unique_checks_in_a_transaction_look_only_at_the_values_concerned(
    make_image: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N unique assignments, gets and finds in one transaction compare a bounded number of other instances
    each (O(N) in all, not O(N^2)); what they see is still the transaction's own view."""
    img = make_image(root=Users)
    compared = _calls(monkeypatch, "visible", _unique)
    n = 400
    with img.transaction():
        for i in range(n):
            u = User(None, f"c{i}")
            img.root.users.append(u)
            u.email = f"u{i}@x.io"
            assert img.get(User, email=f"u{i}@x.io") is u
            assert img.find(User, city=f"c{i}") == [u]
            assert len(_query.candidates(img._engine, User, {"city": f"c{i}"})[0]) == 1  # type: ignore[arg-type]
        with pytest.raises(memimg.UniqueError):
            img.root.users[0].email = "u1@x.io"
    assert len(compared) < 10 * n  # a few per assignment; each scanning the earlier ones would be ~n * n / 2
    assert len(img.all(User)) == n and img.get(User, email="u7@x.io") is img.root.users[7]


def test_two_threads_adding_one_value_cannot_both_commit(make_image: Images) -> None:
    """Two transactions in two threads each attach an instance with the same unique value: exactly one
    commits, the other raises UniqueError."""
    img = make_image(root=Users)
    barrier = threading.Barrier(2)
    outcome: list[str] = []

    def add(city: str) -> None:
        try:
            with img.transaction():
                img.root.users.append(User("same@x.io", city))
                barrier.wait()
        except memimg.UniqueError:
            outcome.append("refused")
        else:
            outcome.append("committed")

    threads = [threading.Thread(target=add, args=(c,)) for c in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome) == ["committed", "refused"]
    assert len(img.root.users) == 1 and len(img.find(User, email="same@x.io")) == 1


def test_two_images_on_one_log_cannot_both_commit_one_value(make_image: Images) -> None:
    """Two images on one log (two processes as far as they can tell) that add the same value without seeing
    each other's commit: the second append loses the race, catches up, finds the clash and raises -- in
    transactions and outside them."""
    one, two = make_image(root=Users), make_image(root=Users)
    tx1, tx2 = one.begin(), two.begin()
    one.root.users.append(User("same@x.io"))
    two.root.users.append(User("same@x.io"))
    tx1.save()
    with pytest.raises(memimg.UniqueError):
        tx2.save()
    one.root.users.append(User("next@x.io"))
    with pytest.raises(memimg.UniqueError):
        two.root.users.append(User("next@x.io"))
    two.refresh()
    assert [u.email for u in two.root.users] == ["same@x.io", "next@x.io"]
    assert two.get(User, email="next@x.io") is two.root.users[1]


RACER = textwrap.dedent(
    """
    import sys, random, attrs, memimg
    from memimg import persistent

    @persistent(name="race.User")
    class User:
        email: str = memimg.field(unique=True)

    @persistent(name="race.Users")
    class Users:
        users: list = attrs.field(factory=list)

    kind, where, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "sqlite":
        img = memimg.open(where, root=Users)
    else:
        from memimg.stores._sqlalchemy import SQLAlchemyStore
        url, schema = where.split("|")
        img = memimg.open(SQLAlchemyStore(url, schema=schema), root=Users)
    emails = [f"u{i}@x.io" for i in range(30)]
    if sys.argv[4] == "check":
        print(sorted(u.email for u in img.root.users) == sorted(emails))
        sys.exit()
    emails = emails[: int(sys.argv[4])]
    random.Random(seed).shuffle(emails)
    refused = 0
    for e in emails:
        try:
            with img.transaction():
                img.root.users.append(User(e))
        except memimg.UniqueError:
            refused += 1
    print(refused, flush=True)
    img.close()
    """
)


@pytest.fixture(params=["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"])
def shared_log(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "race.db")
        return
    import uuid

    import sqlalchemy as sa

    schema = f"ix_{uuid.uuid4().hex[:12]}"
    yield "postgres", f"{POSTGRES_URL}|{schema}"
    engine = sa.create_engine(POSTGRES_URL)  # type: ignore[arg-type]
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def test_processes_adding_the_same_values_hold_each_once(shared_log: Any) -> None:
    """Three processes each add the same 30 unique values in their own orders: every value ends held by
    exactly one instance, and the refusals add up (30 commits in all)."""
    kind, where = shared_log
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def run(seed: int, mode: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", RACER, kind, where, str(seed), mode], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    run(0, "0")  # the log and its root, first
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, kind, where, str(seed), "30"], stdout=subprocess.PIPE, text=True, env=env
        )
        for seed in (1, 2, 3)
    ]
    refused = 0
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        refused += int(out.strip())
    assert refused == 60
    assert run(0, "check") == "True"


# -- bad input -----------------------------------------------------------------------------------------------


def test_index_on_a_collection_or_unhashable_field_is_refused_at_class_definition() -> None:
    """``index=True`` / ``unique=True`` on a collection field or an unhashable type raises TypeError when the
    class is defined, naming class and field."""
    with pytest.raises(TypeError, match=r"Bad\.tags: memimg\.field\(index=True\) needs hashable values.*collection"):

        @persistent
        class Bad:
            tags: list[str] = memimg.field(factory=list, index=True)

    with pytest.raises(TypeError, match=r"Worse\.box: memimg\.field\(unique=True\).*cannot be hashed"):

        @persistent
        class Worse:
            box: Mutable | None = memimg.field(default=None, unique=True)


def test_a_subclass_cannot_drop_an_inherited_unique_constraint() -> None:
    """A subclass redeclaring a field its base declares unique must keep ``unique=True``: without it, the
    class definition raises TypeError naming both classes and the field (its instances are the base's too)."""
    with pytest.raises(TypeError, match=r"Loose\.email: User\.email is unique, and a subclass cannot drop"):

        @persistent
        class Loose(User):
            email: str | None = None

    @persistent
    class Kept(User):
        email: str | None = memimg.field(default=None, unique=True)

    assert _unique.indexed_fields(Kept) == {"email": User, "city": None}


def test_get_and_find_refuse_fields_that_are_not_a_unique_key(make_image: Images) -> None:
    """get takes exactly one unique field; find and get refuse unknown fields -- naming class and field."""
    img = make_image(root=Users)
    with pytest.raises(
        TypeError, match=r"img\.get\(User, city=\.\.\.\).*one unique field \(its unique fields: email\)"
    ):
        img.get(User, city="Lisbon")
    with pytest.raises(TypeError, match=r"img\.get\(User, email=\.\.\., city=\.\.\.\)"):
        img.get(User, email="a", city="b")
    with pytest.raises(TypeError, match=r"img\.get\(User, no field\)"):
        img.get(User)
    with pytest.raises(TypeError, match=r"img\.get\(Item, tag=\.\.\.\).*it has none; declare one"):
        img.get(Item, tag=1)
    with pytest.raises(TypeError, match=r"User has no field 'mail' \(its fields: email, city\)"):
        img.get(User, mail="a")
    with pytest.raises(TypeError, match=r"User has no field 'town'"):
        img.find(User, town="a")
