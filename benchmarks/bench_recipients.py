"""Time gather_recipients (a dry run) over 50 organizations and 100,000 contacts, real workers.

    .venv/bin/python benchmarks/bench_recipients.py [--contacts 100000] [--organizations 50]
        [--workers 2] [--fresh]

It runs in a database of its own (`batchboard_bench_recipients` on the local PostgreSQL, and
Redis database 3 unless REDIS_URL says otherwise), so nothing else skews it:
1. With --fresh, drop and create the database and migrate it; otherwise reuse it (created
   and migrated if missing) and remove earlier bench data.
2. Create the organizations "bench-0".. and N contacts spread over them: 70 % subscribed to
   `calendar` (opt-in), 5 % of those also unsubscribed from every topic, 1 % with an invalid
   address, 5 % with an address another organization has too (in other letter case).
3. Start `manage.py run_workers --workers W` on that database.
4. Launch gather_recipients over the topic twice, as `run_job` does, and time each from
   launch to the recorded finish: the first run reads cold tables, the second warm ones.
5. Remove the bench data (unless --keep) and stop the workers.

The budget: 50 organizations with 100,000 contacts in under 5 s.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
BENCH_DB = os.environ.get("BENCH_DATABASE", "batchboard_bench_recipients")
SERVER = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
os.environ["DATABASE_URL"] = f"{SERVER}/{BENCH_DB}"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")


from benchdb import live_workers, prepare_database, start_workers  # noqa: E402

if __name__ == "__main__":
    prepare_database(SERVER, BENCH_DB, fresh="--fresh" in sys.argv)

import django  # noqa: E402 (needs the environment above)

django.setup()

from django.db import connection  # noqa: E402

from project import engine  # noqa: E402
from project.models import Job  # noqa: E402
from scheduler_app import recipients  # noqa: E402
from scheduler_app.models import Contact, Organization, Subscription, Topic  # noqa: E402

BUDGET_S = 5.0
TOPIC = "calendar"


def remove_bench_data() -> None:
    """Delete the bench-* organizations with their contacts and subscriptions."""
    orgs = list(Organization.objects.filter(name__startswith="bench-").values_list("id", flat=True))
    if not orgs:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {Subscription._meta.db_table} WHERE contact_id IN "
            f"(SELECT id FROM {Contact._meta.db_table} WHERE organization_id = ANY(%s))",
            [orgs],
        )
        cursor.execute(
            f"DELETE FROM {Contact._meta.db_table} WHERE organization_id = ANY(%s)", [orgs]
        )
    Job.objects.filter(kind=recipients.KIND).delete()
    Organization.objects.filter(id__in=orgs).delete()


def create_data(count: int, organizations: int) -> int:
    """The contacts and their subscriptions (random.Random(7)); returns how many receive."""
    rng = random.Random(7)
    topic = Topic.objects.get(name=TOPIC)
    orgs = [Organization.objects.create(name=f"bench-{n}") for n in range(organizations)]
    contacts = []
    for n in range(count):
        email = f"person{n}@example.com"
        roll = rng.random()
        if roll < 0.01:
            email = f"person {n} at example.com"
        elif roll < 0.06 and n:
            email = f"PERSON{rng.randrange(n)}@Example.com"  # another organization's, probably
        contacts.append(
            Contact(organization=orgs[n % organizations], external_id=str(n), email=email)
        )
    Contact.objects.bulk_create(contacts, batch_size=10_000)
    subscriptions = []
    for contact in Contact.objects.filter(organization__in=orgs).only("id").iterator(10_000):
        if rng.random() < 0.7:
            subscriptions.append(Subscription(contact=contact, topic=topic, status="subscribed"))
            if rng.random() < 0.05:
                subscriptions.append(Subscription(contact=contact, status="unsubscribed"))
    Subscription.objects.bulk_create(subscriptions, batch_size=10_000)
    return Contact.objects.filter(organization__in=orgs).receiving(topic).count()


def timed_run(concurrency: int | None) -> tuple[Job, float]:
    """Launch a dry run over every bench organization as `run_job` does, and wait."""
    started = time.perf_counter()
    job = engine.launch(recipients.KIND, {"topic": TOPIC}, concurrency=concurrency)
    while not job.is_finished:
        time.sleep(0.02)
        job.refresh_from_db()
    return job, time.perf_counter() - started


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--organizations", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-workers", action="store_true", help="use running workers")
    parser.add_argument("--concurrency", type=int, help="organizations in flight (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the bench data afterwards")
    parser.add_argument("--fresh", action="store_true", help="re-create the bench database first")
    args = parser.parse_args()

    state = "freshly created" if args.fresh else "warm"
    print(f"database {connection.settings_dict['NAME']} ({state}), {os.cpu_count()} CPUs")
    if Organization.objects.exclude(name__startswith="bench-").filter(archived=False).exists():
        raise SystemExit(f"{BENCH_DB} holds other organizations; the runs cover every one")
    started = time.perf_counter()
    remove_bench_data()
    receiving = create_data(args.contacts, args.organizations)
    print(
        f"created {args.contacts:,} contacts in {args.organizations} organizations "
        f"({receiving:,} receive {TOPIC}) in {time.perf_counter() - started:.1f} s"
    )
    workers = None if args.no_workers else start_workers(args.workers)
    others = live_workers() - (0 if args.no_workers else args.workers)
    if others:
        print(f"warning: {others} other workers share this queue; figures include their help")
    walls = []
    try:
        for name in ("first run (cold tables)", "second run (warm)"):
            print(f"  before: {load()}")
            job, wall = timed_run(args.concurrency)
            walls.append(wall)
            print(f"{name}: job #{job.pk} {job.status} in {wall:.2f} s wall; {job.summary}")
            print(
                f"  organization items p50 {job.p50_ms or 0:.0f} ms, p95 {job.p95_ms or 0:.0f} ms; "
                f"invalid dropped {job.tallies.get('invalid', 0):,}"
            )
    finally:
        if workers:
            workers.terminate()
            workers.wait(timeout=30)
    print(f"after: {load()}")
    scaled = BUDGET_S * args.contacts / 100_000
    verdict = "within" if max(walls) < scaled else "OVER"
    print(f"{verdict} the budget of {scaled:.1f} s (worst {max(walls):.2f} s)")
    if not args.keep:
        remove_bench_data()


if __name__ == "__main__":
    main()
