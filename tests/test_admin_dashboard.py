"""The admin dashboard and the plan page's charts: figures, tenant scoping, query counts."""

import datetime as dt

import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from domains.models import IP
from warmup.admin_views import plan_chart_data
from warmup.counters import Increment, get_store
from warmup.models import AuditEvent, WarmupPlan

from .factories import AlertFactory, AuditEventFactory, DailyStatFactory, UserFactory, WarmupPlanFactory

NOW = dt.datetime(2027, 1, 20, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
Kind = AuditEvent.Kind


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture(autouse=True)
def clean_counters(redis_client):
    return redis_client


@pytest.fixture
def member(tenant_a):
    user = UserFactory(username="alice", is_staff=True)
    tenant_a.members.add(user)
    return user


def warming(tenant, phase=WarmupPlan.Phase.WEEK_2, **kwargs) -> WarmupPlan:
    return WarmupPlanFactory(
        ip__domain__tenant=tenant,
        ip__status=IP.Status.WARMING,
        status=WarmupPlan.Status.WARMING,
        phase=phase,
        start_date=TODAY - dt.timedelta(days=10),
        last_ticked_date=TODAY,
        **kwargs,
    )


# --- Dashboard -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dashboard_shows_capacity_and_ips_per_phase_of_the_members_tenants_only(client, member, tenant_a, tenant_b):
    warming(tenant_a, WarmupPlan.Phase.WEEK_2)  # 200
    warming(tenant_a, WarmupPlan.Phase.WEEK_4)  # 1500
    WarmupPlanFactory(
        ip__domain__tenant=tenant_a, status=WarmupPlan.Status.SCHEDULED, start_date=TODAY + dt.timedelta(days=5)
    )
    warming(tenant_b, WarmupPlan.Phase.WEEK_6)  # 10000, not the member's
    alert_a = AlertFactory(ip=IP.objects.filter(tenant=tenant_a).first(), message="alpha paused")
    AlertFactory(ip=IP.objects.get(tenant=tenant_b), message="bravo paused")
    client.force_login(member)

    response = client.get(reverse("admin:warmup_dashboard"))

    assert response.status_code == 200
    ctx = response.context
    assert ctx["capacity"] == 1700
    assert ctx["counts"] == {"active": 0, "warming": 2, "paused": 0, "scheduled": 1}
    assert ctx["per_phase"] == [("Week 1", 1), ("Week 2", 1), ("Week 4", 1)]
    assert ctx["per_status"] == [("Pending", 1), ("Warming", 2)]
    assert ctx["recent_alerts"] == [alert_a]
    html = response.content.decode()
    assert "1,700" in html and "alpha paused" in html
    assert "bravo" not in html.lower()


@pytest.mark.django_db
def test_dashboard_chart_has_past_sent_and_the_forecast(client, superuser, tenant_a):
    plan = warming(tenant_a, WarmupPlan.Phase.WEEK_6)
    DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=1), sent=9000)
    DailyStatFactory(ip=warming(tenant_a).ip, date=TODAY - dt.timedelta(days=1), sent=150)
    client.force_login(superuser)

    response = client.get(reverse("admin:warmup_dashboard"))
    chart = response.context["chart"]

    # The history is the consolidated days only: yesterday here, the one day with figures.
    assert chart["history_labels"] == [(TODAY - dt.timedelta(days=1)).isoformat()]
    assert chart["sent"] == [9150]
    assert chart["has_forecast"] is True
    assert chart["forecast_labels"][0] == TODAY.isoformat()
    # Day 1 of the forecast is today, after today's tick: week 6 (10,000), week 2 (200) and the new IP
    # the forecast plans for today (one a week, the rotation rule's rate) in its week 1 (50).
    assert chart["capacity"][0] == 10250
    assert len(chart["capacity"]) == len(chart["forecast_labels"])
    html = response.content.decode()
    assert 'id="wp-capacity-chart-data"' in html
    assert 'data-wp-chart="history"' in html and 'data-wp-chart="capacity"' in html


@pytest.mark.django_db
def test_dashboard_history_starts_at_the_first_consolidated_day_at_most_60_days_back(client, superuser, tenant_a):
    plan = warming(tenant_a)
    client.force_login(superuser)
    url = reverse("admin:warmup_dashboard")

    empty = client.get(url)
    assert empty.context["chart"]["history_labels"] == []
    assert "No consolidated day yet" in empty.content.decode()

    DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=5), sent=100)
    DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=2), sent=150)
    chart = client.get(url).context["chart"]
    assert chart["history_labels"] == [(TODAY - dt.timedelta(days=d)).isoformat() for d in range(5, 0, -1)]
    assert chart["sent"] == [100, 0, 0, 150, 0]  # a day without a row sent nothing

    DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=90), sent=1)  # older than the window
    DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=60), sent=7)
    chart = client.get(url).context["chart"]
    assert chart["history_labels"][0] == (TODAY - dt.timedelta(days=60)).isoformat()
    assert len(chart["history_labels"]) == 60
    assert (chart["sent"][0], chart["sent"][-2]) == (7, 150)


@pytest.mark.django_db
def test_dashboard_shows_sent_today_or_unavailable(client, superuser, tenant_a, counter_store_down):
    warming(tenant_a)
    client.force_login(superuser)
    response = client.get(reverse("admin:warmup_dashboard"))
    assert response.status_code == 200
    assert response.context["sent_today"] is None
    assert "unavailable" in response.content.decode()


@pytest.mark.django_db
def test_dashboard_query_count_does_not_grow_with_the_ips(client, superuser, tenant_a, django_assert_max_num_queries):
    client.force_login(superuser)
    url = reverse("admin:warmup_dashboard")

    def count() -> int:
        cache.clear()  # both counts include summing the tenant's history (`warmup.providers`)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx.captured_queries)

    for _ in range(3):
        AlertFactory(ip=warming(tenant_a).ip)
    few = count()
    for _ in range(27):
        AlertFactory(ip=warming(tenant_a).ip)
    with django_assert_max_num_queries(15):
        many = count()
    assert many == few


@pytest.mark.django_db
def test_dashboard_for_a_user_without_tenant_shows_nothing(client, tenant_a):
    warming(tenant_a)
    loner = UserFactory(username="loner", is_staff=True)
    client.force_login(loner)
    response = client.get(reverse("admin:warmup_dashboard"))
    assert response.status_code == 200
    assert response.context["capacity"] == 0
    assert "belong to no tenant" in response.content.decode()


@pytest.mark.django_db
def test_dashboard_needs_staff(client, tenant_a):
    user = UserFactory(username="outsider", is_staff=False)
    client.force_login(user)
    response = client.get(reverse("admin:warmup_dashboard"))
    assert response.status_code == 302 and "login" in response["Location"]


# --- Plan charts -----------------------------------------------------------------------------------------


def day(offset: int) -> dt.date:
    return TODAY + dt.timedelta(days=offset)


@pytest.fixture
def plan_with_history(tenant_a):
    """Started 9 days ago, advanced 2 days ago, paused yesterday (with a rollback), resumed today."""
    plan = WarmupPlanFactory(
        ip__domain__tenant=tenant_a,
        ip__status=IP.Status.WARMING,
        status=WarmupPlan.Status.WARMING,
        phase=WarmupPlan.Phase.WEEK_1,
        start_date=day(-9),
    )

    def event(offset, kind, phase, status):
        when = dt.datetime.combine(day(offset), dt.time(1), tzinfo=dt.UTC)
        AuditEventFactory(plan=plan, date=day(offset), created_at=when, kind=kind, to_phase=phase, to_status=status)

    event(-9, Kind.STARTED, "week_1", "warming")
    event(-2, Kind.ADVANCED, "week_2", "warming")
    event(-1, Kind.PAUSED, "week_1", "paused")
    event(0, Kind.RESUMED, "week_1", "warming")
    for offset in range(-9, -1):
        DailyStatFactory(ip=plan.ip, date=day(offset), sent=50 if offset < -2 else 200, bounced=1)
    DailyStatFactory(ip=plan.ip, date=day(-1), sent=120, bounced=12, complaints=2)
    get_store().apply([Increment(ip_id=plan.ip.pk, day=TODAY, counts={"sent": 17, "delivered": 17})])
    return plan


@pytest.mark.django_db
def test_plan_chart_replays_the_quota_from_the_timeline(plan_with_history, settings):
    chart = plan_chart_data(plan_with_history)

    assert chart["labels"] == [day(offset).isoformat() for offset in range(-9, 1)]
    assert chart["quota"] == [50] * 7 + [200, 0, 50]
    assert chart["sent"] == [50] * 7 + [200, 120, 17]  # today's is live
    assert chart["bounce_rate"][-2] == 10.0 and chart["bounce_rate"][-1] is None
    assert chart["complaint_rate"][-2] == pytest.approx(1.8519, abs=1e-4)  # 2 / 108 delivered
    assert chart["pauses"] == [{"date": day(-1).isoformat(), "label": "Paused"}]
    assert (chart["max_bounce_rate"], chart["max_spam_rate"]) == (
        settings.WARMUP_MAX_BOUNCE_RATE,
        settings.WARMUP_MAX_SPAM_RATE,
    )


@pytest.mark.django_db
def test_plan_chart_follows_event_dates_not_recording_times(tenant_a):
    """A plan imported part-way records its "started" event now, for a date in the past."""
    plan = WarmupPlanFactory(ip__domain__tenant=tenant_a, start_date=day(-3), status=WarmupPlan.Status.WARMING)
    at_one = dt.datetime.combine(day(-1), dt.time(1), tzinfo=dt.UTC)
    AuditEventFactory(plan=plan, date=day(-1), created_at=at_one, kind=Kind.ADVANCED, to_phase="week_2")
    AuditEventFactory(plan=plan, date=day(-3), created_at=NOW, kind=Kind.STARTED, to_phase="week_1")
    assert plan_chart_data(plan)["quota"] == [50, 50, 200, 200]


@pytest.mark.django_db
def test_plan_chart_of_a_plan_not_started_is_empty(tenant_a):
    plan = WarmupPlanFactory(ip__domain__tenant=tenant_a, start_date=day(3))
    chart = plan_chart_data(plan)
    assert chart["labels"] == [] and chart["quota"] == [] and chart["pauses"] == []


@pytest.mark.django_db
def test_plan_page_of_a_plan_started_today_says_when_its_first_figures_come(client, superuser, tenant_a):
    plan = WarmupPlanFactory(ip__domain__tenant=tenant_a, start_date=TODAY, status=WarmupPlan.Status.WARMING)
    assert plan_chart_data(plan)["has_stats"] is False
    client.force_login(superuser)
    html = client.get(reverse("admin:warmup_warmupplan_change", args=[plan.pk])).content.decode()
    assert "No consolidated day yet" in html and "after tomorrow's consolidation" in html
    # Today's quota is still drawn; rates have nothing to draw until a day is consolidated.
    assert 'data-wp-chart="plan-volume"' in html and 'data-wp-chart="plan-rates"' not in html

    # Days later and still nothing consolidated: no promise about tomorrow, the plain fact instead.
    plan.start_date = day(-3)
    plan.save()
    html = client.get(reverse("admin:warmup_warmupplan_change", args=[plan.pk])).content.decode()
    assert "no figures have been received for this IP since the plan started" in html
    assert "tomorrow" not in html


@pytest.mark.django_db
def test_plan_page_embeds_the_charts_and_the_timeline(client, superuser, plan_with_history):
    client.force_login(superuser)
    response = client.get(reverse("admin:warmup_warmupplan_change", args=[plan_with_history.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert '<script id="wp-plan-chart-data" type="application/json">' in html
    assert 'data-wp-chart="plan-volume"' in html and 'data-wp-chart="plan-rates"' in html
    assert "vendor/chartjs/chart.umd.min.js" in html and "warmup/charts.js" in html
    assert "No consolidated day yet" not in html
    # The timeline inline, newest first and read-only.
    timeline = response.context["inline_admin_formsets"][0]
    kinds = [form.original.kind for form in timeline]
    assert kinds == [Kind.RESUMED, Kind.PAUSED, Kind.ADVANCED, Kind.STARTED]
    assert not timeline.has_add_permission and not timeline.has_change_permission


@pytest.mark.django_db
def test_plan_page_query_count_is_bounded(client, superuser, plan_with_history, django_assert_max_num_queries):
    client.force_login(superuser)
    with django_assert_max_num_queries(20):
        assert client.get(reverse("admin:warmup_warmupplan_change", args=[plan_with_history.pk])).status_code == 200
