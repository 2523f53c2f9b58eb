"""Jobs and their items: the batch engine's source of truth.

A Job is one run of a batch of a given kind; a JobItem is one unit of its work. Counters on
the job are kept exact by the engine (project/engine/) so pages never scan the items.
"""

from __future__ import annotations

import math

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

ACTIVE_STATUSES = ["planning", "queued", "running"]


class JobQuerySet(models.QuerySet):
    def active(self) -> JobQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def finished(self) -> JobQuerySet:
        return self.exclude(status__in=ACTIVE_STATUSES)


class Job(models.Model):
    class Status(models.TextChoices):
        PLANNING = "planning"  # a planner is still adding items; they run meanwhile
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        COMPLETED_WITH_ERRORS = "completed_with_errors", "completed with errors"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Source(models.TextChoices):
        DASHBOARD = "dashboard"
        ADMIN = "admin"
        COMMAND = "command"
        SCHEDULE = "schedule"

    kind = models.CharField(max_length=50)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=24, choices=Status, default=Status.QUEUED)
    source = models.CharField(max_length=12, choices=Source, default=Source.COMMAND)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    concurrency = models.PositiveIntegerField(default=20)
    # Error policy: stop once this many failures in a row, or once the failure ratio
    # exceeds stop_failure_ratio after stop_min_items settled items. Null: never stop.
    stop_after_consecutive = models.PositiveIntegerField(null=True, blank=True)
    stop_failure_ratio = models.FloatField(null=True, blank=True)
    stop_min_items = models.PositiveIntegerField(default=50)

    # False while a planner is still adding items; the job cannot finish before it is True.
    planning_done = models.BooleanField(default=True)
    # A cancel came before the planner had added every item: the job did not run to its end.
    planning_cut = models.BooleanField(default=False)
    # Where a planner that died resumes (the kind's own cursor), and until when the planner
    # running now holds the job (project/engine/planning.py).
    plan_cursor = models.TextField(blank=True)
    planner_lease_until = models.DateTimeField(null=True, blank=True)
    # RQ jobs enqueued to run this job's items, at most BATCH_MAX_CHUNKS (plus recovery's).
    chunks = models.PositiveIntegerField(default=0)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    total = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # Kind-specific counts (e.g. emails by type), summed over items as they settle.
    tallies = models.JSONField(default=dict, blank=True)
    # Failures grouped by "error type: message" -> count, kept as items fail so the job page
    # never groups the items themselves (see engine.failure_groups).
    failure_counts = models.JSONField(default=dict, blank=True)
    duration_total_ms = models.FloatField(default=0)
    p50_ms = models.FloatField(null=True, blank=True)
    p95_ms = models.FloatField(null=True, blank=True)
    summary = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)  # why the job as a whole failed or stopped

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The home page's running-jobs list and the sweeper: Job.objects.active().
            models.Index(
                fields=["status"],
                name="job_active_idx",
                condition=Q(status__in=ACTIVE_STATUSES),
            ),
            # Recent jobs, newest first.
            models.Index(fields=["-created_at"], name="job_created_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind}"

    def get_absolute_url(self) -> str:
        return reverse("job", args=[self.pk])

    @property
    def settled(self) -> int:
        return self.succeeded + self.failed + self.skipped + self.cancelled

    @property
    def is_finished(self) -> bool:
        return self.finished_at is not None

    @property
    def percent(self) -> float:
        return (
            100.0 * self.settled / self.total if self.total else (100.0 if self.is_finished else 0)
        )

    @property
    def wall_s(self) -> float | None:
        """Seconds from launch to finish (or to now while running)."""
        end = self.finished_at or timezone.now()
        return (end - self.created_at).total_seconds()

    @property
    def throughput(self) -> float | None:
        """Settled items per second since the first item started."""
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        seconds = (end - self.started_at).total_seconds()
        return self.settled / seconds if seconds > 0 and self.settled else None

    @property
    def eta_s(self) -> float | None:
        rate = self.throughput
        if self.is_finished or not rate:
            return None
        return (self.total - self.settled) / rate

    def summary_line(self) -> str:
        """The one-line tally, e.g. `📊 2,000 items in 41.2 s: 1,990 succeeded, ...`."""
        wall = self.wall_s or 0
        line = (
            f"📊 {self.total:,} items in {wall:.1f} s: {self.succeeded:,} succeeded, "
            f"{self.failed:,} failed, {self.skipped:,} skipped"
        )
        if self.cancelled:
            line += f", {self.cancelled:,} cancelled"
        return line

    def final_status(self) -> str:
        if self.error:
            return self.Status.FAILED
        # A cancel that came after every item had run, and planning had ended, cancelled
        # nothing: the job ran to its end.
        if self.cancel_requested_at and (self.cancelled or self.planning_cut):
            return self.Status.CANCELLED
        if self.failed and not self.succeeded and not self.skipped:
            return self.Status.FAILED
        if self.failed:
            return self.Status.COMPLETED_WITH_ERRORS
        return self.Status.SUCCEEDED

    def as_dict(self) -> dict:
        """The job as `run_job --json` and `--detach` print it."""
        return {
            "id": self.pk,
            "kind": self.kind,
            "status": self.status,
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "wall_s": round(self.wall_s or 0, 3),
            "tallies": self.tallies,
            "summary": self.summary,
        }


class JobItem(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"
        CANCELLED = "cancelled"

    # No index of its own: jobitem_job_key_uniq and jobitem_status_idx both lead with job,
    # and every index costs a write per status change.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="items", db_index=False)
    key = models.CharField(max_length=200)
    # What the planner knew of the item (e.g. an AEP position); the kind reads it as item.data.
    data = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Times a runner claimed it. An item claimed BATCH_MAX_ATTEMPTS times without a result
    # (it kills its worker, say) fails instead of looping (project/engine/store.py).
    claims = models.PositiveSmallIntegerField(default=0)
    error_type = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    result = models.CharField(max_length=300, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Which runner holds the item and until when (project/engine/store.py claims, the
    # runner's heartbeat renews; both against the database clock).
    claimed_by = models.CharField(max_length=80, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # One item per key in a job: launching or planning twice adds nothing twice.
            models.UniqueConstraint(fields=["job", "key"], name="jobitem_job_key_uniq"),
        ]
        indexes = [
            # Work waiting to be done: the engine's claim query, in item order. (Items whose
            # lease lapsed are found through jobitem_status_idx: there are few of them.)
            models.Index(
                fields=["job", "id"],
                name="jobitem_pending_idx",
                condition=Q(status="pending"),
            ),
            # The job page's item table filtered by status, and failures grouped by error.
            models.Index(fields=["job", "status", "id"], name="jobitem_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}/{self.key}"


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]
