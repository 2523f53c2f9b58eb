"""Benchmark the batch engine end to end with real worker processes.

    .venv/bin/python benchmarks/bench_engine.py            # the figures in BENCHMARKS.md
    .venv/bin/python benchmarks/bench_engine.py --scaling  # also 1,000 .. 100,000 items

Starts `manage.py run_workers --workers 2` (and, for the dashboard figure, `runserver`)
against the configured database and Redis, launches `sleep` jobs through engine.launch,
and measures wall time from launch to the job's finish as recorded in PostgreSQL.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402

from project import engine  # noqa: E402
from project.models import Job  # noqa: E402

PORT = 8765


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "django", *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_sleep(items: int, latency_ms: int, concurrency: int) -> Job:
    began = time.perf_counter()
    job = engine.launch(
        "sleep", {"items": items, "latency_ms": latency_ms}, concurrency=concurrency
    )
    launched = time.perf_counter() - began
    while True:
        job.refresh_from_db()
        if job.is_finished:
            break
        time.sleep(0.05)
    job.launch_s = launched
    return job


def report(name: str, job: Job, ideal: float | None = None) -> dict:
    wall = (job.finished_at - job.created_at).total_seconds()
    row = {
        "case": name,
        "items": job.total,
        "wall_s": round(wall, 2),
        "launch_s": round(job.launch_s, 2),
        "items_per_s": round(job.total / wall),
        "p50_ms": round(job.p50_ms or 0, 1),
        "p95_ms": round(job.p95_ms or 0, 1),
    }
    if ideal:
        row["ideal_s"] = ideal
        row["efficiency"] = round(ideal / wall, 3)
    print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def session_cookie() -> str:
    user = get_user_model().objects.filter(is_superuser=True).first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def measure_progress_partial(job_id: int, cookie: str, stop: threading.Event, out: list):
    """GET the job page's progress partial as htmx does, 10 times a second, timing each."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    headers = {"Cookie": cookie, "HX-Request": "true"}
    while not stop.is_set():
        began = time.perf_counter()
        conn.request("GET", f"/jobs/{job_id}/progress/", headers=headers)
        response = conn.getresponse()
        response.read()
        out.append(((time.perf_counter() - began) * 1000, response.status))
        time.sleep(0.1)
    conn.close()


def dashboard_case() -> dict:
    """Progress partial latency while a 100,000-item job runs."""
    web = start(["runserver", f"127.0.0.1:{PORT}", "--noreload", "--nothreading"])
    try:
        for _ in range(100):
            try:
                http.client.HTTPConnection("127.0.0.1", PORT, timeout=1).request("GET", "/login/")
                break
            except OSError:
                time.sleep(0.1)
        cookie = session_cookie()
        job = engine.launch("sleep", {"items": 100_000, "latency_ms": 5}, concurrency=50)
        samples: list = []
        stop = threading.Event()
        while Job.objects.get(pk=job.pk).settled < 1000:
            time.sleep(0.05)
        probe = threading.Thread(
            target=measure_progress_partial, args=(job.pk, cookie, stop, samples)
        )
        probe.start()
        time.sleep(20)
        stop.set()
        probe.join()
        job.refresh_from_db()
        engine.cancel(job)
        times = sorted(ms for ms, status in samples if status == 200)
        # 286 (htmx's "stop polling") once the job has finished within the probe.
        bad = sorted({status for _, status in samples if status != 200})
        row = {
            "case": "progress partial while a 100,000-item job runs",
            "requests": len(samples),
            "non_200": sum(1 for _, status in samples if status != 200),
            "non_200_statuses": ",".join(map(str, bad)) or "-",
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * len(times)) - 1], 1),
            "max_ms": round(times[-1], 1),
            "job_settled_during_probe": job.settled,
        }
        print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return row
    finally:
        web.terminate()
        web.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scaling", action="store_true", help="also 1k..100k items at 0 ms")
    parser.add_argument("--skip-dashboard", action="store_true")
    args = parser.parse_args()

    workers = start(["run_workers", "--workers", str(args.workers)])
    try:
        time.sleep(3)  # let the workers connect
        run_sleep(200, 0, 50)  # warm up imports and connections
        print(f"# {args.workers} worker processes, {os.cpu_count()} cores")
        report("sleep 4,000 x 200 ms, concurrency 50", run_sleep(4000, 200, 50), ideal=16.0)
        report("sleep 20,000 x 0 ms, concurrency 50", run_sleep(20_000, 0, 50))
        if args.scaling:
            for items in (1_000, 10_000, 100_000):
                report(f"sleep {items:,} x 0 ms, concurrency 50", run_sleep(items, 0, 50))
        if not args.skip_dashboard:
            dashboard_case()
    finally:
        workers.terminate()
        workers.wait(timeout=30)


if __name__ == "__main__":
    main()
