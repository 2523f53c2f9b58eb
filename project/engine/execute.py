"""Running a kind on claimed items, in a runner's threads: slots, retries, deadlines.

Nothing here raises: whatever a kind does, every item a thread takes comes back as exactly
one Result. Transient failures are retried with exponential backoff and jitter (a 429
pauses the limiter it came from instead); permanent ones fail at once. The runner's
watchdog fails a unit that outlives its deadline (see runner.py).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import count
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from project.engine.store import Claimed
from project.kinds import Item, JobKind, Outcome, is_transient, pause_seconds
from project.models import Job, JobItem
from project.ratelimit import get_limiter

# Not a JobItem status: the item never ran (the runner was stopping); the runner gives it
# back, or cancels it if the job was cancelled.
UNSTARTED = "unstarted"


@dataclass
class Result:
    """One item's final state as a runner thread reports it."""

    item_id: int
    status: str
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    summary: str = ""
    error_type: str = ""
    error_message: str = ""
    tallies: dict = field(default_factory=dict)
    record: Any = None  # the outcome's, for JobKind.record


_unit_ids = count(1)


@dataclass(eq=False)
class Unit:
    """The rows one thread works on at once (one item, or one batch of a batch kind)."""

    rows: list[Claimed]
    id: int = field(default_factory=lambda: next(_unit_ids))
    deadline: float | None = None  # time.monotonic(); set when it first gets a slot
    holds_slot: bool = False
    thread: threading.Thread | None = None
    attempts: dict[int, int] = field(default_factory=dict)  # item id -> attempts so far

    def attempts_of(self, row: Claimed) -> int:
        return self.attempts.get(row.id, row.attempts)


def printable(text: str) -> str:
    """Text PostgreSQL can store: no NUL characters (an error message may carry anything)."""
    return text.replace("\x00", "\\x00")


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: attempt 1 waits up to base, 2 up to 2 x base..."""
    ceiling = min(
        settings.BATCH_RETRY_MAX_SECONDS, settings.BATCH_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    )
    return random.uniform(ceiling / 2, ceiling)


def failure(item_id, error, attempt, started_at=None, duration_ms=None, finished_at=None):
    return Result(
        item_id,
        JobItem.Status.FAILED,
        attempt,
        started_at,
        finished_at or timezone.now(),
        duration_ms,
        error_type=type(error).__name__,
        error_message=printable(str(error) or repr(error))[:2000],
    )


def success(item_id, outcome, attempt, started_at, duration_ms, finished_at) -> Result:
    """The result of an item that returned; raises TypeError for an outcome it cannot store."""
    if not isinstance(outcome, Outcome):
        outcome = Outcome(summary="" if outcome is None else str(outcome))
    if outcome.status not in (JobItem.Status.SUCCEEDED, JobItem.Status.SKIPPED):
        raise TypeError(f"an outcome is 'succeeded' or 'skipped', not {outcome.status!r}")
    if not isinstance(outcome.tallies, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in outcome.tallies.items()
    ):
        raise TypeError(f"outcome tallies map names to integers, not {outcome.tallies!r}")
    return Result(
        item_id,
        outcome.status,
        attempt,
        started_at,
        finished_at,
        duration_ms,
        printable(outcome.summary),
        tallies=dict(outcome.tallies),
        record=outcome.record,
    )


class Executor:
    """Runs units for one runner: takes a slot per attempt, retries, reports Results."""

    def __init__(self, job: Job, kind: JobKind, pool, stopping, shutdown):
        self.job = job
        self.kind = kind
        self.pool = pool
        self.stopping = stopping  # cancelled, stopped by the error policy, or shutting down
        self.shutdown = shutdown  # the worker is going away: give unstarted items back
        self.timeout = kind.timeout or settings.BATCH_ITEM_TIMEOUT

    def run_unit(self, unit: Unit, resource=None) -> list[Result]:
        """Every row of the unit as exactly one Result; never raises."""
        try:
            if self.kind.batch_size:
                return list(self.run_batch(unit, unit.rows, resource).values())
            return [self.run_item(unit, unit.rows[0], resource)]
        except Exception as exc:
            # A fault outside the kind's own call (a result that cannot be stored, say):
            # fail the items rather than leave them running for ever.
            return [failure(row.id, exc, max(1, unit.attempts_of(row))) for row in unit.rows]

    def take_slot(self, unit: Unit) -> bool:
        if not self.pool.acquire(unit):
            return False
        if unit.deadline is None:
            unit.deadline = time.monotonic() + self.timeout
        return True

    def item(self, unit: Unit, row: Claimed, attempt: int, resource) -> Item:
        return Item(row.id, row.key, attempt, row.data, unit.deadline, resource)

    def not_run(self, row: Claimed, attempt: int, last: Result | None) -> Result:
        """What an item that cannot start now becomes: given back, or its last failure."""
        if last is None or self.shutdown.is_set():
            return Result(row.id, UNSTARTED, attempt)
        return last

    def run_item(self, unit: Unit, row: Claimed, resource) -> Result:
        attempt, started_at, last = row.attempts, None, None
        while True:
            if not self.take_slot(unit):
                return self.not_run(row, attempt, last)
            attempt += 1
            unit.attempts[row.id] = attempt
            started_at = started_at or timezone.now()
            begin = time.perf_counter()
            error = None
            try:
                outcome = self.kind.run_item(self.job, self.item(unit, row, attempt, resource))
            except Exception as exc:
                error = exc
            finally:
                # Timestamps are taken while the slot is held, so recorded [started_at,
                # finished_at] intervals never overlap more than the concurrency limit.
                duration_ms = (time.perf_counter() - begin) * 1000
                finished_at = timezone.now()
                self.pool.release(unit)
            if error is None:
                return success(row.id, outcome, attempt, started_at, duration_ms, finished_at)
            last = failure(row.id, error, attempt, started_at, duration_ms, finished_at)
            if not is_transient(error) or attempt >= settings.BATCH_MAX_ATTEMPTS:
                return last
            if not self.wait_before_retry(error, attempt):
                return self.not_run(row, attempt, last)

    def run_batch(self, unit: Unit, rows: list[Claimed], resource) -> dict[int, Result]:
        """Run a batch kind on rows; retry transient failures; isolate a failing batch.

        1. Call run_batch with every row still to do, holding one slot.
        2. A call that raises a permanent error is split: each row runs alone, so one bad
           item fails alone.
        3. Rows that failed transiently (the whole call, or their own outcome) run again
           after the same backoff as item kinds, up to BATCH_MAX_ATTEMPTS.
        """
        results: dict[int, Result] = {}
        last: dict[int, Result] = {}
        todo = rows
        started_at = None
        while todo:
            if not self.take_slot(unit):
                for row in todo:
                    results[row.id] = self.not_run(row, unit.attempts_of(row), last.get(row.id))
                break
            items = []
            for row in todo:
                unit.attempts[row.id] = unit.attempts_of(row) + 1
                items.append(self.item(unit, row, unit.attempts[row.id], resource))
            started_at = started_at or timezone.now()
            begin = time.perf_counter()
            try:
                outcomes = self.kind.run_batch(self.job, items)
                if not isinstance(outcomes, Mapping):
                    raise TypeError(
                        f"run_batch of {self.kind.name!r} returned {type(outcomes).__name__}, "
                        "not a mapping of item keys to outcomes"
                    )
            except Exception as exc:
                if len(todo) > 1 and not is_transient(exc):
                    self.pool.release(unit)
                    for row in todo:
                        results.update(self.run_batch(unit, [row], resource))
                    break
                outcomes = {item.key: exc for item in items}
            finally:
                duration_ms = (time.perf_counter() - begin) * 1000 / len(items)
                finished_at = timezone.now()
                self.pool.release(unit)
            retry, first_error = [], None
            for row, item in zip(todo, items, strict=True):
                outcome = outcomes.get(item.key, Outcome())
                if not isinstance(outcome, Exception):
                    results[row.id] = success(
                        row.id, outcome, item.attempt, started_at, duration_ms, finished_at
                    )
                    continue
                result = failure(
                    row.id, outcome, item.attempt, started_at, duration_ms, finished_at
                )
                if is_transient(outcome) and item.attempt < settings.BATCH_MAX_ATTEMPTS:
                    retry.append(row)
                    last[row.id] = result
                    first_error = first_error or (outcome, item.attempt)
                else:
                    results[row.id] = result
            todo = retry
            if todo and not self.wait_before_retry(*first_error):
                for row in todo:
                    results[row.id] = self.not_run(row, unit.attempts_of(row), last[row.id])
                break
        return results

    def wait_before_retry(self, error: Exception, attempt: int) -> bool:
        """Sleep the backoff, or pause the limiter a 429 came from; False if stopping."""
        pause = pause_seconds(error)
        if pause is not None:
            name = getattr(error, "limiter", None) or self.kind.limiter_for(self.job)
            if name:
                with contextlib.suppress(KeyError, redis.RedisError):
                    get_limiter(name).pause(pause)
        deadline = time.monotonic() + (pause if pause is not None else backoff_seconds(attempt))
        while time.monotonic() < deadline:
            if self.stopping.wait(min(0.2, max(0, deadline - time.monotonic()))):
                return False
        return True
