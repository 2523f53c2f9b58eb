"""The run_job command: arguments, exit status, --wait and --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from project.models import Job
from tests.conftest import ROOT, worker_env


def run_job(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "django", "run_job", *args],
        cwd=ROOT,
        env=worker_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchkind"], "unknown job kind 'nosuchkind'"),
        (["sleep", "--param", "items"], "--param takes key=value, not 'items'"),
        (["sleep", "--param", "items=-5"], "items: Ensure this value is greater than"),
        (["sleep", "--param", "items=ten"], "items: Enter a whole number."),
        (["sleep", "--param", "items=10", "--concurrency", "0"], "concurrency must be between"),
        (["sleep", "--concurrency", "many"], "invalid int value: 'many'"),
        (["schedule_emails", "--param", "today=9999-12-31"], "today: the run date 9999-12-31"),
        (["sleep", "--stop-after-consecutive", "-5"], "must be from 1 to 2147483647, not -5"),
        (["sleep", "--stop-after-consecutive", "99999999999"], "must be from 1 to 2147483647"),
        (["sleep", "--stop-after-consecutive", "9" * 5000], "invalid int value: '999"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(transactional_db, args, message):
    result = run_job(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not Job.objects.exists()


def test_wait_and_json_print_the_final_state_and_exit_0_when_all_succeed(workers):
    workers(2)
    result = run_job(
        "sleep", "--param", "items=50", "--param", "latency_ms=10", "--concurrency", "5", "--json"
    )
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(final) >= {"id", "kind", "status", "total", "succeeded", "failed", "skipped"}
    assert set(final) >= {"cancelled", "wall_s"}
    assert (final["kind"], final["status"], final["total"], final["succeeded"]) == (
        "sleep",
        "succeeded",
        50,
        50,
    )
    assert "📊 50 items in" in result.stderr
    job = Job.objects.get(pk=final["id"])
    assert job.source == Job.Source.COMMAND


def test_wait_exits_1_when_any_item_failed(workers):
    workers(2)
    result = run_job(
        "sleep",
        "--param",
        "items=30",
        "--param",
        "latency_ms=0",
        "--param",
        "fail_rate=0.3",
        "--param",
        "seed=4",
        "--wait",
    )
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("📊 30 items in ") and " failed" in last
    assert "0 failed" not in last
