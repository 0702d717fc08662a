"""A small bank on memimg and Flask: accounts, deposits and transfers over a JSON API.

Run it with ``flask --app examples.flask_bank run`` (see README.md).
"""

from .app import create_app, memimg_ext

__all__ = ["create_app", "memimg_ext"]
