"""Shared fixtures. Tests run against the real PostgreSQL and Redis named by DATABASE_URL / REDIS_URL."""

import pytest
from django.conf import settings

from .factories import TenantFactory, UserFactory
from .telegram_support import TOKEN, running_fake_telegram


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Tests build users with passwords; the production hasher costs about a second each here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def empty_cache():
    """Django's cache (the process's memory) starts every test empty, as a new process would."""
    from django.core.cache import cache

    cache.clear()


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

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    settings.WARMUP_COUNTER_BACKEND = "redis"
    yield


@pytest.fixture
def eager_tasks():
    """Tasks run in this process as they are queued (the real task code, retries included); the
    end-to-end tests run a real worker instead."""
    from warmup_portal.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def fake_telegram(settings, eager_tasks):
    """Alerts configured for a local Telegram stand-in and delivered by their task in this process."""
    with running_fake_telegram() as fake:
        settings.TELEGRAM_API_URL = fake.url
        settings.TELEGRAM_BOT_TOKEN = TOKEN
        settings.TELEGRAM_CHAT_ID = "-1001"
        settings.TELEGRAM_TIMEOUT_SECONDS = 2.0
        settings.TELEGRAM_MAX_ATTEMPTS = 3
        settings.TELEGRAM_RETRY_BACKOFF_SECONDS = 0.01
        settings.WARMUP_DRY_RUN = False
        yield fake


@pytest.fixture
def retries():
    """The retries Celery schedules (eager runs retry at once, up to max_retries)."""
    from celery.signals import task_retry

    seen = []

    def on_retry(request=None, reason=None, **kwargs):
        seen.append(reason)

    task_retry.connect(on_retry, weak=False)
    yield seen
    task_retry.disconnect(on_retry)
