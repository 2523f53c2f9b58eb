"""Daily briefs: what each organization owner gets every day (or week), and when.

A brief has one section per organization the user owns (emails scheduled for the next 7
days by type, emails sent and failed yesterday, that organization's failed jobs), the
inbox's shipments of the last 24 h when the scanner is installed, and the other failed jobs
of the last 24 h; then a summary written by the OpenAI model, or from a template when
there is no key or the model fails.

How briefs get made:
1. Every hour `manage.py schedule_briefs` (`schedule`) takes the active preferences whose
   next run (`next_run_at`) falls in the coming hour, drops users who already have a
   pending or running brief item or a brief for that day (one query), and applies the
   engagement backoff (`backoff`) to the rest.
2. In one transaction it inserts their DailyBrief rows ON CONFLICT DO NOTHING on
   (user, brief_date) and launches one `daily_briefs` job over the users whose row it
   inserted: a second scheduler racing the first finds those rows taken and queues nobody
   twice.
3. Each item (`DailyBriefsKind` in jobs.py) builds its brief's sections concurrently (a
   failing section keeps its error, the others stay), writes the summary through the
   `openai` limiter, and emails the brief, claimed first so it never goes twice.

An item spends most of its time waiting for the model, so a job runs at a high concurrency.
Its queries run on a few database threads per worker process (`DatabaseThreads`): a brief's
sections are built on several of them at once, and item threads, which never touch the
database themselves, hold no connection while they wait on the model.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import IntegrityError, close_old_connections, connection, connections, transaction
from django.db.models import CharField, DateField, Max, Q, Value
from django.db.models.functions import Cast
from django.template.loader import get_template, render_to_string
from django.utils import timezone

from project import engine, llm, mail
from project.engine.live import failure_groups
from project.kinds import all_kinds, is_rate_limited, pause_seconds
from project.models import ACTIVE_STATUSES, Job, JobItem
from project.ratelimit import get_limiter
from scheduler_app import rules
from scheduler_app.models import BriefPreference, Contact, DailyBrief, ScheduledEmail

log = logging.getLogger(__name__)

KIND = "daily_briefs"
WINDOW = timedelta(hours=1)  # a scheduler run covers [now, now + 1 h)
UPCOMING_DAYS = 7
TOP_ERRORS = 3
SHIPMENTS_LISTED = 10
JOBS_LISTED = 20
RUN_JOBS_READ = 200

SEND, REENGAGEMENT, SKIP = "send", "reengagement", "skip"
ALREADY_QUEUED, NOT_DUE, INVALID = "already_queued", "not_due", "invalid_preference"


# -- When ------------------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo | None:
    """The IANA time zone, or None for a name zoneinfo does not know."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return None


def parse_time(value: time | str) -> time | None:
    """A wall time from a time or "HH:MM[:SS]"; None when it is not one."""
    if isinstance(value, time):
        return value.replace(tzinfo=None)
    try:
        return time.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def next_run_at(
    now: datetime, timezone: str, time_of_day: time | str, frequency: str, day_of_week: int
) -> datetime | None:
    """The UTC time of a preference's next brief at or after `now`; None if it is invalid.

    Daily: today's wall time in the zone if it is still ahead (equal to now counts), else
    tomorrow's. Weekly: the next `day_of_week` (0 = Monday) at that time, today included
    if the time is still ahead. Wall times resolve as zoneinfo does with fold=0: one that
    does not exist (spring forward) runs at the offset before the change, one that occurs
    twice (fall back) at its first occurrence. A naive `now` is taken as UTC.
    """
    tz, wall = zone(timezone), parse_time(time_of_day)
    if tz is None or wall is None:
        return None
    if frequency == BriefPreference.Frequency.DAILY:
        step = 1
    elif frequency == BriefPreference.Frequency.WEEKLY and day_of_week in range(7):
        step = 7
    else:
        return None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    day = now.astimezone(tz).date()
    if step == 7:
        day += timedelta(days=(day_of_week - day.weekday()) % 7)
    while True:
        candidate = datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)
        if candidate >= now:
            return candidate
        day += timedelta(days=step)


def backoff(days_since_login: int | None, days_since_brief: int | None) -> tuple[bool, bool, str]:
    """Whether to send a brief, whether it is a re-engagement one, and why.

    L (days since the last login, None: never) and B (days since the last brief, None:
    never) are whole days. L <= 2 or never logged in: a normal brief (`active`). Day 3:
    nothing (`cooling_off`). From day 4 on, at the milestones 4, 10, 31, 62, 93... (31 k
    from 31 on), m being the last one reached: a re-engagement brief (`reengagement_day_m`)
    unless a brief went out since day m, i.e. B <= L - m (`waiting`). So a scheduler run
    that was missed on a milestone's day sends it on the next run instead of skipping it.
    """
    login = days_since_login
    if login is None or login <= 2:
        return True, False, "active"
    if login < 4:
        return False, False, "cooling_off"
    milestone = 31 * (login // 31) if login >= 31 else (10 if login >= 10 else 4)
    if days_since_brief is None or days_since_brief > login - milestone:
        return True, True, f"reengagement_day_{milestone}"
    return False, False, "waiting"


# -- Scheduling ------------------------------------------------------------------------------


@dataclass
class Decision:
    """What a scheduler run does for one user; `as_dict` is a row of `--dry-run --json`."""

    user_id: int
    username: str
    decision: str
    reason: str
    next_run_at: datetime | None = None
    brief_date: date | None = None

    def as_dict(self) -> dict:
        return {
            "user": self.username,
            "decision": self.decision,
            "reason": self.reason,
            "next_run_at": self.next_run_at.isoformat() if self.next_run_at else None,
        }

    def skip(self, reason: str) -> None:
        self.decision, self.reason = SKIP, reason


def days_between(earlier: date | None, later: date) -> int | None:
    return None if earlier is None else (later - earlier).days


def plan(now: datetime) -> list[Decision]:
    """Decide, for every active preference, whether its user gets a brief in [now, now + 1 h).

    Days since the last login and since the last brief are counted in calendar days of the
    user's zone up to the brief's day, so the seconds a run takes never move a milestone.
    Users who already have a brief item waiting or running, or a brief for that day, are
    found with one query for all of them.
    """
    preferences = (
        BriefPreference.objects.filter(active=True, user__is_active=True)
        .select_related("user")
        .annotate(last_brief=Max("user__daily_briefs__brief_date"))
        .order_by("user_id")
    )
    decisions, due = [], []
    for preference in preferences:
        user = preference.user
        run = next_run_at(
            now,
            preference.timezone,
            preference.time_of_day,
            preference.frequency,
            preference.day_of_week,
        )
        decision = Decision(user.pk, user.get_username(), SKIP, NOT_DUE, run)
        decisions.append(decision)
        if run is None:
            log.warning(
                "briefs: skipping %s: invalid preference (timezone %r, time %r, %s, day %r)",
                decision.username,
                preference.timezone,
                preference.time_of_day,
                preference.frequency,
                preference.day_of_week,
            )
            decision.reason = INVALID
            continue
        if run >= now + WINDOW:
            continue
        tz = zone(preference.timezone)
        decision.brief_date = run.astimezone(tz).date()
        last_login = user.last_login.astimezone(tz).date() if user.last_login else None
        due.append((decision, last_login, preference.last_brief))
    queued = already_queued({d.user_id: d.brief_date for d, _, _ in due})
    use_backoff = settings.BRIEF_BACKOFF
    for decision, last_login, last_brief in due:
        if decision.user_id in queued:
            decision.reason = ALREADY_QUEUED
            continue
        if use_backoff:
            send, reengage, reason = backoff(
                days_between(last_login, decision.brief_date),
                days_between(last_brief, decision.brief_date),
            )
        else:
            send, reengage, reason = True, False, "active"
        if send:
            decision.decision = REENGAGEMENT if reengage else SEND
        decision.reason = reason
    return decisions


def already_queued(wanted: dict[int, date]) -> set[int]:
    """The users among `wanted` (user id -> brief day) with a brief on its way: one query.

    A `daily_briefs` item of theirs is pending or running, or their brief for that day
    exists (made, or being made, by an earlier or concurrent run).
    """
    if not wanted:
        return set()
    items = (
        JobItem.objects.filter(
            job__kind=KIND,
            job__status__in=ACTIVE_STATUSES,  # the jobs' partial index; finished jobs hold none
            status__in=[JobItem.Status.PENDING, JobItem.Status.RUNNING],
            key__in=[str(user_id) for user_id in wanted],
        )
        .order_by()
        .values_list("key", Value(None, output_field=DateField()))
    )
    briefs = (
        DailyBrief.objects.filter(user_id__in=wanted, brief_date__gte=min(wanted.values()))
        .annotate(user_key=Cast("user_id", CharField()))
        .order_by()
        .values_list("user_key", "brief_date")
    )
    # An item row has no day; a brief row's day must be the one wanted.
    rows = items.union(briefs, all=True).order_by()
    return {int(key) for key, day in rows if day is None or wanted[int(key)] == day}


INSERT_SQL = """
INSERT INTO {table} (user_id, brief_date, status, sections, summary, summary_source,
                     is_reengagement, reason, created_at, error)
SELECT u, d, 'pending', '[]', '', '', r, w, %s, ''
FROM unnest(%s::bigint[], %s::date[], %s::boolean[], %s::text[]) AS b(u, d, r, w)
ON CONFLICT (user_id, brief_date) DO NOTHING
RETURNING id, user_id
"""


def create_briefs(decisions: list[Decision]) -> dict[int, int]:
    """Insert a pending brief per decision unless one exists; map user id -> new brief id.

    Only briefs this call inserted come back: a concurrent run's rows (committed, or
    waited for) are left alone. One INSERT ... ON CONFLICT DO NOTHING on PostgreSQL;
    elsewhere (SQLite for local runs) one savepoint per brief.
    """
    if not decisions:
        return {}
    now = timezone.now()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                INSERT_SQL.format(table=DailyBrief._meta.db_table),
                [
                    now,
                    [d.user_id for d in decisions],
                    [d.brief_date for d in decisions],
                    [d.decision == REENGAGEMENT for d in decisions],
                    [d.reason for d in decisions],
                ],
            )
            return {user_id: brief_id for brief_id, user_id in cursor.fetchall()}
    created = {}
    for d in decisions:
        try:
            with transaction.atomic():
                brief = DailyBrief.objects.create(
                    user_id=d.user_id,
                    brief_date=d.brief_date,
                    is_reengagement=d.decision == REENGAGEMENT,
                    reason=d.reason,
                    created_at=now,
                )
        except IntegrityError:
            continue
        created[d.user_id] = brief.pk
    return created


def queue_briefs(decisions: list[Decision], *, concurrency: int | None = None) -> Job | None:
    """Create the briefs of the decisions to send and launch one `daily_briefs` job for them.

    Decisions whose brief another run created meanwhile become `skip` / `already_queued`.
    Returns the job, or None when there was nothing to queue.
    """
    wanted = [d for d in decisions if d.decision != SKIP]
    if not wanted:
        return None
    with transaction.atomic():
        created = create_briefs(wanted)
        for decision in wanted:
            if decision.user_id not in created:
                decision.skip(ALREADY_QUEUED)
        if not created:
            return None
        job = engine.launch(
            KIND,
            {},
            concurrency=concurrency,
            source=Job.Source.SCHEDULE,
            keys=[(str(user_id), {"brief": brief_id}) for user_id, brief_id in created.items()],
        )
        DailyBrief.objects.filter(pk__in=created.values()).update(job=job)
    return job


def schedule(
    now: datetime, *, dry_run: bool = False, concurrency: int | None = None
) -> tuple[list[Decision], Job | None]:
    """One scheduler run: decide for every active preference, then queue the briefs."""
    decisions = plan(now)
    job = None if dry_run else queue_briefs(decisions, concurrency=concurrency)
    return decisions, job


def schedule_hourly() -> int | None:
    """The hourly run (rq cron, scheduler_app/cron.py): the hour that starts now.

    `now` is the top of the current hour, so a run that starts a little late still covers
    the whole hour, and consecutive runs cover [h, h + 1) one after the other.
    """
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    decisions, job = schedule(now)
    queued = sum(1 for d in decisions if d.decision != SKIP)
    log.info("briefs: %s queued for %s (job %s)", queued, now.isoformat(), job and job.pk)
    return job.pk if job else None


def launch_keys(params: dict) -> list[tuple[str, dict]]:
    """Items of a `daily_briefs` job launched by hand: the named users, or every active one.

    Each gets a normal brief for `brief_date` (default: today in the user's zone), unless
    they have one for that day already.
    """
    preferences = BriefPreference.objects.select_related("user").order_by("user_id")
    if params.get("users"):
        preferences = preferences.filter(user__username__in=params["users"].split(","))
    else:
        preferences = preferences.filter(active=True, user__is_active=True)
    now = timezone.now()
    decisions = []
    for preference in preferences:
        tz = zone(preference.timezone) or UTC
        day = params.get("brief_date") or now.astimezone(tz).date().isoformat()
        user = preference.user
        decisions.append(
            Decision(user.pk, user.get_username(), SEND, "launched", None, date.fromisoformat(day))
        )
    created = create_briefs(decisions)
    return [(str(user_id), {"brief": brief_id}) for user_id, brief_id in created.items()]


# -- Database threads ------------------------------------------------------------------------


class DatabaseThreads:
    """BRIEF_DB_THREADS threads per process that run the briefs' queries.

    A brief's sections are built on several at once. Each thread keeps its own database
    connection (checked before each task, like a request's), so a process holds
    BRIEF_DB_THREADS connections for the briefs whatever the job's concurrency. `close`
    ends the threads (tests; a worker's leave ends them too, as daemons).
    """

    def __init__(self, size: int):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self.work, name=f"brief-db-{n}", daemon=True)
            for n in range(max(1, size))
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        self.tasks.put((future, fn, args))
        return future

    def run(self, fn: Callable, *args, deadline: float | None = None) -> Any:
        """Run fn(*args) on a database thread and return its result (or raise its error)."""
        return self.submit(fn, *args).result(timeout=seconds_left(deadline))

    def work(self) -> None:
        try:
            while (task := self.tasks.get()) is not None:
                future, fn, args = task
                if not future.set_running_or_notify_cancel():
                    continue
                close_old_connections()  # one the database closed meanwhile is replaced
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            connections.close_all()

    def close(self) -> None:
        for _ in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join(timeout=10)


_threads: DatabaseThreads | None = None
_threads_lock = threading.Lock()


def database_threads() -> DatabaseThreads:
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = DatabaseThreads(settings.BRIEF_DB_THREADS)
        return _threads


def close_database_threads() -> None:
    global _threads
    with _threads_lock:
        threads, _threads = _threads, None
    if threads is not None:
        threads.close()


def seconds_left(deadline: float | None) -> float | None:
    """Seconds until a time.monotonic() deadline (an item's), or None without one."""
    return None if deadline is None else max(0.0, deadline - monotonic())


# -- Building a brief ------------------------------------------------------------------------


@dataclass
class Context:
    """What building one brief needs, loaded in one go on a database thread."""

    brief_id: int
    status: str
    user_id: int
    username: str
    first_name: str
    email: str
    email_enabled: bool
    frequency: str
    timezone: str
    brief_date: date
    is_reengagement: bool
    reason: str
    days_since_login: int | None
    organizations: list[tuple[int, str]]
    job_kinds: list[str]  # kinds whose jobs the user may see, as the dashboard decides
    shipments: bool = False  # whether the user may see the inbox's shipments
    run_id: int = 0  # the daily_briefs job building it
    built_by: int | None = None  # the daily_briefs job that built it, once built
    summary_source: str = ""
    built: dict = field(default_factory=dict)  # sections and summary, once built

    @property
    def name(self) -> str:
        return " ".join(self.first_name.split()) or self.username

    def day_bounds(self) -> tuple[datetime, datetime]:
        """The start of yesterday and of the brief's day, in the user's zone."""
        tz = zone(self.timezone) or UTC
        start = datetime.combine(self.brief_date, time(), tzinfo=tz)
        return datetime.combine(self.brief_date - timedelta(days=1), time(), tzinfo=tz), start


# A brief, its user, the user's preference, owned organizations and permissions ("app.codename",
# their own and their groups'), in one statement: each brief starts with it, and the ORM's
# three queries cost more CPU to build than to run. Table names come from the models.
CONTEXT_SQL = """
SELECT b.id, b.status, b.brief_date, b.is_reengagement, b.reason, b.job_id,
       b.built_at IS NOT NULL, b.summary_source, b.sections, b.summary,
       u.id, u.username, u.first_name, u.email, u.last_login, u.is_active, u.is_superuser,
       p.timezone, p.email_enabled, p.frequency,
       ARRAY(SELECT o.id FROM {organization} AS o JOIN {owners} AS w ON w.organization_id = o.id
             WHERE w.user_id = u.id ORDER BY o.name, o.id),
       ARRAY(SELECT o.name FROM {organization} AS o JOIN {owners} AS w ON w.organization_id = o.id
             WHERE w.user_id = u.id ORDER BY o.name, o.id),
       ARRAY(SELECT DISTINCT t.app_label || '.' || m.codename
             FROM {permission} AS m JOIN {content_type} AS t ON t.id = m.content_type_id
             WHERE m.id IN (SELECT permission_id FROM {user_permissions} WHERE user_id = u.id)
                OR m.id IN (SELECT gp.permission_id FROM {group_permissions} AS gp
                            JOIN {user_groups} AS ug ON ug.group_id = gp.group_id
                            WHERE ug.user_id = u.id))
FROM {brief} AS b
JOIN {user} AS u ON u.id = b.user_id
LEFT JOIN {preference} AS p ON p.user_id = u.id
WHERE b.id = ANY(%s)
"""


@functools.cache
def context_sql() -> str:
    from django.contrib.auth.models import Group, User
    from django.contrib.contenttypes.models import ContentType

    from scheduler_app.models import Organization

    return CONTEXT_SQL.format(
        brief=DailyBrief._meta.db_table,
        user=User._meta.db_table,
        preference=BriefPreference._meta.db_table,
        organization=Organization._meta.db_table,
        owners=Organization.owners.through._meta.db_table,
        permission=Permission._meta.db_table,
        content_type=ContentType._meta.db_table,
        user_permissions=User.user_permissions.through._meta.db_table,
        user_groups=User.groups.through._meta.db_table,
        group_permissions=Group.permissions.through._meta.db_table,
    )


def context_rows(brief_ids: list[int]) -> dict[int, tuple]:
    """CONTEXT_SQL's rows for these briefs (sections decoded), by brief id; gone ones miss."""
    if connection.vendor != "postgresql":  # SQLite (local runs) has no ARRAY()
        return {row[0]: row for row in map(context_row_orm, brief_ids) if row is not None}
    with connection.cursor() as cursor:
        cursor.execute(context_sql(), [list(brief_ids)])
        rows = cursor.fetchall()
    sections = DailyBrief._meta.get_field("sections")
    return {
        row[0]: (*row[:8], sections.from_db_value(row[8], None, connection), *row[9:])
        for row in rows
    }


def context_row_orm(brief_id: int) -> tuple | None:
    """context_rows' row for one brief through the ORM, for databases other than PostgreSQL."""
    brief = DailyBrief.objects.select_related("user__brief_preference").filter(pk=brief_id).first()
    if brief is None:
        return None
    user = brief.user
    preference = getattr(user, "brief_preference", None)
    owned = list(user.owned_organizations.order_by("name", "id").values_list("id", "name"))
    granted = Permission.objects.filter(Q(user=user) | Q(group__user=user)).values_list(
        "content_type__app_label", "codename"
    )
    return (
        brief.pk,
        brief.status,
        brief.brief_date,
        brief.is_reengagement,
        brief.reason,
        brief.job_id,
        brief.built_at is not None,
        brief.summary_source,
        brief.sections,
        brief.summary,
        user.pk,
        user.get_username(),
        user.first_name,
        user.email,
        user.last_login,
        user.is_active,
        user.is_superuser,
        preference.timezone if preference else None,
        preference.email_enabled if preference else None,
        preference.frequency if preference else None,
        [pk for pk, _ in owned],
        [name for _, name in owned],
        {f"{app}.{codename}" for app, codename in granted},
    )


def load_context(brief_id: int, run_id: int = 0) -> Context | None:
    """The brief, its user, preference and organizations; None if the brief is gone."""
    return load_contexts([brief_id], run_id).get(brief_id)


def load_contexts(brief_ids: list[int], run_id: int = 0) -> dict[int, Context]:
    """load_context for several briefs in one query, by brief id; gone ones miss."""
    return {
        brief_id: context_from_row(row, run_id) for brief_id, row in context_rows(brief_ids).items()
    }


def context_from_row(row: tuple, run_id: int) -> Context:
    (
        brief_id,
        status,
        brief_date,
        is_reengagement,
        reason,
        job_id,
        built,
        summary_source,
        sections,
        summary,
        user_id,
        username,
        first_name,
        email,
        last_login,
        is_active,
        is_superuser,
        tz_name,
        email_enabled,
        frequency,
        organization_ids,
        organization_names,
        granted,
    ) = row
    if tz_name is None:  # no preference: its defaults
        default = BriefPreference()
        tz_name, email_enabled, frequency = (
            default.timezone,
            default.email_enabled,
            default.frequency,
        )
    tz = zone(tz_name)
    last_seen = last_login.astimezone(tz or UTC).date() if last_login else None
    granted = permissions(is_active, is_superuser, granted)
    return Context(
        brief_id=brief_id,
        status=status,
        user_id=user_id,
        username=username,
        first_name=first_name,
        email=email.strip(),
        email_enabled=email_enabled,
        frequency=frequency,
        timezone=tz_name if tz else "UTC",
        brief_date=brief_date,
        is_reengagement=is_reengagement,
        reason=reason,
        days_since_login=days_between(last_seen, brief_date),
        organizations=list(zip(organization_ids, organization_names, strict=True)),
        job_kinds=[kind.name for kind in all_kinds() if may(granted, kind.view_permission)],
        shipments=shipment_model() is not None and may(granted, "scanner.view_shipment"),
        run_id=run_id,
        built_by=job_id if built else None,
        summary_source=summary_source,
        built={"sections": sections, "summary": summary},
    )


def permissions(is_active: bool, is_superuser: bool, granted: list[str]) -> set[str] | None:
    """What a user may do, as ModelBackend decides: nothing when inactive, everything (None)
    for a superuser, else their own and their groups' permissions ("app.codename")."""
    if not is_active:
        return set()
    if is_superuser:
        return None
    return set(granted)


def may(granted: set[str] | None, permission: str) -> bool:
    return granted is None or permission in granted


_per_run: dict[int, dict[str, Future]] = {}  # daily_briefs job id -> what -> its read
_per_run_lock = threading.Lock()


class _Inline(threading.local):
    cached_only = False  # set while build_sections tries a section in an item thread


_inline = _Inline()
READ_WAIT = 60  # seconds a brief waits for another brief's read of what they share


class NeedsDatabase(Exception):
    """A section tried inline (build_sections) needs a query: it goes to a database thread."""


def once_per_run(run_id: int, what: str, read: Callable[[], Any]) -> Any:
    """`read()`, shared by the briefs a worker process builds in one `daily_briefs` job.

    For what briefs of a run show alike (the failed jobs, the inbox's shipments, an
    organization's figures for a day): the first brief to need it reads it, and the others
    that need it meanwhile wait for that read rather than run it too (the first briefs of
    a run all start at once). A read that fails is not kept: its waiters get its error,
    and the next brief reads again.
    """
    inline = _inline.cached_only
    with _per_run_lock:
        if run_id not in _per_run and len(_per_run) >= 4:  # runs of other hours are over
            _per_run.clear()
        known = _per_run.setdefault(run_id, {})
        future = known.get(what)
        if inline and not (future and future.done()):
            raise NeedsDatabase(what)
        reader = future is None
        if reader:
            future = known[what] = Future()
    if not reader:
        return future.result(timeout=READ_WAIT)
    try:
        value = read()
    except BaseException as exc:
        with _per_run_lock:
            if _per_run.get(run_id, {}).get(what) is future:
                del _per_run[run_id][what]
        future.set_exception(exc)
        raise
    future.set_result(value)
    return value


_prefetched: dict[tuple[int, int], Future] = {}  # (run id, brief id) -> its context's load
_prefetched_lock = threading.Lock()
PREFETCHED_KEPT = 10_000  # loads kept for items that never ran here (given back, say)


def prefetch(brief_ids: list[int], run_id: int) -> None:
    """Start loading these briefs' contexts in one query on a database thread, and the reads
    their sections share on others (start_shared_reads); `context_for` picks each up.

    A runner calls this with the items it has just claimed (DailyBriefsKind.claimed), so
    an item finds its context loaded, instead of a query and two thread switches each; and
    a run's first briefs need not all wait for the shared reads their sections start.
    """
    if not brief_ids:
        return
    loads = {brief_id: Future() for brief_id in brief_ids}
    with _prefetched_lock:
        for brief_id, future in loads.items():
            _prefetched[run_id, brief_id] = future
        while len(_prefetched) > PREFETCHED_KEPT:
            del _prefetched[next(iter(_prefetched))]
    threads = database_threads()
    threads.submit(_load_ahead, loads, run_id)
    # What every brief of the run shows alike needs no context: read it meanwhile.
    threads.submit(run_failed_jobs, run_id)
    if shipment_model() is not None:
        threads.submit(run_inbox, run_id)


def _load_ahead(loads: dict[int, Future], run_id: int) -> None:
    try:
        contexts = load_contexts(list(loads), run_id)
    except BaseException as exc:
        for future in loads.values():
            future.set_exception(exc)  # each item then loads its own
        raise
    for brief_id, future in loads.items():
        future.set_result(contexts.get(brief_id))
    start_shared_reads([c for c in contexts.values() if c.status == DailyBrief.Status.PENDING])


def context_for(brief_id: int, run_id: int, deadline: float | None = None) -> Context | None:
    """The brief's context for an item: the one `prefetch` loaded, else loaded now (on a
    database thread). None if the brief is gone."""
    with _prefetched_lock:
        future = _prefetched.pop((run_id, brief_id), None)
    if future is not None:
        try:
            return future.result(timeout=seconds_left(deadline))
        except Exception as exc:
            log.info("brief %s: its context was not loaded ahead (%r); loading it", brief_id, exc)
    return database_threads().run(load_context, brief_id, run_id, deadline=deadline)


def start_shared_reads(contexts: list[Context]) -> None:
    """Start, on the database threads, the reads of every organization's figures for the
    days and zones of these briefs (once per run and worker), unless done or under way."""
    threads = database_threads()
    days = {(ctx.brief_date, ctx.timezone): ctx for ctx in contexts}
    for ctx in days.values():
        threads.submit(organization_figures, ctx)


def run_failed_jobs(run_id: int) -> list[dict]:
    """Jobs that failed or had failed items in the last 24 h, with their most frequent errors,
    read once per run: each brief shows those of its organizations and of the kinds its user
    may see."""
    return once_per_run(run_id, "failed_jobs", read_failed_jobs)


def read_failed_jobs() -> list[dict]:
    since = timezone.now() - timedelta(hours=24)
    jobs = (
        Job.objects.filter(created_at__gte=since)
        .filter(Q(failed__gt=0) | Q(status=Job.Status.FAILED))
        .order_by("-created_at")[:RUN_JOBS_READ]
    )
    return [
        {
            "id": job.pk,
            "kind": job.kind,
            "organization": (job.params or {}).get("organization") or "",
            "status": job.status,
            "failed": job.failed,
            "total": job.total,
            "error": job.error[:300],
            "top_errors": failure_groups(job, limit=TOP_ERRORS),
        }
        for job in jobs
    ]


def failed_jobs(ctx: Context, keep) -> list[dict]:
    """The run's failed jobs the user may see and `keep(organization)` accepts."""
    return [
        job
        for job in run_failed_jobs(ctx.run_id)
        if job["kind"] in ctx.job_kinds and keep(job["organization"])
    ][:JOBS_LISTED]


# Counts of every organization's emails by type: pending in the next 7 days, and sent or
# failed yesterday (by when they were claimed). One statement, through the emails' partial
# indexes on pending send dates and on claim times; in plain SQL because building it with
# the ORM cost more CPU than running it.
ORGANIZATION_EMAILS_SQL = """
SELECT c.organization_id, e.type,
       count(*) FILTER (WHERE e.status = 'pending' AND e.send_date >= %s AND e.send_date < %s),
       count(*) FILTER (WHERE e.status = 'sent' AND e.claimed_at >= %s AND e.claimed_at < %s),
       count(*) FILTER (WHERE e.status = 'failed' AND e.claimed_at >= %s AND e.claimed_at < %s)
FROM {email} AS e JOIN {contact} AS c ON c.id = e.contact_id
WHERE (e.status = 'pending' AND e.send_date >= %s AND e.send_date < %s)
   OR (e.claimed_at >= %s AND e.claimed_at < %s)
GROUP BY c.organization_id, e.type
"""

Figures = tuple[dict, int, int]  # emails of the next 7 days by type, sent and failed yesterday


def no_figures() -> Figures:
    return dict.fromkeys(rules.EMAIL_TYPES, 0), 0, 0


def organization_section(ctx: Context, organization_id: int, name: str) -> dict:
    """One organization: emails of the next 7 days by type, yesterday's sent and failed, and
    its failed jobs of the last 24 h (jobs launched for it by name)."""
    by_type, sent, failed = organization_figures(ctx).get(organization_id) or no_figures()
    return {
        "kind": "organization",
        "title": name,
        "organization": organization_id,
        "emails_next_7_days": dict(by_type),
        "emails_next_7_days_total": sum(by_type.values()),
        "sent_yesterday": sent,
        "failed_yesterday": failed,
        "failed_jobs": failed_jobs(ctx, lambda organization: organization == name),
    }


def organization_figures(ctx: Context) -> dict[int, Figures]:
    """Every organization's figures for the brief's day and zone, read once per run."""
    day = f"{ctx.brief_date}:{ctx.timezone}"
    return once_per_run(ctx.run_id, f"organizations:{day}", lambda: organization_emails(ctx))


def organization_emails(ctx: Context) -> dict[int, Figures]:
    """Every organization's figures for the brief's day in the user's zone: the same for
    every brief of a run for that day in that zone, so read once per run, in one query
    (a run's briefs show most organizations; one query each cost more than all at once)."""
    first, end = ctx.brief_date, ctx.brief_date + timedelta(days=UPCOMING_DAYS)
    start, stop = ctx.day_bounds()
    sql = ORGANIZATION_EMAILS_SQL.format(
        email=ScheduledEmail._meta.db_table, contact=Contact._meta.db_table
    )
    params = [first, end, start, stop, start, stop, first, end, start, stop]
    figures: dict[int, Figures] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for organization_id, kind, upcoming, sent, failed in cursor.fetchall():
            by_type, sent_before, failed_before = figures.get(organization_id) or no_figures()
            by_type[kind] = by_type.get(kind, 0) + upcoming
            figures[organization_id] = (by_type, sent_before + sent, failed_before + failed)
    return figures


def jobs_section(ctx: Context) -> dict:
    """Failed jobs of the last 24 h that name none of the user's organizations."""
    mine = {name for _, name in ctx.organizations}
    listed = failed_jobs(ctx, lambda organization: organization not in mine)
    return {"kind": "jobs", "title": "Other failed jobs", "failed_jobs": listed}


def shipment_model():
    """The scanner's Shipment model (None without it: briefs do not need the scanner)."""
    try:
        from scanner.models import Shipment
    except ImportError:
        return None
    return Shipment


def inbox_section(ctx: Context) -> dict:
    """Shipments the scanner found in the inbox in the last 24 h, newest first.

    Shipments are not tied to organizations: every brief of a user who may see them (the
    Shipments page's scanner.view_shipment) shows the inbox's, read once per run.
    """
    return run_inbox(ctx.run_id)


def run_inbox(run_id: int) -> dict:
    return once_per_run(run_id, "inbox", read_inbox)


def read_inbox() -> dict:
    """The inbox section, through the shipments' first-seen index."""
    Shipment = shipment_model()
    since = timezone.now() - timedelta(hours=24)
    shipments = Shipment.objects.filter(first_seen__gte=since).order_by("-first_seen")
    listed = [
        {
            "tracking_number": s.tracking_number,
            "carrier": s.get_carrier_display(),
            "supplier": s.supplier,
            "po_number": s.po_number,
            "shipped_date": s.shipped_date.isoformat() if s.shipped_date else None,
        }
        for s in shipments[:SHIPMENTS_LISTED]
    ]
    return {
        "kind": "inbox",
        "title": "Inbox",
        "shipments_count": shipments.count() if len(listed) == SHIPMENTS_LISTED else len(listed),
        "shipments": listed,
    }


def section_builders(ctx: Context) -> list[tuple[dict, Callable, tuple]]:
    """(what the section is, its builder, the builder's arguments), in the brief's order.

    A builder reads the database only through once_per_run (see build_sections).
    """
    builders: list[tuple[dict, Callable, tuple]] = [
        (
            {"kind": "organization", "title": name, "organization": org_id},
            organization_section,
            (ctx, org_id, name),
        )
        for org_id, name in ctx.organizations
    ]
    if ctx.shipments:
        builders.append(({"kind": "inbox", "title": "Inbox"}, inbox_section, (ctx,)))
    builders.append(({"kind": "jobs", "title": "Other failed jobs"}, jobs_section, (ctx,)))
    return builders


def build_sections(ctx: Context, deadline: float | None = None) -> list[dict]:
    """Build every section; a failing one keeps its error.

    1. Each section is first tried here, reading only what the run has read already
       (once_per_run): after a run's first briefs, most sections need no query, and going
       through a database thread would only add two thread switches to each.
    2. The sections that need a query are built at once on the database threads.
    """
    threads = database_threads()
    building: list[tuple[dict, Future]] = []
    for header, builder, args in section_builders(ctx):
        try:
            future: Future = Future()
            future.set_result(inline(builder, *args))
        except NeedsDatabase:
            future = threads.submit(builder, *args)
        except Exception as exc:
            future.set_exception(exc)
        building.append((header, future))
    sections = []
    for header, future in building:
        try:
            sections.append(future.result(timeout=seconds_left(deadline)))
        except FutureTimeout:
            future.cancel()
            sections.append(header | {"error": "TimeoutError: the section took too long"})
        except Exception as exc:
            log.warning("brief %s: section %r failed: %r", ctx.brief_id, header["title"], exc)
            sections.append(header | {"error": f"{type(exc).__name__}: {exc}"[:500]})
    return sections


def inline(builder: Callable, *args) -> dict:
    """builder(*args) in this thread, from what the run has read; NeedsDatabase if it needs
    more. Section builders read the database only through once_per_run, so a builder tried
    here never runs a query: item threads hold no database connection."""
    _inline.cached_only = True
    try:
        return builder(*args)
    finally:
        _inline.cached_only = False


# -- The summary -----------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def template_summary(ctx: Context, sections: list[dict]) -> str:
    """The summary without a model: the figures of every section, a sentence each."""
    lines = []
    if ctx.is_reengagement and ctx.days_since_login is not None:
        lines.append(
            f"It has been {ctx.days_since_login} days since you last logged in; "
            "here is where things stand."
        )
    for section in sections:
        title = section["title"]
        if section.get("error"):
            lines.append(f"{title}: this section could not be built ({section['error']}).")
        elif section["kind"] == "organization":
            lines.append(
                f"{title}: {_plural(section['emails_next_7_days_total'], 'email')} scheduled "
                f"for the next {UPCOMING_DAYS} days; yesterday "
                f"{section['sent_yesterday']:,} sent and {section['failed_yesterday']:,} failed"
                + (
                    f"; {_plural(len(section['failed_jobs']), 'failed job')}."
                    if section["failed_jobs"]
                    else "."
                )
            )
        elif section["kind"] == "inbox":
            lines.append(
                f"Inbox: {_plural(section['shipments_count'], 'shipment')} found "
                "in the last 24 hours."
            )
        elif section["kind"] == "jobs" and section["failed_jobs"]:
            worst = section["failed_jobs"][0]
            top = worst["top_errors"][0] if worst["top_errors"] else None
            detail = f" (most recent: {worst['kind']}" + (
                f", {top['error_type']}: {top['error_message']})" if top else ")"
            )
            lines.append(
                f"{_plural(len(section['failed_jobs']), 'other job')} failed "
                f"in the last 24 hours{detail}."
            )
    if not ctx.organizations:
        lines.append("You own no organizations yet; an administrator can add you as an owner.")
    return "\n".join(lines)


SUMMARY_PROMPT = """\
You write the summary at the top of a {frequency} operations brief for {name}, who runs \
Medicare outreach for the organizations listed. The brief's sections follow as JSON: per \
organization, emails scheduled for the next 7 days by type, emails sent and failed \
yesterday, and failed jobs; then shipments found in the inbox and other failed jobs. \
A section with an "error" could not be built: say so. In 3 to 5 short sentences of plain \
text (no lists, no markdown), say what needs attention first, then what went well. Use only \
the figures given; never invent any."""

REENGAGEMENT_PROMPT = """\
You write a short note that welcomes {name} back to Batchboard, an operations dashboard for \
Medicare outreach: they have not logged in for {days} days. The sections that follow, as \
JSON, say what happened meanwhile in their organizations: emails scheduled for the next 7 \
days, emails sent and failed yesterday, failed jobs, shipments found in the inbox. In 3 to \
4 short sentences of plain text (no lists, no markdown), pick the one or two things most \
worth logging in for, and end by inviting them to look. Use only the figures given."""

SUMMARY_MAX_TOKENS = 300
SUMMARY_MAX_CHARS = 2000


def summary_messages(ctx: Context, sections: list[dict]) -> list[dict[str, str]]:
    """The chat messages for a brief's summary: the re-engagement prompt or the normal one."""
    if ctx.is_reengagement:
        days = ctx.days_since_login if ctx.days_since_login is not None else "many"
        system = REENGAGEMENT_PROMPT.format(name=ctx.name, days=days)
    else:
        system = SUMMARY_PROMPT.format(name=ctx.name, frequency=ctx.frequency)
    data = {"date": ctx.brief_date.isoformat(), "sections": sections}
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": llm.trim(json.dumps(data, separators=(",", ":")), 6000)},
    ]


@dataclass
class Summary:
    text: str
    source: str  # "llm" or "template"
    error: str = ""
    tokens: int = 0


def write_summary(ctx: Context, sections: list[dict], deadline: float | None = None) -> Summary:
    """The brief's summary from the model, or from the template without a key or on failure.

    One attempt: a brief is never held back for its summary. A 429 still pauses the
    `openai` limiter for every worker, as it would had it failed the item.
    """
    fallback = template_summary(ctx, sections)
    if not llm.enabled():
        return Summary(fallback, "template")
    left = seconds_left(deadline)
    try:
        reply = llm.chat(
            summary_messages(ctx, sections),
            max_tokens=SUMMARY_MAX_TOKENS,
            timeout=None if left is None else max(1.0, min(left - 5, settings.OPENAI_TIMEOUT)),
        )
        text = reply.content.strip()
        if not text:
            raise llm.InvalidOutput("the model wrote an empty summary")
    except Exception as exc:
        if is_rate_limited(exc):
            get_limiter(llm.LIMITER).pause(pause_seconds(exc))
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning(
            "brief %s: the model wrote no summary (%s); using the template", ctx.brief_id, error
        )
        return Summary(fallback, "template", f"summary: {error}")
    return Summary(text[:SUMMARY_MAX_CHARS], "llm", tokens=reply.total_tokens)


# -- Saving and emailing ---------------------------------------------------------------------


def update_brief(brief_id: int, fields: dict, only_if: str = "") -> int:
    """Set a brief's `fields` (model field names) in one plain UPDATE; return the rows changed.

    Each brief is updated twice or more: built, then emailed. The ORM's update() cost more
    CPU to build than to run. Values are prepared by their fields, as the ORM does;
    `only_if` adds a condition of literal SQL.
    """
    sets, params = [], []
    for name, value in fields.items():
        column = DailyBrief._meta.get_field(name)
        sets.append(f"{connection.ops.quote_name(column.column)} = %s")
        params.append(column.get_db_prep_save(value, connection))
    sql = f"UPDATE {DailyBrief._meta.db_table} SET {', '.join(sets)} WHERE id = %s {only_if}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, brief_id])
        return cursor.rowcount


def save_built(
    ctx: Context, sections: list[dict], summary: Summary, job_id: int, claim: bool
) -> bool:
    """Store the built brief if it is still pending; False when another run stored it first.

    With `claim`, the same UPDATE claims its email (see claim_email).
    """
    now = timezone.now()
    fields = {
        "email_claimed_at": now if claim else None,
        "status": DailyBrief.Status.READY,
        "sections": sections,
        "summary": summary.text,
        "summary_source": summary.source,
        "error": summary.error,
        "built_at": now,
        "job": job_id,
    }
    if not update_brief(ctx.brief_id, fields, only_if="AND status = 'pending'"):
        return False
    ctx.status = DailyBrief.Status.READY
    ctx.built = {"sections": sections, "summary": summary.text}
    return True


def mark_sent(sent: list[tuple[int, datetime]]) -> None:
    """Mark these briefs sent, each at its time (brief id, sent at), in one UPDATE."""
    if connection.vendor != "postgresql":  # SQLite (local runs) has no unnest()
        for brief_id, sent_at in sent:
            update_brief(brief_id, {"status": DailyBrief.Status.SENT, "sent_at": sent_at})
        return
    ids, times = zip(*sent, strict=True)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {DailyBrief._meta.db_table} AS b SET status = %s, sent_at = s.sent_at"
            " FROM unnest(%s::bigint[], %s::timestamptz[]) AS s(id, sent_at) WHERE b.id = s.id",
            [DailyBrief.Status.SENT, list(ids), list(times)],
        )


def claim_email(brief_id: int) -> bool:
    """Claim a built brief's email with a conditional UPDATE (as send_due_emails does).

    A claim older than the lease is a sender that died before it recorded anything: it is
    taken over, so the email goes out later rather than never.
    """
    now = timezone.now()
    abandoned = now - timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    return bool(
        DailyBrief.objects.filter(pk=brief_id, status=DailyBrief.Status.READY)
        .filter(Q(email_claimed_at__isnull=True) | Q(email_claimed_at__lt=abandoned))
        .update(email_claimed_at=now)
    )


def warm_up() -> None:
    """Compile the brief's email templates and build one email as a worker starts, so the
    first briefs of its first job do not each do it (their threads all start at once)."""
    for name in ("brief", "brief_reengagement", "brief_sections"):
        get_template(f"scheduler_app/emails/{name}.txt")
    mail.warm_up()


def render_email(ctx: Context, built: dict | None = None) -> tuple[str, str]:
    """(subject, body) from scheduler_app/emails/brief[_reengagement].txt ("Subject: ..." first),
    of the brief as `built` (its sections and summary), by default as stored."""
    name = "brief_reengagement" if ctx.is_reengagement else "brief"
    built = built or ctx.built
    text = render_to_string(
        f"scheduler_app/emails/{name}.txt",
        {
            "ctx": ctx,
            "name": ctx.name,
            "sections": built["sections"],
            "summary": built["summary"],
            "organizations": ", ".join(" ".join(n.split()) for _, n in ctx.organizations),
            "frequency": "weekly" if ctx.frequency == BriefPreference.Frequency.WEEKLY else "daily",
        },
    )
    first, _, body = text.lstrip().partition("\n")
    return " ".join(first.removeprefix("Subject:").split()), body.strip() + "\n"
