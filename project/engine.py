"""The batch engine: fan a job out over RQ workers with a global concurrency limit.

PostgreSQL is the source of truth: every item is a JobItem row that moves from `pending`
to `running` (claimed under a lease) to exactly one final state. Redis carries only what
can be rebuilt: the RQ queue of chunks, the job's concurrency slots, live latency figures.

How a job runs:
1. `launch` creates the job and its items in one transaction and, after commit, enqueues
   chunks: RQ jobs that each call `Runner.run` for up to a quota of items. Chunks are
   interchangeable; any worker on any machine takes any of them.
2. A runner claims items with `SELECT ... FOR UPDATE SKIP LOCKED`, so no two runners hold
   the same item, and runs them in threads. Before an item starts, its thread takes one of
   the job's C slots (a Redis list, so the limit holds across every worker).
3. Results are written in batches; the job's counters change in the same transaction as
   the items, counting only items the runner still held, so every item counts once.
4. When the last item settles, `finalize` marks the job finished with a conditional
   UPDATE: exactly one caller wins.
5. A runner renews its leases while it works. If its worker dies, the leases lapse and the
   items become claimable again; `sweep` (run by every `run_workers` supervisor) enqueues
   chunks for jobs that have claimable items and nobody working on them, which also
   recovers from a Redis restart that emptied the queue.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import batched

import django_rq
import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, connections, transaction
from django.db.models import F
from django.utils import timezone
from rq import Queue

from project.connections import get_redis
from project.kinds import Item, JobKind, Outcome, get_kind, is_transient, retry_after
from project.models import Job, JobItem, percentile
from project.ratelimit import get_limiter

log = logging.getLogger(__name__)

KEY_TTL = 7 * 24 * 3600  # Redis keys of a job outlive any sane job, then go by themselves.


def get_queue() -> Queue:
    return django_rq.get_queue(settings.BATCH_QUEUE)


# -- Launching -------------------------------------------------------------------------------


def launch(
    kind_name: str,
    params: dict | None = None,
    *,
    concurrency: int | None = None,
    source: str = Job.Source.COMMAND,
    user=None,
    parent: Job | None = None,
    keys: Iterable[str] | None = None,
    stop_after_consecutive: int | None = None,
    stop_failure_ratio: float | None = None,
    stop_min_items: int | None = None,
) -> Job:
    """Create a job and its items, and enqueue its work once the transaction commits.

    Every entry point (dashboard, admin, `run_job`) calls this. Raises KeyError for an
    unknown kind and ValidationError for bad parameters, before anything is written.
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
        )
        add_items(job, kind.item_keys(job) if keys is None else keys)
    return job


def add_items(job: Job, keys: Iterable[str]) -> int:
    """Add items to a job (at launch, or page by page from a planner); return how many are new.

    Keys already in the job are ignored. Work for the new items is enqueued on commit.
    """
    before = job.total
    insert_items(job.pk, keys)
    job.total = JobItem.objects.filter(job_id=job.pk).count()
    Job.objects.filter(pk=job.pk).update(total=job.total)
    added = job.total - before
    job_id = job.pk
    if added:
        # robust: if Redis is down the job still exists and the sweeper enqueues it later.
        transaction.on_commit(lambda: enqueue_chunks(job_id, added), robust=True)
    elif job.planning_done:
        transaction.on_commit(lambda: finalize(job_id))
    return added


def finish_planning(job: Job) -> None:
    """A planner has added its last page: the job may now finish."""
    Job.objects.filter(pk=job.pk).update(planning_done=True)
    job.planning_done = True
    transaction.on_commit(lambda: finalize(job.pk))


def enqueue_chunks(job_id: int, items: int) -> int:
    """Enqueue enough chunks to cover `items` items; return how many."""
    from project.jobs import run_chunk

    quota = max(settings.BATCH_CHUNK_SIZE, math.ceil(items / settings.BATCH_MAX_CHUNKS))
    count = max(1, math.ceil(items / quota))
    rq_queue = get_queue()
    rq_queue.enqueue_many(
        [
            Queue.prepare_data(
                run_chunk,
                args=(job_id, quota),
                job_id=f"batch-{job_id}-{uuid.uuid4().hex[:12]}",
                timeout=-1,  # items carry their own timeouts; leases cover a dead worker
                result_ttl=0,  # results live in PostgreSQL
                failure_ttl=24 * 3600,
            )
            for _ in range(count)
        ]
    )
    return count


# -- Cancel and retry ------------------------------------------------------------------------


def cancel(job: Job) -> bool:
    """Stop a job: pending items become cancelled at once, running ones finish.

    Runners notice within half a second and start nothing new. Returns False when the job
    had already finished or was already being cancelled.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.finished_at or locked.cancel_requested_at:
            return False
        cancelled = JobItem.objects.filter(job_id=job.pk, status=JobItem.Status.PENDING).update(
            status=JobItem.Status.CANCELLED, finished_at=now
        )
        Job.objects.filter(pk=job.pk).update(
            cancel_requested_at=now, cancelled=F("cancelled") + cancelled
        )
    job.refresh_from_db()
    finalize(job.pk)
    return True


def retry_failed(job: Job, *, user=None, source: str = Job.Source.DASHBOARD) -> Job:
    """Launch a new job of the same kind over this job's failed items, linked to it."""
    if not job.is_finished:
        raise ValidationError("The job is still running; retry its failures once it ends.")
    if not job.failed:
        raise ValidationError("The job has no failed items to retry.")
    keys = JobItem.objects.filter(job=job, status=JobItem.Status.FAILED).values_list(
        "key", flat=True
    )
    return launch(
        job.kind,
        job.params,
        concurrency=job.concurrency,
        source=source,
        user=user,
        parent=job,
        keys=list(keys),
        stop_after_consecutive=job.stop_after_consecutive,
        stop_failure_ratio=job.stop_failure_ratio,
        stop_min_items=job.stop_min_items,
    )


# -- Finishing -------------------------------------------------------------------------------


def finalize(job_id: int) -> bool:
    """Finish the job if every item has settled; True for the one caller that does it."""
    job = Job.objects.get(pk=job_id)
    if job.finished_at or not job.planning_done or job.settled < job.total:
        return False
    durations = sorted(
        JobItem.objects.filter(job_id=job_id, duration_ms__isnull=False).values_list(
            "duration_ms", flat=True
        )
    )
    job.finished_at = timezone.now()
    job.status = job.final_status()
    job.summary = job.summary_line()
    job.p50_ms = percentile(durations, 0.50)
    job.p95_ms = percentile(durations, 0.95)
    won = Job.objects.filter(pk=job_id, finished_at__isnull=True).update(
        status=job.status,
        finished_at=job.finished_at,
        summary=job.summary,
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
    Slots(job.pk, job.concurrency, "").delete()
    return True


# -- Live figures ----------------------------------------------------------------------------

LATENCY_BASE = 1.1  # histogram buckets 10% wide: percentiles within ~5%


def latency_bucket(ms: float) -> int:
    return int(math.log(ms + 1, LATENCY_BASE))


def bucket_ms(bucket: int) -> float:
    return (LATENCY_BASE**bucket + LATENCY_BASE ** (bucket + 1)) / 2 - 1


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
        histogram = get_redis().hgetall(f"batch:{job.pk}:latency")
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


# -- The global concurrency limit ------------------------------------------------------------


def fair_share(limit: int, demand: int, others: list[int]) -> int:
    """This runner's max-min fair share of `limit` slots, given every runner's demand.

    Runners that need less than an equal split keep what they need, and the rest is split
    among the others; so a runner finishing its chunk frees its slots for the rest at once.
    """
    remaining, demands = limit, sorted([*others, demand])
    for i, want in enumerate(demands):
        share = math.ceil(remaining / (len(demands) - i))
        if want == demand:
            return max(1, min(demand, share)) if demand else 0
        remaining -= min(want, share)
    return 0


# Move every element of list KEYS[1] to list KEYS[2]; return how many (one round trip).
MOVE_ALL = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
return moved
"""


class Slots:
    """A job's C concurrency slots: interchangeable tokens in Redis lists.

    Free tokens sit in one list; a runner moves the tokens it holds into its own list
    (LMOVE, atomic), so the number of tokens, and so of items in flight, never exceeds C.
    A runner keeps its tokens in a local pool its threads share without asking Redis, and
    rebalances a few times a second towards a fair share: C divided among the runners
    that have work (`alive` carries each runner's demand). A runner that dies leaves its
    tokens in its list; once its `alive` key lapses, `reclaim_dead` returns them. If Redis
    restarts, the first runner to find the slots gone lays out C fresh tokens, and every
    runner trims its local pool to what its (now empty) list says it holds.
    """

    def __init__(self, job_id: int, limit: int, owner: str):
        prefix = f"batch:{job_id}:slots"
        self.limit = limit
        self.owner = owner
        self.init_key = f"{prefix}:init"
        self.free_key = f"{prefix}:free"
        self.owners_key = f"{prefix}:owners"
        self.held_key = f"{prefix}:held:{owner}"
        self.alive_key = f"{prefix}:alive:{owner}"
        self.prefix = prefix

    def ensure(self) -> None:
        conn = get_redis()
        if conn.set(self.init_key, 1, nx=True, ex=KEY_TTL):
            pipe = conn.pipeline()
            pipe.delete(self.free_key)
            pipe.rpush(self.free_key, *range(self.limit))
            pipe.expire(self.free_key, KEY_TTL)
            pipe.execute()

    def register(self, lease: float, demand: int, in_use: int) -> list[int]:
        """Say this runner is alive, how many slots it could use and uses; return the others'."""
        conn = get_redis()
        pipe = conn.pipeline()
        pipe.sadd(self.owners_key, self.owner)
        pipe.expire(self.owners_key, KEY_TTL)
        pipe.set(self.alive_key, f"{demand},{in_use}", ex=max(1, math.ceil(lease)))
        pipe.execute()
        others = [d for d, _ in self.runners()]
        if demand in others:
            others.remove(demand)  # this runner's own entry (any one with the same demand)
        return others

    def runners(self) -> list[tuple[int, int]]:
        """(demand, in use) of each live runner, as each last said (at most 0.5 s ago)."""
        conn = get_redis()
        owners = conn.smembers(self.owners_key)
        if not owners:
            return []
        values = conn.mget([f"{self.prefix}:alive:{o.decode()}" for o in owners])
        return [tuple(map(int, v.split(b","))) for v in values if v is not None]

    def in_flight(self) -> int:
        return sum(in_use for _, in_use in self.runners())

    def take(self, count: int) -> int:
        """Move up to `count` free tokens to this runner; return how many it got."""
        pipe = get_redis().pipeline(transaction=False)
        for _ in range(count):
            pipe.lmove(self.free_key, self.held_key, "LEFT", "RIGHT")
        return sum(1 for token in pipe.execute() if token is not None)

    def give(self, count: int) -> None:
        pipe = get_redis().pipeline(transaction=False)
        for _ in range(count):
            pipe.lmove(self.held_key, self.free_key, "LEFT", "RIGHT")
        pipe.execute()

    def held(self) -> int:
        return get_redis().llen(self.held_key)

    def close(self) -> None:
        conn = get_redis()
        conn.register_script(MOVE_ALL)(keys=[self.held_key, self.free_key])
        pipe = conn.pipeline()
        pipe.srem(self.owners_key, self.owner)
        pipe.delete(self.alive_key, self.held_key)
        pipe.execute()

    def has_live_runner(self) -> bool:
        return bool(self.runners())

    def reclaim_dead(self) -> int:
        """Return the tokens of runners whose `alive` key has lapsed; return how many."""
        conn = get_redis()
        returned = 0
        for raw in conn.smembers(self.owners_key):
            owner = raw.decode()
            if conn.exists(f"{self.prefix}:alive:{owner}"):
                continue
            held = f"{self.prefix}:held:{owner}"
            returned += conn.register_script(MOVE_ALL)(keys=[held, self.free_key])
            conn.srem(self.owners_key, owner)
        return returned

    def delete(self) -> None:
        try:
            conn = get_redis()
            keys = list(conn.scan_iter(f"{self.prefix}:*", count=1000))
            if keys:
                conn.delete(*keys)
        except redis.RedisError:
            pass  # they expire by themselves


# -- Running a chunk -------------------------------------------------------------------------


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


def printable(text: str) -> str:
    """Text PostgreSQL can store: no NUL characters (an error message may carry anything)."""
    return text.replace("\x00", "\\x00")


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: attempt 1 waits up to base, 2 up to 2 x base..."""
    ceiling = min(
        settings.BATCH_RETRY_MAX_SECONDS, settings.BATCH_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    )
    return random.uniform(ceiling / 2, ceiling)


class Runner:
    """Works on one job inside one RQ job (a chunk) until its quota or the job runs out."""

    def __init__(self, job: Job, kind: JobKind, quota: int):
        self.job = job
        self.kind = kind
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = settings.BATCH_LEASE_SECONDS
        self.slots = Slots(job.pk, job.concurrency, self.token)
        self.batch_size = kind.batch_size or 1
        self.threads = min(job.concurrency, settings.BATCH_MAX_THREADS)
        self.backlog: queue.Queue[tuple[int, str, int]] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        self.quota = quota
        self.stopping = threading.Event()  # cancelled, or the job stopped by its error policy
        self.done = threading.Event()  # the main loop is leaving; threads exit when idle
        self.outstanding = 0  # claimed but not yet reported
        self.claimed_all = False
        self.limiter_name = kind.limiter_for(job)
        # The local pool of slots: `held` tokens taken from Redis, `in_use` by threads now.
        self.slot_lock = threading.Condition()
        self.held = self.in_use = self.waiting = 0
        self.other_demands: list[int] = []  # as other runners of this job last published

    # The main thread: claim, flush, heartbeat.

    def run(self) -> None:
        workers = [
            threading.Thread(target=self.work, name=f"job{self.job.pk}-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for thread in workers:
            thread.start()
        pending: list[Result] = []
        next_flush = next_check = next_renew = next_balance = next_refresh = 0.0
        clean_exit = False
        try:
            while True:
                now = time.monotonic()
                if not self.claimed_all and not self.stopping.is_set():
                    want = self.threads * self.batch_size * 2 - self.backlog.qsize()
                    if want >= max(1, self.threads * self.batch_size // 2):
                        self.claim(min(want, self.quota))
                if now >= next_check:
                    self.check_stopping()
                    next_check = now + 0.5
                # Runners learn each other's demand every 0.1 s, so slots freed by one that
                # is finishing its chunk go to the others within about that long.
                if now >= next_refresh:
                    self.balance_slots(refresh=True)
                    next_refresh = now + 0.1
                elif now >= next_balance:
                    self.balance_slots(refresh=False)
                    next_balance = now + 0.02
                if now >= next_renew:
                    self.renew()
                    next_renew = now + self.lease / 3
                try:
                    pending.append(self.results.get(timeout=0.05))
                    while len(pending) < 1000:
                        pending.append(self.results.get_nowait())
                except queue.Empty:
                    pass
                if pending and (
                    len(pending) >= 200
                    or len(pending) == self.outstanding  # the last ones: finish without delay
                    or now >= next_flush
                    or self.must_judge(pending)
                ):
                    self.flush(pending)
                    pending = []
                    next_flush = now + 0.25
                if self.outstanding == 0 and (self.claimed_all or self.stopping.is_set()):
                    break
            clean_exit = True
        finally:
            if not clean_exit:
                # Leave unreported items running: their leases lapse and another runner
                # takes them. Threads stop starting new ones.
                self.stopping.set()
            self.done.set()
            for thread in workers:
                thread.join(timeout=5)
            while True:
                try:
                    pending.append(self.results.get_nowait())
                except queue.Empty:
                    break
            if pending and clean_exit:
                self.flush(pending)
            with contextlib.suppress(redis.RedisError):
                self.slots.close()
        finalize(self.job.pk)

    def must_judge(self, results: list[Result]) -> bool:
        """Whether to flush now so the error policy sees failures without delay."""
        has_policy = self.job.stop_after_consecutive or self.job.stop_failure_ratio is not None
        return bool(has_policy) and any(r.status == JobItem.Status.FAILED for r in results)

    def claim(self, limit: int) -> None:
        if limit <= 0:
            self.claimed_all = True
            return
        rows = claim_items(self.job.pk, self.token, limit, self.lease)
        self.quota -= len(rows)
        # Fewer rows than asked may only mean another runner holds some locks for a moment;
        # none at all means nothing is claimable now (anything that becomes so later, a
        # dead worker's items, say, is taken by a later chunk or the sweeper).
        if not rows or self.quota <= 0:
            self.claimed_all = True
        self.outstanding += len(rows)
        for row in rows:
            self.backlog.put(row)

    def check_stopping(self) -> None:
        flags = Job.objects.filter(pk=self.job.pk).values_list(
            "cancel_requested_at", "error", "finished_at"
        )
        cancel_at, error, finished_at = flags.get()
        if cancel_at or error or finished_at:
            self.stopping.set()

    def renew(self) -> None:
        until = timezone.now() + timedelta(seconds=self.lease)
        JobItem.objects.filter(
            job_id=self.job.pk, claimed_by=self.token, status=JobItem.Status.RUNNING
        ).update(lease_until=until)
        Job.objects.filter(pk=self.job.pk).update(heartbeat_at=timezone.now())

    def flush(self, results: list[Result]) -> None:
        """Record results and bump the job's counters in one transaction."""
        with transaction.atomic():
            # no_key: other workers' inserts that reference the job (their foreign-key check)
            # need not wait for this lock.
            job = Job.objects.select_for_update(no_key=True).get(pk=self.job.pk)
            written = write_results(results, self.token)
            kept = [r for r in results if r.item_id in written]
            self.count(job, kept)
            if not job.error and not job.cancel_requested_at:
                job.error = stop_reason(job)
                if job.error:
                    job.cancelled += JobItem.objects.filter(
                        job_id=job.pk, status=JobItem.Status.PENDING
                    ).update(status=JobItem.Status.CANCELLED, finished_at=timezone.now())
                    self.stopping.set()
            job.heartbeat_at = timezone.now()
            job.save(
                update_fields=[
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
            )
        self.outstanding -= len(results)
        self.record_latency(kept)
        if job.planning_done and job.settled >= job.total:
            finalize(job.pk)

    @staticmethod
    def count(job: Job, results: list[Result]) -> None:
        for r in sorted(results, key=lambda r: r.finished_at or timezone.now()):
            setattr(job, r.status, getattr(job, r.status) + 1)
            if r.status == JobItem.Status.FAILED:
                job.consecutive_failures += 1
            elif r.status == JobItem.Status.SUCCEEDED:
                job.consecutive_failures = 0
            job.duration_total_ms += r.duration_ms or 0
            for name, n in r.tallies.items():
                job.tallies[name] = job.tallies.get(name, 0) + n
            if r.status == JobItem.Status.FAILED:
                group = failure_key(job, r.error_type, r.error_message)
                job.failure_counts[group] = job.failure_counts.get(group, 0) + 1

    def record_latency(self, results: list[Result]) -> None:
        buckets: dict[int, int] = {}
        for r in results:
            if r.duration_ms is not None:
                b = latency_bucket(r.duration_ms)
                buckets[b] = buckets.get(b, 0) + 1
        if not buckets:
            return
        key = f"batch:{self.job.pk}:latency"
        try:
            pipe = get_redis().pipeline(transaction=False)
            for b, n in buckets.items():
                pipe.hincrby(key, b, n)
            pipe.expire(key, KEY_TTL)
            pipe.execute()
        except redis.RedisError:
            pass  # live figures only; finalize computes exact ones from the items

    # The worker threads.

    def work(self) -> None:
        try:
            while True:
                rows = self.take()
                if rows is None:
                    return
                if self.kind.batch_size:
                    for result in self.process_batch(rows):
                        self.results.put(result)
                else:
                    self.results.put(self.process(*rows[0]))
        finally:
            connections.close_all()  # this thread's own connections, if the kind opened any

    def take(self) -> list[tuple[int, str, int]] | None:
        """The next rows for this thread, or None when the runner is done."""
        while True:
            try:
                rows = [self.backlog.get(timeout=0.05)]
            except queue.Empty:
                if self.done.is_set():
                    return None
                continue
            while len(rows) < self.batch_size:
                try:
                    rows.append(self.backlog.get_nowait())
                except queue.Empty:
                    break
            return rows

    def balance_slots(self, refresh: bool) -> None:
        """Move tokens between Redis and the local pool towards min(fair share, demand).

        With `refresh`, also publish this runner's demand, learn its fair share, recreate
        lost slots, and trim the pool if Redis no longer has the tokens (a restart).
        """
        with self.slot_lock:
            backlog = math.ceil(self.backlog.qsize() / self.batch_size)
            demand = min(self.threads, self.in_use + self.waiting + backlog)
        try:
            if refresh:
                self.slots.ensure()
                self.other_demands = self.slots.register(self.lease, demand, self.in_use)
                actual = self.slots.held()
                with self.slot_lock:
                    self.held = min(self.held, actual)
            target = fair_share(self.job.concurrency, demand, self.other_demands)
            if self.held < target:
                got = self.slots.take(target - self.held)
                if got:
                    with self.slot_lock:
                        self.held += got
                        self.slot_lock.notify(got)
            elif self.held > target:
                with self.slot_lock:
                    spare = self.held - max(target, self.in_use)
                    self.held -= max(0, spare)
                if spare > 0:
                    self.slots.give(spare)
        except redis.RedisError as exc:
            log.warning("job %s: Redis unavailable for slots (%s)", self.job.pk, exc)

    def acquire_slot(self) -> bool:
        """Wait for a slot from the local pool; False if the job stops meanwhile."""
        with self.slot_lock:
            self.waiting += 1
            try:
                while self.in_use >= self.held:
                    if self.stopping.is_set():
                        return False
                    self.slot_lock.wait(0.1)
                if self.stopping.is_set():
                    return False
                self.in_use += 1
                return True
            finally:
                self.waiting -= 1

    def release_slot(self) -> None:
        with self.slot_lock:
            self.in_use -= 1
            self.slot_lock.notify()

    def cancelled(self, item_id: int, attempts: int = 0) -> Result:
        return Result(item_id, JobItem.Status.CANCELLED, attempts, finished_at=timezone.now())

    def process(self, item_id: int, key: str, previous_attempts: int) -> Result:
        """Run one item with retries; never raises."""
        attempt = previous_attempts
        started_at = None
        while True:
            if not self.acquire_slot():
                return self.cancelled(item_id, attempt)
            attempt += 1
            started_at = started_at or timezone.now()
            begin = time.perf_counter()
            error = None
            try:
                outcome = self.kind.run_item(self.job, Item(item_id, key, attempt))
            except Exception as exc:
                error = exc
            finally:
                # Timestamps are taken while the slot is held, so recorded [started_at,
                # finished_at] intervals never overlap more than the concurrency limit.
                duration_ms = (time.perf_counter() - begin) * 1000
                finished_at = timezone.now()
                self.release_slot()
            if error is None:
                return self.success(item_id, outcome, attempt, started_at, duration_ms, finished_at)
            result = self.failure(item_id, error, attempt, started_at, duration_ms, finished_at)
            if not is_transient(error) or attempt >= settings.BATCH_MAX_ATTEMPTS:
                return result
            if not self.wait_before_retry(error, attempt):
                return result

    def wait_before_retry(self, error: Exception, attempt: int) -> bool:
        """Sleep the backoff (or a 429's Retry-After, pausing the limiter); False if stopping."""
        wait = retry_after(error)
        if wait and self.limiter_name:
            with contextlib.suppress(KeyError, redis.RedisError):
                get_limiter(self.limiter_name).pause(wait)
        deadline = time.monotonic() + (wait or backoff_seconds(attempt))
        while time.monotonic() < deadline:
            if self.stopping.wait(min(0.2, max(0, deadline - time.monotonic()))):
                return False
        return True

    @staticmethod
    def failure(item_id, error, attempt, started_at, duration_ms, finished_at) -> Result:
        return Result(
            item_id,
            JobItem.Status.FAILED,
            attempt,
            started_at,
            finished_at,
            duration_ms,
            error_type=type(error).__name__,
            error_message=printable(str(error) or repr(error))[:2000],
        )

    @staticmethod
    def success(item_id, outcome, attempt, started_at, duration_ms, finished_at) -> Result:
        if not isinstance(outcome, Outcome):
            outcome = Outcome(summary="" if outcome is None else str(outcome))
        outcome.summary = printable(outcome.summary)
        return Result(
            item_id,
            outcome.status,
            attempt,
            started_at,
            finished_at,
            duration_ms,
            outcome.summary,
            tallies=outcome.tallies,
        )

    def process_batch(self, rows: list[tuple[int, str, int]]) -> list[Result]:
        """Run a batch kind on several items; a failing batch is retried item by item."""
        if not self.acquire_slot():
            return [self.cancelled(item_id, attempts) for item_id, _, attempts in rows]
        started_at = timezone.now()
        begin = time.perf_counter()
        items = [Item(item_id, key, attempts + 1) for item_id, key, attempts in rows]
        try:
            outcomes = self.kind.run_batch(self.job, items)
        except Exception as exc:
            if len(rows) == 1:
                outcomes = {items[0].key: exc}
            else:
                self.release_slot()
                return [r for row in rows for r in self.process_batch([row])]
        finally:
            duration_ms = (time.perf_counter() - begin) * 1000 / len(rows)
            finished_at = timezone.now()
        self.release_slot()
        results = []
        for item in items:
            outcome = outcomes.get(item.key, Outcome())
            if isinstance(outcome, Exception):
                result = self.failure(
                    item.id, outcome, item.attempt, started_at, duration_ms, finished_at
                )
            else:
                result = self.success(
                    item.id, outcome, item.attempt, started_at, duration_ms, finished_at
                )
            results.append(result)
        return results


# -- Item storage ----------------------------------------------------------------------------
# The engine's three hot statements. On PostgreSQL each is one round trip with arrays as
# parameters; Django's bulk helpers cost more than the work itself for fast items. Other
# databases (SQLite for local runs) take the plain ORM path.

CLAIM_SQL = """
UPDATE {table} SET status = 'running', claimed_by = %s, lease_until = %s
WHERE id IN (
    SELECT id FROM {table} WHERE job_id = %s AND {condition}
    ORDER BY id LIMIT %s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, key, attempts
"""
# Items of dead workers first (few, and waiting longest), then pending ones in order.
CLAIM_CONDITIONS = ("status = 'running' AND lease_until < %s", "status = 'pending'")

WRITE_SQL = """
UPDATE {table} AS item SET
    status = v.status, attempts = v.attempts, error_type = v.error_type,
    error_message = v.error_message, duration_ms = v.duration_ms, result = v.result,
    started_at = v.started_at, finished_at = v.finished_at, lease_until = NULL
FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::float8[],
            %s::text[], %s::timestamptz[], %s::timestamptz[])
    AS v(id, status, attempts, error_type, error_message, duration_ms, result,
         started_at, finished_at)
WHERE item.id = v.id AND item.claimed_by = %s AND item.status = 'running'
RETURNING item.id
"""

INSERT_SQL = """
INSERT INTO {table} (job_id, key, status, attempts, error_type, error_message, result,
                     claimed_by)
SELECT %s, k, 'pending', 0, '', '', '', '' FROM unnest(%s::text[]) AS k
ON CONFLICT DO NOTHING
"""


def claim_items(job_id: int, token: str, limit: int, lease: float) -> list[tuple[int, str, int]]:
    """Claim up to `limit` claimable items for runner `token`; return (id, key, attempts)."""
    now = timezone.now()
    until = now + timedelta(seconds=lease)
    if connection.vendor == "postgresql":
        rows = []
        with transaction.atomic(), connection.cursor() as cursor:
            # A job's new items have no statistics yet; the planner then expects a handful
            # and sorts every pending item of the job to take the first few. Without bitmap
            # scans it walks jobitem_pending_idx in order and stops at LIMIT.
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            for condition in CLAIM_CONDITIONS:
                sql = CLAIM_SQL.format(table=JobItem._meta.db_table, condition=condition)
                params = [now] if "%s" in condition else []
                cursor.execute(sql, [token, until, job_id, *params, limit - len(rows)])
                rows += cursor.fetchall()
                if len(rows) >= limit:
                    break
        return sorted(rows)
    with transaction.atomic():
        rows = list(
            JobItem.objects.filter(job_id=job_id)
            .claimable(now)
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", "key", "attempts")[:limit]
        )
        JobItem.objects.filter(id__in=[row[0] for row in rows]).update(
            status=JobItem.Status.RUNNING, claimed_by=token, lease_until=until
        )
    return rows


def write_results(results: list[Result], token: str) -> set[int]:
    """Store final item states for items `token` still holds; return their ids.

    An item whose lease lapsed and went to another runner is not written (nor counted):
    whoever holds it now records it, so every item counts once.
    """
    if not results:
        return set()
    if connection.vendor == "postgresql":
        columns = [
            [r.item_id for r in results],
            [r.status for r in results],
            [r.attempts for r in results],
            [r.error_type for r in results],
            [r.error_message for r in results],
            [r.duration_ms for r in results],
            [r.summary[:300] for r in results],
            [r.started_at for r in results],
            [r.finished_at for r in results],
        ]
        with connection.cursor() as cursor:
            sql = WRITE_SQL.format(table=JobItem._meta.db_table)
            cursor.execute(sql, [*columns, token])
            return {row[0] for row in cursor.fetchall()}
    by_id = {r.item_id: r for r in results}
    mine = list(
        JobItem.objects.filter(id__in=by_id, claimed_by=token, status=JobItem.Status.RUNNING)
        .select_for_update()
        .values_list("id", flat=True)
    )
    for item_id in mine:
        r = by_id[item_id]
        JobItem.objects.filter(id=item_id).update(
            status=r.status,
            attempts=r.attempts,
            error_type=r.error_type,
            error_message=r.error_message,
            duration_ms=r.duration_ms,
            result=r.summary[:300],
            started_at=r.started_at,
            finished_at=r.finished_at,
            lease_until=None,
        )
    return set(mine)


def insert_items(job_id: int, keys: Iterable[str]) -> None:
    """Insert pending items, ignoring keys the job already has."""
    for batch in batched((str(key) for key in keys), 10_000):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                sql = INSERT_SQL.format(table=JobItem._meta.db_table)
                cursor.execute(sql, [job_id, list(batch)])
        else:
            JobItem.objects.bulk_create(
                [JobItem(job_id=job_id, key=key) for key in batch], ignore_conflicts=True
            )


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


def run_chunk(job_id: int, quota: int | None = None) -> None:
    """Work on up to `quota` items of a job (the body of the RQ job `project.jobs.run_chunk`)."""
    close_old_connections()
    try:
        job = Job.objects.get(pk=job_id)
    except Job.DoesNotExist:
        return
    if job.is_finished:
        return
    if job.status == Job.Status.QUEUED:
        Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING, started_at=timezone.now()
        )
        job.refresh_from_db()
    try:
        Runner(job, get_kind(job.kind), quota or settings.BATCH_CHUNK_SIZE).run()
    finally:
        close_old_connections()


# -- Recovery --------------------------------------------------------------------------------


def sweep() -> list[str]:
    """Repair what dead workers and a restarted Redis leave behind; return what it did.

    For each unfinished job: return slots of dead runners, finish it if all items settled,
    settle a cancelled job's orphaned items, and enqueue chunks when items wait but no
    chunk is queued and no runner is alive.
    """
    # One sweep per period across all supervisors; a second would only do the same work.
    if not get_redis().set("batch:sweep", 1, nx=True, px=int(settings.BATCH_SWEEP_SECONDS * 900)):
        return []
    actions = []
    queued = set(get_queue().get_job_ids())
    now = timezone.now()
    for job in Job.objects.active().filter(finished_at__isnull=True):
        slots = Slots(job.pk, job.concurrency, "")
        returned = slots.reclaim_dead()
        if returned:
            actions.append(f"job {job.pk}: returned {returned} slots of dead workers")
        if job.cancel_requested_at or job.error:
            with transaction.atomic():
                orphaned = (
                    JobItem.objects.filter(job_id=job.pk)
                    .claimable(now)
                    .select_for_update(skip_locked=True)
                )
                n = JobItem.objects.filter(
                    id__in=list(orphaned.values_list("id", flat=True))
                ).update(status=JobItem.Status.CANCELLED, finished_at=now)
                Job.objects.filter(pk=job.pk).update(cancelled=F("cancelled") + n)
        if finalize(job.pk):
            actions.append(f"job {job.pk}: finished")
            continue
        if job.cancel_requested_at or job.error:
            continue
        waiting = JobItem.objects.filter(job_id=job.pk).claimable(now).count()
        if not waiting:
            continue
        if any(job_id.startswith(f"batch-{job.pk}-") for job_id in queued):
            continue
        if slots.has_live_runner():
            continue
        chunks = enqueue_chunks(job.pk, waiting)
        actions.append(f"job {job.pk}: {waiting} items waiting, enqueued {chunks} chunks")
    for line in actions:
        log.info("sweep: %s", line)
    return actions


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
