"""The Redis counter store (production); see the package docstring for the key layout.

The scripts are the .lua files beside this module: `apply.lua` de-duplicates and counts a batch, each
IP-day atomically; `claim.lua` sets IP-days aside for consolidation.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache, wraps
from itertools import chain
from operator import itemgetter
from pathlib import Path

import redis
from django.conf import settings
from django.db import transaction

from warmup_portal.redis import get_redis

from ..models import ConsolidationBatch
from .interface import (
    BUCKET_SECONDS,
    PROVIDERS,
    WINDOW_PREFIX,
    WINDOW_RATE_LIMITED,
    WINDOW_REPUTATION,
    Batch,
    CounterStore,
    CounterStoreUnavailable,
    GroupKey,
    References,
    Window,
    WindowFigures,
    WindowFull,
    _fields_of,
    dedup_digest,
    stored_ref,
    totals,
    window_figures,
)

logger = logging.getLogger(__name__)

INDEX_KEY = "wp:index:ipdays"  # IP-days holding counts (members are their hash keys)
IN_FLIGHT_KEY = "wp:index:batches"  # batches consolidation has set aside and not yet forgotten
# Window hashes that hold throttling deferrals (a sorted set scored by their latest bucket): the
# throttling check reads those IPs' hashes only, not one per IP.
WINDOW_INDEX_KEY = "wp:index:windows"
# An IP-day's window counters go to one hash per hour of buckets (``wp:{ip:<id>:<day>}:w<hour>``, hour =
# bucket // BUCKETS_PER_WINDOW_HASH), which expires WINDOW_TTL_SECONDS after its last write. The check
# reads the last hour: an IP holds its last two or three hours, a small hash each (Redis keeps a hash of
# up to 128 fields compact), rather than a day of buckets in a large one (about 100 KB for an IP that
# sends to every provider all day).
BUCKETS_PER_WINDOW_HASH = 3600 // BUCKET_SECONDS
WINDOW_TTL_SECONDS = 3 * 3600

_APPLY_LUA = (Path(__file__).parent / "apply.lua").read_text()
_CLAIM_LUA = (Path(__file__).parent / "claim.lua").read_text()


# ASCII-only JSON (the default): every byte sent is ASCII, and the script's cjson decodes the escapes.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _digests(keys: Sequence[str | None]) -> bytes:
    """An IP-day's de-duplication keys as the script takes them: their `dedup_digest`s end to end."""
    if None not in keys and set(map(len, keys)) == {32}:  # the usual IP-day: event keys only, in one call
        joined = "".join(keys)
        digests = bytes.fromhex(joined)
        if digests.hex() == joined:  # lower-case hex digits only (fromhex takes capitals and spaces)
            return digests
    return b"".join(map(dedup_digest, keys))


@lru_cache(maxsize=4096)
def _kind_of(provider: str, counts: tuple[tuple[str, int], ...]) -> tuple[tuple, tuple[int, bool] | None]:
    """What a group of `provider` and `counts` adds: its fields and amounts (checked), and its window
    (`_window_of`). Batches repeat a few dozen of these: they are checked and built once per process."""
    return _fields_of(provider, counts), _window_of(counts)


def _window_of(counts: tuple[tuple[str, int], ...]) -> tuple[int, bool] | None:
    """(the bucket, whether it holds a throttling deferral) of a group's window counters; None without any.
    A group's window counters are of one bucket: the pipeline groups events by it."""
    names = [name for name, _ in counts if name.startswith(WINDOW_PREFIX)]
    if not names:
        return None
    throttling = any(name[:2] in (WINDOW_RATE_LIMITED, WINDOW_REPUTATION) for name in names)
    return max(int(name[2:]) for name in names), throttling


def day_tag(ip_id: int, day: date) -> str:
    """The common prefix, hash tag included, of every key of one IP-day."""
    return f"wp:{{ip:{ip_id}:{day.isoformat()}}}"


def parse_day_key(key: str) -> tuple[int, date, str]:
    """``wp:{ip:7:2026-01-02}:b:<id>`` -> (7, date(2026, 1, 2), ":b:<id>")."""
    tag, _, rest = key.partition("}")
    ip_id, day = tag.removeprefix("wp:{ip:").split(":")
    return int(ip_id), date.fromisoformat(day), rest


def _redis_reachable(method):
    """Turn Redis connection failures, and a Redis that refuses writes (full, or a replica), into
    CounterStoreUnavailable, which callers answer (503) or retry on."""

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc
        except redis.exceptions.OutOfMemoryError as exc:  # maxmemory reached: Redis refuses every write
            raise CounterStoreUnavailable(f"Redis is full: {exc}") from exc
        except redis.exceptions.ReadOnlyError as exc:
            # A primary demoted by a failover, while REDIS_URL's name now leads to the new one (a managed
            # Redis's endpoint): drop the connections, so that the next command connects anew, as redis-py's
            # own Sentinel connections do. (A cluster client follows the new primary by itself.)
            if not self.cluster:
                self.client.connection_pool.disconnect()
            raise CounterStoreUnavailable(f"Redis is a read-only replica: {exc}") from exc

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
    def count_batch(
        self,
        groups: Mapping[GroupKey, Sequence[str | None]],
        refs: References | None = None,
        window: Window | None = None,
    ) -> set[tuple[GroupKey, int]]:
        """On a single node: one script call for the whole batch, atomic: the window's hit, the references
        and the counts. On a cluster: the window, then the references (a batch whose references cannot
        be written is not counted), then one script call per hash slot (a script may only touch keys of
        one slot), then the index, written after the counts so that consolidation, which removes an
        index entry before renaming the hash, never loses an IP-day.
        """
        refs = refs if refs is not None and refs.refs else None
        if not self.cluster:
            keys, args, context = self._encode_apply(list(groups.items()), True, window, refs)
            reply = self._apply_script(keys=keys, args=args)
            if reply == -1:
                raise WindowFull(window.name)
            return self._decode_apply(context, reply)
        if window is not None:
            self._hit_window(window)
        if refs is not None:
            self.write_refs(refs.tenant_id, refs.refs)
        by_slot: dict[int, list] = defaultdict(list)
        for item in groups.items():
            ip_id, day = item[0][:2]
            by_slot[self.client.keyslot(day_tag(ip_id, day))].append(item)
        duplicates: set[tuple] = set()
        hashes: list[str] = []
        windows: dict[str, int] = {}
        for items in by_slot.values():
            keys, args, context = self._encode_apply(items, False)
            duplicates |= self._decode_apply(context, self._apply_script(keys=keys, args=args))
            hashes += keys[: 2 * len(context[2]) : 2]  # (day hash, de-duplication set) per IP-day come first
            windows.update({keys[position - 1]: bucket for position, bucket in context[3].items()})
        # Every IP-day of the batch, duplicates included: had the process died between an earlier try's
        # counts and its index entry, the sender's retry (all duplicates) puts the entry back.
        if hashes:
            self.client.sadd(INDEX_KEY, *hashes)
        if windows:
            self.client.zadd(WINDOW_INDEX_KEY, windows, gt=True)
        return duplicates

    def _encode_apply(
        self, items: list, with_index: bool, window: Window | None = None, refs: References | None = None
    ) -> tuple[list[str], list, tuple]:
        """The keys and arguments of one `_APPLY_LUA` call for `items` (sorted by IP-day), and what
        `_decode_apply` needs to read its reply."""
        items.sort(key=itemgetter(0))  # by group key: the script wants the groups of an IP-day together
        keys: list[str] = []
        hashes: dict[tuple[int, date], int] = {}
        adds: list[tuple[str | int, ...]] = []  # what groups add (field, amount ...); groups name it by position
        encoded: list[int] = []  # three numbers per group, see _APPLY_LUA
        day_keys: list[list[str]] = []  # per IP-day, the de-duplication keys of its groups in order
        kinds: dict[tuple, tuple] = {}  # (provider, counts) -> (its number in `adds`, `_window_of(counts)`)
        day_windows: list[dict[int, int]] = []  # per IP-day, its window hashes: hour -> latest throttling bucket
        tags: list[str] = []
        for key, dedup_keys in items:
            ip_id, day, provider, counts = key
            kind = kinds.get((provider, counts))
            if kind is None:
                fields, window_of = _kind_of(provider, counts)
                adds.append(fields)
                kind = kinds[(provider, counts)] = (len(adds), window_of)
            adding, window_of = kind
            position = hashes.get((ip_id, day))
            if position is None:
                tag = day_tag(ip_id, day)
                keys += (tag + ":c", tag + ":d")
                tags.append(tag)
                day_keys.append([])
                day_windows.append({})
                position = hashes[(ip_id, day)] = len(day_keys)
            if window_of is not None:
                bucket, throttling = window_of
                hours = day_windows[position - 1]
                hour = bucket // BUCKETS_PER_WINDOW_HASH
                hours[hour] = max(hours.get(hour, 0), bucket if throttling else 0)
            encoded += (position, adding, len(dedup_keys))
            day_keys[position - 1] += dedup_keys
        index = 0
        if with_index:
            keys += (INDEX_KEY, WINDOW_INDEX_KEY)
            index = len(keys) - 1
        window_spec = [0]
        if window is not None:
            keys.append(window.name)
            window_spec = [len(keys), window.limit, 2 * window.seconds]  # kept past its end
        refs_spec, refs_packed = self._refs_args(keys, refs)
        # The window hashes last, each named by its position: {hour: position in KEYS} per IP-day.
        window_keys: list[dict[str, int]] = []
        throttled: dict[int, int] = {}  # position in KEYS of a window hash -> its latest throttling bucket
        for tag, hours in zip(tags, day_windows, strict=True):
            positions = {}
            for hour, bucket in hours.items():
                keys.append(f"{tag}:w{hour}")
                positions[str(hour)] = len(keys)
                if bucket:
                    throttled[len(keys)] = bucket
            window_keys.append(positions)
        throttled_list = [*chain.from_iterable(throttled.items())]
        windows_spec = [WINDOW_TTL_SECONDS, BUCKETS_PER_WINDOW_HASH, window_keys, throttled_list]
        spec = [self._ttl, index, adds, encoded, window_spec, refs_spec, windows_spec]
        args = [_dumps(spec), refs_packed, *map(_digests, day_keys)]
        return keys, args, (items, keys, hashes, throttled)

    @staticmethod
    def _decode_apply(context: tuple, replies: list) -> set[tuple]:
        """The duplicates a call of the script answered, as (group key, position in the group)."""
        items = context[0]
        duplicates: set[tuple] = set()
        for number, *found in replies:
            key = items[number - 1][0]
            duplicates.update((key, n - 1) for n in found)
        return duplicates

    @_redis_reachable
    def sent_by_provider(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], dict[str, int]]:
        if not keys:
            return {}
        fields = [f"sent:{provider}" for provider in PROVIDERS]
        pipe = self.client.pipeline(transaction=False)
        for ip_id, day in keys:
            pipe.hmget(day_tag(ip_id, day) + ":c", fields)
        replies = pipe.execute()
        return {
            key: {provider: int(value or 0) for provider, value in zip(PROVIDERS, values, strict=True)}
            for key, values in zip(keys, replies, strict=True)
        }

    def read(self, ip_id: int, day: date) -> dict[str, int]:
        return totals(self.read_fields(ip_id, day))

    @_redis_reachable
    def read_fields(self, ip_id: int, day: date) -> dict[str, int]:
        """Live figures of one IP-day per ``counter:provider`` field."""
        raw = self.client.hgetall(day_tag(ip_id, day) + ":c")
        return {field.decode(): int(value) for field, value in raw.items()}

    @_redis_reachable
    def ping(self) -> None:
        # Reachable is not enough: a replica refuses writes, a full Redis too, and a Redis that evicts keys
        # under memory pressure loses counts, de-duplication keys (a replay then counts twice) or message
        # references without a word. With no memory limit (maxmemory 0) it never evicts, whatever its policy.
        targets = [{"target_nodes": node} for node in self.client.get_primaries()] if self.cluster else [{}]
        for target in targets:
            try:
                info = self.client.info(**target)  # every section: Redis before 7 takes one section at most
            except redis.ResponseError:  # INFO refused (an ACL without @dangerous, a renamed command)
                self.client.ping(**target)  # reachable, at least; its settings cannot be read
                continue
            limit, policy = info.get("maxmemory", 0), info.get("maxmemory_policy", "noeviction")
            if info.get("role", "master") != "master":
                problem = (
                    f"is a read-only replica (of {info.get('master_host')}:{info.get('master_port')}): it refuses "
                    "every write; point REDIS_URL at the primary"
                )
            elif limit and policy != "noeviction":
                problem = (
                    f"may evict keys (maxmemory {info.get('maxmemory_human')}, maxmemory-policy {policy}): counts, "
                    "de-duplication keys and message references would be lost; set maxmemory-policy noeviction"
                )
            elif limit and info.get("used_memory", 0) >= limit:
                problem = (
                    f"is full (used_memory {info.get('used_memory_human')} of maxmemory "
                    f"{info.get('maxmemory_human')}): it refuses every write; raise maxmemory"
                )
            else:
                continue
            raise CounterStoreUnavailable(
                f"Redis node {target['target_nodes'].name} {problem}" if target else f"Redis {problem}"
            )

    @_redis_reachable
    def window(self, first: int, last: int) -> dict[tuple[int, str], WindowFigures]:
        # The IPs with a throttling deferral in the window, from the index (pruned of what has expired);
        # then every window hash of theirs for the window's hours, on the IP-day of the index and the days
        # either side: a tenant's midnight may fall inside the hour.
        oldest = first - WINDOW_TTL_SECONDS // BUCKET_SECONDS
        self.client.zremrangebyscore(WINDOW_INDEX_KEY, "-inf", f"({oldest}")
        ip_days = {
            parse_day_key(member.decode())[:2] for member in self.client.zrangebyscore(WINDOW_INDEX_KEY, first, "+inf")
        }
        hours = range(first // BUCKETS_PER_WINDOW_HASH, last // BUCKETS_PER_WINDOW_HASH + 1)
        wanted = sorted(
            {
                (ip_id, f"{day_tag(ip_id, day + timedelta(days=shift))}:w{hour}")
                for ip_id, day in ip_days
                for shift in (-1, 0, 1)
                for hour in hours
            }
        )
        if not wanted:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for _, key in wanted:
            pipe.hgetall(key)
        fields = (
            (ip_id, field.decode(), int(value))
            for (ip_id, _), raw in zip(wanted, pipe.execute(), strict=True)
            for field, value in raw.items()
        )
        return window_figures(fields, first, last)

    # --- Message references: fields of daily hashes `wp:refs:{t<tenant>}:<YYYY-MM-DD>` (ref -> IP id) ---
    # A reference written on day D is found until the end of day D + WEBHOOK_MESSAGE_REF_TTL_DAYS (so for
    # at least the retention), and the hash expires a day after that. Days are UTC days of the portal's
    # clock. The braces are a Redis Cluster hash tag: all of a tenant's references share a slot. A batch
    # writes its references with one HSET, in the round trip of its counts; reading a batch's references
    # is one HMGET per day of retention, pipelined.

    @staticmethod
    def _refs_bucket(tenant_id: int, days_ago: int = 0) -> str:
        day = datetime.fromtimestamp(time.time(), UTC).date() - timedelta(days=days_ago)
        return f"wp:refs:{{t{tenant_id}}}:{day.isoformat()}"

    @_redis_reachable
    def read_refs(self, tenant_id: int, refs: Iterable[str]) -> dict[str, int]:
        refs = list(refs)
        if not refs:
            return {}
        stored = [stored_ref(ref) for ref in refs]
        pipe = self.client.pipeline(transaction=False)
        for days_ago in range(settings.WEBHOOK_MESSAGE_REF_TTL_DAYS + 1):  # the newest first: a later report wins
            pipe.hmget(self._refs_bucket(tenant_id, days_ago), stored)
        found: dict[str, int] = {}
        for values in pipe.execute():
            for ref, value in zip(refs, values, strict=True):
                if value is not None and ref not in found:
                    found[ref] = int(value)
        return found

    def _refs_args(self, keys: list[str], refs: References | None) -> tuple[list, str]:
        """The script's spec of `refs` (their hash, appended to `keys`, its expiry, then each IP id with how
        many references name it; [0] for none) and the references, grouped by IP."""
        if refs is None:
            return [0], ""
        items = refs.refs.items()
        joined = "".join(refs.refs)
        if not (joined.isascii() and "\x1f" not in joined and max(map(len, refs.refs)) <= 200):
            items = [(stored_ref(ref), ip_id) for ref, ip_id in items]
        by_ip: dict[int, list[str]] = {}
        for ref, ip_id in items:
            if ref:  # an empty reference names no message: nothing is kept for it
                named = by_ip.get(ip_id)
                if named is None:
                    named = by_ip[ip_id] = []
                named.append(ref)
        keys.append(self._refs_bucket(refs.tenant_id))
        ttl = int(timedelta(days=settings.WEBHOOK_MESSAGE_REF_TTL_DAYS + 1).total_seconds())
        spec: list[int | str] = [len(keys), ttl]
        for ip_id, named in by_ip.items():
            spec += (str(ip_id), len(named))  # text: the script writes it as it comes (no number formatting)
        return spec, "\x1f".join(chain.from_iterable(by_ip.values()))

    @_redis_reachable
    def write_refs(self, tenant_id: int, refs: Mapping[str, int]) -> None:
        if refs:
            keys: list[str] = []
            spec, packed = self._refs_args(keys, References(tenant_id, refs))
            nothing = [self._ttl, 0, [], [], [0], spec, [0, 1, [], []]]
            self._apply_script(keys=keys, args=[_dumps(nothing), packed])

    # --- Fixed windows (the webhooks' rate limit) on a cluster, where the counting script cannot take the
    # window's key: a counter key per window, expiring after it. A single node counts it in the script.

    def _hit_window(self, window: Window) -> None:
        hits = self.client.incr(window.name)
        if hits == 1:  # the window's first hit sets its expiry, kept past it: a slow clock never resets it
            self.client.expire(window.name, 2 * window.seconds)
        if hits > window.limit:
            raise WindowFull(window.name)

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
        # exist reads as empty), drop the index entries, then rename slot by slot. A run killed between
        # the index and the renames leaves hashes off the index: the next run puts its leftovers' hashes
        # back on it (`consolidate`).
        if not pairs:
            return []
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

    # --- Consolidation (`warmup.consolidation`): each finished IP-day's hash is renamed to a batch key in
    # the same slot and recorded in an in-flight set (one atomic script); the batches are read, then ONE
    # database transaction writes their ids to the `ConsolidationBatch` ledger and adds their figures to
    # `DailyStat`; only after the commit are the batch keys deleted. A later run finds the leftovers of
    # a killed one in the in-flight set: those in the ledger are deleted, the others applied.

    def consolidate(self, run) -> None:
        leftovers = self.in_flight()
        if leftovers and self.cluster:
            # The cluster's claim is not atomic (`_claim_on_cluster`): a killed run may have dropped index
            # entries of hashes it never renamed. Listing them again is harmless (a missing hash is skipped).
            self.client.sadd(INDEX_KEY, *{day_tag(b.ip_id, b.day) + ":c" for b in leftovers})
        if leftovers:
            applied = set(
                ConsolidationBatch.objects.filter(batch_id__in=[b.batch_id for b in leftovers]).values_list(
                    "batch_id", flat=True
                )
            )
            self.forget_batches([b for b in leftovers if b.batch_id in applied])
            run.checkpoint("leftovers_forgotten")
            unapplied = [b for b in leftovers if b.batch_id not in applied]
            run.report.recovered = len(leftovers)
            self._apply_batches(run, unapplied, run.zones({b.ip_id for b in unapplied}))

        pending = self.pending_ip_days()
        zones = run.zones({ip_id for ip_id, _ in pending})
        todays = run.todays(zones.values())
        # An IP deleted since its events were counted has nowhere to go: its days are claimed and dropped.
        finished = [(ip_id, day) for ip_id, day in pending if ip_id not in zones or day < todays[zones[ip_id]]]
        batches = self.claim(finished)
        run.checkpoint("claimed")
        self._apply_batches(run, batches, zones)

    def _apply_batches(self, run, batches: list[Batch], zones: dict[int, str]) -> None:
        for start in range(0, len(batches), run.CHUNK):
            chunk = batches[start : start + run.CHUNK]
            figures: dict[tuple[int, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for batch, fields in zip(chunk, self.read_batches(chunk), strict=True):
                if batch.ip_id not in zones:
                    logger.warning("Dropping counts of deleted IP #%s on %s: %s", batch.ip_id, batch.day, fields)
                    continue
                for field, value in fields.items():
                    figures[(batch.ip_id, batch.day)][field] += value
            run.checkpoint("read")
            with transaction.atomic():
                ConsolidationBatch.objects.bulk_create(
                    [
                        ConsolidationBatch(batch_id=b.batch_id, ip_id=b.ip_id if b.ip_id in zones else None, date=b.day)
                        for b in chunk
                    ]
                )
                run.add(figures)
                run.checkpoint("written")
                # After the commit (of the outermost transaction, when a caller holds one): had the
                # transaction rolled back, the batches would stay in flight and be applied next time.
                transaction.on_commit(lambda chunk=chunk: self._forget(run, chunk))

    def _forget(self, run, batches: list[Batch]) -> None:
        run.checkpoint("committed")
        self.forget_batches(batches)
        run.checkpoint("forgotten")
