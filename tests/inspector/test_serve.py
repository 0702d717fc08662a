"""``memimg serve``: the inspector as a command, on a log other processes write."""

from __future__ import annotations

import html
import os
import subprocess
import sys
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("flask")

import memimg
from tests.inspector.serving import REPO, eventually, get, serve
from tests.inspector.shop import Marks, assert_escaped, build, text
from tests.models import Bank


@pytest.fixture
def bank(tmp_path: Path) -> tuple[str, Marks]:
    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank) as img:
        marks = build(img)
    return path, marks


def test_serve_prints_a_loopback_url_and_shows_the_image_without_its_classes(bank: tuple[str, Marks]) -> None:
    """Without --import the objects are generic stand-ins: the pages show their fields and values all the same."""
    path, marks = bank
    with serve(path) as url:
        assert url.startswith("http://127.0.0.1:")
        status, body = get(url)
        assert status == 200 and "a generic stand-in" in text(body)
        status, body = get(f"{url}object/{marks.ada}")
        assert status == 200 and "balance 20 " in text(body) and "owner ada " in text(body)
        status, body = get(f"{url}object/{marks.ada}?at={marks.opened}")
        assert "balance 10 " in text(body)
        status, body = get(f"{url}object/{marks.shady}")
        assert_escaped(body)


def test_serve_with_import_uses_the_apps_classes(bank: tuple[str, Marks]) -> None:
    """--import MODULE reads the objects into the application's classes, as the other commands do."""
    path, _ = bank
    with serve(path, "--import", "tests.models") as url:
        assert "tests.models.Account version 1" in text(get(url)[1])


def test_serve_follows_other_processes_commits_and_never_writes(bank: tuple[str, Marks]) -> None:
    """Another process's commit shows on the next page load; requests other than GET are 405, the log unchanged."""
    path, marks = bank
    with serve(path) as url:
        request = urllib.request.Request(f"{url}object/{marks.ada}", data=b"balance=0", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 405
        with memimg.open(path, root=Bank) as writer:
            writer.root.accounts["ada"].balance = Decimal(77)
            head = writer.seq
        eventually(lambda: f"head {head}" in text(get(url)[1]))
        assert "balance 77 " in text(get(f"{url}object/{marks.ada}")[1])
    with memimg.open(path, root=Bank, readonly=True) as after:
        assert after.seq == head and after.root.accounts["ada"].balance == Decimal(77)


def test_serve_open_opens_the_url_in_the_browser(bank: tuple[str, Marks], tmp_path: Path) -> None:
    """--open hands the URL it prints to the default browser (here $BROWSER, a script noting what it got)."""
    path, _ = bank
    opened = tmp_path / "opened.txt"
    browser = f"{sys.executable} -c \"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])\" %s"
    with serve(path, "--open", env={"BROWSER": browser}) as url:
        eventually(opened.exists)
        eventually(lambda: opened.read_text() == url)


def test_serve_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    """A missing target, or a port already taken, ends with one clear line and status 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "memimg", "serve"]
    missing = subprocess.run([*run, str(tmp_path / "nope.db")], capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    path = str(tmp_path / "bank.db")
    with memimg.open(path, root=Bank) as img:
        img.root.name = "x"
    with serve(path) as url:
        port = url.rsplit(":", 1)[1].strip("/")
        taken = subprocess.run([*run, path, "--port", port], capture_output=True, text=True, env=env, timeout=60)
        assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in html.unescape(taken.stderr)


def test_serve_on_loopback_answers_only_for_loopback_host_names(bank: tuple[str, Marks]) -> None:
    """Bound to loopback, a request naming another host (a page whose name was rebound to 127.0.0.1: DNS
    rebinding) answers 400 with nothing of the image; 127.0.0.1, localhost and [::1], with the port, work."""
    path, marks = bank
    with serve(path) as url:
        port = url.rsplit(":", 1)[1].strip("/")
        for host, status in (
            (f"attacker.example:{port}", 400),
            ("attacker.example", 400),
            (f"127.0.0.1:{port}", 200),
            (f"localhost:{port}", 200),
            (f"[::1]:{port}", 200),
        ):
            request = urllib.request.Request(f"{url}object/{marks.ada}", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    got, body = response.status, response.read().decode()
            except urllib.error.HTTPError as err:
                got, body = err.code, err.read().decode()
            assert got == status, (host, got, body[:200])
            if status == 400:
                assert "ada" not in body and path not in body
