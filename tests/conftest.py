"""Shared fixtures. Tests run against the real PostgreSQL and Redis named by DATABASE_URL / REDIS_URL."""

import pytest
from django.conf import settings

from .factories import TenantFactory, UserFactory


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Tests build users with passwords; the production hasher costs about a second each here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def tenant(db):
    return TenantFactory(name="SOS-Expat", slug="sos-expat")


@pytest.fixture
def tenant_a(db):
    """Two tenants for isolation checks: a member of one must never see the other."""
    return TenantFactory(name="Alpha", slug="alpha")


@pytest.fixture
def tenant_b(db):
    return TenantFactory(name="Bravo", slug="bravo")


@pytest.fixture
def superuser(db):
    return UserFactory(username="root", is_superuser=True)


@pytest.fixture
def redis_client():
    """The Redis named by REDIS_URL, emptied before and after the test (it is the test's own database)."""
    import redis

    if not settings.REDIS_URL:
        pytest.fail("REDIS_URL is not set: the tests need the real Redis (make test sets it)")
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def counter_store_down(settings):
    """The Redis counter store on a closed port (a real refused connection, not a mock)."""
    import socket

    from warmup import counters

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    counters.get_redis.cache_clear()
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    settings.WARMUP_COUNTER_BACKEND = "redis"
    yield
    counters.get_redis.cache_clear()
