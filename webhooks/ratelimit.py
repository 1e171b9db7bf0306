"""Per-tenant rate limit of the webhook endpoints: WEBHOOK_RATE_LIMIT_PER_MINUTE requests a minute.

A fixed window per tenant and per minute of the clock, counted per request (a batch of a thousand
records is one request). Over the limit the view answers 429 with `Retry-After` (the seconds left in
the window) and counts nothing, so that a well-behaved sender simply retries later.

With the Redis counter store the window is a Redis key shared by every web process and host
(``wp:rl:{t<tenant>}:<window>``, INCR and EXPIRE pipelined: one round trip, the only one this check
adds to the hot path). With the database counter store (the embedded default, one host) it is
counted in process memory: per web process, which is close enough for a single-host installation
and costs no query. A limit of 0 or less turns the check off.
"""

from __future__ import annotations

import threading
import time

import redis
from django.conf import settings

from warmup.counters import CounterStoreUnavailable, get_redis

WINDOW_SECONDS = 60
# Kept a little longer than the window, so that a slow clock on one host never resets a live window.
KEY_TTL_SECONDS = 2 * WINDOW_SECONDS

_local_lock = threading.Lock()
_local_counts: dict[tuple[int, int], int] = {}


def window_key(tenant_id: int, window: int) -> str:
    """The Redis key of a tenant's window (the braces keep it on one Redis Cluster slot)."""
    return f"wp:rl:{{t{tenant_id}}}:{window}"


def check(tenant_id: int, *, now: float | None = None) -> int:
    """Count one request of a tenant; 0 when it may proceed, else the seconds to wait (Retry-After).

    Raises CounterStoreUnavailable when the Redis counter store cannot be reached: the request could
    not be counted anyway, and answering at once spares the sender a second timeout.
    """
    limit = settings.WEBHOOK_RATE_LIMIT_PER_MINUTE
    if limit <= 0:
        return 0
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    if settings.WARMUP_COUNTER_BACKEND == "redis":
        used = _hit_redis(tenant_id, window)
    else:
        used = _hit_local(tenant_id, window)
    if used <= limit:
        return 0
    return max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))


def _hit_redis(tenant_id: int, window: int) -> int:
    key = window_key(tenant_id, window)
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, KEY_TTL_SECONDS, nx=True)
        used, _ = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc
    return int(used)


def _hit_local(tenant_id: int, window: int) -> int:
    with _local_lock:
        if len(_local_counts) > 10_000:  # forget finished windows now and then
            for stale in [key for key in _local_counts if key[1] < window]:
                del _local_counts[stale]
        used = _local_counts.get((tenant_id, window), 0) + 1
        _local_counts[(tenant_id, window)] = used
    return used


def reset_local() -> None:
    """Forget the in-process windows (tests, or after changing the limit at run time)."""
    with _local_lock:
        _local_counts.clear()
