"""Security: admin login brute-force lockout (django-axes), the per-tenant webhook rate limit, and the
acting user recorded on every manual action taken through the admin and the API."""

import datetime as dt
import json

import pytest
import redis
import time_machine
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from domains.models import WebhookToken
from warmup.engine import ACTIONS
from warmup.models import AuditEvent, WarmupPlan
from webhooks import ratelimit
from webhooks.models import DeadLetter

from .factories import DomainFactory, IPFactory, TenantFactory, UserFactory, make_member, plan_in_state

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2027, 1, 20, 12, 0, 15, tzinfo=dt.UTC)  # 15 s into a minute
EVENTS = "/api/v1/webhooks/events/"
PASSWORD = "correct horse battery staple"


# --- Admin login brute force -------------------------------------------------------------------------


def login(client, username: str, password: str, ip: str = "192.0.2.10"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": reverse("admin:index")},
        REMOTE_ADDR=ip,
    )


def logged_in(client) -> bool:
    return client.get(reverse("admin:index")).status_code == 200


@pytest.fixture
def operator(settings):
    settings.AXES_FAILURE_LIMIT = 5
    return UserFactory(username="operator", is_staff=True, password=PASSWORD)


def test_five_failed_logins_lock_the_account_and_the_right_password_is_then_refused(client, operator):
    with time_machine.travel(NOW, tick=False):
        for attempt in range(4):
            response = login(client, "operator", f"guess-{attempt}")
            assert response.status_code == 200  # the login form again, with its error
            assert not logged_in(client)
        assert login(client, "operator", "guess-4").status_code == 429  # the fifth failure locks
        response = login(client, "operator", PASSWORD)
        assert response.status_code == 429
        assert not logged_in(client)

        # The lock is on this username from this address: the same person elsewhere is not locked out.
        other = client.__class__()
        assert login(other, "operator", PASSWORD, ip="198.51.100.7").status_code == 302
        assert logged_in(other)

    # After the cool-off period the account opens again.
    with time_machine.travel(NOW + dt.timedelta(hours=1, minutes=1), tick=False):
        assert login(client, "operator", PASSWORD).status_code == 302
        assert logged_in(client)


def test_a_successful_login_resets_the_failure_count(client, operator):
    with time_machine.travel(NOW, tick=False):
        for attempt in range(4):
            login(client, "operator", f"guess-{attempt}")
        assert login(client, "operator", PASSWORD).status_code == 302
        client.logout()
        for attempt in range(4):
            assert login(client, "operator", f"again-{attempt}").status_code == 200
        assert login(client, "operator", PASSWORD).status_code == 302


# --- Webhook rate limit --------------------------------------------------------------------------------


def event(ip: str, n: int) -> dict:
    return {"type": "delivered", "ip": ip, "occurred_at": "2027-01-20T09:00:00Z", "recipient": "a@gmail.com",
            "event_id": f"e{n}"}  # fmt: skip


@pytest.fixture
def senders(db, redis_client):
    """Two tenants, each with an IP and a webhook token."""
    result = {}
    for slug, address in (("alpha", "10.0.0.1"), ("bravo", "20.0.0.1")):
        tenant = TenantFactory(slug=slug, name=slug.title())
        ip = IPFactory(domain=DomainFactory(tenant=tenant), address=address)
        result[slug] = (ip, WebhookToken.issue(tenant, label="test")[1])
    return result  # a new tenant id each time: windows of earlier tests never count here


def post(client, token: str, payload, **extra):
    return client.post(
        EVENTS, data=json.dumps(payload), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}", **extra
    )


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_webhooks_over_the_per_tenant_limit_get_429_with_retry_after_and_count_nothing(
    client, senders, settings, backend
):
    from warmup.counters import get_store

    settings.WARMUP_COUNTER_BACKEND = backend
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 3
    alpha_ip, alpha = senders["alpha"]
    bravo_ip, bravo = senders["bravo"]
    day = dt.date(2027, 1, 20)
    with time_machine.travel(NOW, tick=False):
        # Counted per request, not per record: a batch of five is one request.
        assert post(client, alpha, [event("10.0.0.1", n) for n in range(5)]).status_code == 200
        for n in (5, 6):
            assert post(client, alpha, event("10.0.0.1", n)).status_code == 200
        refused = post(client, alpha, event("10.0.0.1", 7))
        assert refused.status_code == 429
        assert refused["Retry-After"] == "45"  # the rest of the minute
        assert "requests a minute" in refused.json()["error"]
        assert get_store().read(alpha_ip.pk, day)["sent"] == 7

        # Another tenant has its own window.
        assert post(client, bravo, event("20.0.0.1", 1)).status_code == 200
        assert get_store().read(bravo_ip.pk, day)["sent"] == 1

    with time_machine.travel(NOW + dt.timedelta(seconds=45), tick=False):  # the next minute
        assert post(client, alpha, event("10.0.0.1", 7)).status_code == 200
        assert get_store().read(alpha_ip.pk, day)["sent"] == 8


def test_the_rate_limit_is_shared_by_every_web_process_through_redis(client, senders, settings, redis_client):
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 2
    alpha_ip, alpha = senders["alpha"]
    with time_machine.travel(NOW, tick=False):
        # Another web process has already taken the whole minute's allowance.
        redis_client.set(ratelimit.window_key(alpha_ip.tenant_id, int(NOW.timestamp()) // 60), 2, ex=120)
        assert post(client, alpha, event("10.0.0.1", 1)).status_code == 429


def test_a_limit_of_zero_turns_the_check_off(client, senders, settings, redis_client):
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 0
    _, alpha = senders["alpha"]
    with time_machine.travel(NOW, tick=False):
        for n in range(5):
            assert post(client, alpha, event("10.0.0.1", n)).status_code == 200
    assert not redis_client.keys("wp:rl:*")


def test_the_window_key_expires_and_lives_on_the_tenants_cluster_slot(client, senders, settings, redis_client):
    alpha_ip, alpha = senders["alpha"]
    with time_machine.travel(NOW, tick=False):
        assert post(client, alpha, event("10.0.0.1", 1)).status_code == 200
    (key,) = redis_client.keys("wp:rl:*")
    assert key.decode() == f"wp:rl:{{t{alpha_ip.tenant_id}}}:{int(NOW.timestamp()) // 60}"
    assert 0 < redis_client.ttl(key) <= 2 * ratelimit.WINDOW_SECONDS  # kept past its minute, then gone


class RoundTrips:
    """Counts the packets the portal's Redis client sends (each is one round trip), by wrapping the real
    connection's send method: the commands still reach the real server."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = redis.connection.AbstractConnection.send_packed_command

        def counting(connection, command, check_health=True):
            self.count += 1
            return original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)


def test_the_rate_limit_costs_no_round_trip_of_its_own(client, senders, settings, monkeypatch):
    _, alpha = senders["alpha"]
    trips = RoundTrips(monkeypatch)

    def round_trips(limit: int, n: int) -> int:
        settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = limit
        before = trips.count
        assert post(client, alpha, event("10.0.0.1", n)).status_code == 200
        return trips.count - before

    with time_machine.travel(NOW, tick=False):
        round_trips(0, 0)  # warm-up: the script is loaded, the connection opened
        without = round_trips(0, 1)
        with_limit = round_trips(1000, 2)
    assert without >= 1
    assert with_limit == without  # the window is counted by the counting script


def test_a_request_with_nothing_to_count_still_counts_in_the_window(client, senders, settings):
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 1
    _, alpha = senders["alpha"]
    with time_machine.travel(NOW, tick=False):
        assert post(client, alpha, {"type": "nonsense"}).json()["rejected"]
        assert post(client, alpha, event("10.0.0.1", 1)).status_code == 429
    assert not DeadLetter.objects.filter(raw__ip="10.0.0.1").exists()  # refused: nothing kept either


def test_the_rate_limit_answers_503_when_redis_is_down(client, senders, settings, counter_store_down):
    _, alpha = senders["alpha"]
    response = post(client, alpha, event("10.0.0.1", 1))
    assert response.status_code == 503
    assert response["Retry-After"] == "30"


# --- Acting user on manual actions -----------------------------------------------------------------------

# Each action from a state where it is allowed.
START_STATE = {
    "pause": "warming",
    "resume": "paused",
    "rollback": "warming",
    "advance": "warming",
    "complete": "warming",
    "cancel": "warming",
}


@pytest.fixture
def member(db):
    return make_member("alice", TenantFactory(slug="alpha", name="Alpha"))


def manual_plan(member, action: str) -> WarmupPlan:
    fields = {"phase": "week_2"}
    if START_STATE[action] == "paused":
        fields["paused_until"] = None
    return plan_in_state(START_STATE[action], tenant=member.tenants.get(), **fields)


@pytest.mark.parametrize("action", ACTIONS)
def test_every_manual_action_through_the_api_records_the_acting_user(member, redis_client, action):
    plan = manual_plan(member, action)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member).key}")
    response = api.post(f"/api/v1/plans/{plan.ip.address}/{action}", {"reason": "operator check"}, format="json")
    assert response.status_code == 200, response.content
    event = AuditEvent.objects.get(plan=plan, kind=f"manual_{action}")
    assert event.actor == member
    assert response.json()["event"]["kind"] == f"manual_{action}"


@pytest.mark.parametrize("action", ACTIONS)
def test_every_manual_action_through_the_admin_records_the_acting_user(client, member, redis_client, action):
    plan = manual_plan(member, action)
    client.force_login(member)
    response = client.post(
        reverse("admin:warmup_warmupplan_changelist"),
        {"action": f"{action}_plans", "_selected_action": [plan.pk], "index": 0, "reason": "operator check"},
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(plan=plan, kind=f"manual_{action}")
    assert event.actor == member
    assert event.actor_name == "alice"
