"""The local run: the web server, the workers and the cron scheduler until Ctrl-C."""

from __future__ import annotations

import subprocess
import sys

from django.core.management.base import BaseCommand

from project.management.commands.run_workers import Supervisor


class Command(BaseCommand):
    help = "Serve the dashboard on 127.0.0.1:PORT and run the workers until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=2)

    def handle(self, *args, port: int, workers: int, **options):
        web = subprocess.Popen(
            [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"]
        )
        self.stdout.write(self.style.SUCCESS(f"Dashboard: http://127.0.0.1:{port}/"))
        try:
            Supervisor(workers, self.stdout, cron=True).run()
        finally:
            web.terminate()
            web.wait(timeout=10)
