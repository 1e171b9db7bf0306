"""Per-provider quota and sent today where operators look: the API's monitoring view (and its schema),
`warmup_status`, /metrics, the dashboard and the plan page."""

import datetime as dt
import json
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from warmup.counters import Increment, get_store
from warmup.models import DailyStat, ProviderShare, ProviderSuspension

from .factories import make_member, plan_in_state

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
SUSPENDED_UNTIL = NOW + dt.timedelta(hours=40)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def warming(tenant, redis_client):
    """A week-2 IP (quota 200) of a tenant splitting 50/30/20 over gmail, microsoft, yahoo; Microsoft is
    suspended; today it sent 17 to Gmail and 3 to Yahoo."""
    for provider, share in (("gmail", 50), ("microsoft", 30), ("yahoo", 20)):
        ProviderShare.objects.create(tenant=tenant, provider=provider, share=share)
    plan = plan_in_state("warming", tenant=tenant, address="45.123.10.7", phase="week_2")
    ProviderSuspension.objects.create(
        ip=plan.ip, provider="microsoft", reason="threshold", starts_at=NOW, ends_at=SUSPENDED_UNTIL
    )
    get_store().apply(
        [
            Increment(plan.ip_id, TODAY, {"sent": 17, "delivered": 17}, "gmail"),
            Increment(plan.ip_id, TODAY, {"sent": 3, "delivered": 3}, "yahoo"),
        ]
    )
    return plan


EXPECTED = {
    "gmail": {"share": 50.0, "daily_quota": 100, "sent_today": 17, "suspended_until": None},
    "microsoft": {"share": 30.0, "daily_quota": 0, "sent_today": 0, "suspended_until": SUSPENDED_UNTIL.isoformat()},
    "yahoo": {"share": 20.0, "daily_quota": 40, "sent_today": 3, "suspended_until": None},
    "apple": {"share": 0.0, "daily_quota": 0, "sent_today": 0, "suspended_until": None},
    "other": {"share": 0.0, "daily_quota": 0, "sent_today": 0, "suspended_until": None},
}


def test_the_api_shows_each_providers_share_quota_sent_and_suspension(tenant, warming):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=make_member('ann', tenant)).key}")

    entry = client.get("/api/v1/warmup").json()["ips"][0]

    assert entry["daily_quota"] == 200 and entry["sent_today"] == 20
    assert entry["providers"] == EXPECTED


def test_the_schema_describes_the_provider_figures(client, db):
    schema = client.get("/api/schema/?format=json").json()
    ip = schema["components"]["schemas"]["MonitoredIP"]
    assert "providers" in ip["required"]
    figures = schema["components"]["schemas"]["ProviderFigures"]
    assert set(figures["properties"]) == {"share", "daily_quota", "sent_today", "suspended_until"}


def test_warmup_status_json_and_table_show_the_providers(tenant, warming):
    out = StringIO()
    call_command("warmup_status", "--json", stdout=out)
    assert json.loads(out.getvalue())["ips"][0]["providers"] == EXPECTED

    out = StringIO()
    call_command("warmup_status", stdout=out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("45.123.10.7"))
    assert row.endswith("gmail 17/100, microsoft 0/0 suspended, yahoo 3/40")


def test_metrics_carry_per_provider_quota_sent_and_suspension(client, tenant, warming):
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    found = {
        (sample.name, sample.labels["provider"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "provider" in sample.labels and sample.labels.get("ip") == "45.123.10.7"
    }
    assert found[("warmup_ip_provider_daily_quota", "gmail")] == 100
    assert found[("warmup_ip_provider_daily_quota", "microsoft")] == 0
    assert found[("warmup_ip_provider_sent_today", "gmail")] == 17
    assert found[("warmup_ip_provider_sent_today", "yahoo")] == 3
    assert found[("warmup_ip_provider_suspended", "microsoft")] == 1
    assert found[("warmup_ip_provider_suspended", "gmail")] == 0


def test_the_dashboard_shows_provider_totals_and_the_suspended_pairs(client, superuser, warming):
    client.force_login(superuser)
    response = client.get("/admin/dashboard/")
    providers = {row["provider"]: row for row in response.context["providers"]}
    assert providers["gmail"] == {"provider": "gmail", "daily_quota": 100, "sent_today": 17, "suspended_ips": 0}
    assert providers["microsoft"]["suspended_ips"] == 1
    page = response.content.decode()
    assert 'id="wp-providers"' in page
    assert "45.123.10.7 at microsoft until" in page


def test_the_plan_page_shows_providers_with_the_last_days_rates(client, superuser, warming):
    DailyStat.objects.create(
        ip=warming.ip,
        date=TODAY - dt.timedelta(days=1),
        sent=200,
        delivered=184,
        bounced=16,
        by_provider={"gmail": {"sent": 100, "delivered": 99, "bounced": 1}, "microsoft": {"sent": 100, "bounced": 15}},
    )
    client.force_login(superuser)
    response = client.get(f"/admin/warmup/warmupplan/{warming.pk}/change/")
    rows = {row["provider"]: row for row in response.context["plan_providers"]["rows"]}
    assert rows["gmail"]["last_bounce_rate"] == 1.0 and rows["gmail"]["daily_quota"] == 100
    assert rows["microsoft"]["last_bounce_rate"] == 15.0 and rows["microsoft"]["suspended_until"] == SUSPENDED_UNTIL
    page = response.content.decode()
    assert 'id="wp-plan-providers"' in page and "Provider suspensions of this IP" in page
    assert '<span class="wp-over">15.00%</span>' in page


def test_a_member_edits_only_their_tenants_shares(client, tenant, tenant_b):
    mine = ProviderShare.objects.create(tenant=tenant, provider="gmail", share=50)
    theirs = ProviderShare.objects.create(tenant=tenant_b, provider="gmail", share=70)
    client.force_login(make_member("ann", tenant))
    listing = client.get("/admin/warmup/providershare/")
    assert list(listing.context["cl"].result_list) == [mine]
    assert client.get(f"/admin/warmup/providershare/{theirs.pk}/change/").status_code == 302


def test_an_operator_ends_a_suspension_from_the_admin_and_it_is_lifted_with_an_alert(client, tenant, warming):
    from warmup.models import Alert, AuditEvent

    suspension = ProviderSuspension.objects.get(ip=warming.ip, provider="microsoft")
    client.force_login(make_member("ann", tenant))
    response = client.post(
        "/admin/warmup/providersuspension/",
        {"action": "end_now", "_selected_action": [suspension.pk]},
        follow=True,
    )

    assert "Ended 1 suspension." in response.content.decode()
    suspension.refresh_from_db()
    assert suspension.ends_at == NOW and suspension.lifted_at == NOW
    assert AuditEvent.objects.filter(plan=warming, kind="provider_resumed").count() == 1
    assert Alert.objects.filter(ip=warming.ip, kind="provider_resumed").count() == 1
    entry = APIClient()  # the provider has its share back
    entry.force_authenticate(make_member("ann", tenant))
    assert entry.get("/api/v1/warmup").json()["ips"][0]["providers"]["microsoft"]["daily_quota"] == 60


def test_a_member_without_the_change_permission_cannot_end_a_suspension(client, tenant, warming):
    from django.contrib.auth.models import Permission

    member = make_member("bob", tenant)
    member.user_permissions.remove(Permission.objects.get(codename="change_providersuspension"))
    client.force_login(member)
    listing = client.get("/admin/warmup/providersuspension/")
    assert "end_now" not in listing.content.decode()
