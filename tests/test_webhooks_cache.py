"""The webhook hot path: per-process TTL caches (token, IP maps) and their invalidation, the middleware
fast path, and the rate limit's fixed window (webhooks/cache.py, middleware.py, ratelimit.py)."""

import datetime as dt
import json
import time

import pytest
import redis
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from domains.models import IP, WebhookToken
from warmup.counters import WindowFull, get_store
from webhooks import cache, ratelimit
from webhooks.auth import sign
from webhooks.models import DeadLetter

from .factories import DomainFactory, IPFactory
from .webhooks_support import ips, poster, token, utc_tenant  # noqa: F401

EVENTS = "/api/v1/webhooks/events/"
NOW = "2026-12-23 12:00:00+00:00"
DAY = dt.date(2026, 12, 23)


def event(ip: str, n: int, **extra) -> dict:
    return {"type": "delivered", "ip": ip, "occurred_at": "2026-12-23T09:00:00Z", "recipient": "a@gmail.com",
            "event_id": f"e{n}", **extra}  # fmt: skip


class Clock:
    """The caches' monotonic clock: a microsecond a reading, moved by hand beyond that, so that no entry
    expires by itself mid-test however slow the machine."""

    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(cache, "_clock", fake)
    cache.invalidate()
    yield fake
    cache.invalidate()


@pytest.fixture
def send(poster, clock):  # noqa: F811
    """Posts one event (a new event id each time) and returns the response."""
    counter = iter(range(1, 10_000))

    def send(ip="45.123.10.1", headers=None, **fields):
        return poster.post_json(EVENTS, event(ip, next(counter), **fields), **(headers or {}))

    return send


# --- Steady state ---------------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_a_steady_state_single_event_costs_no_query(send, ips, django_assert_num_queries):  # noqa: F811
    assert send().json()["accepted"] == 1  # loads the token and the tenant's IPs
    with django_assert_num_queries(0):
        response = send(ip="45.123.10.2")
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []}
    assert get_store().read(ips["45.123.10.2"].pk, DAY)["delivered"] == 1


@time_machine.travel(NOW, tick=False)
def test_a_steady_state_single_event_costs_one_redis_round_trip(send, ips, monkeypatch):  # noqa: F811
    sent = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(connection, command, check_health=True):
        sent.append(command)
        return original(connection, command, check_health)

    assert send().status_code == 200  # loads the caches, opens the window
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    assert send().status_code == 200
    assert len(sent) == 1  # the counting script, which counts the rate-limit window too


@time_machine.travel(NOW, tick=False)
def test_entries_expire_after_the_ttl(send, ips, clock, django_assert_num_queries):  # noqa: F811
    assert send().status_code == 200
    clock.now += cache.TTL_SECONDS + 0.1
    with django_assert_num_queries(2):  # the token and the IPs again
        assert send().status_code == 200


@time_machine.travel(NOW, tick=False)
def test_the_database_counter_store_is_cached_the_same_way(send, ips, settings):  # noqa: F811
    settings.WARMUP_COUNTER_BACKEND = "database"
    assert send().status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert send(ip="45.123.10.2").json()["accepted"] == 1
    sql = " ".join(query["sql"] for query in queries.captured_queries)
    assert "domains_webhooktoken" not in sql and "domains_ip" not in sql  # only the counting transaction


# --- Tokens ---------------------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_a_rotated_token_is_refused_at_once(send, ips, utc_tenant, token):  # noqa: F811
    assert send().status_code == 200  # cached
    WebhookToken.issue(utc_tenant, rotate=True)
    response = send()
    assert response.status_code == 401 and "invalid webhook token" in response.json()["error"]


@time_machine.travel(NOW, tick=False)
def test_a_token_revoked_or_deleted_in_the_admin_is_refused_at_once(send, ips, token):  # noqa: F811
    assert send().status_code == 200
    stored = WebhookToken.objects.get(token_hash=WebhookToken.hash(token))
    stored.revoked_at = timezone.now()
    stored.save()
    assert send().status_code == 401
    stored.revoked_at = None
    stored.save()
    assert send().status_code == 200
    stored.delete()
    assert send().status_code == 401


@time_machine.travel(NOW, tick=False)
def test_a_revocation_in_another_process_holds_at_most_the_ttl(send, ips, token, clock):  # noqa: F811
    assert send().status_code == 200
    # Revoked by another process (or by a queryset update): no signal reaches this one.
    WebhookToken.objects.filter(token_hash=WebhookToken.hash(token)).update(revoked_at=timezone.now())
    clock.now += cache.TTL_SECONDS - 0.5
    assert send().status_code == 200  # still cached here...
    clock.now += 0.6
    assert send().status_code == 401  # ...for TTL_SECONDS at most


def test_a_change_clears_the_caches_at_once_and_again_on_commit(
    utc_tenant,  # noqa: F811
    token,  # noqa: F811
    clock,
    django_capture_on_commit_callbacks,
):
    assert cache.sender_for_token(token) == utc_tenant
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        WebhookToken.objects.get(token_hash=WebhookToken.hash(token)).delete()
        assert not cache._tokens  # at once
    cache._tokens["stale"] = utc_tenant  # what a request that read the old row meanwhile stored
    for callback in callbacks:
        callback()
    assert not cache._tokens  # and again once committed


@time_machine.travel(NOW, tick=False)
def test_a_signing_secret_set_on_the_tenant_applies_at_once(send, poster, ips, utc_tenant):  # noqa: F811
    assert send().status_code == 200
    utc_tenant.webhook_signing_secret = "s3cret"
    utc_tenant.save()
    response = send()
    assert response.status_code == 401 and "X-Warmup-Signature" in response.json()["error"]
    body = json.dumps(event("45.123.10.1", 99))
    now = int(time.time())
    signed = poster.post(
        EVENTS, body, HTTP_X_WARMUP_SIGNATURE=f"t={now},v1={sign('s3cret', now, body.encode()).decode()}"
    )
    assert signed.json()["accepted"] == 1


# --- IPs ------------------------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_an_ip_added_elsewhere_is_attributed_at_once(send, ips, utc_tenant, django_assert_num_queries):  # noqa: F811
    assert send().status_code == 200
    # Added by another process: bulk_create sends no signal, so only the re-read on a miss finds it.
    (new,) = IP.objects.bulk_create(
        [
            IP(
                tenant=utc_tenant,
                domain=DomainFactory(tenant=utc_tenant, name="mail9.sos-mail.com"),
                address="45.123.10.9",
            )
        ]
    )
    with django_assert_num_queries(1):  # the tenant's IPs, once
        response = send(ip="45.123.10.9")
    assert response.json()["accepted"] == 1
    assert get_store().read(new.pk, DAY)["delivered"] == 1
    assert not DeadLetter.objects.exists()
    with django_assert_num_queries(0):  # the cache now knows it
        assert send(ip="45.123.10.9").json()["accepted"] == 1


@time_machine.travel(NOW, tick=False)
def test_an_unknown_ip_is_looked_up_once_per_request(poster, ips, clock):  # noqa: F811
    payload = [event("45.123.10.1", 1), event("9.9.9.1", 2), event("9.9.9.2", 3)]
    assert poster.post_json(EVENTS, [event("45.123.10.1", 0)]).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = poster.post_json(EVENTS, payload)
    # One reload of the map, nothing more: whose an unknown address is does not matter here.
    assert sum('FROM "domains_ip"' in query["sql"] for query in queries.captured_queries) == 1
    assert response.json()["accepted"] == 1 and response.json()["unattributed"] == 2
    assert DeadLetter.objects.filter(reason="unknown_ip").count() == 2


@time_machine.travel(NOW, tick=False)
def test_an_ip_given_to_another_tenant_is_no_longer_credited_here(send, ips, utc_tenant):  # noqa: F811
    from .factories import TenantFactory

    assert send(ip="45.123.10.3").json()["accepted"] == 1
    other = TenantFactory(slug="other")
    moved = ips["45.123.10.3"]
    moved.tenant, moved.domain = other, DomainFactory(tenant=other)
    moved.save()
    response = send(ip="45.123.10.3")
    assert response.status_code == 200  # now another tenant's IP: this token does not cover it
    assert response.json()["unattributed"] == 1
    assert DeadLetter.objects.get().reason == "unknown_ip"


@time_machine.travel(NOW, tick=False)
def test_a_renamed_source_is_attributed_by_its_new_name(send, ips):  # noqa: F811
    ip = ips["45.123.10.4"]
    ip.mta_source_name = "old-vmta"
    ip.save()
    assert send(ip="", source_name="old-vmta").json()["accepted"] == 1
    ip.mta_source_name = "new-vmta"
    ip.save(update_fields=["mta_source_name"])
    assert send(ip="", source_name="new-vmta").json()["accepted"] == 1
    assert send(ip="", source_name="old-vmta").json()["unattributed"] == 1


@time_machine.travel(NOW, tick=False)
def test_saving_other_fields_of_an_ip_keeps_the_cache(send, ips):  # noqa: F811
    assert send().status_code == 200
    assert cache._maps
    ip = ips["45.123.10.1"]
    ip.status = IP.Status.WARMING
    ip.save(update_fields=["status"])
    assert cache._maps
    IPFactory(tenant=ips["45.123.10.1"].tenant, domain=ips["45.123.10.1"].domain, address="45.123.10.50")
    assert not cache._maps


# --- Middleware -----------------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_webhooks_skip_sessions_and_csrf_while_the_site_keeps_them(send, ips, client):  # noqa: F811
    response = send(headers={"HTTP_COOKIE": "sessionid=abc; csrftoken=def"})
    assert response.status_code == 200
    assert "Cookie" not in response.get("Vary", "") and not response.cookies
    # The rest of the site still goes through the whole stack.
    login = client.get("/admin/login/")
    assert "csrftoken" in login.cookies
    assert login["X-Frame-Options"] == "DENY" and login["X-Content-Type-Options"] == "nosniff"


@time_machine.travel(NOW, tick=False)
def test_the_https_redirect_still_applies_unless_the_webhooks_are_exempt(poster, ips, settings, clock):  # noqa: F811
    settings.SECURE_SSL_REDIRECT = True
    assert poster.post_json(EVENTS, event("45.123.10.1", 1)).status_code == 200  # exempt by the settings
    settings.SECURE_REDIRECT_EXEMPT = []
    poster.client = type(poster.client)()  # a new handler reads the settings again
    response = poster.post_json(EVENTS, event("45.123.10.1", 2))
    assert response.status_code == 301 and response["Location"].startswith("https://")
    assert poster.post_json(EVENTS, event("45.123.10.1", 3), secure=True).json()["accepted"] == 1


def test_webhooks_still_refuse_a_host_outside_allowed_hosts(poster, ips, clock):  # noqa: F811
    response = poster.post_json(EVENTS, event("45.123.10.1", 1), HTTP_HOST="evil.example.com")
    assert response.status_code == 400
    assert not DeadLetter.objects.exists()


def test_an_unknown_webhook_path_goes_through_the_whole_stack(poster, clock):  # noqa: F811
    assert poster.post_json("/api/v1/webhooks/nope/", event("45.123.10.1", 1)).status_code == 404


# --- Rate limit window ----------------------------------------------------------------------------


def hits(tenant_id: int, now: float, count: int) -> list[bool]:
    """Whether each of `count` requests with nothing to count was admitted."""
    admitted = []
    for _ in range(count):
        try:
            get_store().count_grouped({}, window=ratelimit.window_for(tenant_id, now=now))
        except WindowFull:
            admitted.append(False)
        else:
            admitted.append(True)
    return admitted


def test_the_window_admits_the_limit_and_refuses_the_rest_of_the_minute(settings, redis_client):
    settings.WARMUP_COUNTER_BACKEND = "redis"
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 5
    now = 1_800_000_040.0  # 20 s before the minute ends
    key = ratelimit.window_key(7, int(now // 60))
    redis_client.set(key, 2)  # other processes have had 2
    assert hits(7, now, 4) == [True, True, True, False]
    assert ratelimit.retry_after(now=now) == 20
    assert int(redis_client.get(key)) == 6
    assert hits(7, now + 20, 1) == [True]  # a new window
    assert hits(8, now, 1) == [True]  # another tenant's


def test_the_database_store_counts_the_window_in_process(settings):
    settings.WARMUP_COUNTER_BACKEND = "database"
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 2
    assert hits(9, 1_900_000_420.0, 3) == [True, True, False]
    assert ratelimit.window_for(9) is not None
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 0
    assert ratelimit.window_for(9) is None  # off
