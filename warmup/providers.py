"""Per-mailbox-provider warmup: each IP's daily quota split by provider, and the suspensions that hold
a provider at 0 for a while (README "Providers").

Owns: a tenant's shares (its own table, else the split of its last 7 days of sent mail, else
settings.WARMUP_PROVIDER_SHARES), the split of a quota into provider quotas that add up to it, the
suspensions in force, and `provider_quotas()`, which every reader uses: the monitoring view, /metrics,
the dashboard, the plan page and the MTA configurations.

A suspended provider's quota is 0 and is not handed to the others: an IP in trouble at one provider
should not send more to the rest that day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.cache import cache
from django.db.models import IntegerField, Q, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from domains.models import IP, Tenant

from .counters import PROVIDERS
from .models import DailyStat, ProviderShare, ProviderSuspension

# The days of sent mail a tenant's default shares come from.
HISTORY_DAYS = 7
HISTORY_CACHE_SECONDS = 300


class ProviderQuota(NamedTuple):
    """One provider's part of an IP's day (a tuple: the monitoring view builds five per IP)."""

    provider: str
    share: float  # percent of the IP's quota, after scaling the tenant's weights to 100
    daily_quota: int  # 0 while suspended
    suspended_until: datetime | None = None


def default_shares() -> dict[str, float]:
    """settings.WARMUP_PROVIDER_SHARES, with every provider present (a missing one weighs 0)."""
    configured = settings.WARMUP_PROVIDER_SHARES
    return {provider: float(configured.get(provider, 0)) for provider in PROVIDERS}


def tenant_shares(tenants: Iterable[Tenant]) -> dict[int, dict[str, float]]:
    """Each tenant's provider weights, in at most two queries whatever the number of tenants.

    A tenant's own table wins. Without one, the split of its sent mail over the 7 days before today (in
    its zone); with no mail either, the setting's default.
    """
    tenants = list(tenants)
    shares: dict[int, dict[str, float]] = {}
    for row in ProviderShare.objects.filter(tenant__in=tenants).values_list("tenant_id", "provider", "share"):
        shares.setdefault(row[0], dict.fromkeys(PROVIDERS, 0.0))[row[1]] = float(row[2])
    shares = {pk: weights for pk, weights in shares.items() if sum(weights.values()) > 0}
    without = [tenant for tenant in tenants if tenant.pk not in shares]
    if without:
        shares.update(_history_shares(without))
    default = default_shares()
    return {tenant.pk: shares.get(tenant.pk, default) for tenant in tenants}


def _history_shares(tenants: list[Tenant]) -> dict[int, dict[str, float]]:
    """Sent per provider over each tenant's last HISTORY_DAYS days, from the daily stats' by_provider.

    Kept in Django's cache for HISTORY_CACHE_SECONDS per tenant and day: the days it sums end yesterday,
    so they change when consolidation lands yesterday's counts (or an operator edits a past day), while
    the monitoring view, the metrics and the MTA configurations ask for them on every request.
    """
    todays = {tenant.pk: tenant.today() for tenant in tenants}
    keys = {pk: f"warmup:history-shares:{pk}:{today.isoformat()}" for pk, today in todays.items()}
    found = cache.get_many(list(keys.values()))
    missing = [tenant for tenant in tenants if keys[tenant.pk] not in found]
    if missing:
        days = Q()
        for tenant in missing:
            today = todays[tenant.pk]
            days |= Q(ip__tenant=tenant, date__gte=today - timedelta(days=HISTORY_DAYS), date__lt=today)
        sums = {
            provider: Coalesce(
                Sum(Cast(KeyTextTransform("sent", KeyTextTransform(provider, "by_provider")), IntegerField())), 0
            )
            for provider in PROVIDERS
        }
        summed = {tenant.pk: {} for tenant in missing}  # {}: no mail in those days
        for row in DailyStat.objects.filter(days).values("ip__tenant_id").annotate(**sums).order_by():
            sent = {provider: float(row[provider]) for provider in PROVIDERS}
            if sum(sent.values()) > 0:
                summed[row["ip__tenant_id"]] = sent
        computed = {keys[pk]: sent for pk, sent in summed.items()}
        cache.set_many(computed, HISTORY_CACHE_SECONDS)
        found.update(computed)
    return {pk: found[key] for pk, key in keys.items() if found[key]}


def percentages(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights scaled to 100 (two decimals); all zero when they are."""
    total = sum(weights.get(provider, 0.0) for provider in PROVIDERS)
    if total <= 0:
        return dict.fromkeys(PROVIDERS, 0.0)
    return {provider: round(weights.get(provider, 0.0) * 100.0 / total, 2) for provider in PROVIDERS}


def split_quota(quota: int, weights: Mapping[str, float]) -> dict[str, int]:
    """`quota` split by the weights into whole messages that add up to it (largest remainder; ties go
    to the provider listed first)."""
    total = sum(weights.get(provider, 0.0) for provider in PROVIDERS)
    if quota <= 0 or total <= 0:
        return dict.fromkeys(PROVIDERS, 0)
    exact = {provider: quota * weights.get(provider, 0.0) / total for provider in PROVIDERS}
    parts = {provider: int(value) for provider, value in exact.items()}
    left = quota - sum(parts.values())
    by_remainder = sorted(PROVIDERS, key=lambda p: (-(exact[p] - parts[p]), PROVIDERS.index(p)))
    for provider in by_remainder[:left]:
        parts[provider] += 1
    return parts


def suspensions_in_force(ips: Iterable[IP], now: datetime | None = None) -> dict[int, dict[str, datetime]]:
    """{ip id: {provider: end of its suspension}} for the suspensions of these IPs in force at `now`, in one
    query (by their tenants: a short list to bind, whatever the number of IPs; suspensions are few)."""
    now = now or timezone.now()
    ips = list(ips)
    wanted = {ip.pk for ip in ips}
    found: dict[int, dict[str, datetime]] = {}
    rows = ProviderSuspension.objects.active(now).filter(ip__tenant_id__in={ip.tenant_id for ip in ips})
    for ip_id, provider, ends_at in rows.values_list("ip_id", "provider", "ends_at"):
        if ip_id not in wanted:
            continue
        current = found.setdefault(ip_id, {}).get(provider)
        if current is None or ends_at > current:
            found[ip_id][provider] = ends_at
    return found


def provider_quotas(
    ips: Iterable[IP], quotas: Mapping[int, int], now: datetime | None = None
) -> dict[int, dict[str, ProviderQuota]]:
    """Each IP's quota per provider: {ip id: {provider: ProviderQuota}}, in at most three queries.

    `ips` carry their tenant (select_related or a cached tenant); `quotas` is each IP's daily quota. IPs of a
    tenant with the same quota and no suspension share one split (a handful of quotas per tenant).
    """
    ips = list(ips)
    if not ips:
        return {}
    weights = tenant_shares({ip.tenant_id: ip.tenant for ip in ips}.values())
    suspended = suspensions_in_force(ips, now)
    splits: dict[tuple[int, int], dict[str, ProviderQuota]] = {}
    result = {}
    for ip in ips:
        quota = quotas.get(ip.pk, 0)
        split = splits.get((ip.tenant_id, quota))
        if split is None:
            tenant_weights = weights[ip.tenant_id]
            shares = percentages(tenant_weights)
            parts = split_quota(quota, tenant_weights)
            split = splits[(ip.tenant_id, quota)] = {
                provider: ProviderQuota(provider, shares[provider], parts[provider]) for provider in PROVIDERS
            }
        held = suspended.get(ip.pk)
        if held:
            split = {
                provider: part._replace(daily_quota=0, suspended_until=held[provider]) if provider in held else part
                for provider, part in split.items()
            }
        result[ip.pk] = split
    return result
