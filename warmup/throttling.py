"""Same-day reaction to throttling, and the end of every provider suspension (README "Providers").

Owns `check_provider_throttling()`, run every 5 minutes by the `warmup.check_provider_throttling` task:

- every provider suspension, whatever its reason, whose end has passed and has not been recorded is
  lifted: `lifted_at`, an audit event and one alert;
- an IP and provider whose throttling deferrals (replies the deferral rules classify as rate-limited or
  reputation, `webhooks.deferrals`) over the last WINDOW_MINUTES reach WARMUP_THROTTLE_DEFERRALS and
  WARMUP_THROTTLE_SHARE percent of that hour's deferrals of the pair get a `ProviderSuspension` (reason THROTTLING) for
  WARMUP_THROTTLE_SUSPEND_HOURS, an audit event on the IP's plan and one alert; never a second one while
  a suspension of the pair is in force.

The hour is read from the counter store's window counters (5-minute buckets, counted with the events,
`warmup.counters.interface`): the window is the buckets that overlap the last hour, so between 60 and
65 minutes. A fixed number of queries whatever the number of IPs and suspensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from domains.models import IP

from . import alerts
from .counters import BUCKET_SECONDS, WindowFigures, bucket_of, get_store
from .models import Alert, AuditEvent, ProviderSuspension, WarmupPlan
from .monitoring import plan_of

WINDOW_MINUTES = 60


@dataclass
class ThrottlingReport:
    suspended: list[ProviderSuspension] = field(default_factory=list)
    lifted: list[ProviderSuspension] = field(default_factory=list)


def check_provider_throttling(now: datetime | None = None) -> ThrottlingReport:
    """Lift the suspensions whose time is up, then suspend the throttled IP-provider pairs of the last hour.

    Lifting first: it needs only the database, so it happens also while the counter store is down (the
    suspending then raises CounterStoreUnavailable, and the task retries); and a pair still throttled when
    its suspension ends reads "resumed", then "suspended" again.
    """
    now = now or timezone.now()
    lifted = lift_ended(now)
    return ThrottlingReport(suspended=suspend_throttled(now), lifted=lifted)


def window_buckets(now: datetime) -> tuple[int, int]:
    """The first and last window buckets of the hour before `now` (the buckets that overlap it)."""
    seconds = int(now.timestamp())
    return bucket_of(seconds - WINDOW_MINUTES * 60), bucket_of(seconds)


def throttled_pairs(now: datetime) -> dict[tuple[int, str], WindowFigures]:
    """{(ip id, provider): figures} of the pairs over both thresholds in the hour before `now`."""
    first, last = window_buckets(now)
    least, share = settings.WARMUP_THROTTLE_DEFERRALS, settings.WARMUP_THROTTLE_SHARE
    return {
        pair: figures
        for pair, figures in get_store().window(first, last).items()
        if figures.throttled >= least and _share(figures) >= share
    }


def _share(figures: WindowFigures) -> float:
    """Throttling deferrals as a percent of the window's deferrals."""
    return figures.throttled * 100.0 / figures.deferrals if figures.deferrals else 0.0


def suspend_throttled(now: datetime) -> list[ProviderSuspension]:
    """Create the suspensions, audit events and alerts of the throttled pairs that have none in force."""
    found = throttled_pairs(now)
    if not found:
        return []
    first, last = window_buckets(now)
    hours = settings.WARMUP_THROTTLE_SUSPEND_HOURS
    ends_at = now + timedelta(hours=hours)
    created: list[ProviderSuspension] = []
    events: list[AuditEvent] = []
    specs: list[dict] = []
    with transaction.atomic():
        # The IPs' rows are locked so that two runs at the same moment cannot both suspend a pair.
        ips = {
            ip.pk: ip
            for ip in IP.objects.select_for_update(of=("self",))
            .select_related("tenant", "domain", "plan")
            .filter(pk__in={ip_id for ip_id, _ in found})
            .order_by("pk")
        }
        in_force = {
            (ip_id, provider)
            for ip_id, provider in ProviderSuspension.objects.active(now)
            .filter(ip_id__in=list(ips))
            .values_list("ip_id", "provider")
        }
        for (ip_id, provider), figures in sorted(found.items()):
            ip = ips.get(ip_id)
            if ip is None or (ip_id, provider) in in_force:
                continue  # deleted since its events were counted, or suspended already
            numbers = {
                "window_minutes": WINDOW_MINUTES,
                "window_start": datetime.fromtimestamp(first * BUCKET_SECONDS, now.tzinfo).isoformat(),
                "window_end": datetime.fromtimestamp((last + 1) * BUCKET_SECONDS, now.tzinfo).isoformat(),
                "deferrals": figures.deferrals,
                "rate_limited": figures.rate_limited,
                "reputation": figures.reputation,
                "throttled": figures.throttled,
                "share": round(_share(figures), 2),
                "classification": "reputation" if figures.reputation > figures.rate_limited else "rate_limited",
                "threshold_deferrals": settings.WARMUP_THROTTLE_DEFERRALS,
                "threshold_share": settings.WARMUP_THROTTLE_SHARE,
                "suspend_hours": hours,
            }
            suspension = ProviderSuspension(
                ip=ip,
                provider=provider,
                reason=ProviderSuspension.Reason.THROTTLING,
                starts_at=now,
                ends_at=ends_at,
                figures=numbers,
            )
            created.append(suspension)
            message = alerts.provider_suspended_message(ip, provider=provider, figures=numbers, until=ends_at)
            plan = plan_of(ip)
            if plan is not None:
                events.append(
                    _event(plan, AuditEvent.Kind.PROVIDER_SUSPENDED, now, ip, numbers | {"provider": provider}, message)
                )
            specs.append(_alert(Alert.Kind.PROVIDER_SUSPENDED, ip, message, numbers | {"provider": provider}, now))
        ProviderSuspension.objects.bulk_create(created)
        AuditEvent.objects.bulk_create(events)
        alerts.raise_alerts(specs)
    return created


def lift_ended(now: datetime) -> list[ProviderSuspension]:
    """Record the end of every provider suspension (any reason) whose time is up: once each.

    The rows are claimed with a conditional update (`lifted_at` still empty) under skip-locked row locks, so
    that two runs at the same moment lift a suspension once between them.
    """
    with transaction.atomic():
        due = list(
            ProviderSuspension.objects.select_for_update(of=("self",), skip_locked=True)
            .select_related("ip__tenant", "ip__domain", "ip__plan")
            .filter(lifted_at__isnull=True, ends_at__lte=now)
            .order_by("ends_at", "pk")
        )
        if not due:
            return []
        claimed = ProviderSuspension.objects.filter(pk__in=[s.pk for s in due], lifted_at__isnull=True).update(
            lifted_at=now
        )
        if claimed != len(due):  # cannot happen under the row locks; refuse rather than alert twice
            raise RuntimeError(f"lifting claimed {claimed} of {len(due)} locked suspensions")
        events, specs = [], []
        for suspension in due:
            suspension.lifted_at = now
            ip, provider = suspension.ip, suspension.provider
            numbers = {
                "provider": provider,
                "reason": suspension.reason,
                "starts_at": suspension.starts_at.isoformat(),
                "ends_at": suspension.ends_at.isoformat(),
                "suspension": suspension.pk,
            }
            message = alerts.provider_resumed_message(
                ip, provider=provider, reason=suspension.get_reason_display().lower(), since=suspension.starts_at
            )
            plan = plan_of(ip)
            if plan is not None:
                events.append(_event(plan, AuditEvent.Kind.PROVIDER_RESUMED, now, ip, numbers, message))
            specs.append(_alert(Alert.Kind.PROVIDER_RESUMED, ip, message, numbers, now))
        AuditEvent.objects.bulk_create(events)
        alerts.raise_alerts(specs)
    return due


def _event(plan: WarmupPlan, kind: str, now: datetime, ip: IP, figures: dict, reason: str) -> AuditEvent:
    # A provider decision leaves the plan's phase and status as they are: both sides say so.
    return AuditEvent(
        plan=plan,
        created_at=now,
        date=timezone.localtime(now, ip.tenant.zone).date(),
        kind=kind,
        from_phase=plan.phase,
        to_phase=plan.phase,
        from_status=plan.status,
        to_status=plan.status,
        figures=figures,
        reason=reason,
    )


def _alert(kind: str, ip: IP, message: str, figures: dict, now: datetime) -> dict:
    return {"kind": kind, "tenant": ip.tenant, "ip": ip, "message": message, "figures": figures, "when": now}
