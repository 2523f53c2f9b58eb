"""Recovery: repair what dead workers and a restarted Redis leave behind.

Any process may sweep: every runner's heartbeat does, and so does every idle RQ worker of
the engine's worker classes (worker.py), so no special supervisor is needed. A Redis key
lets one sweep run per period across all of them.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from rq.exceptions import StopRequested

from project.connections import get_redis
from project.engine import store
from project.engine.finalize import fail_job, finalize
from project.engine.planning import chunks_wanted, enqueue_chunks, enqueue_planner, get_queue
from project.engine.slots import Slots
from project.kinds import get_kind
from project.models import Job, JobItem

log = logging.getLogger(__name__)

SWEEP_KEY = "batch:sweep"
_next_sweep = 0.0


def sweep_if_due() -> list[str]:
    """Sweep if this process has not tried for BATCH_SWEEP_SECONDS.

    A failing sweep is logged, not raised: the next one tries again. Only an idle worker's
    shutdown passes through: RQ's signal handler raises StopRequested wherever the worker
    is, and a sweep that swallowed it would keep the worker running.
    """
    global _next_sweep
    if time.monotonic() < _next_sweep:
        return []
    _next_sweep = time.monotonic() + settings.BATCH_SWEEP_SECONDS
    try:
        return sweep()
    except StopRequested:
        raise
    except Exception as exc:  # a database or Redis outage: the next one tries again
        log.warning("sweep failed: %s: %s", type(exc).__name__, exc)
        close_old_connections()
        return []


def sweep() -> list[str]:
    """Recover every unfinished job once per period across all processes; return what it did."""
    guard_ms = max(100, int(settings.BATCH_SWEEP_SECONDS * 900))
    if not get_redis().set(SWEEP_KEY, 1, nx=True, px=guard_ms):
        return []
    queued = set(get_queue().get_job_ids())
    actions = []
    for job in Job.objects.active():
        actions += [f"job {job.pk}: {line}" for line in recover_job(job, queued)]
    for line in actions:
        log.info("sweep: %s", line)
    return actions


def recover_job(job: Job, queued: set[str]) -> list[str]:
    """Repair one unfinished job.

    1. Return the slots of runners that died.
    2. Cancel the orphaned items of a cancelled or stopped job.
    3. Restart a planner that died (its lease lapsed and none is queued).
    4. Finish the job if every item has settled.
    5. Enqueue runners when items wait, none is queued, and no runner is alive.
    """
    actions = []
    try:
        get_kind(job.kind)
    except KeyError as exc:
        # Its code is gone (a test kind, a removed feature): runners could never run it.
        fail_job(job.pk, f"{exc.args[0]}: the job cannot run here")
        return ["failed: its kind is not registered"]
    slots = Slots(job.pk, job.concurrency, "")
    try:
        returned = slots.reclaim_dead()
    except redis.RedisError:
        returned = 0
    if returned:
        actions.append(f"returned {returned} slots of dead runners")
    if job.cancel_requested_at or job.error:
        with transaction.atomic():
            orphaned = store.claimable(job.pk).select_for_update(skip_locked=True)
            ids = list(orphaned.values_list("id", flat=True))
            n = JobItem.objects.filter(id__in=ids).update(
                status=JobItem.Status.CANCELLED, finished_at=Now(), lease_until=None
            )
            Job.objects.filter(pk=job.pk).update(cancelled=F("cancelled") + n)
    elif (
        not job.planning_done
        and get_kind(job.kind).has_planner()
        and not any(i.startswith(f"plan-{job.pk}-") for i in queued)
    ):
        # A planner with no lease yet may have just been taken from the queue: it is taken
        # for dead only once it could have taken and lost one.
        never_started = Q(
            planner_lease_until__isnull=True,
            created_at__lt=Now() - timedelta(seconds=settings.BATCH_LEASE_SECONDS),
        )
        lapsed = Job.objects.filter(pk=job.pk, planning_done=False).filter(
            never_started | Q(planner_lease_until__lt=Now())
        )
        if lapsed.exists():
            enqueue_planner(job.pk)
            actions.append("restarted its planner")
    if finalize(job.pk):
        return [*actions, "finished"]
    if job.cancel_requested_at or job.error:
        return actions
    if any(i.startswith(f"batch-{job.pk}-") for i in queued):
        return actions
    if not store.claimable(job.pk).exists():
        return actions
    try:
        if slots.has_live_runner():
            return actions
    except redis.RedisError:
        return actions
    waiting = store.claimable(job.pk).count()
    chunks = enqueue_chunks(job.pk, chunks_wanted(waiting))
    actions.append(f"{waiting} items waiting, enqueued {chunks} runners")
    return actions
