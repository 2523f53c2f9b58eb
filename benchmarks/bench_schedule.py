"""Time a full schedule_emails run over 100,000 contacts with real workers.

    .venv/bin/python benchmarks/bench_schedule.py [--contacts 100000] [--workers 2] [--fresh]

It runs in a database of its own (`batchboard_bench` on the local PostgreSQL, or
BENCH_DATABASE, and Redis database 3 unless REDIS_URL names another), so nothing else
skews it:
1. With --fresh, drop and create the database and migrate it, as a new customer's is;
   otherwise reuse it (created and migrated if missing) and remove earlier bench data.
2. Create N contacts in 10 organizations "bench-0".."bench-9" (bulk_create).
3. Start `manage.py run_workers --workers W` on that database.
4. Run schedule_emails over every contact twice, as the dashboard launches it (its planner
   adds the items): the first run writes every email, the second replaces them. Each prints
   the launch latency, wall time from launch to finish, emails written, the summed
   compute / write time of the batches, and the CPU seconds of the workers and of the
   database's backends (CpuMeter) with the load average before the run.
5. Time the rules alone in this process over the same contacts, for the compute share.
6. Remove the bench data (unless --keep) and stop the workers.

The budget: 100,000 contacts in at most 20 s with 2 workers on a 2-core machine, on a fresh
database as on a warm one.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
BENCH_DB = os.environ.get("BENCH_DATABASE", "batchboard_bench")
SERVER = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
os.environ["DATABASE_URL"] = f"{SERVER}/{BENCH_DB}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")


from benchdb import CpuMeter, live_workers, prepare_database, start_workers  # noqa: E402

if __name__ == "__main__":
    prepare_database(SERVER, BENCH_DB, fresh="--fresh" in sys.argv)

import django  # noqa: E402 (needs the environment above)

django.setup()

from django.db import connection  # noqa: E402

from project import engine  # noqa: E402
from project.models import Job  # noqa: E402
from scheduler_app import rules  # noqa: E402
from scheduler_app.models import Contact, Organization, ScheduledEmail  # noqa: E402

ORGS = 10
BUDGET_S = 20.0


def remove_bench_data() -> None:
    """Delete bench-* organizations with their contacts and emails, in three plain DELETEs."""
    orgs = list(Organization.objects.filter(name__startswith="bench-").values_list("id", flat=True))
    if not orgs:
        return
    contacts = Contact.objects.filter(organization_id__in=orgs)
    with connection.cursor() as cursor:
        sql, params = contacts.values("id").query.sql_with_params()
        cursor.execute(
            f"DELETE FROM {ScheduledEmail._meta.db_table} WHERE contact_id IN ({sql})", params
        )
        cursor.execute(
            f"DELETE FROM {Contact._meta.db_table} WHERE organization_id = ANY(%s)", [orgs]
        )
    Organization.objects.filter(id__in=orgs).delete()


def create_contacts(count: int) -> None:
    """count contacts from random.Random(42): a third in windowed states, some dates missing."""
    rng = random.Random(42)
    orgs = [Organization.objects.create(name=f"bench-{n}") for n in range(ORGS)]
    states, windowed = sorted(rules.STATES), sorted(rules.WINDOWS)
    batch = []
    for n in range(count):
        birth = date(1935, 1, 1) + timedelta(days=rng.randrange(365 * 30))
        effective = date(1995, 1, 1) + timedelta(days=rng.randrange(365 * 30))
        batch.append(
            Contact(
                organization=orgs[n % ORGS],
                external_id=str(n),
                first_name=f"First{n}",
                last_name=f"Last{n}",
                email=f"bench{n}@example.com",
                state=rng.choice(windowed) if rng.random() < 0.35 else rng.choice(states),
                birth_date=None if rng.random() < 0.05 else birth,
                effective_date=None if rng.random() < 0.1 else effective,
            )
        )
        if len(batch) == 10_000:
            Contact.objects.bulk_create(batch)
            batch = []
    Contact.objects.bulk_create(batch)
    # As an import leaves them: whatever statistics autovacuum has had time to gather.


def timed_run(contacts, today: date, concurrency: int | None, workers=None) -> dict:
    """Launch schedule_emails over every contact as the dashboard does, and wait."""
    load = os.getloadavg()[0]
    meter = CpuMeter(workers, BENCH_DB)
    started = time.perf_counter()
    job = engine.launch("schedule_emails", {"today": today}, concurrency=concurrency)
    launched = time.perf_counter()
    while not job.is_finished:
        time.sleep(0.05)
        meter.sample()
        job.refresh_from_db()
    wall = time.perf_counter() - started
    tallies = job.tallies
    return {
        "job": job,
        "wall": wall,
        "launch": launched - started,
        "compute": tallies.get("compute_ms", 0) / 1000,
        "write": tallies.get("write_ms", 0) / 1000,
        "written": ScheduledEmail.objects.filter(job=job).count(),
        "pending": ScheduledEmail.objects.filter(contact__in=contacts, status="pending").count(),
        "cpu": meter.totals(),
        "load": load,
    }


def report(name: str, run: dict, contacts: int) -> None:
    job = run["job"]
    print(
        f"{name}: job #{job.pk} {job.status}, {contacts:,} contacts in {run['wall']:.2f} s wall "
        f"({contacts / run['wall']:,.0f} contacts/s), {run['written']:,} emails written "
        f"({run['pending']:,} pending); "
        f"{job.succeeded:,} scheduled, {job.skipped:,} without emails, {job.failed:,} failed"
    )
    print(
        f"  launch {run['launch'] * 1000:.0f} ms (a planner adds the items); batches: compute "
        f"{run['compute']:.2f} s + write {run['write']:.2f} s (summed over workers)"
    )
    cpu = run["cpu"]
    print(
        f"  CPU: workers {cpu['workers']:.1f} s, PostgreSQL {cpu['postgres']:.1f} s; "
        f"machine busy {cpu['machine']:.1f} s of {run['wall'] * (os.cpu_count() or 1):.1f}; "
        f"load average before {run['load']:.2f}"
    )


def compute_only(contacts, today: date) -> tuple[float, float]:
    """(seconds to read the contacts, seconds for the rules) in this process."""
    started = time.perf_counter()
    rows = list(contacts.values_list("state", "birth_date", "effective_date").iterator(10_000))
    read = time.perf_counter() - started
    started = time.perf_counter()
    position = 0
    for state, birth, effective in rows:
        data = rules.parse_contact(state, birth, effective, today)
        if rules.is_eligible(data):
            rules.compute_emails(data, today, position)
            position += 1
    return read, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-workers", action="store_true", help="use running workers")
    parser.add_argument("--concurrency", type=int, help="batches in flight (default: the kind's)")
    parser.add_argument("--today", type=date.fromisoformat, default=date(2025, 3, 1))
    parser.add_argument("--keep", action="store_true", help="keep the bench data afterwards")
    parser.add_argument("--fresh", action="store_true", help="re-create the bench database first")
    parser.add_argument(
        "--launch-only", action="store_true", help="time the launch alone (no workers), then cancel"
    )
    args = parser.parse_args()

    state = "freshly created" if args.fresh else "warm"
    print(f"database {connection.settings_dict['NAME']} ({state}), {os.cpu_count()} CPUs")
    started = time.perf_counter()
    remove_bench_data()
    create_contacts(args.contacts)
    print(f"created {args.contacts:,} contacts in {time.perf_counter() - started:.1f} s")
    contacts = Contact.objects.filter(organization__name__startswith="bench-")

    if Contact.objects.exclude(organization__name__startswith="bench-").exists():
        raise SystemExit(f"{BENCH_DB} holds other contacts; the runs cover every contact")
    if args.launch_only:
        launches = []
        for _ in range(5):
            begin = time.perf_counter()
            job = engine.launch("schedule_emails", {"today": args.today})
            launches.append(time.perf_counter() - begin)
            engine.cancel(job)
        print(
            f"launch over {args.contacts:,} contacts: "
            + ", ".join(f"{t * 1000:.0f} ms" for t in launches)
            + f" (status {job.status} at return; a planner adds the items)"
        )
        if not args.keep:
            remove_bench_data()
        return
    workers = None if args.no_workers else start_workers(args.workers)
    others = live_workers() - (0 if args.no_workers else args.workers)
    if others:
        print(f"warning: {others} other workers share this queue; figures include their help")
    try:
        first = timed_run(contacts, args.today, args.concurrency, workers)
        report("first run (insert)", first, args.contacts)
        second = timed_run(contacts, args.today, args.concurrency, workers)
        report("re-run (replace)", second, args.contacts)
    finally:
        if workers:
            workers.terminate()
            workers.wait(timeout=30)
    read, compute = compute_only(contacts, args.today)
    print(
        f"rules alone in one process: read {read:.2f} s, compute {compute:.2f} s "
        f"({args.contacts / compute:,.0f} contacts/s)"
    )
    worst = max(first["wall"], second["wall"])
    verdict = "within" if worst <= BUDGET_S * args.contacts / 100_000 else "OVER"
    print(f"{verdict} the budget of {BUDGET_S:.0f} s per 100,000 contacts (worst {worst:.2f} s)")
    if not args.keep:
        remove_bench_data()
        Job.objects.filter(pk__in=[first["job"].pk, second["job"].pk]).delete()


if __name__ == "__main__":
    main()
