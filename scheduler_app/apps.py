from __future__ import annotations

from django.apps import AppConfig


class SchedulerAppConfig(AppConfig):
    name = "scheduler_app"
    verbose_name = "Medicare outreach"

    def ready(self) -> None:
        # Registers the schedule_emails and send_due_emails job kinds with the engine.
        from scheduler_app import jobs  # noqa: F401

    def load_demo(self) -> str:
        """Demo contacts and a first schedule run (called by `manage.py bootstrap`)."""
        from scheduler_app.demo import load_demo

        return load_demo()
