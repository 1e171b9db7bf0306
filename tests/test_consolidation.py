"""Consolidation: finished IP-days move into DailyStat exactly once, on both counter stores."""

import signal
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import DailyStatFactory, IPFactory, TenantFactory
from tests.support import make_store, run_script, start_script, subprocess_env
from warmup.consolidation import consolidate
from warmup.counters import Increment, RedisCounterStore
from warmup.models import ConsolidationBatch, DailyStat

NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)  # 2027-03-11 01:00 in Auckland
TODAY = date(2027, 3, 10)
YESTERDAY = TODAY - timedelta(days=1)


@pytest.fixture(params=["redis", "database"])
def backend(request):
    return request.param


@pytest.fixture
def store(backend, request):
    return make_store(backend, request)


@pytest.fixture
def ip(db):
    return IPFactory(domain__tenant=TenantFactory(time_zone="UTC"))


@pytest.fixture
def run(django_capture_on_commit_callbacks, store):
    """Consolidate as the task does: the test's transaction stands in for the commit."""

    def run_consolidation(now=NOW):
        with django_capture_on_commit_callbacks(execute=True):
            return consolidate(now=now, store=store)

    return run_consolidation


def test_finished_days_move_to_daily_stats_with_provider_figures(store, run, ip):
    store.apply(
        [
            Increment(ip.id, YESTERDAY, {"sent": 3, "delivered": 3}, "gmail"),
            Increment(ip.id, YESTERDAY, {"sent": 2, "bounced": 1, "bounced_hard": 1}, "microsoft"),
            Increment(ip.id, YESTERDAY, {"opens": 1}, "gmail", "open-1"),
            Increment(ip.id, TODAY, {"sent": 7}),
        ]
    )

    report = run()

    stat = DailyStat.objects.get(ip=ip, date=YESTERDAY)
    assert (stat.sent, stat.delivered, stat.bounced, stat.bounced_hard, stat.opens) == (5, 3, 1, 1, 1)
    assert stat.by_provider == {
        "gmail": {"sent": 3, "delivered": 3, "opens": 1},
        "microsoft": {"sent": 2, "bounced": 1, "bounced_hard": 1},
    }
    assert (report.ip_days, report.increments) == (1, 11)
    # Today is not finished: it stays live in the store.
    assert not DailyStat.objects.filter(date=TODAY).exists()
    assert store.read(ip.id, TODAY)["sent"] == 7
    assert store.read(ip.id, YESTERDAY)["sent"] == 0


def test_a_day_is_finished_in_the_tenants_zone(store, run, ip):
    auckland_ip = IPFactory(domain__tenant=TenantFactory(time_zone="Pacific/Auckland"))
    store.apply([Increment(ip.id, TODAY, {"sent": 1}), Increment(auckland_ip.id, TODAY, {"sent": 2})])

    run()

    assert list(DailyStat.objects.values_list("ip_id", "date", "sent")) == [(auckland_ip.id, TODAY, 2)]


def test_late_increments_on_a_week_old_day_consolidate_onto_that_day(store, run, ip):
    week_ago = TODAY - timedelta(days=7)
    DailyStatFactory(ip=ip, date=week_ago, sent=100, bounced=2)
    store.apply([Increment(ip.id, week_ago, {"bounced": 1, "complaints": 1}, "yahoo")])

    run()

    stat = DailyStat.objects.get(ip=ip, date=week_ago)
    assert (stat.sent, stat.bounced, stat.complaints) == (100, 3, 1)
    assert stat.by_provider == {"yahoo": {"bounced": 1, "complaints": 1}}


def test_running_again_moves_nothing_twice_and_adds_what_arrived_since(store, run, ip):
    store.apply([Increment(ip.id, YESTERDAY, {"sent": 4})])
    run()

    assert run().ip_days == 0
    assert DailyStat.objects.get(ip=ip, date=YESTERDAY).sent == 4

    store.apply([Increment(ip.id, YESTERDAY, {"sent": 1, "opens": 2})])
    run()
    stat = DailyStat.objects.get(ip=ip, date=YESTERDAY)
    assert (stat.sent, stat.opens) == (5, 2)


def test_an_interrupted_redis_batch_is_applied_once_by_the_next_run(
    redis_client, django_capture_on_commit_callbacks, ip
):
    store = RedisCounterStore(redis_client)
    store.apply([Increment(ip.id, YESTERDAY, {"sent": 3}), Increment(ip.id, TODAY - timedelta(2), {"sent": 5})])
    # A run killed after setting the days aside; the ledger shows yesterday's batch made it to the database.
    batches = {batch.day: batch for batch in store.claim([(ip.id, YESTERDAY), (ip.id, TODAY - timedelta(2))])}
    applied = batches[YESTERDAY]
    ConsolidationBatch.objects.create(batch_id=applied.batch_id, ip=ip, date=applied.day)

    with django_capture_on_commit_callbacks(execute=True):
        report = consolidate(now=NOW, store=store)

    assert report.recovered == 2
    assert list(DailyStat.objects.order_by("date").values_list("date", "sent")) == [(TODAY - timedelta(2), 5)]
    assert store.in_flight() == []
    # Nothing of those days is left but their de-duplication sets, which expire by themselves.
    assert {key.decode()[-2:] for key in redis_client.keys("wp:{ip:*")} == {":d"}


def test_counts_of_a_deleted_ip_are_dropped_not_left_pending(redis_client, django_capture_on_commit_callbacks, ip):
    store = RedisCounterStore(redis_client)
    store.apply([Increment(ip.id + 1000, YESTERDAY, {"sent": 3})])

    with django_capture_on_commit_callbacks(execute=True):
        consolidate(now=NOW, store=store)

    assert not DailyStat.objects.exists()
    assert store.pending_ip_days() == [] and store.in_flight() == []


def test_query_count_does_not_grow_with_the_number_of_ips(store, run, db):
    tenant = TenantFactory(time_zone="Europe/Paris")

    def queries_for(n: int) -> int:
        ips = IPFactory.create_batch(n, domain__tenant=tenant)
        store.apply([Increment(i.id, YESTERDAY, {"sent": 1}, "gmail") for i in ips])
        with CaptureQueriesContext(connection) as queries:
            report = run()
        assert report.ip_days == n
        return len(queries)

    assert queries_for(5) == queries_for(50) <= 12


def test_consolidation_runs_without_cyclic_garbage_collections(store, django_capture_on_commit_callbacks, db):
    # A quarter of the time of 10,000 IP-days went to collections that found nothing (bench/README.md).
    import gc

    tenant = TenantFactory(time_zone="UTC")
    ips = IPFactory.create_batch(300, domain__tenant=tenant)
    store.apply([Increment(i.id, YESTERDAY, {"sent": 2, "delivered": 1}, p) for i in ips for p in ("gmail", "other")])
    collections = []

    def note(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    with django_capture_on_commit_callbacks() as after_commit:
        gc.collect()  # the allocation count starts from zero: no collection is due at the first step
        gc.callbacks.append(note)
        try:
            report = consolidate(now=NOW, store=store)
        finally:
            gc.callbacks.remove(note)
    for callback in after_commit:  # what the commit does afterwards (forgetting Redis batches)
        callback()

    assert report.ip_days == 300
    assert DailyStat.objects.filter(date=YESTERDAY).count() == 300
    # At most the one that falls due when collections resume (without the pause: one per 700 objects).
    assert len(collections) <= 1
    assert gc.isenabled()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("backend", "steps"),
    [
        ("redis", ["claimed", "read", "written", "leftovers_forgotten", "committed", "forgotten", "written"]),
        ("database", ["read", "written", "deleted", "committed", "read"]),
    ],
)
def test_killed_consolidation_re_run_counts_every_increment_exactly_once(backend, steps, request, tmp_path):
    if backend == "redis":
        request.getfixturevalue("redis_client")
    ip = IPFactory(domain__tenant=TenantFactory(time_zone="UTC"))
    # Real processes read the real clock: days well before today survive a midnight during the test.
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=2), today - timedelta(days=7)]
    env = subprocess_env(WARMUP_COUNTER_BACKEND=backend)
    stop = tmp_path / "stop"
    writer = start_script(
        "apply_increments", str(ip.id), ",".join(map(str, days)), "5", "10", "crash-", str(stop), env=env
    )
    try:
        time.sleep(1.0)
        crashes = run_script("consolidate_and_die", *steps, env=env, timeout=120)
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-2000:]
    # Every run was killed at its step (signal 9), none failed otherwise.
    assert crashes.stdout.split() == [f"{step}={signal.SIGKILL.value}" for step in steps], crashes.stderr[-2000:]

    finished = run_script("consolidate_and_die", "never", env=env)
    assert finished.stdout.split() == ["never=0"], finished.stderr[-2000:]

    made = dict(item.split("=") for item in out.strip().splitlines()[-1].split())
    consolidated = dict(DailyStat.objects.filter(ip=ip).values_list("date", "sent"))
    assert {day: consolidated.get(day, 0) for day in days} == {day: int(made[day.isoformat()]) for day in days}
    assert sum(consolidated.values()) > 0
