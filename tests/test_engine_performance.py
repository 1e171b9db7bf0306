"""The tick at scale: a query count that does not grow with the plans, and concurrent ticks on PostgreSQL."""

import datetime as dt
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from domains.models import IP, Domain
from warmup import engine
from warmup.models import AuditEvent, DailyStat, WarmupPlan

from .factories import TenantFactory

Plan = WarmupPlan
START = dt.date(2027, 1, 4)
DAY_2 = START + dt.timedelta(days=1)
NOW = dt.datetime(2027, 1, 5, 2, 0, tzinfo=dt.UTC)


def build(n: int, tenant) -> list[Plan]:
    """n plans in each state the tick handles: starting, qualifying, advancing, completed; in bulk."""
    domains = Domain.objects.bulk_create(
        [Domain(tenant=tenant, name=f"m{i}.{tenant.slug}.example.com") for i in range(4 * n)]
    )
    ips = IP.objects.bulk_create(
        [
            IP(tenant=tenant, domain=d, address=f"10.{tenant.pk % 250}.{i // 250}.{i % 250}")
            for i, d in enumerate(domains)
        ]
    )
    steps = [50, 200, 500, 1500, 5000, 10000]
    plans = []
    for i, ip in enumerate(ips):
        kind = i % 4
        common = {"ip": ip, "steps": steps, "start_date": START}
        if kind == 0:
            plans.append(Plan(status=Plan.Status.SCHEDULED, start_date=DAY_2, ip=ip, steps=steps))
        elif kind in (1, 2):
            count = 6 if kind == 2 else 2  # kind 2 advances to week 2
            plans.append(
                Plan(
                    **common,
                    status=Plan.Status.WARMING,
                    last_ticked_date=START,
                    window_start_date=START,
                    phase_day_count=count,
                )
            )
        else:
            plans.append(
                Plan(
                    **common,
                    status=Plan.Status.COMPLETED,
                    phase=Plan.Phase.COMPLETED,
                    completed_on=START,
                    last_ticked_date=START,
                )
            )
    plans = Plan.objects.bulk_create(plans)
    DailyStat.objects.bulk_create(
        [DailyStat(ip=ip, date=START, sent=150, delivered=149, bounced=1) for ip in ips[1::4] + ips[2::4]]
    )
    return plans


@pytest.mark.django_db
def test_the_tick_query_count_does_not_grow_with_the_number_of_plans():
    counts = []
    for n in (5, 50):
        tenant = TenantFactory()
        build(n, tenant)
        with CaptureQueriesContext(connection) as queries:
            report = engine.tick(as_of=DAY_2, tenants=[tenant], now=NOW)
        assert report.plans_processed == 4 * n
        assert sorted({e.kind for e in report.events}) == ["advanced", "started"]
        assert len(report.events) == 2 * n
        counts.append(len(queries))
    assert counts[0] == counts[1]
    assert counts[0] <= 12


@pytest.mark.django_db
def test_the_bulk_write_keeps_every_plan_field():
    tenant = TenantFactory()
    plans = build(3, tenant)
    engine.tick(as_of=DAY_2, tenants=[tenant], now=NOW)
    by_kind = {}
    for i, plan in enumerate(plans):
        by_kind.setdefault(i % 4, []).append(Plan.objects.select_related("ip").get(pk=plan.pk))
    assert {(p.status, p.phase, p.last_ticked_date, p.window_start_date, p.ip.status) for p in by_kind[0]} == {
        ("warming", "week_1", DAY_2, DAY_2, "warming")
    }
    assert {(p.phase, p.phase_day_count) for p in by_kind[1]} == {("week_1", 3)}
    assert {(p.phase, p.phase_day_count) for p in by_kind[2]} == {("week_2", 0)}
    assert {(p.status, p.last_ticked_date, p.paused_until) for p in by_kind[3]} == {("completed", DAY_2, None)}
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
    assert sorted(r.plans_processed for r in reports) == [0, 40]
    assert AuditEvent.objects.count() == 20
    assert AuditEvent.objects.filter(kind="advanced").count() == 10
    states = {(p.status, p.phase, p.phase_day_count, p.last_ticked_date) for p in Plan.objects.all()}
    assert states == {
        ("warming", "week_1", 0, DAY_2),
        ("warming", "week_1", 3, DAY_2),
        ("warming", "week_2", 0, DAY_2),
        ("completed", "completed", 0, DAY_2),
    }
    assert len(plans) == 40
