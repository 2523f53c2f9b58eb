"""Pages of the inbox scanner: conversations, one conversation, shipments, a mailbox upload.

Permissions: conversations need scanner.view_conversation, shipments scanner.view_shipment,
uploading a mailbox to scan needs project.add_job and scanner.view_conversation (its job
page lists conversations). The lists' results are partials (`#results`) that htmx swaps
as the search and filters change.
"""

from __future__ import annotations

import csv
import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from project import engine
from project.models import Job
from scanner.forms import ConversationFilterForm, MailboxUploadForm, ShipmentFilterForm
from scanner.models import EXPORT_FIELDS, Conversation, MailboxUpload, Shipment, csv_row
from scheduler_app.views import too_large

PER_PAGE = 50


def _get_conversation(conversation_id: int) -> Conversation:
    """The conversation, or 404. Anyone who may view conversations may view every one."""
    return get_object_or_404(Conversation, pk=conversation_id)


def _partial(request: HttpRequest, template: str) -> str:
    if request.htmx and not request.htmx.history_restore_request:
        return template + "#results"
    return template


@login_required
@permission_required("scanner.view_conversation", raise_exception=True)
def conversations(request: HttpRequest) -> HttpResponse:
    form = ConversationFilterForm(request.GET)
    found = form.filter(Conversation.objects.all())
    page = Paginator(found, PER_PAGE).get_page(request.GET.get("page"))
    context = {"form": form, "page": page, "upload_form": MailboxUploadForm()}
    return render(request, _partial(request, "scanner/conversation_list.html"), context)


@login_required
@permission_required("scanner.view_conversation", raise_exception=True)
def conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _get_conversation(conversation_id)
    extractions = list(conversation.extractions.select_related("job").prefetch_related("shipments"))
    numbers = sorted(
        {s.tracking_number for e in extractions for s in e.shipments.all()}
        | set(conversation.shipments.values_list("tracking_number", flat=True))
    )
    context = {
        "conversation": conversation,
        "messages_": conversation.messages.all(),
        "numbers": numbers,
        "shipments": Shipment.objects.filter(tracking_number__in=numbers).select_related(
            "conversation", "job"
        ),
        "extractions": [
            (e, json.dumps(e.output, indent=2) if e.output is not None else "") for e in extractions
        ],
    }
    return render(request, "scanner/conversation_detail.html", context)


@login_required
@permission_required("scanner.view_shipment", raise_exception=True)
def shipments(request: HttpRequest) -> HttpResponse:
    form = ShipmentFilterForm(request.GET)
    found = form.filter(Shipment.objects.select_related("conversation", "job"))
    if request.GET.get("format") == "csv":
        return shipments_csv(found)
    page = Paginator(found, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request, _partial(request, "scanner/shipment_list.html"), {"form": form, "page": page}
    )


def shipments_csv(shipments) -> HttpResponse:
    """The export's rows (Shipment.as_row), the same columns as `export_shipments`."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="shipments.csv"'
    writer = csv.DictWriter(response, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for shipment in shipments.iterator(chunk_size=2000):
        writer.writerow(csv_row(shipment.as_row()))
    return response


@login_required
@permission_required(["project.add_job", "scanner.view_conversation"], raise_exception=True)
def mailbox_upload(request: HttpRequest) -> HttpResponse:
    """Store an uploaded mailbox and launch the scan of it; redirect to the job."""
    posted = request.method == "POST"
    form = MailboxUploadForm(
        request.POST if posted else None,
        request.FILES if posted else None,
        too_large=posted and bool(request.FILES is not None and too_large(request)),
    )
    if posted and form.is_valid():
        upload = form.cleaned_data["file"]
        data = upload.read()
        with transaction.atomic():
            stored = MailboxUpload.objects.create(
                name=upload.name[:255], data=data, size=len(data), uploaded_by=request.user
            )
            job = engine.launch(
                "scan_conversations",
                {"source": f"upload:{stored.pk}", "rescan": form.cleaned_data["rescan"]},
                source=Job.Source.DASHBOARD,
                user=request.user,
            )
        messages.success(request, f"Scanning {stored.name}.")
        return redirect(job)
    status = 400 if form.errors else 200
    return render(request, "scanner/mailbox_upload.html", {"form": form}, status=status)
