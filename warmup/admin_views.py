"""The admin's own pages and the figures its charts show.

- `dashboard_view`: capacity now and its forecast, IPs per phase and status, recent alerts and audit
  events, all for the tenants the user belongs to (every tenant for a superuser).
- `add_domain_view`: "Add domain with IP", one form calling `warmup.onboarding.add_domain_with_ip`.
- `plan_chart_data`: a plan's daily quota vs sent and its rates vs the thresholds, with pause markers.
- `mta_configs_view`: "MTA configurations", a tenant's generated PowerMTA and KumoMTA configurations with
  their content hashes, so that an operator sees when the MTA's copy is stale.

The rules stay where they live (the engine, onboarding, monitoring, forecast, the MTA generators); these
views only read and arrange their results. `warmup_portal.admin.PortalAdminSite` routes the pages.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import date, datetime, timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.sites import AdminSite
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from domains.models import IP, Tenant

from .forms import AddDomainForm
from .models import Alert, AuditEvent, DailyStat, ProviderSuspension, WarmupPlan, day_range, rate
from .providers import PROVIDERS

logger = logging.getLogger(__name__)

# How far back the charts reach: enough for a whole warmup (42 days) and its aftermath.
CHART_DAYS = 120
DASHBOARD_HISTORY_DAYS = 60
DASHBOARD_FORECAST_DAYS = 90
RECENT_ROWS = 10

PAUSE_KINDS = (AuditEvent.Kind.PAUSED, AuditEvent.Kind.MANUAL_PAUSE)


def live_sent_today(ips) -> dict[int, int] | None:
    """Today's live "sent" of each IP (today in its tenant's zone), in one counter-store round trip.

    None when the counter store cannot be reached: the admin then shows "unavailable" instead of failing.
    `ips` are loaded with their tenant.
    """
    from .monitoring import live_sent

    days: dict[int, date] = {}
    keys = []
    for ip in ips:
        if ip.tenant_id not in days:
            days[ip.tenant_id] = ip.tenant.today()
        keys.append((ip.pk, days[ip.tenant_id]))
    sent = live_sent(keys)
    if sent is None:
        logger.warning("counter store unavailable: live sent counts not shown")
        return None
    return {ip_id: sum(by_provider.values()) for (ip_id, _), by_provider in sent.items()}


# --- Plan charts ------------------------------------------------------------------------------------


def _quota_in_force(plan: WarmupPlan, phase: str, status: str) -> int:
    # The model's own rule, applied to a past (phase, status).
    return WarmupPlan(steps=plan.steps, phase=phase or WarmupPlan.Phase.WEEK_1, status=status).daily_quota


def plan_chart_data(plan: WarmupPlan, *, today: date | None = None) -> dict:
    """The series of a plan's two charts, JSON-ready, for the days from its start (at most CHART_DAYS) to today.

    The quota of a past day is replayed from the audit timeline: each event's to_phase/to_status is in
    force from its date on (the tick of date D decides D's quota). Sent and rates come from the daily
    stats; today's sent is read live from the counter store when it can be reached.
    """
    tenant = plan.ip.tenant
    today = today or tenant.today()
    chart = {
        "labels": [],
        "quota": [],
        "sent": [],
        "bounce_rate": [],
        "complaint_rate": [],
        "max_bounce_rate": settings.WARMUP_MAX_BOUNCE_RATE,
        "max_spam_rate": settings.WARMUP_MAX_SPAM_RATE,
        "pauses": [],
        # False until the first day is consolidated: the page then says when figures will appear.
        "has_stats": False,
    }
    first = max(plan.start_date, today - timedelta(days=CHART_DAYS - 1))
    if first > today:
        return chart

    # By the date each event took effect: an imported plan's "started" is recorded later than it applies.
    events = list(
        plan.events.order_by("date", "created_at", "id").only("date", "kind", "to_phase", "to_status", "plan_id")
    )
    stats = {stat.date: stat for stat in DailyStat.objects.filter(ip_id=plan.ip_id, date__gte=first, date__lte=today)}
    live = live_sent_today([plan.ip])
    chart["has_stats"] = bool(stats)

    phase, status = WarmupPlan.Phase.WEEK_1, WarmupPlan.Status.SCHEDULED
    if not events:
        # A plan without a timeline (imported as is): its current state is all there is to show.
        phase, status = plan.phase, plan.status
    position = 0
    for day in day_range(first, today):
        while position < len(events) and events[position].date <= day:
            event = events[position]
            phase, status = event.to_phase or phase, event.to_status or status
            position += 1
        stat = stats.get(day)
        chart["labels"].append(day.isoformat())
        chart["quota"].append(_quota_in_force(plan, phase, status))
        if stat is not None:
            sent = stat.sent
        elif day == today and live is not None:
            sent = live.get(plan.ip_id, 0)
        else:
            sent = None
        chart["sent"].append(sent)
        chart["bounce_rate"].append(stat.bounce_rate if stat else None)
        chart["complaint_rate"].append(stat.complaint_rate if stat else None)
    chart["pauses"] = [
        {"date": event.date.isoformat(), "label": event.get_kind_display()}
        for event in events
        if event.kind in PAUSE_KINDS and first <= event.date <= today
    ]
    return chart


# --- Providers ------------------------------------------------------------------------------------


def plan_providers(plan: WarmupPlan) -> dict:
    """The plan page's provider table: per provider its share and quota today, today's live sent, the last
    consolidated day's figures and rates, and the suspension in force; with the IP's recent suspensions."""
    from .monitoring import ip_entries, monitored_ips

    ip = monitored_ips([plan.ip.tenant]).get(pk=plan.ip_id)
    today = ip.tenant.today()
    entry = ip_entries([ip], today=today)[0]
    last = DailyStat.objects.filter(ip_id=plan.ip_id, date__lt=today).order_by("-date").first()
    rows = []
    for provider, figures in entry["providers"].items():
        day = (last.by_provider.get(provider) or {}) if last else {}
        sent, delivered = day.get("sent", 0), day.get("delivered", 0)
        until = figures["suspended_until"]
        rows.append(
            {
                "provider": provider,
                **figures,
                "suspended_until": datetime.fromisoformat(until) if until else None,
                "last_sent": sent,
                "last_bounce_rate": rate(day.get("bounced", 0), sent) if sent else None,
                "last_complaint_rate": rate(day.get("complaints", 0), delivered) if delivered else None,
            }
        )
    return {
        "rows": rows,
        "last_date": last.date if last else None,
        "store_down": entry["sent_today"] is None,
        "max_bounce_rate": settings.WARMUP_MAX_BOUNCE_RATE,
        "max_spam_rate": settings.WARMUP_MAX_SPAM_RATE,
        "suspensions": list(ProviderSuspension.objects.filter(ip_id=plan.ip_id)[:RECENT_ROWS]),
    }


def provider_totals(entries: list[dict]) -> list[dict]:
    """The dashboard's provider table: per provider, today's quota and sent over the given monitoring rows,
    and how many IPs have it suspended."""
    rows = []
    for provider in PROVIDERS:
        figures = [entry["providers"][provider] for entry in entries]
        unknown = any(part["sent_today"] is None for part in figures)
        rows.append(
            {
                "provider": provider,
                "daily_quota": sum(part["daily_quota"] for part in figures),
                "sent_today": None if unknown else sum(part["sent_today"] for part in figures),
                "suspended_ips": sum(1 for part in figures if part["suspended_until"]),
            }
        )
    return rows


# --- Dashboard ------------------------------------------------------------------------------------


def _forecast_series(tenants: list[Tenant]) -> dict[str, int] | None:
    """Total forecast capacity per date over the user's tenants; None when the forecast is not installed."""
    try:
        from .forecast import forecast
    except ImportError:
        return None
    totals: Counter = Counter()
    for tenant in tenants:
        for row in forecast(tenant, days=DASHBOARD_FORECAST_DAYS)["days"]:
            totals[row["date"]] += row["total_daily_capacity"]
    return dict(totals)


def dashboard_data(user, *, today: date | None = None) -> dict:
    """Everything the dashboard shows, scoped to the tenants `user` may see."""
    from .monitoring import warmup_status

    tenants = list(Tenant.objects.visible_to(user))
    status = warmup_status(tenants)
    ips = status["ips"]
    today = today or timezone.localdate()
    phase_labels = dict(WarmupPlan.Phase.choices)
    status_labels = dict(IP.Status.choices)

    per_phase = Counter(entry["phase"] for entry in ips if entry["phase"])
    per_status = Counter(entry["status"] for entry in ips)
    per_tenant = Counter()
    for entry in ips:
        per_tenant[entry["tenant"]] += entry["daily_quota"]

    history_from = today - timedelta(days=DASHBOARD_HISTORY_DAYS)
    sent_by_day = dict(
        DailyStat.objects.filter(ip__tenant__in=tenants, date__gte=history_from, date__lt=today)
        .values("date")
        .annotate(total=Sum("sent"))
        .order_by("date")
        .values_list("date", "total")
    )
    forecast = _forecast_series(tenants)
    # History and forecast are two charts: a few weeks of warmup traffic would be invisible on the scale of
    # the capacity months ahead. The history starts at its first consolidated day, not at an empty margin.
    history_days = list(day_range(min(sent_by_day), today - timedelta(days=1))) if sent_by_day else []
    forecast_labels = sorted(forecast) if forecast else []
    chart = {
        "history_labels": [day.isoformat() for day in history_days],
        "sent": [sent_by_day.get(day, 0) for day in history_days],
        "forecast_labels": forecast_labels,
        "capacity": [forecast[label] for label in forecast_labels],
        "has_forecast": forecast is not None,
    }

    return {
        "tenants": tenants,
        "capacity": status["total_daily_capacity"],
        "capacity_per_tenant": [(t, per_tenant.get(t.slug, 0)) for t in tenants],
        "counts": {
            "active": status["active_ips"],
            "warming": status["warming_ips"],
            "paused": status["paused_ips"],
            "scheduled": status["scheduled_ips"],
        },
        "per_phase": [(phase_labels[key], per_phase[key]) for key in phase_labels if per_phase.get(key)],
        "per_status": [(status_labels[key], per_status[key]) for key in status_labels if per_status.get(key)],
        "needs_attention": [entry for entry in ips if entry["needs_attention"]],
        "providers": provider_totals(ips),
        "suspended": [
            {
                "ip": entry["ip"],
                "domain": entry["domain"],
                "provider": provider,
                "until": datetime.fromisoformat(part["suspended_until"]),
            }
            for entry in ips
            for provider, part in entry["providers"].items()
            if part["suspended_until"]
        ],
        "sent_today": None if any(entry["sent_today"] is None for entry in ips) else sum(e["sent_today"] for e in ips),
        "recent_alerts": list(Alert.objects.filter(tenant__in=tenants).select_related("tenant", "ip")[:RECENT_ROWS]),
        "recent_events": list(
            AuditEvent.objects.filter(plan__ip__tenant__in=tenants).select_related("plan__ip", "actor")[:RECENT_ROWS]
        ),
        "chart": chart,
        "history_days": DASHBOARD_HISTORY_DAYS,
    }


def dashboard_view(request: HttpRequest, site: AdminSite) -> HttpResponse:
    context = {
        **site.each_context(request),
        "title": "Dashboard",
        **dashboard_data(request.user),
    }
    return TemplateResponse(request, "admin/warmup/dashboard.html", context)


# --- Add domain with IP ----------------------------------------------------------------------------


def add_domain_view(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """One form for a domain, its IP and the IP's warmup plan; nothing is created unless all of it is."""
    if not (request.user.has_perm("domains.add_domain") and request.user.has_perm("domains.add_ip")):
        raise PermissionDenied
    form = AddDomainForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        from .onboarding import add_domain_with_ip

        data = form.cleaned_data
        try:
            plan = add_domain_with_ip(
                tenant=data["tenant"],
                domain=data["domain"],
                ip=data["ip"],
                hostname=data["hostname"],
                start=data["start"],
                force=data["force"],
                mta_source_name=data["mta_source_name"],
                user=request.user,
            )
        except ValidationError as error:
            form.add_onboarding_errors(error)
        else:
            when = "starts warming today" if plan.status != WarmupPlan.Status.SCHEDULED else "is scheduled"
            messages.success(
                request,
                f"Added {plan.ip.domain.name} with {plan.ip.address}; its warmup {when} "
                f"(start date {plan.start_date:%Y-%m-%d}).",
            )
            return HttpResponseRedirect(reverse("admin:warmup_warmupplan_change", args=[plan.pk]))
    context = {
        **site.each_context(request),
        "title": "Add domain with IP",
        "form": form,
        "opts": IP._meta,
    }
    return TemplateResponse(request, "admin/warmup/add_domain.html", context)


# --- MTA configurations ---------------------------------------------------------------------------


def mta_configurations(tenant: Tenant) -> list[dict]:
    """Both generated configurations of a tenant with their content hashes; `error` instead in dry run."""
    from .kumomta_config import generate_kumomta_config
    from .mta_config import DryRunActive, config_hash, generate_pmta_config

    now = timezone.now()
    configurations = []
    for name, generate, command, endpoint in (
        ("PowerMTA", generate_pmta_config, "generate_pmta_config", "api-pmta-config"),
        ("KumoMTA", generate_kumomta_config, "generate_kumomta_config", "api-kumomta-config"),
    ):
        entry = {
            "name": name,
            "command": f"manage.py {command} --tenant {tenant.slug}",
            "url": f"{reverse(endpoint)}?tenant={tenant.slug}",
        }
        try:
            text = generate(tenant, now=now)
        except DryRunActive as exc:
            entry.update(text=None, hash=None, error=str(exc))
        else:
            entry.update(text=text, hash=config_hash(text), error=None)
        configurations.append(entry)
    return configurations


def mta_configs_view(request: HttpRequest, site: AdminSite) -> HttpResponse:
    """One tenant's configurations (`?tenant=slug`, else the user's first): another tenant's is a 404."""
    tenants = list(Tenant.objects.visible_to(request.user).order_by("slug"))
    slug = request.GET.get("tenant")
    if slug:
        tenant = next((t for t in tenants if t.slug == slug), None)
        if tenant is None:
            raise Http404(f"No tenant {slug!r} among yours.")
    else:
        tenant = tenants[0] if tenants else None
    context = {
        **site.each_context(request),
        "title": "MTA configurations",
        "tenants": tenants,
        "tenant": tenant,
        "configurations": mta_configurations(tenant) if tenant else [],
    }
    return TemplateResponse(request, "admin/warmup/mta_configs.html", context)
