"""``memimg serve`` in a subprocess, for the tests that need a real server (the browser's, the command's)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serve(target: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``memimg serve TARGET --port 0 ARGS`` (with *env* added to the environment) and yield the URL it
    prints; stop it at the end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memimg", "serve", target, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "http://" not in line:
            proc.kill()
            raise AssertionError(f"memimg serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        yield line[line.index("http://") :].split()[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url: str) -> tuple[int, str]:
    """The status and body of a GET (an error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def eventually(check: object, timeout: float = 15.0) -> None:
    """Wait until ``check()`` is true (it reads a server run by another process)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)
