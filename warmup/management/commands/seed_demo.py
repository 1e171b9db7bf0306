"""`seed_demo [--history]`: the SOS-Expat demo tenant with five domains and IPs, started one week apart.

With --history (what `make run` uses) the first warmup started five weeks ago and every past day gets
simulated consolidated statistics (each IP sends its quota of the day, about 1% bounces and 0.02%
complaints), with the real engine's tick run for each date, so that the plans are in the state they
would be in. Running it again creates nothing twice.
"""

import random
from datetime import date, timedelta

from django.core.management.base import BaseCommand
from django.db import transaction

from domains.models import IP, Domain, Tenant
from warmup.engine import tick
from warmup.models import DailyStat, WarmupPlan
from warmup.onboarding import add_domain_with_ip

TENANT = {"slug": "sos-expat", "name": "SOS-Expat", "time_zone": "Europe/Paris"}
DEMO_IPS = [(f"mail{n}.sos-mail.com", f"45.123.10.{n}", f"mail{n}-vmta") for n in range(1, 6)]
HISTORY_DAYS = 35
START_SPACING_DAYS = 7
# Share of the mail per mailbox provider, for the per-provider figures of the demo statistics.
PROVIDER_SHARES = (("gmail", 0.40), ("microsoft", 0.25), ("yahoo", 0.15), ("apple", 0.05))


def seed_tenant() -> tuple[Tenant, bool]:
    tenant = Tenant.objects.filter(slug=TENANT["slug"]).first()
    if tenant is not None:
        return tenant, False
    return Tenant.objects.create(**TENANT), True


def seed_ips(tenant: Tenant, first_start: date) -> list[WarmupPlan]:
    """Add the demo domains and IPs that do not exist yet, one warmup start a week."""
    created = []
    for index, (domain, address, source_name) in enumerate(DEMO_IPS):
        if IP.objects.filter(address=address).exists() or Domain.objects.filter(name=domain).exists():
            continue
        created.append(
            add_domain_with_ip(
                tenant=tenant,
                domain=domain,
                ip=address,
                hostname=domain,
                mta_source_name=source_name,
                start=first_start + timedelta(days=START_SPACING_DAYS * index),
                # The demo spacing is the rule's own; forcing keeps it whatever the local settings say.
                force=True,
            )
        )
    return created


def demo_stat(ip: IP, day: date, sent: int) -> DailyStat:
    """A plausible day of mail, the same for the same IP and day (seeded by both)."""
    rng = random.Random(f"{ip.address}/{day.isoformat()}")
    bounced = round(sent * rng.uniform(0.007, 0.013))
    hard = round(bounced * 0.6)
    block = round(bounced * 0.1)
    delivered = sent - bounced
    complaints = round(delivered * rng.uniform(0.0001, 0.0003))
    opens = round(delivered * rng.uniform(0.15, 0.25))
    clicks = round(opens * rng.uniform(0.08, 0.15))
    totals = {"sent": sent, "delivered": delivered, "bounced": bounced, "complaints": complaints, "opens": opens}
    by_provider: dict[str, dict[str, int]] = {}
    remaining = dict(totals)
    for provider, share in PROVIDER_SHARES:
        by_provider[provider] = {name: int(value * share) for name, value in totals.items()}
        for name, value in by_provider[provider].items():
            remaining[name] -= value
    by_provider["other"] = remaining
    return DailyStat(
        ip=ip,
        date=day,
        sent=sent,
        delivered=delivered,
        bounced=bounced,
        bounced_hard=hard,
        bounced_block=block,
        bounced_soft=bounced - hard - block,
        deferred=round(sent * rng.uniform(0.01, 0.03)),
        complaints=complaints,
        opens=opens,
        clicks=clicks,
        unsubscribes=round(delivered * rng.uniform(0.0005, 0.0015)),
        by_provider=by_provider,
    )


def simulate_history(tenant: Tenant, today: date) -> int:
    """Fill every finished day with statistics and tick each date; returns the number of days simulated.

    A plan's state after the tick of day D is the state in force on D, so each day's figures are written
    only for plans processed up to that day (a second run finds every plan up to date and writes nothing).
    """
    plans = WarmupPlan.objects.live().filter(ip__tenant=tenant).select_related("ip")
    ticked = [plan.last_ticked_date for plan in plans if plan.last_ticked_date]
    if not ticked:
        return 0
    day, days = min(ticked), 0
    while day < today:
        rows = [
            demo_stat(plan.ip, day, plan.daily_quota)
            for plan in plans.all()
            if plan.last_ticked_date == day
            and plan.start_date <= day
            and plan.status in (WarmupPlan.Status.WARMING, WarmupPlan.Status.COMPLETED)
        ]
        DailyStat.objects.bulk_create(rows, ignore_conflicts=True)
        day += timedelta(days=1)
        tick(as_of=day, tenants=[tenant])
        days += 1
    return days


class Command(BaseCommand):
    help = (
        "Create the demo tenant SOS-Expat (Europe/Paris) with mail1..mail5.sos-mail.com on 45.123.10.1..5, "
        "started one week apart. --history starts the first five weeks ago and simulates every past day. "
        "Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--history",
            action="store_true",
            help="Start the first warmup five weeks ago and fill every past day with simulated statistics.",
        )

    def handle(self, *args, **options):
        with transaction.atomic():
            tenant, created = seed_tenant()
            today = tenant.today()
            first_start = today - timedelta(days=HISTORY_DAYS) if options["history"] else today
            plans = seed_ips(tenant, first_start)
        days = simulate_history(tenant, today) if options["history"] else 0
        if options["verbosity"]:
            self.stdout.write(
                f"Tenant {tenant.name} ({tenant.slug}): {'created' if created else 'already there'}; "
                f"{len(plans)} domain(s) and IP(s) added, {days} day(s) of history simulated."
            )
            for plan in WarmupPlan.objects.filter(ip__tenant=tenant).select_related("ip__domain"):
                self.stdout.write(
                    f"  {plan.ip.address} {plan.ip.domain.name}: {plan.get_status_display().lower()}, "
                    f"{plan.phase}, quota {plan.daily_quota}/day, started {plan.start_date}"
                )
