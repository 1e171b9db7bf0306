"""forecast: a tenant's daily capacity day by day, assuming clean warmups (PRODUCT.md section 7)."""

import json

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from domains.models import Tenant
from warmup.forecast import forecast
from warmup.onboarding import resolve_tenant


def only_or_named_tenant(value: str | None) -> Tenant:
    """The tenant named (slug or id); without a name, the only tenant there is."""
    if value:
        try:
            return resolve_tenant(value)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
    tenants = list(Tenant.objects.order_by("slug")[:2])
    if len(tenants) == 1:
        return tenants[0]
    if not tenants:
        raise CommandError("There is no tenant yet; create one with add_tenant.")
    slugs = ", ".join(Tenant.objects.order_by("slug").values_list("slug", flat=True))
    raise CommandError(f"Several tenants exist; choose one with --tenant ({slugs}).")


def positive(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def changed_rows(days: list[dict]) -> list[dict]:
    """The first and last day and every day whose figures differ from the day before."""
    keys = ("active", "warming", "paused", "scheduled", "total_daily_capacity")
    shown = []
    for index, row in enumerate(days):
        if index == 0 or index == len(days) - 1 or any(row[k] != days[index - 1][k] for k in keys):
            shown.append(row)
    return shown


class Command(BaseCommand):
    help = (
        "Forecast a tenant's daily sending capacity, assuming clean warmups from today and new IPs added "
        "on the earliest dates the rotation rule allows. The table lists the days whose figures change."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", metavar="T", help="Tenant slug or id (may be left out with one tenant).")
        parser.add_argument("--days", type=positive, default=365, metavar="N", help="Days to forecast (365).")
        parser.add_argument(
            "--add-per-week",
            type=positive,
            metavar="K",
            help="New IPs started per 7 days (default and maximum: WARMUP_MAX_NEW_IPS_PER_WEEK).",
        )
        parser.add_argument(
            "--target-ips", type=positive, metavar="N", help="Total non-retired IPs to reach; additions stop there."
        )
        parser.add_argument("--json", action="store_true", help="Print the forecast JSON (as the API does).")

    def handle(self, *args, **options):
        tenant = only_or_named_tenant(options["tenant"])
        days, per_week = options["days"], options["add_per_week"]
        if not 1 <= days <= 3650:
            raise CommandError("--days must be between 1 and 3650.")
        limit = settings.WARMUP_MAX_NEW_IPS_PER_WEEK
        if per_week is not None and per_week > limit:
            raise CommandError(f"--add-per-week may not exceed WARMUP_MAX_NEW_IPS_PER_WEEK ({limit}).")
        result = forecast(tenant, days=days, add_per_week=per_week, target_ips=options["target_ips"])
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=1))
            return
        self.print_table(result)

    def print_table(self, result: dict) -> None:
        self.stdout.write(
            f"Tenant {result['tenant']}: target {result['target_ips']} IPs, {result['target_capacity']:,} emails/day."
        )
        self.stdout.write(
            f"{'DAY':>5}  {'DATE':<10}  {'ACTIVE':>6}  {'WARMING':>7}  {'PAUSED':>6}  {'SCHED':>5}  CAPACITY"
        )
        for row in changed_rows(result["days"]):
            self.stdout.write(
                f"{row['day']:>5}  {row['date']:<10}  {row['active']:>6}  {row['warming']:>7}  {row['paused']:>6}  "
                f"{row['scheduled']:>5}  {row['total_daily_capacity']:>8,}"
            )
        if result["target_reached_on"]:
            self.stdout.write(self.style.SUCCESS(f"Target capacity reached on {result['target_reached_on']}."))
        else:
            self.stdout.write(self.style.WARNING("Target capacity not reached within the forecast."))
