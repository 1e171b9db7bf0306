"""Admin of ingestion's dead letters (the records that could not be counted, and their re-processing) and of
the deferral rule table that classifies deferrals' SMTP replies.

Re-processing calls `webhooks.ingest.reprocess_dead_letters`, the same function as any other caller, so
that a dead letter is counted at most once however it is retried.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.utils.html import format_html
from django.utils.translation import ngettext

from domains.admin import LargeTablePaginator, SuperuserOnlyAdmin, TenantListFilter, TenantScopedAdmin

from .models import DeadLetter, DeferralRule


class PendingFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("pending", "Pending"), ("processed", "Processed")]

    def queryset(self, request, queryset):
        if self.value() == "pending":
            return queryset.filter(processed_at__isnull=True)
        if self.value() == "processed":
            return queryset.filter(processed_at__isnull=False)
        return queryset


@admin.register(DeadLetter)
class DeadLetterAdmin(TenantScopedAdmin):
    list_display = ("received_at", "tenant", "source", "reason", "ip_address", "short_error", "processed_at")
    list_select_related = ("tenant",)
    list_filter = (PendingFilter, TenantListFilter, "reason", "source")
    search_fields = ("=ip_address", "error", "event_key")
    date_hierarchy = "received_at"
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # "Show counts" would COUNT every filter option
    paginator = LargeTablePaginator
    list_per_page = 100
    actions = ("reprocess",)
    fields = (
        "tenant",
        "source",
        "reason",
        "error",
        "ip_address",
        "event_key",
        "received_at",
        "processed_at",
        "raw_pretty",
    )
    readonly_fields = fields

    @admin.display(description="error")
    def short_error(self, letter) -> str:
        return letter.error if len(letter.error) <= 100 else letter.error[:99] + "…"

    @admin.display(description="record")
    def raw_pretty(self, letter):
        return format_html("<pre>{}</pre>", json.dumps(letter.raw, indent=2, sort_keys=True, ensure_ascii=False))

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Viewable, and the re-process action needs "change"; the record itself is never edited.
        return super().has_change_permission(request, obj) if obj is None else False

    @admin.action(description="Re-process (count those whose IP is now known)", permissions=["reprocess"])
    def reprocess(self, request, queryset):
        from warmup.counters import CounterStoreUnavailable

        from .ingest import reprocess_dead_letters

        try:
            counted, pending = reprocess_dead_letters(queryset.filter(processed_at__isnull=True))
        except CounterStoreUnavailable as exc:
            self.message_user(
                request, f"Nothing was re-processed: the counter store is unavailable ({exc}).", messages.ERROR
            )
            return
        self.message_user(
            request,
            ngettext("%(count)d dead letter counted", "%(count)d dead letters counted", counted) % {"count": counted}
            + ngettext("; %(count)d still pending.", "; %(count)d still pending.", pending) % {"count": pending},
            messages.SUCCESS if counted else messages.INFO,
        )

    def has_reprocess_permission(self, request) -> bool:
        return super().has_change_permission(request)


@admin.register(DeferralRule)
class DeferralRuleAdmin(SuperuserOnlyAdmin):
    """The whole table on one page, edited in place: a few dozen rules at most. The rules classify every
    tenant's deferrals, so, like MTA sources, they are the installation's: superusers only."""

    list_display = ("order", "provider", "pattern", "classification", "enabled", "short_note")
    list_display_links = ("short_note",)
    list_editable = ("order", "provider", "pattern", "classification", "enabled")
    list_filter = ("provider", "classification", "enabled")
    search_fields = ("pattern", "note")
    list_per_page = 200
    fields = ("order", "provider", "pattern", "classification", "enabled", "note")

    @admin.display(description="note")
    def short_note(self, rule) -> str:
        return rule.note if len(rule.note) <= 80 else rule.note[:79] + "…"
