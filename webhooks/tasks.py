"""Celery tasks of the ingestion app: thin callers of the modules that hold the rules."""

from __future__ import annotations

from celery import shared_task

from warmup.tasks import RETRY

from . import retention


@shared_task(name="webhooks.prune_dead_letters", **RETRY)
def prune_dead_letters_task() -> dict:
    """Delete dead letters older than DEAD_LETTER_RETENTION_DAYS (scheduled daily)."""
    return retention.prune()
