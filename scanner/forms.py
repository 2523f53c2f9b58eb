"""Forms of the inbox scanner: list filters and the mailbox upload."""

from __future__ import annotations

import zipfile

from django import forms
from django.conf import settings

from scanner.models import Conversation, Shipment


class ConversationFilterForm(forms.Form):
    """The conversations list's search and filter; an invalid choice is ignored."""

    q = forms.CharField(required=False, label="Search", max_length=100)
    state = forms.ChoiceField(
        required=False,
        label="Scan state",
        choices=[("", "any state"), ("due", "due for a scan"), *Conversation.ScanState.choices],
    )

    def __init__(self, data=None):
        super().__init__(data)
        self.fields["q"].widget.attrs.update(
            type="search", placeholder="Subject, id or tracking number"
        )

    def filter(self, conversations):
        if not self.is_valid():
            return conversations
        conversations = conversations.search(self.cleaned_data["q"])
        state = self.cleaned_data["state"]
        if state == "due":
            return conversations.needing_scan()
        if state:
            return conversations.filter(scan_state=state)
        return conversations


class ShipmentFilterForm(forms.Form):
    """The shipments list's filters (also applied to its CSV download)."""

    carrier = forms.ChoiceField(
        required=False, choices=[("", "any carrier"), *Shipment.Carrier.choices]
    )
    supplier = forms.CharField(required=False, max_length=200)
    since = forms.DateField(required=False, label="Found since")
    until = forms.DateField(required=False, label="Found until")
    job = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, data=None):
        super().__init__(data)
        self.fields["supplier"].widget.attrs.update(placeholder="Supplier name")
        for name in ("since", "until"):
            self.fields[name].widget.input_type = "date"

    def filter(self, shipments):
        if not self.is_valid():
            return shipments
        data = self.cleaned_data
        if data["carrier"]:
            shipments = shipments.filter(carrier=data["carrier"])
        if data["supplier"].strip():
            shipments = shipments.filter(supplier__icontains=data["supplier"].strip())
        if data["since"]:
            shipments = shipments.filter(first_seen__date__gte=data["since"])
        if data["until"]:
            shipments = shipments.filter(first_seen__date__lte=data["until"])
        if data["job"]:
            shipments = shipments.filter(job_id=data["job"])
        return shipments


class MailboxUploadForm(forms.Form):
    file = forms.FileField(label="Mailbox", help_text="An .mbox file, or a .zip of .eml files.")
    rescan = forms.BooleanField(
        required=False, help_text="Scan conversations again even when nothing is new."
    )

    def __init__(self, data=None, files=None, *, too_large: bool = False):
        super().__init__(data, files)
        self.too_large = too_large
        self.fields["file"].required = not too_large

    def clean_file(self):
        if self.too_large:
            raise forms.ValidationError(
                f"The file is larger than the limit of {settings.MAX_UPLOAD_MB} MB; copy it to "
                "the workers and scan it with `manage.py run_job scan_conversations "
                "--param source=mailbox:PATH`."
            )
        upload = self.cleaned_data["file"]
        name = upload.name.lower()
        if name.endswith(".zip"):
            if not zipfile.is_zipfile(upload):
                raise forms.ValidationError("This .zip file cannot be opened.")
            upload.seek(0)
        elif not name.endswith((".mbox", ".mbx")):
            raise forms.ValidationError("Upload an .mbox file or a .zip of .eml files.")
        return upload
