"""`record_stats`: add counts to one of an IP's days through the counter store (consolidated like events)."""

from datetime import date

from django.core.management.base import BaseCommand, CommandError, CommandParser

from domains.models import IP, normalise_ip
from warmup.counters import CounterStoreUnavailable
from warmup.stats import record_stats

COUNTED = ("delivered", "bounced", "complaints", "opens", "clicks")


def non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise ValueError(f"{value} is negative")
    return number


def find_ip(address: str) -> IP:
    """The IP with that address, or CommandError saying what is wrong."""
    try:
        address = normalise_ip(address)
    except ValueError as exc:
        raise CommandError(f"--ip: {exc}") from None
    ip = IP.objects.select_related("tenant").filter(address=address).first()
    if ip is None:
        raise CommandError(f"--ip: no IP {address} is known (add it with add_domain first)")
    return ip


def parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: {value!r} is not a date in YYYY-MM-DD form") from None


class Command(BaseCommand):
    help = (
        "Adds counts to one day of an IP (default: today in its tenant's zone) through the counter store. "
        "The daily stats row appears at the next consolidation, as for webhook events."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ip", required=True, help="The sending IP address.")
        parser.add_argument("--date", help="The day, YYYY-MM-DD (default: today in the tenant's zone).")
        parser.add_argument("--sent", required=True, help="Messages sent.")
        for name in COUNTED:
            parser.add_argument(f"--{name}", default="0", help=f"{name.capitalize()} (default 0).")

    def handle(self, *args, **options) -> None:
        ip = find_ip(options["ip"])
        day = parse_date(options["date"], "--date") if options["date"] else None
        counts = {}
        for name in ("sent", *COUNTED):
            try:
                counts[name] = non_negative(options[name])
            except ValueError as exc:
                raise CommandError(f"--{name}: {exc}") from None
        try:
            day = record_stats(ip, counts, day)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except CounterStoreUnavailable as exc:
            raise CommandError(f"The counter store is unreachable, nothing was recorded: {exc}") from None
        if options["verbosity"]:
            figures = ", ".join(f"{name} {value}" for name, value in counts.items() if value)
            self.stdout.write(self.style.SUCCESS(f"Recorded for {ip.address} on {day}: {figures or 'nothing'}."))
