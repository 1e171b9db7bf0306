"""Per-tenant rate limit of the webhook endpoints: WEBHOOK_RATE_LIMIT_PER_MINUTE requests a minute.

A fixed window per tenant and per minute of the clock, counted per request (a batch of a thousand
records is one request) in the counter store's `hit_window`: with Redis a key shared by every web
process and host (``wp:rl:{t<tenant>}:<window>``, INCR and EXPIRE in one round trip); with the
database store (the embedded default, one host) a count in the process's memory. Over the limit the
view answers 429 with `Retry-After` (the seconds left in the window) and counts nothing, so that a
well-behaved sender simply retries later. A limit of 0 or less turns the check off.
"""

from __future__ import annotations

import time

from django.conf import settings

from warmup.counters import get_store

WINDOW_SECONDS = 60


def window_key(tenant_id: int, window: int) -> str:
    """The name of a tenant's window (the braces keep it on the tenant's Redis Cluster slot)."""
    return f"wp:rl:{{t{tenant_id}}}:{window}"


def check(tenant_id: int, *, now: float | None = None) -> int:
    """Count one request of a tenant; 0 when it may proceed, else the seconds to wait (Retry-After).

    Raises CounterStoreUnavailable when the counter store cannot be reached: the request could not be
    counted anyway, and answering at once spares the sender a second timeout.
    """
    limit = settings.WEBHOOK_RATE_LIMIT_PER_MINUTE
    if limit <= 0:
        return 0
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    if get_store().hit_window(window_key(tenant_id, window), WINDOW_SECONDS) <= limit:
        return 0
    return max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
