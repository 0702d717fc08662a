"""memimg in Django: the image opened from ``settings.MEMIMG``, and a transaction per request.

Add ``"memimg.contrib.django"`` to ``INSTALLED_APPS``,
``"memimg.contrib.django.middleware.MemimgMiddleware"`` last in
``MIDDLEWARE``, and a ``MEMIMG`` setting::

    MEMIMG = {"TARGET": "default", "ROOT": "bank.domain.Bank", "RETRIES": 3}

Then ``image()`` is the process's :class:`memimg.MemoryImage` and ``root()``
its root object. ``python manage.py memimg ...`` runs the memimg command
line on it. The guide is ``docs/django.md``.
"""

from memimg.contrib.django._config import MemimgSettings, database_url
from memimg.contrib.django._runtime import image, reopen, root
from memimg.contrib.django.middleware import MemimgMiddleware, non_transactional

__all__ = ["MemimgMiddleware", "MemimgSettings", "database_url", "image", "non_transactional", "reopen", "root"]
