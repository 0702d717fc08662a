"""Settings of the django_bank example: memimg keeps the bank in the project's own SQLite database."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-memimg-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "memimg.contrib.django",
    "examples.django_bank.bank",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    # last: on a conflict the request is handled again from here on, i.e. only the view
    "memimg.contrib.django.middleware.MemimgMiddleware",
]

ROOT_URLCONF = "examples.django_bank.urls"
WSGI_APPLICATION = "examples.django_bank.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_BANK_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

MEMIMG = {
    # "default" is the DATABASES alias: memimg_events & co. sit next to Django's tables
    "TARGET": "default",
    "ROOT": "examples.django_bank.bank.domain.Bank",
    "RETRIES": 3,
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
