"""URLs of the bank app."""

from django.urls import path

from examples.django_bank.bank import views

urlpatterns = [
    path("accounts/", views.accounts, name="accounts"),
    path("accounts/<str:owner>/", views.account, name="account"),
    path("accounts/<str:owner>/deposit/", views.deposit, name="deposit"),
    path("accounts/<str:owner>/withdraw/", views.withdraw, name="withdraw"),
    path("transfers/", views.transfer, name="transfer"),
]
