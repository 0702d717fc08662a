"""WSGI entry point of the django_bank example (``gunicorn examples.django_bank.wsgi``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_bank.settings")

application = get_wsgi_application()
