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
    # Message-Ids are whatever the sender wrote: bound the stored key, keep it unambiguous.
    if len(ref) <= 200:
        return ref
    return "h:" + hashlib.blake2b(ref.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


class RedisMessageRefs:
    """References as Redis strings `wp:ref:<tenant>:<ref>` -> IP id, expiring on their own."""

    def __init__(self, client: redis.Redis):
        self.client = client

    @staticmethod
    def _key(tenant_id: int, ref: str) -> str:
        return f"wp:ref:{tenant_id}:{_stored_ref(ref)}"

    def read(self, tenant_id: int, refs: Iterable[str]) -> dict[str, int]:
        refs = list(refs)
        if not refs:
            return {}
        try:
            pipe = self.client.pipeline(transaction=False)
            for ref in refs:
                pipe.get(self._key(tenant_id, ref))
            values = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CounterStoreUnavailable(f"Redis is unreachable: {exc}") from exc
        return {ref: int(value) for ref, value in zip(refs, values, strict=True) if value is not None}

    def write(self, tenant_id: int, refs: Mapping[str, int]) -> None:
        if not refs:
            return
        ttl = int(timedelta(days=settings.WEBHOOK_MESSAGE_REF_TTL_DAYS).total_seconds())
        try:
            pipe = self.client.pipeline(transaction=False)
            for ref, ip_id in refs.items():
                pipe.set(self._key(tenant_id, ref), ip_id, ex=ttl)
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
