"""Counting settled items into the job's counters, the error policy, and finishing a job."""

from __future__ import annotations

import logging

import redis
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from project.connections import get_redis
from project.engine import store
from project.engine.live import failure_key, latency_key
from project.engine.slots import Slots
from project.kinds import get_kind
from project.models import Job, JobItem, percentile

log = logging.getLogger(__name__)


def count(job: Job, results: list) -> None:
    """Add settled items' results to the job's counters (in memory; the caller saves)."""
    for r in sorted(results, key=lambda r: r.finished_at or timezone.now()):
        setattr(job, r.status, getattr(job, r.status) + 1)
        if r.status == JobItem.Status.FAILED:
            job.consecutive_failures += 1
            group = failure_key(job, r.error_type, r.error_message)
            job.failure_counts[group] = job.failure_counts.get(group, 0) + 1
        elif r.status == JobItem.Status.SUCCEEDED:
            job.consecutive_failures = 0
        job.duration_total_ms += r.duration_ms or 0
        for name, n in r.tallies.items():
            job.tallies[name] = job.tallies.get(name, 0) + n


COUNTER_FIELDS = [
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
    "consecutive_failures",
    "tallies",
    "failure_counts",
    "duration_total_ms",
    "error",
    "heartbeat_at",
]


def stop_reason(job: Job) -> str:
    """Why the error policy stops the job now, or ""."""
    limit = job.stop_after_consecutive
    if limit and job.consecutive_failures >= limit:
        return f"Stopped after {job.consecutive_failures} consecutive failures (limit {limit})."
    done = job.succeeded + job.failed
    if (
        job.stop_failure_ratio is not None
        and done >= job.stop_min_items
        and job.failed / done >= job.stop_failure_ratio
    ):
        return (
            f"Stopped: {job.failed:,} of {done:,} items failed ({job.failed / done:.0%}, "
            f"limit {job.stop_failure_ratio:.0%} after {job.stop_min_items})."
        )
    return ""


def cancel_pending(job_id: int) -> int:
    """Cancel every item nobody has claimed; return how many (the caller counts them)."""
    return JobItem.objects.filter(job_id=job_id, status=JobItem.Status.PENDING).update(
        status=JobItem.Status.CANCELLED, finished_at=timezone.now()
    )


def fail_job(job_id: int, error: str) -> None:
    """Fail a job as a whole (its kind is gone, say): cancel what is left and finish it."""
    with transaction.atomic():
        Job.objects.select_for_update().get(pk=job_id)
        left = store.claimable(job_id).update(
            status=JobItem.Status.CANCELLED, finished_at=timezone.now(), lease_until=None
        )
        Job.objects.filter(pk=job_id, finished_at__isnull=True).update(
            error=error[:2000], planning_done=True, cancelled=F("cancelled") + left
        )
    finalize(job_id)


PERCENTILES_SQL = """
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms)
FROM {table} WHERE job_id = %s AND duration_ms IS NOT NULL
"""


def duration_percentiles(job_id: int) -> tuple[float | None, float | None]:
    """Exact nearest-rank p50 and p95 of the items' durations."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(PERCENTILES_SQL.format(table=JobItem._meta.db_table), [job_id])
            return cursor.fetchone()
    durations = sorted(
        JobItem.objects.filter(job_id=job_id, duration_ms__isnull=False).values_list(
            "duration_ms", flat=True
        )
    )
    return percentile(durations, 0.50), percentile(durations, 0.95)


def final_tallies(job: Job) -> dict:
    try:
        return get_kind(job.kind).final_tallies(job)
    except KeyError:
        return job.tallies


def summary_line(job: Job) -> str:
    """The kind's one-line summary of a finished job (the generic tally by default)."""
    try:
        kind = get_kind(job.kind)
    except KeyError:
        return job.summary_line()
    return kind.summary_line(job)[: Job._meta.get_field("summary").max_length]


def finalize(job_id: int) -> bool:
    """Finish the job if every item has settled; True for the one caller that does it."""
    job = Job.objects.get(pk=job_id)
    if job.is_finished or not job.planning_done or job.settled < job.total:
        return False
    job.finished_at = timezone.now()
    job.status = job.final_status()
    job.tallies, job.summary = final_tallies(job), summary_line(job)
    job.p50_ms, job.p95_ms = duration_percentiles(job_id)
    won = Job.objects.filter(pk=job_id, finished_at__isnull=True).update(
        status=job.status,
        finished_at=job.finished_at,
        summary=job.summary,
        tallies=job.tallies,
        p50_ms=job.p50_ms,
        p95_ms=job.p95_ms,
        started_at=job.started_at or job.finished_at,
    )
    if not won:
        return False
    log.info("job %s %s: %s", job.pk, job.status, job.summary)
    try:
        get_kind(job.kind).on_finished(job)
    except Exception:
        log.exception("on_finished hook of job %s failed", job.pk)
    try:
        Slots(job.pk, job.concurrency, "").delete()
        get_redis().delete(latency_key(job.pk))
    except redis.RedisError:
        pass  # the keys expire by themselves
    return True
