"""Helpers for tests that run real RQ worker processes."""

from __future__ import annotations

import time

from project import engine
from project.connections import get_redis
from project.models import Job


def wait_for_job(job: Job, timeout: float = 90, sweep: bool = False) -> Job:
    """Poll until the job finishes; with `sweep`, also run recovery from the test process.

    The workers recover dead workers' jobs themselves, so tests leave `sweep` off unless
    they run no worker that could.
    """
    deadline = time.monotonic() + timeout
    next_sweep = 0.0
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.is_finished:
            return job
        if sweep and time.monotonic() >= next_sweep:
            get_redis().delete("batch:sweep")  # tests sweep more often than the period
            engine.sweep()
            next_sweep = time.monotonic() + 1
        time.sleep(0.1)
    raise AssertionError(
        f"job {job.pk} did not finish in {timeout} s: {job.status} {job.settled}/{job.total}"
    )


def wait_until(predicate, timeout: float = 30, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
