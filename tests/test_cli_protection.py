"""The command line on protected logs: keys from the environment, the chain checked, truncation caught."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

import memimg
from memimg.cli import cli
from tests.conftest import POSTGRES_URL, STORE_KINDS, StoreFactory
from tests.models import Account, Bank
from tests.protection import EDITS, INTEGRITY_KEY, KEY, OTHER_KEY, SECRET, edit_snapshot, replace_events

ENV = {"MEMIMG_ENCRYPTION_KEY": KEY.hex(), "MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY}
_KEYS = {"encryption_key": KEY, "integrity_key": INTEGRITY_KEY}


def _log(path: str) -> None:
    with memimg.open(path, root=Bank, encryption_key=KEY, integrity_key=INTEGRITY_KEY) as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
        for _ in range(5):
            img.root.accounts["ada"].balance += 1


def test_info_prints_the_protection_and_the_head_mac_never_a_key(tmp_path: Any) -> None:
    """``memimg info`` shows cipher, key fingerprints and the head MAC; the keys themselves appear nowhere."""
    path = str(tmp_path / "bank.db")
    _log(path)
    result = CliRunner().invoke(cli, ["info", path], env=ENV)
    assert result.exit_code == 0, result.output
    assert "aes-256-gcm" in result.output and re.search(r"head MAC:\s+[0-9a-f]{64}", result.output)
    assert KEY.hex() not in result.output and INTEGRITY_KEY not in result.output
    result = CliRunner().invoke(cli, ["info", path], env={})
    assert result.exit_code == 1 and "give its encryption_key" in result.output


def test_the_key_options_name_the_variables_the_keys_are_read_from(tmp_path: Any) -> None:
    """``--encryption-key-env NAME`` and ``--integrity-key-env NAME`` (before the command or after it) read
    the keys from those variables instead of the default ones; a variable named but not set is an error
    naming it, and no key appears in any output."""
    path = str(tmp_path / "bank.db")
    _log(path)
    env = {"MEMIMG_ENCRYPTION_KEY": OTHER_KEY.hex(), "MY_KEY": KEY.hex(), "MY_INTEGRITY_KEY": INTEGRITY_KEY}
    named = ["--encryption-key-env", "MY_KEY", "--integrity-key-env", "MY_INTEGRITY_KEY"]
    runner = CliRunner()
    result = runner.invoke(cli, [*named, "info", path], env=env)
    assert result.exit_code == 0 and "aes-256-gcm" in result.output, result.output
    result = runner.invoke(cli, ["verify", path, *named], env=env)
    assert result.exit_code == 0 and "integrity chain: ok" in result.output, result.output
    result = runner.invoke(cli, ["info", path, "--integrity-key-env", "MY_INTEGRITY_KEY"], env=env)
    assert result.exit_code == 1 and "is another" in result.output  # the default variable's key: not the log's
    result = runner.invoke(cli, ["--encryption-key-env", "UNSET_KEY_VARIABLE", "info", path], env=env)
    assert result.exit_code == 1, result.output
    assert "environment variable UNSET_KEY_VARIABLE" in result.output and "is not set" in result.output
    for output in (result.output, runner.invoke(cli, [*named, "info", path], env=env).output):
        assert KEY.hex() not in output and OTHER_KEY.hex() not in output and INTEGRITY_KEY not in output


def test_verify_checks_the_chain_and_the_expected_head(tmp_path: Any) -> None:
    """``memimg verify`` with the integrity key checks the chain; ``--expect-head``/``--expect-mac`` catch
    the newest rows cut off, which the chain alone cannot show."""
    path = str(tmp_path / "bank.db")
    _log(path)
    runner = CliRunner()
    info = runner.invoke(cli, ["info", path], env=ENV).output
    head_mac = re.search(r"head MAC:\s+([0-9a-f]{64}) \(seq (\d+)", info)
    assert head_mac is not None
    mac, seq = head_mac.group(1), head_mac.group(2)
    result = runner.invoke(cli, ["verify", path, "--expect-head", seq, "--expect-mac", mac], env=ENV)
    assert result.exit_code == 0, result.output
    assert "integrity chain: ok" in result.output and "expected head: ok" in result.output
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM memimg_events WHERE seq = (SELECT max(seq) FROM memimg_events)")
    conn.close()
    result = runner.invoke(cli, ["verify", path], env=ENV)
    assert result.exit_code == 0, result.output  # a shorter chain is still a chain
    result = runner.invoke(cli, ["verify", path, "--expect-head", seq, "--expect-mac", mac], env=ENV)
    assert result.exit_code == 1 and "before the expected seq" in result.output


def test_verify_names_a_tampered_row(tmp_path: Any) -> None:
    """A row whose stored bytes were changed (CRC-32 recomputed) fails ``memimg verify`` naming its seq."""
    from memimg.core._rows import event_checksum

    path = str(tmp_path / "bank.db")
    _log(path)
    conn = sqlite3.connect(path)
    with conn:
        row = conn.execute("SELECT seq, tx, ts, kind, target, payload FROM memimg_events WHERE seq = 3").fetchone()
        payload = bytearray(row[5])
        payload[-1] ^= 1
        conn.execute(
            "UPDATE memimg_events SET payload = ?, checksum = ? WHERE seq = 3",
            (bytes(payload), event_checksum(*row[:5], bytes(payload))),
        )
    conn.close()
    result = CliRunner().invoke(cli, ["verify", path], env=ENV)
    assert result.exit_code == 1 and "event seq 3" in result.output


def test_verify_checks_an_encrypted_logs_chain_with_the_integrity_key_alone(tmp_path: Any) -> None:
    """Without the encryption key, ``memimg verify`` with the integrity key checks every MAC and the chain (they
    are over the stored bytes), says the contents were not decrypted, and still fails on an edited row."""
    from memimg.core._rows import event_checksum

    path = str(tmp_path / "bank.db")
    _log(path)
    env = {"MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY}
    result = CliRunner().invoke(cli, ["verify", path], env=env)
    assert result.exit_code == 0, result.output
    assert "integrity chain: ok, 7 event(s)" in result.output and "not decrypted" in result.output
    assert SECRET not in result.output
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM memimg_events WHERE seq = 3")
        row = conn.execute("SELECT seq, tx, ts, kind, target, payload FROM memimg_events WHERE seq = 4").fetchone()
        conn.execute("UPDATE memimg_events SET seq = 3, checksum = ? WHERE seq = 4", (event_checksum(3, *row[1:]),))
    conn.close()
    result = CliRunner().invoke(cli, ["verify", path], env=env)
    assert result.exit_code == 1, result.output
    assert "event seq 3 fails its integrity MAC" in result.output and "rekey" not in result.output, result.output


def test_verify_trusts_a_rekeys_pending_entry_and_names_one_that_fails_its_mac(tmp_path: Any) -> None:
    """A rekey killed after writing its ``protection.pending`` entry (before its rewrite): ``memimg verify``
    with both keys and with the integrity key alone checks the entry's MAC and passes. The entry edited (its
    compression changed): both fail, naming the entry as not trusted, having checked the rows; no key in the
    output."""
    import json

    from memimg.stores import _rekeying

    path = str(tmp_path / "bank.db")
    _log(path)

    class Killed(Exception):
        pass

    def killed(*args: Any) -> None:
        raise Killed

    store = memimg.SQLiteStore(path)
    store.rewrite = killed  # type: ignore[method-assign]
    original = _rekeying._settle_rekey
    _rekeying._settle_rekey = lambda *args: None  # killed: nothing cleans up
    try:
        with pytest.raises(Killed):
            memimg.rekey(store, old_options=_KEYS, new_options={**_KEYS, "compression": "zlib"})
    finally:
        _rekeying._settle_rekey = original
        store.close()
    both = {**ENV}
    alone = {"MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY}
    for env in (both, alone):
        result = CliRunner().invoke(cli, ["verify", path], env=env)
        assert result.exit_code == 0, result.output
    conn = sqlite3.connect(path)
    with conn:
        (text,) = conn.execute("SELECT value FROM memimg_meta WHERE key = 'protection.pending'").fetchone()
        edited = json.dumps({**json.loads(text), "compression": "zstd"})
        conn.execute("UPDATE memimg_meta SET value = ? WHERE key = 'protection.pending'", (edited,))
    conn.close()
    for env in (both, alone):
        result = CliRunner().invoke(cli, ["verify", path], env=env)
        assert result.exit_code == 1, result.output
        assert "'protection.pending' entry of memimg_meta" in result.output and "fails its MAC" in result.output
        assert "integrity chain: ok" in result.output
        assert KEY.hex() not in result.output and INTEGRITY_KEY not in result.output


#: a tampering -> what ``memimg verify`` says of it (the log: :func:`_tamperable`'s)
TAMPERINGS = {
    "edit": "event seq 4 fails its integrity MAC",
    "insert": "event seq 5 fails its integrity MAC",
    "delete": "event seq 4 fails its integrity MAC",
    "reorder": "event seq 4 fails its integrity MAC",
    "snapshot edit": "snapshot at seq 9 fails its integrity MAC",
}


@pytest.fixture(params=[kind for kind in STORE_KINDS if kind != "memory"])  # the command line reaches no memory store
def cli_stores(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[StoreFactory]:
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    factory.cleanup()


def _tamperable(stores: StoreFactory) -> tuple[str, list[str]]:
    """An encrypted and chained log, a snapshot at seq 9 and an event after it; the target and the options
    ``memimg verify`` needs to reach it."""
    with memimg.open(
        stores.target(), root=Bank, snapshot_every=None, encryption_key=KEY, integrity_key=INTEGRITY_KEY
    ) as img:
        img.root.accounts["ada"] = Account(SECRET, Decimal("100"))
        for _ in range(6):
            img.root.accounts["ada"].balance += 1
        assert img.snapshot() == 9
        img.root.accounts["ada"].balance += 1
    stores.close()
    if stores.kind == "postgres":
        return str(POSTGRES_URL), ["--schema", stores.schema]
    return stores.path, []


@pytest.mark.parametrize("keys", ["both keys", "integrity key alone"])
@pytest.mark.parametrize("how", sorted(TAMPERINGS))
def test_verify_names_each_tampering_on_every_store(cli_stores: StoreFactory, how: str, keys: str) -> None:
    """An edited, inserted, deleted or reordered event row or an edited snapshot (CRC-32 recomputed) fails
    ``memimg verify`` on SQLite, NDJSON and PostgreSQL, with both keys or with the integrity key alone (the
    contents not decrypted): the error names the row and its failed MAC, never a rekey."""
    stores = cli_stores
    target, options = _tamperable(stores)
    env = ENV if keys == "both keys" else {"MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY}
    result = CliRunner().invoke(cli, ["verify", target, *options], env=env)
    assert result.exit_code == 0, result.output
    if how == "snapshot edit":
        edit_snapshot(stores)
    else:
        replace_events(stores, EDITS[how])
    stores.close()
    result = CliRunner().invoke(cli, ["verify", target, *options], env=env)
    assert result.exit_code == 1, result.output
    assert TAMPERINGS[how] in result.output and "restore the log from a backup" in result.output, result.output
    assert "rekey" not in result.output, result.output


def test_verify_reports_the_oldest_events_deleted_as_a_break(tmp_path: Any) -> None:
    """Events deleted from the start of a log with no snapshot covering them fail ``memimg verify``; after a
    compaction (a snapshot at the first event kept) the chain is reported ok."""
    path = str(tmp_path / "bank.db")
    _log(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM memimg_events WHERE seq <= 2")
    conn.close()
    result = CliRunner().invoke(cli, ["verify", path], env=ENV)
    assert result.exit_code == 1 and "events 1..2 are missing" in result.output, result.output
    compacted = str(tmp_path / "compacted.db")
    _log(compacted)
    with memimg.open(compacted, root=Bank, encryption_key=KEY, integrity_key=INTEGRITY_KEY) as img:
        img.root.accounts["ada"].balance += 1
        seq = img.snapshot()
        img.root.accounts["ada"].balance += 1
        img.store.delete_events_before(seq)
    result = CliRunner().invoke(cli, ["verify", compacted], env=ENV)
    assert result.exit_code == 0 and "integrity chain: ok" in result.output, result.output
