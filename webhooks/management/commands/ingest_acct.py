"""`ingest_acct FILE --tenant T`: backfill a PowerMTA accounting CSV file through the webhook pipeline.

The file is streamed in batches of 1,000 records (constant memory for millions of lines), each batch
counted with one counter-store call, exactly as if it had been posted; re-running the same file counts
nothing twice. A progress bar shows on a terminal.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from warmup.counters import CounterStoreUnavailable
from webhooks.ingest import IngestResult, TenantContext, ingest
from webhooks.management.commands.webhook_token import find_tenant
from webhooks.parsers import UnparseableBody
from webhooks.parsers.powermta import CSV_BATCH_SIZE, iter_csv_batches


@dataclass
class BackfillSummary:
    """Totals of a backfill; only the first rejections are kept, so memory stays constant."""

    accepted: int = 0
    duplicates: int = 0
    unattributed: int = 0
    ignored: int = 0
    rejected_count: int = 0
    rejected: list[dict] = field(default_factory=list)

    def add(self, result: IngestResult, keep: int = 20) -> None:
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.unattributed += result.unattributed
        self.ignored += result.ignored
        self.rejected_count += len(result.rejected)
        self.rejected.extend(result.rejected[: max(0, keep - len(self.rejected))])


def ingest_file(path: Path, tenant, *, progress: bool = False, batch_size: int = CSV_BATCH_SIZE) -> BackfillSummary:
    """Count every record of an accounting file for a tenant, batch by batch."""
    summary = BackfillSummary()
    ctx = TenantContext(tenant)
    with (
        path.open("rb") as raw,
        io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") as lines,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, disable=not progress, desc=path.name) as bar,
    ):
        for batch in iter_csv_batches(lines, batch_size=batch_size):
            summary.add(ingest(ctx, batch))
            bar.update(raw.tell() - bar.n)
    return summary


class Command(BaseCommand):
    help = (
        "Backfill from a PowerMTA accounting CSV file (header line first) through the same pipeline as "
        "the webhook: counted per IP and day, de-duplicated, unattributed records kept as dead letters."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="Path of the accounting CSV file.")
        parser.add_argument("--tenant", required=True, help="Tenant slug or id whose IPs the records credit.")

    def handle(self, *args, file: str, tenant: str, **options):
        path = Path(file)
        if not path.is_file():
            raise CommandError(f"FILE: {file!r} does not exist or is not a file.")
        found = find_tenant(tenant)
        try:
            result = ingest_file(path, found, progress=sys.stderr.isatty() and options["verbosity"] > 0)
        except UnparseableBody as exc:
            raise CommandError(f"FILE: {exc}") from None
        except CounterStoreUnavailable as exc:
            raise CommandError(
                f"The counter store is unavailable ({exc}); batches counted so far stay counted, "
                "run the command again to finish (nothing is counted twice)."
            ) from None
        if options["verbosity"] > 0:
            self.stdout.write(
                self.style.SUCCESS(
                    f"{path.name}: {result.accepted} accepted, {result.duplicates} duplicates, "
                    f"{result.unattributed} unattributed, {result.ignored} ignored, "
                    f"{result.rejected_count} rejected."
                )
            )
            for entry in result.rejected[:20]:
                self.stdout.write(f"  record {entry['record']}: {entry['error']}")
            if result.rejected_count > len(result.rejected):
                more = result.rejected_count - len(result.rejected)
                self.stdout.write(f"  ... and {more} more (see the dead letters in the admin)")
