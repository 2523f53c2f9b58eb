"""The batch engine against real PostgreSQL, Redis and RQ worker processes."""

from __future__ import annotations

import gc
import random
import signal
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.db.models import Count

from project import engine
from project.connections import get_redis, open_redis_connections
from project.engine.execute import failure
from project.engine.runner import Runner
from project.kinds import get_kind
from project.models import Job, JobItem
from project.ratelimit import get_limiter
from tests.helpers import max_overlap, wait_for_job, wait_until

MAX_ATTEMPTS = 4  # settings.BATCH_MAX_ATTEMPTS, which the workers inherit


def expected_sleep_outcome(seed: int, key: str, fail_rate: float, transient: bool):
    """Replay the sleep kind's seeded draws: (status, attempts) an item must end with."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        failed = random.Random(f"{seed}:{key}:{attempt}").random() < fail_rate
        if not failed:
            return "succeeded", attempt
        if not transient:
            return "failed", 1
    return "failed", MAX_ATTEMPTS


def assert_counters_match_items(job: Job) -> None:
    by_status = dict(JobItem.objects.filter(job=job).values_list("status").annotate(n=Count("id")))
    assert by_status.get("succeeded", 0) == job.succeeded
    assert by_status.get("failed", 0) == job.failed
    assert by_status.get("skipped", 0) == job.skipped
    assert by_status.get("cancelled", 0) == job.cancelled
    assert job.settled == job.total == sum(by_status.values())
    assert "pending" not in by_status and "running" not in by_status


def test_the_global_concurrency_limit_holds_across_two_worker_processes(workers, settings):
    settings.BATCH_CHUNK_SIZE = 40  # several chunks, so both workers share the job
    workers(2, BATCH_CHUNK_SIZE=40)
    job = engine.launch("sleep", {"items": 240, "latency_ms": 40}, concurrency=6)
    job = wait_for_job(job)
    intervals = list(JobItem.objects.filter(job=job).values_list("started_at", "finished_at"))
    assert job.status == Job.Status.SUCCEEDED
    assert max_overlap(intervals) <= 6
    # Both workers took part: items were claimed by more than one runner.
    assert JobItem.objects.filter(job=job).values("claimed_by").distinct().count() >= 2


def test_the_rate_limiter_holds_its_rate_across_two_worker_processes(workers):
    rate_per_s = 10
    workers(2, TEST_RPM=rate_per_s * 60)
    job = engine.launch("sleep", {"items": 50, "latency_ms": 0, "limiter": "test"}, concurrency=10)
    job = wait_for_job(job)
    # Items take 0 ms once the limiter lets them go, so finished_at is when it did.
    starts = sorted(JobItem.objects.filter(job=job).values_list("finished_at", flat=True))
    burst = rate_per_s  # one second's worth
    # In any window of w seconds, at most rate * w + burst items may start.
    for i, first in enumerate(starts):
        in_two_seconds = sum(1 for t in starts[i:] if t - first <= timedelta(seconds=2))
        assert in_two_seconds <= 2 * rate_per_s + burst + 1
    span = (starts[-1] - starts[0]).total_seconds()
    assert span >= (len(starts) - burst - 1) / rate_per_s * 0.9


def test_transient_failures_are_retried_with_backoff_until_they_pass_or_run_out(workers):
    workers(2)
    params = {"items": 60, "latency_ms": 5, "fail_rate": 0.5, "failure": "transient", "seed": 11}
    job = wait_for_job(engine.launch("sleep", params, concurrency=8))
    items = {i.key: i for i in JobItem.objects.filter(job=job)}
    retried_and_passed = 0
    for key, item in items.items():
        status, attempts = expected_sleep_outcome(11, key, 0.5, transient=True)
        assert (item.status, item.attempts) == (status, attempts), key
        if status == "succeeded" and attempts > 1:
            retried_and_passed += 1
            # Backoff: at least half of 0.05 s before the second attempt.
            assert item.finished_at - item.started_at >= timedelta(seconds=0.025)
        if status == "failed":
            assert item.error_type == "TransientError"
    assert retried_and_passed > 0
    assert job.failed == sum(1 for i in items.values() if i.status == "failed") > 0
    assert job.status == Job.Status.COMPLETED_WITH_ERRORS
    assert_counters_match_items(job)


def test_permanent_failures_fail_at_once_with_a_readable_error(workers):
    workers(1)
    params = {"items": 50, "latency_ms": 0, "fail_rate": 0.3, "seed": 5}
    job = wait_for_job(engine.launch("sleep", params, concurrency=5))
    failed = JobItem.objects.filter(job=job, status="failed")
    expected = {
        str(k) for k in range(50) if expected_sleep_outcome(5, str(k), 0.3, False)[0] == "failed"
    }
    assert set(failed.values_list("key", flat=True)) == expected
    assert set(failed.values_list("attempts", flat=True)) == {1}
    assert set(failed.values_list("error_type", "error_message")) == {
        ("PermanentError", "simulated permanent failure")
    }
    groups = engine.failure_groups(job)
    assert groups == [
        {
            "error_type": "PermanentError",
            "error_message": "simulated permanent failure",
            "count": len(expected),
        }
    ]


def test_cancel_lets_running_items_finish_and_cancels_the_rest(workers):
    workers(2)
    job = engine.launch("sleep", {"items": 400, "latency_ms": 100}, concurrency=4)
    wait_until(lambda: Job.objects.get(pk=job.pk).settled >= 12)
    assert engine.cancel(job)
    job = wait_for_job(job)
    assert job.status == Job.Status.CANCELLED
    assert job.cancelled > 300
    assert job.failed == 0
    assert_counters_match_items(job)
    late = JobItem.objects.filter(
        job=job, started_at__gt=job.cancel_requested_at + timedelta(seconds=1)
    )
    assert not late.exists()
    assert not engine.cancel(job)  # a finished job cannot be cancelled again


def test_retry_failed_runs_a_new_job_over_exactly_the_failed_items(workers):
    workers(2)
    params = {"items": 40, "latency_ms": 0, "fail_rate": 0.25, "seed": 3}
    parent = wait_for_job(engine.launch("sleep", params, concurrency=5))
    failed_keys = set(
        JobItem.objects.filter(job=parent, status="failed").values_list("key", flat=True)
    )
    assert failed_keys
    child = engine.retry_failed(parent, source=Job.Source.DASHBOARD)
    assert child.parent == parent
    assert set(child.items.values_list("key", flat=True)) == failed_keys
    child = wait_for_job(child)
    # Same seed, same draws: the same items fail again, and only they are retried.
    assert child.total == len(failed_keys) == child.failed


def test_finalization_happens_exactly_once_under_concurrent_callers(transactional_db, redis_db):
    job = engine.launch("sleep", {"items": 30, "latency_ms": 0})
    JobItem.objects.filter(job=job).update(status="succeeded")
    Job.objects.filter(pk=job.pk).update(succeeded=30, status=Job.Status.RUNNING)
    barrier = threading.Barrier(8)
    winners = []

    def finish():
        barrier.wait()
        try:
            winners.append(engine.finalize(job.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(winners) == [False] * 7 + [True]
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.summary.startswith("📊 30 items in ")


def test_many_small_chunks_completing_together_count_every_item_once(workers, settings):
    settings.BATCH_CHUNK_SIZE = 7
    workers(2, BATCH_CHUNK_SIZE=7)
    job = wait_for_job(engine.launch("sleep", {"items": 500, "latency_ms": 0}, concurrency=16))
    assert job.status == Job.Status.SUCCEEDED
    assert job.summary.endswith("500 succeeded, 0 failed, 0 skipped")
    assert_counters_match_items(job)


def test_a_worker_killed_mid_job_loses_no_item(workers, settings):
    settings.BATCH_CHUNK_SIZE = 50
    procs = workers(2, BATCH_CHUNK_SIZE=50)
    job = engine.launch("sleep", {"items": 300, "latency_ms": 50}, concurrency=10)
    wait_until(lambda: Job.objects.get(pk=job.pk).settled >= 40)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    job = wait_for_job(job, timeout=120)
    assert job.status == Job.Status.SUCCEEDED
    assert job.succeeded == 300
    assert_counters_match_items(job)


def test_a_redis_restart_mid_job_loses_no_item(workers):
    workers(2)
    job = engine.launch("sleep", {"items": 300, "latency_ms": 30}, concurrency=10)
    wait_until(lambda: Job.objects.get(pk=job.pk).settled >= 30)
    # Redis runs without persistence: a restart empties it, as FLUSHDB does.
    get_redis().flushdb()
    job = wait_for_job(job, timeout=120)
    assert job.status == Job.Status.SUCCEEDED
    assert_counters_match_items(job)


def test_the_error_policy_stops_a_job_whose_dependency_is_dead(workers):
    workers(2)
    job = engine.launch(
        "sleep",
        {"items": 2000, "latency_ms": 2, "fail_rate": 1},
        concurrency=4,
        stop_after_consecutive=20,
    )
    job = wait_for_job(job)
    assert job.status == Job.Status.FAILED
    assert "consecutive failures (limit 20)" in job.error
    assert 20 <= job.failed < 100
    assert job.cancelled == 2000 - job.failed
    assert_counters_match_items(job)


def test_a_runner_keeps_one_item_thread_per_slot_of_its_share(transactional_db, redis_db):
    job = engine.launch("sleep", {"items": 1}, keys=["a"], concurrency=10)
    runner = Runner(job, get_kind("sleep"))

    def item_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name == f"job{job.pk}-item")

    try:
        runner.pool.target = 3  # its fair share, while another runner takes the rest
        runner.watch()
        assert item_threads() == 3
        runner.pool.target = 10  # the other runner left
        runner.watch()
        assert item_threads() == 10
        runner.pool.target = 2  # threads between units leave
        wait_until(lambda: item_threads() == 2, timeout=10)
        runner.watch()
        assert item_threads() == 2
    finally:
        runner.done.set()
        wait_until(lambda: item_threads() == 0, timeout=10)


@pytest.mark.parametrize("bad", ["", "claimed"])
def test_a_kind_hears_of_the_items_a_runner_claimed_before_they_run(workers, redis_db, bad):
    workers(2)
    job = engine.launch(
        "test_announced", {"items": 120, "latency_ms": 5, "bad": bad}, concurrency=8
    )
    job = wait_for_job(job)
    # Every item was announced first; a kind whose `claimed` fails still runs its items.
    assert job.status == Job.Status.SUCCEEDED and job.succeeded == 120
    assert redis_db.scard(f"test:announced:{job.pk}") == 120


@pytest.mark.parametrize("bad", ["", "record"])
def test_a_kind_stores_its_items_records_with_their_results(workers, redis_db, bad):
    workers(2)
    job = engine.launch("test_recorded", {"items": 120, "latency_ms": 5, "bad": bad}, concurrency=8)
    job = wait_for_job(job)
    # Every item's record, stored in the transaction that recorded its result (where the
    # item is succeeded already), a runner's results at a time; a failing `record` loses
    # no result.
    assert job.status == Job.Status.SUCCEEDED and job.succeeded == 120
    assert redis_db.scard(f"test:recorded:{job.pk}") == 120
    assert redis_db.scard(f"test:recorded-done:{job.pk}") == 120
    assert int(redis_db.get(f"test:record-calls:{job.pk}")) < 60


def test_a_worker_opens_its_item_threads_redis_connections_ahead(redis_db):
    get_redis.cache_clear()  # a new client, as in a worker that just started
    before = len(redis_db.client_list())
    try:
        open_redis_connections(5)
        assert len(redis_db.client_list()) == before + 5
        assert sum(count for count, _ in get_redis().connection_pool.get_connection_count()) == 5
    finally:
        get_redis().close()
        get_redis.cache_clear()


def test_a_threads_limiter_calls_keep_one_connection_given_back_when_it_ends(redis_db, settings):
    settings.RATE_LIMITS = {"test": {"rpm": 60_000}}
    limiter = get_limiter("test")
    pool = get_redis().connection_pool

    def in_use() -> int:
        return pool.get_connection_count()[1][0]

    before, seen = in_use(), []

    def calls() -> None:
        for _ in range(5):
            assert limiter.try_acquire() == 0
            seen.append(in_use())

    thread = threading.Thread(target=calls)
    thread.start()
    thread.join()
    assert seen == [before + 1] * 5
    gc.collect()
    assert in_use() == before


def test_a_new_runner_takes_its_share_of_the_slots_in_its_first_balance(transactional_db, redis_db):
    job = engine.launch("sleep", {"items": 1}, keys=["a"], concurrency=10)
    runner = Runner(job, get_kind("sleep"))
    try:
        runner.pool.balance(demand=4, refresh=False)
        assert runner.pool.held == 4
    finally:
        runner.pool.slots.close()


def test_a_new_jobs_first_runner_keeps_the_share_of_the_runners_about_to_join(
    transactional_db, redis_db, settings
):
    job = engine.launch("sleep", {"items": 1}, keys=["a"], concurrency=10)
    first, second = Runner(job, get_kind("sleep")), Runner(job, get_kind("sleep"))
    try:
        for runner in (first, second):
            runner.pool.expect(2, seconds=30)
        assert first.pool.target == 5  # before its first balance: it starts no more threads
        first.pool.balance(demand=10, refresh=True)
        assert first.pool.held == 5  # not all 10, though the other has not joined yet
        second.pool.balance(demand=10, refresh=True)
        assert second.pool.held == 5
        # Once the other leaves and the wait is over, the first takes the rest.
        second.pool.slots.close()
        first.pool.join_until = 0
        first.pool.balance(demand=10, refresh=True)
        assert first.pool.held == 10
    finally:
        first.pool.slots.close()


def test_an_empty_job_finishes_at_once(transactional_db, redis_db):
    job = engine.launch("sleep", {"items": 1}, keys=[])
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.total == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"items": 0}, "items"),
        ({"items": 10, "fail_rate": 2}, "fail_rate"),
        ({"items": 10, "limiter": "nope"}, "unknown rate limiter"),
        ({"items": 10, "limiter": "openai"}, "'openai' is a production limiter"),
        ({"items": 10, "limiter": "smtp"}, "may only use test limiters: test"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_written(db, params, message):
    with pytest.raises(ValidationError) as exc:
        engine.launch("sleep", params)
    assert message in " ".join(exc.value.messages)
    assert not Job.objects.exists()


def test_a_429_with_retry_after_pauses_the_whole_limiter(workers):
    workers(2, TEST_RPM=60_000)
    params = {
        "items": 20,
        "latency_ms": 0,
        "fail_rate": 0.5,
        "failure": "rate_limited",
        "limiter": "test",
        "seed": 2,
    }
    job = wait_for_job(engine.launch("sleep", params, concurrency=4))
    items = list(JobItem.objects.filter(job=job).order_by("finished_at"))
    first_429 = min(i.started_at for i in items if i.attempts > 1)
    # After the first 429, nothing went through the limiter for Retry-After (1 s), not even
    # items that had never failed: the pause is for everyone.
    finished_in_pause = [
        i
        for i in items
        if first_429 + timedelta(seconds=0.1) < i.finished_at < first_429 + timedelta(seconds=0.9)
    ]
    assert finished_in_pause == []
    assert any(i.attempts > 1 and i.status == "succeeded" for i in items)


def test_a_planner_can_add_items_while_the_job_runs(workers):
    workers(2)
    job = engine.launch("sleep", {"items": 1, "latency_ms": 20}, keys=[f"a{i}" for i in range(30)])
    Job.objects.filter(pk=job.pk).update(planning_done=False)
    job.refresh_from_db()
    wait_until(lambda: Job.objects.get(pk=job.pk).settled == 30)
    job.refresh_from_db()
    assert not job.is_finished  # planning is not done: the job cannot finish yet
    with transaction.atomic():
        assert engine.add_items(job, [f"b{i}" for i in range(30)] + ["a0"]) == 30
        engine.finish_planning(job)
    job = wait_for_job(job)
    assert job.total == 60
    assert job.status == Job.Status.SUCCEEDED
    assert_counters_match_items(job)


def test_live_figures_count_items_in_flight_and_failure_groups_come_from_counters(workers):
    workers(2)
    params = {"items": 200, "latency_ms": 200, "fail_rate": 0.2, "seed": 9}
    job = engine.launch("sleep", params, concurrency=6)
    wait_until(lambda: Job.objects.get(pk=job.pk).settled >= 20)
    in_flight = wait_until(lambda: engine.live_figures(job).in_flight)
    assert 1 <= in_flight <= 6
    job = wait_for_job(job)
    failed = JobItem.objects.filter(job=job, status="failed").count()
    assert engine.failure_groups(job) == [
        {
            "error_type": "PermanentError",
            "error_message": "simulated permanent failure",
            "count": failed,
        }
    ]
    assert engine.live_figures(job).in_flight == 0


def test_concurrent_retries_of_one_job_make_one_child(transactional_db, redis_db):
    params = {"items": 20, "fail_rate": 1.0, "seed": 1}
    job = engine.launch("sleep", params, keys=[str(i) for i in range(20)])
    JobItem.objects.filter(job=job).update(status="failed", finished_at=job.created_at)
    Job.objects.filter(pk=job.pk).update(failed=20, total=20)
    job.refresh_from_db()
    engine.finalize(job.pk)
    job.refresh_from_db()
    outcomes = []

    def retry() -> None:
        try:
            outcomes.append(engine.retry_failed(job).pk)
        except ValidationError as exc:
            outcomes.append(exc.messages[0])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=retry) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    children = list(job.retries.all())
    assert len(children) == 1
    assert children[0].total == 20
    refusals = [o for o in outcomes if isinstance(o, str)]
    assert len(refusals) == 2
    assert all("is still running" in r for r in refusals)


def test_retrying_a_job_without_failures_is_refused(transactional_db, redis_db):
    job = engine.launch("sleep", {"items": 1}, keys=[])
    job.refresh_from_db()
    with pytest.raises(ValidationError, match="no failed items"):
        engine.retry_failed(job)


def test_an_error_message_with_a_nul_byte_is_stored_readably():
    result = failure(1, ValueError("bad\x00byte"), 1)
    assert result.error_message == "bad\\x00byte"


@pytest.mark.parametrize(
    ("demand", "others", "share"),
    [
        (50, [], 50),
        (50, [50], 25),
        (50, [5], 45),  # the other runner is finishing: take what it does not need
        (5, [50], 5),
        (30, [30, 30], 17),
        (0, [50], 0),
    ],
)
def test_slots_are_shared_max_min_fairly_among_runners(demand, others, share):
    assert engine.fair_share(50, demand, others) == share


def test_a_worker_warms_up_every_kind_then_freezes_what_it_made(workers, redis_db):
    (proc,) = workers(1)
    (failing,) = workers(1, WARM_UP_FAILS="1")
    wait_until(lambda: redis_db.sismember("test:warmed", proc.pid), timeout=60)
    # The worker whose warm_up failed works all the same: a job on it alone finishes.
    proc.kill()
    proc.wait(timeout=10)
    job = wait_for_job(engine.launch("test_warm", {"items": 3}), sweep=True)
    assert job.status == Job.Status.SUCCEEDED
    assert JobItem.objects.filter(job=job).values("claimed_by").distinct().count() == 1
    assert not redis_db.sismember("test:warmed", failing.pid)
    # Its start-up objects (all of Django's) are out of garbage collection's way.
    frozen = {
        int(r.split()[0]) for r in JobItem.objects.filter(job=job).values_list("result", flat=True)
    }
    assert min(frozen) > 10_000
