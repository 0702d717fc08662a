"""The command line on protected logs: keys from the environment, the chain checked, truncation caught."""

from __future__ import annotations

import re
import sqlite3
from decimal import Decimal
from typing import Any

from click.testing import CliRunner

import memimg
from memimg.cli import cli
from tests.models import Account, Bank
from tests.protection import INTEGRITY_KEY, KEY, SECRET

ENV = {"MEMIMG_ENCRYPTION_KEY": KEY.hex(), "MEMIMG_INTEGRITY_KEY": INTEGRITY_KEY}


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
    assert result.exit_code == 1 and "seq 3" in result.output, result.output


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
