"""Retention: what the daily prune removes once it has served its purpose (PRODUCT.md section 6).

- de-duplication keys and message references of the database counter store past their expiry (Redis
  expires its own);
- consolidation ledger rows older than 30 days: by then no batch of theirs can still be in flight;
- the database counter store's throttling window counters of days WINDOW_RETENTION_DAYS old (the check
  reads the last hour; Redis expires its window hashes itself).

The ingestion app prunes its own dead letters (`webhooks.retention`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from .counters import WINDOW_PREFIX
from .models import ConsolidationBatch, CounterCell, CounterDedupKey, MessageRef

LEDGER_RETENTION_DAYS = 30
# Window counters are kept on their (tenant's) day; two days back is before every zone's yesterday.
WINDOW_RETENTION_DAYS = 2


def prune(now: datetime | None = None) -> dict[str, int]:
    """Delete expired data; returns the number of rows deleted per kind."""
    now = now or timezone.now()
    return {
        "dedup_keys": CounterDedupKey.objects.filter(expires_at__lte=now).delete()[0],
        "message_refs": MessageRef.objects.filter(expires_at__lte=now).delete()[0],
        "consolidation_batches": ConsolidationBatch.objects.filter(
            consolidated_at__lt=now - timedelta(days=LEDGER_RETENTION_DAYS)
        ).delete()[0],
        "window_counters": CounterCell.objects.filter(
            date__lt=now.date() - timedelta(days=WINDOW_RETENTION_DAYS), field__startswith=WINDOW_PREFIX
        ).delete()[0],
    }
