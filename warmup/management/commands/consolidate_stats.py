"""`consolidate_stats`: move every finished day's counters into the daily stats now."""

from django.core.management.base import BaseCommand, CommandError

from warmup.consolidation import consolidate
from warmup.counters import CounterStoreUnavailable


class Command(BaseCommand):
    help = (
        "Moves every finished day's counters (any day before today in each tenant's zone) into the daily "
        "stats, exactly once. Safe to run at any time, also while events arrive or another run is going."
    )

    def handle(self, *args, **options) -> None:
        try:
            report = consolidate()
        except CounterStoreUnavailable as exc:
            raise CommandError(f"The counter store is unreachable; run again once it is back: {exc}") from None
        if options["verbosity"]:
            self.stdout.write(self.style.SUCCESS(f"Consolidated: {report}."))
