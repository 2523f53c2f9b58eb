"""Import contacts from a CSV file; bad rows are reported and skipped, never stop the import.

    python manage.py import_contacts contacts.csv --organization "Acme Health" \
        --errors-csv bad-rows.csv

Exit status: 0 when every row was imported, 1 when any row was bad (the good ones are saved),
2 when the file is missing or cannot be imported at all (nothing saved).
"""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from scheduler_app.importer import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    HeaderError,
    ImportReport,
    import_contacts,
    open_csv,
    save_report,
    terminal_safe,
)

SHOWN_ERRORS = 50
PROGRESS_EVERY = 10_000  # rows


class Command(BaseCommand):
    help = (
        f"Import contacts from CSV (columns {', '.join(REQUIRED_COLUMNS)}; optional "
        f"{', '.join(OPTIONAL_COLUMNS)}), updating those already there by (organization, id)."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="the CSV file (UTF-8, comma-separated, with a header)")
        parser.add_argument(
            "--organization",
            metavar="NAME",
            help="import every row into this organization (created if new); it wins over the "
            "file's organization column, which is otherwise required",
        )
        parser.add_argument(
            "--errors-csv", metavar="PATH", help="write the bad rows report (CSV) to this file"
        )
        parser.add_argument(
            "--batch-size", type=int, default=2000, help="contacts saved per transaction"
        )

    def handle(self, *args, file: str, organization: str | None, errors_csv: str | None, **opts):
        if opts["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1", returncode=2)
        verbose = opts["verbosity"] >= 1
        shown = 0

        def progress(report: ImportReport) -> None:
            nonlocal shown
            if verbose and report.rows // PROGRESS_EVERY > shown // PROGRESS_EVERY:
                sys.stderr.write(f"  {report.rows:,} rows read\n")
                shown = report.rows

        try:
            with open_csv(file) as stream:
                report = import_contacts(
                    stream,
                    organization=organization,
                    batch_size=opts["batch_size"],
                    progress=progress,
                )
        except OSError as exc:
            raise CommandError(f"{file}: {exc.strerror or exc}", returncode=2) from None
        except HeaderError as exc:
            raise CommandError(f"{file}: {exc}; nothing imported", returncode=2) from None
        save_report(report, filename=Path(file).name, organization=organization or "")

        if errors_csv:
            Path(errors_csv).write_text(report.errors_csv(), encoding="utf-8", newline="")
        if verbose:
            for error in report.errors[:SHOWN_ERRORS]:
                self.stdout.write(terminal_safe(str(error)))
            more = len(report.errors) + report.unlisted_errors - SHOWN_ERRORS
            if more > 0:
                where = errors_csv or "--errors-csv FILE"
                self.stdout.write(f"... and {more:,} more; full report: {where}")
        imported = plural(report.created + report.updated, "row")
        self.stdout.write(
            f"{'⚠️' if report.failed else '✅'} {imported} imported "
            f"({report.created:,} created, {report.updated:,} updated), "
            f"{plural(report.failed, 'bad row')}"
        )
        if report.failed:
            sys.exit(1)


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
