"""Show the emails the rules would schedule for the contacts of a CSV file; no database.

    python manage.py preview_schedule --csv contacts.csv --today 2025-03-01 --format json

Reads the import's CSV format. JSON: an array with one object per data row, in file order,
{"id", "emails": [{"type", "date"}, ...]} sorted by (date, type), or {"id", "error"} for a row
the rules cannot use. AEP positions count the eligible rows in file order.

Exit status: 0 (a bad row is part of the output), 2 for a missing file, a bad --today (or
one outside the run dates the rules take), or a header the import would refuse.
"""

from __future__ import annotations

import json
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from scheduler_app import rules
from scheduler_app.importer import HeaderError, open_csv, preview_csv, terminal_safe


def parse_today(text: str) -> date:
    """The --today date; only YYYY-MM-DD, though fromisoformat() also takes 20250301 and more."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or day.isoformat() != text:
        raise CommandError(f"--today takes a date as YYYY-MM-DD, not {text!r}", returncode=2)
    try:
        return rules.check_run_date(day)
    except rules.RuleError as err:
        raise CommandError(f"--today: {err}", returncode=2) from None


class Command(BaseCommand):
    help = "Preview the email schedule of a contacts CSV for a given day, without a database."
    # System checks are skipped so nothing here can reach for the database or Redis.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--csv", required=True, metavar="FILE", help="contacts CSV file")
        parser.add_argument("--today", required=True, metavar="YYYY-MM-DD", help="the run date")
        parser.add_argument(
            "--format",
            choices=["json", "table"],
            default="json",
            help="json (default): one JSON array; table: one line per row, for people",
        )

    def handle(self, *args, **options):
        path, today = options["csv"], parse_today(options["today"])
        try:
            with open_csv(path) as stream:
                results = preview_csv(stream, today)
                if options["format"] == "json":
                    self.stdout.write(json.dumps(list(results)))
                else:
                    for result in results:
                        self.stdout.write(table_line(result))
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror or exc}", returncode=2) from None
        except HeaderError as exc:
            raise CommandError(f"{path}: {exc}", returncode=2) from None


def table_line(result: dict) -> str:
    """One row's result for people: its id, then its emails, "no emails", or the error."""
    if "error" in result:
        detail = f"ERROR {result['error']}"
    elif result["emails"]:
        detail = "  ".join(f"{email['date']} {email['type']}" for email in result["emails"])
    else:
        detail = "no emails"
    # Ids and messages come from the file: nothing in them may drive the terminal.
    return terminal_safe(f"{result['id']:<12} {detail}")
