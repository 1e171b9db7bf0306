"""Every documented alert is raised by its real entry point, and alerts leave through a Celery task.

- Quota overrun: consolidation run by the scheduled task, by `consolidate_stats` or by the tick's
  catch-up raises one alert per IP-day that sent over WARMUP_QUOTA_OVERRUN_FACTOR x its quota.
- Consolidation failure: one alert per failing run (its retries included), the task still failing so
  that Celery retries it; with the database down, recorded by a real worker once the database is back.
- Counter store unhealthy: the periodic check against a Redis of the test's own set to evict keys, and
  against a closed port; again every hour while it lasts, and "healthy again" once it passes.
- Unattributed spike: webhook posts whose dead letters reach the threshold within a window raise one
  alert per tenant and window.
- Delivery: an admin action on 50 plans with Telegram down only queues 50 tasks; a real worker delivers
  them once Telegram is back; the periodic sweep queues again what is left undelivered.

Telegram is a real local HTTP server (tests/test_alerts.py); "down" is a closed port.
"""

import datetime as dt
import time

import pytest
import redis
import time_machine
from django.core.management import call_command
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from domains.models import WebhookToken
from warmup import alerts, engine, tasks
from warmup.models import Alert, WarmupPlan

from .factories import DomainFactory, IPFactory, TenantFactory, make_member, plan_in_state
from .support import OwnRedis, free_port
from .telegram_support import TOKEN, closed_port, running_fake_telegram
from .test_beat_e2e import celery_processes, wait_until
from .test_reliability_failures import database_down
from .webhooks_support import Poster

NOW = dt.datetime(2027, 1, 20, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
YESTERDAY = TODAY - dt.timedelta(days=1)


def texts_of(fake, kind_marker: str) -> list[str]:
    return [text for text in fake.texts() if kind_marker in text]


# --- Quota overrun, from each entry point of consolidation ------------------------------------------------


def consolidate_by_task():
    tasks.consolidate_warmup_stats_task()


def consolidate_by_command():
    call_command("consolidate_stats", verbosity=0)


def consolidate_by_tick():
    engine.tick(as_of=TODAY)  # judges yesterday, consolidating it first


@pytest.mark.parametrize("run", [consolidate_by_task, consolidate_by_command, consolidate_by_tick])
@time_machine.travel(NOW, tick=False)
def test_an_ip_over_its_quota_raises_one_overrun_alert_from_every_entry_point(
    run, db, fake_telegram, redis_client, django_capture_on_commit_callbacks
):
    from warmup.stats import record_stats

    tenant = TenantFactory(time_zone="UTC")
    over = plan_in_state("warming", tenant=tenant, address="10.0.0.1", phase="week_1", today=YESTERDAY)
    within = plan_in_state("warming", tenant=tenant, address="10.0.0.2", phase="week_1", today=YESTERDAY)
    record_stats(over.ip, {"sent": 60, "delivered": 60}, YESTERDAY)  # quota 50: 120 %
    record_stats(within.ip, {"sent": 55, "delivered": 55}, YESTERDAY)  # 110 %: allowed

    with django_capture_on_commit_callbacks(execute=True):
        run()
    with django_capture_on_commit_callbacks(execute=True):
        run()  # again: nothing new

    (alert,) = Alert.objects.filter(kind=Alert.Kind.QUOTA_OVERRUN)
    assert alert.ip == over.ip and alert.delivery == Alert.Delivery.SENT
    assert alert.figures == {"date": YESTERDAY.isoformat(), "sent": 60, "quota": 50, "percent_of_quota": 120.0}
    (text,) = texts_of(fake_telegram, "Quota overrun")
    assert "10.0.0.1" in text and "sent 60 on 2027-01-19 against a quota of 50 (120%, limit 110%)" in text


# --- Consolidation failure -----------------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_a_failing_consolidation_task_raises_one_alert_for_all_its_retries_and_still_fails(
    fake_telegram, counter_store_down, retries, tenant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        result = tasks.consolidate_warmup_stats_task.apply()
    assert result.state == "FAILURE"  # Celery saw it fail, and retried it
    assert len(retries) == tasks.consolidate_warmup_stats_task.max_retries
    (alert,) = Alert.objects.filter(kind=Alert.Kind.CONSOLIDATION_FAILED)
    assert alert.delivery == Alert.Delivery.SENT
    assert alert.figures["run"] == result.id
    (text,) = texts_of(fake_telegram, "Consolidation failed")
    assert "unreachable" in text.lower()

    # The next scheduled run is another occurrence: one more alert.
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.consolidate_warmup_stats_task.apply().state == "FAILURE"
    assert Alert.objects.filter(kind=Alert.Kind.CONSOLIDATION_FAILED).count() == 2


def test_the_command_raises_the_failure_alert_too(fake_telegram, counter_store_down, tenant):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="unreachable"):
        call_command("consolidate_stats")
    assert Alert.objects.filter(kind=Alert.Kind.CONSOLIDATION_FAILED).count() == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_with_the_database_down_the_failure_is_recorded_once_by_a_worker_when_it_is_back(
    redis_client, retries, tmp_path, settings
):
    settings.TELEGRAM_BOT_TOKEN, settings.TELEGRAM_CHAT_ID = TOKEN, "-1001"
    with running_fake_telegram() as fake:
        with database_down():
            result = tasks.consolidate_warmup_stats_task.apply()
        assert result.state == "FAILURE" and len(retries) == tasks.consolidate_warmup_stats_task.max_retries
        assert not Alert.objects.exists()  # nothing could be recorded meanwhile
        assert redis_client.llen("celery") == 1 + len(retries)  # one deferred alert per attempt

        environment = {"TELEGRAM_API_URL": fake.url, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "-1001"}
        with celery_processes(tmp_path, ("worker",), **environment) as logs:
            wait_until(lambda: Alert.objects.filter(delivery=Alert.Delivery.SENT).exists(), 60, logs)
            wait_until(lambda: redis_client.llen("celery") == 0, 30, logs)
            time.sleep(1)  # any second alert would have been queued and sent by now
    (alert,) = Alert.objects.all()
    assert alert.kind == Alert.Kind.CONSOLIDATION_FAILED and alert.figures["run"] == result.id
    assert len(texts_of(fake, "Consolidation failed")) == 1


# --- Counter store unhealthy --------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path, settings):
    server = OwnRedis(tmp_path, free_port())
    server.start()
    settings.REDIS_URL, settings.WARMUP_COUNTER_BACKEND = server.url, "redis"
    yield redis.Redis.from_url(server.url)
    server.stop()


def test_a_redis_set_to_evict_keys_is_reported_hourly_while_it_lasts_then_healthy_again(
    fake_telegram, own_redis, db, django_capture_on_commit_callbacks
):
    def check(minutes: int) -> str:
        with time_machine.travel(NOW + dt.timedelta(minutes=minutes), tick=False):
            with django_capture_on_commit_callbacks(execute=True):
                return tasks.check_counter_store_task()["counter_store"]

    def unhealthy() -> list[str]:
        return texts_of(fake_telegram, "Counter store unhealthy")

    def healthy_again() -> list[str]:
        return texts_of(fake_telegram, "Counter store healthy again")

    assert check(0) == "ok" and not Alert.objects.exists()

    own_redis.config_set("maxmemory", "100mb")
    own_redis.config_set("maxmemory-policy", "allkeys-lru")
    for minutes in (0, 5, 55):  # the schedule's runs within an hour of the first: one alert
        assert "maxmemory-policy allkeys-lru" in check(minutes)
    (text,) = unhealthy()
    assert "may evict keys" in text and "set maxmemory-policy noeviction" in text
    first = Alert.objects.get(kind=Alert.Kind.COUNTER_STORE_UNHEALTHY)
    assert first.delivery == Alert.Delivery.SENT and first.tenant is None

    check(60)  # an hour on: a reminder
    assert len(unhealthy()) == 2 and not healthy_again()
    assert unhealthy()[-1].startswith("🧯 Counter store unhealthy (for 1 h 00 min): Redis may evict keys")

    own_redis.config_set("maxmemory-policy", "noeviction")
    assert check(70) == "ok" and check(75) == "ok"  # closed once
    (text,) = healthy_again()
    assert text.startswith("✅ Counter store healthy again after 1 h 10 min (unhealthy since 2027-01-20 12:00 UTC")

    own_redis.config_set("maxmemory-policy", "volatile-lru")  # again, within the hour of the reminder
    assert "volatile-lru" in check(80)
    assert len(unhealthy()) == 3 and "volatile-lru" in unhealthy()[-1]
    assert Alert.objects.filter(kind=Alert.Kind.COUNTER_STORE_UNHEALTHY).count() == 3


@time_machine.travel(NOW, tick=False)
def test_an_unreachable_counter_store_raises_the_alert(
    fake_telegram, counter_store_down, db, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        result = tasks.check_counter_store_task.apply()
    assert result.state == "SUCCESS"
    assert result.result["counter_store"].startswith("error: CounterStoreUnavailable: Redis is unreachable: ")
    (text,) = texts_of(fake_telegram, "Counter store unhealthy")
    assert text.startswith("🧯 Counter store unhealthy: Redis is unreachable: Error 111 connecting to 127.0.0.1:")
    assert text.endswith("Connection refused. Repeated every hour while it lasts; /healthz shows the current state")


def test_the_counter_store_check_is_a_periodic_task_every_five_minutes(db):
    task = PeriodicTask.objects.get(name="check-counter-store")
    assert task.task == "warmup.check_counter_store" and task.enabled
    assert (task.crontab.minute, task.crontab.hour) == ("*/5", "*")


# --- Unattributed spike --------------------------------------------------------------------------------------


def unknown_events(first: int, count: int) -> list[dict]:
    return [
        {
            "type": "delivered",
            "ip": f"203.0.113.{n % 200 + 1}",
            "occurred_at": "2027-01-20T11:00:00Z",
            "recipient": "anna@gmail.com",
            "event_id": f"spike-{n}",
        }
        for n in range(first, first + count)
    ]


def test_unattributed_webhook_events_over_the_threshold_raise_one_alert_per_tenant_and_window(
    client, db, fake_telegram, settings, redis_client, django_capture_on_commit_callbacks
):
    settings.UNATTRIBUTED_ALERT_THRESHOLD, settings.UNATTRIBUTED_ALERT_WINDOW_MINUTES = 10, 60
    tenant = TenantFactory(name="Alpha", slug="alpha", time_zone="UTC")
    IPFactory(domain=DomainFactory(tenant=tenant), address="10.0.0.1")
    poster = Poster(client, WebhookToken.issue(tenant)[1])
    url = "/api/v1/webhooks/events/"

    with time_machine.travel(dt.datetime(2027, 1, 20, 10, 5, tzinfo=dt.UTC), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            assert poster.post_json(url, unknown_events(0, 9)).json()["unattributed"] == 9
        assert not Alert.objects.exists()  # 9 < 10
        with django_capture_on_commit_callbacks(execute=True):
            assert poster.post_json(url, unknown_events(9, 3)).json()["unattributed"] == 3
            assert poster.post_json(url, unknown_events(12, 5)).json()["unattributed"] == 5
    with time_machine.travel(dt.datetime(2027, 1, 20, 11, 1, tzinfo=dt.UTC), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            assert poster.post_json(url, unknown_events(100, 10)).json()["unattributed"] == 10

    first, second = Alert.objects.filter(kind=Alert.Kind.UNATTRIBUTED_SPIKE).order_by("created_at")
    assert first.tenant == tenant and first.figures["count"] == 12 and first.figures["threshold"] == 10
    assert first.figures["since"] == "2027-01-20T10:00:00+00:00"
    assert second.figures["since"] == "2027-01-20T11:00:00+00:00"
    spike_texts = texts_of(fake_telegram, "Unattributed events")
    assert len(spike_texts) == 2
    assert "Alpha" in spike_texts[0] and "203.0.113.10" in spike_texts[0]


def test_a_spike_alert_is_raised_once_across_processes(tenant):
    """Two processes crossing the threshold at once: the window's key lets only one alert through."""
    since = dt.datetime(2027, 1, 20, 10, 0, tzinfo=dt.UTC)
    assert alerts.alert_unattributed_spike(tenant, count=100, since=since, threshold=100) is not None
    assert alerts.alert_unattributed_spike(tenant, count=101, since=since, threshold=100) is None
    assert Alert.objects.count() == 1


# --- Delivery through a task ------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_admin_action_on_50_plans_with_telegram_down_only_queues_and_a_worker_delivers_later(
    client, redis_client, tmp_path, settings
):
    settings.TELEGRAM_BOT_TOKEN, settings.TELEGRAM_CHAT_ID = TOKEN, "-1001"
    settings.TELEGRAM_API_URL = f"http://127.0.0.1:{closed_port()}"  # Telegram is down
    tenant = TenantFactory(slug="alpha", name="Alpha")
    domain = DomainFactory(tenant=tenant)
    plans = [plan_in_state("warming", domain=domain, phase="week_2") for _ in range(50)]
    client.force_login(make_member("alice", tenant))

    response = client.post(
        reverse("admin:warmup_warmupplan_changelist"),
        {"action": "advance_plans", "_selected_action": [p.pk for p in plans], "index": 0},
    )

    assert response.status_code == 302
    assert WarmupPlan.objects.filter(phase="week_3").count() == 50
    assert Alert.objects.filter(delivery=Alert.Delivery.PENDING).count() == 50  # none attempted in the request
    assert redis_client.llen("celery") == 50  # one delivery task each

    with running_fake_telegram() as fake:
        environment = {"TELEGRAM_API_URL": fake.url, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "-1001"}
        with celery_processes(tmp_path, ("worker",), **environment) as logs:
            wait_until(lambda: Alert.objects.filter(delivery=Alert.Delivery.SENT).count() == 50, 90, logs)
    assert len(fake.requests) == 50
    assert sorted(int(a.attempts) for a in Alert.objects.all()) == [1] * 50


def test_a_failed_alert_is_retried_by_its_task_and_recorded_each_time(
    fake_telegram, settings, tenant, retries, django_capture_on_commit_callbacks
):
    settings.ALERT_DELIVERY_MAX_RETRIES = 2
    settings.TELEGRAM_MAX_ATTEMPTS = 1
    fake_telegram.script = [(502, {"ok": False, "description": "Bad Gateway"})] * 2
    with django_capture_on_commit_callbacks(execute=True):
        alert = alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="try again")
    assert len(retries) == 2 and len(fake_telegram.requests) == 3
    alert.refresh_from_db()
    assert (alert.delivery, alert.attempts) == (Alert.Delivery.SENT, 3)


def test_the_sweep_resends_undelivered_alerts_of_the_last_day_only(
    fake_telegram, tenant, django_capture_on_commit_callbacks
):
    def alert(message, delivery, *, age, attempted_ago=None) -> Alert:
        return Alert.objects.create(
            kind=Alert.Kind.PAUSED,
            tenant=tenant,
            message=message,
            created_at=NOW - age,
            delivery=delivery,
            chat_id="-1001",
            attempted_at=None if attempted_ago is None else NOW - attempted_ago,
        )

    minutes = dt.timedelta(minutes=1)
    alert("never queued", Alert.Delivery.PENDING, age=30 * minutes)
    alert("failed an hour ago", Alert.Delivery.FAILED, age=2 * 60 * minutes, attempted_ago=60 * minutes)
    alert("worker died mid-send", Alert.Delivery.SENDING, age=60 * minutes, attempted_ago=30 * minutes)
    alert("still being sent", Alert.Delivery.SENDING, age=60 * minutes, attempted_ago=2 * minutes)
    alert("retrying right now", Alert.Delivery.FAILED, age=10 * minutes, attempted_ago=1 * minutes)
    alert("too old", Alert.Delivery.FAILED, age=25 * 60 * minutes, attempted_ago=24 * 60 * minutes)
    alert("sent", Alert.Delivery.SENT, age=30 * minutes)

    with time_machine.travel(NOW, tick=False):
        assert tasks.resend_undelivered_alerts_task() == {"queued": 3}
    assert sorted(fake_telegram.texts()) == ["failed an hour ago", "never queued", "worker died mid-send"]


def test_the_sweep_is_a_periodic_task_every_ten_minutes(db):
    task = PeriodicTask.objects.get(name="resend-undelivered-alerts")
    assert task.task == "warmup.resend_undelivered_alerts" and task.enabled
    assert (task.crontab.minute, task.crontab.hour) == ("*/10", "*")


def test_a_broker_that_is_down_leaves_the_alert_pending_for_the_sweep(settings, tenant, caplog):
    from warmup_portal.celery import app

    settings.TELEGRAM_BOT_TOKEN, settings.TELEGRAM_CHAT_ID = TOKEN, "-1001"

    def use_broker(url: str) -> None:
        app.conf.broker_url = url
        app._pool = app.amqp._producer_pool = None  # taken again for the URL (kombu keeps a pool per URL)

    broker = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{closed_port()}/0")
    try:
        alert = Alert.objects.create(
            kind=Alert.Kind.PAUSED, tenant=tenant, message="m", created_at=NOW, delivery="pending", chat_id="-1"
        )
        assert alerts.queue_delivery([alert.pk, alert.pk, alert.pk]) == 0
    finally:
        use_broker(broker)
    assert Alert.objects.get(pk=alert.pk).delivery == Alert.Delivery.PENDING
    # Stopped at the first failure rather than wait for the broker once per alert.
    assert caplog.text.count("the sweep will send it") == 1
