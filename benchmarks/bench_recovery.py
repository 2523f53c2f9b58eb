"""How long a job takes to recover from a killed worker session or a Redis restart.

    .venv/bin/python benchmarks/bench_recovery.py kill --fleet rqworker-pool
    .venv/bin/python benchmarks/bench_recovery.py kill --fleet run_workers
    .venv/bin/python benchmarks/bench_recovery.py redis

Runs on a database and a Redis server of its own (`batchboard_recovery`, a redis-server on
port 6390 started here), with the default lease (BATCH_LEASE_SECONDS, 30 s):

- `kill`: two worker sessions (stock `rqworker-pool default --num-workers 1`, or
  `run_workers --workers 1`), `sleep` 2,000 items x 100 ms at concurrency 20. Once both hold
  items, every process of one session gets SIGKILL. Reports the time from the kill to the
  job's finish (target: lease + 15 s) and checks every item was counted once.
- `redis`: two `run_workers` workers, `sleep` 3,000 x 100 ms at concurrency 20; the Redis
  server is killed and started again, empty, mid-job. Reports the time from the restart to the
  job's finish and the most items that ran at once (from the items' start and finish times).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = "batchboard_recovery"
SERVER = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
REDIS_PORT = 6390
os.environ.update(
    DJANGO_SETTINGS_MODULE="project.settings",
    DATABASE_URL=f"{SERVER}/{DB}",
    REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}/0",
)


def start_redis() -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True).stdout:
            return proc
        time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def prepare_database() -> None:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)


def session(fleet: str) -> subprocess.Popen:
    if fleet == "rqworker-pool":
        command = ["rqworker-pool", "default", "--num-workers", "1"]
    else:
        command = ["run_workers", "--workers", "1"]
    return subprocess.Popen(
        [sys.executable, "-m", "django", *command],
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a service manager runs it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["kill", "redis"])
    parser.add_argument("--fleet", choices=["rqworker-pool", "run_workers"], default="run_workers")
    args = parser.parse_args()

    redis_server = start_redis()
    prepare_database()
    import django

    django.setup()
    from django.db.models import Count

    from project import engine
    from project.models import Job, JobItem
    from tests.helpers import kill_tree, max_overlap

    fleet = args.fleet if args.scenario == "kill" else "run_workers"
    sessions = [session(fleet), session(fleet)]
    try:
        items = 2000 if args.scenario == "kill" else 3000
        job = engine.launch("sleep", {"items": items, "latency_ms": 100}, concurrency=20)
        running = JobItem.objects.filter(job=job, status="running")
        while running.values("claimed_by").distinct().count() < 2:
            time.sleep(0.05)
        time.sleep(1)
        if args.scenario == "kill":
            held = running.count()
            kill_tree(sessions[0].pid)
            sessions[0].wait()
            event = time.monotonic()
            print(f"killed session 1 ({fleet}); {held} items were claimed")
        else:
            redis_server.kill()
            redis_server.wait()
            redis_server = start_redis()
            event = time.monotonic()
            print("Redis killed and started again, empty")
        while not job.is_finished:
            time.sleep(0.1)
            job.refresh_from_db()
        recovered = time.monotonic() - event
        counts = dict(JobItem.objects.filter(job=job).values_list("status").annotate(n=Count("id")))
        intervals = list(JobItem.objects.filter(job=job).values_list("started_at", "finished_at"))
        once = counts.get("succeeded", 0) == job.succeeded == items == job.settled
        print(f"job {job.status}: {job.summary}")
        print(
            f"finished {recovered:.1f} s after the {args.scenario}; items by status {counts}; "
            f"counted exactly once: {once}; most items running at once: "
            f"{max_overlap(intervals)} (limit 20)"
        )
        Job.objects.filter(pk=job.pk).delete()
    finally:
        for proc in sessions:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in sessions:
            proc.wait(timeout=60)
        redis_server.terminate()


if __name__ == "__main__":
    main()
