"""Classification of a deferral's SMTP reply: rate-limited, reputation block or other (README "Providers").

Owns `classify()`, which the ingestion pipeline calls once per deferred event that carries a reply, with
the enabled `DeferralRule` of the lowest order that matches (the event's provider or any). The rules are
read through a per-process cache that lives TTL_SECONDS (cachetools' TTLCache, as in `webhooks.cache`):
in the steady state ingestion makes no query for them. A save or delete of a rule clears the cache at once
in the process that made it (the admin); other processes see the change within TTL_SECONDS.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

from cachetools import TTLCache, cached
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from .models import DeferralRule

logger = logging.getLogger(__name__)

TTL_SECONDS = 5.0
# Case-insensitive; "." also crosses the line breaks of a multi-line reply ("421-4.7.28 ...\n421 4.7.28 ...").
FLAGS = re.IGNORECASE | re.DOTALL
RATE_LIMITED = DeferralRule.Classification.RATE_LIMITED.value
REPUTATION = DeferralRule.Classification.REPUTATION.value
OTHER = DeferralRule.Classification.OTHER.value
THROTTLING = frozenset({RATE_LIMITED, REPUTATION})

_clock = time.monotonic  # replaced by tests to age the cache
_lock = threading.Lock()  # TTLCache is not thread-safe; gunicorn's gthread workers share a process
_rules: TTLCache = TTLCache(maxsize=1, ttl=TTL_SECONDS, timer=lambda: _clock())


@dataclass(frozen=True, slots=True)
class CompiledRule:
    provider: str  # "" for any
    regex: re.Pattern
    classification: str


@cached(_rules, lock=_lock)
def rules() -> tuple[CompiledRule, ...]:
    """The enabled rules in the order they are tried, from the cache while it lives (one query otherwise)."""
    compiled = []
    for provider, pattern, classification in DeferralRule.objects.filter(enabled=True).values_list(
        "provider", "pattern", "classification"
    ):
        try:
            regex = re.compile(pattern, FLAGS)
        except re.error:  # saved around the admin's validation (a shell, a fixture): skipped, not fatal
            logger.warning("Deferral rule pattern %r is not a regular expression; skipped", pattern)
            continue
        compiled.append(CompiledRule(provider, regex, classification))
    return tuple(compiled)


def classify(provider: str, reply: str) -> str:
    """The classification of a deferral's reply for `provider`: the first matching rule's, else "other"."""
    for rule in rules():
        if (not rule.provider or rule.provider == provider) and rule.regex.search(reply):
            return rule.classification
    return OTHER


class Classifier:
    """`classify()` for one batch: a reply seen twice for the same provider is classified once."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str] = {}

    def __call__(self, provider: str, reply: str) -> str:
        found = self._seen.get((provider, reply))
        if found is None:
            found = self._seen[(provider, reply)] = classify(provider, reply)
        return found


def invalidate() -> None:
    """Forget the cached rules of this process."""
    with _lock:
        _rules.clear()


def _changed(sender, instance, using, **kwargs) -> None:
    invalidate()
    transaction.on_commit(invalidate, using=using)  # and after a load that read the old rows meanwhile


post_save.connect(_changed, sender=DeferralRule, dispatch_uid="webhooks.deferrals.saved")
post_delete.connect(_changed, sender=DeferralRule, dispatch_uid="webhooks.deferrals.deleted")
