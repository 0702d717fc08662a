"""The inspector: a read-only web UI over any image (``memimg serve``; embeddable in Flask and Django apps).

Server-rendered Jinja2 templates (autoescaped) in a Flask blueprint, a small
stylesheet and a small script (the time slider, live updates by server-sent
events); plain browsing works without JavaScript. Needs Flask (the
``memimg[flask]`` extra). The guide is ``docs/inspector.md``.
"""

from memimg.inspector._model import BadRequest, Inspector, NotFound
from memimg.inspector._permission import permitted, require_permission
from memimg.inspector._views import blueprint, create_app

__all__ = ["BadRequest", "Inspector", "NotFound", "blueprint", "create_app", "permitted", "require_permission"]
