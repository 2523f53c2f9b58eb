"""Faults that once left a job running for ever or counted an item twice, with real workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import OperationalError, connection, transaction

from project import engine
from project.connections import get_redis
from project.engine import store
from project.engine.execute import Executor, Result, Unit
from project.engine.runner import Runner
from project.engine.slots import SlotPool, Slots
from project.kinds import JobKind, RateLimited, get_kind
from project.models import Job, JobItem
from project.ratelimit import RateLimiter, get_limiter
from tests.conftest import ROOT, worker_env
from tests.helpers import (
    kill_tree,
    max_overlap,
    runners_holding_items,
    wait_for_job,
    wait_until,
)
from tests.test_engine import assert_counters_match_items


def items_of(job: Job) -> dict[str, JobItem]:
    return {item.key: item for item in JobItem.objects.filter(job=job)}


# -- Nothing hangs --------------------------------------------------------------------------


def test_a_batch_kind_that_returns_no_mapping_fails_its_items_instead_of_hanging(workers):
    workers(1)
    job = wait_for_job(engine.launch("test_bad_batch", {"items": 12}), timeout=30)
    assert job.status == Job.Status.FAILED
    assert job.failed == 12
    assert set(JobItem.objects.filter(job=job).values_list("error_type", flat=True)) == {
        "TypeError"
    }
    assert_counters_match_items(job)


def test_a_summary_that_cannot_be_stored_fails_only_its_own_item(workers):
    workers(1)
    job = engine.launch("test_bad_summary", {"items": 6, "bad": "2,4"})
    job = wait_for_job(job, timeout=30)
    items = items_of(job)
    assert {k for k, i in items.items() if i.status == "failed"} == {"2", "4"}
    assert items["2"].error_type == "TypeError"
    assert job.succeeded == 4
    assert_counters_match_items(job)


def test_an_item_past_its_deadline_fails_as_a_timeout_and_gives_back_its_slot(workers):
    workers(1)
    # Two slots, and two items that never return: without deadlines nothing else would run.
    job = engine.launch("test_hang", {"items": 8, "bad": "0,1", "latency_ms": 20}, concurrency=2)
    job = wait_for_job(job, timeout=30)
    items = items_of(job)
    assert items["0"].status == items["1"].status == "failed"
    assert items["0"].error_type == "TimeoutError"
    assert "deadline" in items["0"].error_message
    assert job.succeeded == 6
    assert_counters_match_items(job)


def test_batch_kinds_retry_transient_errors_with_backoff(workers):
    workers(1)
    job = wait_for_job(engine.launch("test_flaky_batch", {"items": 8, "bad": "3"}), timeout=30)
    items = items_of(job)
    assert items["3"].status == "failed"
    assert items["3"].attempts == settings.BATCH_MAX_ATTEMPTS
    assert items["3"].error_type == "TransientError"
    others = [i for k, i in items.items() if k != "3"]
    assert {(i.status, i.attempts) for i in others} == {("succeeded", 2)}
    assert_counters_match_items(job)


def test_an_item_that_kills_its_worker_every_time_fails_after_max_claims(
    transactional_db, redis_db
):
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "django", "run_workers", "--workers", "1"],
        cwd=ROOT,
        env=worker_env(),
        stdout=subprocess.DEVNULL,
    )
    try:
        job = engine.launch("test_kill", {"items": 5, "bad": "2"}, concurrency=2)
        job = wait_for_job(job, timeout=150)
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=60)
    poison = items_of(job)["2"]
    assert poison.status == "failed"
    assert poison.error_type == "WorkerLost"
    assert f"claimed {settings.BATCH_MAX_ATTEMPTS} times" in poison.error_message
    assert poison.claims == settings.BATCH_MAX_ATTEMPTS + 1
    assert job.succeeded == 4
    assert_counters_match_items(job)


# -- Deploys and dead workers ---------------------------------------------------------------


# The engine's two worker classes, as `rqworker --worker-class` takes them.
WORKER_CLASSES = ["project.engine.worker.SimpleBatchWorker", "project.engine.worker.BatchWorker"]


def start_worker(worker_class: str, env: dict | None = None) -> subprocess.Popen:
    """A stock `rqworker` of `worker_class` on the default queue."""
    command = [sys.executable, "-m", "django", "rqworker", "--worker-class", worker_class]
    return subprocess.Popen([*command, "default"], cwd=ROOT, env=env or worker_env())


@contextlib.contextmanager
def stopped_by_sigterm(worker: subprocess.Popen):
    """Run the block, then SIGTERM the worker: it must leave cleanly within 30 s."""
    try:
        yield
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()


def finish_on_a_new_worker(worker_class: str, job: Job, timeout: float) -> Job:
    """Start another worker, wait for the job to finish there, then stop that worker."""
    worker = start_worker(worker_class)
    try:
        return wait_for_job(job, timeout=timeout)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_records_finished_items_and_gives_back_unstarted_ones_at_once(
    transactional_db, redis_db, worker_class
):
    # A lease that would outlast the test.
    worker = start_worker(worker_class, worker_env(BATCH_LEASE_SECONDS=120))
    with stopped_by_sigterm(worker):
        job = engine.launch("sleep", {"items": 40, "latency_ms": 1500}, concurrency=4)
        wait_until(lambda: JobItem.objects.filter(job=job, status="running").count() >= 8)
        time.sleep(0.5)  # four items are running, four more are claimed and waiting
    job.refresh_from_db()
    # Nothing waits for a lease: every item is settled or back to pending.
    assert not JobItem.objects.filter(job=job, status="running").exists()
    assert job.succeeded >= 4  # those that ran when SIGTERM came were recorded
    assert JobItem.objects.filter(job=job, status="pending", claimed_by="").count() == 40 - (
        job.succeeded
    )
    job = finish_on_a_new_worker(worker_class, job, timeout=60)
    assert job.succeeded == 40
    # Each item ran once: the ones given back never started.
    assert set(JobItem.objects.filter(job=job).values_list("attempts", flat=True)) == {1}
    assert_counters_match_items(job)


def test_a_sweep_lets_an_idle_workers_shutdown_through_and_survives_an_outage(monkeypatch):
    """RQ stops an idle worker by raising StopRequested from its signal handler, wherever
    the worker is: often in the sweep it runs while idle."""
    from rq.exceptions import StopRequested

    from project.engine import recovery

    def sweep_stopped():
        raise StopRequested

    def sweep_without_database():
        raise OperationalError("the database is away")

    monkeypatch.setattr(recovery, "sweep", sweep_stopped)
    monkeypatch.setattr(recovery, "_next_sweep", 0.0)
    with pytest.raises(StopRequested):
        recovery.sweep_if_due()
    monkeypatch.setattr(recovery, "sweep", sweep_without_database)
    monkeypatch.setattr(recovery, "_next_sweep", 0.0)
    assert recovery.sweep_if_due() == []


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_stops_a_planner_and_another_worker_resumes_its_planning(
    transactional_db, redis_db, worker_class
):
    """The planner's task runs items beside the planner: on SIGTERM both stop, and a
    worker started later finishes the planning from the planner's cursor."""
    with stopped_by_sigterm(start_worker(worker_class)):
        job = engine.launch("test_planned", {"items": 600, "page_size": 50, "latency_ms": 300})
        wait_until(lambda: Job.objects.get(pk=job.pk).total >= 100)
    job.refresh_from_db()
    assert not job.planning_done and job.total < 600
    assert not JobItem.objects.filter(job=job, status="running").exists()
    job = finish_on_a_new_worker(worker_class, job, timeout=90)
    assert job.status == Job.Status.SUCCEEDED
    assert job.total == job.succeeded == 600
    assert set(JobItem.objects.filter(job=job).values_list("attempts", flat=True)) == {1}
    assert_counters_match_items(job)


def start_pool(env) -> subprocess.Popen:
    """A stock `rqworker-pool` session, in its own process group (as systemd would run it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "django", "rqworker-pool", "default", "--num-workers", "1"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )


def test_stock_rqworker_pool_sessions_recover_from_a_killed_session(transactional_db, redis_db):
    env = worker_env()
    sessions = [start_pool(env), start_pool(env)]
    try:
        job = engine.launch("sleep", {"items": 600, "latency_ms": 100}, concurrency=20)
        wait_until(lambda: runners_holding_items(job) >= 2, timeout=60)
        kill_tree(sessions[0].pid)  # the pool, its worker and the worker's horse
        sessions[0].wait()
        job = wait_for_job(job, timeout=120)  # no sweeping from here: the survivor recovers
    finally:
        for session in sessions:
            if session.poll() is None:
                os.killpg(session.pid, signal.SIGTERM)
                session.wait(timeout=60)
    assert job.status == Job.Status.SUCCEEDED
    assert job.succeeded == 600
    assert_counters_match_items(job)


def test_a_dead_runners_slots_come_back_long_before_its_lease(workers, settings):
    settings.BATCH_CHUNK_SIZE = 50  # several runners, so both workers take part
    lease = 20
    procs = workers(2, BATCH_LEASE_SECONDS=lease)
    job = engine.launch("sleep", {"items": 2500, "latency_ms": 100}, concurrency=10)
    wait_until(lambda: runners_holding_items(job) >= 2, timeout=30)
    killed_at = store.db_now()
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    job = wait_for_job(job, timeout=120)
    assert_counters_match_items(job)
    # A few seconds after the kill (the `alive` key lapses), and long before the dead
    # runner's leases would, the survivor runs all 10 slots, not its share of 5.
    window = (killed_at + timedelta(seconds=5), killed_at + timedelta(seconds=lease - 5))
    intervals = [
        (start, end)
        for start, end in JobItem.objects.filter(job=job).values_list("started_at", "finished_at")
        if window[0] <= start and end <= window[1]
    ]
    assert max_overlap(intervals) == 10


@pytest.mark.parametrize("loss", ["restart", "expired layout"])
def test_after_losing_its_slots_a_job_never_runs_more_than_c_items(workers, loss):
    workers(2)
    job = engine.launch("sleep", {"items": 300, "latency_ms": 60}, concurrency=6)
    wait_until(lambda: Job.objects.get(pk=job.pk).settled >= 40)
    if loss == "restart":
        get_redis().flushdb()  # Redis runs without persistence: a restart empties it
    else:
        get_redis().delete(f"batch:{job.pk}:slots:epoch")  # as if its TTL ran out
    job = wait_for_job(job, timeout=120)
    assert job.status == Job.Status.SUCCEEDED
    assert_counters_match_items(job)
    intervals = list(JobItem.objects.filter(job=job).values_list("started_at", "finished_at"))
    assert max_overlap(intervals) <= 6


def pool_of(owner: str, held_elsewhere=lambda: 0) -> SlotPool:
    """One runner's slots of a job of concurrency 4, as the runner's main thread drives them."""
    return SlotPool(Slots(1, 4, owner), 4, threading.Event(), held_elsewhere)


def tokens_in_redis() -> int:
    conn = get_redis()
    return conn.llen("batch:1:slots:free") + sum(
        conn.llen(key) for key in conn.scan_iter("batch:1:slots:held:*")
    )


def run_units(pool: SlotPool, count: int) -> list[Unit]:
    units = [Unit([]) for _ in range(count)]
    for unit in units:
        assert pool.acquire(unit)
    return units


def test_slots_reserved_after_a_redis_restart_come_back_though_their_items_ended_unseen(
    redis_db, settings
):
    """Runner A's items end while it lays out the slots anew, after runner B has already
    reserved slots for them (they were under lease): no runner could say they ended. Once
    the old leases have lapsed, the reserve keeps back only what runners still run."""
    settings.BATCH_LEASE_SECONDS = 0.5
    a = pool_of("a")
    a.balance(4, refresh=True)
    running = run_units(a, 4)
    redis_db.flushdb()
    b = pool_of("b", held_elsewhere=lambda: 4)

    def while_a_counts():
        b.balance(0, refresh=True)  # B lays out first, holding 4 slots for A's items
        for unit in running:
            a.release(unit)  # A's items end before A has seen the new layout
        return 0

    a.count_held_elsewhere = while_a_counts
    a.balance(4, refresh=True)
    assert a.held == 0 and tokens_in_redis() == 0
    time.sleep(0.6)
    a.balance(4, refresh=True)
    assert a.held == 4
    assert len(run_units(a, 4)) == 4
    assert tokens_in_redis() == 4


def test_after_a_redis_restart_items_still_running_keep_their_slots_until_they_end(
    redis_db, settings
):
    settings.BATCH_LEASE_SECONDS = 0.5
    a = pool_of("a")
    a.balance(4, refresh=True)
    running = run_units(a, 4)
    redis_db.flushdb()
    a.balance(4, refresh=True)  # lays out anew; its 4 items now run on reserved slots
    a.release(running.pop())
    a.balance(4, refresh=True)
    assert a.held == 1
    time.sleep(0.6)  # the leases lapse, but this live runner still runs 3 items
    a.balance(4, refresh=True)
    assert a.held == 1 and tokens_in_redis() == 1
    for unit in running:
        a.release(unit)
    a.balance(4, refresh=True)
    assert a.held == 4 and tokens_in_redis() == 4


# -- Nothing counts twice -------------------------------------------------------------------


def test_a_runner_never_claims_back_an_item_it_holds(transactional_db):
    job = engine.launch("sleep", {"items": 3}, keys=["a", "b", "c"])
    mine = store.claim(job.pk, "runner-1", 10, lease=-1)  # a lease that has already lapsed
    assert len(mine) == 3
    assert store.claim(job.pk, "runner-1", 10, lease=30) == []
    theirs = store.claim(job.pk, "runner-2", 10, lease=30)
    assert [c.key for c in theirs] == ["a", "b", "c"]
    assert {c.claims for c in theirs} == {2}


def test_a_claim_takes_no_more_items_than_asked_when_the_table_has_no_statistics(
    transactional_db, redis_db
):
    """Statistics taken when the table held only dead rows (old jobs deleted) say it is
    empty: PostgreSQL then plans for one row, whatever the table holds."""
    keys = [str(n) for n in range(1000)]
    JobItem.objects.filter(job=engine.launch("sleep", {"items": 1000}, keys=keys)).delete()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {JobItem._meta.db_table}")
    job = engine.launch("sleep", {"items": 1000}, keys=keys)

    first = store.claim(job.pk, "runner-1", 100, lease=30)
    second = store.claim(job.pk, "runner-2", 100, lease=30)

    assert len(first) == len(second) == 100
    assert {c.key for c in first}.isdisjoint(c.key for c in second)
    assert JobItem.objects.filter(job=job, status="running").count() == 200


def test_a_result_reported_twice_is_counted_once(transactional_db, redis_db):
    job = engine.launch("sleep", {"items": 2}, keys=["a", "b"])
    runner = Runner(job, get_kind("sleep"))
    claimed = store.claim(job.pk, runner.owner, 10, lease=30)
    for row in claimed:
        runner.outstanding[row.id] = row
    a, b = claimed
    now = job.created_at
    done = Result(a.id, "succeeded", 1, now, now, 1.0)
    runner.flush([done, done, Result(b.id, "failed", 1, now, now, 1.0, error_type="X")])
    job.refresh_from_db()
    assert (job.succeeded, job.failed, job.status) == (1, 1, "completed_with_errors")
    runner.flush([done])  # a late duplicate after the item was recorded
    job.refresh_from_db()
    assert job.succeeded == 1


# -- Limiters -------------------------------------------------------------------------------


class SmtpKind(JobKind):
    name = "smtp_user"
    limiter = "smtp"


@pytest.mark.parametrize(
    "error, paused",
    [
        (RateLimited("429", retry_after=2, limiter="test"), {"test": 2}),
        (RateLimited("429 without a Retry-After"), {"smtp": 5}),
        (RateLimited("429", retry_after=3600), {"smtp": 60}),
    ],
)
def test_a_429_pauses_the_limiter_it_came_from_for_a_capped_time(redis_db, db, error, paused):
    executor = Executor(Job(kind="smtp_user"), SmtpKind(), None, threading.Event(), None)
    stop = threading.Event()
    executor.stopping = stop
    stop.set()  # don't sleep it out: only the pause matters here
    executor.wait_before_retry(error, 1)
    for name in ("test", "smtp"):
        wait = get_limiter(name).try_acquire()
        if name in paused:
            assert paused[name] - 1 < wait <= paused[name]
        else:
            assert wait == 0


def test_a_limiter_remembers_token_debt_for_as_long_as_it_lasts(redis_db, settings):
    settings.RATE_LIMITS = {"llm": {"rpm": 0, "tpm": 1000}}
    limiter = get_limiter("llm")
    limiter.acquire(cost=100)  # an estimate
    limiter.settle(estimated=100, actual=5000)  # the response's usage: 5 minutes of tokens
    ttl = get_redis().ttl("ratelimit:llm:cost")
    assert ttl > 4 * 60
    wait = limiter.try_acquire(cost=10)
    assert 4.5 * 60 < wait <= 5 * 60


def test_settling_a_smaller_usage_refunds_the_estimate(redis_db, settings):
    settings.RATE_LIMITS = {"llm": {"rpm": 0, "tpm": 600}}
    limiter = get_limiter("llm")
    limiter.acquire(cost=600)  # a full minute, estimated
    assert limiter.try_acquire(cost=60) > 0
    limiter.settle(estimated=600, actual=10)
    # What is left is the 10 tokens used: one second at 600 per minute, not a minute.
    assert 0 < limiter.try_acquire(cost=60) <= 1


def test_threads_waiting_on_a_limiter_take_turns_asking_redis(redis_db):
    asked = []

    class Counting(RateLimiter):
        def try_acquire(self, cost=1):
            asked.append(time.monotonic())
            return super().try_acquire(cost)

    limiter = Counting("slow", rpm=1200, burst_seconds=0.25)  # 20 a second, 5 at once
    took = []

    def take():
        limiter.acquire()
        took.append(time.monotonic())

    threads = [threading.Thread(target=take) for _ in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(took) == 25
    # 20 of them waited for 1 s in all: each waiter asked once on arrival, and the one whose
    # turn it was once or twice a request, where each of the 20 used to ask every 50 ms.
    assert len(asked) <= 25 + 2 * 20 + 5
    assert max(took) - min(took) >= (25 - 5 - 1) / 20 * 0.9  # and the rate held


# -- Per-thread resources ------------------------------------------------------------------


def test_a_kind_makes_its_per_thread_resource_once_per_thread(workers):
    workers(1)
    job = engine.launch("test_thread_resource", {"items": 60, "latency_ms": 5}, concurrency=3)
    job = wait_for_job(job, timeout=30)
    resources = set(JobItem.objects.filter(job=job).values_list("result", flat=True))
    assert job.succeeded == 60
    assert 1 <= len(resources) <= 3  # one per thread of the runner, not one per item


# -- The admin -----------------------------------------------------------------------------


def test_saving_a_running_job_in_the_admin_keeps_the_counters_the_engine_wrote(
    admin_client, transactional_db
):
    job = engine.launch("sleep", {"items": 3}, keys=["a", "b", "c"])
    page = admin_client.get(f"/admin/project/job/{job.pk}/change/")
    assert page.status_code == 200
    # Meanwhile a runner records two items.
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(succeeded=2, status="running")
    response = admin_client.post(
        f"/admin/project/job/{job.pk}/change/",
        {"stop_after_consecutive": "5", "stop_failure_ratio": "", "stop_min_items": "50"},
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.succeeded, job.status, job.stop_after_consecutive) == (2, "running", 5)


def test_a_job_whose_kind_is_gone_fails_instead_of_looping(workers):
    workers(1)
    job = engine.launch("sleep", {"items": 3}, keys=["a", "b", "c"])
    Job.objects.filter(pk=job.pk).update(kind="retired_kind")
    job = wait_for_job(job, timeout=30)
    assert job.status == Job.Status.FAILED
    assert "unknown job kind 'retired_kind'" in job.error
    assert job.cancelled == 3
    assert_counters_match_items(job)
