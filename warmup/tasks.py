"""Celery tasks of the warmup: thin callers of the modules that hold the rules.

Each takes JSON arguments (ids, ISO dates) and raises on infrastructure errors, so that Celery retries
with backoff and monitoring sees the failure; only business outcomes are returned as data.
"""

from __future__ import annotations

from datetime import date

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from domains.models import IP

from . import alerts, consolidation, health, retention, telegram, throttling
from .counters import CounterStoreUnavailable
from .stats import record_stats

RETRY = {
    "autoretry_for": (CounterStoreUnavailable, OperationalError, InterfaceError, ConnectionError, TimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(name="warmup.consolidate_warmup_stats", **RETRY)
def consolidate_warmup_stats_task() -> dict:
    """Move every finished day's counters into the daily stats (scheduled at 00:30)."""
    report = consolidation.consolidate()
    return {
        "ip_days": report.ip_days,
        "increments": report.increments,
        "recovered": report.recovered,
        "overruns": report.overruns,
    }


@shared_task(name="warmup.advance_warmup", **RETRY)
def advance_warmup_task(date: str | None = None) -> dict:
    """Run the engine's daily tick (scheduled at 01:00); `date` as YYYY-MM-DD, default per tenant."""
    from .engine import tick  # imported here: the engine imports much of the app

    report = tick(_parse_date(date) if date else None)
    return {
        "dates": [d.isoformat() for d in report.dates],
        "plans_processed": report.plans_processed,
        "events": len(report.events),
    }


@shared_task(bind=True, name="warmup.record_warmup_stats", **RETRY)
def record_warmup_stats_task(self, ip_id: int, stats: dict, date: str | None = None) -> dict:
    """Add counts to an IP's day (default today in its tenant's zone), consolidated like events.

    The increment carries the task's id as its de-duplication key: a retry (the reply of Redis lost
    after it counted, a worker killed after the increment) finds it counted and adds nothing.
    """
    ip = IP.objects.select_related("tenant").filter(pk=ip_id).first()
    if ip is None:
        return {"success": False, "error": f"IP #{ip_id} does not exist"}
    if not isinstance(stats, dict):
        return {"success": False, "error": "stats: expected an object of counter name -> number"}
    key = f"record_warmup_stats:{self.request.id}" if self.request.id else None
    try:
        day = _parse_date(date) if date else None
        recorded = record_stats(ip, stats, day, dedup_key=key)
    except ValueError as exc:
        return {"success": False, "error": str(exc)}
    return {"success": True, "ip": ip.address, "date": recorded.isoformat()}


@shared_task(name="warmup.prune_warmup_data", **RETRY)
def prune_warmup_data_task() -> dict:
    """Delete expired de-duplication keys and message references, and old ledger rows."""
    return retention.prune()


@shared_task(name="warmup.check_provider_throttling", **RETRY)
def check_provider_throttling_task() -> dict:
    """Suspend IP-provider pairs throttled over the last hour and lift the suspensions whose time is up
    (scheduled every 5 minutes)."""
    report = throttling.check_provider_throttling()
    return {
        "suspended": [[s.ip_id, s.provider] for s in report.suspended],
        "lifted": [[s.ip_id, s.provider] for s in report.lifted],
    }


@shared_task(name="warmup.check_counter_store", **RETRY)
def check_counter_store_task() -> dict:
    """Alert when the counter store fails `/healthz`'s check: unreachable, refusing writes (full, a replica)
    or set to evict keys; and when it passes again (scheduled every 5 minutes)."""
    failure = health.counter_store_failure()
    if failure is not None:
        alerts.alert_counter_store_unhealthy(failure)
        return {"counter_store": health.error_text(failure)}  # as /healthz answers
    alerts.alert_counter_store_recovered()
    return {"counter_store": "ok"}


@shared_task(bind=True, name="warmup.deliver_alert", **RETRY)
def deliver_alert_task(self, alert_id: int) -> dict:
    """Send one recorded alert to Telegram; retried with backoff while Telegram cannot take it."""
    try:
        alert = alerts.deliver(alert_id)
    except telegram.TelegramError as exc:
        if not exc.retryable:
            return {"alert": alert_id, "delivery": "failed", "error": str(exc)}
        countdown = min(settings.ALERT_RETRY_BACKOFF_SECONDS * 2**self.request.retries, 3600)
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.ALERT_DELIVERY_MAX_RETRIES) from None
    return {"alert": alert_id, "delivery": alert.delivery if alert else "not due"}


@shared_task(name="warmup.resend_undelivered_alerts", **RETRY)
def resend_undelivered_alerts_task() -> dict:
    """Queue again the alerts of the last day that are not delivered (scheduled every 10 minutes)."""
    return {"queued": alerts.resend_undelivered()}


@shared_task(
    name="warmup.record_alert",
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=200,  # about a day and a half of waiting for the database
)
def record_alert_task(spec: dict) -> dict:
    """Record an alert that could not be recorded when it was raised (the database was down)."""
    alert = alerts.raise_deferred(spec)
    return {"alert": alert.pk if alert else None}


def _parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"date: {value!r} is not a date in YYYY-MM-DD form") from None
