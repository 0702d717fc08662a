"""The inspector's pages: a Flask blueprint of GET views rendering Jinja2 templates (autoescaped).

:func:`blueprint` makes it for one :class:`~memimg.inspector._model.Inspector`;
:func:`create_app` wraps it in an app of its own (``memimg serve``). Every
view reads ``?at=`` (a seq or an ISO time) first and renders the state then;
bad input -- an unknown object, a malformed ``at``, a seq the log no longer
keeps, a page number that is not one -- renders the error page with the
message and a 400 or 404, never a traceback. Only GET (and HEAD) are
routed: any other method answers 405, and nothing here writes to the image.

``/events`` streams the change feed as server-sent events (one message per
commit, a comment every 15 s to keep the connection); the pages' small
script follows it to move the head and re-render a page showing the present.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final
from urllib.parse import urlencode

import flask
from flask import Blueprint, Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException

from memimg._errors import ClosedError, HistoryError, MemimgError, value_repr
from memimg.core._diff import type_name
from memimg.core._markers import MISSING
from memimg.inspector._model import (
    BadRequest,
    Inspector,
    NotFound,
    describe,
    fields_of,
    label,
    page_number,
    paginate,
    parse_time,
    whole_number,
)
from memimg.inspector._permission import permitted
from memimg.model._base import PersistentBase

__all__ = ["KEEPALIVE", "blueprint", "create_app"]

log = logging.getLogger("memimg.inspector")

#: Seconds between the comments that keep an idle event stream open.
KEEPALIVE: Final = 15.0
#: Seconds an event stream lasts by default; then it ends and the browser reconnects (with Last-Event-ID),
#: so a stream never holds a web worker for good.
STREAM_LIFETIME: Final = 300.0
#: How many seqs behind the head an event stream replays at most (``?since=`` older than that: from now).
STREAM_BACKLOG: Final = 10_000

_METHODS: Final = ["GET"]


def _at() -> int | None:
    return _inspector().point(request.args.get("at"))


class _Mount:
    """One registration of the blueprint: its inspector and options (keyed by the blueprint's full dotted
    name, which is what ``request.blueprint`` says, nested or renamed)."""

    def __init__(self, inspector: Inspector, live: bool, stream_lifetime: float) -> None:
        self.inspector = inspector
        self.live = live
        self.stream_lifetime = stream_lifetime


def _mount() -> _Mount:
    return flask.current_app.extensions["memimg_inspector"][request.blueprint]  # type: ignore[no-any-return]


def _inspector() -> Inspector:
    return _mount().inspector


def _page(template: str, at: int | None, head: int | None = None, **context: Any) -> str:
    """Render *template*; *head*: the seq the content was read at when it shows the present (read in the same
    locked block, so the label never runs ahead of the content)."""
    ins = _inspector()
    if head is None or at is not None:
        head = ins.head
    shown = head if at is None else at
    tx_end = ins.tx_end(at) if at is not None else None
    return render_template(
        f"memimg_inspector/{template}",
        **_common(ins),
        at=at,
        head=head,
        shown=shown,
        shown_time=ins.time_of(shown),
        head_time=ins.time_of(head),
        oldest=ins.oldest(),
        tx_end=tx_end,
        **context,
    )


def _common(ins: Inspector) -> dict[str, Any]:
    """What every page's layout needs besides the point in time."""
    return {
        "ins": ins,
        "bp": request.blueprint,
        "root_oid": ins.image._engine.table.root_oid,
        "now_href": _query(drop=("at", "page")),
        "live": _mount().live,
    }


def _query(drop: tuple[str, ...] = (), **values: Any) -> str:
    """This request's URL with the query arguments *drop* left out and *values* set."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in drop and k not in values]
    args += [(k, str(v)) for k, v in values.items() if v is not None]
    return request.path + ("?" + urlencode(args) if args else "")


def _oid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or whole_number(text, "object id") < 1:
        raise NotFound(f"{text!r} is not an object id: object ids are whole numbers from 1 (the root is #1)")
    return int(text)


def _time_arg(name: str) -> dt.datetime | None:
    text = request.args.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise BadRequest(
            f"{name}={text!r} is not an ISO time (such as 2026-12-01T12:00, UTC unless an offset is given)"
        ) from None


def _seq_arg(name: str, default: int | None = None) -> int | None:
    text = request.args.get(name, "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{name}={text!r} is not a seq: give a whole number")
    return whole_number(text, name)


# -- views ----------------------------------------------------------------------------------------


def overview() -> str:
    ins = _inspector()
    at = _at()
    with ins.image_at(at) as img:
        census = ins.census(img)  # a copy of the object table, scanned outside the image's lock
        counts = ins.counts(img, census)
        with img._engine.lock:
            head = img.seq
            context = {
                "counts": counts,
                "objects": sum(n for _, n in counts),
                "root": describe(img.root),
                "schema": ins.schema(img, census),
                "differences": img.schema_report.differences,
            }
    store = ins.image.store
    snapshots = [(s.seq, s.size, _when(s.ts)) for s in store.snapshots()]
    return _page("overview.html", at, head, snapshots=snapshots, first_seq=store.first_seq(), **context)


def _when(ts: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ts)


def obj(oid: str) -> str:
    ins = _inspector()
    at = _at()
    number = page_number(request.args.get("page"))
    wanted = _oid(oid)
    with ins.image_at(at) as img:
        members: list[Any] | None = None
        with img._engine.lock:
            head = img.seq
            target = ins.get(img, wanted, at)
            context: dict[str, Any] = {"oid": target._mi_oid, "label": label(target), "type": type_name(target)}
            if isinstance(target, PersistentBase):
                context["kind"] = "entity"
                context["fields"] = [(name, describe(value, limit=20_000)) for name, value in fields_of(target)]
            elif isinstance(target, dict):
                context["kind"] = "dict"
                pairs = dict.items(target)
                context["page"] = paginate(pairs, len(target), number, lambda kv: (describe(kv[0]), describe(kv[1])))
            elif isinstance(target, list):
                context["kind"] = "list"
                items = enumerate(list.copy(target))
                context["page"] = paginate(items, len(target), number, lambda iv: (str(iv[0]), describe(iv[1])))
            else:
                context["kind"] = "set"
                members = list(set.copy(target))
        if members is not None:  # sorted outside the lock: an order that holds from page to page
            members.sort(key=value_repr)
            context["page"] = paginate(members, len(members), number, lambda v: (None, describe(v)))
        context["referrers"] = [(describe(holder), where) for holder, where in ins.referrers(img, wanted)]
    return _page("object.html", at, head, **context)


def history(oid: str, field: str | None = None) -> str:
    ins = _inspector()
    at = _at()
    number = page_number(request.args.get("page"))
    wanted = _oid(oid)
    with ins.image_at(at) as img:
        with img._engine.lock:
            head = img.seq
            target = ins.get(img, wanted, at)
        changes = ins.history(img, target, field)  # outside the lock: it reads (and may index) the log
        page = paginate(
            changes,
            len(changes),
            number,
            lambda c: {
                "seq": c.seq,
                "tx": c.tx,
                "time": c.time,
                "meta": c.meta,
                "kind": c.kind,
                "where": _where(c),
                "old": describe(c.old),
                "new": describe(c.new),
            },
        )
        context = {"oid": wanted, "label": label(target), "field": field, "rows": page.items, "page": page}
    return _page("history.html", at, head, **context)


def _where(c: Any) -> str:
    if c.key is not None or c.kind.startswith("dict."):
        return f"[{describe(c.key).text}]"
    if c.index is not None:
        return f"@{c.index}"
    return c.field or ""


def type_view(name: str) -> str:
    ins = _inspector()
    at = _at()
    number = page_number(request.args.get("page"))
    field = request.args.get("field", "").strip() or None
    query = request.args.get("q", "")
    with ins.image_at(at) as img:
        instances = ins.instances(img, name)  # from a copy of the object table, outside the image's lock
        if not instances:
            known = ", ".join(n for n, _ in ins.counts(img)[:20])
            raise NotFound(
                f"no object of type {name!r} is in the image {'now' if at is None else f'at seq {at}'}; "
                f"the types there are: {known}"
            )
        fields = ins.type_fields(name, img)
        if field is not None and field not in fields:
            raise BadRequest(f"type {name!r} has no field {field!r}; its fields are {', '.join(fields) or 'none'}")
        if field is not None and query:  # outside the lock too: each field is read whole
            needle = query.casefold()
            instances = [o for o in instances if needle in describe(getattr(o, field, MISSING)).text.casefold()]
        shown = fields[:6]

        def row(o: Any) -> tuple[Any, list[Any]]:
            return describe(o), [describe(v) for n, v in fields_of(o) if n in shown] if shown else [describe(len(o))]

        with img._engine.lock:  # the page's rows: each one whole
            head = img.seq
            page = paginate(instances, len(instances), number, row)
    return _page(
        "type.html",
        at,
        head,
        name=name,
        fields=fields,
        field=field,
        query=query,
        page=page,
        columns=list(shown) or ["items"],
    )


def log_view() -> str:
    ins = _inspector()
    at = _at()
    until = ins.head if at is None else at
    oid_text = request.args.get("object", "").strip()
    if oid_text and not (oid_text.isascii() and oid_text.isdigit()):
        raise BadRequest(f"object={oid_text!r} is not an object id: give a whole number (the root is #1)")
    oid = whole_number(oid_text, "object id") if oid_text else None
    kinds = tuple(k.strip() for k in request.args.get("kind", "").split(",") if k.strip())
    meta: dict[str, str] = {}
    for item in request.args.getlist("meta"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadRequest(f"meta={item!r} is not KEY=VALUE (such as user=ada)")
        meta[key.strip()] = value.strip()
    filtered = bool(oid or kinds or meta or request.args.get("from") or request.args.get("to"))
    default_after = 0 if filtered else max(until - 100, 0)
    after = _seq_arg("after", default_after) or 0
    groups, more = ins.log(
        after=after,
        until=until,
        oid=oid,
        kinds=kinds,
        since_time=_time_arg("from"),
        until_time=_time_arg("to"),
        meta=meta,
    )
    rows = [
        [
            {
                "seq": e.seq,
                "tx": e.tx,
                "ts": e.ts,
                "kind": e.kind,
                "target": e.target,
                "data": _data_text(e),
                "new": len(e.objects),
                "meta": e.meta,
            }
            for e in group
        ]
        for group in groups
    ]
    older = max(after - 100, 0) if after > 0 and not filtered else None
    more_href = _query(after=more) if more is not None else None
    return _page(
        "log.html",
        at,
        until,
        groups=rows,
        after=after,
        more=more,
        more_href=more_href,
        older=older,
        filters={
            "object": oid_text,
            "kind": request.args.get("kind", ""),
            "from": request.args.get("from", ""),
            "to": request.args.get("to", ""),
            "meta": "".join(request.args.getlist("meta")[:1]),
        },
    )


def _data_text(event: Any) -> str:
    try:
        text = json.dumps(event.data)
    except (TypeError, ValueError):
        text = repr(event.data)
    return text if len(text) <= 200 else text[:200] + "…"


def diff_view() -> str:
    ins = _inspector()
    at = _at()
    head = ins.head if at is None else at
    a = _seq_arg("a")
    b = _seq_arg("b", head)
    rows = None
    if a is not None:
        a = ins.point(str(a))
        b = ins.point(str(b))
        assert a is not None and b is not None
        rows = [(d.path, describe(d.old), describe(d.new)) for d in ins.diff(a, b)]
    return _page(
        "diff.html",
        at,
        head,
        a=a,
        b=b,
        rows=rows,
        a_time=ins.time_of(a) if a else None,
        b_time=ins.time_of(b) if b else None,
    )


def events() -> Response:
    mount = _mount()
    if not mount.live:
        raise NotFound("the live event stream is turned off here (live=False): reload the page to see new commits")
    img = mount.inspector.image
    since = _seq_arg("since", img.seq) or 0
    resumed = request.headers.get("Last-Event-ID", "").strip()  # a browser reconnecting: from what it saw
    if resumed.isascii() and resumed.isdigit() and len(resumed) <= 30:
        since = max(since, int(resumed))
    head = img.seq
    since = min(since, head)
    if since < head - STREAM_BACKLOG:  # too far behind to replay: from now (the page reloads on the next commit)
        since = head
    deadline = time.monotonic() + mount.stream_lifetime

    def stream() -> Iterator[str]:
        last = since
        yield "retry: 3000\n\n"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:  # the browser reconnects, with Last-Event-ID: nothing is missed
                return
            try:
                for commit in img.changes(since=last, timeout=min(KEEPALIVE, left)):
                    last = commit.seq
                    data = {
                        "seq": commit.seq,
                        "tx": commit.tx,
                        "time": commit.time.isoformat(),
                        "meta": commit.meta,
                        "targets": sorted({c.target._mi_oid for c in commit.changes if c.target is not None})[:100],
                    }
                    yield f"id: {last}\nevent: commit\ndata: {json.dumps(data, default=str)}\n\n"
            except ClosedError:
                return
            except HistoryError:  # compacted past what this page saw: go on from now (the page's next load)
                last = img.seq
            yield ": keepalive\n\n"

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -- errors ---------------------------------------------------------------------------------------


def _error_page(status: int, title: str, message: str) -> tuple[str, int]:
    ins = _inspector()
    try:
        head = ins.head
    except MemimgError:
        head = 0
    return render_template(
        "memimg_inspector/error.html",
        **_common(ins),
        at=None,
        head=head,
        shown=head,
        shown_time=None,
        head_time=None,
        oldest=1,
        tx_end=None,
        status=status,
        title=title,
        message=message,
    ), status


def _on_bad_request(err: BadRequest) -> tuple[str, int]:
    return _error_page(400, "Bad request", str(err))


def _on_not_found(err: NotFound) -> tuple[str, int]:
    return _error_page(404, "Not found", str(err))


def _on_memimg_error(err: MemimgError) -> tuple[str, int]:
    return _error_page(400, "Cannot show this", str(err))


def _on_http_error(err: HTTPException) -> Any:
    if request.blueprint is None or err.code is None or err.code < 400:
        return err
    return _error_page(err.code, err.name, err.description or "")


def _on_crash(err: Exception) -> tuple[str, int]:
    if isinstance(err, HTTPException):
        return _on_http_error(err)  # type: ignore[no-any-return]
    log.exception("inspector page %s failed", request.path)
    return _error_page(
        500,
        "Internal error",
        f"showing this page failed ({type(err).__name__}); the server's log has the details",
    )


# -- the blueprint ------------------------------------------------------------------------------


def blueprint(
    inspector: Inspector,
    *,
    name: str = "memimg_inspector",
    url_prefix: str | None = None,
    permission: Callable[[], bool] | None = None,
    decorate: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
    live: bool = True,
    stream_lifetime: float = STREAM_LIFETIME,
) -> Blueprint:
    """The inspector's pages over *inspector*, as a blueprint to register on an app.

    *permission* (called with no arguments in each request; Flask's
    ``request`` and ``g`` are there) returns whether the request may see
    the image; when it returns false the answer is 403. ``None`` lets
    everyone in (``memimg serve``, bound to loopback). *decorate* is
    applied to each view (the Flask integration marks them to run outside
    its request transaction). A hook that raises refuses the request too
    (403, the error logged).

    *live*: whether pages follow commits through ``/events`` (a server-sent
    event stream, which holds a connection -- and, on a sync WSGI server, a
    worker -- while a page is open); false turns the stream off (``/events``
    answers 404, pages show the state when loaded). *stream_lifetime*: the
    seconds a stream lasts before the browser reconnects (with
    ``Last-Event-ID``, so no commit is missed).
    """
    bp = Blueprint(
        name,
        __name__,
        url_prefix=url_prefix,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    def route(rule: str, view: Callable[..., Any], endpoint: str) -> None:
        if decorate is not None:
            view = decorate(functools.wraps(view)(functools.partial(view)))
        bp.add_url_rule(rule, endpoint, view, methods=_METHODS, provide_automatic_options=False)

    route("/", overview, "overview")
    route("/object/<oid>", obj, "object")
    route("/object/<oid>/history", history, "history")
    route("/object/<oid>/history/<field>", history, "field_history")
    route("/type/<path:name>", type_view, "type")
    route("/log", log_view, "log")
    route("/diff", diff_view, "diff")
    route("/events", events, "events")

    mount = _Mount(inspector, live, stream_lifetime)

    @bp.record
    def _register(state: Any) -> None:  # under the full dotted name it is registered as (nested, renamed)
        full = f"{state.name_prefix}.{state.name}".lstrip(".")
        state.app.extensions.setdefault("memimg_inspector", {})[full] = mount

    @bp.before_request
    def _guard() -> Response | None:
        allowed = permitted(permission, request.path)
        if not allowed:
            return Response("403 Forbidden: you may not look at this image\n", 403, mimetype="text/plain")
        return None

    @bp.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'self'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    bp.register_error_handler(BadRequest, _on_bad_request)
    bp.register_error_handler(NotFound, _on_not_found)
    bp.register_error_handler(MemimgError, _on_memimg_error)
    bp.register_error_handler(Exception, _on_crash)
    return bp


def create_app(
    inspector: Inspector,
    *,
    hosts: Iterable[str] | None = None,
    live: bool = True,
    stream_lifetime: float = STREAM_LIFETIME,
) -> Flask:
    """A Flask app serving only the inspector over *inspector* at ``/`` (``memimg serve``).

    *hosts*: the host names the ``Host`` header may name (any port); another answers 400. ``memimg serve``
    bound to loopback gives the loopback names, so a page of another site whose name was rebound to
    127.0.0.1 (DNS rebinding) cannot read the image. ``None``: any. *live*, *stream_lifetime*: as for
    :func:`blueprint`.
    """
    app = Flask("memimg.inspector")
    app.register_blueprint(blueprint(inspector, live=live, stream_lifetime=stream_lifetime))
    allowed = None if hosts is None else {h.lower().strip("[]") for h in hosts}

    @app.before_request
    def _check_host() -> Response | None:
        if allowed is None:
            return None
        host = request.host.lower()
        name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if name not in allowed:
            log.warning("refused a request for Host %r (allowed: %s)", request.host, ", ".join(sorted(allowed)))
            return Response(
                f"400 Bad Request: this inspector answers for {', '.join(sorted(allowed))} only, not {host!r}\n",
                400,
                mimetype="text/plain",
            )
        return None

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _routing(err: HTTPException) -> Any:  # the routing failed before a blueprint was chosen
        return _plain_error(inspector, err)

    return app


def _plain_error(inspector: Inspector, err: HTTPException) -> tuple[str, int, dict[str, str]]:
    code = err.code or 500
    body = render_template(
        "memimg_inspector/error.html",
        ins=inspector,
        root_oid=inspector.image._engine.table.root_oid,
        now_href="/",
        at=None,
        head=inspector.head,
        shown=inspector.head,
        shown_time=None,
        head_time=None,
        oldest=1,
        status=code,
        title=err.name,
        message=err.description or "",
        bp="memimg_inspector",
        live=True,
        tx_end=None,
    )
    headers = {"Allow": "GET, HEAD"} if code == 405 else {}
    return body, code, headers
