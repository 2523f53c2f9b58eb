"""A runner's heartbeat: its own thread, so a slow flush or claim never lets leases lapse.

Every second it says the runner is alive (its slots' `alive` key); every third of a lease
it extends the leases of the items the runner holds that would lapse before the renewal
after next, on the database's clock; and every BATCH_SWEEP_SECONDS it runs the recovery
sweep (guarded, so one runs at a time anywhere).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models.functions import Now

from project.engine import store
from project.engine.slots import alive_seconds
from project.models import Job

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, job_id: int, owner: str, pool, held: Callable[[], list[int]]):
        super().__init__(name=f"job{job_id}-heartbeat", daemon=True)
        self.job_id = job_id
        self.owner = owner
        self.pool = pool
        self.held = held  # ids of the items the runner holds now
        self.lease = settings.BATCH_LEASE_SECONDS
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

    def run(self) -> None:
        from project.engine import recovery  # recovery enqueues runners: imported late

        period = self.lease / 3
        next_renew = time.monotonic() + period
        next_sweep = time.monotonic() + settings.BATCH_SWEEP_SECONDS
        try:
            while not self.stopped.wait(min(1.0, alive_seconds() / 3)):
                try:
                    self.pool.slots.touch_alive()
                except Exception as exc:
                    log.warning("job %s: cannot say runner is alive (%s)", self.job_id, exc)
                now = time.monotonic()
                if now >= next_renew:
                    try:
                        store.renew(self.job_id, self.owner, self.lease, self.held(), 2 * period)
                        Job.objects.filter(pk=self.job_id).update(heartbeat_at=Now())
                        next_renew = now + period
                    except Exception as exc:
                        close_old_connections()
                        log.warning("job %s: cannot renew leases (%s)", self.job_id, exc)
                        next_renew = now + 1
                if now >= next_sweep:
                    recovery.sweep_if_due()
                    next_sweep = now + settings.BATCH_SWEEP_SECONDS
        finally:
            connections.close_all()
