"""Forms of the Medicare outreach: job parameters, contact filters, the CSV upload."""

from __future__ import annotations

from datetime import date

from django import forms
from django.conf import settings
from django.utils import timezone

from scheduler_app import rules
from scheduler_app.models import ContactImport, Organization

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
