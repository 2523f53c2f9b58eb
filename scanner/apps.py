from __future__ import annotations

from django.apps import AppConfig


class ScannerConfig(AppConfig):
    name = "scanner"
    verbose_name = "Inbox scanner"

    def ready(self) -> None:
        # The `scan_conversations` kind registers itself on import.
        from scanner import jobs  # noqa: F401

    def write_demo_files(self) -> str:
        """Write the demo mailbox that the dashboard's scan form offers (mailbox:demo.mbox),
        unless this machine has it (bootstrap calls this whatever the database holds)."""
        from django.conf import settings

        from scanner.demo import write_demo_mailbox

        path = settings.SCANNER_MAILBOX_DIR / "demo.mbox"
        if path.exists():
            return f"demo mailbox {path} exists"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_mailbox(path)
        return f"demo mailbox written to {path} (scan it: source mailbox:demo.mbox)"
