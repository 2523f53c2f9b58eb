"""Demo data: three organizations with ~1,500 varied contacts and their topic subscriptions,
and a first schedule run.

Deterministic (random.Random(1)), so every fresh checkout shows the same dashboard. Called by
`manage.py bootstrap` through SchedulerAppConfig.load_demo().
"""

from __future__ import annotations

import random
from datetime import date, time, timedelta

from django.contrib.auth import get_user_model
from django.db import transaction

from project import engine
from project.models import Job
from scheduler_app.models import BriefPreference, Contact, Organization, Subscription, Topic

ORGANIZATIONS = ("Sunrise Senior Benefits", "Lakeside Insurance Group", "Prairie Health Advisors")
CONTACTS = 1500
# Windowed, year-round and plain states, the worked examples' states over-represented.
STATES = (
    ["CA"] * 6 + ["NV"] * 3 + ["MO"] * 3 + ["IL"] * 3 + ["KY"] * 2 + ["NY"] * 2 + ["TX"] * 6
    + ["FL"] * 6 + ["ID", "LA", "MD", "OK", "OR", "CT", "MA", "WA", "AZ", "GA", "OH", "PA", "NC"]
)  # fmt: skip
FIRST_NAMES = (
    "Mary", "Patricia", "Linda", "Barbara", "Elizabeth", "Jennifer", "Maria", "Susan", "Margaret",
    "Dorothy", "Helen", "Sandra", "Donna", "Carol", "Ruth", "James", "John", "Robert", "Michael",
    "William", "David", "Richard", "Charles", "Joseph", "Thomas", "Daniel", "Paul", "George",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Clark", "Nguyen", "O'Neil",
)  # fmt: skip
CARRIERS = ("Humana", "Aetna", "UnitedHealthcare", "Cigna", "Mutual of Omaha", "")
PLANS = ("Medigap G", "Medigap N", "Medicare Advantage", "Part D", "")


def make_contacts(organizations: list[Organization], count: int, rng: random.Random):
    """Unsaved contacts: birth dates 1940-1959 (some Feb 29), effective dates 1995-2025."""
    for n in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        birth = date(1940, 1, 1) + timedelta(days=rng.randrange(20 * 365))
        if rng.random() < 0.01:
            birth = date(rng.choice((1944, 1948, 1952, 1956)), 2, 29)
        effective = date(1995, 1, 1) + timedelta(days=rng.randrange(30 * 365))
        yield Contact(
            organization=organizations[n % len(organizations)],
            external_id=f"D{n + 1:05d}",
            first_name=first,
            last_name=last,
            email=f"{first}.{last}.{n + 1}@example.com".lower(),
            phone=f"555-{rng.randrange(1000):03d}-{rng.randrange(10000):04d}",
            state=rng.choice(STATES),
            zip_code=f"{rng.randrange(10000, 99999)}",
            birth_date=None if rng.random() < 0.05 else birth,
            effective_date=None if rng.random() < 0.1 else effective,
            carrier=rng.choice(CARRIERS),
            plan_type=rng.choice(PLANS),
        )


def make_subscriptions(contacts: list[Contact], rng: random.Random):
    """Unsaved subscriptions to the migration's topics: most contacts opted into calendar,
    some into approval or everything; a few opted out of announce or of everything."""
    topics = {
        topic.name: topic
        for topic in Topic.objects.filter(name__in=["calendar", "approval", "announce"])
    }
    subscribed, unsubscribed = Subscription.Status.SUBSCRIBED, Subscription.Status.UNSUBSCRIBED
    choices = [
        ("calendar", subscribed, 0.6),
        ("approval", subscribed, 0.25),
        ("*", subscribed, 0.03),
        ("announce", unsubscribed, 0.08),
        ("calendar", unsubscribed, 0.03),
        ("*", unsubscribed, 0.02),
    ]
    for contact in contacts:
        for name, status, share in choices:
            if rng.random() < share and (name == "*" or name in topics):
                yield Subscription(contact=contact, topic=topics.get(name), status=status)


def load_demo() -> str:
    """Create the demo contacts unless there are contacts already; return one line saying what."""
    if Contact.objects.exists():
        return f"scheduler: contacts already there; {load_brief_demo()}"
    rng = random.Random(1)
    with transaction.atomic():
        organizations = [Organization.objects.create(name=name) for name in ORGANIZATIONS]
        Contact.objects.bulk_create(make_contacts(organizations, CONTACTS, rng), batch_size=1000)
        # Their own generator, so the contacts stay the same as before topics existed.
        contacts = list(Contact.objects.order_by("id"))
        Subscription.objects.bulk_create(
            make_subscriptions(contacts, random.Random(2)), batch_size=1000
        )
        job = engine.launch("schedule_emails", {}, source=Job.Source.SCHEDULE)
    return (
        f"scheduler: {len(organizations)} organizations, {CONTACTS:,} contacts with topic "
        f"subscriptions; "
        f"schedule_emails job #{job.pk} planning (the workers run it); {load_brief_demo()}"
    )


# Staff users who own the demo organizations, and their brief preferences:
# (username, organizations, time zone, time, frequency, day of week, email).
BRIEF_OWNERS = (
    ("dana", ORGANIZATIONS[:2], "America/New_York", time(7, 0), "daily", 0, True),
    ("lee", ORGANIZATIONS[2:], "America/Los_Angeles", time(8, 30), "weekly", 0, False),
)


def load_brief_demo() -> str:
    """Owners with brief preferences (superusers own every demo organization), unless there
    are preferences already; the hourly run (`make run` starts it) makes their briefs."""
    if BriefPreference.objects.exists():
        return "briefs: preferences already there"
    User = get_user_model()
    organizations = {o.name: o for o in Organization.objects.filter(name__in=ORGANIZATIONS)}
    with transaction.atomic():
        for username, owned, zone, at, frequency, day, email in BRIEF_OWNERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"email": f"{username}@example.com", "is_staff": True},
            )
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            user.owned_organizations.add(*(organizations[n] for n in owned if n in organizations))
            BriefPreference.objects.create(
                user=user,
                timezone=zone,
                time_of_day=at,
                frequency=frequency,
                day_of_week=day,
                email_enabled=email,
            )
        for admin in User.objects.filter(is_superuser=True):
            admin.owned_organizations.add(*organizations.values())
            BriefPreference.objects.get_or_create(user=admin, defaults={"email_enabled": False})
    return f"briefs: {len(BRIEF_OWNERS)} owners with brief preferences"
