"""Soak: the whole stack under continuous load ends with daily stats exactly equal to what was sent.

Two web processes (gunicorn, as two hosts would run it) and two Celery workers plus beat share this
session's PostgreSQL test database and Redis database. A load generator posts event batches to both web
processes for about half a minute, re-posting some bodies (duplicates, as senders retry), sometimes to
both at once, and retrying any answer that is not a 200. Beat fires consolidation and the tick every
second, so that both run concurrently on the two workers; mid-way one worker and one web process are
killed with SIGKILL (possibly inside a consolidation, or between counting a batch and answering it)
and started again. At the end, after a final consolidation, every
past day's `DailyStat` equals the generator's ground truth exactly, and today's live counters too.

The events are dated on several past days (and today) in a zone where it is mid-day, so that neither
midnight nor the 01:00 tick boundary passes during the run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from domains.models import WebhookToken
from tests.factories import DomainFactory, IPFactory, TenantFactory, WarmupPlanFactory
from tests.support import BASE_DIR, stop_process_group, subprocess_env
from tests.test_beat_e2e import CELERY, celery_processes, midday_zone, schedules, wait_until  # noqa: F401
from warmup.consolidation import consolidate
from warmup.counters import RedisCounterStore, get_store
from warmup.models import AuditEvent, ConsolidationBatch, DailyStat, WarmupPlan

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LOAD_SECONDS = 24
KILL_AT, RESTART_AT = 8, 12  # seconds into the load
BATCH = 25  # events per request
SENDERS = 2  # load-generating threads
ADDRESSES = ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
# What each event type adds (PRODUCT.md section 6, the normalised endpoint).
COUNTS = {
    "delivered": {"sent": 1, "delivered": 1},
    "bounced": {"sent": 1, "bounced": 1},
    "complained": {"complaints": 1},
    "opened": {"opens": 1},
    "clicked": {"clicks": 1},
}
COMPARED = ("sent", "delivered", "bounced", "complaints", "opens", "clicks")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"web process exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on {port} after {timeout} s:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_web(env: dict[str, str], log: Path, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """A gunicorn serving the portal, in a process group of its own (so that it can be killed whole)."""
    port = port or free_port()
    gunicorn = str(Path(CELERY).with_name("gunicorn"))
    command = [gunicorn, "warmup_portal.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1",
               "--worker-class", "gthread", "--threads", "4", "--timeout", "60", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, cwd=BASE_DIR, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_for_port(port, process, log)
    return process, port


def stop_web(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    stop_process_group(process, timeout=15, sig=sig)


def start_worker(env: dict[str, str], name: str, log: Path) -> subprocess.Popen:
    """A worker started as tests/test_beat_e2e.py starts its own (the same options), under its own name."""
    command = [CELERY, "-A", "warmup_portal", "worker", "--pool=solo", "--loglevel=INFO", "--without-heartbeat",
               "--without-gossip", "--without-mingle", "-n", f"{name}@%h"]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=BASE_DIR, stdout=log.open("a"), stderr=subprocess.STDOUT)


class LoadGenerator:
    """Posts unique events in batches, keeps the ground truth, re-posts some bodies, retries failures."""

    def __init__(self, ports: list[int], token: str, days: list[date], zone, seed: int):
        self.urls = [f"http://127.0.0.1:{port}/api/v1/webhooks/events/" for port in ports]
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.days, self.zone = days, zone
        self.random = random.Random(seed)
        self.truth: dict[tuple[str, date], Counter] = defaultdict(Counter)
        self.events = 0
        self.requests = 0
        self.accepted = 0
        self.unanswered = 0  # events of bodies with an attempt that got no answer (see post_until_counted)
        self.retries = 0
        self.duplicate_posts = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def batch(self, sender: int, number: int) -> bytes:
        events = []
        with self.lock:
            for position in range(BATCH):
                kind = self.random.choice(["delivered"] * 5 + ["bounced", "complained", "opened", "clicked"])
                address = self.random.choice(ADDRESSES)
                day = self.random.choice(self.days)
                moment = datetime.combine(day, datetime.min.time().replace(hour=12), tzinfo=self.zone)
                moment += timedelta(seconds=self.random.randrange(3600))
                events.append(
                    {
                        "type": kind,
                        "ip": address,
                        "occurred_at": moment.isoformat(),
                        "recipient": f"r{number}@gmail.com",
                        "event_id": f"s{sender}-b{number}-e{position}",
                    }
                )
                self.truth[(address, day)].update(COUNTS[kind])
            self.events += BATCH
        return json.dumps(events).encode()

    def post_until_counted(self, session: requests.Session, body: bytes, first: int) -> None:
        """Post until a 200; every answer's `accepted` is tallied (a retried body counts once overall).

        An attempt that got no answer at all (its web process was killed) may have been counted before
        the process died: the retry then reports those events as duplicates, and `unanswered` says how
        many events such bodies hold.
        """
        attempt = 0
        unanswered = False
        while True:
            url = self.urls[(first + attempt) % len(self.urls)]
            try:
                response = session.post(url, data=body, headers=self.headers, timeout=30)
            except requests.RequestException as exc:
                response, error = None, repr(exc)
                # A refused connection never reached a web process; a reset one may have been counted.
                if "NewConnectionError" not in error and "Connection refused" not in error:
                    unanswered = True
            else:
                error = f"{response.status_code} {response.text[:200]}"
            with self.lock:
                self.requests += 1
                if response is not None and response.status_code == 200:
                    answer = response.json()
                    self.accepted += answer["accepted"]
                    if answer["accepted"] + answer["duplicates"] != BATCH:
                        self.errors.append(f"an answer accounts for {answer} of {BATCH} events")
                    if unanswered:
                        self.unanswered += BATCH
                    return
                self.retries += 1
                if response is not None and response.status_code >= 500 and response.status_code != 503:
                    self.errors.append(error)
            attempt += 1
            if attempt > 20:
                self.errors.append(f"gave up after 20 attempts: {error}")
                return
            time.sleep(0.2)

    def run(self, sender: int) -> None:
        session = requests.Session()
        number = 0
        while not self.stop.is_set():
            body = self.batch(sender, number)
            self.post_until_counted(session, body, first=number)
            roll = self.random.random()
            if roll < 0.2:  # the sender retries a body it had a 200 for (a lost answer)
                with self.lock:
                    self.duplicate_posts += 1
                self.post_until_counted(session, body, first=number + 1)
            elif roll < 0.3:  # two retries racing on the two web processes
                with self.lock:
                    self.duplicate_posts += 2
                racers = [
                    threading.Thread(target=self.post_until_counted, args=(requests.Session(), body, n)) for n in (0, 1)
                ]
                for racer in racers:
                    racer.start()
                for racer in racers:
                    racer.join()
            number += 1
            time.sleep(0.01)


@pytest.fixture
def every_second(schedules):  # noqa: F811
    """Consolidation and the tick every second instead of nightly (beat reads the change)."""
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name__in=["consolidate-warmup-stats", "advance-warmup-daily"]).update(
        interval=interval, crontab=None
    )
    PeriodicTask.objects.exclude(name__in=["consolidate-warmup-stats", "advance-warmup-daily"]).update(enabled=False)
    PeriodicTasks.update_changed()


def test_continuous_webhooks_with_retries_and_a_killed_worker_end_in_exact_daily_stats(every_second, tmp_path):
    tenant = TenantFactory(slug="soak", name="Soak", time_zone=midday_zone())
    today = timezone.now().astimezone(tenant.zone).date()
    past = [today - timedelta(days=n) for n in (1, 2, 3)]
    plans = []
    for address in ADDRESSES:
        ip = IPFactory(domain=DomainFactory(tenant=tenant, status="warming"), address=address, status="warming")
        plans.append(
            WarmupPlanFactory(ip=ip, status=WarmupPlan.Status.WARMING, start_date=today - timedelta(days=5),
                              window_start_date=today - timedelta(days=5), last_ticked_date=today - timedelta(days=1))
        )  # fmt: skip
    token = WebhookToken.issue(tenant, label="soak")[1]
    env = subprocess_env(WEBHOOK_RATE_LIMIT_PER_MINUTE="100000000", WARMUP_DRY_RUN="true", LOG_LEVEL="WARNING")

    webs, workers = [], []
    try:
        for n in (1, 2):
            webs.append(start_web(env, tmp_path / f"web{n}.log"))
        with celery_processes(tmp_path) as logs:
            second_log = tmp_path / "worker2.log"
            workers.append(start_worker(env, "second", second_log))
            load = LoadGenerator([port for _, port in webs], token, [*past, today], tenant.zone, seed=7)
            senders = [threading.Thread(target=load.run, args=(n,)) for n in range(SENDERS)]
            started = time.monotonic()
            for sender in senders:
                sender.start()
            try:
                time.sleep(KILL_AT)
                # Crashes, with no clean-up of any kind: a worker (maybe inside a consolidation or a
                # tick) and a whole web host (maybe between counting a batch and answering it).
                os.kill(workers[0].pid, signal.SIGKILL)
                workers[0].wait()
                stop_web(webs[1][0], signal.SIGKILL)
                time.sleep(RESTART_AT - KILL_AT)
                workers.append(start_worker(env, "second", second_log))
                webs.append(start_web(env, tmp_path / "web2.log", port=webs[1][1]))
                time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
            finally:
                load.stop.set()
                for sender in senders:
                    sender.join(timeout=120)
            # The workers consolidated during the run (not only the final consolidation below).
            wait_until(lambda: DailyStat.objects.filter(ip__tenant=tenant).exists(), 60, logs)
            consolidated_by_workers = ConsolidationBatch.objects.count()
            for worker in workers:
                stop(worker)
    finally:
        for process, _ in webs:
            stop_web(process)
        for worker in workers:
            stop(worker)

    print(
        f"soak: {load.events} events in {load.requests} requests ({load.duplicate_posts} re-posts, "
        f"{load.retries} retried answers, {load.unanswered} events in bodies with an unanswered attempt, "
        f"{load.events - load.accepted} reported as duplicates on a retry); "
        f"{consolidated_by_workers} batches consolidated by the workers"
    )
    assert not load.errors, load.errors[:5]
    assert load.events > 1000 and load.duplicate_posts > 10, (load.events, load.duplicate_posts)
    # Every unique event was accepted once over all the answers, duplicates and retries included, but for
    # events of a body whose answer was lost with a killed web process after they were counted (its
    # retry reports them as duplicates). The daily stats below are exact in every case.
    assert load.events - load.unanswered <= load.accepted <= load.events, (
        load.accepted,
        load.events,
        load.unanswered,
        load.retries,
    )
    assert consolidated_by_workers > 0

    # The final consolidation, then the ground truth, exactly.
    consolidate()
    ip_ids = {plan.ip.address: plan.ip_id for plan in plans}
    stats = {(s.ip_id, s.date): s for s in DailyStat.objects.filter(ip_id__in=ip_ids.values())}
    expected_rows = {(ip_ids[address], day) for address, day in load.truth if day != today}
    assert set(stats) == expected_rows
    for (address, day), truth in load.truth.items():
        figures = (
            get_store().read(ip_ids[address], day)
            if day == today
            else {name: getattr(stats[(ip_ids[address], day)], name) for name in COMPARED}
        )
        assert {name: figures[name] for name in COMPARED} == {name: truth[name] for name in COMPARED}, (address, day)

    store = get_store()
    assert isinstance(store, RedisCounterStore)
    assert store.in_flight() == []
    assert {day for _, day in store.pending_ip_days()} <= {today}
    # Ticks ran concurrently on both workers: each plan processed today once, one event per kind and date.
    for plan in WarmupPlan.objects.filter(pk__in=[p.pk for p in plans]):
        assert plan.last_ticked_date == today
    kinds = Counter(AuditEvent.objects.filter(plan__in=plans).values_list("plan_id", "date", "kind"))
    assert all(n == 1 for n in kinds.values()), kinds
