"""Time `manage.py import_contacts` end to end: python benchmarks/bench_import.py [--rows N].

The issue wants 100,000 rows in well under a minute with memory that stays flat; compare the
peak RSS of --rows 100000 and --rows 1000000. The file is synthetic but varied (every state,
10 organizations through the organization column, some dates missing, both date formats,
about 0.5% bad rows) and generated from a fixed seed, so two runs measure the same work.

It imports twice into the configured database (the dev database `batchboard` by default): the
first run creates every contact, the second updates them all. Its organizations are named
"bench-..." and are deleted, with their contacts and import reports, at the start and the end.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("SECRET_KEY", "bench-import")

import django  # noqa: E402 (needs the environment above)

django.setup()

from django.db import connection  # noqa: E402

from scheduler_app.models import (  # noqa: E402
    Contact,
    ContactImport,
    Organization,
    ScheduledEmail,
)
from scheduler_app.rules import STATES  # noqa: E402

PREFIX = "bench-"
HEADER = [
    "id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "state",
    "zip",
    "birth_date",
    "effective_date",
    "carrier",
    "plan_type",
    "organization",
]
FIRST_NAMES = ["Ann", "Bob", "Carmen", "Dmitri", "Eve", "Fatima", "Gus", "Hiro", "Ines", "José"]
LAST_NAMES = ["Lee", "Smith", "Garcia", "Nguyen", "O'Brien", "Kowalski", "Okafor", "Rossi"]
CARRIERS = ["Aetna", "Humana", "UnitedHealthcare", "Cigna", "", "Wellcare"]
PLANS = ["Medigap G", "Medigap N", "MAPD", "PDP", ""]
# How a bad row goes wrong: (column, bad value).
BAD_VALUES = [
    ("state", "ZZ"),
    ("birth_date", "13/45/1990"),
    ("effective_date", "2020-02-30"),
    ("email", "not-an-email"),
    ("birth_date", "2999-01-01"),
    ("id", ""),
]


def write_csv(path: Path, rows: int) -> int:
    """Write rows varied contacts from random.Random(42); return how many are bad."""
    rng = random.Random(42)
    states = sorted(STATES)
    bad = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for n in range(rows):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            birth = date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 30))
            effective = date(1995, 1, 1) + timedelta(days=rng.randrange(365 * 30))
            us_dates = rng.random() < 0.3
            row = {
                "id": f"C{n:08d}",
                "first_name": first,
                "last_name": last,
                "email": f"{last.lower().replace("'", '')}.{n}@example.com",
                "phone": f"555-{rng.randrange(10_000):04d}",
                "state": rng.choice(states),
                "zip": f"{rng.randrange(100_000):05d}",
                "birth_date": "" if rng.random() < 0.05 else _format(birth, us_dates),
                "effective_date": "" if rng.random() < 0.1 else _format(effective, us_dates),
                "carrier": rng.choice(CARRIERS),
                "plan_type": rng.choice(PLANS),
                "organization": f"{PREFIX}{n % 10:02d}",
            }
            if rng.random() < 0.005:
                column, value = rng.choice(BAD_VALUES)
                row[column] = value
                bad += 1
            writer.writerow(row.values())
    return bad


def _format(day: date, us: bool) -> str:
    return f"{day.month}/{day.day}/{day.year}" if us else day.isoformat()


def run_import(path: Path) -> tuple[float, resource.struct_rusage, str]:
    """Run the command in a subprocess: (seconds, its resource usage, its last line of output)."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "import_contacts", str(path)],
            cwd=ROOT,
            stdout=out,
        )
        # wait4() gives this child's own peak RSS; getrusage(RUSAGE_CHILDREN) would give the
        # largest of every child so far, hiding the second run behind the first.
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().splitlines()
    if proc.returncode not in (0, 1):  # 1: some bad rows, which the file has on purpose
        sys.exit(f"import_contacts failed with exit status {proc.returncode}")
    return elapsed, usage, lines[-1] if lines else ""


def delete_bench_data() -> None:
    """Delete the bench organizations, their contacts and imports.

    The contacts go with one SQL DELETE: Django's cascade would load every one of them first.
    """
    contacts = Contact.objects.filter(organization__name__startswith=PREFIX)
    ScheduledEmail.objects.filter(contact__in=contacts).delete()
    sql, params = contacts.values("id").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f'DELETE FROM "{Contact._meta.db_table}" WHERE id IN ({sql})', params)
    Organization.objects.filter(name__startswith=PREFIX).delete()
    ContactImport.objects.filter(filename__startswith=PREFIX).delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    delete_bench_data()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{PREFIX}{args.rows}.csv"
        started = time.perf_counter()
        bad = write_csv(path, args.rows)
        size = path.stat().st_size / 1e6
        print(f"{args.rows:,} rows ({bad:,} bad), {size:.1f} MB, written in ", end="")
        print(
            f"{time.perf_counter() - started:.1f} s; database {connection.settings_dict['NAME']}",
            flush=True,
        )
        try:
            for label in ("first import (creates)", "second import (updates)"):
                elapsed, usage, tally = run_import(path)
                cpu = usage.ru_utime + usage.ru_stime
                print(
                    f"{label}: {elapsed:.1f} s ({cpu:.1f} s CPU in the command), "
                    f"{args.rows / elapsed:,.0f} rows/s, peak RSS {usage.ru_maxrss / 1024:.0f} MiB"
                    f" | {tally}",
                    flush=True,
                )
        finally:
            delete_bench_data()


if __name__ == "__main__":
    main()
