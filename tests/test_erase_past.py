"""Erasure: what is past -- unreachable objects, replaced and nested collections, values holding references,
fields no longer declared, equal dict keys, list history compacted away -- and the command line's requests."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import attrs
import pytest

import memimg
from memimg.cli._verify import _verify
from tests.conftest import Images
from tests.test_erase import Person, rows_intact, stored_bytes
from tests.versions import Versions


@attrs.frozen
class Contact:
    email: str
    owner: Any


memimg.converter.register_value(Contact)


def reopened_and_replayed(make_image: Images, img: memimg.MemoryImage, capsys: Any) -> tuple[Any, Any]:
    """Close *img*; the root as reopened, and as replayed from the first event; verify passes."""
    img.close()
    store = make_image.store()
    rows_intact(store)
    capsys.readouterr()
    _verify(store)
    assert "equal the replayed state" in capsys.readouterr().out
    again = make_image()
    return again.root, memimg.replay(again.events())


def test_an_object_deleted_from_the_graph_loses_every_stored_value(make_image: Images, capsys: Any) -> None:
    """The usual request: the customer was deleted (``del root[...]``), then erased. It has no current value:
    every stored value of it goes, its values' current ones too; the graph reopens and replays the same."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(name="ADA-NAME", ssn="ADA-SSN", emails=["ADA-MAIL"])
    img.root["bob"] = Person(name="bob")
    img.snapshot()
    del img.root["ada"]
    result = img.erase(ada, reason="GDPR 1")
    assert result.erased >= 3 and result.current == 0
    assert "no past value" not in result.note
    root, replayed = reopened_and_replayed(make_image, img, capsys)
    data = stored_bytes(make_image.store())
    assert b"ADA-NAME" not in data and b"ADA-SSN" not in data and b"ADA-MAIL" not in data
    assert set(root) == set(replayed) == {"bob"}


def test_an_object_forgotten_by_a_snapshot_is_erased_by_its_id(make_image: Images, capsys: Any) -> None:
    """Once a snapshot forgot an unreachable object, it is erased by its object id, read from the log; an id
    the log never held is refused with nothing changed."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(ssn="ADA-SSN")
    oid = ada._mi_oid
    del img.root["ada"]
    img.snapshot()  # gc.drop forgets it
    with pytest.raises(memimg.MemimgError, match="not in the image"):
        img.erase(ada, reason="r")
    with pytest.raises(memimg.MemimgError, match="holds nothing of it"):
        img.erase(999, reason="r")
    result = img.erase(oid, reason="GDPR 2")
    assert result.type_name == "tests.test_erase.Person" and result.erased >= 1
    reopened_and_replayed(make_image, img, capsys)
    assert b"ADA-SSN" not in stored_bytes(make_image.store())


def test_replaced_collections_and_referred_objects_no_longer_reachable_are_erased(
    make_image: Images, capsys: Any
) -> None:
    """A list or dict replaced by another, and an entity a field no longer refers to, are unreachable: the
    references to them stay in the past values, and everything they stored goes."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(emails=["OLD-MAIL"], notes={"k": "OLD-NOTE"}, friend=Person(ssn="BOB-SSN"))
    img.snapshot()
    ada.emails = ["NEW-MAIL"]
    ada.notes = {"k": "NEW-NOTE"}
    ada.friend = None
    result = img.erase(ada, reason="GDPR 3")
    assert len(result.followed) >= 3
    root, replayed = reopened_and_replayed(make_image, img, capsys)
    data = stored_bytes(make_image.store())
    for gone in (b"OLD-MAIL", b"OLD-NOTE", b"BOB-SSN"):
        assert gone not in data
    assert b"NEW-MAIL" in data and b"NEW-NOTE" in data
    for r in (root, replayed):
        assert list(r["ada"].emails) == ["NEW-MAIL"] and dict(r["ada"].notes) == {"k": "NEW-NOTE"}


def test_nested_collections_lose_what_they_no_longer_hold(make_image: Images, capsys: Any) -> None:
    """A list inside a dict the entity holds is followed too: its removed items go, its items stay."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(notes={"k": ["GONE-ITEM", "KEPT-ITEM"]})  # type: ignore[dict-item]
    ada.notes["k"].remove("GONE-ITEM")  # type: ignore[attr-defined]
    img.erase(ada, reason="GDPR 4")
    root, replayed = reopened_and_replayed(make_image, img, capsys)
    data = stored_bytes(make_image.store())
    assert b"GONE-ITEM" not in data and b"KEPT-ITEM" in data
    assert list(root["ada"].notes["k"]) == list(replayed["ada"].notes["k"]) == ["KEPT-ITEM"]


def test_a_past_value_holding_a_reference_keeps_only_the_reference(make_image: Images, capsys: Any) -> None:
    """A past tuple or value object that holds a reference next to personal data: the data goes, the
    reference stays (replay still links the objects)."""
    img = make_image(root=dict)
    img.root["ada"] = ada = Person(name="ada")
    img.root["bob"] = bob = Person(name="bob")
    bob.friend = ("SECRET-PHONE", ada)  # type: ignore[assignment]
    bob.friend = Contact("SECRET-MAIL", ada)  # type: ignore[assignment]
    bob.friend = ("NEW-PHONE", ada)  # type: ignore[assignment]
    result = img.erase(bob, "friend", reason="GDPR 5")
    assert result.erased == 3  # the None it was created with, the tuple and the value object
    root, replayed = reopened_and_replayed(make_image, img, capsys)
    data = stored_bytes(make_image.store())
    assert b"SECRET-PHONE" not in data and b"SECRET-MAIL" not in data and b"NEW-PHONE" in data
    assert root["bob"].friend[1] is root["ada"] and replayed["bob"].friend[1] is replayed["ada"]
    past = [memimg.replay(e for e in make_image().events() if e.seq <= s).get("bob") for s in (4, 5)]
    assert past[0].friend == (memimg.ERASED, past[0].friend[1]) and past[0].friend[1].name == "ada"


def test_equal_dict_keys_stored_differently_are_one_key(make_image: Images, capsys: Any) -> None:
    """``1``, ``True`` and ``1.0`` are one dict key: the values written under each spelling before the
    current one are past."""
    img = make_image(root=dict)
    img.root["d"] = {}
    d = img.root["d"]
    d[1] = "OLD-ONE"
    d[True] = "OLD-TRUE"
    d[1.0] = "NEW-VALUE"
    assert img.erase(d, reason="GDPR 6").erased == 2
    reopened_and_replayed(make_image, img, capsys)
    data = stored_bytes(make_image.store())
    assert b"OLD-ONE" not in data and b"OLD-TRUE" not in data and b"NEW-VALUE" in data


def test_list_events_with_no_known_start_keep_their_values(sqlite_path: str) -> None:
    """After a compaction kept events but neither the list's creation nor a snapshot before them (as memimg
    compacted before 0.4), the list events before the next snapshot cannot be placed: their values are kept
    and reported, never an exception, never a current item erased."""
    img = memimg.open(sqlite_path, root=dict, snapshot_every=None)
    img.root["ada"] = ada = Person(emails=["MAIL-A", "MAIL-B", "MAIL-C"])
    for i in range(20):
        img.root[f"pad{i}"] = i
    ada.emails.append("MAIL-CURRENT")
    ada.emails[2] = "MAIL-D"
    del ada.emails[0]
    # compacted as memimg did before it kept a snapshot where kept history starts: a snapshot at the head,
    # the last few events, nothing before them
    img.snapshot()
    img.store.delete_events_before(img.seq - 4)
    img.store.delete_snapshots_before(img.seq)
    img.close()
    img = memimg.open(sqlite_path, snapshot_every=None)
    result = img.erase(img.root["ada"], "emails", reason="GDPR 7")
    assert any("position is unknown" in n for n in result.not_erased)
    img.close()
    img = memimg.open(sqlite_path)
    assert list(img.root["ada"].emails) == ["MAIL-B", "MAIL-D", "MAIL-CURRENT"]
    img.close()
    store = memimg.SQLiteStore(sqlite_path)
    assert b"MAIL-CURRENT" in stored_bytes(store) and b"MAIL-D" in stored_bytes(store)
    store.close()


def test_fields_no_longer_declared_are_erased(versions: Versions) -> None:
    """Values stored under a removed field's name go with ``field=None`` or by that name; named another
    field, the result lists them as not erased."""
    versions.record(
        """
        @persistent(name="{P}.Person")
        class Person:
            name: str = ""
            ssn: str = ""
        """,
        """
        img = memimg.open(path, root=dict, snapshot_every=None)
        img.root["ada"] = models.Person(name="ada", ssn="SSN-OF-ADA")
        img.snapshot()
        img.close()
        """,
    )
    new = versions.load(
        """
        @persistent(name="{P}.Person", removed=("ssn",))
        class Person:
            name: str = ""
        """
    )
    img = memimg.open(versions.path, root=dict, snapshot_every=None)
    ada = img.root["ada"]
    assert type(ada) is new.Person
    result = img.erase(ada, "name", reason="r")
    assert any("ssn" in n for n in result.not_erased)
    assert img.erase(ada, "ssn", reason="GDPR 8").erased >= 1
    img.close()
    store = memimg.SQLiteStore(versions.path)
    assert b"SSN-OF-ADA" not in stored_bytes(store)
    store.close()


@pytest.fixture
def versions(tmp_path: Any) -> Versions:
    return Versions(tmp_path)


def test_the_command_line_refuses_an_empty_field_and_erases_a_forgotten_id(sqlite_path: str) -> None:
    """``OID.`` (an empty field) is refused with nothing changed; an id no longer in the image is erased
    from the log."""
    img = memimg.open(sqlite_path, root=dict, snapshot_every=None)
    img.root["ada"] = ada = Person(name="OLD-NAME", ssn="OLD-SSN")
    ada.name = "NEW-NAME"
    img.root["gone"] = gone = Person(ssn="GONE-SSN")
    oid, gone_oid = ada._mi_oid, gone._mi_oid
    del img.root["gone"]
    img.snapshot()
    head = img.seq
    img.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "memimg", "erase", sqlite_path, *args], capture_output=True, text=True
        )

    out = cli(f"{oid}.", "--reason", "GDPR 9")
    assert out.returncode != 0 and "is not OID or OID.FIELD" in out.stderr
    store = memimg.SQLiteStore(sqlite_path)
    assert b"OLD-NAME" in stored_bytes(store) and store.head() == head
    store.close()
    out = cli(str(gone_oid), "--reason", "GDPR 9")
    assert out.returncode == 0, out.stderr
    store = memimg.SQLiteStore(sqlite_path)
    assert b"GONE-SSN" not in stored_bytes(store) and b"OLD-NAME" in stored_bytes(store)
    store.close()
