"""Run RQ worker processes for every queue in the foreground, restarting any that exit.

The workers recover dead workers' jobs themselves (project/engine/worker.py), so this is a
plain supervisor: the stock `rqworker` / `rqworker-pool` under systemd or Kubernetes work
as well.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

# A worker that lived less than this was failing to start (Redis down, say): back off.
HEALTHY_SECONDS = 10
MAX_BACKOFF_SECONDS = 30


def worker_command(queues: list[str]) -> list[str]:
    """The command line of one RQ worker process (also used by the tests)."""
    # SimpleBatchWorker runs each chunk in the worker process itself: no fork per chunk,
    # and killing the worker kills its work (the engine's leases then hand the items on).
    return [
        sys.executable,
        "-m",
        "django",
        "rqworker",
        "--worker-class",
        "project.engine.worker.SimpleBatchWorker",
        "--verbosity",
        "0",
        *queues,
    ]


def cron_command() -> list[str]:
    """The command line of RQ's cron scheduler with the project's recurring jobs."""
    return [sys.executable, "-m", "django", "rqcron", "scheduler_app.cron"]


class Slot:
    """One worker process (or the cron scheduler) and when to restart it."""

    def __init__(self, command: list[str] | None = None):
        self.command = command
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.failures = 0
        self.restart_at = 0.0


class Supervisor:
    """Keeps N worker processes alive, restarting a failing one with exponential backoff."""

    def __init__(self, workers: int, stdout=None, cron: bool = False):
        self.slots = [Slot() for _ in range(workers)]
        if cron:
            self.slots.append(Slot(cron_command()))
        self.stdout = stdout or sys.stdout
        self.stopping = False

    def spawn(self, slot: Slot) -> None:
        slot.process = subprocess.Popen(slot.command or worker_command(list(settings.RQ_QUEUES)))
        slot.started = time.monotonic()

    def stop(self, *_args) -> None:
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for slot in self.slots:
            self.spawn(slot)
        workers = sum(1 for slot in self.slots if slot.command is None)
        cron = " and the cron scheduler (scheduler_app.cron)" if workers < len(self.slots) else ""
        self.stdout.write(
            f"{workers} workers{cron} on queues {', '.join(settings.RQ_QUEUES)}; "
            "Ctrl-C stops them\n"
        )
        try:
            while not self.stopping:
                for slot in self.slots:
                    self.check(slot)
                time.sleep(0.2)
        finally:
            self.stop_all()

    def check(self, slot: Slot) -> None:
        now = time.monotonic()
        if slot.process is None:
            if now >= slot.restart_at:
                self.spawn(slot)
            return
        if slot.process.poll() is None:
            return
        lived = now - slot.started
        slot.failures = 0 if lived >= HEALTHY_SECONDS else slot.failures + 1
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**slot.failures) if slot.failures else 0
        self.stdout.write(
            f"worker {slot.process.pid} exited ({slot.process.returncode}) after {lived:.1f} s; "
            f"restarting in {delay:.1f} s\n"
        )
        slot.process = None
        slot.restart_at = now + delay

    def stop_all(self) -> None:
        # SIGTERM: each worker's runner gives back unstarted items and records the rest.
        running = [s.process for s in self.slots if s.process and s.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + settings.BATCH_SHUTDOWN_GRACE + 5
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


class Command(BaseCommand):
    help = "Run WORKERS RQ worker processes until Ctrl-C, restarting any that exit."

    def add_arguments(self, parser):
        parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument(
            "--cron",
            action="store_true",
            help="also run RQ's cron scheduler (the hourly schedule_briefs); on one machine",
        )

    def handle(self, *args, workers: int, cron: bool, **options):
        if workers < 1:
            self.stderr.write("--workers must be at least 1")
            sys.exit(2)
        Supervisor(workers, self.stdout, cron=cron).run()
