"""Workload (h): a small web service under gunicorn, 4 worker processes on one log, driven over HTTP.

The app is :mod:`benchmarks.webapp` (an orders service: a POST that adds an
order to a customer's list and bumps the customer's counter, a GET that shows
the counter and the last orders), written once on memimg (through
:mod:`memimg.contrib.flask`) and once by hand on a table per entity. Each
variant is served by gunicorn -- ``web_workers`` sync worker processes, each
with its own image (or connection) on the one SQLite file, and, when
``MEMIMG_TEST_POSTGRES_URL`` is set, on PostgreSQL -- bound to a free port of
127.0.0.1 (the parent opens the socket and hands gunicorn its descriptor, so
no other process can take the port in between). A third case serves the same
service in Django (:mod:`benchmarks.webapp_django`, through
:mod:`memimg.contrib.django`) twice: with ``TARGET: "default"``, the
project's SQLite database as the docs set it up, and with a file path of its
own.

The load is bounded: ``web_clients`` threads of this process each send
``web_requests / web_clients`` requests, one connection per request (the
sync worker closes it after answering), three POSTs to one GET, each thread
on customers of its own. Conflicts between workers are then as rare as in a
real service where users touch their own data; what is measured is what
sharing one log costs each worker: catching up on the others' commits at
each transaction's start, the append race, automatic snapshots. The figures
are requests/s of the whole run and the p50/p99 latency of one request;
every answer must be 200 or 201, or the run fails.

Servers are started once per variant and kept for the repetitions (the
variants alternate), after every worker has booted (each reports its pid
in a directory) and a short unmeasured warm-up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks.harness import ROOT, Context
from benchmarks.writers import POSTGRES_ENV

__all__ = ["DJANGO_ALIAS", "DJANGO_PATH", "Server", "Variant", "load", "web"]

#: the systems of the Django case: settings.MEMIMG["TARGET"] = "default" (the project's SQLite
#: database), and a file path of its own
DJANGO_ALIAS: Final = "memimg"
DJANGO_PATH: Final = "memimg, TARGET a file path"


@dataclass(frozen=True)
class Variant:
    """One app to serve: the system it is reported as, gunicorn's app, its environment, its data."""

    name: str
    app: str
    env: dict[str, str]
    prepare: Callable[[list[str]], None]


class Server:
    """One variant of the app under gunicorn on 127.0.0.1 (see the module docstring)."""

    def __init__(self, variant: Variant, workers: int, where: Path) -> None:
        self.name = variant.name
        where.mkdir()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.port: int = listener.getsockname()[1]
        booted = where / "booted"
        booted.mkdir()
        env = {**os.environ, **variant.env, "BENCH_WEB_BOOTED": str(booted)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.log = where / "gunicorn.log"
        command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"fd://{listener.fileno()}"]
        command += ["--log-level", "warning", "--error-logfile", str(self.log), "--timeout", "120", variant.app]
        with listener:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, pass_fds=(listener.fileno(),))
        deadline = time.monotonic() + 120
        while len(list(booted.iterdir())) < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"gunicorn ({self.name}) did not boot {workers} workers:\n{self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _request(port: int, raw: bytes) -> int:
    """Send one HTTP request on a new connection; the response's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and len(body) >= _content_length(head):
                break  # closing at once: the worker waits for this close before it takes the next request
    return int(data[9:12])


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62  # no length: the body ends when the worker closes the connection


def _post(name: str, n: int) -> bytes:
    body = json.dumps({"sku": f"sku-{n % 97}", "qty": 1 + n % 5, "price": 199 + n % 1000}).encode()
    return (
        f"POST /customers/{name}/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _get(name: str) -> bytes:
    return f"GET /customers/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def customer_names(clients: int, per_client: int = 8) -> list[str]:
    """The customers of a run: client *i* uses those whose number is *i* modulo *clients*."""
    return [f"c{k}" for k in range(clients * per_client)]


def load(port: int, clients: int, requests: int) -> dict[str, float]:
    """Send *requests* requests from *clients* threads; requests/s and p50/p99 latency (ms).

    Raises:
        RuntimeError: an answer was not 200 or 201 (the benchmark is wrong), or
            a request failed.
    """
    names = customer_names(clients)
    per_thread = max(1, requests // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        mine = names[i::clients]
        out = latencies[i]
        start.wait()
        try:
            for n in range(per_thread):
                name = mine[n % len(mine)]
                raw = _get(name) if n % 4 == 3 else _post(name, n)
                began = time.perf_counter()
                status = _request(port, raw)
                out.append(time.perf_counter() - began)
                if status not in (200, 201):
                    failures.append(f"{raw.split(b' HTTP')[0].decode()} answered {status}")
                    return
        except OSError as err:
            failures.append(f"client {i}: {err!r}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"web load on port {port}: {len(failures)} failed requests, first: {failures[0]}")
    every = sorted(x for xs in latencies for x in xs)
    return {
        "req/s": len(every) / took,
        "p50 ms": every[len(every) // 2] * 1000,
        "p99 ms": every[min(len(every) - 1, int(len(every) * 0.99))] * 1000,
    }


def _flask(name: str, kind: str, target: str, schema: str | None = None) -> Variant:
    from benchmarks import webapp

    env = {"BENCH_WEB_KIND": kind, "BENCH_WEB_TARGET": target, "BENCH_WEB_SCHEMA": schema or ""}
    return Variant(
        name, "benchmarks.webapp:create_app()", env, lambda names: webapp.prepare(kind, target, schema, names)
    )


def _django(name: str, target: str, database: str) -> Variant:
    from benchmarks import webapp_django

    env = {"BENCH_WEB_TARGET": target, "BENCH_WEB_DJANGO_DB": database}
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.webapp_django"
    return Variant(
        name, "benchmarks.webapp_django:wsgi()", env, lambda names: webapp_django.prepare(target, database, names)
    )


Cases = list[tuple[str, list[Variant], Callable[[], None] | None]]


def _cases(ctx: Context, where: Path) -> Cases:
    """``(case, variants, drop)``: Flask on SQLite, on PostgreSQL if configured, Django's two SQLite targets."""
    names = {s.name for s in ctx.systems}
    shape = f"{ctx.sizes.web_workers} gunicorn workers, {ctx.sizes.web_clients} clients"
    flask_sqlite = [
        _flask("memimg", "memimg", str(where / "image.db")),
        _flask("sqlite3", "sqlite3", str(where / "raw.db")),
    ]
    cases: Cases = [(f"Flask, {shape}, SQLite", [v for v in flask_sqlite if v.name in names], None)]
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        ctx.results.notes.append(f"web: PostgreSQL not measured ({POSTGRES_ENV} is not set)")
    elif "memimg" in names:
        tag = uuid.uuid4().hex[:10]
        schemas = (f"bench_web_mi_{tag}", f"bench_web_raw_{tag}")
        pg = [_flask("memimg", "memimg", url, schemas[0]), _flask("psycopg", "psycopg", url, schemas[1])]

        def drop() -> None:
            import psycopg

            from benchmarks.webapp import libpq

            with psycopg.connect(libpq(url), autocommit=True) as conn:
                for schema in schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

        cases.append((f"Flask, {shape}, PostgreSQL", pg, drop))
    if "memimg" in names:
        django = [
            _django(DJANGO_ALIAS, "default", str(where / "django-alias.sqlite3")),
            _django(DJANGO_PATH, str(where / "django-image.db"), str(where / "django-path.sqlite3")),
        ]
        cases.append((f"Django, {shape}, SQLite", django, None))
    return cases


def web(ctx: Context) -> None:
    """(h) requests/s and p50/p99 latency of the orders service under gunicorn, memimg vs plain."""
    sizes = ctx.sizes
    clients, workers, requests = sizes.web_clients, sizes.web_workers, sizes.web_requests
    where = ctx.fresh_dir("web")
    try:
        for number, (case, variants, drop) in enumerate(_cases(ctx, where)):
            servers: list[Server] = []
            try:
                for variant in variants:
                    variant.prepare(customer_names(clients))
                    servers.append(Server(variant, workers, where / f"server-{number}-{len(servers)}"))
                    load(servers[-1].port, clients, 2 * clients)  # warm-up: caches, first connections
                ctx.progress(f"web [{case}]: {len(servers)} gunicorn servers of {workers} workers ready")
                ctx.alternate(
                    "web",
                    case,
                    servers,
                    lambda server: {
                        metric: (value, metric == "req/s")
                        for metric, value in load(server.port, clients, requests).items()
                    },
                    bounded=True,
                )
            finally:
                for server in servers:
                    server.close()
                if drop is not None:
                    drop()
    finally:
        shutil.rmtree(where, ignore_errors=True)
