"""The inspector (``memimg serve``'s read-only web UI) inside a Django project, behind its own authentication.

In the project's ``urls.py``::

    from django.urls import include, path
    from memimg.contrib.django import inspector

    urlpatterns = [
        ...,
        path("_memimg/", include(inspector.urls(permission=lambda request: request.user.is_superuser))),
    ]

The pages are the inspector's own (Jinja2 templates rendered by a small
Flask app, so the ``memimg[flask]`` extra is needed): each request under the
prefix is checked with *permission* by Django -- sessions, ``request.user``
and every middleware have run -- and then handed, as WSGI, to that app; the
answer (the live event stream too, under WSGI and ASGI) goes back through Django. Nothing is
written: the views run outside the request transaction of
:class:`~memimg.contrib.django.middleware.MemimgMiddleware`, and the
inspector answers 405 to anything but GET and HEAD.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest  # type: ignore[import-untyped, unused-ignore]
from django.http import HttpRequest, HttpResponseForbidden, StreamingHttpResponse  # type: ignore[import-untyped, unused-ignore]
from django.urls import re_path  # type: ignore[import-untyped, unused-ignore]

import memimg
from memimg.contrib.django import _runtime
from memimg.contrib.django.middleware import non_transactional

__all__ = ["urls"]

log = logging.getLogger("memimg.django")


def urls(
    *,
    permission: Callable[[Any], bool] | None = None,
    debug: bool = False,
    image: memimg.MemoryImage | Callable[[], memimg.MemoryImage] | None = None,
    live: bool = True,
    stream_lifetime: float = 300.0,
) -> list[Any]:
    """The URL patterns of the inspector, for ``include()`` under a prefix of the project's choosing.

    *permission* is called with each request (``request.user`` is set) and
    returns whether it may look at the image; when false the answer is 403.
    The inspector shows every value in the image, so a hook is required:
    without one the patterns are refused unless *debug* is true (local
    development only). *image*: the image to show (default: the project's,
    ``memimg.contrib.django.image()``).

    *live*: whether open pages follow commits through a server-sent event
    stream; one stream (shared by a browser's tabs) holds a connection for
    up to *stream_lifetime* seconds, then the browser reconnects. Under
    WSGI it holds a worker thread that long (size the server's threads for
    it, or pass ``live=False``: pages show the state when loaded); under
    ASGI it holds a thread of the sync-to-async pool while waiting.

    Raises:
        ValueError: no *permission* and not *debug*; *permission* is not callable.
    """
    from memimg.inspector import Inspector, create_app, permitted, require_permission

    require_permission(
        permission,
        debug=debug,
        mount="memimg.contrib.django.inspector.urls()",
        takes="the request",
        example="lambda request: request.user.is_superuser",
    )
    app = create_app(
        Inspector(image if image is not None else _runtime.image), live=live, stream_lifetime=stream_lifetime
    )

    @non_transactional
    def view(request: HttpRequest, rest: str) -> Any:
        if not permitted(permission, request.path, request):
            return HttpResponseForbidden("you may not look at this image")
        path = request.path
        prefix = path[: len(path) - len(rest)] if rest else path
        environ = dict(request.META)
        environ.update(
            {
                "REQUEST_METHOD": request.method,
                "SCRIPT_NAME": prefix.rstrip("/"),
                "PATH_INFO": "/" + rest,
                "QUERY_STRING": request.META.get("QUERY_STRING", ""),
                "wsgi.input": io.BytesIO(b""),
                "CONTENT_LENGTH": "0",
            }
        )
        environ.setdefault("wsgi.url_scheme", request.scheme)
        environ.setdefault("wsgi.errors", io.StringIO())
        environ.setdefault("SERVER_NAME", "localhost")
        environ.setdefault("SERVER_PORT", "80")
        environ.setdefault("SERVER_PROTOCOL", "HTTP/1.1")
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started["status"], started["headers"] = status, headers
            return lambda data: None

        body: Iterable[bytes] = app(environ, start_response)
        content: Any = _async_chunks(body) if isinstance(request, ASGIRequest) else body
        response = StreamingHttpResponse(content, status=int(started["status"].split(" ", 1)[0]))
        for key, value in started["headers"]:
            if key.lower() != "content-length":
                response[key] = value
        return response

    return [re_path(r"^(?P<rest>.*)$", view, name="memimg-inspector")]


async def _async_chunks(body: Iterable[bytes]) -> AsyncIterator[bytes]:
    """*body*'s chunks, each read in a worker thread: under ASGI, Django would read a plain iterator whole
    before sending anything, and the event stream never ends."""
    chunks = iter(body)

    def step() -> bytes | None:
        return next(chunks, None)

    try:
        while True:
            chunk = await sync_to_async(step, thread_sensitive=False)()
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()
