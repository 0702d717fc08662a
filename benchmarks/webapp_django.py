"""The orders service of workload (h) in Django: settings, URLs and views in one module.

gunicorn serves it as ``benchmarks.webapp_django:wsgi()`` with
``DJANGO_SETTINGS_MODULE=benchmarks.webapp_django``. The project's database
is the SQLite file ``BENCH_WEB_DJANGO_DB``; ``BENCH_WEB_TARGET`` is
``settings.MEMIMG["TARGET"]`` -- ``"default"`` (that database, the
documented setup) or a file path of its own -- so the two can be compared.
The endpoints and answers are those of :mod:`benchmarks.webapp`, on the same
``@persistent`` classes, with :mod:`memimg.contrib.django`'s request
transaction.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from benchmarks.webapp import Order, Shop
from memimg.contrib.django import root

SECRET_KEY = "benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["django.contrib.contenttypes", "memimg.contrib.django"]
MIDDLEWARE = ["memimg.contrib.django.middleware.MemimgMiddleware"]
ROOT_URLCONF = __name__
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("BENCH_WEB_DJANGO_DB", "")}}
MEMIMG = {"TARGET": os.environ.get("BENCH_WEB_TARGET", "default"), "ROOT": Shop, "RETRIES": 5}
USE_TZ = True


def add_order(request: HttpRequest, name: str) -> HttpResponse:
    customer = root().customers.get(name)
    if customer is None:
        raise Http404(name)
    data = json.loads(request.body)
    customer.orders.append(Order(str(data["sku"]), int(data["qty"]), int(data["price"])))
    customer.order_count += 1
    return JsonResponse({"count": customer.order_count}, status=201)


def show(request: HttpRequest, name: str) -> HttpResponse:
    customer = root().customers.get(name)
    if customer is None:
        raise Http404(name)
    last = [{"sku": o.sku, "qty": o.qty, "price": o.price} for o in customer.orders[-3:]]
    return JsonResponse({"name": name, "count": customer.order_count, "last": last})


urlpatterns = [
    path("customers/<str:name>/orders", csrf_exempt(require_POST(add_order))),
    path("customers/<str:name>", require_GET(show)),
]


def wsgi() -> Any:
    """The WSGI application (gunicorn: ``benchmarks.webapp_django:wsgi()``)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    booted = os.environ.get("BENCH_WEB_BOOTED")
    if booted:  # this worker is about to serve: tell the benchmark
        open(os.path.join(booted, str(os.getpid())), "w").close()
    return app


def prepare(target: str, database: str, names: list[str]) -> None:
    """Create Django's tables in *database* and the customers *names* in the image at *target*."""
    import subprocess
    import sys

    env = {**os.environ, "BENCH_WEB_DJANGO_DB": database, "BENCH_WEB_TARGET": target}
    env["DJANGO_SETTINGS_MODULE"] = __name__
    script = (
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('migrate', verbosity=0); from memimg.contrib.django import image; "
        "from benchmarks.webapp import Customer; import sys; "
        "image().root.customers.update({n: Customer(n) for n in sys.argv[1:]})"
    )
    subprocess.run([sys.executable, "-c", script, *names], env=env, check=True)
