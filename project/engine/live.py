"""Live figures of a running job for its page: in-flight count, latency percentiles, failures.

All come from counters (a Redis histogram, the slots' `alive` keys, the job row), never from
scanning the items, so the progress partial stays fast on a million-item job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from project.connections import get_redis
from project.engine.slots import KEY_TTL, Slots
from project.models import Job

LATENCY_BASE = 1.1  # histogram buckets 10% wide: percentiles within ~5%


def latency_key(job_id: int) -> str:
    return f"batch:{job_id}:latency"


def latency_bucket(ms: float) -> int:
    return int(math.log(ms + 1, LATENCY_BASE))


def bucket_ms(bucket: int) -> float:
    return (LATENCY_BASE**bucket + LATENCY_BASE ** (bucket + 1)) / 2 - 1


def record_latency(job_id: int, durations: list[float]) -> None:
    """Add settled items' durations to the job's live histogram."""
    buckets: dict[int, int] = {}
    for ms in durations:
        b = latency_bucket(ms)
        buckets[b] = buckets.get(b, 0) + 1
    if not buckets:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        for b, n in buckets.items():
            pipe.hincrby(latency_key(job_id), b, n)
        pipe.expire(latency_key(job_id), KEY_TTL)
        pipe.execute()
    except redis.RedisError:
        pass  # live figures only; finalize computes exact ones from the items


@dataclass
class LiveFigures:
    in_flight: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None


def live_figures(job: Job) -> LiveFigures:
    """In-flight count and latency percentiles while a job runs: a few Redis reads, no scan."""
    if job.is_finished:
        return LiveFigures(0, job.p50_ms, job.p95_ms)
    figures = LiveFigures()
    try:
        histogram = get_redis().hgetall(latency_key(job.pk))
        figures.in_flight = Slots(job.pk, job.concurrency, "").in_flight()
    except redis.RedisError:
        return figures
    counts = sorted((int(b), int(n)) for b, n in histogram.items())
    total = sum(n for _, n in counts)
    for fraction, name in ((0.5, "p50_ms"), (0.95, "p95_ms")):
        rank, seen = max(1, math.ceil(fraction * total)), 0
        for bucket, n in counts:
            seen += n
            if seen >= rank:
                setattr(figures, name, bucket_ms(bucket))
                break
    return figures


MAX_FAILURE_GROUPS = 100
OTHER_FAILURES = "\x1fother"


def failure_key(job: Job, error_type: str, message: str) -> str:
    """The job.failure_counts key of a failure; past MAX_FAILURE_GROUPS, one for the rest."""
    key = f"{error_type}\x1f{message[:300]}"
    if key in job.failure_counts or len(job.failure_counts) < MAX_FAILURE_GROUPS:
        return key
    return OTHER_FAILURES


def failure_groups(job: Job, limit: int = 20) -> list[dict]:
    """Failures grouped by error type and message, most frequent first (from the counters)."""
    groups = []
    for key, count in job.failure_counts.items():
        error_type, _, message = key.partition("\x1f")
        if key == OTHER_FAILURES:
            error_type, message = "", "(other errors)"
        groups.append({"error_type": error_type, "error_message": message, "count": count})
    groups.sort(key=lambda g: (-g["count"], g["error_type"], g["error_message"]))
    return groups[:limit]
