"""Identity and reachability: object ids, sharing, cycles, attaching, collection."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import memimg
from tests.conftest import Images
from tests.models import Account, Bank, Box, Entry, Node


def reopened(make_image: Images, **kw: Any) -> Any:
    return make_image(**kw).root


def test_shared_references_stay_shared(make_image: Images) -> None:
    """a.friend is b.friend after recovery iff it was before."""
    img = make_image(root=Box)
    shared = Entry("shared")
    img.root.content = [Node(value=shared), Node(value=shared), Node(value=Entry("shared"))]
    img.close()
    nodes = reopened(make_image, root=Box).content
    assert nodes[0].value is nodes[1].value
    assert nodes[0].value is not nodes[2].value


@pytest.mark.parametrize("snapshot", [False, True], ids=["log", "snapshot"])
def test_every_cycle_shape_survives(make_image: Images, snapshot: bool) -> None:
    """Self-reference, mutual references, a list in itself, a dict holding its owner."""
    img = make_image(root=Box)
    me = Node("me")
    me.next = me
    a, b = Node("a"), Node("b")
    a.next, b.next = b, a
    lst: list[Any] = [1]
    lst.append(lst)
    owner = Node("owner")
    owner.meta = {"me": owner, "kids": [owner]}
    img.root.content = {"self": me, "mutual": a, "list": lst, "owner": owner}
    img.root.content["list"].append(img.root.content["list"])
    if snapshot:
        img.snapshot()
    img.close()
    c = reopened(make_image, root=Box).content
    assert c["self"].next is c["self"]
    assert c["mutual"].next.next is c["mutual"] and c["mutual"].next.value == "b"
    assert c["list"][1] is c["list"] and c["list"][2] is c["list"]
    assert c["owner"].meta["me"] is c["owner"] and c["owner"].meta["kids"][0] is c["owner"]


def test_attach_records_the_whole_subgraph_in_one_event(make_image: Images) -> None:
    """Assigning a new object graph is one event carrying every new object."""
    img = make_image(root=Bank)
    acct = Account("ada", entries=[Entry("a"), Entry("b")], tags={"x"})
    seq = img.seq
    img.root.accounts["ada"] = acct
    events = list(img.events(since=seq))
    assert [e.kind for e in events] == ["dict.set"]
    types = sorted(rec[1] for rec in events[0].objects)
    assert types == ["list", "set", "tests.models.Account", "tests.models.Entry", "tests.models.Entry"]


def test_object_ids_are_stable_and_not_paths(make_image: Images) -> None:
    """Moving an object does not change its id; events address ids."""
    img = make_image(root=Box)
    e = Entry("e")
    img.root.content = [e]
    oid = e._mi_oid
    img.root.other = e
    img.root.content.clear()
    e.label = "moved"
    assert e._mi_oid == oid
    assert list(img.events())[-1].target == oid
    again = memimg.replay(img.events())
    assert again.other.label == "moved"


def test_ids_are_a_function_of_the_log(make_image: Images) -> None:
    """Replaying gives every object the id it had."""
    img = make_image(root=Bank)
    img.root.accounts["a"] = Account("a", entries=[Entry("x")])
    ids = {img.root.accounts["a"]._mi_oid, img.root.accounts["a"].entries._mi_oid}
    img.close()
    root = reopened(make_image, root=Bank)
    assert {root.accounts["a"]._mi_oid, root.accounts["a"].entries._mi_oid} == ids


def test_detached_then_reattached_after_a_snapshot(make_image: Images) -> None:
    """An object dropped from the graph, snapshotted away, then put back, comes back whole."""
    img = make_image(root=Box)
    kept = Node("kept", children=[Entry("child")])
    img.root.content = kept
    img.root.content = None
    kept.value = "changed while detached?"  # still attached to the image until collected
    img.snapshot()  # collects `kept`: it is unreachable
    assert kept._mi_img is None
    kept.value = "changed while free"
    img.root.other = kept
    kept.children.append(Entry("later"))
    img.close()
    back = reopened(make_image, root=Box).other
    assert back.value == "changed while free"
    assert [c.label for c in back.children] == ["child", "later"]


def test_detached_object_changes_before_collection_are_logged(make_image: Images) -> None:
    """Until a snapshot collects it, a detached object is still part of the image."""
    img = make_image(root=Box)
    e = Entry("e")
    img.root.content = e
    img.root.content = None
    seq = img.seq
    e.label = "x"
    assert img.seq == seq + 1
    img.root.other = e
    img.close()
    assert reopened(make_image, root=Box).other.label == "x"


def test_collect_forgets_unreachable_objects(make_image: Images) -> None:
    """A snapshot writes only reachable objects and forgets the rest."""
    img = make_image(root=Box)
    img.root.content = [Entry(str(i)) for i in range(5)]
    gone = img.root.content
    img.root.content = None
    img.snapshot()
    assert gone._mi_img is None and all(e._mi_img is None for e in gone)
    assert img._engine.table.live_count() == 1  # the root


def test_belongs_to_another_image(make_image: Images) -> None:
    """An object of one image cannot be stored in another (here an image of another log)."""
    one, two = make_image(root=Box), memimg.open(root=Box)
    one.root.content = Entry("mine")
    with pytest.raises(memimg.UnsupportedValueError, match="another image"):
        two.root.content = one.root.content
    with pytest.raises(memimg.UnsupportedValueError, match="another image"):
        two.root.other = one.root


def test_free_standing_objects_are_untracked() -> None:
    """Objects not reachable from an image are plain attrs objects."""
    e = Entry("x")
    e.label = "y"
    assert e._mi_img is None and e.label == "y"


def test_replay_is_deterministic(make_image: Images) -> None:
    """The same log always gives an equal graph, with the same ids."""
    img = make_image(root=Bank)
    for i in range(5):
        img.root.accounts[str(i)] = Account(str(i), tags={str(i)})
    events = list(img.events())
    a, b = memimg.replay(events), memimg.replay(events)
    live = memimg.deserialize(memimg.serialize(img.root))
    assert memimg.serialize(a) == memimg.serialize(b) == memimg.serialize(live)


def test_long_chains_do_not_recurse(make_image: Images) -> None:
    """A linked list of 50,000 new nodes attaches, snapshots and reloads."""
    img = make_image(root=Box)
    head = None
    for i in range(50_000):
        head = Node(i, next=head)
    img.root.content = head
    img.snapshot()
    img.close()
    node = reopened(make_image, root=Box).content
    n = 0
    while node is not None:
        n += 1
        node = node.next
    assert n == 50_000


class Unencodable:
    """A registered value type whose unstructure hook fails: a commit holding one fails while encoding."""


def _refuse(_: Any) -> Any:
    raise ValueError("this value cannot be encoded")


memimg.converter.register_value(
    Unencodable, name="identity.Unencodable", unstructure=_refuse, structure=lambda d, t: t()
)


def test_objects_of_a_failed_commit_are_attached_again_by_the_next_one(make_image: Images) -> None:
    """A commit that fails while encoding leaves its new objects free-standing: attached again by a
    later commit, such an object survives the next snapshot's collection and its changes are logged."""
    img = make_image(root=Box)
    first = Box("first")
    with pytest.raises(memimg.MemimgError, match="nothing was changed"):
        with img.transaction():
            img.root.content = first
            img.root.other = Unencodable()  # accepted at the assignment, fails while encoding the commit
    img.root.other = first  # attach it again, for real
    img.snapshot()
    first.other = "must persist"
    img.close()
    with make_image(root=Box) as again:
        assert again.root.other.other == "must persist"


def test_a_collection_by_another_image_keeps_what_is_reachable_here(make_image: Images) -> None:
    """A snapshot that loses the race to append catches up with the other image's collection event,
    which forgets only what that image found unreachable: objects reachable here stay attached and
    their changes are logged."""
    a = make_image(root=dict)
    b = make_image(root=dict)
    b.root["x"] = Box("garbage")
    b.root["x"] = None  # an unreachable object in b's table
    a.refresh()
    a.root["fresh"] = Box("fresh")
    a.snapshot()  # a's collection event
    b.snapshot()  # b is behind: it catches up with a's collection event, then snapshots
    b.root["fresh"].other = "changed in b"
    with make_image(root=dict) as c:
        assert c.root["fresh"].other == "changed in b"


def _chain(n: int) -> list[Node]:
    """*n* new nodes, each pointing at the next and holding a plain list and a plain dict."""
    nodes = [Node(value=f"n{i}", children=[i, f"c{i}"], meta={"i": i}) for i in range(n)]
    for a, b in itertools.pairwise(nodes):
        a.next = b
    return nodes


def test_a_failed_or_discarded_attach_of_many_objects_leaves_each_as_it_was(make_image: Images) -> None:
    """An attach of many new objects that fails (a bad value in the last one) or whose transaction is discarded
    leaves every one of them free-standing, its plain containers its own again, the image and log as they
    were; the same graph then attaches and reopens whole."""
    img = make_image(root=Box)
    nodes = _chain(500)
    lists = [node.children for node in nodes]
    nodes[-1].meta["bad"] = lambda: 0
    seq = img.seq
    with pytest.raises(memimg.UnsupportedValueError, match=r"Box\.content(\.next)+\.meta\['bad'\]"):
        img.root.content = nodes[0]
    assert img.seq == seq and img.root.content is None
    assert all(node._mi_img is None and node._mi_oid is None for node in nodes)
    assert all(node.children is plain and type(plain) is list for node, plain in zip(nodes, lists))
    assert all(type(node.meta) is dict for node in nodes)
    del nodes[-1].meta["bad"]
    with img.transaction() as tx:
        img.root.content = nodes[0]
        assert nodes[-1]._mi_img is not None
        tx.discard()
    assert img.seq == seq and img.root.content is None
    assert all(node._mi_img is None and node.children is plain for node, plain in zip(nodes, lists))
    img.root.content = nodes[0]
    img.close()
    node, count = reopened(make_image, root=Box).content, 0
    while node is not None:
        assert node.value == f"n{count}" and node.children == [count, f"c{count}"] and node.meta == {"i": count}
        node, count = node.next, count + 1
    assert count == 500


def test_an_entity_with_an_unset_field_has_its_other_fields_attached(make_image: Images) -> None:
    """A new entity one of whose fields is unset (deleted) is attached field by field: what its set fields
    hold is stored (plain containers become tracked ones), the unset field stays unset, after reopening too."""
    img = make_image(root=Box)
    node = Node(value=Entry("kept"), children=[Entry("a"), [1, 2]])
    del node.meta
    img.root.content = node
    assert type(node.children) is not list and node.children[0]._mi_img is not None
    with pytest.raises(AttributeError):
        node.meta
    img.close()
    again = reopened(make_image, root=Box).content
    assert again.value.label == "kept" and again.children[0].label == "a" and again.children[1] == [1, 2]
    with pytest.raises(AttributeError):
        again.meta
