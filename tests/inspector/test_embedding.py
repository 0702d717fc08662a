"""The inspector inside an application: a Flask blueprint behind the app's permission hook (Django: test_django)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

flask = pytest.importorskip("flask")

import memimg  # noqa: E402
from memimg.contrib.flask import MemImg, inspector  # noqa: E402
from tests.inspector.shop import assert_escaped, build, text  # noqa: E402
from tests.models import Bank  # noqa: E402


@pytest.fixture
def img(tmp_path: Any) -> Iterator[memimg.MemoryImage]:
    image = memimg.open(str(tmp_path / "bank.db"), root=Bank)
    build(image)
    yield image
    image.close()


def test_mounting_without_a_permission_hook_is_refused(img: memimg.MemoryImage) -> None:
    """inspector() without permission= raises, saying why and how; debug=True mounts it anyway (with a warning)."""
    with pytest.raises(ValueError, match="needs permission=.*debug=True"):
        inspector(img)
    with pytest.raises(ValueError, match="must be a function"):
        inspector(img, permission=True)  # type: ignore[arg-type]
    app = flask.Flask(__name__)
    app.register_blueprint(inspector(img, debug=True))
    assert app.test_client().get("/_memimg/").status_code == 200


def test_debug_mount_logs_a_warning(img: memimg.MemoryImage, caplog: pytest.LogCaptureFixture) -> None:
    """Mounting without a hook in debug says so in the log."""
    with caplog.at_level(logging.WARNING, logger="memimg.flask"):
        inspector(img, debug=True)
    assert "without a permission hook" in caplog.text


def test_the_permission_hook_decides_each_request(img: memimg.MemoryImage) -> None:
    """The hook runs in each request: false answers 403 with nothing of the image, true shows the pages."""
    app = flask.Flask(__name__)
    app.register_blueprint(inspector(img, permission=lambda: flask.request.headers.get("X-Admin") == "yes"))
    client = app.test_client()
    denied = client.get(f"/_memimg/object/{img.root._mi_oid}")
    refused = denied.get_data(as_text=True)
    assert denied.status_code == 403 and "accounts" not in refused and img.store.description not in refused
    assert client.get("/_memimg/events").status_code == 403
    allowed = client.get(f"/_memimg/object/{img.root._mi_oid}", headers={"X-Admin": "yes"})
    assert allowed.status_code == 200 and "accounts" in text(allowed.get_data(as_text=True))


def test_links_stay_under_the_prefix(img: memimg.MemoryImage) -> None:
    """Every link, the stylesheet and the event stream are under the blueprint's url_prefix."""
    app = flask.Flask(__name__)
    app.register_blueprint(inspector(img, url_prefix="/admin/image", permission=lambda: True))
    body = app.test_client().get("/admin/image/").get_data(as_text=True)
    assert 'href="/admin/image/static/inspector.css"' in body
    assert 'data-events="/admin/image/events?since=' in body
    assert 'href="/admin/image/type/tests.models.Account"' in body
    hrefs = [h for h in body.split('href="')[1:] if h.startswith("/")]
    assert hrefs and all(h.startswith("/admin/image/") for h in hrefs)


def test_in_a_memimg_app_the_views_use_its_image_and_write_nothing(tmp_path: Any) -> None:
    """With no image given, the blueprint shows the MemImg image of the app; its views open no request
    transaction, and other methods are 405 (the app's own views still commit)."""
    app = flask.Flask(__name__)
    app.config.update(MEMIMG_ROOT=Bank, MEMIMG_TARGET=str(tmp_path / "app.db"))
    ext = MemImg()
    ext.init_app(app)
    app.register_blueprint(inspector(permission=lambda: True))

    @app.post("/deposit")
    def deposit() -> str:
        from memimg.contrib.flask import root

        root.name = "deposited"
        return "ok"

    with app.app_context():
        build(ext.image)
        seq = ext.image.seq
    client = app.test_client()
    page = client.get("/_memimg/")
    assert page.status_code == 200 and f"head {seq}" in text(page.get_data(as_text=True))
    assert client.post("/_memimg/").status_code == 405
    assert client.get("/_memimg/object/1").status_code == 200
    with app.app_context():
        assert ext.image.seq == seq
    assert client.post("/deposit").status_code == 200
    body = client.get("/_memimg/object/1").get_data(as_text=True)
    assert "deposited" in body
    assert_escaped(body, shown=False)
    with app.app_context():
        ext.image.close()


def test_two_inspectors_on_two_images_in_one_app(img: memimg.MemoryImage, tmp_path: Any) -> None:
    """Blueprints with distinct names show their own images."""
    other = memimg.open(str(tmp_path / "other.db"), root=Bank)
    other.root.name = "the other one"
    app = flask.Flask(__name__)
    app.register_blueprint(inspector(img, permission=lambda: True))
    app.register_blueprint(inspector(other, url_prefix="/other", name="other", permission=lambda: True))
    client = app.test_client()
    assert "the other one" in client.get(f"/other/object/{other.root._mi_oid}").get_data(as_text=True)
    assert "the other one" not in client.get(f"/_memimg/object/{img.root._mi_oid}").get_data(as_text=True)
    other.close()


def test_a_permission_hook_that_raises_refuses(img: memimg.MemoryImage, caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises (say, current_user has no is_admin for an anonymous user) refuses the request:
    403 with nothing of the image, the error in the log."""

    def permission() -> bool:
        raise AttributeError("'AnonymousUserMixin' object has no attribute 'is_admin'")

    app = flask.Flask(__name__)
    app.register_blueprint(inspector(img, permission=permission))
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="memimg.inspector"):
        for url in ("/_memimg/", f"/_memimg/object/{img.root._mi_oid}", "/_memimg/events"):
            response = client.get(url)
            body = response.get_data(as_text=True)
            assert response.status_code == 403, url
            assert img.store.description not in body and "head" not in body and "accounts" not in body
    assert "permission hook raised" in caplog.text and "is_admin" in caplog.text


def test_the_blueprint_nests_in_another_and_takes_any_name(img: memimg.MemoryImage) -> None:
    """Registered inside another blueprint, or under another name, the pages work and link under their prefix."""
    app = flask.Flask(__name__)
    admin = flask.Blueprint("admin", __name__, url_prefix="/admin")
    admin.register_blueprint(inspector(img, url_prefix="/image", permission=lambda: True))
    app.register_blueprint(admin)
    app.register_blueprint(inspector(img, url_prefix="/again", permission=lambda: True), name="again")
    client = app.test_client()
    for prefix in ("/admin/image", "/again"):
        page = client.get(f"{prefix}/object/{img.root._mi_oid}")
        body = page.get_data(as_text=True)
        assert page.status_code == 200, (prefix, text(body)[:300])
        assert f'href="{prefix}/static/inspector.css"' in body and f'data-events="{prefix}/events?since=' in body
        assert client.get(f"{prefix}/static/inspector.js").status_code == 200


def test_live_false_pages_open_no_stream(img: memimg.MemoryImage) -> None:
    """inspector(live=False): pages name no event stream, /events is 404 (for apps whose workers cannot be
    held by streams)."""
    app = flask.Flask(__name__)
    app.register_blueprint(inspector(img, permission=lambda: True, live=False))
    client = app.test_client()
    assert 'data-events=""' in client.get("/_memimg/").get_data(as_text=True)
    assert client.get("/_memimg/events").status_code == 404
