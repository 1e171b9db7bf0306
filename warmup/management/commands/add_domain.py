"""`add_domain --tenant T --domain D --ip A [--hostname H] [--start YYYY-MM-DD] [--force]`.

Creates the domain, its IP and the IP's warmup plan in one transaction (warmup.onboarding). Without
--start the plan takes the earliest date the rotation rule allows; --force accepts a start that breaks it.
"""

from datetime import date

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from warmup.models import WarmupPlan
from warmup.onboarding import add_domain_with_ip, describe_errors


def parse_date(value: str | None, option: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: {value!r} is not a date; use YYYY-MM-DD.") from None


class Command(BaseCommand):
    help = (
        "Add a sending domain with its IP and start (or schedule) the IP's warmup. At most "
        "WARMUP_MAX_NEW_IPS_PER_WEEK warmups may start in any 7 days per tenant."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug or id.")
        parser.add_argument("--domain", required=True, help="Sending domain, e.g. mail6.sos-mail.com.")
        parser.add_argument("--ip", required=True, help="Sending IP address (IPv4 or IPv6).")
        parser.add_argument("--hostname", default="", help="rDNS / EHLO name (default: the domain).")
        parser.add_argument(
            "--start",
            default=None,
            help="Day 1 of the warmup, YYYY-MM-DD (default: the earliest date the rotation rule allows). "
            "A past date is allowed: the next tick catches up.",
        )
        parser.add_argument("--force", action="store_true", help="Accept a --start date that breaks the rotation rule.")

    def handle(self, *args, **options):
        start = parse_date(options["start"], "--start")
        try:
            plan = add_domain_with_ip(
                tenant=options["tenant"],
                domain=options["domain"],
                ip=options["ip"],
                hostname=options["hostname"],
                start=start,
                force=options["force"],
            )
        except ValidationError as exc:
            raise CommandError(describe_errors(exc)) from None
        if options["verbosity"]:
            self.stdout.write(self.style.SUCCESS(describe_plan(plan)))


def describe_plan(plan: WarmupPlan) -> str:
    ip = plan.ip
    if plan.status == WarmupPlan.Status.SCHEDULED:
        when = f"scheduled to start on {plan.start_date}"
    else:
        when = f"warming since {plan.start_date} at {plan.phase} ({plan.daily_quota}/day)"
    return f"Added {ip.domain.name} on {ip.address} for {ip.tenant.slug}: warmup {when}."
