"""Operator alerts: recorded in the database, delivered to Telegram after the transaction commits.

`raise_alert` always records an `Alert`. Delivery waits for `transaction.on_commit`, so a tick that
rolls back sends nothing, and it never raises into the caller: its outcome (sent, failed,
not_configured, dry_run) is written on the alert. With WARMUP_DRY_RUN nothing leaves; without a bot
token or chat the alert is logged instead.

The engine writes its own message text; the `*_message` helpers here give every alert the same shape,
"<icon> <decision> <ip> (<domain>, <tenant>): <figures>; <consequence>". The non-plan alerts
(consolidation failure, unattributed spike, quota overrun) are built here too.
"""

import logging
import uuid
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import partial

from celery import current_task
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from domains.models import IP, Tenant

from . import telegram
from .models import Alert, AuditEvent, DailyStat, Provider, WarmupPlan

logger = logging.getLogger(__name__)

ICONS = {
    Alert.Kind.PAUSED: "⏸",
    Alert.Kind.RESUMED: "▶",
    Alert.Kind.ROLLED_BACK: "↩",
    Alert.Kind.COMPLETED: "✅",
    Alert.Kind.NEEDS_ATTENTION: "🛑",
    Alert.Kind.REWARMED: "🔁",
    Alert.Kind.CONSOLIDATION_FAILED: "❌",
    Alert.Kind.COUNTER_STORE_UNHEALTHY: "🧯",
    Alert.Kind.COUNTER_STORE_RECOVERED: "✅",
    Alert.Kind.UNATTRIBUTED_SPIKE: "❓",
    Alert.Kind.QUOTA_OVERRUN: "🚦",
    Alert.Kind.PROVIDER_PAUSED: "⏸",
    Alert.Kind.PROVIDER_SUSPENDED: "🐢",
    Alert.Kind.PROVIDER_RESUMED: "▶",
    Alert.Kind.MANUAL: "✋",
}


# --- Recording and delivery --------------------------------------------------------------------------

# A delivery claimed this long ago and still not finished belongs to a worker that died: send it again.
CLAIM_TIMEOUT = timedelta(minutes=10)
# The sweep leaves alone what was attempted more recently than this (its own task may still retry it).
SWEEP_QUIET = timedelta(minutes=5)
# How far back the sweep re-sends: older news is history, not an alert.
SWEEP_MAX_AGE = timedelta(days=1)


def raise_alert(
    kind: Alert.Kind,
    *,
    tenant: Tenant | None,
    message: str,
    ip: IP | None = None,
    figures: Mapping | None = None,
    when: datetime | None = None,
    dedup_key: str = "",
) -> Alert | None:
    """Record an alert and queue its delivery to Telegram once the current transaction commits.

    With a `dedup_key` (what the alert is about: an IP-day's overrun, a failed run), an occurrence is
    recorded once, also when two processes raise it at the same moment; a repeat returns None.
    """
    alert = _new_alert(kind, tenant=tenant, message=message, ip=ip, figures=figures, when=when)
    if dedup_key:
        alert.dedup_key = dedup_key
        try:
            with transaction.atomic():
                alert.save()
        except IntegrityError:
            return None
    else:
        alert.save()
    _dispatch([alert])
    return alert


def raise_alerts(specs: Iterable[Mapping]) -> list[Alert]:
    """Several alerts (keyword arguments of raise_alert each) in one INSERT, delivered after commit.

    The daily tick over thousands of plans may pause and complete many at once; one statement keeps
    its query count independent of the number of plans.
    """
    records = [_new_alert(**spec) for spec in specs]
    Alert.objects.bulk_create(records)
    _dispatch(records)
    return records


def _new_alert(kind, *, tenant, message, ip=None, figures=None, when=None) -> Alert:
    chat_id = (tenant.telegram_chat_id if tenant is not None else "") or settings.TELEGRAM_CHAT_ID
    if settings.WARMUP_DRY_RUN:
        delivery = Alert.Delivery.DRY_RUN
    elif not settings.TELEGRAM_BOT_TOKEN or not chat_id:
        delivery = Alert.Delivery.NOT_CONFIGURED
    else:
        delivery = Alert.Delivery.PENDING
    return Alert(
        kind=kind,
        tenant=tenant,
        ip=ip,
        message=message,
        figures=dict(figures or {}),
        created_at=when or timezone.now(),
        delivery=delivery,
        chat_id=chat_id,
    )


def _dispatch(alerts: Iterable[Alert]) -> None:
    pending = []
    for alert in alerts:
        if alert.delivery == Alert.Delivery.NOT_CONFIGURED:
            logger.warning(
                "Alert (Telegram not configured: set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID): %s", alert.message
            )
        elif alert.delivery == Alert.Delivery.DRY_RUN:
            logger.info("Alert (dry run, not sent): %s", alert.message)
        else:
            pending.append(alert.pk)
    if pending:
        transaction.on_commit(partial(queue_delivery, pending))


def queue_delivery(alert_ids: Iterable[int]) -> int:
    """Hand each alert to the `warmup.deliver_alert` task; returns how many were queued.

    Never raises: the caller is a request or a tick that has already committed. An alert that cannot be
    queued (the broker is down) stays pending and the sweep (`resend_undelivered`) queues it later.
    """
    from .tasks import deliver_alert_task  # the tasks module imports this one

    queued = 0
    for alert_id in alert_ids:
        try:
            deliver_alert_task.delay(alert_id)
        except Exception:  # a broker that is down answers every call as slowly: stop at the first
            logger.exception("Could not queue the delivery of alert %s; the sweep will send it", alert_id)
            break
        queued += 1
    return queued


def deliver(alert_id: int, now: datetime | None = None) -> Alert | None:
    """Send one recorded alert to its chat and write the outcome on it.

    The alert is claimed first (a conditional UPDATE), so that the task, its retries and the sweep never
    send it twice at once; None when there is nothing to send (sent already, or being sent). Raises
    `telegram.TelegramError` after recording the failure, for the task to decide on a retry.
    """
    now = now or timezone.now()
    claimable = Q(delivery__in=[Alert.Delivery.PENDING, Alert.Delivery.FAILED]) | Q(
        delivery=Alert.Delivery.SENDING, attempted_at__lt=now - CLAIM_TIMEOUT
    )
    claimed = Alert.objects.filter(claimable, pk=alert_id).update(
        delivery=Alert.Delivery.SENDING, attempted_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    alert = Alert.objects.get(pk=alert_id)
    try:
        telegram.send_message(alert.message, chat_id=alert.chat_id)
    except telegram.TelegramError as exc:
        _record_outcome(alert, Alert.Delivery.FAILED, error=str(exc)[:2000])
        logger.error("Alert %s could not be delivered to Telegram: %s", alert.pk, alert.delivery_error)
        raise
    _record_outcome(alert, Alert.Delivery.SENT, sent_at=timezone.now())
    return alert


def _record_outcome(alert: Alert, delivery: str, *, error: str = "", sent_at: datetime | None = None) -> None:
    alert.delivery, alert.delivery_error, alert.sent_at = delivery, error, sent_at
    Alert.objects.filter(pk=alert.pk).update(delivery=delivery, delivery_error=error, sent_at=sent_at)


def resend_undelivered(now: datetime | None = None) -> int:
    """Queue again every alert of the last day that is pending, failed, or stuck in a dead worker's hands.

    The periodic sweep (`resend-undelivered-alerts`): alerts whose queueing failed, whose task ran out of
    retries while Telegram was down, or whose worker died mid-send. Returns how many were queued.
    """
    now = now or timezone.now()
    ids = list(
        Alert.objects.filter(delivery__in=Alert.UNDELIVERED, created_at__gte=now - SWEEP_MAX_AGE)
        .filter(Q(attempted_at__isnull=True) | Q(attempted_at__lt=now - SWEEP_QUIET))
        .exclude(delivery=Alert.Delivery.SENDING, attempted_at__gte=now - CLAIM_TIMEOUT)
        .order_by("created_at")
        .values_list("id", flat=True)
    )
    return queue_delivery(ids)


# --- Message helpers -----------------------------------------------------------------------------------


def subject(ip: IP) -> str:
    """'45.123.10.2 (mail2.sos-mail.com, SOS-Expat)': the IP with its domain and tenant."""
    return f"{ip.address} ({ip.domain.name}, {ip.tenant.name})"


def headline(kind: Alert.Kind, decision: str, ip: IP) -> str:
    return f"{ICONS.get(kind, '•')} {decision} {subject(ip)}"


def _window(first: date | None, last: date | None) -> str:
    return f" ({first.isoformat()}..{last.isoformat()})" if first and last else ""


def bounce_figures(
    *, rate: float, threshold: float, sent: int, first: date | None = None, last: date | None = None
) -> str:
    """'bounce rate 8.00% > 5.00% over 200 sent (2026-12-22..2026-12-22)'."""
    return f"bounce rate {rate:.2f}% > {threshold:.2f}% over {sent:,} sent{_window(first, last)}"


def complaint_figures(
    *,
    rate: float,
    threshold: float,
    complaints: int,
    delivered: int,
    first: date | None = None,
    last: date | None = None,
) -> str:
    """'complaint rate 0.30% > 0.10% (3 complaints over 1,000 delivered) (2026-12-20..2026-12-22)'."""
    return (
        f"complaint rate {rate:.2f}% > {threshold:.2f}% ({complaints:,} complaints over {delivered:,} delivered)"
        f"{_window(first, last)}"
    )


def _local(moment: datetime, zone_name: str) -> str:
    return f"{timezone.localtime(moment, timezone=zoneinfo.ZoneInfo(zone_name)):%Y-%m-%d %H:%M} {zone_name}"


def pause_message(
    ip: IP, *, figures: str, from_phase: str = "", to_phase: str = "", until: datetime | None = None
) -> str:
    """The automatic pause: the figures, the rollback and when it ends (or that a person must act)."""
    parts = [f"{headline(Alert.Kind.PAUSED, 'Paused', ip)}: {figures}"]
    if from_phase and to_phase and from_phase != to_phase:
        parts.append(f"rolled back {from_phase} -> {to_phase}")
    parts.append(f"resumes {_local(until, ip.tenant.time_zone)}" if until else "waits for a person to resume it")
    return "; ".join(parts)


def provider_name(provider: str) -> str:
    """How alerts name a provider: its label ("Microsoft"), or the key itself when it is not one."""
    return Provider(provider).label if provider in Provider.values else provider


def provider_pause_message(ip: IP, *, provider: str, figures: str, until: datetime) -> str:
    """One provider paused for the IP by its own rates; the IP keeps warming for the others."""
    name = provider_name(provider)
    return (
        f"{headline(Alert.Kind.PROVIDER_PAUSED, name + ' paused for', ip)}: {figures}; "
        f"{name} gets no mail from this IP until {_local(until, ip.tenant.time_zone)}, the other providers keep warming"
    )


def provider_pauses_figures(*, count: int, days: int, pauses: Iterable[tuple[str, date]]) -> str:
    """'3 provider pauses in 14 days (Microsoft 2027-01-10, Gmail 2027-01-12, Microsoft 2027-01-15)'."""
    listed = ", ".join(f"{provider_name(provider)} {day.isoformat()}" for provider, day in pauses)
    return f"{count} provider pauses in {days} days ({listed})"


def needs_attention_message(ip: IP, *, figures: str, auto_pauses: int) -> str:
    return (
        f"{headline(Alert.Kind.NEEDS_ATTENTION, 'Needs attention', ip)}: {figures}; "
        f"paused with no end after {auto_pauses} automatic pauses, resume it from the admin once the cause is fixed"
    )


def resume_message(ip: IP, *, phase: str, quota: int) -> str:
    return f"{headline(Alert.Kind.RESUMED, 'Resumed', ip)}: back to warming in {phase}, quota {quota:,}/day"


def rollback_message(ip: IP, *, from_phase: str, to_phase: str, quota: int, reason: str = "") -> str:
    text = f"{headline(Alert.Kind.ROLLED_BACK, 'Rolled back', ip)}: {from_phase} -> {to_phase}, quota {quota:,}/day"
    return f"{text}; {reason}" if reason else text


def completed_message(ip: IP, *, days: int, quota: int) -> str:
    return f"{headline(Alert.Kind.COMPLETED, 'Warmup completed', ip)}: ACTIVE after {days} days, quota {quota:,}/day"


def rewarm_message(ip: IP, *, idle_days: int, phase: str, quota: int) -> str:
    return (
        f"{headline(Alert.Kind.REWARMED, 'Re-warming', ip)}: no mail sent for {idle_days} days; "
        f"back to {phase}, quota {quota:,}/day"
    )


def provider_suspended_message(ip: IP, *, provider: str, figures: Mapping, until: datetime) -> str:
    """The throttling check's suspension: the hour's figures, the thresholds and when the provider is back."""
    provider = provider_name(provider)
    return (
        f"{headline(Alert.Kind.PROVIDER_SUSPENDED, f'Suspended {provider} for', ip)}: "
        f"{figures['throttled']:,} throttling deferrals ({figures['classification']}) of {figures['deferrals']:,} "
        f"deferrals ({figures['share']:.1f}%) in the last {figures['window_minutes']} min "
        f"(thresholds {figures['threshold_deferrals']:,} and {figures['threshold_share']:.1f}%); "
        f"{provider} gets 0 of the quota until {_local(until, ip.tenant.time_zone)}"
    )


def provider_resumed_message(ip: IP, *, provider: str, reason: str, since: datetime) -> str:
    """A provider suspension (any reason) whose time is up."""
    provider = provider_name(provider)
    return (
        f"{headline(Alert.Kind.PROVIDER_RESUMED, f'Resumed {provider} for', ip)}: the {reason} suspension "
        f"since {_local(since, ip.tenant.time_zone)} has ended; {provider} gets its share of the quota again"
    )


# --- Alerts that no plan decision raises ---------------------------------------------------------------


def alert_consolidation_failed(error: BaseException | str, *, when: datetime | None = None) -> Alert | None:
    """Consolidation raised: the day's figures are not in the daily stats and the tick cannot judge them.

    One alert per run: a Celery task's retries keep its id, so a burst of retries is one occurrence;
    outside a task (the command) each run is one. When the database is what failed, the alert cannot be
    recorded now: the `warmup.record_alert` task records it once the database is back. Returns the
    alert, or None when it was raised before or is deferred.
    """
    text = str(error) or type(error).__name__
    run = getattr(getattr(current_task, "request", None), "id", None) or uuid.uuid4().hex
    message = (
        f"{ICONS[Alert.Kind.CONSOLIDATION_FAILED]} Consolidation failed: {text}; "
        f"the daily stats are behind until it succeeds"
    )
    spec = {
        "kind": Alert.Kind.CONSOLIDATION_FAILED,
        "tenant": None,
        "message": message,
        "figures": {"error": text[:1000], "run": run},
        "when": when or timezone.now(),
        "dedup_key": f"consolidation_failed:{run}",
    }
    try:
        return raise_alert(**spec)
    except DatabaseError:
        logger.warning("Consolidation failure not recorded (database unavailable); a task will record it")
    from .tasks import record_alert_task  # the tasks module imports this one

    try:
        record_alert_task.delay({**spec, "when": spec["when"].isoformat()})
    except Exception:
        logger.exception("Could not queue the consolidation failure alert: %s", message)
    return None


# A counter store that stays unhealthy is reported again after this long.
COUNTER_STORE_REMINDER = timedelta(hours=1)


def alert_counter_store_unhealthy(error: BaseException | str, *, when: datetime | None = None) -> Alert | None:
    """The counter store cannot take or keep counts (down, full, a replica, set to evict keys): the webhooks
    answer 503, or Redis may drop counts without a word. Once when it starts, then once an hour while it
    lasts; None when no alert is due."""
    when = when or timezone.now()
    last = _last_counter_store_alert(when)
    ongoing = last is not None and last.kind == Alert.Kind.COUNTER_STORE_UNHEALTHY
    if ongoing and when - last.created_at < COUNTER_STORE_REMINDER:
        return None
    text = str(error).rstrip(".") or type(error).__name__
    since = last.figures["since"] if ongoing else when.isoformat()
    lasting = f" (for {_duration(when - datetime.fromisoformat(since))})" if ongoing else ""
    message = (
        f"{ICONS[Alert.Kind.COUNTER_STORE_UNHEALTHY]} Counter store unhealthy{lasting}: {text}. "
        f"Repeated every hour while it lasts; /healthz shows the current state"
    )
    return raise_alert(
        Alert.Kind.COUNTER_STORE_UNHEALTHY,
        tenant=None,
        message=message,
        figures={"error": text[:1000], "since": since},
        when=when,
        # Two checks in the same minute (two beats by mistake): one alert.
        dedup_key=f"counter_store_unhealthy:{when.astimezone(UTC):%Y-%m-%dT%H:%M}",
    )


def alert_counter_store_recovered(*, when: datetime | None = None) -> Alert | None:
    """The counter store passes its check again after an "unhealthy" alert; None when none is open."""
    when = when or timezone.now()
    last = _last_counter_store_alert(when)
    if last is None or last.kind != Alert.Kind.COUNTER_STORE_UNHEALTHY:
        return None
    since = datetime.fromisoformat(last.figures["since"])
    message = (
        f"{ICONS[Alert.Kind.COUNTER_STORE_RECOVERED]} Counter store healthy again after {_duration(when - since)} "
        f"(unhealthy since {since.astimezone(UTC):%Y-%m-%d %H:%M} UTC: {last.figures['error']})"
    )
    return raise_alert(
        Alert.Kind.COUNTER_STORE_RECOVERED,
        tenant=None,
        message=message,
        figures={"since": since.isoformat()},
        when=when,
        dedup_key=f"counter_store_recovered:{last.pk}",
    )


def _last_counter_store_alert(when: datetime) -> Alert | None:
    """The latest "unhealthy" or "healthy again" alert of the last two hours: an unhealthy store is reported
    every hour, so an older one is closed (or its checks stopped running)."""
    return (
        Alert.objects.filter(
            kind__in=(Alert.Kind.COUNTER_STORE_UNHEALTHY, Alert.Kind.COUNTER_STORE_RECOVERED),
            created_at__gt=when - 2 * COUNTER_STORE_REMINDER,
        )
        .order_by("-created_at", "-id")
        .first()
    )


def _duration(span: timedelta) -> str:
    minutes = max(1, round(span.total_seconds() / 60))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def raise_deferred(spec: Mapping) -> Alert | None:
    """Record an alert that `alert_consolidation_failed` could not record at the time (JSON `spec`)."""
    tenant = Tenant.objects.filter(pk=spec["tenant"]).first() if spec.get("tenant") else None
    return raise_alert(
        Alert.Kind(spec["kind"]),
        tenant=tenant,
        message=spec["message"],
        figures=spec.get("figures"),
        when=datetime.fromisoformat(spec["when"]),
        dedup_key=spec.get("dedup_key", ""),
    )


def alert_unattributed_spike(
    tenant: Tenant,
    *,
    count: int,
    since: datetime,
    threshold: int,
    examples: Iterable[str] = (),
    when: datetime | None = None,
) -> Alert | None:
    """Many events could not be credited to an IP (a new IP not entered, a wrong MTA source name...).

    One alert per tenant and window (`since` is the window's start); None when this window had its alert.
    """
    sample = ", ".join(list(examples)[:5])
    message = (
        f"{ICONS[Alert.Kind.UNATTRIBUTED_SPIKE]} Unattributed events ({tenant.name}): {count:,} since "
        f"{_local(since, tenant.time_zone)} (threshold {threshold:,}); kept as dead letters, re-process them "
        f"once the IPs exist{f'; e.g. {sample}' if sample else ''}"
    )
    figures = {"count": count, "since": since.isoformat(), "threshold": threshold, "examples": sample}
    return raise_alert(
        Alert.Kind.UNATTRIBUTED_SPIKE,
        tenant=tenant,
        message=message,
        figures=figures,
        when=when,
        dedup_key=f"unattributed_spike:{tenant.pk}:{since.isoformat()}",
    )


def quota_in_force(plan: WarmupPlan, *, to_status: str | None, to_phase: str | None, has_events: bool) -> int:
    """The quota a plan allowed on a day, from the last audit event that took effect on or before it.

    A plan with no audit event at all (imported, or made before events were kept) has only its current
    state to go by; one whose events all come later had not started that day.
    """
    if to_status is None:
        return 0 if has_events else plan.daily_quota
    if to_status == WarmupPlan.Status.COMPLETED:
        return plan.target_quota
    if to_status != WarmupPlan.Status.WARMING:
        return 0
    if not to_phase or to_phase == WarmupPlan.Phase.COMPLETED:
        return plan.target_quota
    index = int(to_phase.removeprefix("week_")) - 1
    return plan.steps[min(max(index, 0), len(plan.steps) - 1)]


def check_quota_overruns(days: Iterable[date], *, when: datetime | None = None) -> list[Alert]:
    """Alert for every IP whose consolidated `sent` on one of `days` exceeds its quota by
    WARMUP_QUOTA_OVERRUN_FACTOR; consolidation calls it for the days it has just written.

    Such an IP shows that the MTA is not enforcing the plan. The quota is the one in force that day (from
    the plan's audit events), not today's. Days with a quota of 0 (paused, not started) are left out: the
    pause takes effect at 01:00, so a little mail before it is expected. An IP-day is alerted once, also
    when two runs check it at the same moment. A fixed number of queries whatever the number of IPs.
    """
    days = sorted(set(days))
    if not days:
        return []
    factor = settings.WARMUP_QUOTA_OVERRUN_FACTOR
    # Audit events of a date take effect at that date's tick, so they govern the whole day.
    last_event = AuditEvent.objects.filter(plan=OuterRef("ip__plan"), date__lte=OuterRef("date")).order_by(
        "-date", "-created_at", "-id"
    )
    any_event = AuditEvent.objects.filter(plan=OuterRef("ip__plan")).values("id")[:1]
    stats = (
        DailyStat.objects.filter(date__in=days, sent__gt=0, ip__plan__isnull=False)
        .select_related("ip__plan", "ip__domain", "ip__tenant")
        .annotate(
            event_to_status=Subquery(last_event.values("to_status")[:1]),
            event_to_phase=Subquery(last_event.values("to_phase")[:1]),
            first_event_id=Subquery(any_event),
        )
        .order_by("date", "ip__address")
    )
    alerts = []
    for stat in stats:
        ip = stat.ip
        quota = quota_in_force(
            ip.plan,
            to_status=stat.event_to_status,
            to_phase=stat.event_to_phase,
            has_events=stat.first_event_id is not None,
        )
        if quota <= 0 or stat.sent <= quota * factor:
            continue
        day = stat.date.isoformat()
        share = stat.sent * 100.0 / quota
        message = (
            f"{headline(Alert.Kind.QUOTA_OVERRUN, 'Quota overrun', ip)}: sent {stat.sent:,} on {day} "
            f"against a quota of {quota:,} ({share:.0f}%, limit {factor * 100:.0f}%); the MTA is not enforcing "
            f"the plan, check its configuration"
        )
        figures = {"date": day, "sent": stat.sent, "quota": quota, "percent_of_quota": round(share, 2)}
        alert = raise_alert(
            Alert.Kind.QUOTA_OVERRUN,
            tenant=ip.tenant,
            ip=ip,
            message=message,
            figures=figures,
            when=when,
            dedup_key=f"quota_overrun:{ip.pk}:{day}",
        )
        if alert is not None:
            alerts.append(alert)
    return alerts
