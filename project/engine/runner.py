"""The runner: works on one job inside one RQ job (a chunk) until nothing is left to claim.

The main thread claims items, balances slots, watches deadlines and records results; a
pool of threads runs the kind on the items (execute.py); a heartbeat thread renews the
leases (heartbeat.py). On SIGTERM (a deploy, a scale-down) the runner starts nothing new,
gives back the items it has not started at once, records what finishes within
BATCH_SHUTDOWN_GRACE seconds, and leaves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections import deque

import redis
from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from project.engine import store
from project.engine.execute import UNSTARTED, Executor, Result, Unit, failure
from project.engine.finalize import (
    COUNTER_FIELDS,
    cancel_pending,
    count,
    fail_job,
    finalize,
    stop_reason,
)
from project.engine.heartbeat import Heartbeat
from project.engine.live import record_latency
from project.engine.slots import SlotPool, Slots
from project.kinds import Item, JobKind, get_kind
from project.models import Job, JobItem

log = logging.getLogger(__name__)


class WorkerLost(Exception):
    """An item was claimed BATCH_MAX_ATTEMPTS times and never got a result."""


class Runner:
    def __init__(self, job: Job, kind: JobKind, *, stay_while_planning: bool = False):
        self.job = job
        # The planner's own task hosts this runner (planning.plan_and_run): the worker is
        # not free to give back while the planner runs beside it.
        self.stay_while_planning = stay_while_planning
        self.kind = kind
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = settings.BATCH_LEASE_SECONDS
        self.unit_size = kind.batch_size or 1
        self.threads = min(job.concurrency, settings.BATCH_MAX_THREADS)
        self.backlog: queue.Queue[Unit] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        self.stopping = threading.Event()  # start nothing new: cancelled, stopped, or leaving
        self.shutdown = threading.Event()  # the worker was told to leave (SIGTERM)
        self.done = threading.Event()  # the main loop is leaving; idle threads exit
        self.pool = SlotPool(
            Slots(job.pk, job.concurrency, self.owner),
            job.concurrency,
            self.stopping,
            lambda: store.held_elsewhere(job.pk, self.owner),
        )
        self.pool.expect(expected_runners(job), settings.BATCH_JOIN_SECONDS)
        self.executor = Executor(job, kind, self.pool, self.stopping, self.shutdown)
        self.outstanding: dict[int, store.Claimed] = {}  # claimed, not yet recorded
        # list() of a dict of ints copies it in one step under the GIL, so the heartbeat
        # thread can read it while the main thread adds and removes items.
        self.heartbeat = Heartbeat(job.pk, self.owner, self.pool, lambda: list(self.outstanding))
        self.lock = threading.Lock()
        self.active: dict[int, Unit] = {}  # units threads work on now (under self.lock)
        self.workers: list[threading.Thread] = []
        self.exhausted = False  # the last claim found nothing
        self.idle_since: float | None = None
        self.settled_log: deque[tuple[float, int]] = deque()  # (when, how many) flushed
        self.isolating = False  # holds a suspect item, which runs alone (store.claim)
        self.next_claim = 0.0
        self.planning_done = job.planning_done

    # -- The main thread ----------------------------------------------------------------

    def run(self) -> None:
        previous = self.catch_sigterm()
        self.heartbeat.start()  # the item threads start with the first balance (watch)
        pending: list[Result] = []
        next_check = next_refresh = next_balance = next_flush = 0.0
        grace_ends = None
        try:
            while True:
                now = time.monotonic()
                if self.shutdown.is_set() and grace_ends is None:
                    grace_ends = now + settings.BATCH_SHUTDOWN_GRACE
                    pending += self.drop_backlog()
                if not self.stopping.is_set():
                    self.maybe_claim(now, pending)
                if now >= next_check:
                    self.check_stopping()
                    next_check = now + 0.5
                # Runners learn each other's demand every 0.1 s, so slots freed by one that
                # is finishing go to the others within about that long.
                if now >= next_balance:
                    demand = min(self.threads, self.pool.demand(self.backlog.qsize()))
                    self.pool.balance(demand, refresh=now >= next_refresh)
                    if now >= next_refresh:
                        next_refresh = now + 0.1
                    next_balance = now + 0.02
                    self.watch()
                try:
                    pending.append(self.results.get(timeout=0.02))
                    while len(pending) < 1000:
                        pending.append(self.results.get_nowait())
                except queue.Empty:
                    pass
                if pending and (
                    len(pending) >= 200
                    or len(pending) >= len(self.outstanding)  # the last ones: no delay
                    or now >= next_flush
                    or self.must_judge(pending)
                ):
                    self.flush(pending)
                    pending = []
                    next_flush = now + 0.25
                if not self.outstanding and (
                    self.stopping.is_set() or (self.exhausted and self.planning_done)
                ):
                    break
                if self.idle_while_planning(now):
                    # Give the worker back (the planner may need it); the planner's next
                    # page enqueues a runner again.
                    Job.objects.filter(pk=self.job.pk, chunks__gt=0).update(chunks=F("chunks") - 1)
                    break
                if grace_ends is not None and now >= grace_ends:
                    log.warning(
                        "job %s: leaving %d items to their leases",
                        self.job.pk,
                        len(self.outstanding),
                    )
                    break
        finally:
            self.stopping.set()
            self.done.set()
            for thread in list(self.workers):
                thread.join(timeout=0.5 if self.shutdown.is_set() else 5)
            while True:
                try:
                    pending.append(self.results.get_nowait())
                except queue.Empty:
                    break
            pending += self.drop_backlog()
            if pending:
                try:
                    self.flush(pending)
                except Exception:
                    log.exception("job %s: could not record the last results", self.job.pk)
            self.heartbeat.stop()
            with contextlib.suppress(redis.RedisError):
                self.pool.slots.close()
            self.restore_sigterm(previous)
        finalize(self.job.pk)
        if self.shutdown.is_set():
            from project.engine.planning import enqueue_chunks

            # What this worker gave back runs on another one now, not at the next sweep.
            with contextlib.suppress(Exception):
                if store.claimable(self.job.pk).exists():
                    enqueue_chunks(self.job.pk, 1)

    def maybe_claim(self, now: float, pending: list[Result]) -> None:
        if self.exhausted and now < self.next_claim:
            return
        if self.isolating:
            if self.outstanding:
                return  # a suspect runs alone
            self.isolating = False
        # Enough for each of this runner's threads twice, or for half a second at the rate
        # items settle here (fast items: fewer, bigger claims and flushes), whichever is more.
        # Its threads follow its share of the slots: a runner whose share other runners
        # still hold claims little, and leaves the items to runners that can start them.
        enough = max(self.wanted_threads() * self.unit_size * 2, min(2000, int(self.rate(now) / 2)))
        want = enough - self.backlog.qsize() * self.unit_size
        if want < max(1, enough // 4):
            return
        rows = store.claim(self.job.pk, self.owner, want, self.lease)
        if not rows and not self.outstanding:
            rows = store.claim(self.job.pk, self.owner, 1, self.lease, suspects=True)
            self.isolating = bool(rows)
        # None claimable now: look again later; items of a runner that died become
        # claimable when their leases lapse, and a planner may still add items.
        self.exhausted = not rows
        self.next_claim = now + (0.05 if not self.planning_done else 1.0)
        runnable: list[store.Claimed] = []
        for row in rows:
            self.outstanding[row.id] = row
            if row.claims > settings.BATCH_MAX_ATTEMPTS:
                error = WorkerLost(
                    f"claimed {row.claims - 1} times without a result: the worker running it "
                    "died each time (killed, out of memory, or crashed)"
                )
                pending.append(failure(row.id, error, max(1, row.attempts)))
            else:
                runnable.append(row)
        if runnable and type(self.kind).claimed is not JobKind.claimed:
            self.announce(runnable)
        for start in range(0, len(runnable), self.unit_size):
            self.backlog.put(Unit(runnable[start : start + self.unit_size]))

    def announce(self, rows: list[store.Claimed]) -> None:
        """Tell the kind which items this runner will start (JobKind.claimed)."""
        items = [Item(row.id, row.key, row.attempts + 1, row.data) for row in rows]
        try:
            self.kind.claimed(self.job, items)
        except Exception:
            log.exception("job %s: %s.claimed failed", self.job.pk, self.kind.name)

    def rate(self, now: float) -> float:
        """Items per second this runner settled over the last two seconds."""
        while self.settled_log and self.settled_log[0][0] < now - 2:
            self.settled_log.popleft()
        return sum(n for _, n in self.settled_log) / 2

    def idle_while_planning(self, now: float) -> bool:
        """Whether nothing has been claimable for a while, and the planner is not done."""
        if self.outstanding or not self.exhausted or self.planning_done or self.stay_while_planning:
            self.idle_since = None
            return False
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since >= 2

    def drop_backlog(self) -> list[Result]:
        """Units no thread has taken: they never started."""
        dropped = []
        while True:
            try:
                unit = self.backlog.get_nowait()
            except queue.Empty:
                return dropped
            dropped += [Result(row.id, UNSTARTED, row.attempts) for row in unit.rows]

    def check_stopping(self) -> None:
        flags = Job.objects.filter(pk=self.job.pk).values_list(
            "cancel_requested_at", "error", "finished_at", "planning_done"
        )
        cancel_at, error, finished_at, self.planning_done = flags.get()
        self.job.cancel_requested_at, self.job.error = cancel_at, error
        if cancel_at or error or finished_at:
            self.stopping.set()

    def watch(self) -> None:
        """Fail units past their deadline or whose thread died; keep the threads up."""
        now = time.monotonic()
        with self.lock:
            lost = [
                unit
                for unit in self.active.values()
                if (unit.deadline is not None and now > unit.deadline)
                or (unit.thread is not None and not unit.thread.is_alive())
            ]
            for unit in lost:
                del self.active[unit.id]
        for unit in lost:
            alive = unit.thread is not None and unit.thread.is_alive()
            if alive:
                error = TimeoutError(
                    f"no result within {self.executor.timeout:g} s (the item's deadline)"
                )
                unit.thread.abandoned = True  # stuck in the kind: a new thread takes its place
            else:
                error = RuntimeError("the thread running the item died")
            for row in unit.rows:
                self.results.put(failure(row.id, error, max(1, unit.attempts_of(row))))
            self.pool.release(unit)
        with self.lock:
            self.workers = [
                t for t in self.workers if t.is_alive() and not getattr(t, "abandoned", 0)
            ]
            missing = 0 if self.done.is_set() else self.wanted_threads() - len(self.workers)
        for _ in range(missing):
            self.start_thread()

    def wanted_threads(self) -> int:
        """One item thread per slot of this runner's fair share, at most `self.threads`.

        Threads beyond the share would only hold units while they wait for a slot, and each
        idle one wakes the process many times a second: where two runners share a job of
        concurrency 50, each keeps 25 threads, not 50.
        """
        return min(self.threads, max(1, self.pool.target))

    def spare(self, thread: threading.Thread) -> bool:
        """Whether `thread`, between units, is one more than the runner wants: it leaves."""
        with self.lock:
            if len(self.workers) <= self.wanted_threads() or thread not in self.workers:
                return False
            self.workers.remove(thread)
            return True

    def must_judge(self, results: list[Result]) -> bool:
        """Whether to flush now so the error policy sees failures without delay."""
        has_policy = self.job.stop_after_consecutive or self.job.stop_failure_ratio is not None
        return bool(has_policy) and any(r.status == JobItem.Status.FAILED for r in results)

    def flush(self, results: list[Result]) -> None:
        """Record results and bump the job's counters in one short transaction.

        Items are written first; the job row is locked last, so the lock is held only for
        the counter update, and no transaction stays open across the kind's work.
        """
        by_id: dict[int, Result] = {}
        for r in results:
            if r.item_id in self.outstanding and r.item_id not in by_id:
                by_id[r.item_id] = r  # each item once, and only items this runner holds
        unstarted = {i: r.attempts for i, r in by_id.items() if r.status == UNSTARTED}
        settled = [r for r in by_id.values() if r.status != UNSTARTED]
        giving_up = self.job.cancel_requested_at or self.job.error
        if giving_up:
            now = timezone.now()
            settled += [
                Result(i, JobItem.Status.CANCELLED, attempts, finished_at=now)
                for i, attempts in unstarted.items()
            ]
            unstarted = {}
        with transaction.atomic():
            written = store.write(settled, self.owner)
            store.release(unstarted, self.owner)
            # Every record, also of results another runner's lease made stale: what they
            # say happened (an email sent) happened all the same.
            self.store_records([r.record for r in settled if r.record is not None])
            kept = [r for r in settled if r.item_id in written]
            job = Job.objects.select_for_update(no_key=True).get(pk=self.job.pk)
            count(job, kept)
            if not job.error and not job.cancel_requested_at:
                job.error = stop_reason(job)
                if job.error:
                    job.cancelled += cancel_pending(job.pk)
                    self.job.error = job.error
                    self.stopping.set()
            job.heartbeat_at = timezone.now()
            job.save(update_fields=COUNTER_FIELDS)
        for item_id in by_id:
            del self.outstanding[item_id]
        self.settled_log.append((time.monotonic(), len(by_id)))
        record_latency(job.pk, [r.duration_ms for r in kept if r.duration_ms is not None])
        if job.planning_done and job.settled >= job.total:
            finalize(job.pk)

    def store_records(self, records: list) -> None:
        """The kind's `record`, in a savepoint: if it fails, the results are kept."""
        if not records:
            return
        try:
            with transaction.atomic():
                self.kind.record(self.job, records)
        except Exception:
            log.exception("job %s: could not store %d items' records", self.job.pk, len(records))

    # -- The worker threads -------------------------------------------------------------

    def start_thread(self) -> None:
        thread = threading.Thread(target=self.work, name=f"job{self.job.pk}-item", daemon=True)
        with self.lock:
            self.workers.append(thread)
        thread.start()

    def work(self) -> None:
        me = threading.current_thread()
        try:
            resource = self.kind.setup_thread(self.job)
        except Exception as exc:
            log.exception("job %s: setup_thread failed", self.job.pk)
            resource, setup_error = None, exc
        else:
            setup_error = None
        try:
            while True:
                unit = self.next_unit()
                if unit is None:
                    return
                with self.lock:
                    unit.thread = me
                    self.active[unit.id] = unit
                if setup_error is not None:
                    results = [failure(row.id, setup_error, row.attempts + 1) for row in unit.rows]
                else:
                    results = self.executor.run_unit(unit, resource)
                with self.lock:
                    reported = self.active.pop(unit.id, None) is not None
                if reported:
                    for result in results:
                        self.results.put(result)
                else:
                    # The watchdog failed this unit at its deadline and started another
                    # thread in this one's place: the late result is dropped, and so is
                    # this thread.
                    return
        finally:
            with contextlib.suppress(Exception):
                if setup_error is None:
                    self.kind.teardown_thread(self.job, resource)
            connections.close_all()  # this thread's own connections, if the kind opened any

    def next_unit(self) -> Unit | None:
        me = threading.current_thread()
        idle_since = time.monotonic()
        while True:
            if self.spare(me):
                return None
            try:
                return self.backlog.get(timeout=0.05)
            except queue.Empty:
                if self.done.is_set():
                    return None
                # A thread with nothing to do for a second gives its database connection
                # back, so idle threads do not hold PostgreSQL connections.
                if idle_since and time.monotonic() - idle_since > 1:
                    connections.close_all()
                    idle_since = 0.0

    # -- SIGTERM ------------------------------------------------------------------------

    def catch_sigterm(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self.shutdown.set()
            self.stopping.set()
            # Let RQ's own handler know too (a SimpleWorker then stops after this job).
            if callable(previous):
                previous(signum, frame)

        self.sigterm_handler = on_sigterm
        signal.signal(signal.SIGTERM, on_sigterm)
        return previous

    def restore_sigterm(self, previous) -> None:
        if previous is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is getattr(self, "sigterm_handler", None):
            signal.signal(signal.SIGTERM, previous)


def expected_runners(job: Job) -> int:
    """How many runners a job has as it starts: one per chunk, at most one per worker."""
    from rq import Worker

    from project.engine.planning import get_queue

    try:
        workers = Worker.count(queue=get_queue())
    except redis.RedisError:
        return 1
    return max(1, min(job.chunks, workers))


def run_chunk(job_id: int, *, stay_while_planning: bool = False) -> Runner | None:
    """Work on a job's items until none is left (the body of `project.jobs.run_chunk`);
    return the runner, or None when the job had nothing to run."""
    try:
        job = Job.objects.get(pk=job_id)
    except Job.DoesNotExist:
        return None
    if job.is_finished or job.cancel_requested_at or job.error:
        return None
    if not job.started_at or job.status == Job.Status.QUEUED:
        Job.objects.filter(pk=job_id, started_at__isnull=True).update(started_at=timezone.now())
        Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(status=Job.Status.RUNNING)
        job.refresh_from_db()
    try:
        kind = get_kind(job.kind)
    except KeyError as exc:
        fail_job(job.pk, f"{exc.args[0]}: the job cannot run here")
        return None
    runner = Runner(job, kind, stay_while_planning=stay_while_planning)
    runner.run()
    return runner
