"""/healthz against the real PostgreSQL and Redis, a Redis on a closed port, a Redis that may evict keys, is
full or is a replica, and the filesystem broker."""

import socket
import time

import pytest
import redis

from .support import OwnRedis, free_port


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_redis_client():
    """The counter store's Redis client is built once per process: rebuild it for the test's settings."""
    yield


def test_all_ok_with_real_postgresql_and_redis(client, db, settings, redis_client, fresh_redis_client):
    settings.WARMUP_COUNTER_BACKEND = "redis"
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "counter_store": "ok", "broker": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_redis_on_a_closed_port_is_a_503_naming_what_failed(client, db, settings, fresh_redis_client):
    url = f"redis://127.0.0.1:{closed_port()}/0"
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.WARMUP_COUNTER_BACKEND = "redis"
    started = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - started < 10  # a probe must get an answer quickly
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok"
    assert body["counter_store"].startswith("error: ")
    assert "unreachable" in body["counter_store"]
    assert body["broker"].startswith("error: ")


def test_a_redis_that_may_evict_keys_is_full_or_a_replica_is_a_503_naming_why(client, db, settings, tmp_path):
    server = OwnRedis(tmp_path, free_port())
    server.start()
    try:
        settings.REDIS_URL = settings.CELERY_BROKER_URL = server.url
        settings.WARMUP_COUNTER_BACKEND = "redis"
        own = redis.Redis.from_url(server.url)
        own.config_set("maxmemory", "100mb")
        own.config_set("maxmemory-policy", "allkeys-lru")

        response = client.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["counter_store"] == (
            "error: CounterStoreUnavailable: Redis may evict keys (maxmemory 100.00M, maxmemory-policy allkeys-lru): "
            "counts, de-duplication keys and message references would be lost; set maxmemory-policy noeviction"
        )
        assert body["database"] == body["broker"] == "ok"

        own.config_set("maxmemory-policy", "noeviction")
        assert client.get("/healthz").json()["counter_store"] == "ok"
        own.config_set("maxmemory", "1")  # below what it holds already: every write is refused
        full = client.get("/healthz").json()["counter_store"]
        assert full.startswith("error: CounterStoreUnavailable: Redis is full (used_memory "), full
        # Without a memory limit Redis never evicts, whatever its policy.
        own.config_set("maxmemory-policy", "volatile-lru")
        own.config_set("maxmemory", "0")
        assert client.get("/healthz").status_code == 200

        primary = free_port(7390)
        own.replicaof("127.0.0.1", primary)
        assert client.get("/healthz").json()["counter_store"] == (
            f"error: CounterStoreUnavailable: Redis is a read-only replica (of 127.0.0.1:{primary}): it refuses "
            "every write; point REDIS_URL at the primary"
        )
        own.replicaof("no", "one")

        # A deployment whose Redis user may not run INFO (ACL categories without @dangerous): reachable
        # is all that can be checked.
        own.acl_setuser("default", enabled=True, nopass=True, commands=["+@all", "-info"], keys=["*"], channels=["*"])
        assert client.get("/healthz").json()["counter_store"] == "ok"
        server.stop()
        assert (
            client.get("/healthz")
            .json()["counter_store"]
            .startswith("error: CounterStoreUnavailable: Redis is unreachable")
        )
    finally:
        server.stop()


def test_database_counters_and_filesystem_broker(client, db, settings, tmp_path):
    settings.WARMUP_COUNTER_BACKEND = "database"
    settings.CELERY_BROKER_URL = "filesystem://"
    (tmp_path / "out").mkdir()
    (tmp_path / "processed").mkdir()
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path / "out"),
        "data_folder_out": str(tmp_path / "out"),
        "processed_folder": str(tmp_path / "processed"),
    }
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json() == {"database": "ok", "counter_store": "ok", "broker": "ok"}

    (tmp_path / "processed").rmdir()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"] == f"error: broker folder {tmp_path / 'processed'} does not exist"


def test_healthz_is_exempt_from_the_https_redirect(client, db, settings, redis_client, fresh_redis_client):
    settings.SECURE_SSL_REDIRECT = True
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    assert client.get("/healthz").status_code == 200
    assert client.get("/admin/").status_code == 301
