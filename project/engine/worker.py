"""RQ worker classes that also run the engine's recovery: no special supervisor needed.

settings.RQ["WORKER_CLASS"] names BatchWorker, so the stock django-rq commands
(`rqworker`, `rqworker-pool`), however they are started (systemd, Kubernetes,
supervisord), recover dead workers' jobs: while idle, a worker wakes every
BATCH_SWEEP_SECONDS and sweeps (guarded in Redis, so one sweep runs at a time anywhere).
On SIGTERM the work horse is told too, so a runner gives back what it has not started and
records what it finished before the worker exits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import signal

from django.conf import settings
from django.db import connections
from rq.worker import SimpleWorker, Worker

from project.connections import open_redis_connections
from project.engine import recovery
from project.kinds import all_kinds

log = logging.getLogger(__name__)


class RecoveryMixin:
    def work(self, *args, **kwargs):
        # Batch work yields the CPU to the dashboard and the database on a shared machine:
        # the web process keeps its priority, workers run at BATCH_WORKER_NICE.
        if settings.BATCH_WORKER_NICE:
            with contextlib.suppress(OSError):
                os.nice(settings.BATCH_WORKER_NICE)
        warm_up_kinds()
        # What the worker has made so far (Django, the kinds' modules and clients) lives as
        # long as it does: leave it out of garbage collection. A full collection then walks
        # only what jobs made, not about a hundred milliseconds' worth of start-up objects
        # while every thread of a running job waits (and a forked horse shares those pages).
        gc.freeze()
        return super().work(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        # Wake from the blocking dequeue often enough to sweep.
        return max(1, min(super().dequeue_timeout, math.ceil(settings.BATCH_SWEEP_SECONDS)))

    def heartbeat(self, timeout=None, pipeline=None):
        super().heartbeat(timeout, pipeline=pipeline)
        if pipeline is None:
            recovery.sweep_if_due()
            # A forking worker must not hand its database connection to the next horse.
            connections.close_all()


def warm_up_kinds() -> None:
    """Each kind's warm_up, and the Redis connections of the item threads, before the worker
    takes its first job; a failure is logged."""
    for kind in all_kinds():
        try:
            kind.warm_up()
        except Exception:
            log.exception("job kind %s: warm_up failed", kind.name)
    try:
        open_redis_connections(settings.BATCH_WARM_REDIS_CONNECTIONS)
    except Exception:
        log.exception("could not open Redis connections ahead of the first job")


class BatchWorker(RecoveryMixin, Worker):
    """The default worker (a forked work horse per chunk), with recovery."""

    def handle_warm_shutdown_request(self):
        super().handle_warm_shutdown_request()
        if self.horse_pid:
            # The runner in the horse gives back unstarted items and flushes (runner.py).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.horse_pid, signal.SIGTERM)


class SimpleBatchWorker(RecoveryMixin, SimpleWorker):
    """Runs chunks in the worker process itself (what `run_workers` starts), with recovery."""
