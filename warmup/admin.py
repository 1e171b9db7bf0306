"""Admin of the warmup: IPs with their live figures, plans (timeline, charts, actions), daily stats,
audit events, alerts and schedules.

Every changelist is tenant-scoped (`domains.admin.TenantScopedAdmin`) and runs a fixed number of queries
whatever the page size: related rows come with `list_select_related`, last-day rates with subqueries,
today's sent with one counter-store round trip per page. Actions call `warmup.engine.perform_many`.
The daily stats' date hierarchy is bounded by the first and last date shown instead of Django's
DISTINCT scans of a million rows (`BoundedDateHierarchyChangeList`).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, FloatField, OuterRef, Subquery, Value
from django.db.models.functions import Cast, Coalesce, NullIf
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from domains.admin import LargeTablePaginator, TenantListFilter, TenantScopedAdmin
from domains.models import IP

from . import admin_views
from .forms import PlanActionForm, WarmupScheduleForm
from .models import Alert, AuditEvent, DailyStat, ProviderShare, ProviderSuspension, WarmupPlan, WarmupSchedule

UNAVAILABLE = "unavailable"


def rate_expression(part: str, whole: str):
    """SQL for `warmup.models.rate`: part / whole x 100, 0 when whole is 0."""
    return Coalesce(
        Cast(part, FloatField()) * Value(100.0) / NullIf(Cast(whole, FloatField()), Value(0.0)),
        Value(0.0),
        output_field=FloatField(),
    )


def format_rate(value: float | None, threshold: float):
    """A rate in percent, highlighted when over its threshold; a dash when there is no figure."""
    if value is None:
        return "-"
    text = f"{value:.2f}%"
    if value > threshold:
        return format_html('<span class="wp-over" title="above the {}% threshold">{}</span>', threshold, text)
    return text


# --- Plan actions ----------------------------------------------------------------------------------

_DONE = {
    "pause": "paused",
    "resume": "resumed",
    "rollback": "rolled back",
    "advance": "advanced",
    "complete": "completed",
    "cancel": "cancelled",
}


def run_plan_action(modeladmin: admin.ModelAdmin, request, plans, action: str) -> None:
    """Apply one engine action to the given plans and report what was done and what was refused."""
    from .engine import perform_many

    reason = (request.POST.get("reason") or "").strip()
    if action == "pause" and not reason:
        modeladmin.message_user(
            request, "Type a reason in the Reason box to pause: it is recorded with the pause.", messages.ERROR
        )
        return
    plans = plans.select_related("ip__tenant", "ip__domain")
    done, refused = perform_many(plans, action, user=request.user, reason=reason)
    modeladmin.message_user(
        request,
        ngettext("%(count)d plan %(done)s.", "%(count)d plans %(done)s.", done)
        % {"count": done, "done": _DONE[action]},
        messages.SUCCESS if done else messages.INFO,
    )
    if refused:
        details = "; ".join(f"{plan.ip.address}: {why}" for plan, why in refused[:10])
        more = f" (and {len(refused) - 10} more)" if len(refused) > 10 else ""
        modeladmin.message_user(
            request,
            ngettext("%(count)d plan was not %(done)s: ", "%(count)d plans were not %(done)s: ", len(refused))
            % {"count": len(refused), "done": _DONE[action]}
            + details
            + more,
            messages.WARNING,
        )


class PlanActionsMixin:
    """The six manual actions, for any admin that can turn its selection into plans (`plans_of`)."""

    action_form = PlanActionForm

    class Media:
        # The action bar's reason box, the compact IP list and the plan page's charts are styled there.
        css = {"all": ("warmup/admin.css",)}

    def plans_of(self, queryset):
        return queryset

    def _act(self, request, queryset, action: str) -> None:
        run_plan_action(self, request, self.plans_of(queryset), action)

    @admin.action(description="Pause (with the reason typed in the box)", permissions=["change"])
    def pause_plans(self, request, queryset):
        self._act(request, queryset, "pause")

    @admin.action(description="Resume", permissions=["change"])
    def resume_plans(self, request, queryset):
        self._act(request, queryset, "resume")

    @admin.action(description="Roll back one phase", permissions=["change"])
    def rollback_plans(self, request, queryset):
        self._act(request, queryset, "rollback")

    @admin.action(description="Advance one phase", permissions=["change"])
    def advance_plans(self, request, queryset):
        self._act(request, queryset, "advance")

    @admin.action(description="Complete now (IP active at full quota)", permissions=["change"])
    def complete_plans(self, request, queryset):
        self._act(request, queryset, "complete")

    @admin.action(description="Cancel the warmup", permissions=["change"])
    def cancel_plans(self, request, queryset):
        self._act(request, queryset, "cancel")

    actions = ("pause_plans", "resume_plans", "rollback_plans", "advance_plans", "complete_plans", "cancel_plans")


# --- IPs -------------------------------------------------------------------------------------------


class IPChangeList(ChangeList):
    """Adds today's live sent to the page's IPs, read from the counter store in one round trip."""

    def get_results(self, request):
        super().get_results(request)
        ips = list(self.result_list)  # evaluates the page once; the template reuses these objects
        sent = admin_views.live_sent_today(ips)
        for ip in ips:
            ip.sent_today = None if sent is None else sent.get(ip.pk, 0)


class PlanPhaseFilter(admin.SimpleListFilter):
    title = "plan phase"
    parameter_name = "phase"

    def lookups(self, request, model_admin):
        return [*WarmupPlan.Phase.choices, ("none", "No plan")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.filter(plan__isnull=True)
        if self.value():
            return queryset.filter(plan__phase=self.value())
        return queryset


@admin.register(IP)
class IPAdmin(PlanActionsMixin, TenantScopedAdmin):
    list_display = (
        "address",
        "domain",
        "tenant",
        "status",
        "phase",
        "daily_quota",
        "sent_today_display",
        "remaining_today",
        "bounce_rate_display",
        "complaint_rate_display",
        "weight",
    )
    list_select_related = ("domain", "tenant", "plan")
    list_filter = (TenantListFilter, "status", PlanPhaseFilter)
    search_fields = ("address", "domain__name", "hostname")
    autocomplete_fields = ("domain",)
    list_per_page = 100
    readonly_fields = ("plan_link",)
    fields = ("tenant", "domain", "address", "hostname", "mta_source_name", "status", "weight", "plan_link")

    def get_changelist(self, request, **kwargs):
        return IPChangeList

    def get_queryset(self, request):
        # The newest consolidated day of each IP, read by subqueries on (ip, date) rather than per row.
        last_day = DailyStat.objects.filter(ip=OuterRef("pk")).order_by("-date")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_bounce_rate=Subquery(
                    last_day.annotate(r=rate_expression("bounced", "sent")).values("r")[:1], output_field=FloatField()
                ),
                last_complaint_rate=Subquery(
                    last_day.annotate(r=rate_expression("complaints", "delivered")).values("r")[:1],
                    output_field=FloatField(),
                ),
            )
        )

    def get_readonly_fields(self, request, obj=None):
        # An IP stays with its tenant: moving it would hand its history to another tenant.
        return ("tenant", "plan_link") if obj is not None else ("plan_link",)

    def plans_of(self, queryset):
        return WarmupPlan.objects.filter(ip__in=queryset.values("pk"))

    @admin.display(description="phase", ordering="plan__phase")
    def phase(self, ip) -> str:
        plan = _plan_of(ip)
        return plan.get_phase_display() if plan else "-"

    # Short headings: eleven columns must fit beside the filters at a laptop's width.
    @admin.display(description="quota")
    def daily_quota(self, ip) -> int:
        from .engine import ip_daily_quota

        return ip_daily_quota(ip)

    @admin.display(description="sent today")
    def sent_today_display(self, ip):
        sent = getattr(ip, "sent_today", None)
        return UNAVAILABLE if sent is None else sent

    @admin.display(description="left")
    def remaining_today(self, ip):
        sent = getattr(ip, "sent_today", None)
        return UNAVAILABLE if sent is None else max(0, self.daily_quota(ip) - sent)

    @admin.display(description="bounce %", ordering="last_bounce_rate")
    def bounce_rate_display(self, ip):
        return format_rate(ip.last_bounce_rate, settings.WARMUP_MAX_BOUNCE_RATE)

    @admin.display(description="compl. %", ordering="last_complaint_rate")
    def complaint_rate_display(self, ip):
        return format_rate(ip.last_complaint_rate, settings.WARMUP_MAX_SPAM_RATE)

    @admin.display(description="warmup plan")
    def plan_link(self, ip):
        plan = _plan_of(ip)
        if plan is None:
            return "-"
        url = reverse("admin:warmup_warmupplan_change", args=[plan.pk])
        return format_html('<a href="{}">{}, {}</a>', url, plan.get_phase_display(), plan.get_status_display())


def _plan_of(ip) -> WarmupPlan | None:
    try:
        return ip.plan
    except WarmupPlan.DoesNotExist:
        return None


# --- Plans -----------------------------------------------------------------------------------------


class AuditEventInline(admin.TabularInline):
    """The plan's timeline, newest first, read-only: only the engine writes it."""

    model = AuditEvent
    fields = ("created_at", "date", "kind", "phase_change", "status_change", "figures", "reason", "actor")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    extra = 0
    can_delete = False
    verbose_name_plural = "timeline"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor")

    @admin.display(description="phase")
    def phase_change(self, event) -> str:
        return _change(event.from_phase, event.to_phase)

    @admin.display(description="status")
    def status_change(self, event) -> str:
        return _change(event.from_status, event.to_status)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def _change(before: str, after: str) -> str:
    if before and after and before != after:
        return f"{before} → {after}"
    return after or before or "-"


class NeedsAttentionFilter(admin.SimpleListFilter):
    title = "needs attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [("yes", "Yes (paused, waiting for a person)"), ("no", "No")]

    def queryset(self, request, queryset):
        waiting = {"status": WarmupPlan.Status.PAUSED, "paused_until__isnull": True}
        if self.value() == "yes":
            return queryset.filter(**waiting)
        if self.value() == "no":
            return queryset.exclude(**waiting)
        return queryset


@admin.register(WarmupPlan)
class WarmupPlanAdmin(PlanActionsMixin, TenantScopedAdmin):
    list_display = ("ip", "domain", "tenant", "phase", "status", "quota", "start_date", "needs_attention")
    list_select_related = ("ip__tenant", "ip__domain")
    list_filter = (TenantListFilter, "status", "phase", NeedsAttentionFilter)
    search_fields = ("ip__address", "ip__domain__name", "ip__hostname")
    date_hierarchy = "start_date"
    list_per_page = 100
    inlines = (AuditEventInline,)
    # The engine owns a plan's state: changes go through the actions so that each is audited.
    readonly_fields = (
        "ip",
        "schedule",
        "steps",
        "phase_days",
        "phase",
        "status",
        "start_date",
        "phase_day_count",
        "last_ticked_date",
        "window_start_date",
        "paused_until",
        "pause_reason",
        "auto_pause_count",
        "completed_on",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("ip", "schedule", "steps", "phase_days", "start_date")}),
        ("State", {"fields": ("status", "phase", "phase_day_count", "last_ticked_date", "window_start_date")}),
        ("Pause", {"fields": ("paused_until", "pause_reason", "auto_pause_count")}),
        (None, {"fields": ("completed_on", "created_at", "updated_at")}),
    )

    @admin.display(description="domain", ordering="ip__domain__name")
    def domain(self, plan):
        return plan.ip.domain

    @admin.display(description="tenant", ordering="ip__tenant__name")
    def tenant(self, plan):
        return plan.ip.tenant

    @admin.display(description="daily quota")
    def quota(self, plan) -> int:
        return plan.daily_quota

    @admin.display(description="needs attention", boolean=True)
    def needs_attention(self, plan) -> bool:
        return plan.needs_attention

    def has_add_permission(self, request) -> bool:
        # Plans are created with their domain and IP ("Add domain with IP").
        return False

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["plan_chart"] = admin_views.plan_chart_data(obj)
            context["plan_providers"] = admin_views.plan_providers(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)


# --- Daily stats -----------------------------------------------------------------------------------


def _next_month(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


class BoundedDateHierarchyChangeList(ChangeList):
    """A changelist whose date hierarchy is built from the first and last date shown, not DISTINCT scans.

    Django's date hierarchy lists the years, months or days that have rows with
    `SELECT DISTINCT DATE_TRUNC(...)` over every row of the level: the whole table on the first page,
    a month's worth of rows once a month is picked (over 300 ms at a million daily stats). Here the
    first and last date of the filtered rows (two index probes, `_date_bounds`) bound the level, and
    the years, months or days between the bounds are generated. The drill-down and its links are
    Django's own (same parameters, same template); a period inside the bounds that has no row is
    offered too and simply shows an empty page. `admin/warmup/dailystat/change_list.html` renders it.
    """

    def date_hierarchy_drilldown(self) -> dict:
        """The context of `admin/date_hierarchy.html`: `show`, `back` and `choices`, as Django builds it."""
        field_name = self.date_hierarchy
        year_field, month_field, day_field = (f"{field_name}__{part}" for part in ("year", "month", "day"))
        year, month, day = (self.params.get(name) for name in (year_field, month_field, day_field))

        def link(filters: dict) -> str:
            return self.get_query_string(filters, [f"{field_name}__"])

        if year and month and day:
            # The deepest level lists only the chosen day: nothing to query.
            chosen = date(int(year), int(month), int(day))
            return {
                "show": True,
                "back": {
                    "link": link({year_field: year, month_field: month}),
                    "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT")),
                },
                "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}],
            }

        first, last = self._date_bounds()
        if first is None:  # nothing in the chosen period (or at all): Django's empty level
            if year and month:
                back = {"link": link({year_field: year}), "title": str(year)}
            else:
                back = {"link": link({}), "title": _("All dates")} if year else None
            return {"show": True, "back": back, "choices": []}
        if not year and first.year == last.year:
            # Django's starting level: one year (or one month) of rows opens on its months (or days).
            year = first.year
            if first.month == last.month:
                month = first.month

        if year and month:
            days = (first + timedelta(days=n) for n in range((last - first).days + 1))
            return {
                "show": True,
                "back": {"link": link({year_field: year}), "title": str(year)},
                "choices": [
                    {
                        "link": link({year_field: year, month_field: month, day_field: d.day}),
                        "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                    }
                    for d in days
                ],
            }
        if year:
            months = []
            current = first.replace(day=1)
            while current <= last:
                months.append(current)
                current = _next_month(current)
            return {
                "show": True,
                "back": {"link": link({}), "title": _("All dates")},
                "choices": [
                    {
                        "link": link({year_field: year, month_field: m.month}),
                        "title": capfirst(formats.date_format(m, "YEAR_MONTH_FORMAT")),
                    }
                    for m in months
                ],
            }
        return {
            "show": True,
            "back": None,
            "choices": [
                {"link": link({year_field: str(y)}), "title": str(y)} for y in range(first.year, last.year + 1)
            ],
        }

    def _date_bounds(self) -> tuple[date | None, date | None]:
        """First and last date of the rows the page shows (filters, search and the chosen period applied).

        Two `ORDER BY date LIMIT 1` rather than one `MIN(), MAX()`: PostgreSQL reads MIN/MAX from the
        index only for a single table, and a tenant filter or a member's scope joins the IPs, which would
        turn MIN/MAX into a scan of every matching row; the ordered reads stop at the first match.
        """
        field = self.date_hierarchy
        rows = self.queryset.filter(**{f"{field}__isnull": False}).values_list(field, flat=True)
        first, last = rows.order_by(field).first(), rows.order_by(f"-{field}").first()
        if isinstance(first, datetime):  # a DateTimeField: its local dates, as Django's hierarchy shows
            first, last = (timezone.localtime(v).date() if timezone.is_aware(v) else v.date() for v in (first, last))
        return first, last


@admin.register(DailyStat)
class DailyStatAdmin(TenantScopedAdmin):
    list_display = (
        "date",
        "ip",
        "tenant",
        "sent",
        "delivered",
        "bounced",
        "bounce_rate_display",
        "complaints",
        "complaint_rate_display",
        "deferred",
        "opens",
        "clicks",
    )
    list_select_related = ("ip__tenant",)
    list_filter = (TenantListFilter,)
    date_hierarchy = "date"
    search_fields = ("=ip__address",)
    raw_id_fields = ("ip",)
    # A million rows: no full COUNT for the "x results" line nor for the pages.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # "Show counts" would COUNT every filter option
    paginator = LargeTablePaginator
    list_per_page = 100

    def get_changelist(self, request, **kwargs):
        return BoundedDateHierarchyChangeList

    def action_checkbox(self, obj):
        # Django's markup, without rendering the checkbox widget's template for each of the page's 100 rows
        # (about a fifth of the list's rendering time).
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            obj.pk,
            format_html(_("Select this object for an action - {}"), str(obj)),
        )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                bounce_rate_sql=rate_expression("bounced", "sent"),
                complaint_rate_sql=rate_expression("complaints", "delivered"),
            )
        )

    @admin.display(description="tenant", ordering="ip__tenant__name")
    def tenant(self, stat):
        return stat.ip.tenant

    @admin.display(description="bounce %", ordering="bounce_rate_sql")
    def bounce_rate_display(self, stat):
        return format_rate(stat.bounce_rate, settings.WARMUP_MAX_BOUNCE_RATE)

    @admin.display(description="complaint %", ordering="complaint_rate_sql")
    def complaint_rate_display(self, stat):
        return format_rate(stat.complaint_rate, settings.WARMUP_MAX_SPAM_RATE)

    # Consolidation writes the daily stats from the counters: a figure typed here would disagree with them
    # and be overwritten. Viewable (change pages read-only), and deletable as before.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# --- Audit events and alerts (read-only) -----------------------------------------------------------


class ReadOnlyAdmin(TenantScopedAdmin):
    """Records written by the engine and the alerting only: viewable, never edited here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "date", "ip", "tenant", "kind", "phase_change", "status_change", "actor", "reason")
    list_select_related = ("plan__ip__tenant", "actor")
    list_filter = (TenantListFilter, "kind")
    search_fields = ("=plan__ip__address", "reason")
    date_hierarchy = "date"
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # "Show counts" would COUNT every filter option
    paginator = LargeTablePaginator
    list_per_page = 100

    @admin.display(description="IP", ordering="plan__ip__address")
    def ip(self, event):
        url = reverse("admin:warmup_warmupplan_change", args=[event.plan_id])
        return format_html('<a href="{}">{}</a>', url, event.plan.ip.address)

    @admin.display(description="tenant")
    def tenant(self, event):
        return event.plan.ip.tenant

    @admin.display(description="phase")
    def phase_change(self, event) -> str:
        return _change(event.from_phase, event.to_phase)

    @admin.display(description="status")
    def status_change(self, event) -> str:
        return _change(event.from_status, event.to_status)


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "tenant", "ip", "short_message", "delivery")
    list_select_related = ("tenant", "ip")
    list_filter = (TenantListFilter, "kind", "delivery")
    search_fields = ("message", "=ip__address")
    date_hierarchy = "created_at"
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # "Show counts" would COUNT every filter option
    paginator = LargeTablePaginator
    list_per_page = 100

    @admin.display(description="message")
    def short_message(self, alert) -> str:
        return alert.message if len(alert.message) <= 120 else alert.message[:119] + "…"


# --- Providers -------------------------------------------------------------------------------------


@admin.register(ProviderShare)
class ProviderShareAdmin(TenantScopedAdmin):
    """A tenant's split of each IP's daily quota per mailbox provider (README "Providers")."""

    list_display = ("tenant", "provider", "share")
    list_editable = ("share",)
    list_select_related = ("tenant",)
    list_filter = (TenantListFilter, "provider")
    ordering = ("tenant__name", "provider")


@admin.register(ProviderSuspension)
class ProviderSuspensionAdmin(ReadOnlyAdmin):
    """Providers held at 0 for an IP: decided by the engine (thresholds) or the throttling check."""

    list_display = ("ip", "tenant", "provider", "reason", "starts_at", "ends_at", "in_force", "lifted_at")
    list_select_related = ("ip__tenant",)
    list_filter = (TenantListFilter, "provider", "reason")
    search_fields = ("=ip__address",)
    date_hierarchy = "starts_at"
    show_full_result_count = False
    list_per_page = 100

    @admin.display(description="tenant")
    def tenant(self, suspension):
        return suspension.ip.tenant

    actions = ("end_now",)

    @admin.display(description="in force", boolean=True)
    def in_force(self, suspension) -> bool:
        now = timezone.now()
        return suspension.starts_at <= now < suspension.ends_at

    def has_end_permission(self, request) -> bool:
        return request.user.has_perm("warmup.change_providersuspension")

    @admin.action(description="End the selected suspensions now", permissions=["end"])
    def end_now(self, request, queryset):
        """The provider gets its share back at once: the suspension ends now and is lifted as at its end
        (audit event and alert), through the throttling check's lifting."""
        from .throttling import lift_ended

        now = timezone.now()
        ended = queryset.filter(ends_at__gt=now).update(ends_at=now)
        lift_ended(now)
        self.message_user(
            request,
            ngettext("Ended %d suspension.", "Ended %d suspensions.", ended) % ended,
            messages.SUCCESS if ended else messages.WARNING,
        )


# --- Schedules -------------------------------------------------------------------------------------


@admin.register(WarmupSchedule)
class WarmupScheduleAdmin(admin.ModelAdmin):
    form = WarmupScheduleForm
    list_display = ("name", "steps_display", "phase_days", "is_default", "plan_count")
    search_fields = ("name",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_plans=Count("plans"))

    @admin.display(description="steps (daily quota per phase)")
    def steps_display(self, schedule) -> str:
        return " → ".join(f"{step:,}" for step in schedule.steps)

    @admin.display(description="plans", ordering="n_plans")
    def plan_count(self, schedule) -> int:
        return schedule.n_plans
