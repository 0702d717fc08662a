"""The Django app: opens the image from ``settings.MEMIMG`` when Django starts."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped, unused-ignore]
from django.core.signals import setting_changed  # type: ignore[import-untyped, unused-ignore]

from memimg.contrib.django import _runtime

__all__ = ["MemimgConfig"]


class MemimgConfig(AppConfig):  # type: ignore[misc, unused-ignore]
    """``"memimg.contrib.django"`` in ``INSTALLED_APPS``.

    ``ready()`` checks ``settings.MEMIMG`` and opens the image (unless
    ``"LAZY": True``), so a wrong setting stops the process at startup with
    ``ImproperlyConfigured`` naming the key to fix. Overriding the setting
    (``override_settings(MEMIMG=...)``) reopens the image.
    """

    name = "memimg.contrib.django"
    label = "memimg"
    verbose_name = "memimg"

    def ready(self) -> None:
        _runtime.start()
        setting_changed.connect(_runtime.on_setting_changed, dispatch_uid="memimg.contrib.django.settings")
