"""`advance_warmup [--date YYYY-MM-DD]`: run the daily warmup tick now (what beat runs at 01:00)."""

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from warmup.engine import TickReport, tick


def describe_report(report: TickReport) -> list[str]:
    """One line per state change, then a summary."""
    lines = []
    for event in report.events:
        ip = event.plan.ip
        change = event.get_kind_display().lower()
        if event.from_phase != event.to_phase:
            change += f" {event.from_phase} -> {event.to_phase}"
        if event.from_status != event.to_status:
            change += f" ({event.from_status} -> {event.to_status})"
        reason = f": {event.reason}" if event.reason else ""
        lines.append(f"{event.date} {ip.address} {ip.domain.name}: {change}{reason}")
    if not report.dates:
        lines.append("Nothing to do: every plan is up to date.")
    else:
        span = str(report.dates[0]) if len(report.dates) == 1 else f"{report.dates[0]}..{report.dates[-1]}"
        changes = len(report.events)
        lines.append(
            f"Processed {report.plans_processed} plan(s) for {span}: {changes} change{'s' if changes != 1 else ''}."
        )
    return lines


class Command(BaseCommand):
    help = (
        "Run the daily warmup tick as of a date: start scheduled plans, judge rates, pause, resume, advance "
        "and complete, catching up on every date since each plan was last processed. Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--date",
            default=None,
            help="Process up to this date, YYYY-MM-DD (default: today in each tenant's zone, once past 01:00 there).",
        )

    def handle(self, *args, **options):
        as_of = None
        if options["date"]:
            try:
                as_of = date.fromisoformat(options["date"])
            except ValueError:
                raise CommandError(f"--date: {options['date']!r} is not a date; use YYYY-MM-DD.") from None
        report = tick(as_of)
        if options["verbosity"]:
            for line in describe_report(report):
                self.stdout.write(line)
