"""The synthetic `sleep` job kind, for tests, benchmarks and demos."""

from __future__ import annotations

import random
import time

from django import forms
from django.conf import settings

from project.kinds import (
    JobKind,
    Outcome,
    PermanentError,
    RateLimited,
    TransientError,
    register,
)
from project.ratelimit import get_limiter


class SleepForm(forms.Form):
    items = forms.IntegerField(min_value=1, max_value=1_000_000, initial=200)
    latency_ms = forms.IntegerField(min_value=0, max_value=60_000, initial=200, required=False)
    fail_rate = forms.FloatField(min_value=0, max_value=1, initial=0, required=False)
    failure = forms.ChoiceField(
        choices=[
            ("permanent", "permanent"),
            ("transient", "transient"),
            ("rate_limited", "rate limited (429, Retry-After 1 s)"),
        ],
        initial="permanent",
        required=False,
        help_text="Failures are permanent (fail at once), transient or 429s (both retried).",
    )
    limiter = forms.CharField(
        required=False,
        help_text="A test rate limiter each item goes through (optional; production "
        "limiters such as openai or smtp cannot be named here).",
    )
    seed = forms.IntegerField(required=False, help_text="Makes failures reproducible.")

    def clean_limiter(self):
        # A synthetic job must not pause or drain a limiter real work depends on.
        name = self.cleaned_data.get("limiter")
        if name:
            try:
                get_limiter(name)
            except KeyError as exc:
                raise forms.ValidationError(str(exc.args[0])) from None
            if not settings.RATE_LIMITS[name].get("test"):
                test_names = [n for n, c in settings.RATE_LIMITS.items() if c.get("test")]
                raise forms.ValidationError(
                    f"{name!r} is a production limiter; the sleep kind may only use test "
                    f"limiters: {', '.join(test_names) or 'none configured'}"
                )
        return name


@register
class SleepKind(JobKind):
    name = "sleep"
    label = "Sleep (synthetic)"
    description = "Each item waits latency_ms and fails with probability fail_rate."
    form_class = SleepForm

    def limiter_for(self, job):
        return job.params.get("limiter") or None

    def item_keys(self, job):
        return (str(i) for i in range(job.params["items"]))

    def run_item(self, job, item):
        params = job.params
        if params.get("limiter"):
            get_limiter(params["limiter"]).acquire()
        time.sleep(params.get("latency_ms", 0) / 1000)
        fail_rate = params.get("fail_rate", 0)
        # With a seed, whether an attempt fails depends only on (seed, key, attempt).
        # Each attempt draws again, so transient failures can pass on a retry.
        seeded = "seed" in params
        rng = random.Random(f"{params['seed']}:{item.key}:{item.attempt}") if seeded else random
        if fail_rate and rng.random() < fail_rate:
            if params.get("failure") == "transient":
                raise TransientError(f"simulated transient failure of item {item.key}")
            if params.get("failure") == "rate_limited":
                raise RateLimited("simulated 429 Too Many Requests", retry_after=1.0)
            raise PermanentError("simulated permanent failure")
        return Outcome(summary=f"slept {params.get('latency_ms', 0)} ms")
