"""Print a gather_recipients job's merged recipients, one address per line.

    python manage.py export_recipients 42 > recipients.txt

Exit status 1 when the job is still running or failed (every organization failed: there is
no list to give); organizations that failed in a job that did not are named on stderr.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from project.models import Job
from scheduler_app import recipients


class Command(BaseCommand):
    help = "Print a gather_recipients job's merged recipients, one address per line."

    def add_arguments(self, parser):
        parser.add_argument("job_id", type=int, help="the gather_recipients job")

    def handle(self, *args, **options):
        job = Job.objects.filter(pk=options["job_id"], kind=recipients.KIND).first()
        if job is None:
            raise CommandError(f"there is no gather_recipients job #{options['job_id']}")
        if not job.is_finished:
            raise CommandError(f"job #{job.pk} is still {job.status}; export it once it ends")
        if job.status == Job.Status.FAILED:
            raise CommandError(f"job #{job.pk} failed: {job.error or job.summary}")
        for row in recipients.organization_rows(job):
            if row.error:
                self.stderr.write(f"{row.name}: {row.error} (its recipients are missing)")
        for recipient in recipients.merge(job):
            self.stdout.write(recipient.address)
