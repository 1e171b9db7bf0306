"""The counter store: per IP, per day, per mailbox provider counts, de-duplicated and atomic per IP-day.

Two backends behind one interface (PRODUCT.md sections 3 and 6):

- `RedisCounterStore` (production): one hash per IP-day, key ``wp:{ip:<id>:<YYYY-MM-DD>}:c``, with a field
  per counter and provider (``sent:gmail``). The braces are a Redis Cluster hash tag, so an IP-day, the
  set of the de-duplication keys of the events counted into it (``...}:d``, expiring
  WEBHOOK_DEDUP_TTL_DAYS after its last write) and the batches consolidation renames it to
  (``...}:b:<uuid>``) share one slot. A batch of increments is de-duplicated and counted by a Lua
  script, each IP-day atomically: one round trip on a single node, one per slot group on a cluster.
  The ingestion pipeline's batches send their IP-days in parts, a script call each, all read in that
  one round trip (`RedisCounterStore._run_apply`). An index set lists the IP-days that hold counts, so
  consolidation never has to SCAN.
- `DatabaseCounterStore` (the embedded default): `CounterCell` rows (ip, date, ``counter:provider``) and
  `CounterDedupKey` rows, written in one transaction per batch with upserts, so that several processes
  sum exactly.

Consolidation (`consolidation.py`) moves finished days into `DailyStat`; it uses the storage primitives at
the end of each class (pending IP-days, claiming, reading and forgetting batches).

This is the webhooks' hot path. `count_grouped()` takes a batch already grouped by what its events add
(the ingestion pipeline builds the groups as it attributes, a dictionary append per event), so this
side does no per-event work but joining the keys; the script de-duplicates an IP-day's keys with two set
commands (`SMISMEMBER`, `SADD`), not a command per event, and adds each group's total once per field
(`HINCRBY` per IP-day and field, not per event). `apply()` (the interface for everyone else) groups its
increments and runs the same script.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache, lru_cache, wraps

import hiredis
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


# A group of events that add the same counts to the same IP-day hash field set:
# (ip id, day, provider, counts as sorted (counter, amount) pairs).
GroupKey = tuple[int, date, str, tuple[tuple[str, int], ...]]


@dataclass(frozen=True, slots=True)
class HashWrite:
    """Fields set in one Redis hash, with an expiry, in the same round trip as a batch's counts.

    The ingestion pipeline's message references: written in the round trip of the counts they came with.
    `fields` is flat: field, value, field, value ...
    """

    key: str
    fields: Sequence[str | int]
    ttl: int


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


def group_increments(increments: Sequence[Increment]) -> tuple[dict[GroupKey, list[str | None]], list[tuple]]:
    """Increments as `count_grouped()` groups, and where each increment went: (group key, position)."""
    groups: dict[GroupKey, list[str | None]] = {}
    places = []
    for inc in increments:
        check_increment(inc)  # here, not per group: 1 and True are the same group key
        key = (inc.ip_id, inc.day, inc.provider, tuple(sorted(inc.counts.items())))
        keys = groups.get(key)
        if keys is None:
            keys = groups[key] = []
        places.append((key, len(keys)))
        keys.append(inc.dedup_key)
    return groups, places


@lru_cache(maxsize=4096)
def _fields_of(provider: str, counts: tuple[tuple[str, int], ...]) -> tuple[str | int, ...]:
    """The hash fields and amounts of a group, checked once (batches repeat a few combinations)."""
    check_increment(Increment(0, date.min, dict(counts), provider))
    fields: list[str | int] = []
    for name, value in counts:
        fields += (f"{name}:{provider}", value)
    return tuple(fields)


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

    def count_grouped(
        self,
        groups: Mapping[GroupKey, Sequence[str | None]],
        also: HashWrite | None = None,
        stream: StreamedWrites | None = None,
    ) -> int:
        """`apply()` for a batch grouped by what its events add: each group's de-duplication keys (None:
        always counted). Atomic per IP-day (in one call, like `apply()`, but with a `stream`: see
        `RedisCounterStore._run_apply`); returns how many were counted (the rest were duplicates).

        `also` (Redis only) is written in the same round trip, before anything is counted; `stream`
        (Redis only, from `stream_hash_writes()`) holds hash writes sent ahead, whose replies are read
        with the counts'.
        """
        if also is not None or (stream is not None and stream.pending):
            raise ValueError(f"{type(self).__name__} writes no Redis hash")
        increments = [
            Increment(ip_id, day, dict(items), provider, dedup_key)
            for (ip_id, day, provider, items), keys in groups.items()
            for dedup_key in keys
        ]
        return sum(self.apply(increments))

    def stream_hash_writes(self) -> StreamedWrites | None:
        """Where a batch's hash writes may go ahead of its counts (`StreamedWrites`); None: nowhere."""
        return None

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

# KEYS: per IP-day of the batch, its counts hash then its de-duplication set; then (single node) the
# index key. ARGV[1] = de-duplication TTL in seconds, ARGV[2] = position of the index key in KEYS (0:
# none), ARGV[3] = what the groups add, as JSON: [[field, amount, field, amount ...], ...] (a batch
# repeats a few dozen of these), ARGV[4] = the groups as one flat JSON array of numbers, four per group:
# IP-day number, what it adds (position in ARGV[3]), events without a de-duplication key, events with
# one; the groups of an IP-day next to each other. ARGV[5] = per IP-day, how its de-duplication keys
# are cut (JSON array: a width, or the list of their lengths); ARGV[6] = per IP-day, what its groups add
# when none of its events is a duplicate: [[field, amount, field, amount ...], ...] (JSON); ARGV[6 + n] =
# the keys of IP-day n in the order of its groups, end to end (`_members`: a digest as its 16 bytes).
# A few strings rather than thousands of arguments: packing, sending and reading many arguments costs
# redis-py and Redis more than decoding costs the script.
# De-duplication is two commands per IP-day, whatever the number of its events: SMISMEMBER tells which
# keys the day's set already holds, SADD adds them. When SADD adds every key, none was known and none
# is repeated: the IP-day adds what ARGV[6] says, and neither the groups nor the keys are looked at one
# by one (the usual case). Otherwise a key already known is a duplicate, and so is the second occurrence
# of a key repeated within the batch; the IP-day's groups are then summed here without their
# duplicates. A single key needs the SADD alone. The set's expiry is renewed with each batch, so a key
# is remembered at least the TTL. Each field of an IP-day gets one HINCRBY per batch (Lua numbers are
# doubles: exact below 2^53), and the IP-days counted go to the index in one SADD.
# Returns, per group with duplicates, {its number, 1-based positions among its keys of the duplicates ...}.
_APPLY_LUA = """
local ttl = ARGV[1]
local index = tonumber(ARGV[2])
local widths = cjson.decode(ARGV[5])
local sums_of = cjson.decode(ARGV[6])
local adds, groups, first_group = nil, nil, nil
local CHUNK = 4000
local found = {}
local touched = {}
for h = 1, #widths do
  local width = widths[h]
  local packed = ARGV[6 + h]
  local keys = {}
  local k = 0
  if type(width) == 'number' then
    for first = 1, #packed, width do
      k = k + 1
      keys[k] = string.sub(packed, first, first + width - 1)
    end
  else
    local first = 1
    for _, length in ipairs(width) do
      k = k + 1
      keys[k] = string.sub(packed, first, first + length - 1)
      first = first + length
    end
  end
  local n = #keys
  local set = KEYS[2 * h]
  local flags = nil -- per key, 1 for a duplicate; nil: no duplicate
  if n == 1 then
    if redis.call('SADD', set, keys[1]) == 0 then
      flags = {1}
    end
    redis.call('EXPIRE', set, ttl)
  elseif n > 1 then
    local added = 0
    local known = {}
    for first = 1, n, CHUNK do
      local upto = math.min(first + CHUNK - 1, n)
      known[#known + 1] = redis.call('SMISMEMBER', set, unpack(keys, first, upto))
      added = added + redis.call('SADD', set, unpack(keys, first, upto))
    end
    redis.call('EXPIRE', set, ttl)
    if added < n then
      flags = {}
      local seen = {}
      local i = 0
      for _, part in ipairs(known) do
        for j = 1, #part do
          i = i + 1
          local flag = part[j]
          if flag == 0 then
            if seen[keys[i]] then flag = 1 else seen[keys[i]] = true end
          end
          flags[i] = flag
        end
      end
    end
  end
  local sums = sums_of[h]
  if flags then
    -- The IP-day's sums, group by group, without the duplicates.
    if groups == nil then
      adds, groups = cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
      first_group = {}
      for j = #groups - 3, 1, -4 do
        first_group[groups[j]] = j
      end
    end
    local totals = {}
    local offset = 0
    local j = first_group[h]
    while j <= #groups and groups[j] == h do
      local fields, counted, keyed = adds[groups[j + 1]], groups[j + 2], groups[j + 3]
      local result = {(j + 3) / 4}
      for i = 1, keyed do
        if flags[offset + i] == 0 then
          counted = counted + 1
        else
          result[#result + 1] = i
        end
      end
      offset = offset + keyed
      if #result > 1 then
        found[#found + 1] = result
      end
      if counted > 0 then
        for f = 1, #fields, 2 do
          totals[fields[f]] = (totals[fields[f]] or 0) + fields[f + 1] * counted
        end
      end
      j = j + 4
    end
    sums = {}
    for field, amount in pairs(totals) do
      sums[#sums + 1] = field
      sums[#sums + 1] = amount
    end
  end
  local counts = KEYS[2 * h - 1]
  for f = 1, #sums, 2 do
    redis.call('HINCRBY', counts, sums[f], sums[f + 1])
  end
  if #sums > 0 then
    touched[#touched + 1] = counts
  end
end
if index > 0 then
  for first = 1, #touched, CHUNK do
    redis.call('SADD', KEYS[index], unpack(touched, first, math.min(first + CHUNK - 1, #touched)))
  end
end
return found
"""

# One event of one IP-day, as `_APPLY_LUA` counts it, with plain arguments. KEYS: the counts hash, the
# de-duplication set, the index. ARGV[1] = de-duplication TTL, ARGV[2] = the event's key, then field,
# amount, field, amount ... Returns 1 (counted) or 0 (a duplicate).
_ONE_LUA = """
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
if #ARGV > 2 then
  redis.call('SADD', KEYS[3], KEYS[1])
end
return 1
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


# ASCII-only JSON (the default): every byte sent is ASCII, and the script's cjson decodes the escapes.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _from_hex(text: str) -> bytes | None:
    """The bytes that lower-case hex digits spell (`bytes.hex()` gives `text` back); None otherwise."""
    try:
        data = bytes.fromhex(text)
    except ValueError:
        return None
    return data if data.hex() == text else None


def _member(key: str) -> bytes:
    """A de-duplication key as its set holds it: a digest (32 lower-case hex digits, `event_key`) as
    its 16 bytes, which halves what the sets hold and what Redis hashes and compares; any other key as
    its UTF-8 text."""
    digest = _from_hex(key) if len(key) == 32 else None
    return digest if digest is not None else key.encode("utf-8", "surrogatepass")


def _members(keys: list[str]) -> tuple[int | list[int], bytes]:
    """An IP-day's de-duplication keys as `_APPLY_LUA` takes them: (their width, or the list of their
    lengths; the `_member`s end to end)."""
    if keys and all(len(key) == 32 for key in keys):
        # The usual IP-day: digests only, turned into bytes in one call.
        digests = _from_hex("".join(keys))
        if digests is not None:
            return 16, digests
    members = [_member(key) for key in keys]
    lengths = [len(member) for member in members]
    if lengths and lengths[0] and lengths.count(lengths[0]) == len(lengths):
        return lengths[0], b"".join(members)
    return lengths, b"".join(members)


def _parts(items: list, ip_days: int) -> list[list]:
    """`items` (sorted by IP-day) cut into runs of `ip_days` IP-days."""
    parts: list[list] = []
    current, last, seen = [], None, 0
    for item in items:
        ip_day = item[0][:2]
        if ip_day != last:
            if seen == ip_days:
                parts.append(current)
                current, seen = [], 0
            last, seen = ip_day, seen + 1
        current.append(item)
    if current:
        parts.append(current)
    return parts


def _ip_day_of(item: tuple[GroupKey, Sequence[str | None]]) -> tuple[int, date]:
    return item[0][:2]


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


class StreamedWrites:
    """Hash writes sent ahead of a batch's counts, on the connection that will count the batch.

    The ingestion pipeline sends a body's message references while it is still reading the body, so
    that Redis stores them meanwhile instead of after the parsing; `count_grouped(..., stream=)` sends
    the counting script on the same connection and reads every reply, the writes' first: the batch
    still waits for Redis once. A write that fails fails the batch (CounterStoreUnavailable, or the
    error Redis answered) as if it had gone with the script; a reference written for a batch that is
    then not counted is harmless, since the sender posts the body again and it says the same again.
    Each write is a plain HSET (its expiry goes with the first write of its key): Redis stores plain
    arguments for a third of what decoding them in a script costs. Single node only
    (`stream_hash_writes()` is None on a cluster).
    """

    FIELDS_PER_COMMAND = 8192  # a long write is cut up, so that Redis serves other clients in between

    def __init__(self, client: redis.Redis):
        self._pool = client.connection_pool
        self.conn = None
        self._queued: list[tuple] = []  # commands not sent yet
        self._sent: list[tuple | None] = []  # per call whose reply is not read yet: (script, keys, args) or None
        self._expiring: set[str] = set()  # keys whose expiry this stream has set

    @property
    def pending(self) -> bool:
        """Whether writes wait for the script (sent, or queued to go with it)."""
        return bool(self._sent)

    def send(self, write: HashWrite, *, now: bool = True) -> None:
        """Send `write` now, or (now=False) in the same packet as the script."""
        fields, step = write.fields, self.FIELDS_PER_COMMAND
        for first in range(0, len(fields), step):
            self._queue(None, "HSET", write.key, *fields[first : first + step])
        if write.key not in self._expiring:
            self._queue(None, "EXPIRE", write.key, write.ttl)
            self._expiring.add(write.key)
        if now:
            self._flush()

    def _queue(self, call: tuple | None, *command) -> None:
        self._queued.append(command)
        self._sent.append(call)

    def _flush(self) -> None:
        # hiredis packs the commands (str and int arguments only) without redis-py's pass over each one.
        packed = [hiredis.pack_command(command) for command in self._queued]
        try:
            if self.conn is None:
                # The pool hands out a connection that is still open (it reconnects one that Redis
                # closed, after a restart), checked with a PING after 30 s idle.
                self.conn = self._pool.get_connection()
                self.conn.send_packed_command(packed)
            else:
                self.conn.send_packed_command(packed, check_health=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.close(broken=True)
            raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc
        self._queued = []

    def send_script(self, script, keys: list, args: list) -> None:
        """Send a call of `script` on this connection, after the writes, without waiting for its reply."""
        self._queue((script, keys, args), "EVALSHA", script.sha, len(keys), *keys, *args)
        self._flush()

    def run_script(self, script, keys: list, args: list):
        """Run `script` on this connection after the writes; its reply (raises the writes' errors)."""
        self.send_script(script, keys, args)
        return self.script_replies()[-1]

    def script_replies(self) -> list:
        """Read every reply not read yet; the replies of the scripts sent, in order (raises the first
        error, of a write or a script)."""
        conn = self.conn
        replies = []
        for call in self._sent:
            try:
                replies.append(conn.read_response())
            except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts: load, run
                replies.append(call)
            except redis.ResponseError as exc:
                replies.append(exc)
        calls, self._sent = self._sent, []
        for number, reply in enumerate(replies):
            if isinstance(reply, tuple):
                again, keys_again, args_again = reply
                replies[number] = again(keys=keys_again, args=args_again)
        for reply in replies:  # the first error, in the order of the calls
            if isinstance(reply, redis.ResponseError):
                raise reply
        return [reply for call, reply in zip(calls, replies, strict=True) if call is not None]

    def close(self, broken: bool = False) -> None:
        """Give the connection back (closed if it failed or replies are still unread)."""
        if self.conn is not None:
            if broken or self._sent:
                self.conn.disconnect()
            self._pool.release(self.conn)
            self.conn = None
        self._queued, self._sent = [], []
        self._expiring.clear()


class RedisCounterStore(CounterStore):
    """Counters in Redis hashes; see the module docstring for the key layout."""

    PART_IP_DAYS = 8  # IP-days per script call of a streamed batch (`_run_apply`)

    def __init__(self, client: redis.Redis | None = None):
        self.client = client if client is not None else get_redis()
        self.cluster = isinstance(self.client, redis.RedisCluster)
        self._apply_script = self.client.register_script(_APPLY_LUA)
        self._one_script = self.client.register_script(_ONE_LUA)
        self._claim_script = self.client.register_script(_CLAIM_LUA)
        self._ttl = int(timedelta(days=settings.WEBHOOK_DEDUP_TTL_DAYS).total_seconds())
        self._own = threading.local()  # each thread's connection for single events (`_call_own`)

    @_redis_reachable
    def apply(self, increments: Sequence[Increment]) -> list[bool]:
        if not increments:
            return []
        groups, places = group_increments(increments)
        duplicates = self._count(groups)
        return [(place not in duplicates) for place in places]

    @_redis_reachable
    def count_grouped(
        self,
        groups: Mapping[GroupKey, Sequence[str | None]],
        also: HashWrite | None = None,
        stream: StreamedWrites | None = None,
    ) -> int:
        # On a single node, `also` goes ahead of the script on the connection that runs it.
        if stream is None and also is not None and not self.cluster:
            stream = self.stream_hash_writes()
        try:
            if also is not None and stream is not None:
                stream.send(also, now=False)
                also = None
            duplicates = self._count(groups, also, stream if stream is not None and stream.pending else None)
        finally:
            if stream is not None:
                stream.close()
        return sum(len(keys) for keys in groups.values()) - len(duplicates)

    def stream_hash_writes(self) -> StreamedWrites | None:
        return None if self.cluster else StreamedWrites(self.client)

    def _count(
        self,
        groups: Mapping[GroupKey, Sequence[str | None]],
        also: HashWrite | None = None,
        stream: StreamedWrites | None = None,
    ) -> set[tuple]:
        """Run the script (on `stream`'s connection after its writes, if given; `also`, a cluster's
        hash to write first); returns the duplicates as (group key, position in the group)."""
        if not self.cluster:
            if len(groups) == 1:
                ((key, dedup_keys),) = groups.items()
                if len(dedup_keys) == 1 and dedup_keys[0] is not None:
                    return self._run_one(key, dedup_keys[0], stream)
            return self._run_apply(list(groups.items()), with_index=True, stream=stream)[0]
        # One script call per hash slot (a script may only touch keys of one slot), the extra hash
        # first (a batch whose references cannot be written is not counted), then the index, written
        # after the counts so that consolidation, which removes an index entry before renaming the
        # hash, never loses an IP-day.
        if also is not None:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(also.key, items=list(also.fields))
            pipe.expire(also.key, also.ttl)
            pipe.execute()
        by_slot: dict[int, list] = defaultdict(list)
        for item in groups.items():
            ip_id, day = item[0][:2]
            by_slot[self.client.keyslot(day_tag(ip_id, day))].append(item)
        duplicates: set[tuple] = set()
        touched = set()
        for items in by_slot.values():
            found, counted_hashes = self._run_apply(items, with_index=False)
            duplicates |= found
            touched |= counted_hashes
        if touched:
            self.client.sadd(INDEX_KEY, *touched)
        return duplicates

    def _run_apply(
        self, items: list, with_index: bool, stream: StreamedWrites | None = None
    ) -> tuple[set[tuple], set[str]]:
        """Script calls for the groups `items`; (duplicates, hashes that received counts).

        With a stream (the ingestion pipeline), the IP-days go in parts of PART_IP_DAYS, each part sent
        as soon as it is encoded, so that Redis counts a part while Python encodes the next; every reply
        is still read in one wait. An IP-day is never cut: its events are de-duplicated and counted by
        one call, atomically. Without a stream, one call.
        """
        # The script wants the groups of an IP-day next to each other.
        items = sorted(items, key=_ip_day_of)
        parts = [items] if stream is None else _parts(items, self.PART_IP_DAYS)
        calls = []
        for part in parts:
            keys, args, context = self._encode_apply(part, with_index)
            if stream is None:
                replies = [self._apply_script(keys=keys, args=args)]
            else:
                stream.send_script(self._apply_script, keys, args)
            calls.append((part, keys, context))
        if stream is not None:
            replies = stream.script_replies()
        duplicates: set[tuple] = set()
        touched: set[str] = set()
        for (part, keys, context), reply in zip(calls, replies, strict=True):
            self._decode_apply(part, keys, context, reply, with_index, duplicates, touched)
        return duplicates, touched

    def _encode_apply(self, items: list, with_index: bool) -> tuple[list[str], list, tuple]:
        """The keys and arguments of one `_APPLY_LUA` call for `items` (sorted by IP-day), and what
        `_decode_apply` needs to read its reply."""
        keys: list[str] = []
        hashes: dict[tuple[int, date], int] = {}
        adds: list[tuple[str | int, ...]] = []  # what groups add (field, amount ...); groups name it by position
        encoded: list[int] = []  # four numbers per group, see _APPLY_LUA
        day_keys: list[list[str]] = []  # per IP-day, the de-duplication keys of its groups in order
        day_sums: list[dict[str, int]] = []  # per IP-day, what its groups add if none is a duplicate
        keyed_positions: dict[int, list[int]] = {}  # groups with unkeyed events: where their keys are
        kinds: dict[tuple, tuple] = {}  # (provider, counts) -> (its number in `adds`, (field, amount) pairs)
        for number, (key, dedup_keys) in enumerate(items):
            ip_id, day, provider, counts = key
            kind = kinds.get((provider, counts))
            if kind is None:
                fields = _fields_of(provider, counts)
                adds.append(fields)
                kind = kinds[(provider, counts)] = (len(adds), tuple(zip(fields[::2], fields[1::2], strict=True)))
            adding, pairs = kind
            position = hashes.get((ip_id, day))
            if position is None:
                tag = day_tag(ip_id, day)
                keys += (tag + ":c", tag + ":d")
                day_keys.append([])
                day_sums.append({})
                position = hashes[(ip_id, day)] = len(day_keys)
            sums, events = day_sums[position - 1], len(dedup_keys)
            for field, amount in pairs:
                sums[field] = sums.get(field, 0) + amount * events
            unkeyed = 0
            if None in dedup_keys:
                keyed_positions[number] = [i for i, k in enumerate(dedup_keys) if k is not None]
                unkeyed = len(dedup_keys) - len(keyed_positions[number])
                dedup_keys = [k for k in dedup_keys if k is not None]
            encoded += (position, adding, unkeyed, len(dedup_keys))
            day_keys[position - 1] += dedup_keys
        widths, packed = [], []
        for dedup_keys in day_keys:
            width, members = _members(dedup_keys)
            widths.append(width)
            packed.append(members)
        index = 0
        if with_index:
            keys.append(INDEX_KEY)
            index = len(keys)
        flat_sums = [[item for pair in sums.items() for item in pair] for sums in day_sums]
        args = [self._ttl, index, _dumps(adds), _dumps(encoded), _dumps(widths), _dumps(flat_sums), *packed]
        return keys, args, (keyed_positions, hashes)

    @staticmethod
    def _decode_apply(
        items: list, keys: list[str], context: tuple, replies: list, with_index: bool,
        duplicates: set[tuple], touched: set[str],
    ) -> None:  # fmt: skip
        """Add the duplicates a call of `_APPLY_LUA` answered (as (group key, position in the group)) to
        `duplicates` and, without the index, the hashes it counted into to `touched`."""
        keyed_positions, hashes = context
        found_in: dict[int, int] = {}  # group number -> its duplicates
        for number, *found in replies:
            key = items[number - 1][0]
            places = keyed_positions.get(number - 1)
            duplicates.update((key, places[n - 1] if places else n - 1) for n in found)
            found_in[number - 1] = len(found)
        if not with_index:
            for number, (key, dedup_keys) in enumerate(items):
                if len(dedup_keys) > found_in.get(number, 0):
                    touched.add(keys[2 * hashes[key[:2]] - 2])

    def _run_one(self, key: GroupKey, dedup_key: str, stream: StreamedWrites | None = None) -> set[tuple]:
        """A single event (a JSON webhook's usual body): the lean script, no JSON to encode or decode."""
        ip_id, day, provider, counts = key
        tag = day_tag(ip_id, day)
        keys, args = [tag + ":c", tag + ":d", INDEX_KEY], [self._ttl, _member(dedup_key), *_fields_of(provider, counts)]
        if stream is None:
            counted = self._call_own(self._one_script, keys, args)
        else:
            counted = stream.run_script(self._one_script, keys, args)
        return set() if counted else {(key, 0)}

    def _call_own(self, script, keys: list, args: list):
        """Run `script` on this thread's own connection to Redis; its reply.

        A single-event webhook is one script call. Through the pool, the call costs about as much CPU
        again as the round trip itself: the checkout (a lock, a poll of the socket for stray data, the
        pool's bookkeeping) and the release. Here each thread keeps a connection made with the pool's
        settings and sends the packed call on it: about 40 us less CPU a request in a gunicorn worker
        under load (bench/README.md). A broken connection is made again and the call sent once more, as
        the client's own retry would (a call that Redis ran before its reply was lost is then answered
        as a duplicate: the event is counted once).
        """
        packed = [hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))]
        try:
            try:
                return self._send_own(packed)
            except (redis.ConnectionError, redis.TimeoutError):
                return self._send_own(packed)  # on a new connection
        except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts: load, run
            return script(keys=keys, args=args)

    def _send_own(self, packed: list[bytes]):
        own = self._own
        if getattr(own, "pid", None) != os.getpid():  # a new thread, or a forked process
            pool = self.client.connection_pool
            own.conn, own.pid = pool.connection_class(**pool.connection_kwargs), os.getpid()
        conn = own.conn
        try:
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()
        except redis.ResponseError:  # read whole: the connection is still in step
            raise
        except BaseException:
            conn.disconnect()  # it may hold part of a reply; the next call connects again
            raise

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
