"""warmup_status: the monitoring view (PRODUCT.md section 7) as a table, or as the API's JSON."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from domains.models import Tenant
from warmup.monitoring import warmup_status
from warmup.onboarding import resolve_tenant

COLUMNS = (
    ("ip", "IP"),
    ("domain", "DOMAIN"),
    ("tenant", "TENANT"),
    ("status", "STATUS"),
    ("phase", "PHASE"),
    ("plan_status", "PLAN"),
    ("start_date", "START"),
    ("daily_quota", "QUOTA"),
    ("sent_today", "SENT"),
    ("remaining_today", "LEFT"),
    ("warmup_duration_days", "DAYS"),
)
PROVIDERS_HEADER = "BY PROVIDER (sent/quota)"


def provider_cell(providers: dict) -> str:
    """ "gmail 12/80, microsoft 0/0 suspended, ...": today's sent and quota per provider with a quota or mail."""
    parts = []
    for provider, figures in providers.items():
        sent = "-" if figures["sent_today"] is None else figures["sent_today"]
        if figures["suspended_until"]:
            parts.append(f"{provider} {sent}/0 suspended")
        elif figures["daily_quota"] or figures["sent_today"]:
            parts.append(f"{provider} {sent}/{figures['daily_quota']}")
    return ", ".join(parts) or "-"


def tenants_for(value: str | None):
    """The tenants to show: the one named (slug or id), else all of them."""
    if not value:
        return Tenant.objects.all()
    try:
        return [resolve_tenant(value)]
    except ValidationError as exc:
        raise CommandError("; ".join(exc.messages) + " (see the tenant list in the admin)") from None


def render_table(status: dict) -> list[str]:
    """The view as aligned text lines: one per IP, then the totals."""
    rows = [[label for _, label in COLUMNS] + [PROVIDERS_HEADER]]
    for entry in status["ips"]:
        cells = ["-" if entry[key] is None else str(entry[key]) for key, _ in COLUMNS]
        if entry["needs_attention"]:
            cells[3] += " (needs attention)"
        rows.append([*cells, provider_cell(entry["providers"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) + 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("")
    lines.append(
        "active {active_ips}, warming {warming_ips}, paused {paused_ips}, scheduled {scheduled_ips}; "
        "total daily capacity {total_daily_capacity:,}".format(**status)
    )
    if any(entry["sent_today"] is None for entry in status["ips"]):
        lines.append("The counter store is unreachable: today's sent counts are unknown.")
    return lines


class Command(BaseCommand):
    help = (
        "Show every IP of one tenant (or of all) with its phase, quota and today's sending; "
        "--json prints the same JSON as GET /api/v1/warmup."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", metavar="T", help="Tenant slug or id (default: all tenants).")
        parser.add_argument("--json", action="store_true", help="Print the API's JSON instead of a table.")

    def handle(self, *args, **options):
        status = warmup_status(tenants_for(options["tenant"]))
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        if not status["ips"]:
            self.stdout.write("No IPs.")
            return
        for line in render_table(status):
            self.stdout.write(line)
