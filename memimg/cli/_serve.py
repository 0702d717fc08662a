"""``memimg serve TARGET``: the inspector, a read-only web UI over the image (see ``docs/inspector.md``)."""

from __future__ import annotations

import ipaddress
import socket
import webbrowser

import click

from memimg._errors import MemimgError
from memimg.cli._main import cli, open_image
from memimg.model import _tracking

__all__ = ["LOOPBACK_NAMES", "serve"]

#: The Host names a loopback-bound ``memimg serve`` answers for (besides the --host given).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_free(host: str, port: int) -> None:
    """Refuse, in memimg's words, an address that cannot be listened on (werkzeug would print its own and exit)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise MemimgError(f"cannot listen on {host}:{port}: {err}; give --host an address of this machine") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as err:
            raise MemimgError(
                f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port (0: any free one)"
            ) from None


@cli.command()
@click.argument("target")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the inspector in the default web browser.")
def serve(target: str, host: str, port: int, open_browser: bool) -> None:
    """Serve a read-only web UI over the image: objects, types, the log, history, time travel, diffs, live.

    The log is opened read-only and followed, so the pages show other
    processes' commits as they happen. Stop it with Ctrl-C.
    """
    try:
        from werkzeug.serving import make_server

        from memimg.inspector import Inspector, create_app
    except ImportError as err:
        raise MemimgError(f"memimg serve needs Flask ({err}): pip install 'memimg[flask]'") from None
    img = open_image(target)
    inspector = Inspector(img, title=target)
    try:
        img.follow()
        _check_free(host, port)
        # bound to loopback, answer only for loopback names: a foreign page whose name is rebound to 127.0.0.1
        # (DNS rebinding) sends its own name as Host and is refused
        hosts = [*LOOPBACK_NAMES, host] if _loopback(host) else None
        server = make_server(host, port, create_app(inspector, hosts=hosts), threaded=True)
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{server.server_port}/"
        click.echo(f"memimg inspector on {target} at seq {img.seq}: {url}  (read-only; Ctrl-C stops it)", err=False)
        if not _loopback(host):
            click.echo(
                f"memimg: warning: listening on {host}, not loopback: anyone who can reach {socket.gethostname()} "
                "on this port can read every value in the image",
                err=True,
            )
        if open_browser:
            webbrowser.open(url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        inspector.close()
        img.close()
        _tracking.disable_now()
