"""Retention: what the daily prune removes once it has served its purpose (PRODUCT.md section 6).

- de-duplication keys of the database counter store past their expiry (Redis expires its own);
- message references past their expiry and dead letters older than DEAD_LETTER_RETENTION_DAYS (the
  ingestion app's tables, looked up through the app registry so that `warmup` does not import
  `webhooks`, keeping dependencies one way);
- consolidation ledger rows older than 30 days: by then no batch of theirs can still be in flight.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.apps import apps
from django.conf import settings
from django.utils import timezone

from .models import ConsolidationBatch, CounterDedupKey

LEDGER_RETENTION_DAYS = 30


def prune(now: datetime | None = None) -> dict[str, int]:
    """Delete expired data; returns the number of rows deleted per kind."""
    now = now or timezone.now()
    deleted = {
        "dedup_keys": CounterDedupKey.objects.filter(expires_at__lte=now).delete()[0],
        "consolidation_batches": ConsolidationBatch.objects.filter(
            consolidated_at__lt=now - timedelta(days=LEDGER_RETENTION_DAYS)
        ).delete()[0],
    }
    if apps.is_installed("webhooks"):
        message_ref = apps.get_model("webhooks", "MessageRef")
        dead_letter = apps.get_model("webhooks", "DeadLetter")
        deleted["message_refs"] = message_ref.objects.filter(expires_at__lte=now).delete()[0]
        deleted["dead_letters"] = dead_letter.objects.filter(
            received_at__lt=now - timedelta(days=settings.DEAD_LETTER_RETENTION_DAYS)
        ).delete()[0]
    return deleted
