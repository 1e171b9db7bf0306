"""The counter store: per IP, per day, per mailbox provider counts, de-duplicated and atomic per batch.

Two backends behind one interface (PRODUCT.md sections 3 and 6):

- `RedisCounterStore` (production): one hash per IP-day, key ``wp:{ip:<id>:<YYYY-MM-DD>}:c``, with a field
  per counter and provider (``sent:gmail``). The braces are a Redis Cluster hash tag, so an IP-day, the
  de-duplication keys of the events counted into it (``...}:d:<key>``) and the batches consolidation
  renames it to (``...}:b:<uuid>``) share one slot. A batch of increments is de-duplicated and counted by
  one Lua script: one round trip on a single node, one per slot group on a cluster. An index set lists
  the IP-days that hold counts, so consolidation never has to SCAN.
- `DatabaseCounterStore` (the embedded default): `CounterCell` rows (ip, date, ``counter:provider``) and
  `CounterDedupKey` rows, written in one transaction per batch with upserts, so that several processes
  sum exactly.

Consolidation (`consolidation.py`) moves finished days into `DailyStat`; it uses the storage primitives at
the end of each class (pending IP-days, claiming, reading and forgetting batches).

This is the webhooks' hot path: `apply()` builds the script's arguments with plain lists and does no
per-event work beyond a few dictionary look-ups.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache, wraps

import redis
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Sum
from django.utils import timezone
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .models import CounterCell, CounterDedupKey, DailyStat

COUNTERS: tuple[str, ...] = DailyStat.COUNTERS
PROVIDERS: tuple[str, ...] = ("gmail", "microsoft", "yahoo", "apple", "other")
_COUNTER_SET = frozenset(COUNTERS)
_PROVIDER_SET = frozenset(PROVIDERS)


@dataclass(frozen=True, slots=True)
class Increment:
    """Counts to add to one IP's day (a date in its tenant's zone) for one mailbox provider."""

    ip_id: int
    day: date
    counts: Mapping[str, int]
    provider: str = "other"
    dedup_key: str | None = None  # None: always counted


class CounterStoreUnavailable(Exception):
    """The counter store cannot be reached; nothing of the batch was counted."""


@dataclass(frozen=True, slots=True)
class Batch:
    """An IP-day's counts set aside by consolidation under its own key, waiting to reach `DailyStat`."""

    batch_id: str
    ip_id: int
    day: date


def split_field(field: str) -> tuple[str, str]:
    """``"sent:gmail"`` -> ``("sent", "gmail")``."""
    counter, _, provider = field.partition(":")
    return counter, provider or "other"


def totals(fields: Mapping[str, int]) -> dict[str, int]:
    """Every counter's total over the providers (zero when absent)."""
    result = dict.fromkeys(COUNTERS, 0)
    for field, value in fields.items():
        counter, _ = split_field(field)
        if counter in result:
            result[counter] += int(value)
    return result


def check_increment(inc: Increment) -> None:
    """ValueError naming the problem when an increment names an unknown counter or provider."""
    unknown = set(inc.counts) - _COUNTER_SET
    if unknown:
        raise ValueError(f"unknown counter {sorted(unknown)[0]!r} (expected one of {', '.join(COUNTERS)})")
    if inc.provider not in _PROVIDER_SET:
        raise ValueError(f"unknown provider {inc.provider!r} (expected one of {', '.join(PROVIDERS)})")
    for name, value in inc.counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative whole number, not {value!r}")


class CounterStore:
    """What both backends offer; see the module docstring."""

    def apply(self, increments: Sequence[Increment]) -> list[bool]:
        """De-duplicate and count a batch atomically; True = counted, False = duplicate."""
        raise NotImplementedError

    def sent_on(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], int]:
        """Live "sent" of several IP-days, in one round trip."""
        raise NotImplementedError

    def read(self, ip_id: int, day: date) -> dict[str, int]:
        """Live totals of one IP-day (every counter, zero when absent)."""
        raise NotImplementedError

    def ping(self) -> None:
        """Raise CounterStoreUnavailable when the store cannot be reached."""
        raise NotImplementedError


# --- Redis ------------------------------------------------------------------------------------------

INDEX_KEY = "wp:index:ipdays"  # IP-days holding counts (members are their hash keys)
IN_FLIGHT_KEY = "wp:index:batches"  # batches consolidation has set aside and not yet forgotten

# KEYS: the batch's IP-day hashes, then (single node) the index key. ARGV[1] = de-duplication TTL in
# seconds, ARGV[2] = position of the index key in KEYS (0: none), ARGV[3] = the increments as JSON:
# [[hash position, de-duplication key or 0, field, "amount", field, "amount", ...], ...]. One JSON string
# rather than thousands of arguments: encoding many arguments costs redis-py far more than the script
# costs Redis. A de-duplication key is built from its hash's tag, so it lives in the hash's slot.
# Returns one character per increment: "1" counted, "0" duplicate.
_APPLY_LUA = """
local ttl = ARGV[1]
local index = tonumber(ARGV[2])
local flags = {}
local tags = {}
local touched = {}
for i, inc in ipairs(cjson.decode(ARGV[3])) do
  local h = inc[1]
  local counted = true
  if inc[2] ~= 0 then
    local tag = tags[h]
    if not tag then
      tag = string.sub(KEYS[h], 1, -3)
      tags[h] = tag
    end
    counted = redis.call('SET', tag .. ':d:' .. inc[2], '1', 'NX', 'EX', ttl)
  end
  if counted then
    local hash = KEYS[h]
    for j = 3, #inc, 2 do
      redis.call('HINCRBY', hash, inc[j], inc[j + 1])
    end
    touched[h] = true
    flags[i] = '1'
  else
    flags[i] = '0'
  end
end
if index > 0 then
  for h in pairs(touched) do
    redis.call('SADD', KEYS[index], KEYS[h])
  end
end
return table.concat(flags)
"""

# Set aside IP-days for consolidation. KEYS: the index, the in-flight set, then pairs (day hash, batch
# key). Atomic on a single node, so an increment lands either in the batch or in a new hash that is
# listed in the index again. Returns the batch keys actually created (IP-days with a hash).
_CLAIM_LUA = """
local claimed = {}
for i = 3, #KEYS, 2 do
  redis.call('SREM', KEYS[1], KEYS[i])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
    redis.call('SADD', KEYS[2], KEYS[i + 1])
    claimed[#claimed + 1] = KEYS[i + 1]
  end
end
return claimed
"""


def day_tag(ip_id: int, day: date) -> str:
    """The common prefix, hash tag included, of every key of one IP-day."""
    return f"wp:{{ip:{ip_id}:{day.isoformat()}}}"


def parse_day_key(key: str) -> tuple[int, date, str]:
    """``wp:{ip:7:2026-01-02}:b:<id>`` -> (7, date(2026, 1, 2), ":b:<id>")."""
    tag, _, rest = key.partition("}")
    ip_id, day = tag.removeprefix("wp:{ip:").split(":")
    return int(ip_id), date.fromisoformat(day), rest


def _redis_reachable(method):
    """Turn Redis connection failures into CounterStoreUnavailable, which callers answer or retry on."""

    @wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc

    return wrapper


class RedisCounterStore(CounterStore):
    """Counters in Redis hashes; see the module docstring for the key layout."""

    def __init__(self, client: redis.Redis | None = None):
        self.client = client if client is not None else get_redis()
        self.cluster = isinstance(self.client, redis.RedisCluster)
        self._apply_script = self.client.register_script(_APPLY_LUA)
        self._claim_script = self.client.register_script(_CLAIM_LUA)
        self._ttl = int(timedelta(days=settings.WEBHOOK_DEDUP_TTL_DAYS).total_seconds())

    @_redis_reachable
    def apply(self, increments: Sequence[Increment]) -> list[bool]:
        if not increments:
            return []
        if not self.cluster:
            return self._run_apply(increments, with_index=True)
        return self._apply_on_cluster(increments)

    def _run_apply(self, increments: Sequence[Increment], with_index: bool) -> list[bool]:
        keys: list[str] = []
        records: list[list] = []
        hashes: dict[tuple[int, date], int] = {}
        counters, providers = _COUNTER_SET, _PROVIDER_SET
        for inc in increments:
            position = hashes.get((inc.ip_id, inc.day))
            if position is None:
                keys.append(day_tag(inc.ip_id, inc.day) + ":c")
                position = hashes[(inc.ip_id, inc.day)] = len(keys)
            counts = inc.counts
            if inc.provider not in providers or not counters.issuperset(counts):
                check_increment(inc)
            suffix = ":" + inc.provider
            record = [position, inc.dedup_key or 0]
            for name, value in counts.items():
                if value < 0:
                    check_increment(inc)
                record += (name + suffix, str(value))  # strings: Lua would format numbers slowly
            records.append(record)
        index = 0
        if with_index:
            keys.append(INDEX_KEY)
            index = len(keys)
        flags = self._apply_script(keys=keys, args=[self._ttl, index, json.dumps(records, separators=(",", ":"))])
        return [flag == 49 for flag in flags]  # b"1"

    def _apply_on_cluster(self, increments: Sequence[Increment]) -> list[bool]:
        # One script call per hash slot (a script may only touch keys of one slot), then the index,
        # written after the counts so that consolidation, which removes an index entry before renaming
        # the hash, never loses an IP-day.
        groups: dict[int, list[int]] = defaultdict(list)
        for position, inc in enumerate(increments):
            groups[self.client.keyslot(day_tag(inc.ip_id, inc.day))].append(position)
        result = [False] * len(increments)
        touched = set()
        for positions in groups.values():
            group = [increments[p] for p in positions]
            for position, flag in zip(positions, self._run_apply(group, with_index=False), strict=True):
                result[position] = flag
                if flag:
                    touched.add(day_tag(increments[position].ip_id, increments[position].day) + ":c")
        if touched:
            self.client.sadd(INDEX_KEY, *touched)
        return result

    @_redis_reachable
    def sent_on(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], int]:
        if not keys:
            return {}
        fields = [f"sent:{provider}" for provider in PROVIDERS]
        pipe = self.client.pipeline(transaction=False)
        for ip_id, day in keys:
            pipe.hmget(day_tag(ip_id, day) + ":c", fields)
        replies = pipe.execute()
        return {key: sum(int(v) for v in values if v is not None) for key, values in zip(keys, replies, strict=True)}

    def read(self, ip_id: int, day: date) -> dict[str, int]:
        return totals(self.read_fields(ip_id, day))

    @_redis_reachable
    def read_fields(self, ip_id: int, day: date) -> dict[str, int]:
        """Live figures of one IP-day per ``counter:provider`` field."""
        raw = self.client.hgetall(day_tag(ip_id, day) + ":c")
        return {field.decode(): int(value) for field, value in raw.items()}

    @_redis_reachable
    def ping(self) -> None:
        self.client.ping()

    # --- Consolidation primitives (used by consolidation.py) ----------------------------------------

    @_redis_reachable
    def pending_ip_days(self) -> list[tuple[int, date]]:
        """IP-days that may hold counts (from the index; no SCAN)."""
        return [parse_day_key(member.decode())[:2] for member in self.client.smembers(INDEX_KEY)]

    @_redis_reachable
    def in_flight(self) -> list[Batch]:
        """Batches set aside by an earlier run that did not finish (killed, or failed)."""
        batches = []
        for member in self.client.smembers(IN_FLIGHT_KEY):
            ip_id, day, rest = parse_day_key(member.decode())
            batches.append(Batch(rest.removeprefix(":b:"), ip_id, day))
        return batches

    @_redis_reachable
    def claim(self, ip_days: Iterable[tuple[int, date]], chunk: int = 1000) -> list[Batch]:
        """Rename each IP-day's hash to a new batch key and record the batch; returns the batches."""
        pairs = [(day_tag(ip_id, day), uuid.uuid4().hex) for ip_id, day in ip_days]
        claimed: list[bytes] = []
        if self.cluster:
            claimed = self._claim_on_cluster(pairs)
        else:
            for start in range(0, len(pairs), chunk):
                keys = [INDEX_KEY, IN_FLIGHT_KEY]
                for tag, batch_id in pairs[start : start + chunk]:
                    keys += (tag + ":c", f"{tag}:b:{batch_id}")
                claimed += self._claim_script(keys=keys)
        batches = []
        for key in claimed:
            ip_id, day, rest = parse_day_key(key.decode() if isinstance(key, bytes) else key)
            batches.append(Batch(rest.removeprefix(":b:"), ip_id, day))
        return batches

    def _claim_on_cluster(self, pairs: list[tuple[str, str]]) -> list[str]:
        # Without a cross-slot script: record the batches first (a recorded batch whose hash did not
        # exist reads as empty), drop the index entries, then rename slot by slot.
        batch_keys = [f"{tag}:b:{batch_id}" for tag, batch_id in pairs]
        self.client.sadd(IN_FLIGHT_KEY, *batch_keys)
        self.client.srem(INDEX_KEY, *[tag + ":c" for tag, _ in pairs])
        claimed = []
        for (tag, _), batch_key in zip(pairs, batch_keys, strict=True):
            try:
                self.client.rename(tag + ":c", batch_key)
                claimed.append(batch_key)
            except redis.ResponseError:  # no such key: nothing arrived for that IP-day
                self.client.srem(IN_FLIGHT_KEY, batch_key)
        return claimed

    @_redis_reachable
    def read_batches(self, batches: Sequence[Batch]) -> list[dict[str, int]]:
        """Each batch's figures per ``counter:provider`` field, in one pipelined round trip."""
        pipe = self.client.pipeline(transaction=False)
        for batch in batches:
            pipe.hgetall(self.batch_key(batch))
        return [{field.decode(): int(value) for field, value in raw.items()} for raw in pipe.execute()]

    @_redis_reachable
    def forget_batches(self, batches: Sequence[Batch]) -> None:
        """Delete batches that have reached `DailyStat`."""
        if not batches:
            return
        keys = [self.batch_key(batch) for batch in batches]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        pipe.srem(IN_FLIGHT_KEY, *keys)
        pipe.execute()

    @staticmethod
    def batch_key(batch: Batch) -> str:
        return f"{day_tag(batch.ip_id, batch.day)}:b:{batch.batch_id}"


# --- Database -----------------------------------------------------------------------------------------


class DatabaseCounterStore(CounterStore):
    """Counters in `CounterCell` rows, de-duplication keys in `CounterDedupKey` rows.

    One transaction per batch. De-duplication keys go in with INSERT ... ON CONFLICT DO NOTHING RETURNING
    (a key another transaction is inserting makes this one wait for its outcome), counts with
    INSERT ... ON CONFLICT DO UPDATE SET value = value + EXCLUDED.value, both in sorted order so that
    concurrent batches never deadlock. PostgreSQL and SQLite understand the same statements.
    """

    CHUNK = 500  # rows per statement, well under both databases' parameter limits

    def apply(self, increments: Sequence[Increment]) -> list[bool]:
        if not increments:
            return []
        for inc in increments:
            check_increment(inc)
        try:
            with transaction.atomic():
                new_keys = self._insert_dedup_keys(
                    sorted({self._key(inc.dedup_key) for inc in increments if inc.dedup_key is not None})
                )
                result = []
                cells: dict[tuple[int, date, str], int] = defaultdict(int)
                for inc in increments:
                    if inc.dedup_key is not None:
                        key = self._key(inc.dedup_key)
                        if key not in new_keys:
                            result.append(False)
                            continue
                        new_keys.discard(key)  # the same key twice in one batch counts once
                    result.append(True)
                    for name, value in inc.counts.items():
                        if value:
                            cells[(inc.ip_id, inc.day, f"{name}:{inc.provider}")] += value
                self._add_to_cells(sorted(cells.items()))
        except DatabaseError as exc:
            if _is_unavailable(exc):
                raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc
            raise
        return result

    @staticmethod
    def _key(dedup_key: str) -> str:
        # The key column holds 64 characters; longer keys are replaced by their digest.
        return dedup_key if len(dedup_key) <= 64 else hashlib.sha256(dedup_key.encode()).hexdigest()

    def _insert_dedup_keys(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        quote = connection.ops.quote_name
        table, key_column, expires_column = quote(CounterDedupKey._meta.db_table), quote("key"), quote("expires_at")
        expires = connection.ops.adapt_datetimefield_value(
            timezone.now() + timedelta(days=settings.WEBHOOK_DEDUP_TTL_DAYS)
        )
        inserted: set[str] = set()
        with connection.cursor() as cursor:
            for start in range(0, len(keys), self.CHUNK):
                chunk = keys[start : start + self.CHUNK]
                params: list = []
                for key in chunk:
                    params += (key, expires)
                values = ", ".join(["(%s, %s)"] * len(chunk))
                cursor.execute(
                    f"INSERT INTO {table} ({key_column}, {expires_column}) VALUES {values} "
                    f"ON CONFLICT ({key_column}) DO NOTHING RETURNING {key_column}",
                    params,
                )
                inserted.update(row[0] for row in cursor.fetchall())
        return inserted

    def _add_to_cells(self, cells: list[tuple[tuple[int, date, str], int]]) -> None:
        if not cells:
            return
        table = connection.ops.quote_name(CounterCell._meta.db_table)
        adapt = connection.ops.adapt_datefield_value
        with connection.cursor() as cursor:
            for start in range(0, len(cells), self.CHUNK):
                chunk = cells[start : start + self.CHUNK]
                params: list = []
                for (ip_id, day, field), value in chunk:
                    params += (ip_id, adapt(day), field, value)
                cursor.execute(
                    f"INSERT INTO {table} (ip_id, date, field, value) "
                    f"VALUES {', '.join(['(%s, %s, %s, %s)'] * len(chunk))} "
                    f"ON CONFLICT (ip_id, date, field) DO UPDATE SET value = {table}.value + EXCLUDED.value",
                    params,
                )

    def sent_on(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], int]:
        if not keys:
            return {}
        wanted = set(keys)
        rows = (
            CounterCell.objects.filter(
                ip_id__in={ip_id for ip_id, _ in keys}, date__in={day for _, day in keys}, field__startswith="sent:"
            )
            .values_list("ip_id", "date")
            .annotate(total=Sum("value"))
        )
        found = {(ip_id, day): total for ip_id, day, total in rows if (ip_id, day) in wanted}
        return {key: found.get(key, 0) for key in keys}

    def read(self, ip_id: int, day: date) -> dict[str, int]:
        return totals(dict(CounterCell.objects.filter(ip_id=ip_id, date=day).values_list("field", "value")))

    def ping(self) -> None:
        try:
            connection.ensure_connection()
        except DatabaseError as exc:
            raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc


def _is_unavailable(exc: DatabaseError) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)


# --- Access -------------------------------------------------------------------------------------------


@cache
def get_redis() -> redis.Redis:
    """The process's shared Redis client (a connection pool; safe across threads, rebuilt after fork)."""
    if not settings.REDIS_URL:
        raise CounterStoreUnavailable("REDIS_URL is not set")
    # A webhook waits on this client: retry briefly, then let the sender retry later (503).
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
    )


@cache
def _store(backend: str, redis_url: str) -> CounterStore:
    if backend == "redis":
        return RedisCounterStore(get_redis())
    if backend == "database":
        return DatabaseCounterStore()
    raise ValueError(f"WARMUP_COUNTER_BACKEND must be 'redis' or 'database', not {backend!r}")


def get_store() -> CounterStore:
    """The counter store chosen by settings.WARMUP_COUNTER_BACKEND."""
    return _store(settings.WARMUP_COUNTER_BACKEND, settings.REDIS_URL)


_provider_map: tuple[object, dict[str, str]] = (None, {})


def provider_for(recipient_domain: str) -> str:
    """The mailbox provider of a recipient domain (settings.WARMUP_PROVIDER_DOMAINS), else "other"."""
    global _provider_map
    source, mapping = _provider_map
    # Rebuilt only when the setting is replaced (override_settings in tests); this runs per event.
    if source is not settings.WARMUP_PROVIDER_DOMAINS:
        source = settings.WARMUP_PROVIDER_DOMAINS
        mapping = {domain: provider for provider, domains in source.items() for domain in domains}
        _provider_map = (source, mapping)
    return mapping.get(recipient_domain.strip().lower().rstrip("."), "other")
