"""Job kinds: what a job does with each of its items.

Each app defines its kinds in `<app>/jobs.py` and registers them with `@register`. A kind
names its parameters with a Django form, which parses the dashboard's POST and the command
line's `--param key=value` strings the same way.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from django import forms

if TYPE_CHECKING:
    from project.models import Job

_KINDS: dict[str, JobKind] = {}


class PermanentError(Exception):
    """An item failure that retrying cannot fix (bad data, 4xx): fail at once."""


class TransientError(Exception):
    """A failure that may pass (timeout, 5xx): retry with backoff."""


class RateLimited(TransientError):
    """The service said 429; `retry_after` seconds pause the whole limiter."""

    def __init__(self, message: str = "rate limited", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# Exception class names (from openai, httpx, smtplib, psycopg...) that mean "try again".
TRANSIENT_NAMES = {
    "APIConnectionError",
    "APITimeoutError",
    "InternalServerError",
    "RateLimitError",
    "ServiceUnavailableError",
    "TimeoutException",
    "TransportError",
    "ConnectError",
    "ReadTimeout",
    "SMTPServerDisconnected",
    "SMTPConnectError",
    "OperationalError",
}


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying."""
    if isinstance(exc, TransientError | TimeoutError | ConnectionError | socket.timeout):
        return True
    if isinstance(exc, PermanentError):
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return any(cls.__name__ in TRANSIENT_NAMES for cls in type(exc).__mro__)


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After a 429 carried, if any (our RateLimited or an SDK's error with .response)."""
    if isinstance(exc, RateLimited):
        return exc.retry_after
    if getattr(exc, "status_code", None) != 429:
        return None
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        return float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Item:
    """One claimed item as a kind sees it; `attempt` counts from 1."""

    id: int
    key: str
    attempt: int = 1


@dataclass
class Outcome:
    """What one item produced: `succeeded` or `skipped`, a short summary, optional tallies."""

    status: str = "succeeded"
    summary: str = ""
    tallies: dict[str, int] = field(default_factory=dict)


class JobKind:
    """Base class of job kinds.

    Item kinds implement `run_item` and run items concurrently in threads (I/O-bound work).
    Batch kinds set `batch_size` and implement `run_batch` (database-bound work where one
    query per item would be the bottleneck); there, the concurrency limit counts batches.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str] = ""
    form_class: ClassVar[type[forms.Form]] = forms.Form
    limiter: ClassVar[str | None] = None  # rate limiter paused on a 429
    batch_size: ClassVar[int] = 0
    default_concurrency: ClassVar[int | None] = None

    def limiter_for(self, job: Job) -> str | None:
        """The rate limiter a 429 pauses (by default the kind's `limiter`)."""
        return self.limiter

    def item_keys(self, job: Job) -> Iterable[str]:
        """The items to create at launch."""
        return []

    def run_item(self, job: Job, item: Item) -> Outcome | str | None:
        """Do one item; return its outcome (a str is a summary), raise to fail it."""
        # Item kinds override this; reaching it means the kind is misconfigured.
        raise TypeError(f"job kind {self.name!r} runs items one by one but defines no run_item")

    def run_batch(self, job: Job, items: list[Item]) -> dict[str, Outcome | Exception]:
        """Do several items; map each key to its outcome or the exception that failed it."""
        # Batch kinds (batch_size > 0) override this.
        raise TypeError(f"job kind {self.name!r} sets batch_size but defines no run_batch")

    def on_finished(self, job: Job) -> None:
        """Called once when the job is finalized."""

    def parse_params(self, data: dict) -> dict:
        """Validate parameters; raise forms.ValidationError with every problem."""
        form = self.form_class(data)
        if not form.is_valid():
            raise forms.ValidationError(
                [f"{name}: {' '.join(errs)}" for name, errs in form.errors.items()]
            )
        return {k: _jsonable(v) for k, v in form.cleaned_data.items() if v not in (None, "")}


def _jsonable(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "pk"):
        return value.pk
    return value


def register(cls: type[JobKind]) -> type[JobKind]:
    _KINDS[cls.name] = cls()
    return cls


def get_kind(name: str) -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown job kind {name!r}; known: {', '.join(sorted(_KINDS))}") from None


def all_kinds() -> list[JobKind]:
    return [_KINDS[name] for name in sorted(_KINDS)]
