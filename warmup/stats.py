"""Recording counts by hand (command, API, task) and reading an IP's consolidated daily statistics.

Recorded counts take the same path as webhook events: the counter store, then consolidation.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from domains.models import IP

from .counters import COUNTERS, Increment, get_store
from .models import DailyStat

# The figures the stats API and `ip_stats` show, in their order.
SHOWN = ("sent", "delivered", "bounced", "complaints", "opens", "clicks")


def clean_counts(counts: Mapping[str, object]) -> dict[str, int]:
    """Counter name -> non-negative whole number; ValueError naming the field otherwise."""
    cleaned = {}
    for name, value in counts.items():
        if name not in COUNTERS:
            raise ValueError(f"{name}: unknown counter (expected one of {', '.join(COUNTERS)})")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: must be a whole number, not {value!r}")
        if value < 0:
            raise ValueError(f"{name}: must not be negative")
        if value:
            cleaned[name] = value
    return cleaned


def record_stats(
    ip: IP,
    counts: Mapping[str, int],
    day: date | None = None,
    *,
    dedup_key: str | None = None,
    provider: str = "other",
) -> date:
    """Add counts to one of the IP's days (default: today in its tenant's zone); returns the day.

    The counts are the `provider`'s (a mailbox provider, "other" by default, as for hand-recorded counts).

    With a `dedup_key` the counts are added once, however often the call is repeated with that key (a
    retried task). Raises ValueError naming the field for bad counts and CounterStoreUnavailable when the
    store is down.
    """
    cleaned = clean_counts(counts)
    day = day or ip.tenant.today()
    if cleaned:
        get_store().apply([Increment(ip_id=ip.pk, day=day, counts=cleaned, provider=provider, dedup_key=dedup_key)])
    return day


def daily_stats(ip: IP, date_from: date | None = None, date_to: date | None = None) -> list[dict]:
    """The IP's consolidated days, oldest first, as the stats API returns them (rates in percent)."""
    stats = DailyStat.objects.filter(ip=ip).order_by("date")
    if date_from:
        stats = stats.filter(date__gte=date_from)
    if date_to:
        stats = stats.filter(date__lte=date_to)
    return [
        {
            "date": stat.date.isoformat(),
            **{name: getattr(stat, name) for name in SHOWN},
            "bounce_rate": percent(stat.bounced, stat.sent),
            "complaint_rate": percent(stat.complaints, stat.delivered),
        }
        for stat in stats.only("date", *SHOWN)
    ]


def percent(part: int, whole: int) -> float:
    """part / whole in percent, rounded to 2 decimals; 0 when there is nothing to divide by."""
    return round(part * 100 / whole, 2) if whole else 0.0
