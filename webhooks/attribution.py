"""Attribution: which of the tenant's IPs an event belongs to (PRODUCT.md section 6).

In order: the IP the record names (an IP of another tenant is unknown here: a token credits only its
tenant's IPs), else the MTA source name (PowerMTA vmta, KumoMTA egress_source = `IP.mta_source_name`),
else a message reference (Message-Id, or MailWizz's campaign/subscriber pair) remembered from the
delivery report for WEBHOOK_MESSAGE_REF_TTL_DAYS. References live in Redis (SET with EX, pipelined:
one round trip to write and one to read per batch) with the Redis counter store, else in the
`MessageRef` table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import timedelta

import redis
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from domains.models import IP, Tenant, normalise_ip
from warmup.counters import CounterStoreUnavailable, get_redis
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
    # Message-Ids are whatever the sender wrote: bound the stored key, keep it unambiguous (and free
    # of the separators the Redis write uses).
    if len(ref) <= 200 and "\t" not in ref and "\n" not in ref:
        return ref
    return "h:" + hashlib.blake2b(ref.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


# Sets every reference of a batch with its expiry in one call. The references travel as one
# "ref<TAB>ip<LF>..." argument: redis-py packs each argument in Python, and a batch has thousands.
# KEYS[1] is the tenant's key prefix; its hash tag routes the call to the slot holding every key it sets.
_WRITE_LUA = r"""
local prefix, ttl, n = KEYS[1], ARGV[1], 0
for ref, ip in string.gmatch(ARGV[2], "([^\t\n]+)\t([^\n]+)\n") do
  redis.call('SET', prefix .. ref, ip, 'EX', ttl)
  n = n + 1
end
return n
"""


class RedisMessageRefs:
    """References as Redis strings `wp:ref:{t<tenant>}:<ref>` -> IP id, expiring on their own.

    The braces are a Redis Cluster hash tag: a tenant's references share a slot, so a batch reads
    them with one MGET and writes them with one script call.
    """

    def __init__(self, client: redis.Redis):
        self.client = client
        self._write = client.register_script(_WRITE_LUA)

    @staticmethod
    def _key(tenant_id: int, ref: str) -> str:
        return f"wp:ref:{{t{tenant_id}}}:{_stored_ref(ref)}"

    def read(self, tenant_id: int, refs: Iterable[str]) -> dict[str, int]:
        refs = list(refs)
        if not refs:
            return {}
        try:
            values = self.client.mget([self._key(tenant_id, ref) for ref in refs])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc
        return {ref: int(value) for ref, value in zip(refs, values, strict=True) if value is not None}

    def write(self, tenant_id: int, refs: Mapping[str, int]) -> None:
        if not refs:
            return
        ttl = int(timedelta(days=settings.WEBHOOK_MESSAGE_REF_TTL_DAYS).total_seconds())
        lines = "".join(f"{_stored_ref(ref)}\t{ip_id}\n" for ref, ip_id in refs.items())
        try:
            self._write(keys=[f"wp:ref:{{t{tenant_id}}}:"], args=[ttl, lines])
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
