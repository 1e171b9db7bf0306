"""/metrics: Prometheus text with the per-IP series from the database and the counter store, auth rules,
Celery task counters, and the multi-process mode."""

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
import time_machine
from celery import shared_task
from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from domains.models import IP
from warmup import metrics
from warmup.counters import CounterStoreUnavailable, Increment, get_store
from warmup.models import WarmupPlan

from .factories import DailyStatFactory, DomainFactory, IPFactory, WarmupPlanFactory
from .support import OwnRedis, free_port

NOW = dt.datetime(2026, 12, 23, 15, 0, tzinfo=dt.UTC)
TODAY = NOW.date()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a text exposition (parsing it proves it is well formed)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def ip_labels(ip: IP, **extra) -> tuple:
    return tuple(sorted({"tenant": ip.tenant.slug, "ip": ip.address, "domain": ip.domain.name, **extra}.items()))


@pytest.fixture
def inventory(tenant, redis_client):
    domain = DomainFactory(tenant=tenant, name="mail1.sos-mail.com")
    warming = IPFactory(tenant=tenant, domain=domain, address="45.123.10.1", status=IP.Status.WARMING)
    WarmupPlanFactory(ip=warming, status=WarmupPlan.Status.WARMING, phase="week_2", start_date=TODAY)
    paused = IPFactory(tenant=tenant, domain=domain, address="45.123.10.2", status=IP.Status.PAUSED)
    WarmupPlanFactory(ip=paused, status=WarmupPlan.Status.PAUSED, phase="week_1", start_date=TODAY)
    active = IPFactory(tenant=tenant, domain=domain, address="45.123.10.3", status=IP.Status.ACTIVE)
    WarmupPlanFactory(ip=active, status=WarmupPlan.Status.COMPLETED, phase="completed", start_date=TODAY)
    bare = IPFactory(tenant=tenant, domain=domain, address="45.123.10.4")
    return {"warming": warming, "paused": paused, "active": active, "bare": bare}


@time_machine.travel(NOW, tick=False)
def test_metrics_parse_and_carry_every_ip(client, inventory):
    warming, active = inventory["warming"], inventory["active"]
    DailyStatFactory(ip=warming, date=TODAY - dt.timedelta(days=2), sent=100, bounced=50)
    DailyStatFactory(ip=warming, date=TODAY - dt.timedelta(days=1), sent=200, bounced=16, complaints=1)
    get_store().apply([Increment(ip_id=warming.pk, day=TODAY, counts={"sent": 7}, provider="gmail")])

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    found = samples(response.content.decode())
    assert found[("warmup_ip_daily_quota", ip_labels(warming))] == 200
    assert found[("warmup_ip_daily_quota", ip_labels(inventory["paused"]))] == 0
    assert found[("warmup_ip_daily_quota", ip_labels(active))] == 10000
    assert found[("warmup_ip_daily_quota", ip_labels(inventory["bare"]))] == 0
    assert found[("warmup_ip_sent_today", ip_labels(warming))] == 7
    assert found[("warmup_ip_sent_today", ip_labels(active))] == 0
    assert found[("warmup_ip_status", ip_labels(warming, status="warming"))] == 1
    assert found[("warmup_ip_status", ip_labels(warming, status="active"))] == 0
    assert found[("warmup_ip_status", ip_labels(active, status="active"))] == 1
    # The last consolidated day: 16 bounced of 200 sent, 1 complaint of 184 delivered.
    assert found[("warmup_ip_bounce_rate", ip_labels(warming))] == 8.0
    assert found[("warmup_ip_complaint_rate", ip_labels(warming))] == pytest.approx(100 / 184, abs=1e-3)
    assert ("warmup_ip_bounce_rate", ip_labels(active)) not in found  # no consolidated day yet
    assert found[("warmup_counter_store_up", ())] == 1
    assert found[("warmup_counter_store_healthy", ())] == 1
    families = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {"warmup_webhook_events", "warmup_task_runs", "warmup_task_duration_seconds"} <= families


@time_machine.travel(NOW, tick=False)
def test_metrics_run_a_fixed_number_of_queries(client, tenant, settings, django_assert_max_num_queries):
    settings.WARMUP_COUNTER_BACKEND = "database"  # its live read is one more query
    domain = DomainFactory(tenant=tenant)
    for _ in range(10):
        ip = IPFactory(tenant=tenant, domain=domain, status=IP.Status.WARMING)
        WarmupPlanFactory(ip=ip, status=WarmupPlan.Status.WARMING, start_date=TODAY)
        DailyStatFactory(ip=ip, date=TODAY - dt.timedelta(days=1))
    # The IPs with their last day, the provider shares, the tenants' last 7 days per provider, the suspensions
    # in force, today's counter cells.
    with django_assert_max_num_queries(5):
        response = client.get("/metrics")
    found = samples(response.content.decode())
    assert sum(1 for name, _ in found if name == "warmup_ip_daily_quota") == 10


def test_without_a_token_only_loopback_callers_may_scrape(client, settings, db):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403


def test_with_a_token_the_bearer_is_required(client, settings, db):
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic s3cret-metrics-token").status_code == 403
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token")
    assert response.status_code == 200
    assert "warmup_counter_store_up" in response.content.decode()


def test_metrics_still_answer_when_the_counter_store_is_down(client, tenant, settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    settings.WARMUP_COUNTER_BACKEND = "redis"
    ip = IPFactory(tenant=tenant, domain=DomainFactory(tenant=tenant))
    found = samples(client.get("/metrics").content.decode())
    assert found[("warmup_counter_store_up", ())] == 0
    assert found[("warmup_counter_store_healthy", ())] == 0
    assert ("warmup_ip_daily_quota", ip_labels(ip)) in found
    assert ("warmup_ip_sent_today", ip_labels(ip)) not in found


class SilentServer:
    """A TCP server that accepts connections and never answers (a hung Redis); counts the connections."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:  # closed
                return

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_a_hung_counter_store_is_waited_on_once_per_scrape(client, tenant, settings):
    server = SilentServer()
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{server.port}/0?socket_timeout=0.2"
        settings.WARMUP_COUNTER_BACKEND = "redis"
        IPFactory(tenant=tenant, domain=DomainFactory(tenant=tenant))
        # What one read of the live counts costs against this server (its connections, retries included):
        with pytest.raises(CounterStoreUnavailable):
            get_store().sent_by_provider([(1, TODAY)])
        one_read = len(server.accepted)
        assert one_read >= 1

        found = samples(client.get("/metrics").content.decode())
        assert found[("warmup_counter_store_up", ())] == found[("warmup_counter_store_healthy", ())] == 0
        # The scrape gave up after that one read: it did not ask the hung store again for its health.
        assert len(server.accepted) == 2 * one_read
    finally:
        server.close()


def test_a_counter_store_that_answers_but_would_evict_keys_is_up_and_not_healthy(client, tenant, settings, tmp_path):
    server = OwnRedis(tmp_path, free_port())
    server.start()
    try:
        settings.REDIS_URL, settings.WARMUP_COUNTER_BACKEND = server.url, "redis"
        IPFactory(tenant=tenant, domain=DomainFactory(tenant=tenant))
        found = samples(client.get("/metrics").content.decode())
        assert found[("warmup_counter_store_up", ())] == found[("warmup_counter_store_healthy", ())] == 1

        own = redis.Redis.from_url(server.url)
        own.config_set("maxmemory", "100mb")
        own.config_set("maxmemory-policy", "allkeys-lru")
        found = samples(client.get("/metrics").content.decode())
        assert found[("warmup_counter_store_up", ())] == 1
        assert found[("warmup_counter_store_healthy", ())] == 0
    finally:
        server.stop()


@shared_task(name="tests.metrics_probe")
def metrics_probe(fail: bool = False) -> str:
    if fail:
        raise ValueError("probe failed")
    return "ok"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0


def test_task_runs_and_durations_are_counted():
    before = {
        o: sample("warmup_task_runs_total", task="tests.metrics_probe", outcome=o) for o in ("success", "failure")
    }
    durations = sample("warmup_task_duration_seconds_count", task="tests.metrics_probe")
    metrics_probe.apply()
    metrics_probe.apply(kwargs={"fail": True})
    assert sample("warmup_task_runs_total", task="tests.metrics_probe", outcome="success") == before["success"] + 1
    assert sample("warmup_task_runs_total", task="tests.metrics_probe", outcome="failure") == before["failure"] + 1
    assert sample("warmup_task_duration_seconds_count", task="tests.metrics_probe") == durations + 2


def test_multiprocess_mode_adds_up_every_process(tmp_path: Path, tenant, monkeypatch):
    # Two separate Django processes count into the shared directory, as gunicorn workers and Celery do.
    # Every file must carry the host name (containers sharing the folder all have small pids): the
    # webhook counter, defined in another app, must be created after warmup.metrics set the naming.
    code = (
        "import django; django.setup(); from django.urls import resolve; resolve('/metrics');"
        "from webhooks.metrics import WEBHOOK_EVENTS; from warmup.metrics import TASK_RUNS;"
        "TASK_RUNS.labels(task='consolidate', outcome='success').inc();"
        "WEBHOOK_EVENTS.labels(source='powermta', outcome='accepted').inc(5)"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "warmup_portal.settings"}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=settings.BASE_DIR, timeout=60)
    files = [path.name for path in tmp_path.iterdir()]
    assert files and all(socket.gethostname() in name for name in files), files

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("warmup_task_runs_total", {"task": "consolidate", "outcome": "success"}) == 2
    assert registry.get_sample_value("warmup_webhook_events_total", {"source": "powermta", "outcome": "accepted"}) == 10

    IPFactory(tenant=tenant, domain=DomainFactory(tenant=tenant), address="45.123.10.9")
    monkeypatch.setattr(metrics, "MULTIPROC_DIR", str(tmp_path))
    found = samples(metrics.render().decode())
    assert found[("warmup_task_runs_total", (("outcome", "success"), ("task", "consolidate")))] == 2
    assert any(name == "warmup_ip_daily_quota" and ("ip", "45.123.10.9") in labels for name, labels in found)
