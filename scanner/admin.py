from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html

from project import engine
from project.models import Job
from scanner.models import Conversation, ExtractionResult, MailboxUpload, Message, Shipment


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["sent_at", "sender_name", "sender_address", "subject"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "source", "last_message_at", "scan_state", "scanned_at"]
    list_filter = ["source", "scan_state"]
    search_fields = ["subject", "external_id"]
    readonly_fields = ["created_at", "scanned_at", "scanned_through", "scan_error"]
    inlines = [MessageInline]
    actions = ["rescan"]

    def has_launch_permission(self, request) -> bool:
        return request.user.has_perm("project.add_job")

    @admin.action(description="Rescan selected conversations", permissions=["launch"])
    def rescan(self, request, queryset):
        job = engine.launch(
            "scan_conversations",
            {"source": "selection", "rescan": True},
            keys=[str(pk) for pk in queryset.order_by("pk").values_list("pk", flat=True)],
            source=Job.Source.ADMIN,
            user=request.user,
        )
        self.message_user(
            request,
            format_html(
                'Rescanning {} conversations: <a href="{}">job #{}</a>.',
                job.total,
                job.get_absolute_url(),
                job.pk,
            ),
            messages.SUCCESS,
        )


@admin.register(Shipment)
class ShipmentAdmin(admin.ModelAdmin):
    list_display = [
        "tracking_number",
        "carrier",
        "po_number",
        "supplier",
        "shipped_date",
        "checksum_valid",
        "first_seen",
    ]
    list_filter = ["carrier", "checksum_valid"]
    list_select_related = ["conversation"]
    search_fields = ["tracking_number", "po_number", "supplier"]
    raw_id_fields = ["conversation", "job"]


@admin.register(ExtractionResult)
class ExtractionResultAdmin(admin.ModelAdmin):
    list_display = [
        "conversation",
        "job",
        "extractor",
        "model",
        "llm_skipped",
        "error",
        "created_at",
    ]
    list_filter = ["extractor", "llm_skipped"]
    list_select_related = ["conversation", "job"]
    raw_id_fields = ["conversation", "job", "shipments"]
    readonly_fields = ["created_at"]


@admin.register(MailboxUpload)
class MailboxUploadAdmin(admin.ModelAdmin):
    list_display = ["name", "size", "uploaded_by", "created_at"]
    exclude = ["data"]
    readonly_fields = ["name", "size", "uploaded_by", "created_at"]
