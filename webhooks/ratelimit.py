"""Per-tenant rate limit of the webhook endpoints: WEBHOOK_RATE_LIMIT_PER_MINUTE requests a minute.

A fixed window per tenant and per minute of the clock, counted per request (a batch of a thousand
records is one request). Over the limit the view answers 429 with `Retry-After` (the seconds left in
the window) and counts nothing, so that a well-behaved sender simply retries later.

With the Redis counter store the window is a Redis key shared by every web process and host
(``wp:rl:{t<tenant>}:<window>``). A process does not count each request there: it takes a lease of
`lease_size(limit)` requests at once (INCRBY and EXPIRE pipelined: one round trip) and serves them
from memory, so that a busy sender costs one round trip per lease rather than per request. The window
never admits more than the limit in total (a lease is granted only up to what the key leaves); the
price is that allowance leased by a process and not used is lost to the others, at most one lease
(1 % of the limit) per other process and window. Limits under 200 lease one request at a time, which is
the exact per-request count. Once the key shows the window used up, the process refuses the rest of
the window without asking Redis again. With the database counter store (the embedded default, one
host) the window is counted in process memory: per web process, which is close enough for a
single-host installation and costs no query. A limit of 0 or less turns the check off.
"""

from __future__ import annotations

import threading
import time

import redis
from django.conf import settings

from warmup.counters import CounterStoreUnavailable
from warmup_portal.redis import get_redis

WINDOW_SECONDS = 60
# Kept a little longer than the window, so that a slow clock on one host never resets a live window.
KEY_TTL_SECONDS = 2 * WINDOW_SECONDS

# The fraction of the limit a process leases at once from the shared window.
LEASE_FRACTION = 100

_local_lock = threading.Lock()
_local_counts: dict[tuple[int, int], int] = {}
_leases: dict[tuple[int, int], int] = {}  # (tenant, window) -> requests left in this process's lease
_EXHAUSTED = -1  # the shared window is used up: refuse until the next one


def window_key(tenant_id: int, window: int) -> str:
    """The Redis key of a tenant's window (the braces keep it on one Redis Cluster slot)."""
    return f"wp:rl:{{t{tenant_id}}}:{window}"


def lease_size(limit: int) -> int:
    """How many requests a process takes from the shared window at once."""
    return max(1, limit // LEASE_FRACTION)


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
        allowed = _take_redis(tenant_id, window, limit)
    else:
        allowed = _hit_local(tenant_id, window) <= limit
    if allowed:
        return 0
    return max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))


def _take_redis(tenant_id: int, window: int, limit: int) -> bool:
    slot = (tenant_id, window)
    with _local_lock:
        left = _leases.get(slot, 0)
        if left > 0:
            _leases[slot] = left - 1
            return True
        if left == _EXHAUSTED:
            return False
    size = lease_size(limit)
    key = window_key(tenant_id, window)
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.incrby(key, size)
        pipe.expire(key, KEY_TTL_SECONDS, nx=True)
        used, _ = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc
    granted = min(size, limit - (int(used) - size))  # what the window had left before this lease
    with _local_lock:
        if len(_leases) > 10_000:  # forget finished windows now and then
            for stale in [key for key in _leases if key[1] < window]:
                del _leases[stale]
        left = max(0, _leases.get(slot, 0))
        if granted <= 0:
            _leases[slot] = left if left > 0 else _EXHAUSTED  # another thread's lease may still hold some
            return False
        _leases[slot] = left + granted - 1  # this request takes one
    return True


def _hit_local(tenant_id: int, window: int) -> int:
    with _local_lock:
        if len(_local_counts) > 10_000:  # forget finished windows now and then
            for stale in [key for key in _local_counts if key[1] < window]:
                del _local_counts[stale]
        used = _local_counts.get((tenant_id, window), 0) + 1
        _local_counts[(tenant_id, window)] = used
    return used


def reset_local() -> None:
    """Forget the in-process windows and leases (tests, or after changing the limit at run time)."""
    with _local_lock:
        _local_counts.clear()
        _leases.clear()
