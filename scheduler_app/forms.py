"""Forms of the Medicare outreach: job parameters, contact filters, the CSV upload."""

from __future__ import annotations

from datetime import date, datetime

from django import forms
from django.conf import settings
from django.utils import timezone

from scheduler_app import rules
from scheduler_app.models import BriefPreference, ContactImport, Mailing, Organization

MAX_ID = 2**63 - 1  # PostgreSQL bigint


def parse_id_list(text: str) -> list[int]:
    """Comma- or space-separated ids -> sorted unique ints; ValidationError names a bad one.

    Only ASCII digits: str.isdigit() also takes "²", which int() refuses.
    """
    ids = set()
    for part in text.replace(",", " ").split():
        if not (part.isascii() and part.isdigit() and len(part) <= 19 and int(part) <= MAX_ID):
            shown = part if len(part) <= 30 else part[:27] + "..."
            raise forms.ValidationError(f"{shown!r} is not a contact id")
        ids.add(int(part))
    return sorted(ids)


class OrganizationField(forms.ModelChoiceField):
    """An organization chosen by name (the dashboard's select, or `--param organization=NAME`)."""

    def __init__(self, **kwargs):
        super().__init__(
            Organization.objects.all(),
            to_field_name="name",
            required=False,
            empty_label="all organizations",
            error_messages={"invalid_choice": "there is no organization named %(value)r"},
            **kwargs,
        )


class ScheduleForm(forms.Form):
    organization = OrganizationField(help_text="Only this organization's contacts.")
    today = forms.DateField(
        required=False,
        label="Run date",
        initial=timezone.localdate,
        help_text="Emails are scheduled from this date for 365 days. Default: today.",
    )
    contact_ids = forms.CharField(
        required=False,
        label="Contact ids",
        help_text="Only these contacts (comma-separated ids). Empty: all.",
    )

    def clean_organization(self) -> str:
        organization = self.cleaned_data["organization"]
        return organization.name if organization else ""

    def clean_today(self) -> date:
        today = self.cleaned_data["today"] or timezone.localdate()
        try:
            return rules.check_run_date(today)
        except rules.RuleError as err:
            raise forms.ValidationError(str(err)) from None

    def clean_contact_ids(self) -> str:
        ids = parse_id_list(self.cleaned_data["contact_ids"])
        return ",".join(map(str, ids))


class SendForm(forms.Form):
    on_or_before = forms.DateField(
        required=False,
        label="Due on or before",
        initial=timezone.localdate,
        help_text="Send pending emails dated on or before this day. Default: today.",
    )
    organization = OrganizationField(help_text="Only this organization's emails.")

    def clean_on_or_before(self) -> date:
        return self.cleaned_data["on_or_before"] or timezone.localdate()

    def clean_organization(self) -> str:
        organization = self.cleaned_data["organization"]
        return organization.name if organization else ""


class ContactFilterForm(forms.Form):
    """The contacts list's search and filters; an invalid choice is ignored, not reported."""

    q = forms.CharField(required=False, label="Search", max_length=100)
    organization = forms.ModelChoiceField(
        Organization.objects.all(), required=False, empty_label="any organization"
    )
    state = forms.ChoiceField(required=False)

    def __init__(self, data=None):
        super().__init__(data)
        self.fields["q"].widget.attrs.update(type="search", placeholder="Name or email")
        self.fields["state"].choices = [("", "any state")] + [(s, s) for s in sorted(rules.STATES)]

    def filter(self, contacts):
        if not self.is_valid():
            return contacts
        data = self.cleaned_data
        contacts = contacts.search(data["q"])
        if data["organization"]:
            contacts = contacts.filter(organization=data["organization"])
        if data["state"]:
            contacts = contacts.filter(state=data["state"])
        return contacts


class OverviewFilterForm(forms.Form):
    """The schedule overview's organization filter."""

    organization = forms.ModelChoiceField(
        Organization.objects.all(), required=False, empty_label="all organizations"
    )


class ContactImportForm(forms.Form):
    file = forms.FileField(label="CSV file", help_text="UTF-8 CSV with a header row.")
    organization = forms.CharField(
        required=False,
        max_length=200,
        help_text="Organization of every row; empty: the file's organization column.",
    )

    def __init__(self, data=None, files=None, *, too_large: bool = False):
        super().__init__(data, files)
        # project.uploads dropped a body over MAX_UPLOAD_MB: clean_file() says so, rather
        # than "this field is required".
        self.too_large = too_large
        self.fields["file"].required = not too_large

    def clean_file(self):
        """The upload as text: strictly UTF-8 (a BOM is fine).

        Its size was checked before it was stored (project.uploads), against MAX_UPLOAD_MB.
        """
        if self.too_large:
            raise forms.ValidationError(too_large_message())
        upload = self.cleaned_data["file"]
        data = upload.read()
        try:
            self.cleaned_data["text"] = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise forms.ValidationError(
                f"The file is not UTF-8 text (byte 0x{data[err.start]:02x} at position "
                f'{err.start}). Save it as "CSV UTF-8" and upload it again.'
            ) from None
        return upload


def too_large_message() -> str:
    """The Import page's error for a body over MAX_UPLOAD_MB (refused by project.uploads)."""
    return (
        f"The file is larger than the limit of {settings.MAX_UPLOAD_MB} MB; "
        "import it with `manage.py import_contacts` instead."
    )


class ImportJobForm(forms.Form):
    """The parameters of an import job: the upload it imports (see ImportContactsKind)."""

    contact_import = forms.ModelChoiceField(ContactImport.objects.all())


# -- Topic recipients ------------------------------------------------------------------------

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


class DryRunField(forms.Field):
    """A yes/no that is yes unless said otherwise: radio buttons on the dashboard (dry run
    preselected), `--param dry_run=false` on the command line."""

    widget = forms.RadioSelect(
        choices=[
            ("true", "Dry run: show the recipients, send nothing"),
            ("false", "Send to every recipient"),
        ]
    )

    def __init__(self, **kwargs):
        super().__init__(required=False, initial="true", **kwargs)

    def to_python(self, value) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value or "").strip().lower()
        if not text or text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise forms.ValidationError(f"{text[:30]!r} is not true or false")


class GatherRecipientsForm(forms.Form):
    """The parameters of gather_recipients; the sending ones matter when dry_run is false.

    Organization and topic names are not checked here: an unknown or archived one fails
    its organization's item with the reason, while the others go on.
    """

    topic = forms.CharField(max_length=50, help_text="e.g. calendar, announce or approval.")
    organizations = forms.CharField(
        required=False,
        help_text="Comma-separated organization names. Empty: every active organization.",
    )
    dry_run = DryRunField(label="Mode")
    kind = forms.ChoiceField(
        required=False,
        choices=[("invite", "invite (with a calendar invite)"), ("announcement", "announcement")],
        initial="invite",
    )
    title = forms.CharField(required=False, max_length=200, help_text="The email's subject.")
    starts_at = forms.CharField(
        required=False,
        label="Starts at",
        help_text="ISO 8601 with its offset, e.g. 2026-12-01T15:00:00+01:00.",
    )
    duration_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=7 * 24 * 60, initial=60, label="Duration (minutes)"
    )
    organizer = forms.EmailField(
        required=False, help_text="Its address in the invite. Default: the sender address."
    )

    def clean_topic(self) -> str:
        return self.cleaned_data["topic"].strip().lower()

    def clean_organizations(self) -> str:
        names = [n.strip() for n in self.cleaned_data["organizations"].split(",") if n.strip()]
        return ",".join(dict.fromkeys(names))

    def clean_title(self) -> str:
        # One line: it is the subject and the event's summary.
        return " ".join(self.cleaned_data["title"].split())

    def clean_starts_at(self) -> str:
        text = self.cleaned_data["starts_at"].strip()
        if not text:
            return ""
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise forms.ValidationError(
                f"{text[:40]!r} is not an ISO 8601 date and time, e.g. 2026-12-01T15:00:00+01:00"
            ) from None
        if value.tzinfo is None:
            raise forms.ValidationError(f"{text[:40]!r} has no offset; add one, e.g. +01:00 or Z")
        return value.isoformat()

    def clean(self) -> dict:
        data = super().clean()
        everyone = "organizations" in data and not data["organizations"]
        if everyone and not Organization.objects.active().exists():
            self.add_error("organizations", "there is no active organization")
        if data.get("dry_run", True) or self.errors:
            return data
        data["kind"] = data.get("kind") or "invite"
        if not data.get("title"):
            self.add_error("title", "a send needs a title")
        if data["kind"] == "invite":
            if not data.get("starts_at"):
                self.add_error("starts_at", "an invite needs its start")
            data["duration_minutes"] = data.get("duration_minutes") or 60
            data["organizer"] = data.get("organizer") or settings.DEFAULT_FROM_EMAIL
        if not self.errors:
            self.check_same_mailing(data)
        return data

    def check_same_mailing(self, data: dict) -> None:
        """A mailing run again must be the same: its identity finds the earlier deliveries."""
        start = datetime.fromisoformat(data["starts_at"]) if data.get("starts_at") else None
        earlier = Mailing.objects.filter(
            topic__name=data["topic"], title=data["title"], starts_at=start
        ).first()
        if earlier is None:
            return
        for name in ("kind", "duration_minutes", "organizer"):
            was, now = getattr(earlier, name), data.get(name)
            if (was or None) != (now or None):
                self.add_error(
                    name,
                    f"this {earlier.kind} was sent before with {name} {was!r}; keep it, or "
                    "change the title or start to send a new one",
                )


class BriefsForm(forms.Form):
    """The parameters of a `daily_briefs` job launched by hand (the scheduler names its users)."""

    users = forms.CharField(
        required=False,
        help_text="Usernames, comma-separated. Empty: every user with an active preference.",
    )
    brief_date = forms.DateField(
        required=False,
        label="Day",
        help_text="The briefs' day. Default: today in each user's zone.",
    )

    def clean_users(self) -> str:
        from django.contrib.auth import get_user_model

        names = sorted({n.strip() for n in self.cleaned_data["users"].split(",") if n.strip()})
        User = get_user_model()
        known = set(
            User.objects.filter(**{f"{User.USERNAME_FIELD}__in": names}).values_list(
                User.USERNAME_FIELD, flat=True
            )
        )
        unknown = [n for n in names if n not in known]
        if unknown:
            raise forms.ValidationError(f"no user named {', '.join(map(repr, unknown[:5]))}")
        return ",".join(names)


class BriefPreferenceForm(forms.ModelForm):
    """A user's own brief settings (the Briefs page)."""

    class Meta:
        model = BriefPreference
        fields = ["active", "frequency", "day_of_week", "time_of_day", "timezone", "email_enabled"]
        widgets = {"time_of_day": forms.TimeInput(attrs={"type": "time"}, format="%H:%M")}
        labels = {
            "active": "Send me briefs",
            "day_of_week": "Day (weekly briefs)",
            "time_of_day": "Time",
            "timezone": "Time zone",
            "email_enabled": "Also email them to me",
        }
