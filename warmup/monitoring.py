"""The monitoring view: every IP of some tenants with its phase, quota and today's live sending, overall
and per mailbox provider.

`warmup_status()` builds the JSON of PRODUCT.md section 7 "Monitoring view" (each IP's entry adds a
`providers` object: share, quota, sent today and suspension per provider); the API (`GET /api/v1/warmup`)
and the `warmup_status` command both print it. It costs at most five SQL queries (the IPs with their plans,
their tenants, the tenants' shares, their history when they have no shares, the suspensions in force) and one
counter-store round trip whatever the number of IPs.
"""

from collections.abc import Iterable
from datetime import date

from django.db.models import F

from domains.models import IP, Tenant

from .counters import CounterStoreUnavailable, get_store
from .engine import ip_daily_quota
from .models import WarmupPlan
from .providers import PROVIDERS, ProviderQuota, provider_quotas


def plan_of(ip: IP) -> WarmupPlan | None:
    """The IP's plan, or None."""
    # With select_related("plan") a missing reverse one-to-one is cached: no query either way.
    try:
        return ip.plan
    except WarmupPlan.DoesNotExist:
        return None


def live_sent(keys: list[tuple[int, date]]) -> dict[tuple[int, date], dict[str, int]] | None:
    """Live "sent" per provider of several IP-days in one round trip; None when the counter store is down.

    The monitoring view must answer while Redis is unreachable (that is when operators look at it),
    so unavailability becomes "unknown" rather than an error.
    """
    if not keys:
        return {}
    try:
        return get_store().sent_by_provider(keys)
    except CounterStoreUnavailable:
        return None


def ip_entry(ip: IP, quota: int, sent: dict[str, int] | None, providers: dict[str, ProviderQuota]) -> dict:
    """One IP's row of the monitoring view (`ip` loaded with its tenant, domain and plan); `quota` is its
    daily quota, `sent` today's per provider (None: unknown), `providers` its provider quotas."""
    plan = plan_of(ip)
    sent_today = None if sent is None else sum(sent.values())
    return {
        "ip": ip.address,
        "domain": getattr(ip, "domain_name", None) or ip.domain.name,
        "tenant": ip.tenant.slug,
        "phase": plan.phase if plan else None,
        "status": ip.status,
        "plan_status": plan.status if plan else None,
        "start_date": plan.start_date.isoformat() if plan else None,
        "daily_quota": quota,
        "sent_today": sent_today,
        "remaining_today": None if sent_today is None else max(0, quota - sent_today),
        "warmup_duration_days": plan.warmup_duration_days() if plan else 0,
        "needs_attention": plan.needs_attention if plan else False,
        "providers": {
            provider: {
                "share": part.share,
                "daily_quota": part.daily_quota,
                "sent_today": None if sent is None else sent.get(provider, 0),
                "suspended_until": part.suspended_until.isoformat() if part.suspended_until else None,
            }
            for provider, part in providers.items()
        },
    }


def ip_entries(ips: list[IP], *, today: date | None = None, live: bool = True) -> list[dict]:
    """The monitoring rows of IPs loaded by `monitored_ips` (tenant cached), in at most three queries and one
    counter-store round trip. `live=False` takes nothing as sent (an IP just added) without asking the store.
    """
    tenant_days = {}
    for ip in ips:
        if ip.tenant_id not in tenant_days:
            tenant_days[ip.tenant_id] = today or ip.tenant.today()
    keys = [(ip.id, tenant_days[ip.tenant_id]) for ip in ips]
    nothing = dict.fromkeys(PROVIDERS, 0)
    sent = live_sent(keys) if live else {key: nothing for key in keys}
    quotas = {ip.id: ip_daily_quota(ip) for ip in ips}
    by_provider = provider_quotas(ips, quotas)
    return [
        ip_entry(ip, quotas[ip.id], None if sent is None else sent.get(key, nothing), by_provider[ip.id])
        for ip, key in zip(ips, keys, strict=True)
    ]


# The plan fields a row reads (through the model's rules); the rest stays in the database.
PLAN_FIELDS = ("phase", "status", "steps", "start_date", "paused_until", "completed_on", "last_ticked_date")


def monitored_ips(tenants: Iterable[Tenant]):
    """The IPs the view lists, each with its plan and its domain's name, in one query.

    Retired IPs are left out of the list and of every count: they no longer send and have no
    quota, and an operator looking at capacity wants the IPs that do. Only the fields a row reads
    are loaded, and the domain's name is annotated rather than joined into a model: building fewer,
    smaller model instances is what keeps 1,000 IPs well under 100 ms.
    """
    return (
        IP.objects.filter(tenant__in=tenants)
        .exclude(status=IP.Status.RETIRED)
        .select_related("plan")
        .annotate(domain_name=F("domain__name"))
        .only("address", "status", "tenant_id", *(f"plan__{name}" for name in PLAN_FIELDS))
        .order_by("tenant__slug", "address")
    )


def warmup_status(tenants: Iterable[Tenant], *, today: date | None = None) -> dict:
    """The monitoring view of the given tenants (PRODUCT.md section 7).

    `today` overrides each tenant's current date (in its own zone) for the live sent counts.
    """
    ips = list(monitored_ips(tenants))
    # One query for the tenants of the rows, shared by them (rather than one Tenant object per row).
    tenant_of = Tenant.objects.in_bulk({ip.tenant_id for ip in ips}) if ips else {}
    tenant_field = IP._meta.get_field("tenant")
    for ip in ips:
        tenant_field.set_cached_value(ip, tenant_of[ip.tenant_id])
    entries = ip_entries(ips, today=today)
    return {
        "ips": entries,
        "active_ips": sum(1 for ip in ips if ip.status == IP.Status.ACTIVE),
        "warming_ips": sum(1 for ip in ips if ip.status == IP.Status.WARMING),
        "paused_ips": sum(1 for ip in ips if ip.status == IP.Status.PAUSED),
        "scheduled_ips": sum(1 for entry in entries if entry["plan_status"] == WarmupPlan.Status.SCHEDULED),
        "total_daily_capacity": sum(entry["daily_quota"] for entry in entries),
    }
