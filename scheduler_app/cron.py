"""Recurring jobs for RQ's cron scheduler: `python manage.py rqcron scheduler_app.cron`.

django-rq's `rqcron` loads this module and enqueues each registered function on its
schedule; any worker runs it. `run_workers --cron` (and `make run`) starts `rqcron` with
this module next to the workers.
"""

from __future__ import annotations

from django.conf import settings
from rq import cron

from scheduler_app.briefs import schedule_hourly

# Daily briefs: at the top of every hour, queue the briefs due in that hour. Cron fields
# match the scheduler's local time; any time zone works, since each run covers the hour
# that starts when it runs. A second rqcron enqueues it twice, which queues nothing twice.
cron.register(schedule_hourly, queue_name=settings.BATCH_QUEUE, cron="0 * * * *")
