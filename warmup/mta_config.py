"""PowerMTA configuration for today's quotas (PRODUCT.md section 7, "PowerMTA configuration"), and
what both MTA configurations share (README "Loading the MTA configurations").

One `<virtual-mta>` per IP with its source host; a warming IP's vmta caps every destination at
ceil(quota / 24) messages an hour, so that the MTA, not the sender, enforces the plan, and then caps
each mailbox provider's recipient domains (settings.WARMUP_PROVIDER_DOMAINS) at ceil(provider quota /
24) an hour (warmup.providers); a provider suspended for an IP is held at 0 on every IP that sends,
active ones included. One `<virtual-mta-pool>` per domain lists the vmtas that may send (warming or
active). A paused or pending IP keeps its vmta but belongs to no pool, so it gets no traffic. The
output is sorted, so that two runs on the same state differ only in the header's time stamp.

Shared with the KumoMTA generator (warmup.kumomta_config): `sending_ips()` and `provider_caps()` (the
IPs a configuration lists and their provider caps, in a bounded number of queries) and
`config_hash()` (the content hash the admin shows, blind to comments so that it changes only when
what the MTA enforces changes).
"""

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from domains.models import IP, Domain, Tenant

from .engine import ip_daily_quota
from .providers import provider_quotas

# IP statuses whose vmta is a pool member. Every other status keeps its vmta out of the pools.
SENDING_STATUSES = (IP.Status.WARMING, IP.Status.ACTIVE)


class DryRunActive(RuntimeError):
    """WARMUP_DRY_RUN is on: the portal decides and records, but changes no quota the MTA sees."""


def hourly_rate(daily_quota: int) -> int:
    """The hourly cap that spreads a daily quota over the day (rounded up, so the quota is reachable)."""
    return math.ceil(daily_quota / 24)


# PowerMTA's `max-msg-rate` takes `unlimited | 0 | N/[M]{d|h|m|s}` ("maximum attempted recipients to
# this domain per time interval"; default `unlimited`; N "is required and must be non-zero"): the
# directive reference of the PowerMTA User's Guide (v4.x/5.x), as reproduced in public PowerMTA
# configuration tooling. So `0` is a value of its own, no attempted recipient at all, distinct from
# `unlimited`, and `0/h` is not a valid spelling. A suspended provider's domains therefore get
# `max-msg-rate 0`: PowerMTA attempts nothing to them from this vmta and their mail waits in the vmta's
# queue (up to the domain's bounce-after). Leaving the block out instead would fall back to the
# `<domain *>` cap, or to no cap at all on an active IP.
STOPPED_RATE = "0"
HASH_LENGTH = 12


@dataclass(frozen=True, slots=True)
class ProviderCap:
    """One provider's limit on one IP: the recipient domains it covers and its hourly rate."""

    provider: str
    domains: tuple[str, ...]
    daily_quota: int
    hourly_rate: int  # ceil(daily_quota / 24); 0 when suspended or when the provider's share is 0
    suspended_until: datetime | None


@dataclass(frozen=True, slots=True)
class SendingIP:
    """An IP as an MTA configuration lists it: its quota today and, when capped, its provider caps."""

    ip: IP
    daily_quota: int
    caps: tuple[ProviderCap, ...]  # sorted by provider; empty when the IP has nothing to cap


def provider_domains() -> dict[str, tuple[str, ...]]:
    """settings.WARMUP_PROVIDER_DOMAINS, sorted: the domains a provider cap is written for.

    "other" has no domains of its own: its mail is capped by the IP's overall cap only.
    """
    return {
        provider: tuple(sorted({domain.lower() for domain in domains}))
        for provider, domains in sorted(settings.WARMUP_PROVIDER_DOMAINS.items())
        if domains
    }


def sending_ips(tenant: Tenant) -> list[IP]:
    """The tenant's IPs an MTA configuration lists (retired IPs and domains left out), sorted by MTA name."""
    ips = list(
        IP.objects.for_tenant(tenant)
        .not_retired()
        .exclude(domain__status=Domain.Status.RETIRED)
        .select_related("domain", "plan", "tenant")
    )
    return sorted(ips, key=lambda ip: (ip.mta_name, ip.address))


def provider_caps(ips: Iterable[IP], now: datetime) -> dict[int, SendingIP]:
    """Each IP's quota and provider caps, {ip id: SendingIP}, in at most three queries whatever the number of IPs.

    A warming IP is capped for every provider; an active IP only for the providers suspended on it (it
    has no cap otherwise); a paused or pending IP for none (it is in no pool).
    """
    ips = list(ips)
    quotas = {ip.pk: ip_daily_quota(ip) for ip in ips}
    by_provider = provider_quotas([ip for ip in ips if ip.status in SENDING_STATUSES], quotas, now)
    domains = provider_domains()
    result = {}
    for ip in ips:
        caps = []
        for provider, quota in sorted(by_provider.get(ip.pk, {}).items()):
            if provider not in domains:
                continue
            if ip.status == IP.Status.ACTIVE and quota.suspended_until is None:
                continue
            caps.append(
                ProviderCap(
                    provider=provider,
                    domains=domains[provider],
                    daily_quota=quota.daily_quota,
                    hourly_rate=hourly_rate(quota.daily_quota),
                    suspended_until=quota.suspended_until,
                )
            )
        result[ip.pk] = SendingIP(ip=ip, daily_quota=quotas[ip.pk], caps=tuple(caps))
    return result


def cap_comment(cap: ProviderCap, daily_quota: int, zone) -> str:
    """The comment above a provider's domain blocks: its quota, or why it is at 0."""
    if cap.suspended_until is not None:
        until = cap.suspended_until.astimezone(zone).isoformat(timespec="minutes")
        return f"{cap.provider}: suspended until {until}, 0 messages"
    return f"{cap.provider}: {cap.daily_quota} of the daily quota {daily_quota}"


def config_hash(text: str) -> str:
    """The shortened sha256 of a configuration's directives: comments and blank lines are left out, so
    that the time stamp of the header (or a quota written in a comment) does not make an unchanged
    configuration look stale, while any changed rate, vmta, pool, source or suspension does."""
    directives = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return hashlib.sha256("\n".join(directives).encode()).hexdigest()[:HASH_LENGTH]


def stamp_hash(text: str) -> str:
    """`text` with its content hash written as a comment after the two header lines, so that the file
    an MTA loaded says which state it is; comments are outside the hash, so stamping does not change it."""
    lines = text.split("\n")
    stamp = (
        f"# Content hash {config_hash(text)}: when the admin's MTA configurations page shows another one, "
        "this file is stale."
    )
    return "\n".join([*lines[:2], stamp, *lines[2:]])


def prepare(tenant: Tenant, now: datetime | None, what: str) -> tuple[list, dict, list[str]]:
    """What both generators start from: the tenant's sending IPs, their caps at `now`, and the first two
    header lines. DryRunActive in dry run, so that a scheduled "generate && reload" leaves the MTA as it is."""
    if settings.WARMUP_DRY_RUN:
        raise DryRunActive(
            "WARMUP_DRY_RUN is on: the portal records its decisions but changes no MTA quota, "
            f"so no {what} is generated. Turn dry run off to generate it."
        )
    now = now or timezone.now()
    ips = sending_ips(tenant)
    local_now = now.astimezone(tenant.zone)
    header = [
        f"# {what} of tenant {tenant.slug} ({tenant.name}), generated by Warmup Portal.",
        f"# Generated at {local_now.isoformat(timespec='seconds')} for {local_now.date().isoformat()} "
        f"({tenant.time_zone}); regenerate after every daily tick, do not edit by hand.",
    ]
    return ips, provider_caps(ips, now), header


def generate_pmta_config(tenant: Tenant, *, now: datetime | None = None) -> str:
    """The tenant's PowerMTA configuration, to be included from the main config file.

    Retired IPs and domains are left out: they must not send, and a vmta that no pool names is
    noise in the MTA's configuration. In dry run nothing is generated (DryRunActive), so that a
    scheduled "generate && pmta reload" leaves the MTA's configuration as it is.
    """
    ips, capped, header = prepare(tenant, now, "PowerMTA configuration")
    lines = [
        *header,
        f"# {len(ips)} IPs; warming IPs are capped per hour at ceil(daily quota / 24), and each mailbox",
        "# provider's domains at ceil(provider quota / 24); a suspended provider is held at max-msg-rate 0.",
        "",
    ]

    pools: dict[str, list[str]] = defaultdict(list)
    for ip in ips:
        hostname = ip.hostname or ip.domain.name
        entry = capped[ip.pk]
        lines.append(f"<virtual-mta {ip.mta_name}>")
        lines.append(f"    smtp-source-host {ip.address} {hostname}")
        if ip.status == IP.Status.WARMING:
            quota = entry.daily_quota
            lines += [
                f"    # warming: daily quota {quota}",
                "    <domain *>",
                f"        max-msg-rate {hourly_rate(quota)}/h",
                "    </domain>",
            ]
        elif ip.status not in SENDING_STATUSES:
            lines.append(f"    # {ip.status}: in no pool, gets no traffic")
        for cap in entry.caps:
            rate = f"{cap.hourly_rate}/h" if cap.hourly_rate else STOPPED_RATE
            lines.append(f"    # {cap_comment(cap, entry.daily_quota, tenant.zone)}")
            for domain in cap.domains:
                lines += [f"    <domain {domain}>", f"        max-msg-rate {rate}", "    </domain>"]
        lines += ["</virtual-mta>", ""]
        if ip.status in SENDING_STATUSES:
            pools[ip.domain.name].append(ip.mta_name)

    for domain in sorted({ip.domain.name for ip in ips}):
        members = sorted(pools.get(domain, []))
        if not members:
            # PowerMTA has no use for an empty pool; mail injected for it is refused, which is the point.
            lines += [f"# <virtual-mta-pool {domain}> omitted: none of its IPs may send today.", ""]
            continue
        lines.append(f"<virtual-mta-pool {domain}>")
        lines += [f"    virtual-mta {name}" for name in members]
        lines += ["</virtual-mta-pool>", ""]
    return stamp_hash("\n".join(lines).rstrip("\n") + "\n")
