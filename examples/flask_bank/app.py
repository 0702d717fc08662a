"""The app factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from memimg.contrib.flask import MemImg

from .models import Bank

memimg_ext = MemImg()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A bank app; *config* overrides the defaults and ``FLASK_*`` environment variables.

    The image is ``instance/bank.db`` unless ``MEMIMG_TARGET`` says otherwise
    (``FLASK_MEMIMG_TARGET=/var/lib/bank.db``, or a PostgreSQL URL).
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        MEMIMG_ROOT=Bank,  # or the import string "examples.flask_bank.models:Bank"
        MEMIMG_TARGET="bank.db",  # relative paths are inside app.instance_path
        MEMIMG_RETRIES=5,
    )
    app.config.from_prefixed_env()
    if config:
        app.config.from_mapping(config)
    memimg_ext.init_app(app)

    from .api import bp

    app.register_blueprint(bp)
    return app
