"""Print shipments found by the inbox scanner, as CSV or as one JSON array.

    python manage.py export_shipments --format json
    python manage.py export_shipments --job 12 --format csv > shipments.csv

Each row (object) has tracking_number, carrier, po_number, supplier, shipped_date,
confidence, checksum_valid and conversation (the source's own id); CSV writes booleans
as true/false. Exit status 2 for an unknown job.
"""

from __future__ import annotations

import csv
import json

from django.core.management.base import BaseCommand, CommandError

from project.models import Job
from scanner.models import EXPORT_FIELDS, Shipment, csv_row


class Command(BaseCommand):
    help = "Print shipments found by the inbox scanner as CSV or JSON."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--job", type=int, help="Only shipments this scan job added.")
        parser.add_argument("--format", choices=["csv", "json"], default="csv")

    def handle(self, *args, job: int | None, format: str, **options) -> None:
        shipments = Shipment.objects.select_related("conversation").order_by("first_seen", "id")
        if job is not None:
            if not Job.objects.filter(pk=job).exists():
                raise CommandError(f"there is no job #{job}", returncode=2)
            shipments = shipments.filter(job_id=job)
        rows = (s.as_row() for s in shipments.iterator(chunk_size=2000))
        if format == "json":
            self.stdout.write(json.dumps(list(rows), ensure_ascii=False))
            return
        writer = csv.DictWriter(self.stdout, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_row(row) for row in rows)
