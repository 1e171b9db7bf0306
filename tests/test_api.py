"""The HTTP API (v1): authentication, tenant isolation, each endpoint's answers and its errors."""

import datetime as dt

import pytest
import time_machine
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from domains.models import IP, Domain
from warmup.models import AuditEvent, WarmupPlan

from .factories import DailyStatFactory, DomainFactory, TenantFactory, UserFactory, plan_in_state

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def other_tenant():
    return TenantFactory(name="Other", slug="other")


@pytest.fixture
def member(tenant):
    user = UserFactory(username="alice")
    tenant.members.add(user)
    return user


@pytest.fixture
def api(member):
    """An API client authenticated with the member's DRF token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member).key}")
    return client


@pytest.fixture
def ips(tenant, other_tenant):
    """One warming and one active IP for the member's tenant, one IPv6; one IP of the other tenant."""
    return {
        "warming": plan_in_state("warming", tenant=tenant, address="45.123.10.6", phase="week_2"),
        "active": plan_in_state("completed", tenant=tenant, address="45.123.10.1"),
        "ipv6": plan_in_state("warming", tenant=tenant, address="2001:db8::10", phase="week_1"),
        "foreign": plan_in_state("warming", tenant=other_tenant, address="198.51.100.7", phase="week_3"),
    }


# --- Authentication -------------------------------------------------------------------------------

ENDPOINTS = [
    ("get", "/api/v1/warmup"),
    ("get", "/api/v1/ips/45.123.10.1/stats"),
    ("post", "/api/v1/ips/45.123.10.1/stats"),
    ("post", "/api/v1/domains"),
    ("post", "/api/v1/plans/45.123.10.1/pause"),
    ("get", "/api/v1/forecast"),
    ("get", "/api/v1/pmta-config"),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_unauthenticated_callers_get_401(ips, method, url):
    response = getattr(APIClient(), method)(url)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_a_wrong_token_is_401(ips):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")

    assert client.get("/api/v1/warmup").status_code == 401


def test_token_authentication_works(api, ips):
    response = api.get("/api/v1/warmup")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


def test_admin_session_authentication_works(member, ips):
    client = APIClient()
    client.force_login(member)

    assert client.get("/api/v1/warmup").status_code == 200


# --- GET /api/v1/warmup ---------------------------------------------------------------------------


def test_warmup_lists_only_the_callers_tenants(api, ips, redis_client):
    body = api.get("/api/v1/warmup").json()

    assert sorted(entry["ip"] for entry in body["ips"]) == ["2001:db8::10", "45.123.10.1", "45.123.10.6"]
    assert (body["active_ips"], body["warming_ips"], body["total_daily_capacity"]) == (1, 2, 10_250)


def test_warmup_for_another_tenant_is_404_and_for_an_unknown_one_too(api, ips):
    assert api.get("/api/v1/warmup?tenant=other").status_code == 404
    assert api.get("/api/v1/warmup?tenant=nope").status_code == 404
    assert api.get("/api/v1/warmup?tenant=sos-expat").status_code == 200


def test_a_superuser_sees_every_tenant_and_may_pick_one(superuser, ips, redis_client):
    client = APIClient()
    client.force_authenticate(superuser)

    assert len(client.get("/api/v1/warmup").json()["ips"]) == 4
    assert [entry["ip"] for entry in client.get("/api/v1/warmup?tenant=other").json()["ips"]] == ["198.51.100.7"]


def test_warmup_for_the_seeds_example_state(api, tenant, redis_client):
    for n in range(1, 6):
        plan_in_state("completed", domain=DomainFactory(tenant=tenant, name=f"mail{n}.sos-mail.com"))
    plan_in_state("warming", domain=DomainFactory(tenant=tenant, name="mail6.sos-mail.com"), phase="week_2")

    body = api.get("/api/v1/warmup").json()

    assert body["active_ips"] == 5
    assert body["warming_ips"] == 1
    assert body["total_daily_capacity"] == 50_200


def test_warmup_answers_when_the_counter_store_is_down(api, ips, counter_store_down):
    response = api.get("/api/v1/warmup")

    assert response.status_code == 200
    assert {entry["sent_today"] for entry in response.json()["ips"]} == {None}


@pytest.mark.parametrize("count", [10, 200])
def test_warmup_query_count_is_constant(api, tenant, redis_client, count, django_assert_num_queries):
    for n in range(count):
        plan_in_state("completed" if n % 3 else "warming", tenant=tenant, phase="week_4")

    # Token lookup (with its user), the IPs with plan and domain name, their tenants, the tenants' provider
    # shares, their last 7 days per provider (no shares of their own), the suspensions; Redis for today's counts.
    with django_assert_num_queries(6):
        response = api.get("/api/v1/warmup")

    assert len(response.json()["ips"]) == count


# --- /api/v1/ips/<address>/stats -------------------------------------------------------------------


def test_stats_lists_consolidated_days_in_the_range(api, ips):
    ip = ips["active"].ip
    for offset, sent in ((3, 1000), (2, 2000), (1, 4000)):
        DailyStatFactory(ip=ip, date=TODAY - dt.timedelta(offset), sent=sent, bounced=sent // 100, complaints=1)
    DailyStatFactory(ip=ips["foreign"].ip, date=TODAY - dt.timedelta(2))

    response = api.get(f"/api/v1/ips/45.123.10.1/stats?from={TODAY - dt.timedelta(2)}&to={TODAY - dt.timedelta(1)}")

    assert response.status_code == 200
    assert response.json() == [
        {
            "date": (TODAY - dt.timedelta(2)).isoformat(),
            "sent": 2000,
            "delivered": 1980,
            "bounced": 20,
            "complaints": 1,
            "opens": 0,
            "clicks": 0,
            "bounce_rate": 1.0,
            "complaint_rate": 0.05,
        },
        {
            "date": (TODAY - dt.timedelta(1)).isoformat(),
            "sent": 4000,
            "delivered": 3960,
            "bounced": 40,
            "complaints": 1,
            "opens": 0,
            "clicks": 0,
            "bounce_rate": 1.0,
            "complaint_rate": 0.03,
        },
    ]


def test_stats_of_another_tenants_ip_is_404(api, ips):
    DailyStatFactory(ip=ips["foreign"].ip)

    assert api.get("/api/v1/ips/198.51.100.7/stats").status_code == 404
    assert api.post("/api/v1/ips/198.51.100.7/stats", {"sent": 5}, format="json").status_code == 404
    assert api.get("/api/v1/ips/192.0.2.200/stats").status_code == 404
    assert api.get("/api/v1/ips/not-an-ip/stats").status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [("from=2027-13-01", "from"), ("to=yesterday", "to"), ("from=2027-02-10&to=2027-02-01", "to")],
)
def test_stats_bad_dates_are_400_naming_the_parameter(api, ips, query, field):
    response = api.get(f"/api/v1/ips/45.123.10.1/stats?{query}")

    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_ipv6_addresses_work_in_the_path_in_any_spelling(api, ips):
    DailyStatFactory(ip=ips["ipv6"].ip, date=TODAY - dt.timedelta(1), sent=30)

    for spelling in ("2001:db8::10", "2001:0db8:0000:0000:0000:0000:0000:0010", "2001:DB8::10"):
        response = api.get(f"/api/v1/ips/{spelling}/stats")
        assert response.status_code == 200, spelling
        assert [day["sent"] for day in response.json()] == [30]


def test_recording_stats_counts_them_for_today(api, ips, redis_client):
    response = api.post("/api/v1/ips/45.123.10.6/stats", {"sent": 120, "delivered": 118, "bounced": 2}, format="json")

    assert response.status_code == 200
    assert response.json() == {"success": True, "ip": "45.123.10.6", "date": TODAY.isoformat()}
    entry = next(e for e in api.get("/api/v1/warmup").json()["ips"] if e["ip"] == "45.123.10.6")
    assert (entry["sent_today"], entry["remaining_today"]) == (120, 80)


def test_recording_stats_for_a_given_date(api, ips, redis_client):
    from warmup.counters import get_store

    day = TODAY - dt.timedelta(3)
    response = api.post("/api/v1/ips/2001:db8::10/stats", {"date": day.isoformat(), "sent": 7}, format="json")

    assert response.json()["date"] == day.isoformat()
    assert get_store().read(ips["ipv6"].ip.pk, day)["sent"] == 7


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "sent"),
        ({"sent": -1}, "sent"),
        ({"sent": "many"}, "sent"),
        ({"sent": 10, "bounce": 1}, "bounce"),
        ({"sent": 10, "date": "2027-02-30"}, "date"),
        ({"sent": 10, "complaints": 10**12}, "complaints"),
    ],
)
def test_recording_stats_validation_errors_name_the_field(api, ips, redis_client, body, field):
    response = api.post("/api/v1/ips/45.123.10.6/stats", body, format="json")

    assert response.status_code == 400
    assert field in response.json()


def test_recording_stats_is_503_when_the_counter_store_is_down(api, ips, counter_store_down):
    response = api.post("/api/v1/ips/45.123.10.6/stats", {"sent": 5}, format="json")

    assert response.status_code == 503


# --- POST /api/v1/domains -------------------------------------------------------------------------


def test_adding_a_domain_creates_its_ip_and_plan(api, member, tenant, redis_client):
    response = api.post(
        "/api/v1/domains",
        {"tenant": "sos-expat", "domain": "mail7.sos-mail.com", "ip": "45.123.10.7", "hostname": "mta7.sos-mail.com"},
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["ip"] == "45.123.10.7"
    assert body["domain"] == "mail7.sos-mail.com"
    assert body["tenant"] == "sos-expat"
    # The tenant has no other plan: the rotation rule lets it start today.
    assert (body["plan_status"], body["phase"], body["daily_quota"]) == ("warming", "week_1", 50)
    ip = IP.objects.get(address="45.123.10.7")
    assert ip.hostname == "mta7.sos-mail.com"
    assert ip.plan.start_date == TODAY
    assert ip.plan.events.get().actor == member


def test_adding_a_domain_with_a_start_date_schedules_it(api, tenant):
    start = TODAY + dt.timedelta(10)

    response = api.post(
        "/api/v1/domains",
        {"tenant": str(tenant.pk), "domain": "mail8.sos-mail.com", "ip": "2001:db8::8", "start": start.isoformat()},
        format="json",
    )

    assert response.status_code == 201, response.json()
    assert (response.json()["plan_status"], response.json()["start_date"]) == ("scheduled", start.isoformat())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"domain": "mail9.sos-mail.com", "ip": "45.123.10.9"}, "tenant"),
        ({"tenant": "sos-expat", "ip": "45.123.10.9"}, "domain"),
        ({"tenant": "sos-expat", "domain": "mail9.sos-mail.com", "ip": "999.1.1.1"}, "ip"),
        ({"tenant": "sos-expat", "domain": "not a domain", "ip": "45.123.10.9"}, "domain"),
        ({"tenant": "sos-expat", "domain": "mail9.sos-mail.com", "ip": "45.123.10.1"}, "ip"),
        ({"tenant": "sos-expat", "domain": "mail9.sos-mail.com", "ip": "45.123.10.9", "start": "soon"}, "start"),
        ({"tenant": "sos-expat", "domain": "mail9.sos-mail.com", "ip": "45.123.10.9", "weight": 5}, "weight"),
        ({"tenant": "other", "domain": "mail9.sos-mail.com", "ip": "45.123.10.9"}, "tenant"),
        ({"tenant": "nope", "domain": "mail9.sos-mail.com", "ip": "45.123.10.9"}, "tenant"),
    ],
)
def test_adding_a_domain_refuses_bad_input_naming_the_field(api, ips, body, field):
    response = api.post("/api/v1/domains", body, format="json")

    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not Domain.objects.filter(name="mail9.sos-mail.com").exists()
    assert not IP.objects.filter(address="45.123.10.9").exists()


def test_another_tenant_and_an_unknown_one_get_the_same_answer(api, ips):
    body = {"domain": "mail9.sos-mail.com", "ip": "45.123.10.9"}
    other = api.post("/api/v1/domains", {**body, "tenant": "other"}, format="json").json()
    unknown = api.post("/api/v1/domains", {**body, "tenant": "zzz"}, format="json").json()

    assert other["tenant"][0].replace("'other'", "X") == unknown["tenant"][0].replace("'zzz'", "X")


# --- POST /api/v1/plans/<address>/<action> --------------------------------------------------------


def test_pausing_and_resuming_a_plan_records_the_user(api, member, ips, redis_client):
    response = api.post("/api/v1/plans/45.123.10.6/pause", {"reason": "blocklisted at Spamhaus"}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["action"] == "pause"
    assert body["event"]["kind"] == "manual_pause"
    assert body["event"]["actor"] == "alice"
    assert body["event"]["reason"] == "blocklisted at Spamhaus"
    assert (body["ip"]["status"], body["ip"]["plan_status"], body["ip"]["needs_attention"]) == (
        "paused",
        "paused",
        True,
    )
    plan = WarmupPlan.objects.get(ip__address="45.123.10.6")
    assert plan.status == "paused"
    assert AuditEvent.objects.get(plan=plan, kind="manual_pause").actor == member

    response = api.post("/api/v1/plans/45.123.10.6/resume", format="json")
    assert response.status_code == 200
    assert response.json()["ip"]["plan_status"] == "warming"


def test_a_refused_action_is_409_with_the_reason(api, ips):
    response = api.post("/api/v1/plans/45.123.10.1/pause", format="json")  # a completed plan

    assert response.status_code == 409
    assert "completed" in response.json()["detail"]
    assert WarmupPlan.objects.get(ip__address="45.123.10.1").status == "completed"


@pytest.mark.parametrize("action", ["advance", "rollback", "complete", "cancel"])
def test_each_action_answers(api, ips, redis_client, action):
    response = api.post(f"/api/v1/plans/2001:db8::10/{action}", {"reason": "test"}, format="json")

    # week_1 cannot roll back; the others apply.
    expected = 409 if action == "rollback" else 200
    assert response.status_code == expected, response.json()


def test_plan_actions_on_another_tenants_ip_are_404(api, ips):
    response = api.post("/api/v1/plans/198.51.100.7/pause", format="json")

    assert response.status_code == 404
    assert WarmupPlan.objects.get(ip__address="198.51.100.7").status == "warming"


def test_an_unknown_action_is_400_naming_it(api, ips):
    response = api.post("/api/v1/plans/45.123.10.6/explode", format="json")

    assert response.status_code == 400
    assert "action" in response.json()


# --- GET /api/v1/forecast -------------------------------------------------------------------------


def test_forecast_for_the_callers_only_tenant(api, ips):
    response = api.get("/api/v1/forecast?days=10&add_per_week=0")

    assert response.status_code == 200
    body = response.json()
    assert body["tenant"] == "sos-expat"
    assert len(body["days"]) == 10
    assert body["days"][0]["total_daily_capacity"] == 10_000 + 200 + 50


def test_forecast_with_several_tenants_needs_one(superuser, ips):
    client = APIClient()
    client.force_authenticate(superuser)

    response = client.get("/api/v1/forecast")
    assert response.status_code == 400
    assert "tenant" in response.json()
    assert client.get("/api/v1/forecast?tenant=other&days=3").json()["tenant"] == "other"


def test_forecast_of_another_tenant_is_404(api, ips):
    assert api.get("/api/v1/forecast?tenant=other").status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [("days=0", "days"), ("days=x", "days"), ("add_per_week=2", "add_per_week"), ("target_ips=-1", "target_ips")],
)
def test_forecast_bad_parameters_are_400_naming_them(api, ips, query, field):
    response = api.get(f"/api/v1/forecast?{query}")

    assert response.status_code == 400
    assert field in response.json()


# --- GET /api/v1/pmta-config ----------------------------------------------------------------------


def test_pmta_config_is_plain_text_for_the_callers_tenant(api, ips):
    response = api.get("/api/v1/pmta-config", HTTP_ACCEPT="text/plain")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    text = response.content.decode()
    assert "<virtual-mta vmta-45-123-10-1>" in text
    assert "<virtual-mta-pool" in text
    assert "198.51.100.7" not in text


def test_pmta_config_is_refused_in_dry_run(api, ips, settings):
    settings.WARMUP_DRY_RUN = True
    response = api.get("/api/v1/pmta-config")
    assert response.status_code == 409
    assert "WARMUP_DRY_RUN" in response.json()["detail"]


def test_pmta_config_of_another_tenant_is_404(api, ips):
    assert api.get("/api/v1/pmta-config?tenant=other").status_code == 404


def test_pmta_config_needs_a_tenant_when_the_caller_has_several(member, other_tenant, ips):
    other_tenant.members.add(member)
    client = APIClient()
    client.force_authenticate(member)

    response = client.get("/api/v1/pmta-config")
    assert response.status_code == 400
    assert "tenant" in response.json()
    assert "198.51.100.7" in client.get("/api/v1/pmta-config?tenant=other").content.decode()


def test_a_user_without_tenants_sees_nothing(ips):
    client = APIClient()
    client.force_authenticate(UserFactory(username="nobody"))

    assert client.get("/api/v1/warmup").json()["ips"] == []
    assert client.get("/api/v1/pmta-config").status_code == 404
    assert client.get("/api/v1/ips/45.123.10.1/stats").status_code == 404
