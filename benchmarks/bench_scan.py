"""Time scan_conversations over a 1,000-conversation mailbox against a local OpenAI server.

    .venv/bin/python benchmarks/bench_scan.py [--conversations 1000] [--workers 2] [--fresh]

It runs in a database of its own (`batchboard_scanbench`, Redis database 10):
1. With --fresh, drop and re-create the database and migrate it (a new customer's first run).
2. Write a labelled mailbox of N conversations (tests/mailgen.py) to a temporary file.
3. Serve an OpenAI-compatible API in this process (tests/openai_server.py) that answers in
   200 ms with what a good model would return.
4. For each case, start `manage.py run_workers --workers W` with that case's settings, launch
   the scan as the dashboard does (the planner reads the mailbox while extraction runs), and
   report wall time from launch to finish:
   - `ideal`: concurrency 50, no rate limit. Ideal: N x 0.2 s / 50 (the original's batches of
     10 with a 1 s sleep would take N / 10 x 1.2 s).
   - `rpm`: OPENAI_RPM=1200: the most requests the server saw in any 10 s window (<= 200,
     201 at a window's edge), and the run's length against the limit's lower bound.
   - `429`: 5% of answers are 429 with Retry-After: 1: every conversation still succeeds.
   Each line also says how busy the machine, and PostgreSQL, were during the scan.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
BENCH_DB = os.environ.get("BENCH_DATABASE", "batchboard_scanbench")
SERVER = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
os.environ["DATABASE_URL"] = f"{SERVER}/{BENCH_DB}"
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/10")
os.environ["OPENAI_API_KEY"] = "bench-key"  # any key: the server is local
LATENCY = 0.2


from benchdb import CpuMeter, prepare_database, start_workers  # noqa: E402

if __name__ == "__main__":
    prepare_database(SERVER, BENCH_DB, fresh="--fresh" in sys.argv)

import django  # noqa: E402 (needs the environment above)

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from project import engine, llm  # noqa: E402
from project.connections import get_redis  # noqa: E402
from project.models import Job  # noqa: E402
from scanner import extract  # noqa: E402
from scanner.mailbox import read_threads  # noqa: E402
from scanner.models import Conversation  # noqa: E402
from tests import mailgen  # noqa: E402
from tests.openai_server import OpenAIServer, user_text  # noqa: E402


def prepared_answers(path: Path):
    """The model's answers computed before the clock starts, so the stand-in model's own
    work (the rules over each thread) does not take CPU from the workers being measured."""
    answers = {}
    for thread in read_threads(path):
        messages = [
            extract.Message(m.sender_name, m.sender_address, m.sent_at, m.subject, m.text)
            for m in thread.messages
        ]
        prompt = llm.trim(extract.render(messages), settings.SCANNER_TOKEN_BUDGET)
        body = {"messages": [{"role": "user", "content": prompt}]}
        answers[hashlib.sha1(prompt.encode()).hexdigest()] = mailgen.model_answer(body)

    def answer(body: dict) -> str:
        key = hashlib.sha1(user_text(body).encode()).hexdigest()
        return answers.get(key) or mailgen.model_answer(body)

    return answer


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def run_case(path: Path, env: dict, workers: int, concurrency: int, rescan: bool) -> Job:
    """Start workers with the case's settings, scan, stop them (also when the scan fails)."""
    get_redis().flushdb()  # no limiter debt or worker records from the last case
    proc = start_workers(workers, env)
    try:
        return scan(path, concurrency, rescan, proc)
    finally:
        stop(proc)


def scan(path: Path, concurrency: int, rescan: bool, workers: subprocess.Popen) -> Job:
    meter = CpuMeter(workers, BENCH_DB)
    began = time.perf_counter()
    launched_at = time.monotonic()
    job = engine.launch(
        "scan_conversations",
        {"source": f"mailbox:{path}", "extractor": "openai", "rescan": rescan},
        concurrency=concurrency,
    )
    launched = time.perf_counter() - began
    while not job.is_finished:
        time.sleep(0.05)
        meter.sample()
        job.refresh_from_db()
    job.launch_s = launched
    job.launched_at = launched_at
    job.cpu = meter.busy(job.wall_s)
    return job


def line(name: str, job: Job, server: OpenAIServer, extra: str = "") -> None:
    calls = job.tallies.get("llm_calls", 0)
    print(
        f"{name:6} {job.wall_s:7.2f} s  {job.status}: {job.succeeded}/{job.total} succeeded, "
        f"{job.failed} failed; {calls} model calls, {job.tallies.get('llm_skipped', 0)} skipped "
        f"(no tracking-like text), {len(server.requests)} requests "
        f"({sum(1 for r in server.requests if r.status == 429)} answered 429), the first "
        f"{min(r.at for r in server.requests) - job.launched_at:.2f} s after launch; item p50 "
        f"{job.p50_ms:.0f} ms, p95 {job.p95_ms:.0f} ms{extra}; {job.cpu}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--cases", default="ideal,rpm,429")
    args = parser.parse_args()
    cases = args.cases.split(",")
    Conversation.objects.all().delete()
    # What autovacuum does on a production server (it is off on some development ones): the
    # rows earlier runs deleted would otherwise bloat the indexes every item goes through.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mbox"
        began = time.perf_counter()
        mailgen.write_mbox(path, args.conversations, seed=5)
        print(f"mailbox: {args.conversations} conversations, {path.stat().st_size:,} bytes, "
              f"written in {time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
        model_answer = prepared_answers(path)
        base = {"OPENAI_TPM": "100000000"}
        first = True
        if "ideal" in cases:
            with OpenAIServer(latency=LATENCY, answer=model_answer) as server:
                env = {**base, "OPENAI_BASE_URL": server.url, "OPENAI_RPM": "1000000"}
                job = run_case(path, env, args.workers, args.concurrency, rescan=not first)
                first = False
            calls = job.tallies.get("llm_calls", 0)
            ideal = args.conversations * LATENCY / args.concurrency
            made = calls * LATENCY / args.concurrency
            original = args.conversations / 10 * (LATENCY + 1)
            line(
                "ideal",
                job,
                server,
                f"; ideal {ideal:.1f} s ({made:.1f} s for the calls made), "
                f"{job.wall_s / ideal:.2f}x; launch {job.launch_s * 1000:.0f} ms; "
                f"the original: {original:.0f} s",
            )
        if "rpm" in cases:
            with OpenAIServer(latency=LATENCY, answer=model_answer) as server:
                env = {**base, "OPENAI_BASE_URL": server.url, "OPENAI_RPM": "1200"}
                job = run_case(path, env, args.workers, args.concurrency, rescan=not first)
                first = False
            calls = len(server.requests)
            bound = (calls - 1) / 20  # 1200/min = 20/s, after the first request (paced at 97 %)
            line("rpm", job, server, f"; max in any 10 s window: {server.max_in_window(10)} "
                 f"(limit 200); lower bound {bound:.1f} s")  # fmt: skip
        if "429" in cases:
            with OpenAIServer(latency=LATENCY, answer=model_answer, faults={"429": 0.05}) as server:
                env = {**base, "OPENAI_BASE_URL": server.url, "OPENAI_RPM": "1000000"}
                job = run_case(path, env, args.workers, args.concurrency, rescan=not first)
                first = False
            line("429", job, server)


if __name__ == "__main__":
    main()
