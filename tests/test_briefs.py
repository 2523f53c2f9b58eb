"""Daily briefs: when they run, the engagement backoff, the hourly scheduler, what a brief
holds, its summary and its email, with real PostgreSQL, Redis, RQ workers, a local
OpenAI-compatible server and a local SMTP server."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission, User
from django.core import mail
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from project import engine
from project.kinds import Item, Outcome, TransientError, get_kind
from project.models import Job, JobItem
from scheduler_app import briefs
from scheduler_app.briefs import backoff, next_run_at
from scheduler_app.models import (
    BriefPreference,
    Contact,
    DailyBrief,
    Organization,
    ScheduledEmail,
)
from tests.helpers import wait_for_job, wait_until
from tests.openai_server import OpenAIServer
from tests.test_send import SMTPSink, sink_env, smtp_sink  # noqa: F401 (a fixture)

NY = "America/New_York"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(autouse=True)
def close_brief_threads():
    """The briefs' database threads hold connections to the test database: end them."""
    yield
    briefs.close_database_threads()


# -- Next run --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now, zone, at, frequency, day, expected",
    [
        # Daily: today while the time is ahead, a time equal to now included; else tomorrow.
        (utc(2026, 6, 1, 10, 0), "UTC", "11:00", "daily", 0, utc(2026, 6, 1, 11, 0)),
        (utc(2026, 6, 1, 11, 0), "UTC", "11:00", "daily", 0, utc(2026, 6, 1, 11, 0)),
        (utc(2026, 6, 1, 11, 0, 1), "UTC", "11:00", "daily", 0, utc(2026, 6, 2, 11, 0)),
        # The zone decides "today": 23:30 UTC is already tomorrow in Tokyo.
        (utc(2026, 6, 1, 23, 30), "Asia/Tokyo", "07:00", "daily", 0, utc(2026, 6, 2, 22, 0)),
        (utc(2026, 6, 1, 1, 0), "America/Los_Angeles", "20:00", "daily", 0, utc(2026, 6, 1, 3, 0)),
        (utc(2026, 6, 1, 0, 0), "Asia/Kolkata", "06:15", "daily", 0, utc(2026, 6, 1, 0, 45)),
        (utc(2026, 6, 1, 0, 0), "Asia/Kathmandu", "06:00", "daily", 0, utc(2026, 6, 1, 0, 15)),
        # Weekly (0 = Monday; 2026-06-01 is a Monday): today while ahead, else next week.
        (utc(2026, 6, 1, 6, 0), "UTC", "07:00", "weekly", 0, utc(2026, 6, 1, 7, 0)),
        (utc(2026, 6, 1, 7, 0), "UTC", "07:00", "weekly", 0, utc(2026, 6, 1, 7, 0)),
        (utc(2026, 6, 1, 8, 0), "UTC", "07:00", "weekly", 0, utc(2026, 6, 8, 7, 0)),
        (utc(2026, 6, 1, 8, 0), "UTC", "07:00", "weekly", 6, utc(2026, 6, 7, 7, 0)),
        (utc(2026, 6, 3, 8, 0), NY, "07:00", "weekly", 1, utc(2026, 6, 9, 11, 0)),
        # Spring forward in New York (2026-03-08, 02:00 -> 03:00): 02:30 does not exist and
        # runs at the offset before the change (EST), i.e. 03:30 EDT.
        (utc(2026, 3, 8, 5, 0), NY, "02:30", "daily", 0, utc(2026, 3, 8, 7, 30)),
        (utc(2026, 3, 7, 13, 0), NY, "07:00", "daily", 0, utc(2026, 3, 8, 11, 0)),
        (utc(2026, 3, 2, 12, 0), NY, "07:00", "weekly", 6, utc(2026, 3, 8, 11, 0)),
        # Fall back (2026-11-01, 02:00 EDT -> 01:00 EST): 01:30 happens twice; the first.
        (utc(2026, 11, 1, 4, 0), NY, "01:30", "daily", 0, utc(2026, 11, 1, 5, 30)),
        # Between the two 01:30s, today's has gone: tomorrow's, in EST.
        (utc(2026, 11, 1, 6, 10), NY, "01:30", "daily", 0, utc(2026, 11, 2, 6, 30)),
        (utc(2026, 10, 31, 12, 0), NY, "07:00", "daily", 0, utc(2026, 11, 1, 12, 0)),
        # Southern hemisphere: Sydney springs forward 2026-10-04 (02:00 -> 03:00 AEDT).
        (
            utc(2026, 10, 3, 15, 0),
            "Australia/Sydney",
            "02:30",
            "daily",
            0,
            utc(2026, 10, 3, 16, 30),
        ),
        (utc(2026, 10, 3, 12, 0), "Australia/Sydney", "08:00", "daily", 0, utc(2026, 10, 3, 21, 0)),
        # Lord Howe moves by 30 minutes (02:00 -> 02:30 on 2026-10-04).
        (
            utc(2026, 10, 3, 14, 0),
            "Australia/Lord_Howe",
            "02:15",
            "daily",
            0,
            utc(2026, 10, 3, 15, 45),
        ),
    ],
)
def test_next_run_is_the_preferred_wall_time_in_the_users_zone(
    now, zone, at, frequency, day, expected
):
    run = next_run_at(now, zone, at, frequency, day)
    assert run == expected and run.tzinfo == UTC


def test_it_takes_a_time_object_and_a_naive_now_as_utc():
    assert next_run_at(datetime(2026, 6, 1, 6), "UTC", time(7, 0), "daily", 0) == utc(2026, 6, 1, 7)


@pytest.mark.parametrize(
    "zone, at, frequency, day",
    [
        ("Mars/Olympus_Mons", "07:00", "daily", 0),
        ("", "07:00", "daily", 0),
        ("../../etc/passwd", "07:00", "daily", 0),
        ("UTC", "25:00", "daily", 0),
        ("UTC", "seven", "daily", 0),
        ("UTC", None, "daily", 0),
        ("UTC", "07:00", "hourly", 0),
        ("UTC", "07:00", "weekly", 7),
        ("UTC", "07:00", "weekly", -1),
    ],
)
def test_an_invalid_zone_time_or_frequency_has_no_next_run(zone, at, frequency, day):
    assert next_run_at(utc(2026, 6, 1), zone, at, frequency, day) is None


ZONES = ["UTC", NY, "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia"]


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)),
    zone=st.sampled_from(ZONES),
    at=st.times(),
    weekly=st.booleans(),
    day=st.integers(0, 6),
)
def test_the_next_run_is_never_past_and_is_the_first_matching_wall_time(now, zone, at, weekly, day):
    now = now.replace(tzinfo=UTC)
    run = next_run_at(now, zone, at, "weekly" if weekly else "daily", day)
    assert now <= run <= now + timedelta(days=8 if weekly else 2)
    local = run.astimezone(ZoneInfo(zone))
    if weekly:
        assert local.weekday() == day or local.time() != at  # a gap moves it, never the day
    # No earlier day's wall time (fold=0) lies between now and the run.
    step = 7 if weekly else 1
    earlier = datetime.combine(local.date() - timedelta(days=step), at, tzinfo=ZoneInfo(zone))
    assert earlier.astimezone(UTC) < now


# -- Backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "login, brief, expected",
    [
        (None, None, (True, False, "active")),
        (None, 40, (True, False, "active")),
        (0, 0, (True, False, "active")),
        (2, None, (True, False, "active")),
        (2, 1, (True, False, "active")),
        (3, None, (False, False, "cooling_off")),
        (3, 1, (False, False, "cooling_off")),
        # Day 4: the first re-engagement, unless a brief went out on day 4 or later.
        (4, None, (True, True, "reengagement_day_4")),
        (4, 1, (True, True, "reengagement_day_4")),
        (4, 0, (False, False, "waiting")),
        (5, 2, (True, True, "reengagement_day_4")),  # day 4's run was missed: send now
        (5, 1, (False, False, "waiting")),
        (9, 6, (True, True, "reengagement_day_4")),
        (9, 5, (False, False, "waiting")),
        (10, 6, (True, True, "reengagement_day_10")),
        (10, 1, (True, True, "reengagement_day_10")),
        (10, 0, (False, False, "waiting")),
        (30, 21, (True, True, "reengagement_day_10")),
        (30, 20, (False, False, "waiting")),
        (31, 21, (True, True, "reengagement_day_31")),
        (31, 1, (True, True, "reengagement_day_31")),
        (31, 0, (False, False, "waiting")),
        (32, 1, (False, False, "waiting")),
        (61, 31, (True, True, "reengagement_day_31")),
        (61, 30, (False, False, "waiting")),
        (62, 31, (True, True, "reengagement_day_62")),
        (62, 0, (False, False, "waiting")),
        (92, 0, (False, False, "waiting")),
        (93, 31, (True, True, "reengagement_day_93")),
        (93, None, (True, True, "reengagement_day_93")),
        (124, 1, (True, True, "reengagement_day_124")),
    ],
)
def test_the_backoff_table(login, brief, expected):
    assert backoff(login, brief) == expected


def test_the_backoff_keeps_the_cadence_of_day_4_10_then_every_31_days():
    """A user who never logs in again after day 0, one scheduler run a day."""
    sent, last = [], None
    for day in range(0, 130):
        send, reengage, _ = backoff(day, None if last is None else day - last)
        if send:
            sent.append((day, reengage))
            last = day
    assert sent == [(0, False), (1, False), (2, False)] + [
        (d, True) for d in (4, 10, 31, 62, 93, 124)
    ]


# -- The scheduler ---------------------------------------------------------------------------


def owner(
    username: str,
    organizations=(),
    *,
    last_login: datetime | None = None,
    email: str | None = None,
    preference: bool = True,
    **fields,
) -> User:
    """A staff user who owns the organizations (created as needed), with a brief preference
    of `fields` (daily at 07:00 UTC by default)."""
    user = User.objects.create_user(
        username,
        f"{username}@example.com" if email is None else email,
        is_staff=True,
        first_name=username.title(),
    )
    User.objects.filter(pk=user.pk).update(last_login=last_login)
    user.refresh_from_db()
    for name in organizations:
        org, _ = Organization.objects.get_or_create(name=name)
        org.owners.add(user)
    if preference:
        BriefPreference.objects.create(user=user, **({"time_of_day": time(7, 0)} | fields))
    return user


NOW = utc(2026, 6, 10, 7, 0)  # a Wednesday


def dry_run(now: datetime = NOW) -> list[dict]:
    out = StringIO()
    call_command("schedule_briefs", "--now", now.isoformat(), "--dry-run", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_dry_run_json_lists_a_decision_for_every_active_preference(db):
    owner("ann", ["Acme"], last_login=NOW - timedelta(hours=5))
    owner("bob", ["Acme"], last_login=NOW - timedelta(days=3))
    owner("cat", ["Acme"], last_login=NOW - timedelta(days=4, hours=1))
    owner("dan", ["Acme"], time_of_day=time(9, 0))
    owner("eve", ["Acme"], timezone="Nowhere/Special")
    owner("fay", ["Acme"], time_of_day=time(7, 59), timezone="UTC")
    owner("gus", ["Acme"], active=False)
    owner("hal", ["Acme"], frequency="weekly", day_of_week=2)
    owner("ivy", ["Acme"], frequency="weekly", day_of_week=3)
    queued = owner("jo", ["Acme"])
    DailyBrief.objects.create(user=queued, brief_date=date(2026, 6, 10))

    rows = dry_run()

    day, later = "2026-06-10T07:00:00+00:00", "2026-06-10T09:00:00+00:00"
    thursday = "2026-06-11T07:00:00+00:00"
    expected = [
        ("ann", "send", "active", day),
        ("bob", "skip", "cooling_off", day),
        ("cat", "reengagement", "reengagement_day_4", day),
        ("dan", "skip", "not_due", later),
        ("eve", "skip", "invalid_preference", None),
        ("fay", "send", "active", "2026-06-10T07:59:00+00:00"),
        ("hal", "send", "active", day),
        ("ivy", "skip", "not_due", thursday),
        ("jo", "skip", "already_queued", day),
    ]
    fields = ("user", "decision", "reason", "next_run_at")
    assert rows == [dict(zip(fields, row, strict=True)) for row in expected]
    assert not DailyBrief.objects.exclude(user=queued).exists()
    assert not Job.objects.filter(kind="daily_briefs").exists()


def test_an_invalid_preference_is_skipped_with_a_warning(db, caplog):
    owner("eve", timezone="Nowhere/Special")
    assert dry_run()[0]["reason"] == "invalid_preference"
    assert "eve" in caplog.text and "Nowhere/Special" in caplog.text


def test_days_are_counted_in_the_users_zone_up_to_the_briefs_day(db):
    # 07:00 in Tokyo on June 11 is 22:00 UTC on June 10. The login was on June 7 in Tokyo,
    # 4 days before the brief's day there, though only 3 days and 7 hours before in seconds
    # and 3 days before in UTC dates.
    login = datetime(2026, 6, 7, 23, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    owner("kim", ["Acme"], timezone="Asia/Tokyo", last_login=login)
    [row] = dry_run(utc(2026, 6, 10, 21, 30))
    assert (row["decision"], row["reason"]) == ("reengagement", "reengagement_day_4")


def test_a_brief_since_the_milestone_holds_the_reengagement_back(db):
    user = owner("lou", ["Acme"], last_login=NOW - timedelta(days=12))
    DailyBrief.objects.create(user=user, brief_date=date(2026, 6, 1))  # day 3 before the run
    assert dry_run()[0]["reason"] == "reengagement_day_10"
    DailyBrief.objects.create(user=user, brief_date=date(2026, 6, 8))  # day 10 of L
    assert dry_run()[0]["reason"] == "waiting"


def test_the_backoff_setting_off_sends_everyone_a_normal_brief(db, settings):
    settings.BRIEF_BACKOFF = False
    owner("bob", ["Acme"], last_login=NOW - timedelta(days=3))
    owner("cat", ["Acme"], last_login=NOW - timedelta(days=40))
    assert [(r["decision"], r["reason"]) for r in dry_run()] == [("send", "active")] * 2


def test_duplicates_are_checked_for_every_user_in_one_query(db):
    for n in range(30):
        owner(f"user{n}", ["Acme"])
    job = engine.launch("daily_briefs", {"users": "user3,user4"})  # pending items
    assert job.total == 2

    with CaptureQueriesContext(connection) as queries:
        decisions = briefs.plan(NOW)

    # One query reads the preferences (with each user's last brief), one checks duplicates.
    assert len(queries.captured_queries) == 2
    reasons = Counter(d.reason for d in decisions)
    assert reasons == {"active": 28, "already_queued": 2}


def test_a_run_launches_one_job_whose_items_are_the_users(db):
    ann, cat = owner("ann", ["Acme"]), owner("cat", ["Acme"], last_login=NOW - timedelta(days=4))
    owner("dan", ["Acme"], time_of_day=time(9, 0))
    out = StringIO()

    call_command("schedule_briefs", "--now", NOW.isoformat(), stdout=out)

    job = Job.objects.get(kind="daily_briefs")
    items = dict(JobItem.objects.filter(job=job).values_list("key", "data"))
    assert set(items) == {str(ann.pk), str(cat.pk)}
    assert job.source == "schedule"
    made = {b.user_id: b for b in DailyBrief.objects.all()}
    assert items[str(cat.pk)] == {"brief": made[cat.pk].pk}
    assert (made[cat.pk].is_reengagement, made[cat.pk].reason) == (True, "reengagement_day_4")
    assert (made[ann.pk].is_reengagement, made[ann.pk].status) == (False, "pending")
    assert made[ann.pk].brief_date == date(2026, 6, 10)
    assert f"job #{job.pk}" in out.getvalue()
    # The same hour again: both are queued already, nothing new.
    call_command("schedule_briefs", "--now", NOW.isoformat(), stdout=StringIO())
    assert Job.objects.filter(kind="daily_briefs").count() == 1


def test_two_schedulers_racing_make_one_brief_per_user_and_day(transactional_db, redis_db):
    users = [owner(f"user{n}", ["Acme"]) for n in range(40)]
    # Both runs decide before either inserts, so both pass the duplicate check.
    decided = threading.Barrier(2)
    plan = briefs.plan

    def plan_then_wait(now):
        decisions = plan(now)
        decided.wait(timeout=10)
        return decisions

    results, errors = [], []

    def run():
        try:
            results.append(briefs.schedule(NOW))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connections.close_all()

    briefs.plan = plan_then_wait
    try:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        briefs.plan = plan

    assert errors == []
    assert DailyBrief.objects.count() == len(users)
    keys = Counter(JobItem.objects.filter(job__kind="daily_briefs").values_list("key", flat=True))
    assert keys == Counter({str(u.pk): 1 for u in users})
    for user in users:
        decisions = [next(d for d in ds if d.user_id == user.pk) for ds, _ in results]
        assert sorted(d.decision for d in decisions) == ["send", "skip"]
        assert {d.reason for d in decisions} == {"active", "already_queued"}


def test_two_scheduler_processes_at_once_queue_each_brief_once(transactional_db, redis_db):
    import subprocess
    import sys

    from tests.conftest import ROOT, worker_env

    users = [owner(f"user{n}", ["Acme"]) for n in range(60)]
    command = [sys.executable, "manage.py", "schedule_briefs", "--now", NOW.isoformat(), "--json"]
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0]
    sent = Counter(r["user"] for rows in outputs for r in rows if r["decision"] == "send")
    assert sent == Counter({u.username: 1 for u in users})
    assert DailyBrief.objects.count() == 60
    assert JobItem.objects.filter(job__kind="daily_briefs").count() == 60


# -- Building a brief ------------------------------------------------------------------------


def contact(org: Organization, n: int) -> Contact:
    return Contact.objects.create(organization=org, external_id=str(n), email=f"c{n}@example.com")


def make_world(now: datetime) -> User:
    """An owner in New York of two organizations with emails around the brief's day."""
    user = owner("ann", ["Acme", "Birch"], timezone=NY)
    acme, birch = Organization.objects.get(name="Acme"), Organization.objects.get(name="Birch")
    other = Organization.objects.create(name="Not hers")
    a, b, c = contact(acme, 1), contact(birch, 2), contact(other, 3)
    today = date(2026, 6, 10)
    emails = [
        (a, "aep", today, "pending", None),
        (a, "birthday", today + timedelta(days=6), "pending", None),
        (a, "effective_date", today + timedelta(days=7), "pending", None),  # past 7 days
        (b, "aep", today + timedelta(days=3), "pending", None),
        (c, "aep", today, "pending", None),  # another organization
        # Yesterday in New York is 04:00 UTC on the 9th to 04:00 UTC on the 10th.
        (a, "post_window", today - timedelta(days=1), "sent", utc(2026, 6, 9, 4, 0)),
        (a, "aep", today - timedelta(days=2), "sent", utc(2026, 6, 10, 3, 59)),
        (a, "birthday", today - timedelta(days=3), "failed", utc(2026, 6, 9, 12, 0)),
        (a, "effective_date", today - timedelta(days=4), "sent", utc(2026, 6, 10, 4, 0)),
        (b, "birthday", today - timedelta(days=1), "sent", utc(2026, 6, 9, 3, 59)),
    ]
    for who, kind, day, status, claimed in emails:
        ScheduledEmail.objects.create(
            contact=who, type=kind, send_date=day, status=status, claimed_at=claimed
        )
    return user


def failed_job(kind: str, params: dict, errors: dict[str, int]) -> Job:
    job = Job.objects.create(
        kind=kind,
        params=params,
        status="completed_with_errors",
        total=10,
        failed=sum(errors.values()),
        failure_counts={f"PermanentError\x1f{m}": n for m, n in errors.items()},
    )
    return job


def run_item(job: Job, item: JobItem, attempt: int = 1) -> Outcome:
    """Run a brief's item as a runner does: run_item, then its outcome's record stored."""
    kind = get_kind("daily_briefs")
    outcome = kind.run_item(job, Item(item.id, item.key, attempt, item.data))
    if outcome.record is not None:
        kind.record(job, [outcome.record])
    return outcome


def build(user: User, brief_date=date(2026, 6, 10), **fields) -> tuple[DailyBrief, object]:
    brief = DailyBrief.objects.create(user=user, brief_date=brief_date, **fields)
    job = engine.launch("daily_briefs", {}, keys=[(str(user.pk), {"brief": brief.pk})])
    item = JobItem.objects.get(job=job)
    outcome = run_item(job, item)
    brief.refresh_from_db()
    return brief, outcome


def test_a_brief_has_a_section_per_owned_organization_with_its_figures(transactional_db, redis_db):
    user = make_world(NOW)
    User.objects.filter(pk=user.pk).update(is_superuser=True)
    failed_job("send_due_emails", {"organization": "Acme"}, {"550 mailbox unavailable": 3, "x": 1})
    failed_job("sleep", {}, {"boom": 2})
    failed_job("send_due_emails", {"organization": "Not hers"}, {"y": 1})

    brief, outcome = build(user)

    assert brief.status == "sent" and outcome.status == "succeeded"
    acme, birch, inbox, jobs = brief.sections
    assert (inbox["kind"], inbox["shipments_count"]) == ("inbox", 0)
    assert acme["title"] == "Acme" and birch["title"] == "Birch"
    assert acme["emails_next_7_days"] == {
        "birthday": 1,
        "effective_date": 0,
        "aep": 1,
        "post_window": 0,
    }
    assert (acme["sent_yesterday"], acme["failed_yesterday"]) == (2, 1)
    assert (birch["emails_next_7_days_total"], birch["sent_yesterday"]) == (1, 0)
    [acme_job] = acme["failed_jobs"]
    assert acme_job["top_errors"][0] == {
        "error_type": "PermanentError",
        "error_message": "550 mailbox unavailable",
        "count": 3,
    }
    assert birch["failed_jobs"] == []
    assert [j["kind"] for j in jobs["failed_jobs"]] == ["send_due_emails", "sleep"]
    assert brief.summary_source == "template"
    assert "Acme: 2 emails scheduled for the next 7 days; yesterday 2 sent and 1 failed" in (
        brief.summary
    )


def test_failed_jobs_show_only_kinds_the_user_may_view(transactional_db, redis_db):
    user = owner("ann", ["Acme"])
    failed_job("send_due_emails", {}, {"550 for bob@example.com": 1})
    failed_job("sleep", {}, {"boom": 1})

    brief, _ = build(user)

    assert brief.sections[-1]["failed_jobs"] == []  # staff, without any permission
    User.objects.filter(pk=user.pk).update(is_superuser=True)
    brief, _ = build(user, date(2026, 6, 11))
    assert {j["kind"] for j in brief.sections[-1]["failed_jobs"]} == {"send_due_emails", "sleep"}


def test_the_inbox_section_lists_the_shipments_of_the_last_24_hours(transactional_db, redis_db):
    from django.utils import timezone

    from scanner.models import Conversation, Shipment

    user = owner("ann", ["Acme"])
    thread = Conversation.objects.create(source="mailbox", external_id="<t1@example.com>")
    now = timezone.now()
    for number, hours in (("1Z999AA10123456784", 2), ("9400111899223197428490", 30)):
        Shipment.objects.create(
            tracking_number=number,
            carrier="ups" if number.startswith("1Z") else "usps",
            po_number="PO-77",
            supplier="Acme Parts",
            shipped_date=date(2026, 6, 9),
            conversation=thread,
            first_seen=now - timedelta(hours=hours),
        )

    brief, _ = build(user)
    assert [s["kind"] for s in brief.sections] == ["organization", "jobs"]  # no permission

    user.user_permissions.add(Permission.objects.get(codename="view_shipment"))
    brief, _ = build(user, date(2026, 6, 11))
    _, inbox, _ = brief.sections
    assert inbox == {
        "kind": "inbox",
        "title": "Inbox",
        "shipments_count": 1,
        "shipments": [
            {
                "tracking_number": "1Z999AA10123456784",
                "carrier": "UPS",
                "supplier": "Acme Parts",
                "po_number": "PO-77",
                "shipped_date": "2026-06-09",
            }
        ],
    }
    assert "Inbox: 1 shipment found in the last 24 hours." in brief.summary


def test_a_failing_section_shows_its_error_and_the_others_are_kept(
    transactional_db, redis_db, monkeypatch
):
    user = make_world(NOW)
    real = briefs.organization_section

    def fails_for_birch(ctx, organization_id, name):
        if name == "Birch":
            raise RuntimeError("the Birch figures are unavailable")
        return real(ctx, organization_id, name)

    monkeypatch.setattr(briefs, "organization_section", fails_for_birch)

    brief, outcome = build(user)

    acme, birch, jobs = brief.sections
    assert acme["emails_next_7_days_total"] == 2 and "error" not in acme
    assert birch == {
        "kind": "organization",
        "title": "Birch",
        "organization": Organization.objects.get(name="Birch").pk,
        "error": "RuntimeError: the Birch figures are unavailable",
    }
    assert jobs["kind"] == "jobs" and "error" not in jobs
    assert outcome.status == "succeeded" and outcome.tallies["failed_sections"] == 1
    assert "Birch: this section could not be built" in brief.summary
    assert brief.status == "sent"


def test_sections_are_built_at_the_same_time(transactional_db, redis_db, monkeypatch):
    user = owner("ann", ["Acme", "Birch", "Cedar", "Dune"])
    inside, peak, lock = 0, 0, threading.Lock()
    real = briefs.organization_section

    def slow(ctx, organization_id, name):
        """A section that needs a query of its own, and whose query takes 0.3 s."""
        if briefs._inline.cached_only:
            raise briefs.NeedsDatabase("the section's figures")
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        threading.Event().wait(0.3)
        with lock:
            inside -= 1
        return real(ctx, organization_id, name)

    monkeypatch.setattr(briefs, "organization_section", slow)
    brief, _ = build(user)
    assert peak == 4 and len(brief.sections) == 5


def test_sections_the_run_has_read_already_are_built_without_a_query(
    transactional_db, redis_db, monkeypatch
):
    user = make_world(NOW)
    User.objects.filter(pk=user.pk).update(is_superuser=True)  # sees every failed job
    failed_job("send_due_emails", {"organization": "Acme"}, {"550 mailbox unavailable": 3})
    brief = DailyBrief.objects.create(user=user, brief_date=date(2026, 6, 10))
    run = engine.launch("daily_briefs", {}, keys=[(str(user.pk), {"brief": brief.pk})])
    ctx = briefs.load_context(brief.pk, run.pk)
    first = briefs.build_sections(ctx)

    threads = briefs.database_threads()
    sent_to_threads = []
    submit = threads.submit
    monkeypatch.setattr(
        threads, "submit", lambda fn, *args: sent_to_threads.append(fn) or submit(fn, *args)
    )
    with CaptureQueriesContext(connection) as queries:
        again = briefs.build_sections(ctx)

    assert again == first
    assert [s["title"] for s in again] == ["Acme", "Birch", "Inbox", "Other failed jobs"]
    assert first[0]["failed_jobs"][0]["failed"] == 3
    assert sent_to_threads == [] and len(queries) == 0


def claim_briefs(*users: User) -> tuple[Job, list[DailyBrief]]:
    """A run over briefs of `users`, announced to the kind as a runner claims them."""
    made = [DailyBrief.objects.create(user=u, brief_date=date(2026, 6, 10)) for u in users]
    keys = [(str(b.user_id), {"brief": b.pk}) for b in made]
    run = engine.launch("daily_briefs", {}, keys=keys)
    items = [Item(i.id, i.key, 1, i.data) for i in JobItem.objects.filter(job=run)]
    get_kind("daily_briefs").claimed(run, items)
    return run, made


def test_claimed_briefs_are_loaded_in_one_query_with_what_their_sections_share(
    transactional_db, redis_db, monkeypatch
):
    loads = []
    real = briefs.context_rows
    monkeypatch.setattr(briefs, "context_rows", lambda ids: loads.append(ids) or real(ids))
    ann = make_world(NOW)
    failed_job("send_due_emails", {"organization": "Acme"}, {"550 mailbox unavailable": 3})
    run, (first, second) = claim_briefs(ann, owner("bob", ["Birch"], timezone=NY))

    ctx = briefs.context_for(first.pk, run.pk)
    assert (ctx.username, ctx.brief_id) == ("ann", first.pk)
    assert briefs.context_for(second.pk, run.pk).username == "bob"
    assert loads == [[first.pk, second.pk]]  # one query for both, none per item

    def built_from_what_was_read() -> bool:
        try:
            return all(briefs.inline(fn, *args) for _, fn, args in briefs.section_builders(ctx))
        except briefs.NeedsDatabase:
            return False

    # The run's shared reads started with the load: the sections need no query of their own.
    wait_until(built_from_what_was_read, timeout=10)
    brief, _ = build_claimed(run, first)
    assert [s["title"] for s in brief.sections] == ["Acme", "Birch", "Other failed jobs"]
    assert brief.sections[0]["emails_next_7_days_total"] == 2
    assert len(loads) == 2  # the item loaded its brief again: it was taken once


def build_claimed(run: Job, brief: DailyBrief) -> tuple[DailyBrief, object]:
    item = JobItem.objects.get(job=run, key=str(brief.user_id))
    outcome = run_item(run, item)
    brief.refresh_from_db()
    return brief, outcome


def test_a_brief_whose_load_ahead_failed_loads_itself(transactional_db, redis_db, monkeypatch):
    real, calls = briefs.context_rows, []

    def fails_first(ids):
        calls.append(ids)
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        return real(ids)

    monkeypatch.setattr(briefs, "context_rows", fails_first)
    run, (brief,) = claim_briefs(owner("ann", ["Acme"]))
    brief, outcome = build_claimed(run, brief)
    assert brief.status == DailyBrief.Status.SENT and outcome.status == "succeeded"
    assert calls == [[brief.pk], [brief.pk]]


def test_briefs_that_need_the_same_figures_at_once_read_them_once():
    reads, reading, release = [], threading.Event(), threading.Event()

    def read():
        reads.append(1)
        reading.set()
        release.wait(5)
        return "figures"

    got = []
    first = threading.Thread(target=lambda: got.append(briefs.once_per_run(-1, "x", read)))
    first.start()
    reading.wait(5)
    others = [
        threading.Thread(target=lambda: got.append(briefs.once_per_run(-1, "x", read)))
        for _ in range(4)
    ]
    for thread in others:
        thread.start()
    threading.Event().wait(0.2)  # the others are waiting for the first read
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert got == ["figures"] * 5 and len(reads) == 1


def test_a_failed_read_is_not_kept_the_next_brief_reads_again():
    def fails():
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        briefs.once_per_run(-2, "x", fails)
    assert briefs.once_per_run(-2, "x", lambda: "figures") == "figures"
    assert briefs.once_per_run(-2, "x", fails) == "figures"  # kept once read


def test_an_item_that_runs_again_builds_and_emails_nothing_twice(transactional_db, redis_db):
    user = owner("ann", ["Acme"])
    brief, first = build(user)
    job = engine.launch("daily_briefs", {}, keys=[(str(user.pk), {"brief": brief.pk})])
    item = JobItem.objects.get(job=job)
    again = run_item(job, item, attempt=2)

    assert (first.status, again.status) == ("succeeded", "skipped")
    assert [m.to for m in mail.outbox] == [["ann@example.com"]]
    assert mail.outbox[0].subject == "Your daily brief for Wednesday, June 10"


def test_a_refused_email_is_given_back_and_sent_by_the_retry_once(
    transactional_db,
    redis_db,
    settings,
    smtp_sink,  # noqa: F811 (the fixture imported above)
):
    settings.MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": smtp_sink.port, "use_tls": False},
        }
    }
    user = owner("ann", ["Acme"], email="busy@example.com")  # the sink answers 451 once
    brief = DailyBrief.objects.create(user=user, brief_date=date(2026, 6, 10))
    job = engine.launch("daily_briefs", {}, keys=[(str(user.pk), {"brief": brief.pk})])
    item = JobItem.objects.get(job=job)
    kind = get_kind("daily_briefs")

    with pytest.raises(TransientError):
        kind.run_item(job, Item(item.id, item.key, 1, item.data))
    brief.refresh_from_db()
    assert (brief.status, brief.email_claimed_at) == ("ready", None) and "451" in brief.error
    outcome = run_item(job, item, attempt=2)

    brief.refresh_from_db()
    assert brief.status == "sent" and smtp_sink.recipients() == Counter({"busy@example.com": 1})
    assert outcome.tallies == {"briefs": 1, "template_summaries": 1, "emailed": 1}


def test_no_email_when_the_user_does_not_want_it_or_has_no_address(transactional_db, redis_db):
    quiet = owner("ann", ["Acme"], email_enabled=False)
    nowhere = owner("bob", ["Acme"], email="")

    assert build(quiet)[0].status == "ready"
    brief, outcome = build(nowhere)
    assert brief.status == "ready" and "no address" in outcome.summary
    assert mail.outbox == []


def test_a_launch_by_hand_briefs_the_named_users(db, redis_db):
    ann, _ = owner("ann", ["Acme"]), owner("bob", ["Acme"])
    out = StringIO()
    call_command(
        "run_job", "daily_briefs", "--param", "users=ann", "--param", "brief_date=2026-06-10",
        "--detach", stdout=out,
    )  # fmt: skip
    job = Job.objects.get(kind="daily_briefs")
    assert list(JobItem.objects.filter(job=job).values_list("key", flat=True)) == [str(ann.pk)]
    assert DailyBrief.objects.get().brief_date == date(2026, 6, 10)
    with pytest.raises(Exception, match="no user named 'zed'"):
        call_command("run_job", "daily_briefs", "--param", "users=zed", stdout=StringIO())


# -- The summary -----------------------------------------------------------------------------


@pytest.fixture
def openai_server(settings, redis_db):
    with OpenAIServer(answer=lambda body: "Acme is on track; nothing failed.") as server:
        settings.OPENAI_API_KEY = "test-key"
        settings.OPENAI_BASE_URL = server.url
        settings.OPENAI_TIMEOUT = 2
        yield server


def test_the_summary_is_written_by_the_model_through_the_openai_limiter(
    transactional_db, openai_server
):
    user = owner("ann", ["Acme"])

    brief, outcome = build(user)

    assert (brief.summary, brief.summary_source) == ("Acme is on track; nothing failed.", "llm")
    assert outcome.tallies["llm_summaries"] == 1 and outcome.tallies["llm_tokens"] > 0
    [request] = openai_server.requests
    system, data = request.body["messages"]
    assert "operations brief for Ann" in system["content"]
    assert json.loads(data["content"])["sections"][0]["title"] == "Acme"


@pytest.mark.parametrize("fault", ["500", "429", "timeout", "malformed"])
def test_when_the_model_fails_the_template_summary_is_used(transactional_db, openai_server, fault):
    user = owner("ann", ["Acme"])
    openai_server.script([fault])
    openai_server.hang = 3

    brief, outcome = build(user)

    assert brief.summary_source == "template" and brief.summary.startswith("Acme: 0 emails")
    assert brief.error.startswith("summary: ")
    assert outcome.status == "succeeded" and brief.status == "sent"


def test_a_reengagement_brief_has_its_own_prompt_and_subject(transactional_db, openai_server):
    user = owner("ann", ["Acme", "Birch"], last_login=NOW - timedelta(days=10))

    brief, _ = build(user, is_reengagement=True, reason="reengagement_day_10")

    system = openai_server.requests[0].body["messages"][0]["content"]
    assert "welcomes Ann back" in system and "10 days" in system
    assert mail.outbox[0].subject == "Ann, here is what happened while you were away at Acme, Birch"


# -- With workers ----------------------------------------------------------------------------


def worker_llm_env(server: OpenAIServer, sink: SMTPSink) -> dict:
    return sink_env(sink) | {
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": server.url,
        "OPENAI_TIMEOUT": "2",
        "OPENAI_RPM": "60000",
        "OPENAI_TPM": "100000000",
    }


def test_workers_brief_every_due_user_with_the_template_when_the_model_fails(
    workers,
    smtp_sink,  # noqa: F811 (the fixture imported above)
    redis_db,
):
    users = [owner(f"user{n}", ["Acme"]) for n in range(12)]
    with OpenAIServer(faults={"500": 1.0}) as server:
        workers(2, **worker_llm_env(server, smtp_sink))
        _, job = briefs.schedule(NOW)
        job = wait_for_job(job)
        assert len(server.requests) == 12

    assert (job.status, job.succeeded, job.tallies["template_summaries"]) == ("succeeded", 12, 12)
    assert set(DailyBrief.objects.values_list("status", "summary_source")) == {("sent", "template")}
    assert smtp_sink.recipients() == Counter({u.email: 1 for u in users})


def test_two_jobs_over_the_same_briefs_email_each_once(
    workers,
    smtp_sink,  # noqa: F811 (the fixture imported above)
    redis_db,
):
    users = [owner(f"user{n}", ["Acme"]) for n in range(30)]
    with OpenAIServer(latency=0.05) as server:
        workers(2, **worker_llm_env(server, smtp_sink))
        _, first = briefs.schedule(NOW)
        keys = list(JobItem.objects.filter(job=first).values_list("key", "data"))
        second = engine.launch("daily_briefs", {}, keys=keys)
        first, second = wait_for_job(first), wait_for_job(second)

    assert smtp_sink.recipients() == Counter({u.email: 1 for u in users})
    assert first.tallies.get("emailed", 0) + second.tallies.get("emailed", 0) == 30
    assert first.tallies.get("briefs", 0) + second.tallies.get("briefs", 0) == 30
    assert set(DailyBrief.objects.values_list("status", "summary_source")) == {("sent", "llm")}


def test_the_hourly_cron_job_queues_the_hours_briefs_on_a_worker(workers, redis_db):
    from django_rq.cron import DjangoCronScheduler

    from project.connections import get_redis

    scheduler = DjangoCronScheduler()
    scheduler.load_config_from_file("scheduler_app.cron")
    [cron_job] = scheduler.get_jobs()
    assert (cron_job.func_name, cron_job.cron) == (
        "scheduler_app.briefs.schedule_hourly",
        "0 * * * *",
    )

    from django.utils import timezone

    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    if timezone.now() - hour > timedelta(minutes=59, seconds=30):
        pytest.skip("too close to the next hour")
    user = owner("ann", ["Acme"], time_of_day=time(hour.hour, 0), email_enabled=False)
    workers(1)
    cron_job.enqueue(get_redis())

    brief = wait_for_brief(user)
    assert brief.brief_date == hour.date() and brief.job.kind == "daily_briefs"


def wait_for_brief(user: User, timeout: float = 60) -> DailyBrief:
    from tests.helpers import wait_until

    wait_until(
        lambda: DailyBrief.objects.filter(user=user, status="ready").exists(), timeout=timeout
    )
    return DailyBrief.objects.select_related("job").get(user=user)


# -- Pages -----------------------------------------------------------------------------------


def test_users_see_their_own_briefs_only(client, db):
    ann, bob = owner("ann", ["Acme"]), owner("bob", ["Birch"])
    mine = DailyBrief.objects.create(
        user=ann,
        brief_date=date(2026, 6, 10),
        status="ready",
        summary="All quiet at Acme.",
        sections=[{"kind": "organization", "title": "Acme", "error": "boom"}],
    )
    theirs = DailyBrief.objects.create(user=bob, brief_date=date(2026, 6, 10), status="ready")
    client.force_login(ann)

    listing = client.get(reverse("brief_list"))
    page = client.get(mine.get_absolute_url())

    assert "All quiet at Acme." in listing.text and theirs.get_absolute_url() not in listing.text
    assert "This section could not be built" in page.text and "boom" in page.text
    assert client.get(theirs.get_absolute_url()).status_code == 404


def test_a_brief_being_built_is_polled_until_it_is_ready(client, db):
    ann = owner("ann", ["Acme"])
    brief = DailyBrief.objects.create(user=ann, brief_date=date(2026, 6, 10))
    client.force_login(ann)
    hx = {"HTTP_HX_REQUEST": "true"}

    assert client.get(brief.get_absolute_url(), **hx).status_code == 200
    DailyBrief.objects.filter(pk=brief.pk).update(status="ready", summary="Done.")
    done = client.get(brief.get_absolute_url(), **hx)
    assert done.status_code == 286 and "Done." in done.text


def test_users_set_their_own_brief_preferences(client, db):
    ann = owner("ann", ["Acme"], preference=False)
    client.force_login(ann)
    url = reverse("brief_preferences")
    form = {
        "active": "on",
        "frequency": "weekly",
        "day_of_week": "4",
        "time_of_day": "06:45",
        "timezone": "Europe/Paris",
    }

    bad = client.post(url, form | {"timezone": "Europe/Atlantis"})
    good = client.post(url, form)

    assert bad.status_code == 400 and "is not an IANA time zone" in bad.text
    assert good.status_code == 302
    saved = BriefPreference.objects.get(user=ann)
    assert (saved.frequency, saved.day_of_week, saved.time_of_day) == ("weekly", 4, time(6, 45))
    assert saved.email_enabled is False


def test_organization_owners_are_edited_in_the_admin(admin_client, db):
    org = Organization.objects.create(name="Acme")
    ann = owner("ann")
    url = reverse("admin:scheduler_app_organization_change", args=[org.pk])

    assert 'name="owners"' in admin_client.get(url).text
    admin_client.post(
        url,
        {"name": "Acme", "created_at_0": "2026-06-01", "created_at_1": "00:00", "owners": [ann.pk]},
    )

    assert list(org.owners.all()) == [ann]
