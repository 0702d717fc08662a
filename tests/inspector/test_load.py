"""The inspector under load, on every store: what it does under the image's lock (little: an open page must not
stall the image's commits), what it shares between requests, and what it bounds."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

pytest.importorskip("flask")

import memimg
from memimg.inspector import Inspector, _model, _views, create_app
from tests.conftest import Images
from tests.inspector.shop import Marks, build, text
from tests.models import Account, Bank, Entry


class Site:
    def __init__(self, img: memimg.MemoryImage, marks: Marks, **options: Any) -> None:
        self.img = img
        self.marks = marks
        self.inspector = Inspector(img)
        self.client = create_app(self.inspector, **options).test_client()

    def get(self, url: str, status: int = 200) -> str:
        response = self.client.get(url)
        body = response.get_data(as_text=True)
        assert response.status_code == status, (url, response.status_code, text(body)[:500])
        return body


@pytest.fixture
def site(make_image: Images) -> Iterator[Site]:
    img = make_image(root=Bank)
    site = Site(img, build(img))
    yield site
    site.inspector.close()


def _owned(img: memimg.MemoryImage) -> bool:
    """Whether this thread holds *img*'s lock."""
    return img._engine.lock._is_owned()  # type: ignore[attr-defined, no-any-return]


# -- the image's lock ------------------------------------------------------------------------------------


def test_who_refers_to_an_object_is_indexed_without_the_images_lock(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object page's "Referred to by" walks every object of the image without holding its lock: another
    thread commits while the walk is under way, and the page still lists the referrers."""
    held: list[bool] = []
    committed = threading.Event()
    walk = _model.children

    def children(obj: Any) -> Any:
        held.append(_owned(site.img))
        if not committed.is_set():
            committer = threading.Thread(target=lambda: setattr(site.img.root, "name", "busy"))
            committer.start()
            committer.join(timeout=60)
            assert not committer.is_alive(), "a commit waited for the object page"
            committed.set()
        return walk(obj)

    monkeypatch.setattr(_model, "children", children)
    body = site.get(f"/object/{site.marks.ada}")
    assert held and not any(held)
    assert committed.is_set() and site.img.root.name == "busy"
    accounts = site.img.root.accounts._mi_oid
    assert f'href="/object/{accounts}"' in body.split("Referred to by", 1)[1]


def test_counts_instances_and_filters_scan_the_objects_without_the_images_lock(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overview's counts by type and a type page's instances (filtered too) are read from a copy of the
    object table, scanned outside the image's lock."""
    held: list[bool] = []
    census = _model._Census

    def scanned(seq: int, objects: list[Any]) -> Any:
        held.append(_owned(site.img))
        return census(seq, objects)

    described: list[tuple[Any, bool]] = []
    show = _views.describe

    def describe(value: Any, **kwargs: Any) -> Any:
        described.append((value, _owned(site.img)))
        return show(value, **kwargs)

    monkeypatch.setattr(_model, "_Census", scanned, raising=False)
    monkeypatch.setattr(_views, "describe", describe)
    assert "tests.models.Account 3" in text(site.get("/"))
    site.img.root.name = "next seq"  # a new seq: scanned again
    assert "1 instance " in text(site.get("/type/tests.models.Account?field=owner&q=bob"))
    assert held == [False, False]
    owners = {account.owner for account in site.img.root.accounts.values()}
    assert owners <= {value for value, owned in described if not owned}  # the filter read each owner unlocked


def test_a_large_set_is_sorted_outside_the_images_lock(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A set's page sorts its members (for an order that holds from page to page) outside the image's lock."""
    with site.img.transaction():
        tags = site.img.root.accounts["ada"].tags
        tags.update(f"tag{i:03}" for i in range(120))
    held: list[bool] = []
    sort_key = _views.value_repr

    def value_repr(value: Any) -> str:
        held.append(_owned(site.img))
        return sort_key(value)

    monkeypatch.setattr(_views, "value_repr", value_repr)
    page = text(site.get(f"/object/{tags._mi_oid}?page=2"))
    assert "tag050" in page and "tag049" not in page
    assert len(held) >= 120 and not any(held)


def test_a_history_page_reads_the_log_without_the_images_lock(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A history page reads (and, on a writable image, first indexes) the log outside the image's lock."""
    held: list[bool] = []
    history = site.img.history

    def watched(*args: Any, **kwargs: Any) -> Any:
        held.append(_owned(site.img))
        return history(*args, **kwargs)

    monkeypatch.setattr(site.img, "history", watched)
    assert "1 change," in text(site.get(f"/object/{site.marks.ada}/history/balance"))
    assert held == [False]


def test_the_head_shown_is_the_seq_the_content_was_read_at(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit landing after a page read its content and before it rendered does not move the page's head
    label nor its event stream past what it shows (the stream then sends that commit)."""
    seq = site.img.seq
    render = _views._page

    def late(*args: Any, **kwargs: Any) -> str:
        site.img.root.accounts["ada"].balance = Decimal(555)  # after the content was read
        return render(*args, **kwargs)

    monkeypatch.setattr(_views, "_page", late)
    body = site.get(f"/object/{site.marks.ada}")
    assert 'value="20"' in body or ">20<" in body
    assert f'<b id="head-seq">{seq}</b>' in body and f"events?since={seq}" in body


# -- past states -------------------------------------------------------------------------------------


def test_one_past_state_is_built_per_seq_however_many_ask_at_once(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests asking at the same past seq at the same time share one past image (built once)."""
    built: list[int] = []
    at = site.img.at
    gate = threading.Event()

    def slow_at(seq: int, **kwargs: Any) -> memimg.MemoryImage:
        built.append(seq)
        gate.wait(timeout=30)  # the others arrive while this one builds
        return at(seq, **kwargs)

    monkeypatch.setattr(site.img, "at", slow_at)
    pages: list[str] = []
    readers = [
        threading.Thread(target=lambda: pages.append(site.get(f"/object/{site.marks.ada}?at={site.marks.opened}")))
        for _ in range(4)
    ]
    for reader in readers:
        reader.start()
    threading.Timer(0.5, gate.set).start()
    for reader in readers:
        reader.join(timeout=60)
    assert len(pages) == 4 and all(">10<" in page for page in pages)
    assert built == [site.marks.opened]


def test_a_past_state_in_use_stays_open_when_dropped_from_the_cache(site: Site) -> None:
    """A past image a request is reading is not closed when other requests push it out of the cache; it is
    closed when that request is done."""
    ins = site.inspector
    with ins.state(site.marks.opened) as past:
        for seq in range(site.marks.opened + 1, site.marks.opened + 2 + _model.PAST_CACHE):
            with ins.state(seq):
                pass
        assert not past.closed
        assert past.root.accounts["ada"].balance == 10
    assert past.closed


def test_past_states_belong_to_their_image(make_image: Images, tmp_path: Any) -> None:
    """An inspector showing whichever image a function returns (an app's) keeps past states per image: the
    same seq of another image is that image's state; those of a closed image are closed."""
    first = make_image(root=Bank)
    first.root.name = "first"
    second = memimg.open(str(tmp_path / "second.db"), root=Bank)
    second.root.name = "second"
    first.root.name = "first again"
    second.root.name = "second again"
    current = [first]
    ins = Inspector(lambda: current[0])
    client = create_app(ins).test_client()
    at = first.seq - 1  # the first name, in both
    assert "name first " in text(client.get(f"/object/1?at={at}").get_data(as_text=True))
    with ins.state(at) as old:
        pass
    current[0] = second
    page = text(client.get(f"/object/1?at={at}").get_data(as_text=True))
    assert "name second " in page and "name first" not in page
    first.close()
    client.get(f"/object/1?at={at}")
    assert old.closed
    ins.close()
    second.close()


def test_a_diff_asked_again_is_not_recomputed(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The diff between two seqs is kept: following the same diff link again reads no log."""
    computed: list[tuple[int, int]] = []
    diff = site.img.diff

    def counted(a: int, b: int | None = None, **kwargs: Any) -> Any:
        computed.append((a, b or 0))
        return diff(a, b, **kwargs)

    monkeypatch.setattr(site.img, "diff", counted)
    url = f"/diff?a={site.marks.opened}&b={site.marks.raised}"
    first, again = site.get(url), site.get(url)
    assert first == again and "balance" in text(first)
    assert computed == [(site.marks.opened, site.marks.raised)]


def test_a_history_longer_than_a_page_is_paginated(site: Site) -> None:
    """A history page shows one page of changes, newest first, with links to the others."""
    ada = site.img.root.accounts["ada"]
    for i in range(_model.PAGE_SIZE + 5):
        ada.balance = Decimal(1000 + i)
    first = text(site.get(f"/object/{site.marks.ada}/history/balance"))
    total = _model.PAGE_SIZE + 6
    assert f"{total} changes" in first and "page 1 of 2" in first
    assert f"→ {1000 + _model.PAGE_SIZE + 4} " in first and "10 → 20" not in first
    second = text(site.get(f"/object/{site.marks.ada}/history/balance?page=2"))
    assert "10 → 20" in second and "page 2 of 2" in second


# -- the event stream --------------------------------------------------------------------------------


def test_a_stream_far_behind_the_head_starts_from_now(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """/events?since= more than STREAM_BACKLOG seqs behind the head replays nothing: the first message is the
    next commit."""
    monkeypatch.setattr(_views, "STREAM_BACKLOG", 3)
    response = site.client.get("/events?since=1", buffered=False)
    chunks = iter(response.response)
    next(chunks)
    threading.Timer(0.2, lambda: setattr(site.img.root, "name", "later")).start()
    message = next(chunks).decode()
    response.close()
    assert message.startswith(f"id: {site.img.seq}\n")


def test_a_stream_ends_after_its_lifetime(make_image: Images) -> None:
    """An event stream ends after stream_lifetime seconds (the browser reconnects, from the last seq it got),
    so it never holds a worker for good."""
    img = make_image(root=Bank)
    build(img)
    client = create_app(Inspector(img), stream_lifetime=0.3).test_client()
    response = client.get(f"/events?since={img.seq}", buffered=False)
    chunks = [chunk.decode() for chunk in response.response]  # ends by itself
    response.close()
    assert chunks[0].startswith("retry:") and not any("event: commit" in chunk for chunk in chunks)


def test_live_false_turns_the_stream_off(make_image: Images) -> None:
    """With live=False the pages name no event stream and /events answers 404 saying so."""
    img = make_image(root=Bank)
    build(img)
    client = create_app(Inspector(img), live=False).test_client()
    assert 'data-events=""' in client.get("/").get_data(as_text=True)
    refused = client.get("/events")
    assert refused.status_code == 404 and "live=False" in refused.get_data(as_text=True)


def test_the_objects_are_scanned_once_per_seq(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages asked at the same seq share one scan of the objects; a commit makes the next page scan again."""
    with site.img.transaction():
        site.img.root.accounts["ada"].entries.extend(Entry(f"x{i}", Decimal(i)) for i in range(50))
    scans: list[int] = []
    census = _model._Census

    def counted(seq: int, objects: list[Any]) -> Any:
        scans.append(seq)
        return census(seq, objects)

    monkeypatch.setattr(_model, "_Census", counted, raising=False)
    before = site.img.seq
    for _ in range(3):
        site.get(f"/object/{site.marks.ada}")
        site.get("/")
    assert scans == [before]
    site.img.root.accounts["bob2"] = Account("bob2")
    site.get(f"/object/{site.marks.ada}")
    assert scans == [before, site.img.seq]


def test_past_states_are_closed_with_the_inspector(make_image: Images) -> None:
    """An inspector let go (an app torn down without calling close()) closes the past states it kept."""
    img = make_image(root=Bank)
    marks = build(img)
    ins = Inspector(img)
    with ins.state(marks.opened) as past:
        pass
    assert not past.closed
    del ins
    gc.collect()
    assert past.closed
