"""Failure behaviour: what the portal does while a component is down, and that it converges afterwards.

- Counter store (Redis) down: the admin, the monitoring API and the consolidated statistics still answer,
  today's live figures shown as unavailable / null (webhooks answer 503: tests/test_webhooks_redis_down.py).
- Database down during consolidation, before it starts or after it has set counters aside: the counts stay
  in Redis, the Celery task raises and is retried, and the next run moves them exactly once.
- Beat down for several days: one late tick through the task ends in the same state as daily ticks
  (the engine's own catch-up tests are in tests/test_engine.py; this runs the counter store,
  consolidation and the task too).
"""

import datetime as dt
import socket
from contextlib import contextmanager

import pytest
import time_machine
from django.db import InterfaceError, OperationalError, connections
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from warmup import consolidation, tasks
from warmup.counters import CounterStoreUnavailable, RedisCounterStore, get_store
from warmup.models import AuditEvent, DailyStat, WarmupPlan
from warmup.stats import record_stats

from .factories import (
    DailyStatFactory,
    DomainFactory,
    IPFactory,
    TenantFactory,
    make_member,
    plan_in_state,
)

NOW = dt.datetime(2027, 1, 20, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
YESTERDAY = TODAY - dt.timedelta(days=1)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Counter store down ------------------------------------------------------------------------------------


@pytest.fixture
def operator(db):
    tenant = TenantFactory(slug="alpha", name="Alpha")
    user = make_member("alice", tenant)
    plan = plan_in_state("warming", tenant=tenant, address="10.0.0.1", phase="week_2", today=TODAY)
    DailyStatFactory(ip=plan.ip, date=YESTERDAY, sent=180, bounced=3)
    return user, plan


@time_machine.travel(NOW, tick=False)
def test_with_the_counter_store_down_the_admin_and_the_api_answer_with_todays_figures_unavailable(
    client, operator, counter_store_down
):
    user, plan = operator
    client.force_login(user)
    changelist = client.get(reverse("admin:domains_ip_changelist"))
    assert changelist.status_code == 200
    assert "unavailable" in changelist.content.decode()
    for url in (
        reverse("admin:domains_ip_change", args=[plan.ip_id]),
        reverse("admin:warmup_warmupplan_changelist"),
        reverse("admin:warmup_warmupplan_change", args=[plan.pk]),
        reverse("admin:warmup_dashboard"),
    ):
        assert client.get(url).status_code == 200, url

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    status = api.get("/api/v1/warmup")
    assert status.status_code == 200
    (entry,) = status.json()["ips"]
    assert (entry["ip"], entry["daily_quota"], entry["sent_today"], entry["remaining_today"]) == (
        "10.0.0.1",
        200,
        None,
        None,
    )
    # Consolidated figures live in the database: unaffected.
    stats = api.get("/api/v1/ips/10.0.0.1/stats")
    assert stats.status_code == 200 and [row["sent"] for row in stats.json()] == [180]
    # A manual action still works (it needs no live figure) and says today's sending is unknown.
    action = api.post("/api/v1/plans/10.0.0.1/pause", {"reason": "checking"}, format="json")
    assert action.status_code == 200 and action.json()["ip"]["sent_today"] is None
    # Recording counts cannot work: 503, nothing half-done.
    assert api.post("/api/v1/ips/10.0.0.1/stats", {"sent": 5}, format="json").status_code == 503
    # The probe says which component is down.
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["counter_store"].startswith("error:") and health.json()["database"] == "ok"


@time_machine.travel(NOW, tick=False)
def test_consolidation_with_the_counter_store_down_fails_and_touches_nothing(operator, counter_store_down):
    with pytest.raises(CounterStoreUnavailable) as failure:
        tasks.consolidate_warmup_stats_task()
    assert "unreachable" in str(failure.value).lower()
    assert DailyStat.objects.get().sent == 180


@time_machine.travel(NOW, tick=False)
def test_consolidation_with_the_counter_store_down_is_retried(operator, counter_store_down, retries):
    result = tasks.consolidate_warmup_stats_task.apply()
    assert len(retries) == tasks.consolidate_warmup_stats_task.max_retries
    assert result.state == "FAILURE"
    assert DailyStat.objects.get().sent == 180


# --- Database down during consolidation ---------------------------------------------------------------------


@contextmanager
def database_down():
    """The default connection pointed at a closed port (a real refused connection), then restored."""
    connection = connections["default"]
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(closed_port())
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port


@pytest.fixture
def counted(redis_client):
    """Two IPs with counts recorded yesterday and today through the Redis counter store."""
    tenant = TenantFactory(slug="alpha", name="Alpha", time_zone="UTC")
    ips = [IPFactory(domain=DomainFactory(tenant=tenant)) for _ in range(2)]
    for n, ip in enumerate(ips, start=1):
        record_stats(ip, {"sent": 100 * n, "delivered": 90 * n, "bounced": 10 * n}, YESTERDAY)
        record_stats(ip, {"sent": 7}, TODAY)
    store = get_store()
    assert isinstance(store, RedisCounterStore)
    return ips, store


def live_figures(store, ips) -> list[dict]:
    return [store.read(ip.pk, day) for ip in ips for day in (YESTERDAY, TODAY)]


@pytest.mark.django_db(transaction=True)
@time_machine.travel(NOW, tick=False)
def test_database_down_before_consolidation_leaves_the_counters_in_redis_and_the_task_retries(counted, retries):
    ips, store = counted
    before = live_figures(store, ips)
    with database_down():
        result = tasks.consolidate_warmup_stats_task.apply()
    # Retried max_retries times (eagerly here; with backoff on a worker), then reported as failed.
    assert len(retries) == tasks.consolidate_warmup_stats_task.max_retries
    assert result.state == "FAILURE"
    assert isinstance(result.result, OperationalError | InterfaceError)
    assert live_figures(store, ips) == before
    assert store.in_flight() == []
    assert not DailyStat.objects.exists()

    # The database is back: the next run moves yesterday exactly once, and leaves today alone.
    assert tasks.consolidate_warmup_stats_task.apply().state == "SUCCESS"
    assert sorted(DailyStat.objects.values_list("ip_id", "date", "sent", "bounced")) == [
        (ips[0].pk, YESTERDAY, 100, 10),
        (ips[1].pk, YESTERDAY, 200, 20),
    ]
    assert [store.read(ip.pk, TODAY)["sent"] for ip in ips] == [7, 7]
    assert store.in_flight() == []


@pytest.mark.django_db(transaction=True)
@time_machine.travel(NOW, tick=False)
def test_database_lost_after_counters_were_set_aside_is_recovered_exactly_once(counted, monkeypatch):
    ips, store = counted
    port = connections["default"].settings_dict["PORT"]

    def lose_the_database(step: str) -> None:
        if step == "claimed":  # the IP-days are renamed to batches in Redis; nothing written yet
            connections["default"].close()
            connections["default"].settings_dict["PORT"] = str(closed_port())

    monkeypatch.setattr(consolidation, "checkpoint", lose_the_database)
    try:
        with pytest.raises((OperationalError, InterfaceError)):
            tasks.consolidate_warmup_stats_task()
    finally:
        connections["default"].close()
        connections["default"].settings_dict["PORT"] = port
        monkeypatch.undo()

    # The counts wait in Redis, set aside as in-flight batches; no figure was lost or written.
    assert len(store.in_flight()) == 2
    assert not DailyStat.objects.exists()
    # More events for yesterday arrive meanwhile (a late open).
    record_stats(ips[0], {"opens": 5}, YESTERDAY)

    report = tasks.consolidate_warmup_stats_task()
    assert report["recovered"] == 2
    assert sorted(DailyStat.objects.values_list("ip_id", "sent", "bounced", "opens")) == [
        (ips[0].pk, 100, 10, 5),
        (ips[1].pk, 200, 20, 0),
    ]
    assert store.in_flight() == []
    # Running again changes nothing.
    tasks.consolidate_warmup_stats_task()
    assert sorted(DailyStat.objects.values_list("ip_id", "sent")) == [(ips[0].pk, 100), (ips[1].pk, 200)]


# --- Beat down for several days ------------------------------------------------------------------------------

START = dt.date(2027, 3, 1)


def day_n(n: int) -> dt.date:
    return START + dt.timedelta(days=n - 1)


def scenario(name: str, address: str) -> WarmupPlan:
    """A plan started on day 1 in a tenant of its own (a plan already ticked to day 15 is left alone by
    later ticks, so the two runs of the test do not disturb each other)."""
    tenant = TenantFactory(slug=name, name=name.title(), time_zone="Europe/Paris")
    ip = IPFactory(domain=DomainFactory(tenant=tenant, status="warming"), status="warming", address=address)
    return WarmupPlan.objects.create(
        ip=ip,
        steps=[50, 200, 500, 1500, 5000, 10000],
        phase_days=7,
        start_date=START,
        status=WarmupPlan.Status.WARMING,
        last_ticked_date=START,
        window_start_date=START,
    )


def send(plan: WarmupPlan, n: int) -> None:
    """Day n's sending, recorded through the counter store as the webhooks would: a clean first week,
    a bouncing day 9 (pause and rollback), clean days after."""
    sent = 50 if n <= 7 else 200 if n < 10 else 50
    record_stats(plan.ip, {"sent": sent, "delivered": sent, "bounced": 40 if n == 9 else 0}, day_n(n))


def at_half_past_one(n: int):
    moment = dt.datetime.combine(day_n(n), dt.time(1, 30)).replace(tzinfo=dt.timezone(dt.timedelta(hours=1)))
    return time_machine.travel(moment, tick=False)


def outcome(plan: WarmupPlan) -> tuple:
    plan = WarmupPlan.objects.select_related("ip").get(pk=plan.pk)
    events = [
        (e.date, e.kind, e.from_phase, e.to_phase, e.from_status, e.to_status)
        for e in AuditEvent.objects.filter(plan=plan).order_by("date", "id")
    ]
    stats = list(DailyStat.objects.filter(ip=plan.ip).order_by("date").values_list("date", "sent", "bounced"))
    state = (plan.status, plan.phase, plan.phase_day_count, plan.last_ticked_date, plan.window_start_date,
             plan.paused_until, plan.auto_pause_count, plan.ip.status)  # fmt: skip
    return state, events, stats


@pytest.mark.django_db
def test_one_tick_after_a_beat_outage_of_days_converges_to_daily_ticks(redis_client, settings):
    settings.WARMUP_DRY_RUN = True  # alerts recorded, none sent

    plan = scenario("daily", "10.9.0.1")
    for n in range(1, 15):
        send(plan, n)
        with at_half_past_one(n + 1):
            tasks.advance_warmup_task()
    daily = outcome(plan)

    plan = scenario("late", "10.9.0.2")
    for n in range(1, 15):
        send(plan, n)
    with at_half_past_one(15):  # beat was down from day 2 to day 15
        result = tasks.advance_warmup_task()
    late = outcome(plan)

    assert result["dates"][0] == day_n(2).isoformat() and result["dates"][-1] == day_n(15).isoformat()
    assert late == daily
    kinds = [event[1] for event in daily[1]]
    assert "advanced" in kinds and "paused" in kinds and "resumed" in kinds
    assert len(daily[2]) == 14  # every recorded day reached the daily stats
