"""Run RQ worker processes for every queue, plus the engine's sweeper, in the foreground."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from project import engine


def worker_command(queues: list[str]) -> list[str]:
    """The command line of one RQ worker process (also used by the tests)."""
    # SimpleWorker runs each chunk in the worker process itself: no fork per chunk, and
    # killing the worker kills its work (the engine's leases then hand the items on).
    return [
        sys.executable,
        "-m",
        "django",
        "rqworker",
        "--worker-class",
        "rq.worker.SimpleWorker",
        "--verbosity",
        "0",
        *queues,
    ]


class Supervisor:
    """Keeps N worker processes alive and sweeps every BATCH_SWEEP_SECONDS until stopped."""

    def __init__(self, workers: int, stdout=None):
        self.count = workers
        self.stdout = stdout or sys.stdout
        self.children: list[subprocess.Popen] = []
        self.stopping = False

    def spawn(self) -> subprocess.Popen:
        return subprocess.Popen(worker_command(list(settings.RQ_QUEUES)))

    def stop(self, *_args) -> None:
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.children = [self.spawn() for _ in range(self.count)]
        self.stdout.write(
            f"{self.count} workers on queues {', '.join(settings.RQ_QUEUES)}; Ctrl-C stops them\n"
        )
        next_sweep = 0.0
        try:
            while not self.stopping:
                for i, child in enumerate(self.children):
                    if child.poll() is not None:
                        self.stdout.write(
                            f"worker {child.pid} exited ({child.returncode}); restarting\n"
                        )
                        self.children[i] = self.spawn()
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + settings.BATCH_SWEEP_SECONDS
                time.sleep(0.2)
        finally:
            for child in self.children:
                if child.poll() is None:
                    child.terminate()
            deadline = time.monotonic() + 10
            for child in self.children:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()

    def sweep(self) -> None:
        try:
            for line in engine.sweep():
                self.stdout.write(f"sweep: {line}\n")
        except Exception as exc:  # a database or Redis outage: try again next round
            self.stdout.write(f"sweep failed: {type(exc).__name__}: {exc}\n")
        finally:
            close_old_connections()


class Command(BaseCommand):
    help = "Run WORKERS RQ worker processes and the batch engine's sweeper until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")

    def handle(self, *args, workers: int, **options):
        if workers < 1:
            self.stderr.write("--workers must be at least 1")
            sys.exit(2)
        Supervisor(workers, self.stdout).run()
