"""Retention of the ingestion's own data: dead letters older than DEAD_LETTER_RETENTION_DAYS."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .models import DeadLetter


def prune(now: datetime | None = None) -> dict[str, int]:
    """Delete old dead letters; returns the number of rows deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.DEAD_LETTER_RETENTION_DAYS)
    return {"dead_letters": DeadLetter.objects.filter(received_at__lt=cutoff).delete()[0]}
