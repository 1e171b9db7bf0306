"""The capacity forecast (warmup.forecast) and the forecast command."""

import datetime as dt
import json
from collections import Counter
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from warmup.forecast import forecast, plan_additions
from warmup.models import AuditEvent, WarmupPlan, WarmupSchedule

from .factories import DomainFactory, TenantFactory, plan_in_state

NOW = dt.datetime(2027, 1, 4, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
STEPS = [50, 200, 500, 1500, 5000, 10000]

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def clean_timeline() -> list[int]:
    """PRODUCT.md section 5: days 1-7 at 50, 8-14 at 200, ..., 36-42 at 10,000, ACTIVE from day 43."""
    return [quota for quota in STEPS for _ in range(7)] + [10_000] * 8


def demo_layout_on_day_1(tenant) -> None:
    """The demo tenant on its first day: mail1 started today, mail2..5 scheduled one week apart."""
    plan_in_state("warming", tenant=tenant, address="45.123.10.1", phase="week_1", start_date=TODAY)
    for n in range(2, 6):
        plan_in_state(
            "scheduled", tenant=tenant, address=f"45.123.10.{n}", start_date=TODAY + dt.timedelta(7 * (n - 1))
        )


def test_a_single_new_plan_follows_the_clean_timeline(tenant):
    result = forecast(tenant, days=50, target_ips=1)

    capacity = [day["total_daily_capacity"] for day in result["days"]]
    assert capacity == clean_timeline()
    day_43 = result["days"][42]
    assert (day_43["active"], day_43["warming"], day_43["scheduled"]) == (1, 0, 0)
    day_42 = result["days"][41]
    assert (day_42["active"], day_42["warming"]) == (0, 1)
    assert result["days"][0] == {
        "day": 1,
        "date": "2027-01-04",
        "active": 0,
        "warming": 1,
        "paused": 0,
        "scheduled": 0,
        "total_daily_capacity": 50,
    }
    assert result["target_capacity"] == 10_000
    # Week 6 counts 10,000 already: the target is reached on day 36.
    assert result["target_reached_on"] == (TODAY + dt.timedelta(days=35)).isoformat()


def test_an_existing_plan_started_today_follows_the_same_timeline(tenant):
    plan_in_state("warming", tenant=tenant, phase="week_1", start_date=TODAY)

    result = forecast(tenant, days=50, add_per_week=0)

    assert [day["total_daily_capacity"] for day in result["days"]] == clean_timeline()


def test_the_demo_layout_reaches_500000_on_the_day_the_fiftieth_ip_enters_week_6(tenant):
    demo_layout_on_day_1(tenant)
    out = StringIO()

    call_command("forecast", "--add-per-week", "1", "--target-ips", "50", "--days", "420", "--json", stdout=out)

    result = json.loads(out.getvalue())
    assert result["tenant"] == "sos-expat"
    assert result["target_ips"] == 50
    assert result["target_capacity"] == 500_000
    # mail5 starts on day 29; the 45 additions on days 36, 43, ..., 344 (one a week); the last one
    # reaches week 6 (10,000) on its day 36, i.e. day 379.
    assert result["target_reached_on"] == (TODAY + dt.timedelta(days=378)).isoformat()
    days = result["days"]
    assert len(days) == 420
    assert days[377]["total_daily_capacity"] == 495_000
    assert days[378]["total_daily_capacity"] == 500_000
    assert days[385]["active"] == 50 and days[385]["warming"] == 0
    # Everything planned is counted from day 1: started, scheduled and planned additions.
    assert days[0]["warming"] + days[0]["scheduled"] == 50
    assert days[0]["total_daily_capacity"] == 50
    # The first planned addition starts on day 36 (a week after mail5), the second on day 43.
    assert days[34]["scheduled"] == 45 and days[35]["scheduled"] == 44 and days[42]["scheduled"] == 43


def test_the_command_names_the_day_the_target_is_reached(tenant):
    demo_layout_on_day_1(tenant)
    out = StringIO()

    call_command("forecast", "--tenant", "sos-expat", "--target-ips", "50", "--days", "420", stdout=out)

    text = out.getvalue()
    assert f"Target capacity reached on {TODAY + dt.timedelta(days=378)}." in text
    assert "500,000" in text


def test_a_plan_mid_phase_moves_on_after_its_remaining_qualifying_days(tenant):
    # Ticked today with 5 of 7 qualifying days in week_3: tomorrow's tick makes 6, the next one 7.
    plan_in_state("warming", tenant=tenant, phase="week_3", phase_day_count=5, start_date=TODAY - dt.timedelta(19))

    capacity = [day["total_daily_capacity"] for day in forecast(tenant, days=4, add_per_week=0)["days"]]

    assert capacity == [500, 500, 1500, 1500]


def test_a_plan_not_yet_ticked_today_gets_todays_tick(tenant):
    # Last ticked yesterday with 6 qualifying days: today's tick (still to come) completes week_2.
    plan_in_state(
        "warming",
        tenant=tenant,
        phase="week_2",
        phase_day_count=6,
        start_date=TODAY - dt.timedelta(13),
        last_ticked_date=TODAY - dt.timedelta(1),
    )

    capacity = [day["total_daily_capacity"] for day in forecast(tenant, days=2, add_per_week=0)["days"]]

    assert capacity == [500, 500]


def test_a_paused_plan_resumes_when_its_pause_ends_and_one_needing_attention_stays_at_zero(tenant):
    # Paused until 01:00 UTC the day after tomorrow: resumes at that day's tick, in its phase, count 0.
    plan_in_state(
        "paused",
        tenant=tenant,
        phase="week_2",
        phase_day_count=3,
        paused_until=dt.datetime.combine(TODAY + dt.timedelta(2), dt.time(1), tzinfo=dt.UTC),
    )
    plan_in_state("paused", tenant=tenant, phase="week_4", paused_until=None)

    days = forecast(tenant, days=12, add_per_week=0)["days"]

    assert [day["total_daily_capacity"] for day in days] == [0, 0] + [200] * 7 + [500] * 3
    assert (days[0]["paused"], days[0]["warming"]) == (2, 0)
    assert (days[2]["paused"], days[2]["warming"]) == (1, 1)
    assert days[-1]["paused"] == 1


def test_active_ips_count_their_target_and_retired_ones_are_left_out(tenant):
    plan_in_state("completed", tenant=tenant, address="10.0.0.1")
    retired = plan_in_state("completed", tenant=tenant, address="10.0.0.2")
    retired.ip.status = "retired"
    retired.ip.save()

    result = forecast(tenant, days=3, add_per_week=0)

    assert [day["total_daily_capacity"] for day in result["days"]] == [10_000] * 3
    assert result["days"][0]["active"] == 1
    assert result["target_ips"] == 1


def test_additions_respect_the_rotation_rule_counting_existing_starts(tenant):
    plan_in_state("warming", tenant=tenant, phase="week_1", start_date=TODAY - dt.timedelta(3))

    result = forecast(tenant, days=30, target_ips=4)

    # The existing start (3 days ago) holds every window up to day 4; additions on days 5, 12, 19.
    scheduled = [day["scheduled"] for day in result["days"]]
    assert scheduled[:4] == [3] * 4
    assert scheduled[4] == 2 and scheduled[11] == 1 and scheduled[18] == 0


def test_add_per_week_is_capped_by_the_setting(tenant, settings):
    settings.WARMUP_MAX_NEW_IPS_PER_WEEK = 2

    two = forecast(tenant, days=14, add_per_week=5, target_ips=10)

    # Two starts today, two a week later: the rotation rule's cap, whatever was asked.
    assert [two["days"][n]["warming"] for n in (0, 6, 7, 13)] == [2, 2, 4, 4]
    assert two["target_ips"] == 10


def test_without_a_target_additions_go_on_through_the_horizon(tenant):
    result = forecast(tenant, days=21)

    assert result["target_ips"] == 3  # days 1, 8 and 15
    assert result["days"][-1]["warming"] == 3


def test_rotation_placement_puts_several_starts_on_the_earliest_days():
    placed = plan_additions(Counter({TODAY: 1}), first=TODAY, last=TODAY + dt.timedelta(30), per_week=2, count=3)

    assert placed == [TODAY, TODAY + dt.timedelta(7), TODAY + dt.timedelta(7)]


def test_the_forecast_writes_nothing(tenant, django_assert_max_num_queries):
    demo_layout_on_day_1(tenant)
    before = (WarmupPlan.objects.count(), AuditEvent.objects.count(), WarmupSchedule.objects.count())

    with django_assert_max_num_queries(2):
        forecast(tenant, days=100, target_ips=20)

    assert (WarmupPlan.objects.count(), AuditEvent.objects.count(), WarmupSchedule.objects.count()) == before


def test_new_plans_take_the_default_schedules_steps(tenant):
    WarmupSchedule.objects.create(name="Short", steps=[100, 1000], phase_days=2, is_default=True)

    result = forecast(tenant, days=6, target_ips=1)

    assert [day["total_daily_capacity"] for day in result["days"]] == [100, 100, 1000, 1000, 1000, 1000]
    assert result["target_capacity"] == 1000


def test_tenant_may_be_left_out_only_when_there_is_one(tenant):
    out = StringIO()
    call_command("forecast", "--days", "3", "--json", stdout=out)
    assert json.loads(out.getvalue())["tenant"] == "sos-expat"

    TenantFactory(slug="second")
    with pytest.raises(CommandError, match="--tenant"):
        call_command("forecast", "--days", "3")


def test_the_command_refuses_more_additions_than_the_rotation_rule_allows(tenant):
    with pytest.raises(CommandError, match="WARMUP_MAX_NEW_IPS_PER_WEEK"):
        call_command("forecast", "--add-per-week", "2")
    with pytest.raises(CommandError, match="--days"):
        call_command("forecast", "--days", "0")


def test_the_forecast_is_per_tenant(tenant):
    other = TenantFactory(slug="other")
    plan_in_state("completed", domain=DomainFactory(tenant=other))

    assert forecast(tenant, days=1, add_per_week=0)["days"][0]["total_daily_capacity"] == 0
