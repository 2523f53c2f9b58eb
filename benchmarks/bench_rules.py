"""Measure compute_emails() throughput on one core: python benchmarks/bench_rules.py [--contacts N].

The issue requires at least 50,000 contacts/s. Contacts are synthetic but varied (every state,
windowed ones over-represented, some dates missing, Feb 29 birthdays) and generated from a fixed
seed, so two runs measure the same work.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler_app.rules import (  # noqa: E402 (needs the sys.path line above)
    STATES,
    WINDOWS,
    ContactData,
    compute_emails,
    is_eligible,
)

TODAY = date(2025, 3, 1)


def make_contacts(count: int) -> list[ContactData]:
    """count contacts from random.Random(42): a third in windowed states, 1 in 10 without dates."""
    rng = random.Random(42)
    states = sorted(STATES)
    windowed = sorted(WINDOWS)
    birth_start, effective_start = date(1930, 1, 1), date(1990, 1, 1)
    contacts = []
    for _ in range(count):
        state = rng.choice(windowed) if rng.random() < 0.35 else rng.choice(states)
        birth = birth_start + timedelta(days=rng.randrange(365 * 30))
        if rng.random() < 0.01:
            birth = date(rng.choice((1940, 1944, 1948, 1952)), 2, 29)
        effective = effective_start + timedelta(days=rng.randrange(365 * 36))
        contacts.append(
            ContactData(
                state=state,
                birth_date=None if rng.random() < 0.1 else birth,
                effective_date=None if rng.random() < 0.1 else effective,
            )
        )
    return contacts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=200_000)
    args = parser.parse_args()

    contacts = make_contacts(args.contacts)
    eligible = [contact for contact in contacts if is_eligible(contact)]
    started = time.perf_counter()
    emails = 0
    for position, contact in enumerate(eligible):
        emails += len(compute_emails(contact, TODAY, position))
    elapsed = time.perf_counter() - started

    print(f"{len(eligible):,} eligible contacts of {len(contacts):,}, today {TODAY}")
    print(f"{len(eligible) / elapsed:,.0f} contacts/s, {emails / elapsed:,.0f} emails/s")
    print(f"({elapsed:.2f} s, {emails:,} emails, {elapsed / len(eligible) * 1e6:.1f} us/contact)")


if __name__ == "__main__":
    main()
