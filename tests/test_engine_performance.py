"""The tick at scale: a query count that does not grow with the plans, and concurrent ticks on PostgreSQL."""

import datetime as dt
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from domains.models import IP, Domain
from warmup import engine
from warmup.models import Alert, AuditEvent, DailyStat, WarmupPlan

from .factories import TenantFactory

Plan = WarmupPlan
START = dt.date(2027, 1, 4)
DAY_2 = START + dt.timedelta(days=1)
NOW = dt.datetime(2027, 1, 5, 2, 0, tzinfo=dt.UTC)


KINDS = ("scheduled", "qualifying", "advancing", "completed", "pausing", "resuming")


def build(n: int, tenant) -> list[Plan]:
    """n plans of each kind the tick handles (see KINDS), in bulk; plan i is of kind KINDS[i % 6]."""
    domains = Domain.objects.bulk_create(
        [Domain(tenant=tenant, name=f"m{i}.{tenant.slug}.example.com") for i in range(len(KINDS) * n)]
    )
    ips = IP.objects.bulk_create(
        [
            IP(tenant=tenant, domain=d, address=f"10.{tenant.pk % 250}.{i // 250}.{i % 250}")
            for i, d in enumerate(domains)
        ]
    )
    steps = [50, 200, 500, 1500, 5000, 10000]
    plans, stats = [], []
    for i, ip in enumerate(ips):
        kind = KINDS[i % len(KINDS)]
        plan = Plan(ip=ip, steps=steps, start_date=START, last_ticked_date=START, window_start_date=START)
        if kind == "scheduled":
            plan.start_date, plan.last_ticked_date, plan.window_start_date = DAY_2, None, None
        elif kind in ("qualifying", "advancing", "pausing"):
            plan.status = Plan.Status.WARMING
            plan.phase_day_count = 6 if kind == "advancing" else 2
            bounced = 30 if kind == "pausing" else 1
            stats.append(DailyStat(ip=ip, date=START, sent=150, delivered=150 - bounced, bounced=bounced))
        elif kind == "completed":
            plan.status, plan.phase, plan.completed_on = Plan.Status.COMPLETED, Plan.Phase.COMPLETED, START
        else:
            plan.status, plan.phase = Plan.Status.PAUSED, Plan.Phase.WEEK_2
            plan.paused_until = dt.datetime(2027, 1, 5, 1, 0, tzinfo=dt.UTC)
        plans.append(plan)
    plans = Plan.objects.bulk_create(plans)
    DailyStat.objects.bulk_create(stats)
    return plans


@pytest.mark.django_db
def test_the_tick_query_count_does_not_grow_with_the_number_of_plans():
    counts = []
    for n in (5, 50):
        tenant = TenantFactory()
        build(n, tenant)
        with CaptureQueriesContext(connection) as queries:
            report = engine.tick(as_of=DAY_2, tenants=[tenant], now=NOW)
        assert report.plans_processed == len(KINDS) * n
        kinds = [e.kind for e in report.events]
        assert {kind: kinds.count(kind) for kind in set(kinds)} == {
            "started": n,
            "advanced": n,
            "paused": n,
            "resumed": n,
        }
        assert Alert.objects.filter(ip__tenant=tenant).count() == 2 * n
        counts.append(len(queries))
    assert counts[0] == counts[1]
    assert counts[0] <= 14


@pytest.mark.django_db
def test_the_bulk_write_keeps_every_plan_field():
    tenant = TenantFactory()
    plans = build(3, tenant)
    engine.tick(as_of=DAY_2, tenants=[tenant], now=NOW)
    by_kind = {}
    for i, plan in enumerate(plans):
        by_kind.setdefault(KINDS[i % len(KINDS)], []).append(Plan.objects.select_related("ip").get(pk=plan.pk))

    def states(kind, *fields):
        return {tuple(getattr(p, f) if f != "ip" else p.ip.status for f in fields) for p in by_kind[kind]}

    fields = ("status", "phase", "phase_day_count", "last_ticked_date", "window_start_date", "ip")
    assert states("scheduled", *fields) == {("warming", "week_1", 0, DAY_2, DAY_2, "warming")}
    assert states("qualifying", *fields) == {("warming", "week_1", 3, DAY_2, START, "pending")}
    assert states("advancing", *fields) == {("warming", "week_2", 0, DAY_2, START, "pending")}
    assert states("completed", "status", "last_ticked_date", "paused_until") == {("completed", DAY_2, None)}
    pause_end = dt.datetime(2027, 1, 7, 1, 0, tzinfo=dt.UTC)
    assert states("pausing", "status", "phase", "paused_until", "auto_pause_count", "ip") == {
        ("paused", "week_1", pause_end, 1, "paused")
    }
    assert all(p.pause_reason.startswith("bounce rate 20.00% > 5.00%") for p in by_kind["pausing"])
    assert states("resuming", "status", "phase", "paused_until", "window_start_date", "pause_reason", "ip") == {
        ("warming", "week_2", None, DAY_2, "", "warming")
    }
    assert all(p.updated_at == NOW for group in by_kind.values() for p in group)


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_ticks_end_in_the_same_state_as_one():
    tenant = TenantFactory()
    plans = build(10, tenant)
    errors = []
    reports = []

    def run():
        try:
            reports.append(engine.tick(as_of=DAY_2, now=NOW))
        except Exception as exc:  # reported to the test below
            errors.append(exc)
        finally:
            connections.close_all()

    # Hold the plans so that both ticks queue on their locks and are released together.
    with transaction.atomic():
        list(Plan.objects.select_for_update().values_list("pk", flat=True))
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(r.plans_processed for r in reports) == [0, 60]
    assert AuditEvent.objects.count() == 40
    assert Alert.objects.count() == 20
    assert AuditEvent.objects.filter(kind="advanced").count() == 10
    states = {(p.status, p.phase, p.phase_day_count, p.last_ticked_date) for p in Plan.objects.all()}
    assert states == {
        ("warming", "week_1", 0, DAY_2),
        ("warming", "week_1", 3, DAY_2),
        ("warming", "week_2", 0, DAY_2),
        ("completed", "completed", 0, DAY_2),
        ("paused", "week_1", 0, DAY_2),
    }
    assert len(plans) == 60
