"""Launching jobs and planning their items; cancel and retry.

`launch` validates, creates the job, and either adds the kind's `item_keys` at once or,
for a kind with a planner, enqueues the planner as its own RQ task and returns at once with
status `planning`. Work is enqueued after the transaction commits, as RQ jobs named by
dotted path (`project.jobs.run_chunk`, `project.jobs.run_planner`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from datetime import timedelta

import django_rq
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone
from rq import Queue

from project.engine import store
from project.engine.finalize import cancel_pending, finalize
from project.engine.slots import Slots
from project.kinds import get_kind
from project.models import Job, JobItem

log = logging.getLogger(__name__)

CHUNK_TASK = "project.jobs.run_chunk"
MAX_COUNT = 2**31 - 1  # the job's counters are PostgreSQL integers
PLANNER_TASK = "project.jobs.run_planner"


def get_queue() -> Queue:
    return django_rq.get_queue(settings.BATCH_QUEUE)


def launch(
    kind_name: str,
    params: dict | None = None,
    *,
    concurrency: int | None = None,
    source: str = Job.Source.COMMAND,
    user=None,
    parent: Job | None = None,
    keys: Iterable | None = None,
    stop_after_consecutive: int | None = None,
    stop_failure_ratio: float | None = None,
    stop_min_items: int | None = None,
) -> Job:
    """Create a job and its items (or its planner), and enqueue its work on commit.

    Every entry point (dashboard, admin, `run_job`) calls this. Raises KeyError for an
    unknown kind and ValidationError for bad parameters, before anything is written.
    `keys` (keys or (key, data) pairs) replaces the kind's own items, as a retry does.
    """
    kind = get_kind(kind_name)
    params = kind.parse_params(params or {})
    if concurrency is None:
        concurrency = kind.default_concurrency or settings.BATCH_DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= settings.BATCH_MAX_CONCURRENCY:
        raise ValidationError(
            f"concurrency must be between 1 and {settings.BATCH_MAX_CONCURRENCY}, not {concurrency}"
        )
    if stop_failure_ratio is not None and not 0 < stop_failure_ratio <= 1:
        raise ValidationError("stop_failure_ratio must be in (0, 1]")
    for name, value in (
        ("stop_after_consecutive", stop_after_consecutive),
        ("stop_min_items", stop_min_items),
    ):
        if value is not None and not 0 <= value <= MAX_COUNT:
            raise ValidationError(f"{name} must be between 0 and {MAX_COUNT:,}, not {value}")
    planned = keys is None and kind.has_planner()
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind.name,
            params=params,
            concurrency=concurrency,
            source=source,
            started_by=user if user and user.is_authenticated else None,
            parent=parent,
            stop_after_consecutive=stop_after_consecutive,
            stop_failure_ratio=stop_failure_ratio,
            stop_min_items=50 if stop_min_items is None else stop_min_items,
            status=Job.Status.PLANNING if planned else Job.Status.QUEUED,
            planning_done=not planned,
        )
        if planned:
            job_id = job.pk
            transaction.on_commit(lambda: enqueue_planner(job_id), robust=True)
        else:
            add_items(job, kind.item_keys(job) if keys is None else keys)
            if not job.total:
                transaction.on_commit(lambda: finalize(job.pk))
    return job


def add_items(job: Job, items: Iterable, *, plan_cursor: str | None = None) -> int:
    """Add items (keys, or (key, data) pairs) to an unfinished job; return how many are new.

    Keys already in the job are ignored. The job's total grows by an atomic UPDATE, and
    more runners are enqueued on commit, up to BATCH_MAX_CHUNKS for the job. With
    `plan_cursor` (a planner's page), the cursor after the page is stored and the planner's
    lease extended in the same transaction. A cancelled job takes no more (0 are new);
    raises ValidationError for a job that has finished otherwise.
    """
    batches = store.prepare(items)  # Python work, before the transaction opens
    with transaction.atomic():
        added = store.insert(job.pk, batches)
        # Locked after the insert, so runners' counter updates wait only for this UPDATE.
        locked = Job.objects.select_for_update(no_key=True).get(pk=job.pk)
        if locked.cancel_requested_at:
            # Cancelled meanwhile: the page is dropped (its planner stops at its next page),
            # so the cancel, which counted the job's items, never misses one.
            transaction.set_rollback(True)
            return 0
        if locked.is_finished:
            raise ValidationError(f"job #{job.pk} has finished; it takes no more items")
        total = locked.total + added
        more = max(0, chunks_wanted(total) - locked.chunks) if total else 0
        fields = {"total": F("total") + added, "chunks": F("chunks") + more}
        if plan_cursor is not None:
            lease = timedelta(seconds=settings.BATCH_LEASE_SECONDS)
            fields |= {"plan_cursor": plan_cursor, "planner_lease_until": Now() + lease}
        Job.objects.filter(pk=job.pk).update(**fields)
    job.total, job.chunks = total, locked.chunks + more
    if more:
        job_id, first = job.pk, locked.chunks == 0
        concurrency = job.concurrency
        # robust: if Redis is down the job still exists and recovery enqueues it later.
        transaction.on_commit(
            lambda: enqueue_chunks(job_id, more, lay_out=first, concurrency=concurrency),
            robust=True,
        )
    return added


def stale_statistics(before: int, after: int) -> bool:
    """Whether a job's items grew past 10k, 100k, 1M...: the planner's statistics are off."""
    return after >= 10_000 and len(str(after)) > len(str(before))


def analyze_items() -> None:
    """Refresh the items table's statistics (a new customer's first job fills it from 0).

    Only the columns that queries filter or sort items by (the job page, cancel, recovery,
    finalize): half the CPU of a whole-table ANALYZE.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"ANALYZE {JobItem._meta.db_table} (id, job_id, status, lease_until, duration_ms)"
            )


def enqueue_chunks(job_id: int, count: int, *, lay_out: bool = False, concurrency: int = 0) -> int:
    """Enqueue `count` runners for a job; with `lay_out`, its slots first (a new job)."""
    if lay_out:
        Slots(job_id, concurrency, "").lay_out(uuid.uuid4().hex, 0, 0)
    get_queue().enqueue_many(
        [
            Queue.prepare_data(
                CHUNK_TASK,
                args=(job_id,),
                job_id=f"batch-{job_id}-{uuid.uuid4().hex[:12]}",
                timeout=-1,  # items carry their own deadlines; leases cover a dead worker
                result_ttl=0,  # results live in PostgreSQL
                failure_ttl=24 * 3600,
            )
            for _ in range(count)
        ]
    )
    return count


def chunks_wanted(items: int) -> int:
    return max(1, min(settings.BATCH_MAX_CHUNKS, math.ceil(items / settings.BATCH_CHUNK_SIZE)))


# -- Planning --------------------------------------------------------------------------------


def enqueue_planner(job_id: int) -> None:
    get_queue().enqueue(
        PLANNER_TASK,
        args=(job_id,),
        job_id=f"plan-{job_id}-{uuid.uuid4().hex[:12]}",
        job_timeout=-1,
        result_ttl=0,
        failure_ttl=24 * 3600,
    )


def take_planner_lease(job_id: int) -> bool:
    """Become the job's one planner, unless another holds a live lease (database clock)."""
    lease = timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    return bool(
        Job.objects.filter(pk=job_id, planning_done=False, finished_at__isnull=True)
        .filter(Q(planner_lease_until__isnull=True) | Q(planner_lease_until__lt=Now()))
        .update(planner_lease_until=Now() + lease)
    )


def plan_and_run(job_id: int) -> None:
    """The planner's RQ task: plan in a thread while this worker runs the job's items too.

    Items start here as soon as the first page is stored, whether or not another worker is
    free. The runner stays while the planner runs (it would otherwise give the worker back
    while waiting for a page). On SIGTERM the runner leaves as any runner does, and the
    planner stops after its page and lets its lease lapse, so recovery restarts it on
    another worker, at its cursor.
    """
    from project.engine.runner import run_chunk  # the runner enqueues through this module

    if not take_planner_lease(job_id):
        return
    stop = threading.Event()

    def plan_here() -> None:
        try:
            run_planner(job_id, leased=True, stop=stop)
        finally:
            connections.close_all()  # this thread's own connection

    planner = threading.Thread(target=plan_here, name=f"job{job_id}-planner", daemon=True)
    planner.start()
    runner = None
    try:
        runner = run_chunk(job_id, stay_while_planning=True)
    finally:
        if runner is None or runner.shutdown.is_set():
            # Nothing ran here (the job had stopped), or the worker is leaving.
            stop.set()
        planner.join()


def run_planner(job_id: int, *, leased: bool = False, stop: threading.Event | None = None) -> None:
    """Add a planned job's items page by page, from its stored cursor.

    1. Take the planner lease (unless `leased`: the caller took it), so one planner runs
       per job.
    2. For each page: store its items and the cursor after it in one transaction, and
       extend the lease (add_items). Runners work on the items meanwhile.
    3. Mark planning done (the job may then finish). A planner that raises fails the job
       with its error; one that dies is restarted by recovery and resumes at the cursor.

    As the job grows past 10k, 100k... items, the items table's statistics are refreshed
    (off the web request), after the page's runners are enqueued and, for the last page,
    after planning is marked done: the job need not wait for it.
    """
    if not leased and not take_planner_lease(job_id):
        return
    job = Job.objects.get(pk=job_id)
    kind = get_kind(job.kind)
    stale = False
    try:
        began = time.monotonic()
        for page in kind.plan(job, job.plan_cursor):
            made = time.monotonic()
            if stale:
                analyze_items()
            stopped = Job.objects.filter(pk=job_id).values_list("planning_done", flat=True).get()
            if stopped:  # cancelled meanwhile
                return
            if stop is not None and stop.is_set():
                # Its worker is leaving: recovery restarts planning elsewhere, at the cursor.
                Job.objects.filter(pk=job_id).update(planner_lease_until=Now())
                return
            before = job.total
            add_items(job, page.items, plan_cursor=page.cursor)
            stale = stale_statistics(before, job.total)
            log.debug(
                "planner of job %s: %d items, made in %.3f s, stored in %.3f s",
                job_id,
                len(page.items),
                made - began,
                time.monotonic() - made,
            )
            began = time.monotonic()
    except Exception as exc:
        log.exception("planner of job %s failed", job_id)
        fail_planning(job_id, exc)
        return
    finish_planning(job)
    if stale:
        analyze_items()


def finish_planning(job: Job) -> None:
    """A planner has added its last page: the job may now finish."""
    Job.objects.filter(pk=job.pk).update(planning_done=True, planner_lease_until=None)
    Job.objects.filter(pk=job.pk, status=Job.Status.PLANNING, started_at__isnull=True).update(
        status=Job.Status.QUEUED
    )
    Job.objects.filter(pk=job.pk, status=Job.Status.PLANNING).update(status=Job.Status.RUNNING)
    job.planning_done = True
    transaction.on_commit(lambda: finalize(job.pk))


def fail_planning(job_id: int, exc: Exception) -> None:
    """The planner raised: the job fails with its error; items not started are cancelled."""
    where = traceback.extract_tb(exc.__traceback__)[-1:]
    place = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
    error = f"Planning failed: {type(exc).__name__}: {exc}{place}"[:2000]
    with transaction.atomic():
        Job.objects.select_for_update().get(pk=job_id)
        cancelled = cancel_pending(job_id)
        Job.objects.filter(pk=job_id, finished_at__isnull=True).update(
            error=error,
            planning_done=True,
            planner_lease_until=None,
            cancelled=F("cancelled") + cancelled,
        )
    finalize(job_id)


# -- Cancel and retry ------------------------------------------------------------------------


def cancel(job: Job) -> bool:
    """Stop a job: pending items become cancelled at once, running ones finish.

    Runners notice within half a second and start nothing new; a planner stops after its
    page. Returns False when the job had already finished or was already being cancelled.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.finished_at or locked.cancel_requested_at:
            return False
        cancelled = cancel_pending(job.pk)
        Job.objects.filter(pk=job.pk).update(
            cancel_requested_at=now,
            cancelled=F("cancelled") + cancelled,
            planning_done=True,
            planning_cut=not locked.planning_done,
        )
    job.refresh_from_db()
    finalize(job.pk)
    return True


def retry_failed(job: Job, *, user=None, source: str = Job.Source.DASHBOARD) -> Job:
    """Launch a new job of the same kind over this job's failed items, linked to it.

    A job's failed items are retried by at most one child at a time: the parent row is
    locked while its children are checked and the new one is created.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if not job.is_finished:
            raise ValidationError("The job is still running; retry its failures once it ends.")
        if not job.failed:
            raise ValidationError("The job has no failed items to retry.")
        running = job.retries.filter(finished_at__isnull=True).first()
        if running:
            raise ValidationError(
                f"Retry job #{running.pk} of this job is still running; wait for it to end."
            )
        items = JobItem.objects.filter(job=job, status=JobItem.Status.FAILED).values_list(
            "key", "data"
        )
        return launch(
            job.kind,
            job.params,
            concurrency=job.concurrency,
            source=source,
            user=user,
            parent=job,
            keys=[(key, data) for key, data in items.iterator(chunk_size=5000)],
            stop_after_consecutive=job.stop_after_consecutive,
            stop_failure_ratio=job.stop_failure_ratio,
            stop_min_items=job.stop_min_items,
        )
