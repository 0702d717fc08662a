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
from collections.abc import Callable, Iterator
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
)
from memimg.model._base import PersistentBase

__all__ = ["KEEPALIVE", "blueprint", "create_app"]

log = logging.getLogger("memimg.inspector")

#: Seconds between the comments that keep an idle event stream open.
KEEPALIVE: Final = 15.0

_METHODS: Final = ["GET"]


def _at() -> int | None:
    return _inspector().point(request.args.get("at"))


def _inspector() -> Inspector:
    return flask.current_app.extensions["memimg_inspector"][request.blueprint]  # type: ignore[no-any-return]


def _page(template: str, at: int | None, **context: Any) -> str:
    ins = _inspector()
    head = ins.head
    shown = head if at is None else at
    return render_template(
        f"memimg_inspector/{template}",
        **_common(ins),
        at=at,
        head=head,
        shown=shown,
        shown_time=ins.time_of(shown),
        head_time=ins.time_of(head),
        oldest=ins.oldest(),
        **context,
    )


def _common(ins: Inspector) -> dict[str, Any]:
    """What every page's layout needs besides the point in time."""
    return {
        "ins": ins,
        "bp": request.blueprint,
        "root_oid": ins.image._engine.table.root_oid,
        "now_href": _query(drop=("at", "page")),
    }


def _query(drop: tuple[str, ...] = (), **values: Any) -> str:
    """This request's URL with the query arguments *drop* left out and *values* set."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in drop and k not in values]
    args += [(k, str(v)) for k, v in values.items() if v is not None]
    return request.path + ("?" + urlencode(args) if args else "")


def _oid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise NotFound(f"{text!r} is not an object id: object ids are whole numbers from 1 (the root is #1)")
    return int(text)


def _time_arg(name: str) -> dt.datetime | None:
    text = request.args.get(name, "").strip()
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        raise BadRequest(
            f"{name}={text!r} is not an ISO time (such as 2026-12-01T12:00, UTC unless an offset is given)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _seq_arg(name: str, default: int | None = None) -> int | None:
    text = request.args.get(name, "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{name}={text!r} is not a seq: give a whole number")
    return int(text)


# -- views ----------------------------------------------------------------------------------------


def overview() -> str:
    ins = _inspector()
    at = _at()
    with ins.state(at) as img:
        counts = ins.counts(img)
        root = img.root
        context = {
            "counts": counts,
            "objects": sum(n for _, n in counts),
            "root": describe(root),
            "schema": ins.schema(img),
            "differences": img.schema_report.differences,
        }
    store = ins.image.store
    snapshots = [(s.seq, s.size, _when(s.ts)) for s in store.snapshots()]
    return _page("overview.html", at, snapshots=snapshots, first_seq=store.first_seq(), **context)


def _when(ts: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ts)


def obj(oid: str) -> str:
    ins = _inspector()
    at = _at()
    number = page_number(request.args.get("page"))
    with ins.state(at) as img:
        target = ins.get(img, _oid(oid), at)
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
            members = sorted(set.copy(target), key=value_repr)  # an order that holds from page to page
            context["page"] = paginate(members, len(target), number, lambda v: (None, describe(v)))
        context["referrers"] = [(describe(holder), where) for holder, where in ins.referrers(img, target._mi_oid)]
    return _page("object.html", at, **context)


def history(oid: str, field: str | None = None) -> str:
    ins = _inspector()
    at = _at()
    with ins.state(at) as img:
        target = ins.get(img, _oid(oid), at)
        changes = ins.history(img, target, field)
        rows = [
            {
                "seq": c.seq,
                "tx": c.tx,
                "time": c.time,
                "meta": c.meta,
                "kind": c.kind,
                "where": _where(c),
                "old": describe(c.old),
                "new": describe(c.new),
            }
            for c in changes
        ]
        context = {"oid": target._mi_oid, "label": label(target), "field": field, "rows": rows}
    return _page("history.html", at, **context)


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
    with ins.state(at) as img:
        instances = ins.instances(img, name)
        if not instances:
            known = ", ".join(n for n, _ in ins.counts(img)[:20])
            raise NotFound(
                f"no object of type {name!r} is in the image {'now' if at is None else f'at seq {at}'}; "
                f"the types there are: {known}"
            )
        fields = ins.type_fields(name, img)
        if field is not None and field not in fields:
            raise BadRequest(f"type {name!r} has no field {field!r}; its fields are {', '.join(fields) or 'none'}")
        if field is not None and query:
            needle = query.casefold()
            instances = [o for o in instances if needle in describe(getattr(o, field, MISSING)).text.casefold()]
        shown = fields[:6]

        def row(o: Any) -> tuple[Any, list[Any]]:
            return describe(o), [describe(v) for n, v in fields_of(o) if n in shown] if shown else [describe(len(o))]

        page = paginate(instances, len(instances), number, row)
    return _page(
        "type.html", at, name=name, fields=fields, field=field, query=query, page=page, columns=list(shown) or ["items"]
    )


def log_view() -> str:
    ins = _inspector()
    at = _at()
    until = ins.head if at is None else at
    oid_text = request.args.get("object", "").strip()
    if oid_text and not (oid_text.isascii() and oid_text.isdigit()):
        raise BadRequest(f"object={oid_text!r} is not an object id: give a whole number (the root is #1)")
    oid = int(oid_text) if oid_text else None
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
        "diff.html", at, a=a, b=b, rows=rows, a_time=ins.time_of(a) if a else None, b_time=ins.time_of(b) if b else None
    )


def events() -> Response:
    ins = _inspector()
    img = ins.image
    since = _seq_arg("since", img.seq) or 0
    resumed = request.headers.get("Last-Event-ID", "").strip()  # a browser reconnecting: from what it saw
    if resumed.isascii() and resumed.isdigit():
        since = max(since, int(resumed))
    since = min(since, img.seq)

    def stream() -> Iterator[str]:
        last = since
        yield "retry: 3000\n\n"
        while True:
            try:
                for commit in img.changes(since=last, timeout=KEEPALIVE):
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
) -> Blueprint:
    """The inspector's pages over *inspector*, as a blueprint to register on an app.

    *permission* (called with no arguments in each request; Flask's
    ``request`` and ``g`` are there) returns whether the request may see
    the image; when it returns false the answer is 403. ``None`` lets
    everyone in (``memimg serve``, bound to loopback). *decorate* is
    applied to each view (the Flask integration marks them to run outside
    its request transaction).
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

    @bp.record_once
    def _register(state: Any) -> None:
        state.app.extensions.setdefault("memimg_inspector", {})[name] = inspector

    @bp.before_request
    def _guard() -> Response | None:
        if permission is not None and not permission():  # nothing of the image, not even its name
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


def create_app(inspector: Inspector) -> Flask:
    """A Flask app serving only the inspector over *inspector* at ``/`` (``memimg serve``)."""
    app = Flask("memimg.inspector")
    app.register_blueprint(blueprint(inspector))

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
    )
    headers = {"Allow": "GET, HEAD"} if code == 405 else {}
    return body, code, headers
