"""One memimg transaction per request, like Django's ``ATOMIC_REQUESTS``, with retries on conflict.

How it works. :class:`MemimgMiddleware` begins a transaction in
``process_view`` -- so it knows the view, and views marked with
:func:`non_transactional` are left alone -- and ends it in ``__call__`` when
the response comes back:

- the response has a status below ``DISCARD_STATUS`` (400 by default): commit;
- a status at or above it, or an exception: discard (nothing is logged);
- the commit, or a read inside the view, raises :class:`memimg.ConflictError`
  (another request committed a change to what this one read or wrote): the
  transaction is discarded and the request is handled again -- the view and
  everything after this middleware in ``MIDDLEWARE`` run again -- up to
  ``RETRIES`` times, with a short random backoff; then the answer is
  ``409 Conflict`` with a JSON body.

So a view must be safe to run again: it must not have effects outside the
image that cannot be repeated (sending an e-mail, charging a card, writing to
Django's database outside the request) -- or it must do them after the
commit, e.g. with ``request.memimg_attempt`` (0, 1, ...) in mind. The request
body is read once and cached by Django (``request.body``, ``POST``,
``FILES``); reading ``request`` as a stream in a view does not survive a rerun.

The transaction covers the view, exception handling (``process_exception``)
and the rendering of a ``TemplateResponse``. The content of a
``StreamingHttpResponse`` is produced after the commit, outside any
transaction. The middleware works in both the WSGI (sync) and ASGI (async)
stacks.

Who and what. Each request's commits -- its transaction, or the changes of a
``non_transactional`` view -- carry metadata (``img.annotate``): ``user``
(``request.user.pk`` when the user is authenticated), ``request`` (the
``X-Request-ID`` header, or a new random id; also ``request.memimg_request_id``)
and ``endpoint`` (the view name of ``request.resolver_match``, else the
path). ``settings.MEMIMG["ANNOTATE"]``, ``["ANNOTATE_KEYS"]`` and
``["ANNOTATE_WITH"]`` configure it (see ``docs/django.md``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import JsonResponse  # type: ignore[import-untyped, unused-ignore]

import memimg
from memimg.contrib import _requests
from memimg.contrib.django import _runtime
from memimg.image._retry import backoff

__all__ = ["MemimgMiddleware", "non_transactional", "request_meta"]

log = logging.getLogger("memimg.contrib.django")

V = TypeVar("V", bound=Callable[..., Any])

_TX = "_memimg_tx"
_CONFLICT = "_memimg_conflict"
_ANNOTATION = "_memimg_annotation"


def non_transactional(view: V) -> V:
    """Mark a view to run outside the request transaction (each change then commits by itself).

    The counterpart of Django's ``non_atomic_requests``: for views that
    commit in steps, run their own ``image.transaction(retries=...)``, or
    stream.
    """
    view.memimg_non_transactional = True  # type: ignore[attr-defined]
    return view


def _conflict_response(err: memimg.ConflictError, attempts: int) -> Any:
    return JsonResponse(
        {
            "error": "conflict",
            "message": str(err),
            "attempts": attempts,
        },
        status=409,
    )


class MemimgMiddleware:
    """Run each request's view in a memimg transaction; see the module docstring.

    Put it last in ``MIDDLEWARE``, so that a rerun repeats only the view.
    ``settings.MEMIMG["RETRIES"]`` and ``["DISCARD_STATUS"]`` are read at
    every request.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        attempt = 0
        while True:
            request.memimg_attempt = attempt
            try:
                response = self.get_response(request)
            except BaseException:
                self._abandon(request)
                raise
            finally:
                _leave_annotation(request)
            conflict = self._end(request, response)
            if conflict is None:
                return response
            if not self._retry(conflict, attempt):
                return _conflict_response(conflict[0], attempt + 1)
            attempt += 1
            time.sleep(backoff(attempt))

    async def __acall__(self, request: Any) -> Any:
        attempt = 0
        while True:
            request.memimg_attempt = attempt
            try:
                response = await self.get_response(request)
            except BaseException:
                self._abandon(request)
                raise
            finally:
                _leave_annotation(request)
            conflict = self._end(request, response)
            if conflict is None:
                return response
            if not self._retry(conflict, attempt):
                return _conflict_response(conflict[0], attempt + 1)
            attempt += 1
            await asyncio.sleep(backoff(attempt))

    def process_view(self, request: Any, view: Callable[..., Any], args: Any, kwargs: Any) -> None:
        request.__dict__.pop(_CONFLICT, None)
        _enter_annotation(request)
        if getattr(view, "memimg_non_transactional", False):
            return
        request.__dict__[_TX] = _runtime.image().begin()

    def process_exception(self, request: Any, exception: Exception) -> Any:
        # A stale read raises inside the view; answer for now, and let __call__ run the view again.
        if isinstance(exception, memimg.ConflictError) and _TX in request.__dict__:
            request.__dict__[_CONFLICT] = exception
            return _conflict_response(exception, request.memimg_attempt + 1)
        return None

    # -- ending the transaction -------------------------------------------------

    def _end(self, request: Any, response: Any) -> tuple[memimg.ConflictError, bool] | None:
        """Commit or discard the request's transaction; a conflict (and whether it was nested) to retry."""
        tx: memimg.Transaction | None = request.__dict__.pop(_TX, None)
        conflict: memimg.ConflictError | None = request.__dict__.pop(_CONFLICT, None)
        if tx is None or not tx.active:
            return None
        if conflict is not None:
            tx.discard()
            return conflict, tx.nested
        limit = _runtime.current_settings().discard_status
        if limit is not None and response.status_code >= limit:
            tx.discard()
            return None
        try:
            tx.save()
        except memimg.ConflictError as err:
            return err, tx.nested
        return None

    def _abandon(self, request: Any) -> None:
        request.__dict__.pop(_CONFLICT, None)
        tx: memimg.Transaction | None = request.__dict__.pop(_TX, None)
        if tx is not None and tx.active:
            tx.discard()

    def _retry(self, conflict: tuple[memimg.ConflictError, bool], attempt: int) -> bool:
        err, nested = conflict
        retries = _runtime.current_settings().retries
        if nested or attempt >= retries:
            log.info("request conflict, not retried (attempt %d of %d): %s", attempt + 1, retries + 1, err)
            return False
        log.debug("request conflict, running it again (attempt %d): %s", attempt + 2, err)
        return True


# -- who and what -------------------------------------------------------------------


def request_meta(request: Any) -> dict[str, Any] | None:
    """The metadata the request's commits carry (None: annotating is off); see the module docstring."""
    settings = _runtime.current_settings()
    keys = settings.annotate_keys
    if keys is None:
        return None
    if "memimg_request_id" not in request.__dict__:  # the same id for every attempt
        request.memimg_request_id = _requests.request_id(request.META.get("HTTP_X_REQUEST_ID"))
    meta = _requests.request_meta(
        keys, user=lambda: _user_pk(request), request=lambda: request.memimg_request_id, endpoint=lambda: _view(request)
    )
    if settings.annotate_with is not None:
        meta = settings.annotate_with(request, meta) or {}
    return meta


def _user_pk(request: Any) -> Any:
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


def _view(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    return str(match.view_name) if match is not None and match.view_name else str(request.path)


def _enter_annotation(request: Any) -> None:
    meta = request_meta(request)
    if meta is None:
        return
    annotation = _runtime.image().annotate(**meta)
    annotation.__enter__()  # left in __call__, after the response (see _leave_annotation)
    request.__dict__[_ANNOTATION] = annotation


def _leave_annotation(request: Any) -> None:
    annotation = request.__dict__.pop(_ANNOTATION, None)
    if annotation is not None:
        annotation.__exit__(None, None, None)
