from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    name = "project"
    verbose_name = "Batch jobs"

    def ready(self) -> None:
        # Job kinds register themselves on import; the synthetic `sleep` kind lives here.
        from project import jobs  # noqa: F401
