"""Planners: launch returns at once, items run while planning, crashes resume, errors fail."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.urls import reverse
from django.utils import timezone

from project import engine
from project.engine.planning import get_queue, run_planner
from project.models import Job, JobItem
from tests.conftest import ROOT, worker_env
from tests.helpers import wait_for_job, wait_until
from tests.test_engine import assert_counters_match_items


def test_a_planned_job_launches_at_once_and_its_items_run_while_it_plans(workers):
    workers(2)
    params = {"items": 600, "page_size": 100, "latency_ms": 300}  # a page each 0.3 s
    job = engine.launch("test_planned", params)
    assert (job.status, job.total, job.planning_done) == ("planning", 0, False)
    # Items run before the planner is done.
    wait_until(lambda: Job.objects.get(pk=job.pk).succeeded > 0, timeout=30)
    early = Job.objects.get(pk=job.pk)
    assert not early.planning_done and early.total < 600
    job = wait_for_job(job)
    assert job.status == Job.Status.SUCCEEDED
    assert (job.total, job.tallies) == (600, {"squares": 600})
    assert job.plan_cursor == "600"
    assert_counters_match_items(job)


def test_the_job_page_shows_how_many_items_the_planner_has_found(admin_client, db):
    job = engine.launch("test_planned", {"items": 250, "page_size": 100, "fail_after_pages": 2})
    page = admin_client.get(reverse("job", args=[job.pk]))
    assert "planning: 0 items so far" in page.content.decode()
    with transaction.atomic():
        engine.add_items(job, [(str(i), {"square": i * i}) for i in range(120)])
    page = admin_client.get(reverse("job", args=[job.pk]))
    assert "planning: 120 items so far" in page.content.decode()


def test_items_run_while_the_planner_pages_even_on_a_single_worker(workers):
    workers(1)
    job = engine.launch("test_planned", {"items": 400, "page_size": 50, "latency_ms": 300})

    def ran_while_planning() -> bool:
        ran = JobItem.objects.filter(job=job, status="succeeded").exists()
        return ran and not Job.objects.get(pk=job.pk).planning_done

    wait_until(ran_while_planning, timeout=60)
    job = wait_for_job(job, timeout=60)
    assert job.status == Job.Status.SUCCEEDED
    assert job.succeeded == 400
    assert_counters_match_items(job)


def test_cancelling_while_the_planner_pages_stops_both_planner_and_items(workers):
    workers(1)
    job = engine.launch("test_planned", {"items": 2000, "page_size": 50, "latency_ms": 300})
    wait_until(lambda: JobItem.objects.filter(job=job, status="succeeded").exists())
    assert engine.cancel(job)
    job = wait_for_job(job, timeout=60)
    assert job.status == Job.Status.CANCELLED
    assert job.total < 2000  # the planner stopped after its page
    assert_counters_match_items(job)
    # The worker is free again: the next job runs.
    after = wait_for_job(engine.launch("sleep", {"items": 20}), timeout=60)
    assert after.status == Job.Status.SUCCEEDED


def test_a_planner_that_raises_fails_the_job_with_its_error(workers):
    workers(1)
    job = engine.launch(
        "test_planned", {"items": 1000, "page_size": 100, "fail_after_pages": 3, "latency_ms": 50}
    )
    job = wait_for_job(job)
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("Planning failed: PermanentError: the planner's source is gone")
    assert job.total == 300  # the pages before the error
    assert_counters_match_items(job)


def test_a_planner_that_dies_is_restarted_and_resumes_after_its_last_page(workers):
    workers(2)
    # The first planner kills its worker after two pages; recovery starts another.
    job = engine.launch("test_planned", {"items": 500, "page_size": 100, "die_after_pages": 2})
    job = wait_for_job(job, timeout=120)
    assert job.status == Job.Status.SUCCEEDED
    assert job.total == 500
    assert JobItem.objects.filter(job=job).count() == 500
    assert_counters_match_items(job)


def test_a_planner_just_taken_from_the_queue_is_not_started_again(transactional_db, redis_db):
    job = engine.launch("test_planned", {"items": 300, "page_size": 100})
    get_queue().empty()  # a worker took the planner's task and has not yet taken its lease
    redis_db.delete("batch:sweep")
    assert engine.sweep() == []
    assert get_queue().count == 0
    # Once it could have taken its lease and lost it, it counts as dead.
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    redis_db.delete("batch:sweep")
    assert engine.sweep() == [f"job {job.pk}: restarted its planner"]
    assert [task.id.startswith(f"plan-{job.pk}-") for task in get_queue().jobs] == [True]


def test_add_items_refuses_a_finished_job_and_keeps_nothing_of_the_page(transactional_db):
    job = engine.launch("sleep", {"items": 1}, keys=[])
    job.refresh_from_db()
    assert job.is_finished
    with pytest.raises(ValidationError, match="has finished"):
        engine.add_items(job, ["late"])
    assert not JobItem.objects.filter(job=job).exists()
    assert Job.objects.get(pk=job.pk).total == 0


def test_a_page_that_comes_after_a_cancel_is_dropped(transactional_db, redis_db):
    """The planner checks for a cancel before each page, and a cancel can come between
    that check and the page: the cancel has counted the job's items, so the page is not
    added (nor left pending for ever)."""
    job = engine.launch("test_planned", {"items": 1000})
    engine.add_items(job, ["a", "b"])
    assert engine.cancel(job)
    assert engine.add_items(job, ["c", "d"], plan_cursor="4") == 0
    job.refresh_from_db()
    assert job.total == 2 and job.plan_cursor == ""
    assert sorted(JobItem.objects.filter(job=job).values_list("key", flat=True)) == ["a", "b"]
    assert job.status == Job.Status.CANCELLED
    assert_counters_match_items(job)


def test_concurrent_pages_lose_no_update_to_the_total(transactional_db, redis_db):
    job = engine.launch("test_planned", {"items": 1})
    errors = []

    def add(prefix: str) -> None:
        try:
            for page in range(10):
                with transaction.atomic():
                    engine.add_items(job, [f"{prefix}-{page}-{i}" for i in range(50)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=add, args=(p,)) for p in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Job.objects.get(pk=job.pk).total == 4 * 10 * 50 == JobItem.objects.count()


def test_the_planner_runs_once_even_if_started_twice(transactional_db, redis_db):
    job = engine.launch("test_planned", {"items": 300, "page_size": 100})
    run_planner(job.pk)
    run_planner(job.pk)  # a duplicate task: planning is done, it does nothing
    job.refresh_from_db()
    assert (job.total, job.planning_done) == (300, True)


def test_run_job_detach_prints_the_new_job_and_exits_at_once(transactional_db, redis_db):
    done = subprocess.run(
        [sys.executable, "manage.py", "run_job", "test_planned", "--param", "items=5", "--detach"],
        cwd=ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    job = Job.objects.get()
    assert printed["id"] == job.pk
    assert printed["status"] == "planning"
    assert set(printed) >= {"id", "kind", "status", "total", "succeeded", "failed", "summary"}
