"""Job kinds: what a job does with each of its items.

Each app defines its kinds in `<app>/jobs.py` and registers them with `@register`. A kind
names its parameters with a Django form, which parses the dashboard's POST and the command
line's `--param key=value` strings the same way.

The contract with the engine is at-least-once: an item runs again when its worker died
before its result was recorded (the lease lapsed), so a kind makes each item's side effects
idempotent, or claims them first in the database as `send_due_emails` does with each email.
The engine itself counts every item exactly once.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.conf import settings

if TYPE_CHECKING:
    from project.models import Job

_KINDS: dict[str, JobKind] = {}


class PermanentError(Exception):
    """An item failure that retrying cannot fix (bad data, 4xx): fail at once."""


class TransientError(Exception):
    """A failure that may pass (timeout, 5xx): retry with backoff."""


class RateLimited(TransientError):
    """The service said 429: pause the limiter named `limiter` (default: the kind's).

    `retry_after` is the service's Retry-After in seconds, if it gave a number.
    """

    def __init__(
        self,
        message: str = "rate limited",
        retry_after: float | None = None,
        limiter: str | None = None,
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.limiter = limiter


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


def is_rate_limited(exc: BaseException) -> bool:
    return isinstance(exc, RateLimited) or getattr(exc, "status_code", None) == 429


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After a 429 carried, if numeric (our RateLimited or an SDK error's response)."""
    if isinstance(exc, RateLimited):
        return exc.retry_after
    if getattr(exc, "status_code", None) != 429:
        return None
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        return float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


def pause_seconds(exc: BaseException) -> float | None:
    """How long a 429 pauses its limiter: its Retry-After, capped, or a default; else None."""
    if not is_rate_limited(exc):
        return None
    wait = retry_after(exc)
    if wait is None or wait != wait or wait < 0:  # absent, NaN or negative
        wait = settings.BATCH_DEFAULT_RETRY_AFTER
    return min(wait, settings.BATCH_MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class Item:
    """One claimed item as a kind sees it.

    `attempt` counts from 1; `data` is what the planner stored with the item; `deadline`
    is the time.monotonic() past which the engine fails the item as TimeoutError (a kind
    sets its own I/O timeouts below it); `resource` is what the kind's `setup_thread`
    made for the thread running it.
    """

    id: int
    key: str
    attempt: int = 1
    data: Any = None
    deadline: float | None = None
    resource: Any = None


@dataclass
class Page:
    """One page of a planner: items (keys, or (key, data) pairs) and where to resume after."""

    items: list
    cursor: str = ""


@dataclass
class Outcome:
    """What one item produced: `succeeded` or `skipped`, a short summary, optional tallies,
    and optionally what the kind stores with the item's result (`record`, see JobKind.record)."""

    status: str = "succeeded"
    summary: str = ""
    tallies: dict[str, int] = field(default_factory=dict)
    record: Any = None


class JobKind:
    """Base class of job kinds.

    Item kinds implement `run_item` and run items concurrently in threads (I/O-bound work).
    Batch kinds set `batch_size` and implement `run_batch` (database-bound work where one
    query per item would be the bottleneck); there, the concurrency limit counts batches.

    Items come from `item_keys` at launch (small, cheap lists), or from `plan`, which runs
    as its own RQ task after launch, page by page, while the first items already run.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str] = ""
    form_class: ClassVar[type[forms.Form]] = forms.Form
    limiter: ClassVar[str | None] = None  # the rate limiter a 429 pauses by default
    batch_size: ClassVar[int] = 0
    default_concurrency: ClassVar[int | None] = None
    timeout: ClassVar[float | None] = None  # seconds an item may take; BATCH_ITEM_TIMEOUT
    # The permission that shows a user this kind's jobs and items (their results may show
    # more than job figures), and whether the dashboard's launch form offers the kind.
    view_permission: ClassVar[str] = "project.view_job"
    launch_from_dashboard: ClassVar[bool] = True

    def limiter_for(self, job: Job) -> str | None:
        """The rate limiter a 429 pauses when the error does not name one."""
        return self.limiter

    def item_keys(self, job: Job) -> Iterable[str | tuple[str, Any]]:
        """The items to create at launch: keys, or (key, data) pairs."""
        return []

    def plan(self, job: Job, cursor: str) -> Iterator[Page]:
        """Yield the job's items page by page, resuming after `cursor` ("" at the start).

        Each page's items are stored with its cursor in one transaction, so a planner that
        dies resumes after the last page stored; keys already in the job are ignored, so a
        page may repeat. Kinds that plan override this.
        """
        raise TypeError(f"job kind {self.name!r} has no planner")

    def has_planner(self) -> bool:
        return type(self).plan is not JobKind.plan

    def warm_up(self) -> None:
        """Build what the kind's items share in a process (a client, say) when a worker
        starts, so the first items of its first job do not all wait for it."""

    def claimed(self, job: Job, items: list[Item]) -> None:
        """Called by a runner with the items it has just claimed, before any of them starts.

        A kind may start loading what those items will need (on threads of its own: the
        runner waits for this call), so each item finds it ready. Items may still never run
        here (the runner stops and gives them back), and a retried item runs again without
        a new call. Errors are logged and ignored.
        """

    def record(self, job: Job, records: list[Any]) -> None:
        """Store what items' outcomes carry in `record`, in the transaction that records their
        results: both are stored, or neither.

        A write that says how an item ended (a brief's email marked sent, say) then needs
        neither its own round trip nor the item's slot: a runner records the results of
        many items at once, a fraction of a second after they end. Called with the records
        of every result written at once. If it raises, the error is logged and the results
        are recorded without the records.
        """

    def setup_thread(self, job: Job) -> Any:
        """Make a per-thread resource (an HTTP client, say); items get it as item.resource."""
        return None

    def teardown_thread(self, job: Job, resource: Any) -> None:
        """Close what setup_thread made, when the thread ends."""

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

    def final_tallies(self, job: Job) -> dict:
        """The finished job's tallies: its items' sums, plus what a kind derives from them."""
        return job.tallies

    def results_url(self, job: Job) -> str:
        """A page of the kind's own with the job's results, linked from the job page; or ""."""
        return ""

    def summary_line(self, job: Job) -> str:
        """The finished job's one-line summary (job page, `run_job`); kinds may word their own."""
        return job.summary_line()

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
