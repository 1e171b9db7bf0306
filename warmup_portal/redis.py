"""The process's Redis client, built once from settings: the counter store, message references, the
webhooks' rate-limit window and cache invalidation all use it.

redis-py as designed: its connection pool (safe across threads, rebuilt after a fork), its retry of a
command on a new connection, and its health checks of idle connections. With REDIS_CLUSTER the client
is a `redis.RedisCluster` (REDIS_URL names any node; the others are discovered).
"""

from functools import cache

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


class RedisNotConfigured(RuntimeError):
    """REDIS_URL is not set: the embedded default keeps everything in the database."""


@cache
def _client(url: str, cluster: bool) -> redis.Redis | redis.RedisCluster:
    # A webhook waits on this client: retry briefly, then let the sender retry later (503).
    options = {
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
    }
    if cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, health_check_interval=30, **options)


def get_redis() -> redis.Redis | redis.RedisCluster:
    """The shared client for settings.REDIS_URL (a new one when the setting changes, as in tests)."""
    if not settings.REDIS_URL:
        raise RedisNotConfigured("REDIS_URL is not set")
    return _client(settings.REDIS_URL, settings.REDIS_CLUSTER)
