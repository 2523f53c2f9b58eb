from __future__ import annotations

from django.apps import AppConfig


class ScannerConfig(AppConfig):
    name = "scanner"
    verbose_name = "Inbox scanner"

    def ready(self) -> None:
        # The `scan_conversations` kind registers itself on import.
        from scanner import jobs  # noqa: F401
