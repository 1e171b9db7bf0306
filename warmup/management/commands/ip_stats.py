"""`ip_stats`: an IP's consolidated daily stats, as a table or as the stats API's JSON."""

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from warmup.stats import daily_stats

from .record_stats import find_ip, parse_date

COLUMNS = ("date", "sent", "delivered", "bounced", "complaints", "opens", "clicks", "bounce_rate", "complaint_rate")


class Command(BaseCommand):
    help = "Shows the consolidated daily stats of one IP (from and to inclusive); --json prints the API's JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ip", required=True, help="The sending IP address.")
        parser.add_argument("--from", dest="date_from", help="First day, YYYY-MM-DD.")
        parser.add_argument("--to", dest="date_to", help="Last day, YYYY-MM-DD.")
        parser.add_argument("--json", action="store_true", help="Print the JSON list the stats API returns.")

    def handle(self, *args, **options) -> None:
        ip = find_ip(options["ip"])
        date_from = parse_date(options["date_from"], "--from") if options["date_from"] else None
        date_to = parse_date(options["date_to"], "--to") if options["date_to"] else None
        if date_from and date_to and date_from > date_to:
            raise CommandError("--from must not be after --to")
        rows = daily_stats(ip, date_from, date_to)
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
        else:
            self.stdout.write(format_table(rows))


def format_table(rows: list[dict]) -> str:
    """Right-aligned columns with a header; a line saying so when there is nothing."""
    if not rows:
        return "No consolidated stats for that period."
    cells = [list(COLUMNS)] + [[_cell(row[column]) for column in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells)


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
