"""The scanner's pages, admin action and export command."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from project.models import Job
from scanner.models import Conversation, ExtractionResult, MailboxUpload, Message, Shipment
from tests import mailgen


def grant(user: User, *codenames: str) -> User:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=user.pk)  # a fresh object: permissions are cached


@pytest.fixture
def found(db):
    """A scanned conversation with one shipment; its message carries markup."""
    conversation = Conversation.objects.create(
        source="mailbox",
        external_id="root-1@acme.example",
        subject="PO 4500 shipped",
        scan_state=Conversation.ScanState.SCANNED,
        scanned_at=timezone.now(),
    )
    Message.objects.create(
        conversation=conversation,
        external_id="root-1@acme.example",
        sender_name="Dana",
        sender_address="dana@acme.example",
        subject="PO 4500 shipped",
        body="<script>alert(1)</script> Tracking: 1Z 999 AA1 0123456784",
    )
    shipment = Shipment.objects.create(
        tracking_number="1Z999AA10123456784",
        carrier="ups",
        po_number="=HYPERLINK(1)",
        supplier="Acme",
        checksum_valid=True,
        confidence=0.9,
        conversation=conversation,
    )
    extraction = ExtractionResult.objects.create(
        conversation=conversation, extractor="rules", output={"supplier": "Acme"}
    )
    extraction.shipments.add(shipment)
    return conversation


@pytest.mark.parametrize(
    "url", ["/inbox/", "/shipments/", "/inbox/upload/", "/shipments/?format=csv"]
)
def test_scanner_pages_need_login_and_permission(client, viewer, url):
    assert client.get(url).status_code == 302
    client.force_login(viewer)
    assert client.get(url).status_code == 403


def test_the_conversation_page_marks_tracking_numbers_and_escapes_the_mail(client, viewer, found):
    client.force_login(grant(viewer, "view_conversation"))
    page = client.get(found.get_absolute_url()).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert '<mark class="tracking">1Z 999 AA1 0123456784</mark>' in page


def test_the_conversations_list_filters_by_scan_state_and_tracking_number(client, viewer, found):
    Conversation.objects.create(source="mailbox", external_id="other", subject="Invoice")
    client.force_login(grant(viewer, "view_conversation"))
    due = client.get("/inbox/", {"state": "due"}).content.decode()
    assert "Invoice" in due and "PO 4500 shipped" not in due
    by_number = client.get("/inbox/", {"q": "1z999aa1"}, headers={"HX-Request": "true"})
    assert "PO 4500 shipped" in by_number.content.decode()
    assert "<html" not in by_number.content.decode()  # htmx gets the results only


def test_the_shipments_csv_download_has_the_export_columns(client, viewer, found):
    client.force_login(grant(viewer, "view_shipment"))
    response = client.get("/shipments/", {"format": "csv", "carrier": "ups"})
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [
        {
            "tracking_number": "1Z999AA10123456784",
            "carrier": "ups",
            "po_number": "'=HYPERLINK(1)",  # never a formula in a spreadsheet
            "supplier": "Acme",
            "shipped_date": "",
            "confidence": "0.9",
            "checksum_valid": "true",
            "conversation": "root-1@acme.example",
        }
    ]
    assert client.get("/shipments/", {"format": "csv", "carrier": "dhl"}).content.count(b"\n") == 1


def test_export_shipments_prints_one_json_array(found, capsys):
    call_command("export_shipments", "--format", "json")
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["tracking_number"] == "1Z999AA10123456784"
    assert rows[0]["checksum_valid"] is True
    assert rows[0]["conversation"] == "root-1@acme.example"


def test_uploading_a_mailbox_launches_a_scan_of_it(client, operator, tmp_path):
    client.force_login(grant(operator, "view_conversation"))
    path = tmp_path / "up.mbox"
    mailgen.write_mbox(path, conversations=3, seed=2)
    upload = SimpleUploadedFile("up.mbox", path.read_bytes())
    response = client.post("/inbox/upload/", {"file": upload})
    job = Job.objects.get(kind="scan_conversations")
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    stored = MailboxUpload.objects.get()
    assert job.params["source"] == f"upload:{stored.pk}"
    assert bytes(stored.data) == path.read_bytes()


def test_an_upload_that_is_no_mailbox_is_refused(client, operator):
    client.force_login(grant(operator, "view_conversation"))
    upload = SimpleUploadedFile("contacts.csv", b"id,name\n1,a\n")
    response = client.post("/inbox/upload/", {"file": upload})
    assert response.status_code == 400
    assert "Upload an .mbox file or a .zip of .eml files." in response.content.decode()
    assert not Job.objects.exists()


def test_the_admin_rescans_selected_conversations(admin_client, found):
    response = admin_client.post(
        reverse("admin:scanner_conversation_changelist"),
        {"action": "rescan", "_selected_action": [found.pk]},
    )
    assert response.status_code == 302
    job = Job.objects.get(kind="scan_conversations")
    assert job.params == {"source": "selection", "rescan": True, "extractor": "auto"}
    assert list(job.items.values_list("key", flat=True)) == [str(found.pk)]
