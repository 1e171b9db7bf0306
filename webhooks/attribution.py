"""Attribution: which of the tenant's IPs an event belongs to (PRODUCT.md section 6).

In order: the IP the record names (an IP of another tenant is unknown here: a token credits only its
tenant's IPs), else the MTA source name (PowerMTA vmta, KumoMTA egress_source = `IP.mta_source_name`),
else a message reference (Message-Id, or MailWizz's campaign/subscriber pair) remembered from the
delivery report for WEBHOOK_MESSAGE_REF_TTL_DAYS. References live in Redis with the Redis counter
store, else in the `MessageRef` table.

In Redis, a tenant's references of one day (the day they were written) share one hash that expires a
day after the retention: a batch writes its thousands of references with one HSET, which the
ingestion pipeline folds into the counter store's script (one round trip for references and counts),
and reading a batch's references is one HMGET per day of retention, pipelined.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import chain

import redis
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from domains.models import IP, Tenant, normalise_ip
from warmup.counters import CounterStoreUnavailable, HashWrite
from warmup_portal.redis import get_redis
from webhooks.models import MessageRef


class Attributor:
    """A tenant's IPs by address and by MTA source name, loaded once (per request or per backfill)."""

    def __init__(self, tenant: Tenant):
        self.tenant = tenant
        self.by_address: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        for ip_id, address, name in IP.objects.filter(tenant=tenant).values_list("id", "address", "mta_source_name"):
            self.by_address[address] = ip_id
            if name:
                self.by_name[name] = ip_id
                self.by_name.setdefault(name.lower(), ip_id)

    def ip_for_address(self, text: str) -> int | None:
        """The tenant's IP id for an address as the record wrote it; None when the tenant has no such IP.

        ValueError when the text is not an IP address at all.
        """
        ip_id = self.by_address.get(text)
        if ip_id is None:
            canonical = normalise_ip(text)  # "045.123.010.001" is not an address; "2001:DB8::1" is
            ip_id = self.by_address.get(canonical)
            if ip_id is not None:
                self.by_address[text] = ip_id  # later records of the batch find it directly
        return ip_id

    def ip_for_source_name(self, name: str) -> int | None:
        return self.by_name.get(name) or self.by_name.get(name.lower())


def _stored_ref(ref: str) -> str:
    # Message-Ids are whatever the sender wrote: bound the stored key, keep it unambiguous (free of the
    # separators the earlier Redis layout used) and valid UTF-8 (a JSON record may hold a lone surrogate).
    if len(ref) <= 200 and "\t" not in ref and "\n" not in ref and (ref.isascii() or _is_utf8(ref)):
        return ref
    return "h:" + hashlib.blake2b(ref.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RedisMessageRefs:
    """References as fields of daily hashes `wp:refs:{t<tenant>}:<YYYY-MM-DD>` (ref -> IP id).

    A reference written on day D is found until the end of day D + WEBHOOK_MESSAGE_REF_TTL_DAYS (so for
    at least the retention), and the hash expires a day after that. Days are UTC days of the portal's
    clock. The braces are a Redis Cluster hash tag: all of a tenant's references share a slot.
    """

    def __init__(self, client: redis.Redis):
        self.client = client

    @staticmethod
    def _bucket(tenant_id: int, days_ago: int = 0) -> str:
        day = datetime.fromtimestamp(time.time(), UTC).date() - timedelta(days=days_ago)
        return f"wp:refs:{{t{tenant_id}}}:{day.isoformat()}"

    @staticmethod
    def _legacy_key(tenant_id: int, ref: str) -> str:
        # Before the daily hashes, each reference was a string key of its own. Read for one retention
        # period after an upgrade, so that references written before it still attribute.
        return f"wp:ref:{{t{tenant_id}}}:{_stored_ref(ref)}"

    def read(self, tenant_id: int, refs: Iterable[str]) -> dict[str, int]:
        refs = list(refs)
        if not refs:
            return {}
        stored = [_stored_ref(ref) for ref in refs]
        days = settings.WEBHOOK_MESSAGE_REF_TTL_DAYS
        pipe = self.client.pipeline(transaction=False)
        for days_ago in range(days + 1):  # the newest first: a later delivery report wins
            pipe.hmget(self._bucket(tenant_id, days_ago), stored)
        pipe.mget([self._legacy_key(tenant_id, ref) for ref in refs])
        try:
            replies = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc
        found: dict[str, int] = {}
        for values in replies:
            for ref, value in zip(refs, values, strict=True):
                if value is not None and ref not in found:
                    found[ref] = int(value)
        return found

    def hash_write(self, tenant_id: int, refs: Mapping[str, int]) -> HashWrite:
        """The write of `refs`, for the counter store to make in the same round trip as the counts."""
        joined = "".join(refs)
        if joined.isascii() and "\t" not in joined and "\n" not in joined and max(map(len, refs), default=0) <= 200:
            # The usual batch (every reference stored as it is), without a call per reference.
            fields = list(chain.from_iterable(refs.items()))
        else:
            fields = list(chain.from_iterable((_stored_ref(ref), ip_id) for ref, ip_id in refs.items()))
        ttl = int(timedelta(days=settings.WEBHOOK_MESSAGE_REF_TTL_DAYS + 1).total_seconds())
        return HashWrite(self._bucket(tenant_id), fields, ttl)

    def write(self, tenant_id: int, refs: Mapping[str, int]) -> None:
        if not refs:
            return
        write = self.hash_write(tenant_id, refs)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(write.key, items=list(write.fields))
        pipe.expire(write.key, write.ttl)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc


class DatabaseMessageRefs:
    """References in the `MessageRef` table (the embedded default); expired rows are pruned by retention."""

    def read(self, tenant_id: int, refs: Iterable[str]) -> dict[str, int]:
        stored = {_stored_ref(ref): ref for ref in refs}
        if not stored:
            return {}
        rows = MessageRef.objects.filter(
            tenant_id=tenant_id, ref__in=list(stored), expires_at__gt=timezone.now()
        ).values_list("ref", "ip_id")
        return {stored[ref]: ip_id for ref, ip_id in rows}

    def write(self, tenant_id: int, refs: Mapping[str, int]) -> None:
        if not refs:
            return
        expires_at = timezone.now() + timedelta(days=settings.WEBHOOK_MESSAGE_REF_TTL_DAYS)
        rows = [
            MessageRef(tenant_id=tenant_id, ref=_stored_ref(ref), ip_id=ip_id, expires_at=expires_at)
            for ref, ip_id in refs.items()
        ]
        try:
            MessageRef.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["tenant", "ref"],
                update_fields=["ip", "expires_at"],
            )
        except DatabaseError as exc:
            raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc


def get_message_refs() -> RedisMessageRefs | DatabaseMessageRefs:
    """Where references live: beside the counters (Redis), else in the database."""
    if settings.WARMUP_COUNTER_BACKEND == "redis":
        return RedisMessageRefs(get_redis())
    return DatabaseMessageRefs()
