"""Forms of the dashboard: launching a job of any kind, and filtering the job list."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS

from project.kinds import JobKind, all_kinds
from project.models import Job

# The largest value Job.stop_after_consecutive (a PostgreSQL integer) holds.
MAX_STOP_AFTER = 2**31 - 1


class LaunchForm(forms.Form):
    """How to run one kind of job: the kind's own parameters plus concurrency and error policy.

    Both forms are prefixed with the kind's name, so the home page can hold one launch form
    per kind without clashing field names or ids. `params` is the kind's own form; the
    view validates both and hands them to `engine.launch`.
    """

    stop_after_consecutive = forms.IntegerField(
        label="Stop after consecutive failures",
        min_value=1,
        max_value=MAX_STOP_AFTER,
        required=False,
        help_text="Stop the job after this many failures in a row. Empty: never.",
    )
    stop_failure_ratio = forms.FloatField(
        label="Stop at failure ratio",
        max_value=1,
        required=False,
        help_text="Stop once this share of settled items (at least 50) has failed, e.g. 0.2.",
    )

    def __init__(self, kind: JobKind, data=None):
        super().__init__(data, prefix=f"{kind.name}-run")
        self.kind = kind
        self.params = kind.form_class(data, prefix=kind.name)
        # Built here, not at import time: the bounds come from settings.
        self.fields = {
            "concurrency": forms.IntegerField(
                min_value=1,
                max_value=settings.BATCH_MAX_CONCURRENCY,
                initial=kind.default_concurrency or settings.BATCH_DEFAULT_CONCURRENCY,
                help_text="Items in flight at once, across all workers.",
            ),
            **self.fields,
        }

    def clean_stop_failure_ratio(self) -> float | None:
        ratio = self.cleaned_data["stop_failure_ratio"]
        if ratio is not None and ratio <= 0:
            raise forms.ValidationError("Ensure this value is greater than 0.")
        return ratio

    def is_valid(self) -> bool:
        # Not short-circuited: both forms collect their errors for the page.
        return all([super().is_valid(), self.params.is_valid()])

    def params_data(self) -> dict:
        """The kind's parameters as submitted, without the prefix.

        `engine.launch` parses them with the kind's form again, as it parses the command
        line's strings, so the job stores exactly what `run_job` would for the same input.
        """
        return {name: self.params[name].data for name in self.params.fields}

    def launch_kwargs(self) -> dict:
        """Keyword arguments of `engine.launch` beyond the kind's name and parameters."""
        return {
            "concurrency": self.cleaned_data["concurrency"],
            "stop_after_consecutive": self.cleaned_data["stop_after_consecutive"],
            "stop_failure_ratio": self.cleaned_data["stop_failure_ratio"],
        }

    def add_engine_errors(self, messages: list[str]) -> None:
        """Show `engine.launch`'s "field: problem" messages on the fields they name."""
        for message in messages:
            name, _, problem = message.partition(": ")
            if problem and name in self.params.fields:
                self.params.add_error(name, problem)
            elif problem and name in self.fields:
                self.add_error(name, problem)
            elif problem and name == NON_FIELD_ERRORS:
                self.add_error(None, problem)
            else:
                self.add_error(None, message)


class JobFilterForm(forms.Form):
    """The job list's filters; an invalid choice is ignored rather than reported."""

    kind = forms.ChoiceField(required=False)
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *Job.Status.choices])

    def __init__(self, data=None):
        super().__init__(data)
        self.fields["kind"].choices = [("", "any kind")] + [
            (kind.name, kind.label) for kind in all_kinds()
        ]

    def filter(self, jobs):
        if not self.is_valid():
            return jobs
        if kind := self.cleaned_data["kind"]:
            jobs = jobs.filter(kind=kind)
        if status := self.cleaned_data["status"]:
            jobs = jobs.filter(status=status)
        return jobs
