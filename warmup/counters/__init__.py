"""The counter store: per IP, per day, per mailbox provider counts, de-duplicated and atomic per IP-day.

One object, built once from settings (`get_store()`), owns everything the counting needs to share between
processes: the counters and their de-duplication keys, the message references that attribute later
events, the webhooks' rate-limit windows, and the taking of finished days for consolidation. Two
backends behind one interface (`interface.CounterStore`; PRODUCT.md sections 3 and 6), and no code
outside this package asks which one it has:

- `RedisCounterStore` (production, `redis.py`): one hash per IP-day, key ``wp:{ip:<id>:<YYYY-MM-DD>}:c``,
  with a field per counter and provider (``sent:gmail``). The braces are a Redis Cluster hash tag, so an
  IP-day, the set of the de-duplication keys of the events counted into it (``...}:d``, expiring
  WEBHOOK_DEDUP_TTL_DAYS after its last write) and the batches consolidation renames it to
  (``...}:b:<uuid>``) share one slot. A batch is de-duplicated and counted by one Lua script
  (`apply.lua`): on a single node one call for the whole batch, atomic, with the batch's message
  references and the request's rate-limit window in the same round trip; on a cluster one call per
  slot. An index set lists the IP-days that hold counts, so consolidation never has to SCAN. The
  throttling window counters of an IP-day (per provider and 5-minute bucket: deferrals and throttling
  deferrals, `interface.BUCKET_SECONDS`) go in the same call to its window hashes, one per hour of
  buckets (``...}:w<hour>``, same slot), which expire three hours after their last write and are listed,
  when they hold a throttling deferral, in a sorted set scored by their latest bucket (``wp:index:windows``).
- `DatabaseCounterStore` (the embedded default, `database.py`): `CounterCell` rows (ip, date,
  ``counter:provider``, the window counters included), `CounterDedupKey` and `MessageRef` rows, written
  in one transaction per batch with upserts, so that several processes sum exactly; rate-limit windows
  in the process's memory.

Both count through one call, `CounterStore.count_batch()`: a batch already grouped by what its events add
(the ingestion pipeline builds the groups as it attributes, a dictionary append per event), every
de-duplication key kept as 16 bytes (`dedup_digest`). The script de-duplicates an IP-day's keys with two
set commands (`SMISMEMBER`, `SADD`), not a command per event, and adds each group's total once per field.
`count_grouped()` (the pipeline) and `apply()` (everyone else: single increments) are its two answers:
how many were counted, or which."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from .database import DatabaseCounterStore
from .interface import (
    BUCKET_SECONDS,
    COUNTERS,
    PROVIDERS,
    THROTTLING_COUNTERS,
    WINDOW_DEFERRALS,
    WINDOW_PREFIX,
    Batch,
    CounterStore,
    CounterStoreUnavailable,
    GroupKey,
    Increment,
    References,
    Window,
    WindowFigures,
    WindowFull,
    bucket_of,
    dedup_digest,
    split_field,
    totals,
    window_counter,
)
from .redis import INDEX_KEY, RedisCounterStore, day_tag, parse_day_key


@cache
def _store(backend: str, redis_url: str) -> CounterStore:
    if backend == "redis":
        return RedisCounterStore()
    if backend == "database":
        return DatabaseCounterStore()
    raise ValueError(f"WARMUP_COUNTER_BACKEND must be 'redis' or 'database', not {backend!r}")


def get_store() -> CounterStore:
    """The counter store chosen by settings.WARMUP_COUNTER_BACKEND, built once (per Redis URL)."""
    return _store(settings.WARMUP_COUNTER_BACKEND, settings.REDIS_URL)


__all__ = [
    "BUCKET_SECONDS",
    "COUNTERS",
    "THROTTLING_COUNTERS",
    "WINDOW_DEFERRALS",
    "WINDOW_PREFIX",
    "WindowFigures",
    "bucket_of",
    "dedup_digest",
    "window_counter",
    "INDEX_KEY",
    "PROVIDERS",
    "Batch",
    "CounterStore",
    "CounterStoreUnavailable",
    "DatabaseCounterStore",
    "GroupKey",
    "References",
    "Window",
    "WindowFull",
    "Increment",
    "RedisCounterStore",
    "day_tag",
    "get_store",
    "parse_day_key",
    "split_field",
    "totals",
]
