"""Per-process caches of the webhook hot path: token -> tenant, and each tenant's IP maps.

A single-event webhook would otherwise spend most of its time in two queries (the token, then every IP
of the tenant) to count one event (PRODUCT.md section 10). With these caches the steady state makes
no query at all. Entries live TTL_SECONDS (cachetools' TTLCache), in every process and with either
counter store. What keeps them correct:

- In the process that makes a change (the admin, a command), every save or delete of a webhook token,
  of an MTA source (or its tenants), of an IP (address, source name, tenant) or of a tenant (signing
  secret, time zone) clears the caches
  at once, and again once committed (another thread may have read the old rows in between). Other
  processes see the change when their entries expire: a revoked token is refused everywhere within
  TTL_SECONDS.
- An address (or source name) the cached map does not know is looked up again in the database, once
  per request and only if the map predates the request, before the event is declared unknown: an IP
  added a moment ago in another process is attributed at once, never dead-lettered.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from cachetools import TTLCache
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from domains.models import IP, MTASource, Tenant, WebhookToken
from webhooks.attribution import Attributor
from webhooks.auth import Sender, sender_for_digest, token_digest
from webhooks.events import DayOf
from webhooks.ingest import TenantContext

TTL_SECONDS = 5.0
# Fields whose change matters to authentication or attribution; saves limited to other fields
# (`update_fields`, e.g. an IP's status or weight) leave the caches alone.
RELEVANT_FIELDS = {
    WebhookToken: None,  # any change (revocation above all)
    MTASource: None,  # its tenants, its home tenant
    IP: frozenset({"address", "mta_source_name", "tenant", "tenant_id"}),
    Tenant: frozenset({"webhook_signing_secret", "time_zone"}),
}

_clock = time.monotonic  # replaced by tests to age entries
_lock = threading.Lock()  # TTLCache is not thread-safe; gunicorn's gthread workers share a process
_tokens: TTLCache = TTLCache(maxsize=10_000, ttl=TTL_SECONDS, timer=lambda: _clock())  # digest -> sender
_maps: TTLCache = TTLCache(maxsize=1_000, ttl=TTL_SECONDS, timer=lambda: _clock())  # tenant id -> TenantMaps


@dataclass(slots=True)
class TenantMaps:
    """A tenant's IPs by address and by source name as loaded at `loaded_at` (monotonic seconds)."""

    by_address: dict[str, int]
    by_name: dict[str, int]
    day_of: DayOf
    providers: dict[str, str]
    loaded_at: float


# --- Look-ups ------------------------------------------------------------------------------------


def sender_for_token(token: str) -> Sender:
    """`webhooks.auth.sender_for_token`, from the cache while the entry lives."""
    digest = token_digest(token)  # AuthenticationFailed when there is none
    with _lock:
        sender = _tokens.get(digest)
    if sender is None:
        sender = sender_for_digest(digest)  # AuthenticationFailed: nothing is cached for a wrong token
        with _lock:
            _tokens[digest] = sender
    return sender


def context_for(tenant: Tenant) -> TenantContext:
    """A TenantContext for one request, on the tenant's cached IP maps."""
    started = _clock()
    with _lock:
        maps = _maps.get(tenant.pk)
    if maps is None:
        maps = _load_maps(tenant)
    return TenantContext(
        tenant, attributor=CachedAttributor(tenant, maps, started), day_of=maps.day_of, providers=maps.providers
    )


def _load_maps(tenant: Tenant) -> TenantMaps:
    loaded_at = _clock()  # before the query: the maps hold everything committed before this instant
    fresh = Attributor(tenant)
    maps = TenantMaps(fresh.by_address, fresh.by_name, DayOf(tenant.zone), {}, loaded_at)
    with _lock:
        _maps[tenant.pk] = maps
    return maps


class CachedAttributor(Attributor):
    """An Attributor on cached maps that looks again in the database (once) before giving up on a name."""

    def __init__(self, tenant: Tenant, maps: TenantMaps, started: float):
        # Not Attributor.__init__: the maps come from the cache instead of a query.
        self.tenant = tenant
        self.by_address = maps.by_address
        self.by_name = maps.by_name
        self._loaded_at = maps.loaded_at
        self._started = started
        self._refreshed = False

    def ip_for_address(self, text: str) -> int | None:
        ip_id = super().ip_for_address(text)  # ValueError for text that is no address: nothing to reload
        if ip_id is None and self._refresh():
            ip_id = super().ip_for_address(text)
        return ip_id

    def ip_for_source_name(self, name: str) -> int | None:
        ip_id = super().ip_for_source_name(name)
        if ip_id is None and self._refresh():
            ip_id = super().ip_for_source_name(name)
        return ip_id

    def _refresh(self) -> bool:
        """Switch to maps loaded after this request started; False when the current ones already are."""
        if self._refreshed or self._loaded_at >= self._started:
            return False
        self._refreshed = True
        with _lock:
            current = _maps.get(self.tenant.pk)
        if current is None or current.loaded_at < self._started:
            current = _load_maps(self.tenant)
        self.by_address, self.by_name, self._loaded_at = current.by_address, current.by_name, current.loaded_at
        return True


# --- Invalidation in the process that makes a change ----------------------------------------------


def invalidate() -> None:
    """Forget everything this process has cached."""
    with _lock:
        _tokens.clear()
        _maps.clear()


def _changed(sender, instance, using, update_fields=None, **kwargs) -> None:
    relevant = RELEVANT_FIELDS.get(sender)
    if relevant is not None and update_fields is not None and not relevant.intersection(update_fields):
        return
    invalidate()  # at once (the tests, the admin's own next request)
    transaction.on_commit(invalidate, using=using)  # and after a load that read the old rows meanwhile


for _model in RELEVANT_FIELDS:
    post_save.connect(_changed, sender=_model, dispatch_uid=f"webhooks.cache.saved.{_model.__name__}")
    post_delete.connect(_changed, sender=_model, dispatch_uid=f"webhooks.cache.deleted.{_model.__name__}")
m2m_changed.connect(_changed, sender=MTASource.tenants.through, dispatch_uid="webhooks.cache.mta_source_tenants")
