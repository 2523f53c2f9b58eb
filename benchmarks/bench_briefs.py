"""Time a daily_briefs run for 1,000 users with real workers and a model answering in 300 ms.

    .venv/bin/python benchmarks/bench_briefs.py [--users 1000] [--latency 0.3] \
        [--concurrency 50] [--workers 2] [--fresh]

It runs in a database of its own (`batchboard_bench_briefs` on the local PostgreSQL, and
Redis database 8 unless REDIS_URL says otherwise), so nothing else skews it:
1. With --fresh, drop and create the database and migrate it; otherwise reuse it (created
   and migrated if missing) and remove earlier bench data.
2. Create 200 organizations of 50 contacts with emails around today (pending ones for the
   next 7 days, sent and failed ones yesterday), 3 failed jobs, and N staff users who own 2
   organizations each, may view contacts and shipments, and want a daily brief by email at
   the same time; then VACUUM ANALYZE, as autovacuum would.
3. Start the test OpenAI server (tests/openai_server.py) in this process, answering after
   `--latency` seconds, and `manage.py run_workers --workers W` pointed at it (limiters
   raised so they do not pace the run; mail to the console, into /dev/null).
4. Run the scheduler for that hour (`briefs.schedule`, timed apart), which launches one
   daily_briefs job at the given concurrency; time it from launch to its recorded finish.
5. Check every brief was built with a model summary and emailed, and print the wall time
   against the ideal N x latency / concurrency, the server's peak of requests in flight,
   the workers' CPU time, and the load average before and after.
6. For calibration on a shared machine, time a `sleep` job of the same shape (N items of
   `--latency`, same concurrency, same workers): the engine alone, without the briefs' work.

The budget: within 10 % of the ideal (1,000 x 0.3 s / 50 = 6 s, so at most 6.6 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
BENCH_DB = os.environ.get("BENCH_DATABASE", "batchboard_bench_briefs")
SERVER = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
os.environ["DATABASE_URL"] = f"{SERVER}/{BENCH_DB}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/8")
# The limiters must not be what paces the run, in this process and in the workers.
LIMITS = {"OPENAI_RPM": "1000000", "OPENAI_TPM": "1000000000", "SMTP_RPM": "1000000"}
os.environ.update(LIMITS)
os.environ.pop("EMAIL_HOST", None)  # the console mailer, into /dev/null


from benchdb import CpuMeter, live_workers, prepare_database, start_workers  # noqa: E402

if __name__ == "__main__":
    prepare_database(SERVER, BENCH_DB, fresh="--fresh" in sys.argv)

import django  # noqa: E402 (needs the environment above)

django.setup()

from django.contrib.auth.models import Permission, User  # noqa: E402
from django.db import connection  # noqa: E402

from project import engine  # noqa: E402
from project.models import Job, JobItem  # noqa: E402
from scheduler_app import briefs  # noqa: E402
from scheduler_app.models import (  # noqa: E402
    BriefPreference,
    Contact,
    DailyBrief,
    Organization,
    ScheduledEmail,
)
from tests.helpers import max_overlap  # noqa: E402
from tests.openai_server import OpenAIServer  # noqa: E402

ORGS = 200
CONTACTS_PER_ORG = 50
OWNED = 2  # organizations per user
AT = datetime(2026, 6, 10, 7, 0, tzinfo=UTC)  # the scheduler's hour; briefs at 07:00 UTC


def remove_bench_data() -> None:
    users = User.objects.filter(username__startswith="bench-")
    DailyBrief.objects.filter(user__in=users).delete()
    users.delete()
    orgs = Organization.objects.filter(name__startswith="bench-")
    ScheduledEmail.objects.filter(contact__organization__in=orgs).delete()
    Contact.objects.filter(organization__in=orgs).delete()
    orgs.delete()
    kinds = ["daily_briefs", "send_due_emails", "sleep"]
    JobItem.objects.filter(job__kind__in=kinds).delete()
    Job.objects.filter(kind__in=kinds).delete()


def create_world(users: int, now: datetime, email: bool = True) -> None:
    """Organizations with contacts and emails, failed jobs, and the users with preferences."""
    today = AT.date()
    orgs = Organization.objects.bulk_create(
        Organization(name=f"bench-{n:03d}") for n in range(ORGS)
    )
    contacts = Contact.objects.bulk_create(
        Contact(organization=org, external_id=str(n), email=f"c{n}@example.com", state="TX")
        for org in orgs
        for n in range(CONTACTS_PER_ORG)
    )
    emails = []
    yesterday = now - timedelta(days=1)
    for n, contact in enumerate(contacts):
        emails.append(
            ScheduledEmail(contact=contact, type="aep", send_date=today + timedelta(days=n % 7))
        )
        status = "failed" if n % 10 == 0 else "sent"
        emails.append(
            ScheduledEmail(
                contact=contact,
                type="birthday",
                send_date=today - timedelta(days=1),
                status=status,
                claimed_at=yesterday,
                sent_at=yesterday if status == "sent" else None,
            )
        )
    ScheduledEmail.objects.bulk_create(emails, batch_size=5000)
    for n in range(3):
        Job.objects.create(
            kind="send_due_emails",
            params={"organization": orgs[n].name},
            status="completed_with_errors",
            total=100,
            succeeded=90,
            failed=10,
            failure_counts={"PermanentError\x1f550 mailbox unavailable": 10},
        )
    granted = Permission.objects.filter(codename__in=["view_contact", "view_shipment"])
    people = User.objects.bulk_create(
        User(username=f"bench-{n:04d}", email=f"bench{n}@example.com", is_staff=True)
        for n in range(users)
    )
    User.user_permissions.through.objects.bulk_create(
        User.user_permissions.through(user_id=u.pk, permission_id=p.pk)
        for u in people
        for p in granted
    )
    Organization.owners.through.objects.bulk_create(
        Organization.owners.through(organization_id=orgs[(n + k) % ORGS].pk, user_id=u.pk)
        for n, u in enumerate(people)
        for k in range(OWNED)
    )
    BriefPreference.objects.bulk_create(
        BriefPreference(user=u, timezone="UTC", time_of_day=AT.time(), email_enabled=email)
        for u in people
    )
    # What autovacuum does on a production server (it is off on some development ones):
    # the rows earlier runs deleted would otherwise slow every plan that probes an index.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.3, help="model latency, seconds")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-email", action="store_true", help="briefs without their email")
    parser.add_argument("--keep", action="store_true", help="keep the bench data afterwards")
    parser.add_argument("--fresh", action="store_true", help="re-create the bench database first")
    args = parser.parse_args()

    print(f"database {connection.settings_dict['NAME']}, {os.cpu_count()} CPUs, load {load()}")
    started = time.perf_counter()
    remove_bench_data()
    create_world(args.users, AT, email=not args.no_email)
    print(
        f"created {args.users:,} users owning {OWNED} of {ORGS} organizations "
        f"({ORGS * CONTACTS_PER_ORG:,} contacts) in {time.perf_counter() - started:.1f} s"
    )
    answer = "Two organizations, 14 emails this week; 5 failed yesterday, worth a look."
    with OpenAIServer(latency=args.latency, answer=lambda body: answer) as server:
        env = {"OPENAI_API_KEY": "bench-key", "OPENAI_BASE_URL": server.url}
        workers = start_workers(args.workers, env)
        others = live_workers() - args.workers
        if others:
            print(f"warning: {others} other workers share this queue; figures include them")
        try:
            load_before = load()
            meter, own_before = CpuMeter(workers, BENCH_DB), time.process_time()
            began, launched_at = time.perf_counter(), time.monotonic()
            decisions, job = briefs.schedule(AT, concurrency=args.concurrency)
            scheduled = time.perf_counter() - began
            while not job.is_finished:
                time.sleep(0.05)
                meter.sample()
                job.refresh_from_db()
            wall = (job.finished_at - job.created_at).total_seconds()
            load_after = load()
            machine_cpu = meter.busy(wall)
            worker_cpu = meter.totals()["workers"]
            own_cpu = time.process_time() - own_before
            sleep = engine.launch(
                "sleep",
                {"items": args.users, "latency_ms": round(args.latency * 1000)},
                concurrency=args.concurrency,
            )
            while not sleep.is_finished:
                time.sleep(0.05)
                sleep.refresh_from_db()
            sleep_wall = (sleep.finished_at - sleep.created_at).total_seconds()
        finally:
            workers.terminate()
            workers.wait(timeout=60)
        spans = [(r.at, r.at + args.latency) for r in server.requests]
        peak = max_overlap(spans)
        first_call = min((r.at for r in server.requests), default=launched_at) - launched_at
        last_call = max((r.at for r in server.requests), default=launched_at) - launched_at
    ideal = args.users * args.latency / args.concurrency
    made = DailyBrief.objects.filter(user__username__startswith="bench-")
    built = made.filter(status="ready" if args.no_email else "sent", summary_source="llm").count()
    print(
        f"scheduler: {len(decisions):,} preferences decided, job #{job.pk} launched in "
        f"{scheduled:.2f} s"
    )
    print(
        f"job #{job.pk} {job.status}: {job.total:,} briefs in {wall:.2f} s wall "
        f"(ideal {ideal:.2f} s, {wall / ideal:.3f} x ideal, efficiency {ideal / wall:.3f}); "
        f"{built:,} {'built' if args.no_email else 'emailed'} with a model summary; "
        f"item p50 {job.p50_ms:.0f} ms, "
        f"p95 {job.p95_ms:.0f} ms; {len(server.requests):,} model calls, peak {peak} in flight, "
        f"the first {first_call:.2f} s and the last {last_call:.2f} s after launch"
    )
    print(
        f"CPU: workers {worker_cpu:.2f} s ({worker_cpu / job.total * 1000:.1f} ms per brief), "
        f"this process (the model server) {own_cpu:.2f} s, over {wall:.2f} s on "
        f"{os.cpu_count()} cores; {machine_cpu}"
    )
    print(
        f"calibration: the same shape as a sleep job (the engine alone) took {sleep_wall:.2f} s "
        f"({sleep_wall / ideal:.3f} x ideal, efficiency {ideal / sleep_wall:.3f})"
    )
    print(f"load average (1/5/15 min): {load_before} before, {load_after} after")
    verdict = "within" if wall <= ideal * 1.10 else "OVER"
    print(f"{verdict} 10 % of the ideal ({ideal * 1.1:.2f} s)")
    if not args.keep:
        remove_bench_data()


if __name__ == "__main__":
    main()
