"""Medicare email scheduling rules: which emails a contact gets, and on which dates.

The contract is specs/medicare-rules.md. Everything here is a pure function of
(contact, today, position): no Django, no database, no clock, so the CSV preview, the database
run and the tests share one implementation.

compute_emails() runs once per contact over runs of hundreds of thousands of contacts and must
reach 50,000 contacts/s on one core. So it works on date ordinals (ints) against tables built once
per run date (_calendar), and it hands out shared, immutable Email objects built once per distinct
email (_birthday_email and friends) instead of formatting reasons for every contact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from operator import attrgetter

EMAIL_TYPES = ("aep", "birthday", "effective_date", "post_window")
YEAR_ROUND_STATES = frozenset({"CT", "MA", "NY", "WA"})
# The 50 states, DC and the territories PR, GU, VI, AS, MP.
_STATE_CODES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR GU VI AS MP"
)
STATES = frozenset(_STATE_CODES.split())

HORIZON_DAYS = 365  # today .. today + 364, both inclusive
BIRTHDAY_LEAD_DAYS = 14
EFFECTIVE_LEAD_DAYS = 30
BLOCK_LEAD_DAYS = 60  # a blocked period starts this long before its rule window
BIRTHDAY_SPACING_DAYS = 60  # a birthday email this close to an AEP/effective email is dropped
AEP_WEEKS = ((8, 18), (8, 25), (9, 1), (9, 7))  # (month, day) of weeks 1..4

# Run dates ("today") the rules take. Any real run is well inside; the bounds keep every date
# the rules compute from it (a year ahead, and windows around that) a real date.
FIRST_RUN_DATE = date(2000, 1, 1)
LAST_RUN_DATE = date(2099, 12, 31)

# [0-9] rather than \d: \d also matches non-ASCII digits, which date() would then accept.
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_US_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")


@dataclass(frozen=True, slots=True)
class _Window:
    anchor: str  # "birthday", "birth_month" (first day of the birth month) or "effective_date"
    before: int  # rule window starts this many days before the anchor
    after: int  # and ends this many days after it
    max_age: int | None = None  # only for birthdays on which the contact reaches at most this age


WINDOWS = {
    "CA": _Window("birthday", 30, 60),
    "ID": _Window("birthday", 0, 63),
    "IL": _Window("birthday", 0, 45, max_age=76),
    "KY": _Window("birthday", 0, 60),
    "LA": _Window("birthday", 30, 63),
    "MD": _Window("birthday", 0, 31),
    "NV": _Window("birth_month", 0, 60),
    "OK": _Window("birthday", 0, 60),
    "OR": _Window("birthday", 0, 31),
    "MO": _Window("effective_date", 30, 33),
}


class RuleError(ValueError):
    """A contact field the rules cannot use; str(err) names the field and the bad value."""

    def __init__(self, field: str, value: object, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


@dataclass(frozen=True, slots=True)
class ContactData:
    """A validated contact, as parse_contact() returns it."""

    state: str
    birth_date: date | None
    effective_date: date | None


@dataclass(frozen=True, slots=True)
class BlockedPeriod:
    """A state rule window extended 60 days earlier; no email is sent inside it."""

    state: str
    anchor: str
    start: date
    end: date
    window_start: date
    window_end: date

    @property
    def label(self) -> str:
        anchor = self.anchor.replace("_", "-")
        return f"{self.state} {anchor} window {self.start}..{self.end}"


@dataclass(frozen=True, slots=True)
class Email:
    """One scheduled email; reason says which rule produced it."""

    type: str
    date: date
    reason: str


# Parsing ----------------------------------------------------------------------------------------


def parse_state(value: str | None) -> str:
    """Return the upper-case two-letter state code, or raise RuleError(field="state")."""
    text = value.strip() if isinstance(value, str) else value
    if text is None or text == "":
        raise RuleError("state", value, "state: missing (use a two-letter US state code)")
    # isascii(): str.upper() maps some non-ASCII letters to ASCII ones ("ſc" -> "SC").
    if not isinstance(text, str) or not text.isascii() or text.upper() not in STATES:
        raise RuleError("state", value, f"state: {text!r} is not a US state code")
    return text.upper()


def check_run_date(today: date) -> date:
    """The run date if the rules take it (FIRST_RUN_DATE..LAST_RUN_DATE), else RuleError.

    Checked before a run or preview starts: 9999-12-31 used to fail every contact with
    "year 10000 is out of range" instead.
    """
    if not FIRST_RUN_DATE <= today <= LAST_RUN_DATE:
        raise RuleError(
            "today",
            today,
            f"the run date {today} is outside {FIRST_RUN_DATE}..{LAST_RUN_DATE}",
        )
    return today


def parse_date(value: str | date | None, field: str) -> date | None:
    """Return the date in ISO YYYY-MM-DD or US M/D/YYYY, None when missing, else RuleError.

    Already-parsed dates pass through, so callers can hand over database values unchanged.
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if value is None:
        return None
    if not isinstance(value, str):
        raise RuleError(field, value, f"{field}: {value!r} is not a date")
    text = value.strip()
    if not text:
        return None
    if match := _ISO_DATE.fullmatch(text):
        year, month, day = match.groups()
    elif match := _US_DATE.fullmatch(text):
        month, day, year = match.groups()
    if match:
        try:
            return date(int(year), int(month), int(day))
        except ValueError:
            pass  # an impossible date such as 2023-02-29
    raise RuleError(field, value, f"{field}: {text!r} is not a date (use YYYY-MM-DD or M/D/YYYY)")


def parse_contact(
    state: str | None,
    birth_date: str | date | None,
    effective_date: str | date | None,
    today: date,
) -> ContactData:
    """Validate raw contact fields (strings, dates or None) into a ContactData or RuleError.

    Contacts in year-round states are validated too: a bad row is reported whatever its state.
    A birth date of today is accepted; only later ones are errors.
    """
    code = parse_state(state)
    birth = parse_date(birth_date, "birth_date")
    if birth is not None and birth > today:
        shown = birth_date.strip() if isinstance(birth_date, str) else birth.isoformat()
        raise RuleError("birth_date", birth_date, f"birth_date: {shown!r} is after today ({today})")
    return ContactData(code, birth, parse_date(effective_date, "effective_date"))


def is_eligible(contact: ContactData) -> bool:
    """Whether the contact takes part in a run: a valid state that is not a year-round one.

    Only eligible contacts get AEP positions (see preview()).
    """
    return contact.state in STATES and contact.state not in YEAR_ROUND_STATES


# Per run date tables ----------------------------------------------------------------------------


def _anniversary(month: int, day: int, year: int) -> int:
    """Ordinal of the (month, day) anniversary in year; Feb 29 is Feb 28 in non-leap years."""
    try:
        return date(year, month, day).toordinal()
    except ValueError:  # Feb 29 of a non-leap year
        return date(year, 2, 28).toordinal()


@dataclass(frozen=True, slots=True)
class _Calendar:
    """What compute_emails() needs about one run date, computed once per date."""

    first: int  # horizon start (today) as an ordinal
    last: int  # horizon end (today + 364) as an ordinal
    years: tuple[int, ...]  # anniversary years: today.year - 1 .. today.year + 2
    # anniversaries[month * 32 + day] = ordinal of that anniversary in each of `years`
    anniversaries: tuple[tuple[int, ...], ...]
    # aep[assigned week index] = for each AEP year, (ordinal, Email) of the weeks inside the
    # horizon in the order they are tried
    aep: tuple[tuple[tuple[tuple[int, Email], ...], ...], ...]


@lru_cache(maxsize=16)
def _calendar(today_ordinal: int) -> _Calendar:
    today = date.fromordinal(today_ordinal)
    first, last = today_ordinal, today_ordinal + HORIZON_DAYS - 1
    years = tuple(range(today.year - 1, today.year + 3))
    anniversaries = [()] * (13 * 32)
    for month in range(1, 13):
        for day in range(1, 32):
            try:
                date(2000, month, day)  # a leap year, so Feb 29 is included
            except ValueError:
                continue
            anniversaries[month * 32 + day] = tuple(_anniversary(month, day, y) for y in years)
    aep = []
    for assigned in range(4):
        order = [assigned] + [week for week in range(4) if week != assigned]
        per_year = []
        for year in (today.year, today.year + 1):
            assigned_day = date(year, *AEP_WEEKS[assigned]).toordinal()
            # The spec leaves the reason open; a fallback from an assigned week inside the
            # horizon can only mean it was blocked.
            why = "blocked" if first <= assigned_day <= last else "outside the horizon"
            candidates = []
            for week in order:
                day = date(year, *AEP_WEEKS[week]).toordinal()
                if first <= day <= last:
                    candidates.append((day, _aep_email(year, week, assigned, why)))
            per_year.append(tuple(candidates))
        aep.append(tuple(per_year))
    return _Calendar(first, last, years, tuple(anniversaries), tuple(aep))


# Emails are immutable and depend only on these arguments, so contacts share them: AEP emails
# through _calendar(), the others through lru_cache.


def _aep_email(year: int, week: int, assigned: int, why: str) -> Email:
    day = date(year, *AEP_WEEKS[week])
    if week == assigned:
        reason = f"AEP week {week + 1} of {year} (assigned week {week + 1})"
    else:
        reason = f"AEP week {week + 1} of {year} (fallback: assigned week {assigned + 1} {why})"
    return Email("aep", day, reason)


@lru_cache(maxsize=8192)
def _birthday_email(anniversary: int) -> Email:
    day = date.fromordinal(anniversary - BIRTHDAY_LEAD_DAYS)
    reason = f"birthday {date.fromordinal(anniversary)} - {BIRTHDAY_LEAD_DAYS} days"
    return Email("birthday", day, reason)


@lru_cache(maxsize=8192)
def _effective_email(anniversary: int) -> Email:
    day = date.fromordinal(anniversary - EFFECTIVE_LEAD_DAYS)
    reason = (
        f"effective-date anniversary {date.fromordinal(anniversary)} - {EFFECTIVE_LEAD_DAYS} days"
    )
    return Email("effective_date", day, reason)


@lru_cache(maxsize=16384)
def _post_window_email(state: str, start: int, end: int) -> Email:
    period = _blocked_period(state, start, end)
    return Email("post_window", date.fromordinal(end + 1), f"post-window after {period.label}")


# Blocked periods --------------------------------------------------------------------------------


def _blocked_spans(
    contact: ContactData, window: _Window, calendar: _Calendar
) -> list[tuple[int, int]]:
    """(start, end) ordinals of the contact's blocked periods, one per anniversary year."""
    if window.anchor == "effective_date":
        source = contact.effective_date
        first_year = source.year if source else 0  # the effective date itself counts
    else:
        # NV's birth-month anchor follows the birthday rule too: the spec does not say, and the
        # month of birth itself is no anniversary.
        source = contact.birth_date
        first_year = source.year + 1 if source else 0
    if source is None:
        return []
    day = 1 if window.anchor == "birth_month" else source.day
    anchors = calendar.anniversaries[source.month * 32 + day]
    start_offset = window.before + BLOCK_LEAD_DAYS
    spans = []
    for year, anchor in zip(calendar.years, anchors, strict=True):
        # IL: the age reached on a birthday is its year minus the birth year.
        too_old = window.max_age is not None and year - source.year > window.max_age
        if year >= first_year and not too_old:
            spans.append((anchor - start_offset, anchor + window.after))
    return spans


def _blocked_period(state: str, start: int, end: int) -> BlockedPeriod:
    return BlockedPeriod(
        state=state,
        anchor=WINDOWS[state].anchor,
        start=date.fromordinal(start),
        end=date.fromordinal(end),
        window_start=date.fromordinal(start + BLOCK_LEAD_DAYS),
        window_end=date.fromordinal(end),
    )


def blocked_periods(contact: ContactData, today: date) -> list[BlockedPeriod]:
    """The contact's blocked periods for anniversary years today.year - 1 .. today.year + 2.

    Empty for states without a rule window and when the window's anchor date is missing.
    """
    window = WINDOWS.get(contact.state)
    if window is None:
        return []
    spans = _blocked_spans(contact, window, _calendar(today.toordinal()))
    return [_blocked_period(contact.state, start, end) for start, end in spans]


def _is_blocked(day: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= day <= end for start, end in spans)


def _far_from_all(day: int, others: list[int]) -> bool:
    return all(abs(day - other) >= BIRTHDAY_SPACING_DAYS for other in others)


# The list of emails -----------------------------------------------------------------------------

_SORT_KEY = attrgetter("date", "type")


def compute_emails(contact: ContactData, today: date, position: int) -> list[Email]:
    """The contact's emails dated inside the horizon (today .. today + 364), sorted by (date, type).

    position is the contact's 0-based index among the run's eligible contacts; it picks the AEP
    week. Emails inside a blocked period are suppressed, never moved.

    1. effective_date: each effective-date anniversary - 30 days that is not blocked.
    2. aep: for this year and next, the assigned week (position mod 4), else weeks 1, 2, 3, 4:
       the first one inside the horizon and not blocked.
    3. birthday: each birthday anniversary - 14 days that is not blocked and at least 60 days
       away from every email of steps 1-2 (a birthday email too close is dropped, not moved).
    4. post_window: the day after each blocked period ends.
    5. Sort by date, then type name.
    """
    state = contact.state
    if state in YEAR_ROUND_STATES:
        return []
    calendar = _calendar(today.toordinal())
    first, last = calendar.first, calendar.last
    window = WINDOWS.get(state)
    spans = _blocked_spans(contact, window, calendar) if window else None
    emails = []
    taken = []  # ordinals of the step 1-2 emails, for the 60-day birthday rule

    effective = contact.effective_date
    if effective is not None:
        anchors = calendar.anniversaries[effective.month * 32 + effective.day]
        for year, anniversary in zip(calendar.years, anchors, strict=True):
            day = anniversary - EFFECTIVE_LEAD_DAYS
            if day > last:
                break
            if day >= first and year >= effective.year and not (spans and _is_blocked(day, spans)):
                emails.append(_effective_email(anniversary))
                taken.append(day)

    for candidates in calendar.aep[position % 4]:
        for day, email in candidates:
            if not (spans and _is_blocked(day, spans)):
                emails.append(email)
                taken.append(day)
                break

    birth = contact.birth_date
    if birth is not None:
        anchors = calendar.anniversaries[birth.month * 32 + birth.day]
        for year, anniversary in zip(calendar.years, anchors, strict=True):
            day = anniversary - BIRTHDAY_LEAD_DAYS
            if day > last:
                break
            if (
                day >= first
                and year > birth.year
                and not (spans and _is_blocked(day, spans))
                and _far_from_all(day, taken)
            ):
                emails.append(_birthday_email(anniversary))

    if spans:
        for start, end in spans:
            if first <= end + 1 <= last:
                emails.append(_post_window_email(state, start, end))

    if len(emails) > 1:
        emails.sort(key=_SORT_KEY)
    return emails


# Batches ----------------------------------------------------------------------------------------


def preview(rows: Iterable[Mapping[str, str]], today: date) -> Iterator[dict]:
    """One result per row, in input order: {"id", "emails": [{"type", "date"}]} or {"id", "error"}.

    A row's error never stops the others. AEP positions count eligible rows only, in input order.
    """
    position = 0
    for row in rows:
        try:
            contact = parse_contact(
                row.get("state"), row.get("birth_date"), row.get("effective_date"), today
            )
        except RuleError as err:
            yield {"id": row.get("id"), "error": str(err)}
            continue
        emails = []
        if is_eligible(contact):
            emails = compute_emails(contact, today, position)
            position += 1
        yield {
            "id": row.get("id"),
            "emails": [{"type": e.type, "date": e.date.isoformat()} for e in emails],
        }
