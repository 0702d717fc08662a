"""Protection at rest: encryption, the integrity chain and compression, on every store."""

from __future__ import annotations

import json
import logging
import traceback
import warnings
from decimal import Decimal
from typing import Any

import pytest

import memimg
from memimg.core._protect import Protection, is_sealed
from memimg.stores import SnapshotRow
from memimg.stores._protocol import PROCESS_KEYS
from tests.conftest import Images, StoreFactory
from tests.models import Account, Bank
from tests.protection import (
    EDITS,
    INTEGRITY_KEY,
    KEY,
    OPTIONS,
    OTHER_KEY,
    SECRET,
    edit_snapshot,
    raw_bytes,
    raw_events,
    replace_events,
)


def _fill(img: memimg.MemoryImage) -> None:
    """A bank with a secret owner name, some history, a snapshot, and events after it."""
    img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
    for i in range(5):
        img.root.accounts["ada"].balance += 1
    img.root.accounts["ada"].tags.add("vip-" + SECRET)
    img.snapshot()
    img.root.accounts["bob"] = Account("bob", Decimal("7"))
    img.root.accounts["ada"].balance += 1000


def _check(img: memimg.MemoryImage) -> None:
    assert img.root.accounts["ada"].owner == SECRET
    assert img.root.accounts["ada"].balance == Decimal("1105")
    assert img.root.accounts["ada"].tags == {"vip-" + SECRET}
    assert img.root.accounts["bob"].balance == Decimal("7")


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_a_protected_image_round_trips_with_snapshots(make_image: Images, stores: StoreFactory, option: str) -> None:
    """Each option's image reopens to the same state, from the snapshot and the events after it, and a
    second image on the log follows the first's commits."""
    opts = OPTIONS[option]
    img = make_image(root=Bank, **opts)
    _fill(img)
    other = make_image(root=Bank, **opts)
    _check(other)
    img.root.accounts["ada"].balance += 1
    other.refresh()
    assert other.root.accounts["ada"].balance == Decimal("1106")
    img.close()
    other.close()
    again = make_image(root=Bank, **opts)
    assert again.root.accounts["ada"].balance == Decimal("1106")
    assert memimg.replay(again.events()).accounts["ada"].owner == SECRET


@pytest.mark.parametrize("option", ["encrypted", "all"])
def test_encrypted_values_and_type_names_are_absent_from_the_stored_bytes(
    make_image: Images, stores: StoreFactory, option: str
) -> None:
    """With an encryption key, no value, type name or field name appears in what the store keeps."""
    img = make_image(root=Bank, **OPTIONS[option])
    _fill(img)
    with img.transaction(meta={"user": "meta-" + SECRET}):
        img.root.name = "renamed"
    img.close()
    data = raw_bytes(stores)
    assert SECRET.encode() not in data
    assert b"tests.Bank" not in data and b"balance" not in data
    assert all(is_sealed(r.payload) for r in raw_events(stores.raw_store()))


def test_without_encryption_the_values_are_in_the_stored_bytes(make_image: Images, stores: StoreFactory) -> None:
    """The check above can fail: a plain or only chained log keeps its values readable."""
    img = make_image(root=Bank, **OPTIONS["chained"])
    _fill(img)
    img.close()
    assert SECRET.encode() in raw_bytes(stores)


def _snapshot_state(stores: StoreFactory) -> Any:
    store = stores.raw_store()
    return (
        raw_events(store),
        [(i.seq, bytes(store.read_snapshot(i.seq).payload)) for i in store.snapshots()],
        {k: v for k, v in store.meta().items() if not k.startswith(PROCESS_KEYS)},
    )


@pytest.mark.parametrize(
    ("first", "then", "says"),
    [
        ({"encryption_key": KEY}, {}, "give its encryption_key"),
        ({"encryption_key": KEY}, {"encryption_key": OTHER_KEY}, "is another"),
        ({"integrity_key": INTEGRITY_KEY}, {}, "give its integrity_key"),
        ({"integrity_key": INTEGRITY_KEY}, {"integrity_key": KEY}, "is another"),
        ({}, {"encryption_key": KEY}, "memimg rekey"),
        ({}, {"integrity_key": KEY}, "memimg rekey"),
    ],
)
def test_a_missing_wrong_or_unneeded_key_is_refused_and_nothing_changes(
    make_image: Images, stores: StoreFactory, first: dict[str, Any], then: dict[str, Any], says: str
) -> None:
    """Opening with the wrong key, without the log's key, or with a key for a plain log raises
    ProtectionError saying what to do, and leaves every row and meta entry as it was."""
    img = make_image(root=Bank, **first)
    _fill(img)
    img.close()
    before = _snapshot_state(stores)
    file_before = raw_bytes(stores) if stores.kind in ("sqlite", "ndjson") else None
    with pytest.raises(memimg.ProtectionError, match=says) as info:
        make_image(root=Bank, **then)
    assert KEY.hex() not in str(info.value) and INTEGRITY_KEY not in str(info.value)
    assert _snapshot_state(stores) == before
    if file_before is not None:
        assert raw_bytes(stores) == file_before
    _check(make_image(root=Bank, **first))


def test_a_malformed_key_is_refused_without_showing_it(tmp_path: Any) -> None:
    """A key of the wrong length is a ProtectionError naming its type and length, never its value."""
    with pytest.raises(memimg.ProtectionError, match="32 bytes") as info:
        memimg.open(str(tmp_path / "x.db"), encryption_key="not-a-key-" + SECRET)
    assert SECRET not in str(info.value)
    assert not (tmp_path / "x.db").exists()


def test_keys_given_as_base64_text_open_the_log_their_bytes_made(tmp_path: Any) -> None:
    """Both keys may be given as the base64 text of their 32 bytes: a log made with them opens with the same
    keys as bytes or hex, and the other way round."""
    import base64

    path = str(tmp_path / "bank.db")
    as_base64 = {
        "encryption_key": base64.b64encode(KEY).decode(),
        "integrity_key": base64.b64encode(bytes.fromhex(INTEGRITY_KEY)).decode(),
    }
    with memimg.open(path, root=Bank, **as_base64) as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
    with memimg.open(path, root=Bank, encryption_key=KEY.hex(), integrity_key=bytes.fromhex(INTEGRITY_KEY)) as img:
        assert img.root.accounts["ada"].owner == SECRET
        img.root.accounts["ada"].balance += 1
    with memimg.open(path, root=Bank, **as_base64) as img:
        assert img.root.accounts["ada"].balance == Decimal("101")


@pytest.mark.parametrize(
    "bad",
    [
        "c2VjcmV0LWxvdmVsYWNlLTQ3MTEtc2VjcmV0LWxvdmVsYWNl",  # base64 of 36 bytes
        "U0VDUkVULWxvdmVsYWNlLTQ3MTEtLS0tLS0tLS0tLS0t",  # base64 of 33 bytes
        "SECRET-lovelace-4711!!!!SECRET-lovelace-4711",  # neither base64 nor hex, base64's length
        "g" * 64,  # hex's length, not hex digits (and base64 of 48 bytes)
    ],
)
@pytest.mark.parametrize("which", ["encryption_key", "integrity_key"])
def test_a_malformed_base64_or_hex_key_is_refused_without_showing_it(tmp_path: Any, which: str, bad: str) -> None:
    """A key text that is neither the hex nor the base64 of 32 bytes is a ProtectionError saying what a key
    must be and how to make one; the text given is nowhere in the message, and nothing is created."""
    with pytest.raises(memimg.ProtectionError, match="must be 32 bytes.*base64.*secrets.token_hex") as info:
        memimg.open(str(tmp_path / "x.db"), root=Bank, **{which: bad})
    assert bad not in str(info.value) and "SECRET" not in str(info.value)
    assert not (tmp_path / "x.db").exists()


def test_a_key_for_a_log_that_is_compressed_only_says_to_rekey(tmp_path: Any) -> None:
    """Opening a log that has only compression with an encryption or integrity key is refused, the message
    naming ``memimg rekey`` (the way to add keys), and changes nothing."""
    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank, compression="zlib") as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
    before = open(path, "rb").read()
    for key in ({"encryption_key": KEY}, {"integrity_key": INTEGRITY_KEY}):
        with pytest.raises(memimg.ProtectionError, match=r"memimg rekey .*--new-.*-key-env NAME") as info:
            memimg.open(path, root=Bank, **key)
        assert "nothing was read or changed" in str(info.value)
    assert open(path, "rb").read() == before


def test_migrate_keeps_a_protected_log_protected_and_needs_its_keys(tmp_path: Any) -> None:
    """``memimg.migrate`` on a protected log needs its keys (without them: a ProtectionError, nothing
    written) and writes its snapshot sealed: no value in the clear, and the log opens with the keys."""
    path = str(tmp_path / "bank.db")
    keys = {"encryption_key": KEY, "integrity_key": INTEGRITY_KEY}
    with memimg.open(path, root=Bank, **keys) as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
    before = open(path, "rb").read()
    with pytest.raises(memimg.ProtectionError, match="give its encryption_key"):
        memimg.migrate(path, root=Bank)
    assert open(path, "rb").read() == before
    report = memimg.migrate(path, root=Bank, **keys)
    store = memimg.SQLiteStore(path)
    try:
        snapshot = store.read_snapshot(report.snapshot_seq)
        assert is_sealed(bytes(snapshot.payload)) and SECRET.encode() not in bytes(snapshot.payload)
    finally:
        store.close()
    with memimg.open(path, root=Bank, **keys) as img:
        assert img.root.accounts["ada"].owner == SECRET


def _tampered(make_image: Images, stores: StoreFactory, option: str, edit: Any) -> Any:
    img = make_image(root=Bank, snapshot_every=None, **OPTIONS[option])
    img.root.accounts["ada"] = Account("ada", Decimal("100"))
    for _ in range(6):
        img.root.accounts["ada"].balance += 1
    img.close()
    replace_events(stores, edit)
    with pytest.raises(memimg.CorruptLogError) as info:
        make_image(root=Bank, **OPTIONS[option])
    return info.value


@pytest.mark.parametrize("option", ["chained", "all"])
@pytest.mark.parametrize("how", sorted(EDITS))
def test_every_tampering_with_events_is_detected(
    make_image: Images, stores: StoreFactory, option: str, how: str
) -> None:
    """An edited, inserted, deleted, reordered or dropped event row -- its CRC-32 recomputed -- is a
    CorruptLogError at open under the integrity key."""
    err = _tampered(make_image, stores, option, EDITS[how])
    assert err.table == "memimg_events"


def test_an_edit_that_renumbers_nothing_passes_the_crc_alone(make_image: Images, stores: StoreFactory) -> None:
    """What the chain adds: without it, a forger's row whose CRC-32 is recomputed opens silently."""
    img = make_image(root=Bank, snapshot_every=None)
    img.root.accounts["ada"] = Account("ada", Decimal("100"))
    for _ in range(3):
        img.root.accounts["ada"].balance += 1
    img.close()
    replace_events(stores, lambda rows: [*rows[:2], rows[3]._replace(seq=3), rows[2]._replace(seq=4), *rows[4:]])
    make_image(root=Bank)  # opens: only a key can tell a forgery from a log


def test_an_edited_integrity_protected_value_is_detected(make_image: Images, stores: StoreFactory) -> None:
    """A balance of 101 made 901 in a chained (unencrypted) row is caught by its MAC."""
    img = make_image(root=Bank, snapshot_every=None, integrity_key=INTEGRITY_KEY)
    img.root.accounts["ada"] = Account("ada", Decimal("100"))
    img.root.accounts["ada"].balance += 1
    img.close()

    def edit(rows: list[Any]) -> list[Any]:
        assert b"101" in rows[-1].payload
        return [*rows[:-1], rows[-1]._replace(payload=rows[-1].payload.replace(b"101", b"901"))]

    replace_events(stores, edit)
    with pytest.raises(memimg.CorruptLogError, match="integrity MAC"):
        make_image(root=Bank, integrity_key=INTEGRITY_KEY)


@pytest.mark.parametrize("option", ["chained", "all"])
def test_an_edited_snapshot_is_detected_not_skipped(make_image: Images, stores: StoreFactory, option: str) -> None:
    """A snapshot whose bytes were edited (CRC-32 recomputed) is a CorruptLogError, not a damaged snapshot
    that recovery would skip."""
    img = make_image(root=Bank, **OPTIONS[option])
    _fill(img)
    img.close()
    edit_snapshot(stores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(memimg.CorruptLogError) as info:
            make_image(root=Bank, **OPTIONS[option])
    assert info.value.table == "memimg_snapshots"


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_compaction_erase_and_copy_keep_a_protected_log_whole(
    make_image: Images, stores: StoreFactory, option: str, tmp_path: Any
) -> None:
    """Compaction, erase (which re-chains the rows after the first it rewrites) and copy to another
    store leave a log that opens and verifies under the same keys."""
    opts = OPTIONS[option]
    img = make_image(root=Bank, **opts)
    _fill(img)
    img.erase(img.root.accounts["ada"], "balance", reason="test")
    img.root.accounts["ada"].balance += 1
    seq = img.snapshot()
    img.store.delete_events_before(seq)
    img.store.delete_snapshots_before(seq)
    img.root.accounts["ada"].balance += 1
    img.close()
    again = make_image(root=Bank, **opts)
    assert again.root.accounts["ada"].balance == Decimal("1107")
    assert again.seq > seq
    again.close()
    for dst in (str(tmp_path / "copy.db"), str(tmp_path / "copy.ndjson")):
        memimg.copy(stores.target(), dst, src_options=opts)
        with memimg.open(dst, root=Bank, **opts) as copied:
            assert copied.root.accounts["ada"].balance == Decimal("1107")


def test_compression_round_trips_and_a_log_may_mix_compressed_and_plain_rows(
    make_image: Images, stores: StoreFactory
) -> None:
    """Rows written before compression was turned on read beside compressed ones; the setting is stored,
    and a large payload and every snapshot are stored compressed (smaller)."""
    img = make_image(root=Bank)
    img.root.accounts["ada"] = Account("x" * 2000)
    img.close()
    img = make_image(root=Bank, compression="zstd")
    img.root.accounts["bob"] = Account("y" * 2000)
    img.snapshot()
    img.close()
    store = stores.raw_store()
    rows = raw_events(store)
    assert not is_sealed(rows[1].payload) and len(rows[1].payload) > 2000
    compressed = [r for r in rows[2:] if is_sealed(r.payload)]
    assert compressed and len(compressed[0].payload) < 500
    assert is_sealed(bytes(store.read_snapshot(store.snapshots()[0].seq).payload))
    assert '"compression":"zstd"' in store.meta()["protection"]
    img = make_image(root=Bank)  # compression is how rows are stored, not a key: readable without the option
    assert img.root.accounts["ada"].owner == "x" * 2000
    assert img.root.accounts["bob"].owner == "y" * 2000


def test_no_key_appears_in_reprs_errors_tracebacks_or_logs(
    make_image: Images, stores: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys are never shown: not in the store's or the protection's repr, nor in an error's message or
    traceback (locals included), nor in the log records written while opening, committing and failing."""
    caplog.set_level(logging.DEBUG)
    secrets = [
        KEY.hex()[:40],
        repr(KEY)[:40],
        INTEGRITY_KEY,
        bytes.fromhex(INTEGRITY_KEY).hex(),
        repr(bytes.fromhex(INTEGRITY_KEY)),
    ]
    img = make_image(root=Bank, encryption_key=KEY, integrity_key=INTEGRITY_KEY)
    _fill(img)
    texts = [repr(img), repr(img._engine.store), repr(img._engine.store.protection), str(img._engine.store.__dict__)]
    img.close()
    with pytest.raises(memimg.ProtectionError) as info:
        make_image(root=Bank, encryption_key=OTHER_KEY, integrity_key=INTEGRITY_KEY)
    texts.append(str(info.value))
    for frame, _ in traceback.walk_tb(info.value.__traceback__):
        if "/memimg/" in frame.f_code.co_filename:  # memimg's frames (the test's own holds the keys, of course)
            texts.extend(f"{name}={value!r}" for name, value in frame.f_locals.items())
    with pytest.raises(memimg.ProtectionError) as info:
        memimg.open(stores.path + ".x", encryption_key=KEY.hex()[:-2])
    for frame, _ in traceback.walk_tb(info.value.__traceback__):
        if "/memimg/" in frame.f_code.co_filename:
            texts.extend(f"{name}={value!r}" for name, value in frame.f_locals.items())
    texts.append(caplog.text)
    for text in texts:
        for secret in secrets:
            assert secret not in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Protection(encryption_key=KEY))


def test_a_row_put_back_from_before_an_erase_breaks_the_chain(make_image: Images, stores: StoreFactory) -> None:
    """An erase re-chains the rows after the first it rewrites: an old row put back in its place -- its own MAC
    valid, its seq the same -- no longer fits the chain, so the erased value cannot be restored unnoticed."""
    img = make_image(root=Bank, snapshot_every=None, integrity_key=INTEGRITY_KEY)
    img.root.accounts["ada"] = Account("ada", Decimal("100"))
    img.root.accounts["ada"].owner = "OLD-" + SECRET
    img.root.accounts["ada"].owner = "ada"
    img.root.accounts["ada"].balance += 1
    old = raw_events(stores.raw_store())
    img.erase(img.root.accounts["ada"], "owner", reason="test")
    img.close()
    k = next(i for i, r in enumerate(old) if b"OLD-" in r.payload)
    replace_events(stores, lambda rows: [*rows[:k], old[k], *rows[k + 1 :]])
    with pytest.raises(memimg.CorruptLogError, match="integrity chain"):
        make_image(root=Bank, integrity_key=INTEGRITY_KEY)


def _snapshot_log(img: memimg.MemoryImage, balance: str) -> int:
    img.root.accounts["ada"] = Account("ada", Decimal(balance))
    img.root.accounts["ada"].owner = "OLD-" + SECRET
    seq = img.snapshot()
    img.root.accounts["ada"].balance += 1
    return seq


@pytest.mark.parametrize("option", ["chained", "all"])
def test_a_snapshot_from_another_log_under_the_same_keys_is_refused_at_open(
    make_image: Images, stores: StoreFactory, option: str, tmp_path: Any
) -> None:
    """A snapshot row of another log sealed under the same keys (its own MAC valid, same seq) put in place of
    this log's snapshot is a CorruptLogError at open, not another state loaded."""
    opts = OPTIONS[option]
    img = make_image(root=Bank, snapshot_every=None, **opts)
    seq = _snapshot_log(img, "100")
    img.close()
    with memimg.open(str(tmp_path / "other.db"), root=Bank, snapshot_every=None, **opts) as other:
        assert _snapshot_log(other, "999999") == seq
        foreign = other.store.inner.read_snapshot(seq)
    stores.raw_store().write_snapshot(SnapshotRow(*foreign))
    with pytest.raises(memimg.CorruptLogError, match="snapshot at seq") as info:
        make_image(root=Bank, **opts)
    assert info.value.table == "memimg_snapshots" and info.value.tampered


def _put_back_a_snapshot_from_before_an_erase(make_image: Images, stores: StoreFactory, opts: dict[str, Any]) -> int:
    """A log (opened with *opts*) whose snapshot is put back, its own MAC valid, as it was before an erase
    rewrote it; its seq."""
    img = make_image(root=Bank, snapshot_every=None, **opts)
    seq = _snapshot_log(img, "100")
    old = stores.raw_store().read_snapshot(seq)
    img.erase(img.root.accounts["ada"], "owner", reason="test")
    img.close()
    stores.raw_store().write_snapshot(SnapshotRow(*old))
    return seq


@pytest.mark.parametrize("option", ["chained", "all"])
def test_a_snapshot_put_back_from_before_an_erase_is_refused_at_open(
    make_image: Images, stores: StoreFactory, option: str
) -> None:
    """An erase re-links the snapshots after the row it rewrites: the old snapshot put back (holding the erased
    value, its own MAC valid) is a CorruptLogError at open."""
    opts = OPTIONS[option]
    _put_back_a_snapshot_from_before_an_erase(make_image, stores, opts)
    with pytest.raises(memimg.CorruptLogError, match="snapshot at seq"):
        make_image(root=Bank, **opts)


def _nonce_of(stored: bytes) -> bytes:
    return stored[2:14]  # 0x00 | flags | nonce (12) | ciphertext + tag: encryption alone


def test_every_sealed_row_gets_a_nonce_of_its_own_also_across_fork() -> None:
    """AES-GCM nonces never repeat: not over many seals in one process, not between a forked child and its
    parent (which shared the nonce state at the fork)."""
    import os

    p = Protection(encryption_key=KEY)

    def nonces(n: int) -> list[bytes]:
        return [_nonce_of(p.seal(b"E", i, 1, 0, "obj.set", 1, b"{}", b"")[0]) for i in range(n)]

    before = nonces(5000)
    assert len(set(before)) == 5000
    child = _child_nonces(os.fork, lambda: nonces(200))
    assert len(child) == 200
    parent = nonces(200)
    assert len(set(before) | set(child) | set(parent)) == 5400


def _child_nonces(fork: Any, seal: Any) -> list[bytes]:
    """The nonces *seal* gives in a child made by *fork* (it writes them to a pipe and exits at once)."""
    import os

    read, write = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, b"".join(seal()))
        finally:
            os._exit(0)
    assert pid > 0
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return [data[i : i + 12] for i in range(0, len(data), 12)]


def test_a_child_forked_without_python_fork_hooks_seals_other_nonces_than_its_parent() -> None:
    """A child forked by libc's fork() itself (as a C server forks its workers, with no Python fork hooks run)
    seals other nonces than its parent: a commit's sealing call checks the pid its nonces were drawn in."""
    import ctypes

    p = Protection(encryption_key=KEY)

    def seal() -> list[bytes]:
        rows = [(i, 1, 0, "obj.set", 1, b"{}", 0) for i in range(1, 4)]
        return [_nonce_of(row[5]) for row in p.seal_events(rows, b"")[0]]

    seal()
    child = _child_nonces(ctypes.CDLL(None).fork, seal)
    assert len(child) == 3
    parent = [*seal(), _nonce_of(p.seal(b"E", 9, 1, 0, "obj.set", 1, b"{}", b"")[0])]
    assert not set(child) & set(parent)
    assert child[0][:8] != parent[0][:8]


def test_renew_nonces_draws_a_new_prefix_for_a_restored_process() -> None:
    """``renew_nonces()`` (for a process restored from a snapshot, whose pid can be the same) makes the next
    nonces use a new prefix."""
    p = Protection(encryption_key=KEY)
    before = _nonce_of(p.seal(b"E", 1, 1, 0, "obj.set", 1, b"{}", b"")[0])
    memimg.renew_nonces()
    after = _nonce_of(p.seal(b"E", 2, 1, 0, "obj.set", 1, b"{}", b"")[0])
    assert before[:8] != after[:8]


def test_the_nonce_prefix_is_drawn_anew_when_its_counter_runs_out() -> None:
    """After 2**32 - 1 nonces under one prefix, the next nonces have a new prefix, and none repeats."""
    import itertools

    from memimg.core._nonces import Nonces

    nonces = Nonces()
    prefix = nonces._state[0]
    nonces._state = (prefix, itertools.count(0xFFFF_FFFE), nonces._state[2])
    got = [nonces() for _ in range(3)]
    assert got[0] == prefix + (0xFFFF_FFFE).to_bytes(4, "little")
    assert got[1][:8] != prefix and got[2][:8] == got[1][:8] and len(set(got)) == 3


def test_sealing_rows_draws_a_new_nonce_prefix_when_the_counter_runs_out(monkeypatch: Any) -> None:
    """The sealing loop's own nonces (a commit's rows) change prefix too when the counter runs out."""
    import itertools

    from memimg.core import _protect

    prefix = _protect._nonce._state[0]
    pid = _protect._nonce._state[2]
    monkeypatch.setattr(_protect._nonce, "_state", (prefix, itertools.count(0xFFFF_FFFE), pid))
    rows = [(i, 1, 0, "obj.set", 1, b"{}", 0) for i in range(1, 4)]
    got = [_nonce_of(row[5]) for row in Protection(encryption_key=KEY).seal_events(rows, b"")[0]]
    assert got[0] == prefix + (0xFFFF_FFFE).to_bytes(4, "little")
    assert got[1][:8] != prefix and got[2][:8] == got[1][:8] and len(set(got)) == 3


def test_one_key_for_encryption_and_integrity_is_refused(tmp_path: Any) -> None:
    """The same 32 bytes given as encryption_key and integrity_key (in any spelling) are refused with an error
    that says to give two keys; nothing is created."""
    with pytest.raises(memimg.ProtectionError, match="same key"):
        Protection(encryption_key=KEY, integrity_key=KEY.hex())
    path = tmp_path / "bank.db"
    with pytest.raises(memimg.ProtectionError, match="two different keys"):
        memimg.open(str(path), root=Bank, encryption_key=KEY, integrity_key=KEY)
    assert not path.exists()


def test_meta_entry_macs_are_under_a_key_of_their_own_and_the_integrity_key_checks_them() -> None:
    """A meta entry's MAC (a rekey's pending entry) is under a key derived for it from the integrity key when
    there is one -- the same whatever the encryption key or the log, so ``memimg verify`` with the integrity
    key alone checks it -- else from the encryption key; it is not the chain's HMAC, differs under other keys,
    and a protection without keys has none. No key in it or in the protection's repr."""
    import hashlib
    import hmac

    message = b'{"from": {}, "to": {}}'
    both = Protection(encryption_key=KEY, integrity_key=INTEGRITY_KEY)
    mac = both.entry_mac(message)
    assert mac is not None and len(mac) == 64
    assert Protection(integrity_key=INTEGRITY_KEY).checking_macs_only().entry_mac(message) == mac
    assert both.for_log("ab" * 16).compressing("zlib").entry_mac(message) == mac
    assert Protection(encryption_key=KEY).entry_mac(message) not in (None, mac)
    assert Protection(encryption_key=OTHER_KEY).entry_mac(message) != Protection(encryption_key=KEY).entry_mac(message)
    assert Protection(compression="zlib").entry_mac(message) is None
    for key in (bytes.fromhex(INTEGRITY_KEY), KEY):  # not an HMAC under a log's key itself
        assert hmac.new(key, b"memimg meta entry\0" + message, hashlib.sha256).hexdigest() != mac
    assert KEY.hex() not in mac + repr(both) and INTEGRITY_KEY not in mac + repr(both)


def test_missing_cryptography_is_named_and_no_traceback_holds_the_key(monkeypatch: Any, tmp_path: Any) -> None:
    """Without the cryptography package, an encrypted open says to install memimg[crypto]; neither the error
    nor any exception chained to it has a frame whose locals hold the key."""
    import sys

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(memimg.ProtectionError, match=r"memimg\[crypto\]") as info:
        memimg.open(str(tmp_path / "bank.db"), root=Bank, encryption_key=KEY.hex())
    seen: list[BaseException] = []
    err: BaseException | None = info.value
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    for exc in seen:
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            if "/memimg/" in frame.f_code.co_filename:
                for value in frame.f_locals.values():
                    assert KEY.hex() not in repr(value) and repr(KEY) not in repr(value)


@pytest.mark.parametrize("options", [{}, {"compression": "zlib"}], ids=["no option", "zlib"])
def test_missing_zstandard_is_named_not_reported_as_damage(
    monkeypatch: Any, tmp_path: Any, options: dict[str, Any]
) -> None:
    """A log's zstd-compressed rows, read where the zstandard package cannot be imported -- the log opened
    with no compression option or with zlib, its setting zlib for the rows to come --, raise a
    ProtectionError saying to install memimg[zstd], not a CorruptLogError calling the rows damaged. (A zstd
    setting, stored or given, is refused with that error as the protection is made, before any row is read:
    no case here.)"""
    import sys

    from memimg.core import _protect

    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank, compression="zstd") as img:
        img.root.name = "compressible " * 100  # an event payload over COMPRESS_OVER, and a snapshot
        img.snapshot()
    with memimg.open(path, root=Bank, compression="zlib"):
        pass  # the log's setting is zlib from now on; its rows stay zstd-compressed
    store = memimg.SQLiteStore(path)
    assert json.loads(store.meta()["protection"])["compression"] == "zlib"
    store.close()
    monkeypatch.setitem(sys.modules, "zstandard", None)
    for cached in ("zc", "zd"):  # this thread's (de)compressor, made while zstandard was there
        monkeypatch.delattr(_protect._local, cached, raising=False)
    with pytest.raises(
        memimg.ProtectionError, match=r"needs the zstandard package: pip install 'memimg\[zstd\]'"
    ) as info:
        memimg.open(path, root=Bank, **options)
    assert not isinstance(info.value, memimg.CorruptLogError)
    assert any(entry.name == "_decompress" for entry in info.traceback)  # raised reading a row


@pytest.mark.parametrize("table", ["E", b"X", None])
def test_sealing_for_a_table_other_than_events_or_snapshots_is_refused(table: Any) -> None:
    """``seal`` and ``seal_events`` take ``b"E"`` (events) or ``b"S"`` (snapshots): any other table (the str
    ``"E"`` too) raises ValueError naming it, rather than sealing under another table's associated data."""
    p = Protection(encryption_key=KEY, integrity_key=INTEGRITY_KEY)
    with pytest.raises(ValueError, match=f"not {table!r}"):
        p.seal(table, 1, 1, 0, "obj.set", 1, b"{}", b"")
    with pytest.raises(ValueError, match=f"not {table!r}"):
        p.seal_events([(1, 1, 0, "obj.set", 1, b"{}", 0)], b"", table)
    assert p.seal(b"S", 1, 0, 0, "", 0, b"{}", b"")[0] != p.seal(b"E", 1, 0, 0, "", 0, b"{}", b"")[0]


@pytest.mark.parametrize("move", ["event to another seq", "snapshot into an event row"])
def test_an_encrypted_payload_moved_to_another_row_does_not_decrypt(
    make_image: Images, stores: StoreFactory, move: str
) -> None:
    """Encryption alone (no chain): a sealed payload moved to another row -- another seq, or from the snapshots
    table into the events table -- does not decrypt there (its row's columns and table are its associated
    data); CorruptLogError at open."""
    img = make_image(root=Bank, snapshot_every=None, encryption_key=KEY)
    img.root.accounts["ada"] = Account("ada", Decimal("100"))
    seq = img.snapshot()
    for _ in range(4):
        img.root.accounts["ada"].balance += 1
    img.close()
    store = stores.raw_store()
    snapshot_payload = bytes(store.read_snapshot(seq).payload)

    def edit(rows: list[Any]) -> list[Any]:
        if move == "event to another seq":  # same kind, same target: only the seq differs
            return [*rows[:-2], rows[-2]._replace(payload=rows[-1].payload), rows[-1]]
        return [*rows[:-1], rows[-1]._replace(payload=snapshot_payload)]

    replace_events(stores, edit)
    with pytest.raises(memimg.CorruptLogError, match="does not decrypt"):
        make_image(root=Bank, encryption_key=KEY)


def test_a_row_grafted_from_another_log_with_its_link_patched_fails_its_mac(
    make_image: Images, stores: StoreFactory, tmp_path: Any
) -> None:
    """A row's MAC covers its previous-MAC field: the tail of another log under the same key, its first row's
    link field patched to this log's MAC before it, does not open."""
    from memimg.core._protect import MAC_SIZE

    def build(img: memimg.MemoryImage, start: str) -> None:
        img.root.accounts["ada"] = Account("ada", Decimal(start))
        for _ in range(5):
            img.root.accounts["ada"].balance += 1

    img = make_image(root=Bank, snapshot_every=None, integrity_key=INTEGRITY_KEY)
    build(img, "100")
    img.close()
    other_path = str(tmp_path / "other.db")
    with memimg.open(other_path, root=Bank, snapshot_every=None, integrity_key=INTEGRITY_KEY) as other:
        build(other, "900000")
    other_store = memimg.SQLiteStore(other_path)
    theirs = raw_events(other_store)
    other_store.close()
    k = 4

    def graft(rows: list[Any]) -> list[Any]:
        mine_prev_mac = rows[k - 1].payload[2 + MAC_SIZE : 2 + 2 * MAC_SIZE]  # the MAC of my row k - 1
        first = theirs[k]
        patched = first.payload[:2] + mine_prev_mac + first.payload[2 + MAC_SIZE :]
        return [*rows[:k], first._replace(payload=patched), *theirs[k + 1 :]]

    replace_events(stores, graft)
    with pytest.raises(memimg.CorruptLogError, match="integrity MAC"):
        make_image(root=Bank, integrity_key=INTEGRITY_KEY)


def test_check_chain_refuses_a_snapshot_put_back_from_before_an_erase(make_image: Images, stores: StoreFactory) -> None:
    """The whole-log check (what ``memimg verify`` runs first) names a snapshot whose link is not its event's
    MAC (its own MAC valid: this log's snapshot from before an erase re-chained it)."""
    from memimg.stores._protected import protect

    opts = OPTIONS["chained"]
    seq = _put_back_a_snapshot_from_before_an_erase(make_image, stores, opts)
    checked = protect(stores.raw_store(), Protection(integrity_key=INTEGRITY_KEY))
    with pytest.raises(memimg.CorruptLogError, match=f"snapshot at seq {seq} does not belong") as info:
        checked.check_chain()  # type: ignore[attr-defined]
    assert info.value.seq == seq


@pytest.mark.parametrize("option", ["chained", "all"])
def test_history_does_not_skip_a_deleted_row_before_the_newest_snapshot(
    make_image: Images, stores: StoreFactory, option: str
) -> None:
    """Open checks the chain from the newest snapshot on; history reads older rows and checks the chain across
    the range it reads: an event deleted before the snapshot is a CorruptLogError in history, not a silently
    shorter history. Without a deletion, history is whole."""
    opts = OPTIONS[option]
    img = make_image(root=Bank, snapshot_every=None, **opts)
    img.root.accounts["ada"] = Account("ada", Decimal("100"))
    img.root.accounts["bob"] = Account("bob", Decimal("1"))
    for _ in range(4):
        img.root.accounts["ada"].balance += 1
        img.root.accounts["bob"].balance += 1
    img.snapshot()
    img.root.accounts["bob"].balance += 1
    changes = list(img.history(img.root.accounts["ada"], "balance"))
    assert len(changes) == 4
    victim = changes[1].seq
    img.close()
    replace_events(stores, lambda rows: [r for r in rows if r.seq != victim])
    if stores.kind == "ndjson":  # its lines are numbered from the header's first seq: the file itself is refused
        with pytest.raises(memimg.CorruptLogError, match="a line is missing"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_image(root=Bank, **opts)
        return
    img = make_image(root=Bank, **opts)  # opens: the deleted row is before the snapshot it loads
    with pytest.raises(memimg.CorruptLogError, match="missing") as info:
        for account in ("ada", "bob"):
            list(img.history(img.root.accounts[account], "balance"))
    assert info.value.seq == victim and info.value.tampered


def _six_commits(img: memimg.MemoryImage, start: str) -> None:
    img.root.accounts["ada"] = Account("ada", Decimal(start))
    for _ in range(5):
        img.root.accounts["ada"].balance += 1


@pytest.mark.parametrize("option", ["encrypted", "chained", "all"])
def test_the_rows_of_another_log_under_the_same_keys_do_not_open(
    make_image: Images, stores: StoreFactory, option: str, tmp_path: Any
) -> None:
    """Each log gets a random id at creation, bound into every row's associated data and MAC and the chain's
    start: another log's rows under the same keys put in place of this log's (all of them, or a copy's
    divergent tail grafted on) are a CorruptLogError at open."""
    opts = OPTIONS[option]
    img = make_image(root=Bank, snapshot_every=None, **opts)
    _six_commits(img, "100")
    img.close()
    other_path = str(tmp_path / "other.db")
    with memimg.open(other_path, root=Bank, snapshot_every=None, **opts) as other:
        _six_commits(other, "900000")
    copy_path = str(tmp_path / "copy.db")
    memimg.copy(stores.target(), copy_path, src_options=opts)
    with memimg.open(copy_path, root=Bank, snapshot_every=None, **opts) as copied:
        copied.root.accounts["ada"].balance += 900000
    for path, keep in ((other_path, 0), (copy_path, 6)):
        store = memimg.SQLiteStore(path)
        foreign = raw_events(store)
        store.close()
        mine = raw_events(stores.raw_store())
        replace_events(stores, lambda rows: [*rows[:keep], *foreign[keep:]])
        with pytest.raises(memimg.CorruptLogError, match="integrity MAC|does not decrypt"):
            make_image(root=Bank, **opts)
        replace_events(stores, lambda rows: mine)
    with memimg.open(stores.target(), root=Bank, **opts) as again:
        assert again.root.accounts["ada"].balance == Decimal("105")


def test_a_log_protected_before_log_ids_still_opens_and_a_rekey_gives_it_one(tmp_path: Any, monkeypatch: Any) -> None:
    """A protected log whose settings hold no log id (written before ids) opens, takes commits and verifies as
    before; a rekey seals it anew under an id of its own."""
    import memimg.stores._protected as protected

    path = str(tmp_path / "old.db")
    opts = OPTIONS["all"]
    monkeypatch.setattr(protected, "new_log_id", lambda: None)
    with memimg.open(path, root=Bank, **opts) as img:
        _six_commits(img, "100")
    monkeypatch.undo()
    store = memimg.SQLiteStore(path)
    assert "log_id" not in store.meta()["protection"] or '"log_id":null' in store.meta()["protection"]
    store.close()
    with memimg.open(path, root=Bank, **opts) as img:
        img.root.accounts["ada"].balance += 1
    new = {**opts, "encryption_key": OTHER_KEY}
    memimg.rekey(path, old_options=opts, new_options=new)
    store = memimg.SQLiteStore(path)
    assert '"log_id":"' in store.meta()["protection"]
    store.close()
    with memimg.open(path, root=Bank, **new) as img:
        assert img.root.accounts["ada"].balance == Decimal("106")
