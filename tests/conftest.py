"""Shared fixtures. Tests run against the real PostgreSQL and Redis named by DATABASE_URL / REDIS_URL."""

import pytest
from django.conf import settings

from .factories import TenantFactory, UserFactory


@pytest.fixture
def tenant(db):
    return TenantFactory(name="SOS-Expat", slug="sos-expat")


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
