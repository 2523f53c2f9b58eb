"""Job kinds that misbehave on purpose, for the engine's fault tests.

Registered in the test process by conftest and in worker processes through
BATCH_KIND_MODULES=tests.kinds (see conftest.worker_env); production never loads them.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import uuid

from django import forms

from project.kinds import JobKind, Outcome, Page, PermanentError, TransientError, register
from project.models import Job


class FaultForm(forms.Form):
    items = forms.IntegerField(min_value=0, initial=10)
    latency_ms = forms.IntegerField(min_value=0, required=False)
    # Keys (comma-separated) of the items that misbehave.
    bad = forms.CharField(required=False)
    # For planners: raise after this many pages; pages of this many items.
    fail_after_pages = forms.IntegerField(required=False)
    page_size = forms.IntegerField(required=False)
    die_after_pages = forms.IntegerField(required=False)


def bad_keys(job: Job) -> set[str]:
    return set(filter(None, job.params.get("bad", "").split(",")))


def numbered(job: Job):
    return (str(i) for i in range(job.params["items"]))


def nap(job: Job) -> None:
    time.sleep(job.params.get("latency_ms", 0) / 1000)


@register
class HangKind(JobKind):
    """Bad items never return (for their 30 s); the deadline is 1 s."""

    name = "test_hang"
    label = "Test: hang"
    form_class = FaultForm
    timeout = 1.0
    item_keys = staticmethod(numbered)

    def run_item(self, job, item):
        if item.key in bad_keys(job):
            time.sleep(30)
        nap(job)
        return Outcome(summary="ok")


@register
class BadSummaryKind(JobKind):
    """Bad items return a summary that cannot be stored as text."""

    name = "test_bad_summary"
    label = "Test: bad summary"
    form_class = FaultForm
    item_keys = staticmethod(numbered)

    def run_item(self, job, item):
        if item.key in bad_keys(job):
            return Outcome(summary=b"\x00 bytes, not text")
        return Outcome(summary="ok")


@register
class BadBatchKind(JobKind):
    """run_batch returns a list, not a mapping."""

    name = "test_bad_batch"
    label = "Test: bad batch"
    form_class = FaultForm
    batch_size = 5
    item_keys = staticmethod(numbered)

    def run_batch(self, job, items):
        return [Outcome() for _ in items]


@register
class FlakyBatchKind(JobKind):
    """Each batch's first attempt fails transiently; bad items fail transiently every time."""

    name = "test_flaky_batch"
    label = "Test: flaky batch"
    form_class = FaultForm
    batch_size = 4
    item_keys = staticmethod(numbered)

    def run_batch(self, job, items):
        if items[0].attempt == 1:
            raise TransientError("database went away")
        return {
            item.key: TransientError("still down") if item.key in bad_keys(job) else Outcome()
            for item in items
        }


@register
class KillKind(JobKind):
    """Bad items kill the worker process running them."""

    name = "test_kill"
    label = "Test: kill"
    form_class = FaultForm
    item_keys = staticmethod(numbered)

    def run_item(self, job, item):
        if item.key in bad_keys(job):
            os.kill(os.getpid(), signal.SIGKILL)
        nap(job)
        return Outcome(summary="ok")


@register
class ThreadResourceKind(JobKind):
    """Each item reports the per-thread resource it got and the thread that made it."""

    name = "test_thread_resource"
    label = "Test: thread resource"
    form_class = FaultForm
    item_keys = staticmethod(numbered)

    def setup_thread(self, job):
        return f"{threading.get_ident()}:{uuid.uuid4().hex[:8]}"

    def run_item(self, job, item):
        nap(job)
        assert item.resource.startswith(f"{threading.get_ident()}:")
        return Outcome(summary=item.resource)


@register
class AnnouncedKind(JobKind):
    """Notes in Redis the items a runner announces as claimed (`claimed`); an item fails
    unless it was announced before it ran. With `bad=claimed`, `claimed` then raises."""

    name = "test_announced"
    label = "Test: announced"
    form_class = FaultForm
    item_keys = staticmethod(numbered)

    def claimed(self, job: Job, items) -> None:
        from project.connections import get_redis

        get_redis().sadd(f"test:announced:{job.pk}", *[item.key for item in items])
        if "claimed" in bad_keys(job):
            raise RuntimeError("claimed failed on purpose")

    def run_item(self, job: Job, item) -> Outcome:
        from project.connections import get_redis

        if not get_redis().sismember(f"test:announced:{job.pk}", item.key):
            raise PermanentError(f"item {item.key} ran unannounced")
        nap(job)
        return Outcome(summary="announced")


@register
class RecordedKind(JobKind):
    """Each item's outcome carries its key as its record; `record` notes in Redis the keys
    it stored and, of those, the items it found recorded already (in its transaction), and
    counts its calls. With `bad=record`, `record` then raises."""

    name = "test_recorded"
    label = "Test: recorded"
    form_class = FaultForm
    item_keys = staticmethod(numbered)

    def run_item(self, job: Job, item) -> Outcome:
        nap(job)
        return Outcome(summary="recorded", record=item.key)

    def record(self, job: Job, records: list) -> None:
        from project.connections import get_redis
        from project.models import JobItem

        done = JobItem.objects.filter(job=job, key__in=records, status="succeeded")
        redis = get_redis()
        redis.sadd(f"test:recorded:{job.pk}", *records)
        redis.sadd(f"test:recorded-done:{job.pk}", *done.values_list("key", flat=True))
        redis.incr(f"test:record-calls:{job.pk}")
        if "record" in bad_keys(job):
            raise RuntimeError("record failed on purpose")


@register
class WarmKind(JobKind):
    """Says in Redis which worker processes warmed it up; with WARM_UP_FAILS set, its
    warm_up raises (the worker must start all the same). An item says how many objects
    its worker left out of garbage collection."""

    name = "test_warm"
    label = "Test: warm up"
    form_class = FaultForm

    def warm_up(self) -> None:
        from project.connections import get_redis

        if os.environ.get("WARM_UP_FAILS"):
            raise RuntimeError("warm_up failed on purpose")
        get_redis().sadd("test:warmed", os.getpid())

    def item_keys(self, job: Job):
        return numbered(job)

    def run_item(self, job: Job, item) -> Outcome:
        return Outcome("succeeded", f"{gc.get_freeze_count()} objects frozen")


@register
class PlannedKind(JobKind):
    """A planner of `items` items in pages, with data; can raise or die after some pages."""

    name = "test_planned"
    label = "Test: planned"
    form_class = FaultForm

    def plan(self, job, cursor):
        size = job.params.get("page_size") or 100
        start = int(cursor or 0)
        page = 0
        while start < job.params["items"]:
            if page == job.params.get("fail_after_pages"):
                raise PermanentError("the planner's source is gone")
            if page == job.params.get("die_after_pages") and not cursor:
                os.kill(os.getpid(), signal.SIGKILL)
            end = min(start + size, job.params["items"])
            yield Page([(str(i), {"square": i * i}) for i in range(start, end)], str(end))
            nap(job)
            start, page = end, page + 1

    def run_item(self, job, item):
        assert item.data == {"square": int(item.key) ** 2}
        return Outcome(summary=f"{item.key}^2={item.data['square']}", tallies={"squares": 1})
