"""Properties of the Medicare scheduling rules that hold for any contact, run date and position.

compute_emails() is tuned for speed (date ordinals, per-date tables, shared Email objects), so
besides the invariants these tests compare it with reference_emails(), a slow, literal reading
of specs/medicare-rules.md written with plain date arithmetic.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scheduler_app.rules import (
    STATES,
    YEAR_ROUND_STATES,
    ContactData,
    RuleError,
    blocked_periods,
    compute_emails,
    parse_contact,
    parse_date,
    parse_state,
    preview,
)

# The spec's state table, restated here rather than imported so a typo in one shows up.
SPEC_WINDOWS = {
    # state: (anchor, days before, days after, max age)
    "CA": ("birthday", 30, 60, None),
    "ID": ("birthday", 0, 63, None),
    "IL": ("birthday", 0, 45, 76),
    "KY": ("birthday", 0, 60, None),
    "LA": ("birthday", 30, 63, None),
    "MD": ("birthday", 0, 31, None),
    "NV": ("birth_month", 0, 60, None),
    "OK": ("birthday", 0, 60, None),
    "OR": ("birthday", 0, 31, None),
    "MO": ("effective_date", 30, 33, None),
}
AEP_WEEKS = ((8, 18), (8, 25), (9, 1), (9, 7))
DAY = timedelta(days=1)


def anniversary(day: date, year: int) -> date:
    if (day.month, day.day) == (2, 29) and not (year % 4 == 0 and (year % 100 or year % 400 == 0)):
        return date(year, 2, 28)
    return day.replace(year=year)


def reference_periods(contact: ContactData, years: range) -> list[tuple[date, date]]:
    """Blocked periods as (start, end), one per anniversary year in years."""
    if contact.state not in SPEC_WINDOWS:
        return []
    anchor_kind, before, after, max_age = SPEC_WINDOWS[contact.state]
    source = contact.effective_date if anchor_kind == "effective_date" else contact.birth_date
    if source is None:
        return []
    if anchor_kind == "birth_month":
        source = source.replace(day=1)
    periods = []
    for year in years:
        if anchor_kind == "effective_date":
            exists = year >= source.year
        else:
            exists = year > source.year
            if max_age is not None and year - source.year > max_age:
                exists = False
        if exists:
            anchor = anniversary(source, year)
            start = anchor - timedelta(days=before + 60)
            periods.append((start, anchor + timedelta(days=after)))
    return periods


def reference_emails(contact: ContactData, today: date, position: int) -> list[tuple[str, date]]:
    if contact.state in YEAR_ROUND_STATES:
        return []
    last = today + timedelta(days=364)
    # More years than the spec's today.year - 1 .. today.year + 2, to show those are enough.
    periods = reference_periods(contact, range(today.year - 3, today.year + 4))

    def allowed(day):
        return today <= day <= last and not any(start <= day <= end for start, end in periods)

    emails = []
    if contact.effective_date:
        for year in range(contact.effective_date.year, today.year + 4):
            day = anniversary(contact.effective_date, year) - timedelta(days=30)
            if allowed(day):
                emails.append(("effective_date", day))
    for year in (today.year, today.year + 1):
        assigned = position % 4
        for week in [assigned, 0, 1, 2, 3]:
            day = date(year, *AEP_WEEKS[week])
            if allowed(day):
                emails.append(("aep", day))
                break
    if contact.birth_date:
        for year in range(contact.birth_date.year + 1, today.year + 4):
            day = anniversary(contact.birth_date, year) - timedelta(days=14)
            if allowed(day) and all(abs((day - other).days) >= 60 for _, other in emails):
                emails.append(("birthday", day))
    for _, end in periods:
        if today <= end + DAY <= last:
            emails.append(("post_window", end + DAY))
    return sorted(emails, key=lambda email: (email[1], email[0]))


@st.composite
def contacts(draw, states: frozenset[str] | None = None):
    """(contact, today, position), with Feb 29s and windowed states well represented."""
    today = draw(st.dates(date(1995, 1, 1), date(2040, 12, 31)))
    if states is None:
        state = draw(st.sampled_from(sorted(SPEC_WINDOWS)) | st.sampled_from(sorted(STATES)))
    else:
        state = draw(st.sampled_from(sorted(states)))
    leap_day = st.sampled_from([date(y, 2, 29) for y in range(1932, 1996, 4)])
    birth = draw(
        st.none() | st.dates(date(1920, 1, 1), today) | leap_day.filter(lambda b: b <= today)
    )
    effective = draw(st.none() | st.dates(date(1965, 1, 1), date(2045, 12, 31)))
    position = draw(st.integers(0, 10_000))
    return ContactData(state, birth, effective), today, position


@settings(max_examples=500)
@given(contacts())
def test_it_agrees_with_a_literal_reading_of_the_spec(case):
    contact, today, position = case

    emails = [(e.type, e.date) for e in compute_emails(contact, today, position)]

    assert emails == reference_emails(contact, today, position)


@settings(max_examples=300)
@given(contacts())
def test_blocked_periods_agree_with_a_literal_reading_of_the_spec(case):
    contact, today, _ = case

    periods = blocked_periods(contact, today)

    assert [(p.start, p.end) for p in periods] == reference_periods(
        contact, range(today.year - 1, today.year + 3)
    )
    assert all(p.window_start - p.start == timedelta(days=60) for p in periods)
    assert all(p.window_end == p.end for p in periods)


@given(contacts())
def test_every_email_is_inside_the_horizon(case):
    contact, today, position = case

    for email in compute_emails(contact, today, position):
        assert today <= email.date <= today + timedelta(days=364)


@given(contacts())
def test_no_email_lands_in_a_blocked_period_and_post_window_follows_one(case):
    contact, today, position = case
    periods = blocked_periods(contact, today)

    for email in compute_emails(contact, today, position):
        if email.type == "post_window":
            assert email.date - DAY in {p.end for p in periods}
        else:
            assert not any(p.start <= email.date <= p.end for p in periods)


@given(contacts())
def test_there_is_at_most_one_email_per_type_and_year(case):
    contact, today, position = case

    emails = compute_emails(contact, today, position)

    counts = Counter((email.type, email.date.year) for email in emails)
    assert max(counts.values(), default=0) <= 1


@given(contacts())
def test_birthday_emails_keep_60_days_from_aep_and_effective_date_emails(case):
    contact, today, position = case

    emails = compute_emails(contact, today, position)

    others = [e.date for e in emails if e.type in ("aep", "effective_date")]
    for email in emails:
        if email.type == "birthday":
            assert all(abs((email.date - other).days) >= 60 for other in others)


@given(contacts(), st.dates(date(1995, 1, 1), date(2040, 12, 31)))
def test_output_is_deterministic_and_sorted(case, other_today):
    contact, today, position = case

    first = compute_emails(contact, today, position)
    compute_emails(contact, other_today, position + 1)  # no state carried between calls
    second = compute_emails(contact, today, position)

    assert first == second
    assert first == sorted(first, key=lambda email: (email.date, email.type))


@given(contacts(states=YEAR_ROUND_STATES))
def test_year_round_states_get_no_email(case):
    contact, today, position = case

    assert compute_emails(contact, today, position) == []


@given(st.integers(0, 10_000), st.dates(date(1995, 1, 1), date(2040, 12, 31)))
def test_aep_weeks_are_balanced_across_any_run_length(count, today):
    assume(today.month < 8)  # all four weeks of this year are inside the horizon
    weeks = Counter(
        compute_emails(ContactData("TX", None, None), today, position)[0].date
        for position in range(count % 40)
    )

    assert max(weeks.values(), default=0) - min(weeks.values(), default=0) <= 1


# Parsers -----------------------------------------------------------------------------------------

date_like = st.from_regex(r"\A *[0-9]{1,4}[-/][0-9]{1,2}[-/][0-9]{1,4} *\Z")


@given(st.none() | st.text(max_size=8))
def test_parse_state_returns_a_state_or_raises_rule_error(value):
    try:
        code = parse_state(value)
    except RuleError as err:
        assert err.field == "state"
        assert str(err).startswith("state: ")
    else:
        assert code in STATES


@given(st.none() | st.text() | date_like, st.sampled_from(["birth_date", "effective_date"]))
def test_parse_date_returns_a_date_or_none_or_raises_rule_error(value, field):
    try:
        parsed = parse_date(value, field)
    except RuleError as err:
        assert err.field == field
        assert str(err).startswith(f"{field}: {value.strip()!r}")
    else:
        assert parsed is None or isinstance(parsed, date)


@given(st.dates())
def test_parse_date_reads_back_both_formats(day):
    assert parse_date(day.isoformat(), "birth_date") == day
    assert parse_date(f" {day.month}/{day.day}/{day.year:04d} ", "birth_date") == day


@given(
    st.none() | st.text(max_size=4) | st.sampled_from(sorted(STATES)),
    st.none() | st.text() | date_like,
    st.none() | st.text() | date_like,
    st.dates(date(1995, 1, 1), date(2040, 12, 31)),
)
def test_parse_contact_returns_a_contact_or_raises_rule_error(state, birth, effective, today):
    try:
        contact = parse_contact(state, birth, effective, today)
    except RuleError as err:
        assert err.field in ("state", "birth_date", "effective_date")
        assert str(err).startswith(f"{err.field}: ")
    else:
        assert contact.birth_date is None or contact.birth_date <= today


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": st.text(max_size=3),
                "state": st.text(max_size=3) | st.sampled_from(sorted(STATES)),
                "birth_date": st.text(max_size=10) | date_like,
                "effective_date": st.text(max_size=10) | date_like,
            }
        ),
        max_size=10,
    ),
    st.dates(date(1995, 1, 1), date(2040, 12, 31)),
)
def test_preview_answers_every_row_without_raising(rows, today):
    results = list(preview(rows, today))

    assert [result["id"] for result in results] == [row["id"] for row in rows]
    assert all(("emails" in result) != ("error" in result) for result in results)
