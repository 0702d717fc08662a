"""The inspector's pages, through Flask's test client, on every store: what they show, and how they refuse."""

from __future__ import annotations

import datetime as dt
import html
import re
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest

pytest.importorskip("flask")

import memimg
from memimg.inspector import Inspector, create_app
from tests.conftest import Images
from tests.inspector.shop import LONG, XSS_ATTR, XSS_SCRIPT, Marks, assert_escaped, build, text
from tests.models import Bank


class Site:
    def __init__(self, img: memimg.MemoryImage, marks: Marks) -> None:
        self.img = img
        self.marks = marks
        self.inspector = Inspector(img)
        self.client = create_app(self.inspector).test_client()

    def get(self, url: str, status: int = 200) -> str:
        response = self.client.get(url)
        body = response.get_data(as_text=True)
        assert response.status_code == status, (url, response.status_code, text(body)[:500])
        assert "Traceback" not in body
        return body


@pytest.fixture
def site(make_image: Images) -> Iterator[Site]:
    img = make_image(root=Bank)
    site = Site(img, build(img))
    yield site
    site.inspector.close()


# -- overview ------------------------------------------------------------------------------------------


def test_overview_shows_head_types_with_counts_snapshots_and_schema(site: Site) -> None:
    """The overview names the image, its head seq and time, each type with its count, the snapshots and the schema."""
    seq = site.img.snapshot()
    page = text(site.get("/"))
    assert site.img.store.description in page
    assert f"head {site.img.seq}" in page
    assert "tests.models.Account 3" in page
    assert f"tests.models.Entry {LONG + 1}" in page
    assert "tests.Bank 1" in page
    assert f"{seq} " in page and "state then" in page  # the snapshot, with a link to the state it holds
    schema = page.split("Schema", 1)[1]
    assert "tests.models.Account 1 owner , balance , tags , entries tests.models.Account version 1" in schema


def test_overview_links_every_type_to_its_page(site: Site) -> None:
    """Each type on the overview links to its instances."""
    body = site.get("/")
    assert 'href="/type/tests.models.Account"' in body and 'href="/type/list"' in body


# -- objects -------------------------------------------------------------------------------------------


def test_object_page_shows_fields_by_type_and_links_references(site: Site) -> None:
    """An entity's page lists its fields, values rendered by type, collections as links with their size."""
    body = site.get(f"/object/{site.marks.ada}")
    page = text(body)
    assert "Account #" in page and "owner ada" in html.unescape(page)
    assert 'class="v-number">20<' in body
    assert f'href="/object/{site.marks.ada}/history/balance"' in body
    entries = site.img.root.accounts["ada"].entries._mi_oid
    assert f'href="/object/{entries}"' in body and "(0 items)" in page


def test_object_page_shows_who_refers_to_it(site: Site) -> None:
    """'Referred to by' links the objects holding a reference to this one, and where they hold it."""
    body = site.get(f"/object/{site.marks.ada}")
    accounts = site.img.root.accounts._mi_oid
    referred = body.split("Referred to by", 1)[1]
    assert f'href="/object/{accounts}"' in referred and "[&#39;ada&#39;]" in referred


def test_a_long_collection_is_paginated(site: Site) -> None:
    """A list longer than a page shows one page of items, with links to the others; a page past the end is the last."""
    url = f"/object/{site.marks.entries}"
    first = text(site.get(url))
    assert f"{LONG} items" in first and "page 1 of 3" in first
    assert "Entry #" in first and " 49 Entry" in first and " 50 Entry" not in first
    last = text(site.get(url + "?page=3"))
    assert " 100 Entry" in last and f" {LONG - 1} Entry" in last and " 99 Entry" not in last
    assert "page 3 of 3" in text(site.get(url + "?page=99"))
    assert "not a page number" in text(site.get(url + "?page=two", 400))


def test_long_tuples_show_their_first_items_and_a_count(site: Site) -> None:
    """A tuple value is shown inline up to 20 items, then how many more there are."""
    site.img.root.name = tuple(range(100))
    flat = re.sub(r"<[^>]+>", "", site.get(f"/object/{site.img.root._mi_oid}"))
    assert "(0, 1, 2," in flat and ", 19, … 80 more)" in flat and ", 20," not in flat


def test_a_large_set_is_paginated_in_a_stable_order(site: Site) -> None:
    """A set's members are sorted for display, so its pages hold each member once."""
    tags = site.img.root.accounts["ada"].tags
    tags.update(f"t{i:03}" for i in range(120))
    pages = [html.unescape(text(site.get(f"/object/{tags._mi_oid}?page={n}"))) for n in (1, 2, 3)]
    seen = [f"t{i:03}" for i in range(120) if any(f'"t{i:03}"' in p or f" t{i:03} " in p for p in pages)]
    assert len(seen) == 120
    assert all(sum(f" t{i:03} " in p for p in pages) == 1 for i in range(120))


def test_dict_and_set_pages_show_keys_and_members(site: Site) -> None:
    """A dict's page lists key and value; a set's its members."""
    page = html.unescape(text(site.get(f"/object/{site.img.root.accounts._mi_oid}")))
    assert "ada Account #" in page and "bob Account #" in page
    tags = site.img.root.accounts[XSS_ATTR].tags._mi_oid
    assert XSS_SCRIPT in html.unescape(text(site.get(f"/object/{tags}")))


def test_unknown_objects_are_a_clear_404(site: Site) -> None:
    """An id no object has, or no id at all, answers 404 with a message saying so."""
    assert "there is no object #9999" in text(site.get("/object/9999", 404))
    assert "is not an object id" in html.unescape(text(site.get("/object/ada", 404)))
    assert "is not an object id" in text(site.get("/object/0", 404))


# -- types ---------------------------------------------------------------------------------------------


def test_type_page_lists_instances_paginated(site: Site) -> None:
    """A type's page lists its instances with their first fields, a page at a time."""
    page = text(site.get("/type/tests.models.Entry"))
    assert f"{LONG + 1} instances" in page and "page 1 of 3" in page
    assert "label" in page and "amount" in page


def test_type_page_filters_by_field(site: Site) -> None:
    """?field=&q= keeps the instances whose field's text contains q (case-insensitively)."""
    page = text(site.get("/type/tests.models.Account?field=owner&q=AD"))
    assert "1 instance " in page and "ada" in page and "bob" not in page
    assert "has no field 'nope'" in html.unescape(text(site.get("/type/tests.models.Account?field=nope&q=x", 400)))


def test_unknown_type_is_a_404_naming_the_types_there(site: Site) -> None:
    """A type with no instance answers 404 and lists the types that have some."""
    page = text(site.get("/type/shop.Nothing", 404))
    assert "no object of type" in page and "tests.models.Account" in page


# -- the log -------------------------------------------------------------------------------------------


def test_log_groups_events_by_transaction_with_meta(site: Site) -> None:
    """The log shows each transaction once, with its time and metadata, then its events."""
    body = site.get("/log")
    page = html.unescape(text(body))
    opening = [e for e in site.img.events() if e.meta.get("reason") == "opening"]
    tx = opening[0].tx
    assert len({e.tx for e in opening}) == 1 and len(opening) > 1  # one transaction of several events
    assert page.count(f"tx {tx} · ") == 1  # its heading, once for all its events
    assert "user ada reason opening" in page.split(f"tx {tx} · ", 1)[1].split("tx ", 1)[0]
    assert "user ada reason opening" in page and "user bob" in page and "user carol" in page
    assert "obj.set" in page


def test_log_filters_by_object_kind_time_and_meta(site: Site) -> None:
    """?object=, ?kind= (with *), ?from=/?to= and ?meta=KEY=VALUE each narrow the log."""
    by_meta = html.unescape(text(site.get("/log?meta=user=bob")))
    assert "user bob" in by_meta and "user ada" not in by_meta and "user carol" not in by_meta
    by_object = site.get(f"/log?object={site.marks.ada}")
    assert f'href="/object/{site.marks.ada}?at=' in by_object
    assert f'href="/object/{site.marks.bob}?at=' not in by_object
    by_kind = text(site.get("/log?kind=list.*"))
    assert "list.append" in by_kind or "list.extend" in by_kind
    assert "obj.set" not in by_kind
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    assert "No event matches" in text(site.get(f"/log?from={future.replace('+', '%2B')}"))
    assert "is not an ISO time" in text(site.get("/log?from=yesterday", 400))
    assert "is not KEY=VALUE" in text(site.get("/log?meta=user", 400))
    assert "is not an object id" in html.unescape(text(site.get("/log?object=ada", 400)))


# -- history -------------------------------------------------------------------------------------------


def test_field_history_shows_each_change_with_time_meta_old_and_new(site: Site) -> None:
    """A field's history lists its changes, newest first, each with its seq, time, metadata, old → new."""
    body = site.get(f"/object/{site.marks.ada}/history/balance")
    page = html.unescape(text(body))
    assert "1 change," in page
    assert "user bob" in page and " 10 → 20 " in page
    site.img.root.accounts["ada"].balance = Decimal(30)
    page = html.unescape(text(site.get(f"/object/{site.marks.ada}/history/balance")))
    assert "2 changes" in page and page.index(" 20 → 30 ") < page.index(" 10 → 20 ")
    tx = next(e.tx for e in site.img.events() if e.seq == site.marks.raised)
    assert tx < site.marks.raised  # its transaction began with its metadata
    assert f'href="/diff?a={tx - 1}&amp;b={site.marks.raised}"' in body  # the whole transaction, up to the change


def test_history_of_an_unknown_field_is_a_404(site: Site) -> None:
    """A field the type does not have answers 404 naming the fields it has."""
    page = html.unescape(text(site.get(f"/object/{site.marks.ada}/history/colour", 404)))
    assert "has no field 'colour'" in page and "owner" in page


# -- time travel ---------------------------------------------------------------------------------------


def test_every_page_shows_the_state_at_a_seq(site: Site) -> None:
    """?at=SEQ shows the state after that seq: the old value, the objects then, the banner saying so."""
    page = text(site.get(f"/object/{site.marks.ada}?at={site.marks.opened}"))
    assert "Showing the state after seq" in page and "owner ada history balance 10 history" in page
    assert "tests.models.Account 1" in text(site.get(f"/?at={site.marks.opened}"))
    assert "there is no object" in text(site.get(f"/object/{site.marks.bob}?at={site.marks.opened}", 404))
    assert "1 instance " in text(site.get(f"/type/tests.models.Account?at={site.marks.opened}"))
    history = text(site.get(f"/object/{site.marks.ada}/history/balance?at={site.marks.opened}"))
    assert "0 changes up to seq" in history


def test_at_takes_an_iso_time(site: Site) -> None:
    """?at=ISO-TIME shows the state after the last commit at or before it (UTC when no offset is given)."""
    opened = next(e.ts for e in site.img.events() if e.seq == site.marks.opened)
    page = text(site.get(f"/object/{site.marks.ada}?at={opened.isoformat().replace('+', '%2B')}"))
    assert "balance 10" in page
    naive = opened.astimezone(dt.UTC).replace(tzinfo=None).isoformat()
    assert "balance 10" in text(site.get(f"/object/{site.marks.ada}?at={naive}"))


def test_at_takes_a_time_whose_plus_became_a_space(site: Site) -> None:
    """A ``+`` typed in the address bar arrives as a space: ``?at=…T12:00 01:00`` is read as ``+01:00``."""
    opened = next(e.ts for e in site.img.events() if e.seq == site.marks.opened).astimezone(
        dt.timezone(dt.timedelta(hours=1))
    )
    typed = opened.isoformat().replace("+", " ")
    assert " 01:00" in typed
    assert "balance 10" in text(site.get(f"/object/{site.marks.ada}?at={typed}"))


def test_a_seq_inside_a_transaction_says_so_and_links_its_end(site: Site) -> None:
    """?at= a seq in the middle of a transaction shows that state, saying it is inside a transaction and
    linking the state at its end."""
    inside = site.marks.opened - 1
    assert next(e.tx for e in site.img.events() if e.seq == inside) == next(
        e.tx for e in site.img.events() if e.seq == site.marks.opened
    )
    body = site.get(f"/object/1?at={inside}")
    assert f"seq {inside} is inside a transaction, which ends at seq {site.marks.opened}" in text(body)
    assert f'href="/object/1?at={site.marks.opened}"' in body
    assert "inside a transaction" not in text(site.get(f"/object/1?at={site.marks.opened}"))


@pytest.mark.parametrize(
    "url",
    [
        "/?at={big}",
        "/object/{big}",
        "/object/1?page={big}",
        "/log?after={big}",
        "/log?object={big}",
        "/diff?a={big}",
        "/diff?a=1&b={big}",
        "/events?since={big}",
    ],
)
def test_a_number_too_long_to_be_a_seq_or_id_is_refused(site: Site, url: str) -> None:
    """A seq, id or page of thousands of digits answers 400 (or 404 for an object id) saying it is too long,
    never a 500."""
    response = site.client.get(url.format(big="9" * 5000))
    body = text(response.get_data(as_text=True))
    assert response.status_code in (400, 404), (url, response.status_code, body[:300])
    assert "digits" in body or "not an object id" in body


def test_the_slider_covers_the_kept_range(site: Site) -> None:
    """Each page has a time slider (a plain form) from the oldest kept seq to the head, at the seq shown."""
    body = site.get(f"/object/{site.marks.ada}?at={site.marks.raised}")
    assert f'min="1" max="{site.img.seq}" value="{site.marks.raised}"' in body
    assert 'type="range"' in body and 'name="at"' in body


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("yesterday", "neither a seq nor an ISO time"),
        ("-3", "neither a seq nor an ISO time"),
        ("0", "before the first commit"),
        ("99999", "past the newest seq"),
        ("2001-01-01T00:00Z", "before the first commit"),
    ],
)
def test_a_bad_at_is_a_400_saying_what_range_to_ask(site: Site, at: str, message: str) -> None:
    """A malformed ?at=, seq 0, a seq past the head, or a time before the first commit: 400 and what to ask."""
    page = text(site.get(f"/?at={at}", 400))
    assert message in page


def test_a_seq_before_the_oldest_kept_is_a_400_naming_the_oldest(make_image: Images) -> None:
    """After a compaction, ?at= a seq no longer kept answers 400 naming the oldest available seq."""
    img = make_image(root=Bank)
    marks = build(img)
    seq = img.snapshot()
    img.store.delete_events_before(seq)
    img.store.delete_snapshots_before(seq)
    site = Site(img, marks)
    page = text(site.get(f"/object/{marks.ada}?at={marks.opened}", 400))
    assert f"the oldest available seq is {seq}" in page
    assert f'min="{seq}"' in site.get("/")


# -- diff ----------------------------------------------------------------------------------------------


def test_diff_page_shows_each_difference_between_two_points(site: Site) -> None:
    """/diff?a=&b= lists each changed path with its old and new value."""
    page = html.unescape(text(site.get(f"/diff?a={site.marks.opened}&b={site.marks.raised}")))
    assert "1 difference" in page and "root.accounts['ada'].balance 10 → 20" in page
    assert "Give two seqs" in text(site.get("/diff"))
    assert "past the newest seq" in text(site.get("/diff?a=1&b=99999", 400))
    assert "is not a seq" in text(site.get("/diff?a=x", 400))


# -- read-only -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_than_get_are_405_and_change_nothing(site: Site, method: str) -> None:
    """Only GET (and HEAD) are served: anything else is 405, and the image is unchanged."""
    seq = site.img.seq
    for url in ("/", f"/object/{site.marks.ada}", "/log", "/events"):
        response = site.client.open(url, method=method, data={"balance": "0"})
        assert response.status_code == 405, (method, url)
        assert "GET" in response.headers["Allow"]
    assert site.img.seq == seq and site.img.root.accounts["ada"].balance == Decimal(20)


def test_pages_forbid_inline_script_and_framing_by_others(site: Site) -> None:
    """Every page sends a Content-Security-Policy without inline script, and nosniff."""
    response = site.client.get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# -- escaping ------------------------------------------------------------------------------------------


def test_values_holding_html_are_escaped_on_every_page(site: Site) -> None:
    """A value holding <script> or a quote-and-attribute is shown as text on every page that shows values."""
    m = site.marks
    tags = site.img.root.accounts[XSS_ATTR].tags._mi_oid
    shown = [
        f"/object/{site.img.root._mi_oid}",
        f"/object/{site.img.root.accounts._mi_oid}",
        f"/object/{m.shady}",
        f"/object/{m.entry}",
        f"/object/{tags}",
        "/type/tests.models.Account",
        "/type/tests.models.Entry?field=label&q=script",
        f"/object/{m.shady}/history/owner",
        f"/object/{site.img.root._mi_oid}/history/name",
        f"/object/{m.shady}/history",
        f"/diff?a={m.raised}&b={m.xss}",
        "/log",
        f"/object/{m.entry}?at={m.xss}",
    ]
    for url in shown:
        assert_escaped(site.get(url))
    quiet = ["/", "/type/tests.Bank", f"/?at={m.xss}"]
    for url in quiet:
        assert_escaped(site.get(url), shown=False)
    # what a request echoes back is escaped too
    for url, status in [
        ("/?at=%3Cscript%3Ealert(%22pwned%22)%3C/script%3E", 400),
        ("/type/%3Cscript%3Ealert(%22pwned%22)%3C/script%3E", 404),
        ("/log?meta=user%3D%22onmouseover%3D%22alert(1)", 200),
        ("/type/tests.models.Account?field=owner&q=%22onmouseover%3D%22alert(1)", 200),
        ("/log?kind=%3Cscript%3Ealert(%22pwned%22)%3C/script%3E", 200),
    ]:
        assert_escaped(site.get(url, status))


# -- live ----------------------------------------------------------------------------------------------


def test_events_stream_one_message_per_commit(site: Site) -> None:
    """/events is a server-sent event stream: a message for each commit after the seq asked, with its seq and meta."""
    response = site.client.get(f"/events?since={site.img.seq}", buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry:")

    def commit() -> None:
        with site.img.transaction(meta={"user": "dora"}):
            site.img.root.accounts["ada"].balance = Decimal(99)

    threading.Timer(0.2, commit).start()
    message = next(chunks).decode()
    response.close()
    assert message.startswith(f"id: {site.img.seq}\nevent: commit\n")
    assert '"user": "dora"' in message and f'"seq": {site.img.seq}' in message
    assert str(site.marks.ada) in message.split('"targets"', 1)[1]


def test_a_reconnecting_stream_resumes_after_the_last_event_it_got(site: Site) -> None:
    """A browser reconnecting sends Last-Event-ID: the stream goes on after that seq, missing no commit and
    repeating none."""
    loaded = site.img.seq  # the page was rendered at this seq (its stream URL says since=loaded)
    for balance in (31, 32, 33):
        site.img.root.accounts["ada"].balance = Decimal(balance)
    got = loaded + 1  # the browser had the first commit's message when the connection dropped
    response = site.client.get(f"/events?since={loaded}", headers={"Last-Event-ID": str(got)}, buffered=False)
    chunks = iter(response.response)
    next(chunks)
    first, second = next(chunks).decode(), next(chunks).decode()
    response.close()
    assert first.startswith(f"id: {got + 1}\n") and second.startswith(f"id: {got + 2}\n")


def test_pages_follow_the_head(site: Site) -> None:
    """After a commit, pages show the new head and the new value (no restart)."""
    site.img.root.accounts["ada"].balance = Decimal(21)
    page = text(site.get(f"/object/{site.marks.ada}"))
    assert f"head {site.img.seq}" in page and "balance 21" in page
