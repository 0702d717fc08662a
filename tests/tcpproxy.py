"""A TCP proxy on 127.0.0.1 that a test puts between memimg and PostgreSQL, and cuts at chosen moments.

``cut_after(marker)`` arms it: the first client message that contains
*marker* is forwarded to the server, and then every connection is closed
before any reply is relayed -- a commit whose reply is lost.
``refuse()`` cuts every connection and refuses new ones (the database is
unreachable); ``accept()`` lets them in again. Every loop in it is bounded:
the proxy stops by itself after *lifetime* seconds.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Any

__all__ = ["TCPProxy"]


class TCPProxy:
    def __init__(self, host: str, port: int, *, lifetime: float = 120.0) -> None:
        self.target = (host, port)
        self.cut = threading.Event()  #: set once an armed cut happened
        self._deadline = time.monotonic() + lifetime
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._marker: bytes | None = None
        self._refuse_after_cut = False
        self._stopped = False
        self._listener: socket.socket | None = None
        self.port = 0
        self._threads: list[threading.Thread] = []
        self.accept()

    def url(self, url: str) -> str:
        """*url* (a SQLAlchemy URL) pointed at this proxy."""
        import sqlalchemy as sa

        return sa.make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    # -- control ------------------------------------------------------------------

    def accept(self) -> None:
        """Accept connections (again, on the same port)."""
        with self._lock:
            if self._listener is not None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(32)
            self.port = sock.getsockname()[1]
            self._listener = sock
        self._start(self._accept_loop, sock)

    def refuse(self) -> None:
        """Cut every connection and refuse new ones."""
        with self._lock:
            sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()
        self.cut_all()

    def cut_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut_after(self, marker: bytes, *, then_refuse: bool = False) -> None:
        """Cut every connection right after forwarding the next client message containing *marker*."""
        with self._lock:
            self.cut.clear()
            self._marker = marker
            self._refuse_after_cut = then_refuse

    def close(self) -> None:
        self._stopped = True
        self.refuse()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- forwarding -----------------------------------------------------------------

    def _start(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _running(self) -> bool:
        return not self._stopped and time.monotonic() < self._deadline

    def _accept_loop(self, sock: socket.socket) -> None:
        while self._running() and self._listener is sock:
            try:
                ready, _, _ = select.select([sock], [], [], 0.1)
                if not ready:
                    continue
                client, _ = sock.accept()
            except (OSError, ValueError):  # closed by refuse()
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            self._start(self._pump, client, server)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        tail = b""
        while self._running():
            try:
                ready, _, _ = select.select([client, server], [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if sock is client:
                        server.sendall(data)
                        marker = self._marker
                        if marker is not None and marker in tail + data:
                            self._cut_now()
                            return
                        tail = data[-len(marker) :] if marker else b""
                    else:
                        client.sendall(data)
            except (OSError, ValueError):
                break
        for s in (client, server):
            s.close()

    def _cut_now(self) -> None:
        with self._lock:
            self._marker = None
            refuse = self._refuse_after_cut
        if refuse:
            self.refuse()
        else:
            self.cut_all()
        self.cut.set()
