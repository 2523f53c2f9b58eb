"""Helpers for tests that run real RQ worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from project import engine
from project.connections import get_redis
from project.models import Job, JobItem


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


def runners_holding_items(job: Job) -> int:
    """How many runners hold items of the job right now."""
    running = JobItem.objects.filter(job=job, status="running")
    return running.values("claimed_by").distinct().count()


def descendants(pid: int) -> list[int]:
    """A process and all its descendants (an RQ work horse starts a session of its own)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(current)], capture_output=True, text=True
        ).stdout.split()
        todo += [int(child) for child in children]
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, as when a machine dies."""
    for each in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def max_overlap(intervals) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
