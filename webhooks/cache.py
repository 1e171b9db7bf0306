"""Per-process caches of the webhook hot path: token -> tenant, and each tenant's IP maps.

A single-event webhook would otherwise spend most of its time in two queries (the token, then every IP
of the tenant) to count one event (PRODUCT.md section 10). With these caches the steady state makes
no query at all. What keeps them correct:

- Entries live at most TTL_SECONDS: the backstop for changes made without model signals (a queryset
  `update()`, raw SQL), and for a listener that died without noticing.
- Every save or delete of a webhook token, of an IP (address, source name, tenant) or of a tenant
  (signing secret, time zone) clears this process's caches at once and, once committed, is published
  on a Redis channel (`wp:webhooks:changed:<db>`) that a daemon thread of every web process listens
  to, which clears theirs: a revoked token is refused by every process within milliseconds of the
  commit. Clearing on commit as well covers another thread that re-read the old rows in between.
- The caches are used only while this process is subscribed (and only with the Redis counter store):
  a process without a subscription reads the database on every request, and one that subscribes
  (again) clears everything first, since it may have missed messages.
- A load that raced with an invalidation is returned to its request but not stored (a generation
  counter), so an old row never outlives the change that replaced it.
- An address (or source name) the cached map does not know is looked up again in the database, once
  per request and only if the map predates the request, before the event is declared unknown: an IP
  added a moment ago in another process is attributed at once, never dead-lettered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from domains.models import IP, Tenant, WebhookToken
from webhooks.attribution import Attributor
from webhooks.auth import tenant_for_digest, token_digest
from webhooks.events import DayOf
from webhooks.ingest import TenantContext

logger = logging.getLogger(__name__)

TTL_SECONDS = 5.0
# Fields whose change matters to authentication or attribution; saves limited to other fields
# (`update_fields`, e.g. an IP's status or weight) leave the caches alone.
RELEVANT_FIELDS = {
    WebhookToken: None,  # any change (revocation above all)
    IP: frozenset({"address", "mta_source_name", "tenant", "tenant_id"}),
    Tenant: frozenset({"webhook_signing_secret", "time_zone"}),
}
_LISTEN_POLL_SECONDS = 0.5
_RETRY_CAP_SECONDS = 2.0

_clock = time.monotonic  # replaced by tests to age entries
_lock = threading.Lock()
_generation = 0
_tokens: dict[str, tuple[float, Tenant]] = {}  # token digest -> (expiry, tenant)
_maps: dict[int, TenantMaps] = {}  # tenant id -> its IP maps


@dataclass(slots=True)
class TenantMaps:
    """A tenant's IPs by address and by source name as loaded at `loaded_at` (monotonic seconds)."""

    by_address: dict[str, int]
    by_name: dict[str, int]
    day_of: DayOf
    providers: dict[str, str]
    loaded_at: float
    expires: float


# --- Look-ups ------------------------------------------------------------------------------------


def tenant_for_token(token: str) -> Tenant:
    """`webhooks.auth.tenant_for_token`, from the cache when it may be trusted."""
    digest = token_digest(token)  # AuthenticationFailed when there is none
    if not enabled():
        return tenant_for_digest(digest)
    entry = _tokens.get(digest)
    now = _clock()
    if entry is not None and entry[0] > now:
        return entry[1]
    generation = _generation
    tenant = tenant_for_digest(digest)  # AuthenticationFailed: nothing is cached for a wrong token
    with _lock:
        if _generation == generation:
            _tokens[digest] = (now + TTL_SECONDS, tenant)
    return tenant


def context_for(tenant: Tenant) -> TenantContext:
    """A TenantContext for one request, on the tenant's cached IP maps when they may be trusted."""
    if not enabled():
        return TenantContext(tenant)
    started = _clock()
    maps = _maps.get(tenant.pk)
    if maps is None or maps.expires <= started:
        maps = _load_maps(tenant)
    return TenantContext(
        tenant, attributor=CachedAttributor(tenant, maps, started), day_of=maps.day_of, providers=maps.providers
    )


def _load_maps(tenant: Tenant) -> TenantMaps:
    generation = _generation
    loaded_at = _clock()  # before the query: the maps hold everything committed before this instant
    fresh = Attributor(tenant)
    maps = TenantMaps(
        by_address=fresh.by_address,
        by_name=fresh.by_name,
        day_of=DayOf(tenant.zone),
        providers={},
        loaded_at=loaded_at,
        expires=loaded_at + TTL_SECONDS,
    )
    with _lock:
        if _generation == generation:
            _maps[tenant.pk] = maps
    return maps


class CachedAttributor(Attributor):
    """An Attributor on cached maps that looks again in the database (once) before giving up on a name."""

    def __init__(self, tenant: Tenant, maps: TenantMaps, started: float):
        # Not Attributor.__init__: the maps come from the cache instead of a query.
        self.tenant = tenant
        self.by_address = maps.by_address
        self.by_name = maps.by_name
        self._maps = maps
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
        if self._refreshed or self._maps.loaded_at >= self._started:
            return False
        self._refreshed = True
        current = _maps.get(self.tenant.pk)
        if current is None or current.loaded_at < self._started:
            current = _load_maps(self.tenant)
        self._maps, self.by_address, self.by_name = current, current.by_address, current.by_name
        return True


# --- Invalidation --------------------------------------------------------------------------------


def invalidate() -> None:
    """Forget everything this process has cached (and any load in progress)."""
    global _generation
    with _lock:
        _generation += 1
        _tokens.clear()
        _maps.clear()


def channel(client: redis.Redis | None = None) -> str:
    """The Redis channel of changes (per Redis database: pub/sub channels are server-wide)."""
    if client is None:
        client = redis.Redis.from_url(settings.REDIS_URL)
    return f"wp:webhooks:changed:{client.connection_pool.connection_kwargs.get('db', 0)}"


def publish() -> None:
    """Clear this process's caches and tell the other processes to clear theirs."""
    invalidate()
    if settings.WARMUP_COUNTER_BACKEND != "redis" or not settings.REDIS_URL:
        return  # no process caches anything without Redis
    from warmup_portal.redis import get_redis

    try:
        client = get_redis()
        client.publish(channel(client), b"1")
    except (redis.RedisError, OSError) as exc:
        # The other processes' entries then expire within TTL_SECONDS; a process whose subscription
        # broke with Redis clears everything when it subscribes again.
        logger.warning("webhook caches: could not publish a change: %s", exc)


def _changed(sender, instance, using, update_fields=None, **kwargs) -> None:
    relevant = RELEVANT_FIELDS.get(sender)
    if relevant is not None and update_fields is not None and not relevant.intersection(update_fields):
        return
    invalidate()  # at once in this process (the tests, the admin's own next request)
    transaction.on_commit(publish, using=using)  # the others, once the change is visible to them


for _model in RELEVANT_FIELDS:
    post_save.connect(_changed, sender=_model, dispatch_uid=f"webhooks.cache.saved.{_model.__name__}")
    post_delete.connect(_changed, sender=_model, dispatch_uid=f"webhooks.cache.deleted.{_model.__name__}")


# --- The listener --------------------------------------------------------------------------------


class _Listener:
    """A daemon thread per process subscribed to the change channel of settings.REDIS_URL."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.subscribed_url: str | None = None  # set while subscribed, None otherwise

    def ready(self) -> bool:
        if self.pid != os.getpid():
            self.start()
            return False
        return self.subscribed_url is not None and self.subscribed_url == settings.REDIS_URL

    def start(self) -> None:
        with self.lock:
            if self.pid == os.getpid():
                return
            self.pid = os.getpid()
            self.subscribed_url = None
            invalidate()  # anything inherited from a parent process is unwatched
            threading.Thread(target=self.run, name="webhook-cache-listener", daemon=True).start()

    def run(self) -> None:
        pause = 0.1
        while True:
            url = settings.REDIS_URL
            try:
                self.listen(url)
                pause = 0.1
            except Exception as exc:  # whatever broke, the caches go unused until subscribed again
                logger.info("webhook caches: listener stopped (%s); reading the database meanwhile", exc)
                time.sleep(pause)
                pause = min(_RETRY_CAP_SECONDS, pause * 2)

    def listen(self, url: str) -> None:
        if not url:
            time.sleep(_LISTEN_POLL_SECONDS)
            return
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10)
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(channel(client))
            while settings.REDIS_URL == url:
                message = pubsub.get_message(timeout=_LISTEN_POLL_SECONDS)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    invalidate()  # messages may have been missed before this point
                    self.subscribed_url = url
                elif message["type"] == "message":
                    invalidate()
        finally:
            self.subscribed_url = None
            invalidate()
            pubsub.close()
            client.close()


_listener = _Listener()


def start_listening() -> None:
    """Subscribe this process now rather than at its first webhook (web processes, at start-up)."""
    if settings.WARMUP_COUNTER_BACKEND == "redis":
        _listener.ready()


def enabled() -> bool:
    """Whether this process may use its caches now (Redis counter store, change channel subscribed)."""
    return settings.WARMUP_COUNTER_BACKEND == "redis" and _listener.ready()


def wait_until_enabled(timeout: float = 5.0) -> bool:
    """Start listening if needed and wait for the subscription (tests, warm-up); True once enabled."""
    deadline = time.monotonic() + timeout
    while not enabled():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


os.register_at_fork(after_in_child=lambda: setattr(_listener, "pid", None))
