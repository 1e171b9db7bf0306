"""Prometheus metrics: the per-IP series (computed at scrape time) and the Celery task counters.

Per-IP series (`warmup_ip_*`, labels tenant, ip, domain) are read from the database and the counter
store by `WarmupCollector` on each scrape, in a fixed number of queries, so every gunicorn worker
gives the same answer. Process-level series (task runs and durations here, webhook events in
`webhooks/metrics.py`) are ordinary prometheus-client metrics.

Several processes: when PROMETHEUS_MULTIPROC_DIR is set (to an empty directory shared by the web
workers and the Celery worker), prometheus-client keeps those metrics in files there and `/metrics`
adds them up across processes. Each process names its files after its host name and pid, so that
containers sharing the directory (whose pids all start at 1) never write to the same file. Without
the variable, each process exposes its own registry (fine for one process, as in `make run`).
"""

import os
import socket
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    # Before any metric below is created: file names "<type>_<host>-<pid>.db" instead of "<type>_<pid>.db".
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: f"{socket.gethostname()}-{os.getpid()}")

TASK_RUNS = Counter("warmup_task_runs", "Celery task runs by outcome.", ["task", "outcome"])
TASK_DURATION = Histogram(
    "warmup_task_duration_seconds",
    "Celery task run time.",
    ["task"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf")),
)


class WarmupCollector(Collector):
    """Per-IP gauges read from the database and the counter store when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db.models import OuterRef, Subquery

        from domains.models import IP

        from . import health
        from .counters import CounterStoreUnavailable, get_store
        from .models import DailyStat
        from .providers import provider_quotas

        labels = ["tenant", "ip", "domain"]
        quota = GaugeMetricFamily("warmup_ip_daily_quota", "Messages the IP may send today.", labels=labels)
        sent = GaugeMetricFamily("warmup_ip_sent_today", "Messages sent today (live counters).", labels=labels)
        status = GaugeMetricFamily(
            "warmup_ip_status", "1 for the IP's status, 0 for the others.", labels=[*labels, "status"]
        )
        bounce = GaugeMetricFamily(
            "warmup_ip_bounce_rate", "Bounce rate of the last consolidated day, percent of sent.", labels=labels
        )
        complaint = GaugeMetricFamily(
            "warmup_ip_complaint_rate",
            "Complaint rate of the last consolidated day, percent of delivered.",
            labels=labels,
        )
        provider_labels = [*labels, "provider"]
        provider_quota = GaugeMetricFamily(
            "warmup_ip_provider_daily_quota",
            "The IP's daily quota for one mailbox provider (its share; 0 while suspended).",
            labels=provider_labels,
        )
        provider_sent = GaugeMetricFamily(
            "warmup_ip_provider_sent_today", "Messages sent today to one mailbox provider.", labels=provider_labels
        )
        provider_suspended = GaugeMetricFamily(
            "warmup_ip_provider_suspended", "1 while the provider is suspended for the IP.", labels=provider_labels
        )
        store_up = GaugeMetricFamily("warmup_counter_store_up", "1 when the counter store answered this scrape.")
        store_healthy = GaugeMetricFamily(
            "warmup_counter_store_healthy",
            "1 when the counter store passes /healthz's check: reachable, taking writes (not full, not a "
            "replica) and not set to evict keys.",
        )

        last = DailyStat.objects.filter(ip=OuterRef("pk")).order_by("-date")
        ips = list(
            IP.objects.select_related("tenant", "domain", "plan")
            .annotate(
                last_sent=Subquery(last.values("sent")[:1]),
                last_bounced=Subquery(last.values("bounced")[:1]),
                last_delivered=Subquery(last.values("delivered")[:1]),
                last_complaints=Subquery(last.values("complaints")[:1]),
            )
            .order_by("tenant__slug", "address")
        )
        days = {}
        for ip in ips:
            if ip.tenant_id not in days:
                days[ip.tenant_id] = ip.tenant.today()
        quotas = {ip.pk: ip.plan.daily_quota if getattr(ip, "plan", None) is not None else 0 for ip in ips}
        by_provider = provider_quotas(ips, quotas)
        try:
            sent_today = get_store().sent_by_provider([(ip.pk, days[ip.tenant_id]) for ip in ips])
            store_up.add_metric([], 1)
        except CounterStoreUnavailable:
            # The other series are still worth having; the gap shows on warmup_counter_store_up.
            sent_today = None
            store_up.add_metric([], 0)
        # Only a store that answered is asked again: a Redis that hangs would make the scrape wait twice.
        store_healthy.add_metric([], 1 if sent_today is not None and health.counter_store_failure() is None else 0)

        for ip in ips:
            values_ = [ip.tenant.slug, ip.address, ip.domain.name]
            quota.add_metric(values_, quotas[ip.pk])
            sent_by_provider = None if sent_today is None else sent_today.get((ip.pk, days[ip.tenant_id]), {})
            if sent_by_provider is not None:
                sent.add_metric(values_, sum(sent_by_provider.values()))
            for provider, part in by_provider[ip.pk].items():
                provider_values = [*values_, provider]
                provider_quota.add_metric(provider_values, part.daily_quota)
                provider_suspended.add_metric(provider_values, 1 if part.suspended_until else 0)
                if sent_by_provider is not None:
                    provider_sent.add_metric(provider_values, sent_by_provider.get(provider, 0))
            for choice in IP.Status.values:
                status.add_metric([*values_, choice], 1 if ip.status == choice else 0)
            if ip.last_sent is not None:
                bounce.add_metric(values_, _percent(ip.last_bounced, ip.last_sent))
                complaint.add_metric(values_, _percent(ip.last_complaints, ip.last_delivered))
        yield from (
            quota, sent, status, bounce, complaint, provider_quota, provider_sent, provider_suspended, store_up,
            store_healthy,
        )  # fmt: skip


def _percent(part: int | None, whole: int | None) -> float:
    from .models import rate

    return rate(part or 0, whole or 0)


class _ProcessMetrics(Collector):
    """This process's own registry (single-process mode)."""

    def collect(self):
        yield from REGISTRY.collect()


def render() -> bytes:
    """The text exposition of every series, as `/metrics` serves it."""
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROC_DIR:
        MultiProcessCollector(registry, path=MULTIPROC_DIR)
    else:
        registry.register(_ProcessMetrics())
    registry.register(WarmupCollector())
    return generate_latest(registry)


# --- Celery signal handlers (connected in WarmupConfig.ready) ------------------------------------------

_started: dict[str, float] = {}
_failed: set[str] = set()


def on_task_prerun(task_id=None, task=None, **kwargs) -> None:
    _started[task_id] = time.perf_counter()


def on_task_failure(task_id=None, **kwargs) -> None:
    # task_postrun's state says FAILURE too, but only when the task's own state handling ran;
    # noting the failure here keeps the outcome right whatever the state machinery reported.
    _failed.add(task_id)


def on_task_postrun(task_id=None, task=None, state=None, **kwargs) -> None:
    started = _started.pop(task_id, None)
    failed = task_id in _failed
    _failed.discard(task_id)
    name = getattr(task, "name", None) or "unknown"
    if failed or state == "FAILURE":
        outcome = "failure"
    elif state == "RETRY":
        outcome = "retry"
    else:
        outcome = "success"
    TASK_RUNS.labels(task=name, outcome=outcome).inc()
    if started is not None:
        TASK_DURATION.labels(task=name).observe(time.perf_counter() - started)


def connect_task_signals() -> None:
    from celery.signals import task_failure, task_postrun, task_prerun

    task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="warmup_metrics_prerun")
    task_failure.connect(on_task_failure, weak=False, dispatch_uid="warmup_metrics_failure")
    task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="warmup_metrics_postrun")
