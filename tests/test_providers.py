"""Provider shares of the quota (README "Providers"): the tenant's table, its own history, the default,
and suspensions holding a provider at 0."""

import datetime as dt

import pytest
import time_machine
from django.utils import timezone

from tests.factories import DailyStatFactory, plan_in_state
from warmup.engine import ip_daily_quota
from warmup.models import ProviderShare, ProviderSuspension
from warmup.providers import HISTORY_CACHE_SECONDS, PROVIDERS, provider_quotas, split_quota, tenant_shares

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2027, 3, 10, 12, 0, tzinfo=dt.UTC)


def quotas_of(plan):
    ip = plan.ip
    return provider_quotas([ip], {ip.pk: ip_daily_quota(ip)}, NOW)[ip.pk]


def test_split_adds_up_to_the_quota_and_follows_the_weights():
    weights = {"gmail": 40, "microsoft": 25, "yahoo": 15, "apple": 5, "other": 15}
    for quota in (0, 1, 7, 50, 199, 10_000):
        parts = split_quota(quota, weights)
        assert sum(parts.values()) == quota
        for provider in PROVIDERS:
            assert abs(parts[provider] - quota * weights[provider] / 100) < 1
    # 12.5, 7.5, 2.5, 7.5: the two messages left go to the ties listed first
    assert split_quota(50, weights) == {"gmail": 20, "microsoft": 13, "yahoo": 8, "apple": 2, "other": 7}


@time_machine.travel(NOW)
def test_the_default_applies_to_a_tenant_without_shares_or_history(tenant, settings):
    settings.WARMUP_PROVIDER_SHARES = {"gmail": 50, "microsoft": 50}
    plan = plan_in_state("warming", tenant=tenant, phase="week_2")  # quota 200
    quotas = quotas_of(plan)
    assert {p: q.daily_quota for p, q in quotas.items()} == {
        "gmail": 100,
        "microsoft": 100,
        "yahoo": 0,
        "apple": 0,
        "other": 0,
    }
    assert quotas["gmail"].share == 50.0


@time_machine.travel(NOW)
def test_a_tenant_without_a_table_gets_the_split_of_its_last_seven_days(tenant):
    plan = plan_in_state("warming", tenant=tenant, phase="week_3")  # quota 500
    today = timezone.now().date()
    for days_ago, gmail, microsoft in ((1, 300, 100), (7, 300, 100), (8, 0, 10_000), (0, 0, 10_000)):
        DailyStatFactory(
            ip=plan.ip,
            date=today - dt.timedelta(days=days_ago),
            sent=gmail + microsoft,
            by_provider={"gmail": {"sent": gmail}, "microsoft": {"sent": microsoft}},
        )
    assert tenant_shares([tenant])[tenant.pk] == {
        "gmail": 600.0,
        "microsoft": 200.0,
        "yahoo": 0.0,
        "apple": 0.0,
        "other": 0.0,
    }
    assert {p: q.daily_quota for p, q in quotas_of(plan).items()} == {
        "gmail": 375,
        "microsoft": 125,
        "yahoo": 0,
        "apple": 0,
        "other": 0,
    }


@time_machine.travel(NOW)
def test_the_tenant_table_wins_over_history(tenant):
    plan = plan_in_state("warming", tenant=tenant, phase="week_1")  # quota 50
    DailyStatFactory(ip=plan.ip, sent=100, by_provider={"gmail": {"sent": 100}})
    ProviderShare.objects.create(tenant=tenant, provider="yahoo", share=60)
    ProviderShare.objects.create(tenant=tenant, provider="apple", share=40)
    quotas = quotas_of(plan)
    assert {p: q.daily_quota for p, q in quotas.items()} == {
        "gmail": 0,
        "microsoft": 0,
        "yahoo": 30,
        "apple": 20,
        "other": 0,
    }
    assert quotas["yahoo"].share == 60.0


@time_machine.travel(NOW)
def test_a_suspension_in_force_holds_its_provider_at_zero_and_only_while_it_lasts(tenant):
    plan = plan_in_state("warming", tenant=tenant, phase="week_2")
    ends = NOW + dt.timedelta(hours=48)
    ProviderSuspension.objects.create(
        ip=plan.ip, provider="microsoft", reason="threshold", starts_at=NOW - dt.timedelta(hours=1), ends_at=ends
    )
    quotas = quotas_of(plan)
    assert quotas["microsoft"].daily_quota == 0
    assert quotas["microsoft"].suspended_until == ends
    assert quotas["gmail"].daily_quota == 80  # 40% of 200, not handed the suspended share
    after = provider_quotas([plan.ip], {plan.ip.pk: 200}, ends)[plan.ip.pk]
    assert after["microsoft"].daily_quota == 50 and after["microsoft"].suspended_until is None


def test_provider_quotas_costs_three_queries_whatever_the_number_of_ips(tenant, django_assert_num_queries):
    plans = [plan_in_state("warming", tenant=tenant) for _ in range(20)]
    ips = [p.ip for p in plans]
    for ip in ips:
        assert ip.tenant.pk  # loaded, as the callers' select_related does
    with django_assert_num_queries(3):
        result = provider_quotas(ips, {ip.pk: 50 for ip in ips})
    assert len(result) == 20


def test_a_tenants_history_is_summed_once_per_day_and_again_after_the_cache_time(tenant, django_assert_num_queries):
    plan = plan_in_state("warming", tenant=tenant, phase="week_3")  # quota 500
    yesterday = NOW.date() - dt.timedelta(days=1)
    DailyStatFactory(ip=plan.ip, date=yesterday, sent=400, by_provider={"gmail": {"sent": 400}})
    with time_machine.travel(NOW, tick=False):
        assert quotas_of(plan)["gmail"].daily_quota == 500
        # Consolidation lands more of yesterday; within the cache time the split stays as computed.
        DailyStatFactory(
            ip=plan.ip, date=yesterday - dt.timedelta(days=1), sent=400, by_provider={"yahoo": {"sent": 400}}
        )
        with django_assert_num_queries(2):  # the tenant's table and the suspensions; no sum of the history
            assert quotas_of(plan)["gmail"].daily_quota == 500
    with time_machine.travel(NOW + dt.timedelta(seconds=HISTORY_CACHE_SECONDS + 1), tick=False):
        with django_assert_num_queries(3):
            quotas = quotas_of(plan)
    assert (quotas["gmail"].daily_quota, quotas["yahoo"].daily_quota) == (250, 250)
