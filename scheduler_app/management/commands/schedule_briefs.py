"""Queue the daily briefs due in the coming hour; run every hour (README, "Daily briefs").

    python manage.py schedule_briefs [--now 2026-03-08T07:00:00Z] [--dry-run] [--json]

--json prints one JSON array, one object per active preference:
{"user", "decision" (send, reengagement, skip), "reason", "next_run_at" (UTC, ISO 8601)}.
Without --now the run covers the hour that starts at the top of the current hour.

Exit status: 0, or 2 for a bad --now.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from scheduler_app import briefs


def parse_now(text: str) -> datetime:
    """--now as an aware datetime; a time without an offset is UTC."""
    try:
        now = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--now takes an ISO 8601 time, not {text!r}", returncode=2) from None
    return now if now.tzinfo else now.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Queue the briefs whose time falls in the coming hour (run it every hour)."

    def add_arguments(self, parser):
        parser.add_argument("--now", metavar="ISO8601", help="the run's time (default: this hour)")
        parser.add_argument("--dry-run", action="store_true", help="decide, queue nothing")
        parser.add_argument("--json", action="store_true", help="print the decisions as JSON")
        parser.add_argument("--concurrency", type=int, help="briefs built at once")

    def handle(self, *args, **options):
        if options["now"]:
            now = parse_now(options["now"])
        else:
            now = timezone.now().replace(minute=0, second=0, microsecond=0)
        decisions, job = briefs.schedule(
            now, dry_run=options["dry_run"], concurrency=options["concurrency"]
        )
        if options["json"]:
            self.stdout.write(json.dumps([d.as_dict() for d in decisions]))
        else:
            for d in decisions:
                if d.reason != briefs.NOT_DUE:
                    self.stdout.write(f"{d.username}: {d.decision} ({d.reason})")
        tally = Counter(d.decision for d in decisions)
        line = (
            f"{len(decisions)} active preferences at {now.isoformat()}: "
            f"{tally[briefs.SEND]} briefs, {tally[briefs.REENGAGEMENT]} re-engagement, "
            f"{tally[briefs.SKIP]} skipped"
        )
        if job is not None:
            line += f"; job #{job.pk} builds them"
        elif options["dry_run"]:
            line += " (dry run: nothing queued)"
        (self.stderr if options["json"] else self.stdout).write(line)
