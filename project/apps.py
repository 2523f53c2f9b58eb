from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    name = "project"
    verbose_name = "Batch jobs"

    def ready(self) -> None:
        # Job kinds register themselves on import; the synthetic `sleep` kind lives here.
        from importlib import import_module

        from django.conf import settings

        from project import sleep  # noqa: F401

        for module in settings.BATCH_KIND_MODULES:
            import_module(module)
