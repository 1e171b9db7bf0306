"""Unattributed spikes: many events kept as dead letters for want of an IP raise one operator alert.

An event that names an IP the tenant does not have, or that nothing attributes, is kept as a dead letter
(never dropped). A few are noise; many mean a new IP was not entered or an MTA source name is wrong, and
the warmup is judging figures that miss that mail. When a tenant's such dead letters within one window of
UNATTRIBUTED_ALERT_WINDOW_MINUTES (clock-aligned: 10:00-11:00 for an hour) reach
UNATTRIBUTED_ALERT_THRESHOLD, one alert is raised for that tenant and window, naming example IPs and
source names. The ingestion pipeline checks after each batch that kept new ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from domains.models import Tenant
from warmup import alerts
from warmup.models import Alert
from webhooks.models import DeadLetter

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# Windows this process has alerted, per tenant: further batches of the window cost no query.
_alerted: dict[int, datetime] = {}


def window_start(now: datetime) -> datetime:
    window = timedelta(minutes=max(1, settings.UNATTRIBUTED_ALERT_WINDOW_MINUTES))
    return EPOCH + ((now - EPOCH) // window) * window


def check(tenant: Tenant, examples: Iterable[str], now: datetime | None = None) -> Alert | None:
    """Raise the tenant's spike alert if its unattributed dead letters of this window reach the threshold.

    One COUNT over the window's dead letters; the alert is raised once per tenant and window, also when
    several processes cross the threshold at the same moment. Returns the alert when this call raised it.
    """
    threshold = settings.UNATTRIBUTED_ALERT_THRESHOLD
    if threshold <= 0:
        return None
    now = now or timezone.now()
    start = window_start(now)
    if _alerted.get(tenant.pk) == start:
        return None
    count = DeadLetter.objects.filter(
        tenant=tenant,
        received_at__gte=start,
        reason__in=[DeadLetter.Reason.UNKNOWN_IP, DeadLetter.Reason.UNATTRIBUTED],
    ).count()
    if count < threshold:
        return None
    alert = alerts.alert_unattributed_spike(
        tenant, count=count, since=start, threshold=threshold, examples=examples, when=now
    )
    _alerted[tenant.pk] = start
    return alert
