"""The daily tick (PRODUCT.md section 5): timeline, pauses and rollbacks, progress, catch-up, idle re-warm."""

import datetime as dt
import io
import json
import zoneinfo

import pytest
import time_machine
from django.core.management import call_command

from domains.models import IP, Domain
from warmup import engine
from warmup.models import Alert, AuditEvent, DailyStat, WarmupPlan

from .factories import DomainFactory, IPFactory, TenantFactory, WarmupPlanFactory

UTC = dt.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
START = dt.date(2027, 1, 4)
Plan = WarmupPlan


def warming_plan(start=START, tenant=None, **kwargs) -> WarmupPlan:
    """A plan started on `start` the way onboarding starts it (start date already processed)."""
    tenant = tenant or TenantFactory()
    ip = IPFactory(domain=DomainFactory(tenant=tenant, status=Domain.Status.WARMING), status=IP.Status.WARMING)
    defaults = {
        "status": Plan.Status.WARMING,
        "last_ticked_date": start,
        "window_start_date": start,
    }
    defaults.update(kwargs)
    return WarmupPlanFactory(ip=ip, start_date=start, **defaults)


def send(plan, day, sent, bounced=0, complaints=0) -> None:
    """The consolidated figures of one day, written directly."""
    DailyStat.objects.update_or_create(
        ip=plan.ip,
        date=day,
        defaults={"sent": sent, "delivered": sent - bounced, "bounced": bounced, "complaints": complaints},
    )


def tick_on(day, zone=UTC, **kwargs):
    """The tick as beat runs it: half past one in the morning of `day` in the tenant's zone."""
    with time_machine.travel(dt.datetime.combine(day, dt.time(1, 30), tzinfo=zone), tick=False):
        return engine.tick(**kwargs)


def day_n(n, start=START):
    return start + dt.timedelta(days=n - 1)


def fresh(plan) -> WarmupPlan:
    return Plan.objects.select_related("ip__domain").get(pk=plan.pk)


def state(plan) -> tuple:
    plan = fresh(plan)
    return (
        plan.status,
        plan.phase,
        plan.phase_day_count,
        plan.last_ticked_date,
        plan.window_start_date,
        plan.paused_until,
        plan.auto_pause_count,
        plan.completed_on,
        plan.ip.status,
        plan.ip.weight,
    )


def timeline(plan) -> list[tuple]:
    return [
        (e.date, e.kind, e.from_phase, e.to_phase, e.from_status, e.to_status)
        for e in AuditEvent.objects.filter(plan=plan).order_by("date", "id")
    ]


# --- The timeline ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_full_quota_and_clean_rates_complete_after_42_days():
    plan = warming_plan()
    quotas = {}
    for n in range(1, 44):
        if n > 1:
            tick_on(day_n(n))
        plan = fresh(plan)
        quotas[n] = engine.ip_daily_quota(plan.ip)
        if plan.status == Plan.Status.WARMING:
            send(plan, day_n(n), quotas[n], bounced=quotas[n] // 100)

    expected = {}
    for week, quota in enumerate([50, 200, 500, 1500, 5000, 10000]):
        for n in range(week * 7 + 1, week * 7 + 8):
            expected[n] = quota
    expected[43] = 10000
    assert quotas == expected
    plan = fresh(plan)
    assert plan.status == Plan.Status.COMPLETED
    assert plan.phase == Plan.Phase.COMPLETED
    assert plan.completed_on == day_n(43)
    assert plan.warmup_duration_days() == 42
    assert plan.ip.status == IP.Status.ACTIVE
    assert plan.ip.weight == 100
    assert plan.ip.domain.status == Domain.Status.ACTIVE
    kinds = [e[1] for e in timeline(plan)]
    assert kinds == ["advanced"] * 5 + ["completed"]
    assert Alert.objects.filter(kind=Alert.Kind.COMPLETED, ip=plan.ip).count() == 1

    # What an operator's script sees on day 43.
    out = io.StringIO()
    with time_machine.travel(dt.datetime.combine(day_n(43), dt.time(9), tzinfo=UTC), tick=False):
        call_command("warmup_status", "--json", stdout=out)
    [entry] = json.loads(out.getvalue())["ips"]
    assert entry == {
        **entry,
        "ip": plan.ip.address,
        "status": "active",
        "plan_status": "completed",
        "phase": "completed",
        "daily_quota": 10000,
        "warmup_duration_days": 42,
        "start_date": START.isoformat(),
        "needs_attention": False,
    }


@pytest.mark.django_db
def test_a_scheduled_plan_starts_on_its_start_date():
    tenant = TenantFactory()
    ip = IPFactory(domain=DomainFactory(tenant=tenant))
    plan = WarmupPlanFactory(ip=ip, start_date=START, status=Plan.Status.SCHEDULED)

    tick_on(START - dt.timedelta(days=1))
    assert fresh(plan).status == Plan.Status.SCHEDULED
    assert engine.ip_daily_quota(fresh(plan).ip) == 0

    report = tick_on(START)
    plan = fresh(plan)
    assert plan.status == Plan.Status.WARMING
    assert plan.phase == Plan.Phase.WEEK_1
    assert plan.window_start_date == START
    assert plan.last_ticked_date == START
    assert plan.ip.status == IP.Status.WARMING
    assert plan.ip.weight == 0
    assert plan.ip.domain.status == Domain.Status.WARMING
    assert engine.ip_daily_quota(plan.ip) == 50
    assert [e.kind for e in report.events] == [AuditEvent.Kind.STARTED]
    assert report.dates == [START]


@pytest.mark.django_db
def test_the_tick_waits_for_one_in_the_morning_in_the_tenants_zone():
    tenant = TenantFactory(time_zone="Europe/Paris")
    plan = warming_plan(tenant=tenant)
    send(plan, START, 50)
    # 00:30 in Paris on day 2: day 2 is not due yet.
    with time_machine.travel(dt.datetime(2027, 1, 5, 0, 30, tzinfo=PARIS), tick=False):
        assert engine.tick().plans_processed == 0
    with time_machine.travel(dt.datetime(2027, 1, 5, 1, 0, tzinfo=PARIS), tick=False):
        report = engine.tick()
    assert report.dates == [dt.date(2027, 1, 5)]
    assert fresh(plan).phase_day_count == 1


# --- Pauses and rollbacks -------------------------------------------------------------------------


def _plan_in_week_2(tenant=None, zone=UTC):
    """A plan that sent its full quota for 7 days and is in week 2 on day 8."""
    plan = warming_plan(tenant=tenant)
    for n in range(1, 8):
        if n > 1:
            tick_on(day_n(n), zone)
        send(plan, day_n(n), 50)
    tick_on(day_n(8), zone)
    plan = fresh(plan)
    assert plan.phase == Plan.Phase.WEEK_2
    return plan


@pytest.mark.django_db
def test_it_pauses_and_rolls_back_when_bounce_rate_exceeds_threshold_then_resumes_after_48_hours():
    plan = _plan_in_week_2()
    send(plan, day_n(8), 200, bounced=16)  # 8 %

    report = tick_on(day_n(9))
    plan = fresh(plan)
    assert plan.status == Plan.Status.PAUSED
    assert plan.phase == Plan.Phase.WEEK_1
    assert plan.paused_until == dt.datetime.combine(day_n(11), dt.time(1), tzinfo=UTC)
    assert plan.ip.status == IP.Status.PAUSED
    assert engine.ip_daily_quota(plan.ip) == 0
    [event] = report.events
    assert (event.kind, event.from_phase, event.to_phase, event.from_status, event.to_status) == (
        "paused",
        "week_2",
        "week_1",
        "warming",
        "paused",
    )
    assert event.figures["sent"] == 200
    assert event.figures["bounced"] == 16
    assert event.figures["bounce_rate"] == 8.0
    assert event.figures["max_bounce_rate"] == 5.0
    assert event.figures["rolled_back"] is True
    assert event.figures["window_from"] == event.figures["window_to"] == day_n(8).isoformat()
    assert event.actor is None
    alert = Alert.objects.get(kind=Alert.Kind.PAUSED)
    assert "8.00%" in alert.message and plan.ip.address in alert.message

    # Sending while paused never counts toward the phase.
    send(plan, day_n(9), 50)
    tick_on(day_n(10))
    plan = fresh(plan)
    assert plan.status == Plan.Status.PAUSED
    assert plan.phase_day_count == 0

    report = tick_on(day_n(11))
    plan = fresh(plan)
    assert plan.status == Plan.Status.WARMING
    assert plan.phase == Plan.Phase.WEEK_1
    assert plan.phase_day_count == 0
    assert plan.window_start_date == day_n(11)
    assert plan.ip.status == IP.Status.WARMING
    assert engine.ip_daily_quota(plan.ip) == 50
    assert [e.kind for e in report.events] == ["resumed"]
    assert Alert.objects.filter(kind=Alert.Kind.RESUMED).count() == 1


@pytest.mark.django_db
def test_a_48_hour_pause_ends_at_the_tick_two_days_later_across_the_spring_dst_change():
    tenant = TenantFactory(time_zone="Europe/Paris")
    start = dt.date(2027, 3, 20)
    plan = warming_plan(start=start, tenant=tenant)
    send(plan, dt.date(2027, 3, 26), 200, bounced=20)
    # Ticks for 21..27 March; the one of the 27th judges the 26th and pauses at 01:00 CET.
    for day in (dt.date(2027, 3, d) for d in range(21, 28)):
        tick_on(day, PARIS)
    plan = fresh(plan)
    assert plan.status == Plan.Status.PAUSED
    # 01:00 CEST on the 29th: 47 real hours later, 48 on the wall clock.
    assert plan.paused_until == dt.datetime(2027, 3, 29, 1, 0, tzinfo=PARIS)
    assert plan.paused_until == dt.datetime(2027, 3, 28, 23, 0, tzinfo=UTC)

    tick_on(dt.date(2027, 3, 28), PARIS)
    assert fresh(plan).status == Plan.Status.PAUSED
    tick_on(dt.date(2027, 3, 29), PARIS)
    plan = fresh(plan)
    assert plan.status == Plan.Status.WARMING
    assert plan.phase == Plan.Phase.WEEK_1


@pytest.mark.django_db
def test_the_complaint_rate_pauses_with_enough_complaints(settings):
    plan = warming_plan()
    send(plan, START, 400, complaints=2)  # 0.5 %
    report = tick_on(day_n(2))
    assert [e.kind for e in report.events] == ["paused"]
    assert report.events[0].figures["tripped"] == ["complaint_rate"]
    # week_1 stays week_1.
    assert fresh(plan).phase == Plan.Phase.WEEK_1


@pytest.mark.django_db
def test_one_complaint_in_a_window_never_pauses():
    plan = warming_plan()
    send(plan, START, 200, complaints=1)  # 0.5 % of delivered, but a single complaint
    tick_on(day_n(2))
    plan = fresh(plan)
    assert plan.status == Plan.Status.WARMING
    assert plan.phase_day_count == 1


@pytest.mark.django_db
def test_three_bounces_out_of_twenty_sent_never_pause():
    plan = warming_plan()
    send(plan, START, 20, bounced=3)  # 15 %, but the sample is too small
    for n in range(2, 6):
        tick_on(day_n(n))
    plan = fresh(plan)
    assert plan.status == Plan.Status.WARMING
    assert not AuditEvent.objects.filter(plan=plan).exists()


@pytest.mark.django_db
def test_small_days_are_pooled_up_to_the_window_to_reach_the_sample():
    plan = warming_plan()
    for n in (1, 2, 3):
        send(plan, day_n(n), 40, bounced=4)  # 10 % each day, 120 sent over three days
    tick_on(day_n(2))
    tick_on(day_n(3))
    assert fresh(plan).status == Plan.Status.WARMING
    report = tick_on(day_n(4))
    [event] = report.events
    assert event.kind == "paused"
    assert event.figures["sent"] == 120
    assert event.figures["window_from"] == day_n(1).isoformat()
    assert event.figures["window_days"] == 3


@pytest.mark.django_db
def test_the_window_never_reaches_before_the_last_resume():
    plan = warming_plan(window_start_date=day_n(3), last_ticked_date=day_n(3))
    send(plan, day_n(1), 500, bounced=100)  # before the window start: ignored
    send(plan, day_n(3), 50)
    tick_on(day_n(4))
    assert fresh(plan).status == Plan.Status.WARMING


@pytest.mark.django_db
def test_a_day_at_30_percent_of_quota_does_not_count_toward_the_phase():
    plan = warming_plan()
    send(plan, START, 15)
    tick_on(day_n(2))
    assert fresh(plan).phase_day_count == 0
    send(plan, day_n(2), 25)  # exactly half counts
    tick_on(day_n(3))
    assert fresh(plan).phase_day_count == 1


@pytest.mark.django_db
def test_without_rollback_the_pause_keeps_the_phase(settings):
    settings.WARMUP_ROLLBACK_ON_PAUSE = False
    plan = _plan_in_week_2()
    send(plan, day_n(8), 200, bounced=40)
    tick_on(day_n(9))
    plan = fresh(plan)
    assert plan.status == Plan.Status.PAUSED
    assert plan.phase == Plan.Phase.WEEK_2


@pytest.mark.django_db
def test_the_fourth_automatic_pause_has_no_end_and_needs_attention():
    plan = warming_plan()
    day = START
    pauses = []
    for _ in range(4):
        send(plan, day, 150, bounced=30)
        day += dt.timedelta(days=1)
        tick_on(day)
        plan = fresh(plan)
        assert plan.status == Plan.Status.PAUSED
        pauses.append(plan.paused_until)
        if plan.paused_until:
            day += dt.timedelta(days=2)
            tick_on(day - dt.timedelta(days=1))
            tick_on(day)
            assert fresh(plan).status == Plan.Status.WARMING
    assert all(pauses[:3]) and pauses[3] is None
    plan = fresh(plan)
    assert plan.needs_attention
    assert plan.auto_pause_count == 4
    assert Alert.objects.filter(kind=Alert.Kind.NEEDS_ATTENTION, ip=plan.ip).count() == 1
    # It stays paused until a person resumes it.
    for offset in range(1, 6):
        tick_on(day + dt.timedelta(days=offset))
    assert fresh(plan).needs_attention

    engine.perform(plan, "resume", now=dt.datetime.combine(day + dt.timedelta(days=5), dt.time(9), tzinfo=UTC))
    plan = fresh(plan)
    assert plan.status == Plan.Status.WARMING
    assert plan.auto_pause_count == 0


# --- Idempotency and catch-up ---------------------------------------------------------------------


@pytest.mark.django_db
def test_ticking_twice_for_one_date_changes_nothing_the_second_time():
    plan = _plan_in_week_2()
    send(plan, day_n(8), 200, bounced=16)
    tick_on(day_n(9))
    before, events, alerts = state(plan), AuditEvent.objects.count(), Alert.objects.count()
    report = tick_on(day_n(9))
    assert report.plans_processed == 0
    assert report.events == []
    assert state(plan) == before
    assert (AuditEvent.objects.count(), Alert.objects.count()) == (events, alerts)


def _scenario(plan):
    """Two clean weeks with a bad day in the middle: start, advance, pause, resume."""
    for n in range(1, 20):
        send(plan, day_n(n), 500 if n < 8 else 200, bounced=40 if n == 9 else 0)


@pytest.mark.django_db
def test_skipping_dates_then_ticking_equals_ticking_each_date():
    daily, late = warming_plan(), warming_plan()
    _scenario(daily)
    _scenario(late)
    for n in range(2, 21):
        tick_on(day_n(n), tenants=[daily.ip.tenant])
        if n % 4 == 0 or n == 20:  # three dates skipped each time
            tick_on(day_n(n), tenants=[late.ip.tenant])
    assert state(daily)[:8] == state(late)[:8]
    assert timeline(daily) == timeline(late)
    kinds = [e[1] for e in timeline(daily)]
    assert kinds == ["advanced", "paused", "resumed", "advanced"]
    assert [a.kind for a in Alert.objects.filter(ip=late.ip).order_by("id")] == ["paused", "resumed"]


@pytest.mark.django_db
def test_a_plan_started_in_the_past_catches_up_on_the_first_tick():
    plan = warming_plan()
    for n in range(1, 10):
        send(plan, day_n(n), 200)
    report = tick_on(day_n(10))
    plan = fresh(plan)
    assert report.dates == [day_n(n) for n in range(2, 11)]
    assert plan.phase == Plan.Phase.WEEK_2
    assert plan.phase_day_count == 2
    assert plan.last_ticked_date == day_n(10)


# --- Idle re-warm and domains ---------------------------------------------------------------------


@pytest.mark.django_db
def test_an_active_ip_idle_for_30_days_is_rewarmed_at_week_3():
    completed_on = dt.date(2027, 2, 15)
    plan = warming_plan(
        status=Plan.Status.COMPLETED,
        phase=Plan.Phase.COMPLETED,
        completed_on=completed_on,
        last_ticked_date=completed_on,
    )
    IP.objects.filter(pk=plan.ip_id).update(status=IP.Status.ACTIVE, weight=100)
    Domain.objects.filter(pk=plan.ip.domain_id).update(status=Domain.Status.ACTIVE)
    send(plan, completed_on, 10000)
    send(plan, completed_on + dt.timedelta(days=1), 3)  # a little mail on the first active day

    # Day 31 after the last mail: 30 idle days (the 17th of February .. the 18th of March).
    tick_on(completed_on + dt.timedelta(days=31))
    assert fresh(plan).status == Plan.Status.COMPLETED
    report = tick_on(completed_on + dt.timedelta(days=32))
    plan = fresh(plan)
    assert [e.kind for e in report.events] == ["rewarmed"]
    assert plan.status == Plan.Status.WARMING
    assert plan.phase == Plan.Phase.WEEK_3
    assert plan.ip.status == IP.Status.WARMING
    assert plan.ip.weight == 0
    assert plan.ip.domain.status == Domain.Status.WARMING
    assert engine.ip_daily_quota(plan.ip) == 500
    assert Alert.objects.filter(kind=Alert.Kind.REWARMED).count() == 1


@pytest.mark.django_db
def test_the_domain_is_active_only_once_all_its_ips_are_active():
    plan = warming_plan(phase=Plan.Phase.WEEK_6, phase_day_count=6)
    other = IPFactory(domain=plan.ip.domain, status=IP.Status.WARMING)
    retired = IPFactory(domain=plan.ip.domain, status=IP.Status.RETIRED)
    send(plan, START, 10000)
    tick_on(day_n(2))
    assert fresh(plan).status == Plan.Status.COMPLETED
    assert Domain.objects.get(pk=plan.ip.domain_id).status == Domain.Status.WARMING

    IP.objects.filter(pk=other.pk).update(status=IP.Status.ACTIVE)
    plan2 = warming_plan(phase=Plan.Phase.WEEK_6, phase_day_count=6)
    IP.objects.filter(pk=plan2.ip_id).update(domain=plan.ip.domain)
    send(plan2, START, 10000)
    tick_on(day_n(2))
    assert Domain.objects.get(pk=plan.ip.domain_id).status == Domain.Status.ACTIVE
    assert IP.objects.get(pk=retired.pk).status == IP.Status.RETIRED


@pytest.mark.django_db
def test_ip_daily_quota():
    assert engine.ip_daily_quota(IPFactory()) == 0
    plan = warming_plan(phase=Plan.Phase.WEEK_4)
    assert engine.ip_daily_quota(plan.ip) == 1500
    plan.status = Plan.Status.COMPLETED
    plan.save()
    assert engine.ip_daily_quota(fresh(plan).ip) == 10000
    Plan.objects.filter(pk=plan.pk).update(status=Plan.Status.PAUSED)
    assert engine.ip_daily_quota(fresh(plan).ip) == 0
