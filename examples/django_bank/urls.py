"""URLs of the django_bank example."""

from django.urls import include, path

urlpatterns = [
    path("", include("examples.django_bank.bank.urls")),
]
