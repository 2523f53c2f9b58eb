"""Launch a job of any kind; with --wait, follow it with a progress bar to the end.

    python manage.py run_job sleep --param items=2000 --param latency_ms=200 \
        --concurrency 50 --wait

With --detach it prints the new job as JSON (the keys of --json) and exits 0 at once.

Exit status: 0 when every item succeeded, 1 when any failed or the job failed or was
cancelled, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from project import engine
from project.forms import MAX_STOP_AFTER
from project.kinds import all_kinds
from project.models import Job


def parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--param takes key=value, not {pair!r}", returncode=2)
        params[key.strip()] = value
    return params


def failure_count(text: str) -> int:
    """The argparse type of --stop-after-consecutive: a whole number from 1 to MAX_STOP_AFTER."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text[:30]!r}") from None
    if not 1 <= value <= MAX_STOP_AFTER:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_STOP_AFTER}, not {value}")
    return value


class Command(BaseCommand):
    help = "Launch a job (sleep, schedule_emails, ...) and optionally wait for it."

    def add_arguments(self, parser):
        kinds = ", ".join(kind.name for kind in all_kinds())
        parser.add_argument("kind", help=f"the job kind: {kinds}")
        parser.add_argument(
            "--param", action="append", default=[], metavar="KEY=VALUE", help="a job parameter"
        )
        parser.add_argument("--concurrency", type=int, help="items in flight at most")
        parser.add_argument("--stop-after-consecutive", type=failure_count, metavar="N")
        parser.add_argument("--stop-failure-ratio", type=float, metavar="R")
        parser.add_argument("--wait", action="store_true", help="follow the job to its end")
        parser.add_argument("--json", action="store_true", help="print the final state as JSON")
        parser.add_argument(
            "--detach",
            action="store_true",
            help="print the job as JSON right after launch and exit 0",
        )

    def handle(self, *args, **options):
        params = parse_params(options["param"])
        try:
            job = engine.launch(
                options["kind"],
                params,
                concurrency=options["concurrency"],
                source=Job.Source.COMMAND,
                stop_after_consecutive=options["stop_after_consecutive"],
                stop_failure_ratio=options["stop_failure_ratio"],
            )
        except KeyError as exc:
            raise CommandError(exc.args[0], returncode=2) from None
        except ValidationError as exc:
            raise CommandError("bad parameters: " + "; ".join(exc.messages), returncode=2) from None
        if options["detach"]:
            self.stdout.write(json.dumps(job.as_dict()))
            return
        out = sys.stderr if options["json"] else self.stdout
        if job.status == Job.Status.PLANNING:
            out.write(
                f"job #{job.pk} {job.kind}: planning its items, concurrency {job.concurrency}\n"
            )
        else:
            out.write(
                f"job #{job.pk} {job.kind}: {job.total:,} items, concurrency {job.concurrency}\n"
            )
        if options["wait"] or options["json"]:
            job = self.follow(job, out)
            out.write(job.summary + "\n")
            if job.error:
                out.write(job.error + "\n")
        if options["json"]:
            self.stdout.write(json.dumps(job.as_dict()))
        if (options["wait"] or options["json"]) and job.status != Job.Status.SUCCEEDED:
            sys.exit(1)

    def follow(self, job: Job, out) -> Job:
        bar = tqdm(total=job.total, unit="item", file=out, dynamic_ncols=True)
        try:
            while True:
                job.refresh_from_db()
                bar.total = job.total
                bar.n = job.settled
                bar.set_postfix(ok=job.succeeded, failed=job.failed, refresh=False)
                bar.refresh()
                if job.is_finished:
                    return job
                time.sleep(0.25)
        except KeyboardInterrupt:
            out.write(
                f"\nstopped following; job #{job.pk} goes on (see {job.get_absolute_url()})\n"
            )
            sys.exit(130)
        finally:
            bar.close()
