"""Per-sender rate limit of the webhook endpoints: WEBHOOK_RATE_LIMIT_PER_MINUTE requests a minute for
each tenant, and for each MTA source.

A fixed window per tenant and per minute of the clock, counted per request (a batch of a thousand
records is one request) by the counter store, as a `Window` hit of the request's counting call: with
Redis a key shared by every web process and host (``wp:rl:{t<tenant>}:<window>``), counted by the
counting script in the same round trip as the events, a request with nothing to count included (a
separate INCR on a cluster); with the database store (the embedded default, one host) a count in the
process's memory. Over the limit the view answers 429 with `Retry-After` (the seconds left in the
window) and nothing of the request is counted or kept, so that a well-behaved sender simply retries
later. A limit of 0 or less turns the check off.
"""

from __future__ import annotations

import time

from django.conf import settings

from warmup.counters import Window

WINDOW_SECONDS = 60


def window_key(owner_id: int, window: int, scope: str = "t") -> str:
    """The name of a tenant's window ("t"), or an MTA source's ("m"); the braces keep it on the tenant's
    Redis Cluster slot."""
    return f"wp:rl:{{{scope}{owner_id}}}:{window}"


def window_for(owner_id: int, *, now: float | None = None, scope: str = "t") -> Window | None:
    """The window a request of the tenant (or MTA source) counts in now; None when the limit is off."""
    limit = settings.WEBHOOK_RATE_LIMIT_PER_MINUTE
    if limit <= 0:
        return None
    now = time.time() if now is None else now
    return Window(window_key(owner_id, int(now // WINDOW_SECONDS), scope), limit, WINDOW_SECONDS)


def retry_after(*, now: float | None = None) -> int:
    """Seconds until the current window ends (the 429's Retry-After)."""
    now = time.time() if now is None else now
    return max(1, int((int(now // WINDOW_SECONDS) + 1) * WINDOW_SECONDS - now + 0.999))
