"""The monitoring view (warmup.monitoring.warmup_status) and the warmup_status command."""

import datetime as dt
import json
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from domains.models import Tenant
from warmup.monitoring import warmup_status
from warmup.stats import record_stats

from .factories import DomainFactory, IPFactory, TenantFactory, plan_in_state

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def seed_example_state(tenant) -> list:
    """The seed's example: mail1..5 active at 10,000, mail6 in week_2."""
    plans = []
    for n in range(1, 6):
        domain = DomainFactory(tenant=tenant, name=f"mail{n}.sos-mail.com", status="active")
        plans.append(
            plan_in_state(
                "completed",
                domain=domain,
                address=f"45.123.10.{n}",
                start_date=dt.date(2027, 1, 4) + dt.timedelta(days=7 * (n - 1)) - dt.timedelta(days=35),
            )
        )
    domain = DomainFactory(tenant=tenant, name="mail6.sos-mail.com", status="warming")
    plans.append(plan_in_state("warming", domain=domain, address="45.123.10.6", phase="week_2"))
    return plans


def test_seed_example_state_reports_five_active_one_warming_and_50200(tenant, redis_client):
    seed_example_state(tenant)

    status = warmup_status(Tenant.objects.all())

    assert status["active_ips"] == 5
    assert status["warming_ips"] == 1
    assert status["paused_ips"] == 0
    assert status["scheduled_ips"] == 0
    assert status["total_daily_capacity"] == 50_200
    assert [entry["ip"] for entry in status["ips"]] == [f"45.123.10.{n}" for n in range(1, 7)]
    first = status["ips"][0]
    providers = first.pop("providers")
    assert first == {
        "ip": "45.123.10.1",
        "domain": "mail1.sos-mail.com",
        "tenant": "sos-expat",
        "phase": "completed",
        "status": "active",
        "plan_status": "completed",
        "start_date": "2026-11-30",
        "daily_quota": 10_000,
        "sent_today": 0,
        "remaining_today": 10_000,
        "warmup_duration_days": 42,
        "needs_attention": False,
    }
    # No shares and no history: the default split (40/25/15/5/15) of the 10,000.
    assert {provider: figures["daily_quota"] for provider, figures in providers.items()} == {
        "gmail": 4000,
        "microsoft": 2500,
        "yahoo": 1500,
        "apple": 500,
        "other": 1500,
    }
    assert providers["gmail"] == {"share": 40.0, "daily_quota": 4000, "sent_today": 0, "suspended_until": None}
    assert status["ips"][5]["daily_quota"] == 200
    assert status["ips"][5]["phase"] == "week_2"


def test_sent_today_comes_live_from_the_counter_store(tenant, redis_client):
    plan = plan_in_state("completed", tenant=tenant, address="45.123.10.1")
    record_stats(plan.ip, {"sent": 1234, "delivered": 1200})
    record_stats(plan.ip, {"sent": 99}, TODAY - dt.timedelta(days=1))  # another day: not today's

    [entry] = warmup_status([tenant])["ips"]

    assert entry["sent_today"] == 1234
    assert entry["remaining_today"] == 10_000 - 1234


def test_today_is_taken_in_each_tenants_zone(redis_client):
    # 12:00 UTC on the 15th is already the 16th in Auckland.
    far = TenantFactory(slug="far", time_zone="Pacific/Auckland")
    plan = plan_in_state("completed", tenant=far)
    record_stats(plan.ip, {"sent": 10}, dt.date(2027, 2, 16))
    record_stats(plan.ip, {"sent": 500}, dt.date(2027, 2, 15))

    [entry] = warmup_status([far])["ips"]

    assert entry["sent_today"] == 10


def test_remaining_never_goes_below_zero(tenant, redis_client):
    plan = plan_in_state("warming", tenant=tenant, phase="week_1")
    record_stats(plan.ip, {"sent": 80})

    [entry] = warmup_status([tenant])["ips"]

    assert (entry["daily_quota"], entry["sent_today"], entry["remaining_today"]) == (50, 80, 0)


def test_view_still_answers_with_null_counts_when_the_counter_store_is_down(tenant, counter_store_down):
    plan_in_state("completed", tenant=tenant)

    status = warmup_status([tenant])

    assert status["ips"][0]["sent_today"] is None
    assert status["ips"][0]["remaining_today"] is None
    assert status["total_daily_capacity"] == 10_000


def test_paused_scheduled_and_retired_ips(tenant, redis_client):
    plan_in_state("paused", tenant=tenant, address="10.0.0.1", phase="week_2", paused_until=None)
    plan_in_state("paused", tenant=tenant, address="10.0.0.2", phase="week_3", paused_until=NOW + dt.timedelta(hours=5))
    plan_in_state("scheduled", tenant=tenant, address="10.0.0.3")
    retired = plan_in_state("completed", tenant=tenant, address="10.0.0.4")
    retired.ip.status = "retired"
    retired.ip.save()
    IPFactory(domain=DomainFactory(tenant=tenant), address="10.0.0.5")  # pending, no plan yet

    status = warmup_status([tenant])

    by_ip = {entry["ip"]: entry for entry in status["ips"]}
    assert "10.0.0.4" not in by_ip  # retired IPs are left out of the list and of the counts
    assert (status["active_ips"], status["warming_ips"], status["paused_ips"], status["scheduled_ips"]) == (0, 0, 2, 1)
    assert status["total_daily_capacity"] == 0
    assert by_ip["10.0.0.1"]["needs_attention"] is True
    assert by_ip["10.0.0.2"]["needs_attention"] is False
    assert by_ip["10.0.0.3"]["start_date"] == (TODAY + dt.timedelta(days=7)).isoformat()
    assert by_ip["10.0.0.3"]["warmup_duration_days"] == 0
    assert by_ip["10.0.0.5"]["plan_status"] is None
    assert by_ip["10.0.0.5"]["daily_quota"] == 0


def test_only_the_given_tenants_are_listed(tenant, redis_client):
    other = TenantFactory(slug="other")
    plan_in_state("completed", tenant=tenant, address="10.0.0.1")
    plan_in_state("completed", tenant=other, address="10.0.0.2")

    status = warmup_status(Tenant.objects.filter(slug="other"))

    assert [entry["ip"] for entry in status["ips"]] == ["10.0.0.2"]
    assert status["total_daily_capacity"] == 10_000


def _many(tenant, count: int) -> None:
    for n in range(count):
        plan_in_state("warming" if n % 2 else "completed", tenant=tenant, phase="week_3")


@pytest.mark.parametrize("count", [10, 200])
def test_query_count_does_not_grow_with_the_number_of_ips(tenant, redis_client, count, django_assert_num_queries):
    _many(tenant, count)

    # The IPs with their plans and domain names, their tenants, the tenants' provider shares, their sent per
    # provider over the last 7 days (no shares of their own), the suspensions in force; the counters are Redis.
    with django_assert_num_queries(5):
        status = warmup_status(Tenant.objects.all())

    assert len(status["ips"]) == count


def test_command_prints_a_table(tenant, redis_client):
    seed_example_state(tenant)
    out = StringIO()

    call_command("warmup_status", stdout=out)

    text = out.getvalue()
    assert "45.123.10.6" in text and "week_2" in text
    assert "active 5, warming 1, paused 0, scheduled 0; total daily capacity 50,200" in text


def test_command_json_is_the_apis_json(tenant, redis_client):
    seed_example_state(tenant)
    TenantFactory(slug="other")
    out = StringIO()

    call_command("warmup_status", "--tenant", "sos-expat", "--json", stdout=out)

    assert json.loads(out.getvalue()) == warmup_status([tenant])


def test_command_refuses_an_unknown_tenant(tenant):
    with pytest.raises(CommandError, match="nope"):
        call_command("warmup_status", "--tenant", "nope")
