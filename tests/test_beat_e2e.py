"""End to end: a real Celery worker and beat (DatabaseScheduler) consolidate and tick on their own.

The worker and beat run as subprocesses on this session's test database and Redis database (also the
broker), with the real clock: the days used are relative to today in a zone where it is mid-day.
"""

import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from django.apps import apps as global_apps
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from tests.factories import IPFactory, TenantFactory, WarmupPlanFactory
from tests.support import BASE_DIR, subprocess_env
from tests.test_tasks import periodic_migration
from warmup.models import DailyStat, WarmupPlan
from warmup.stats import record_stats

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CELERY = str(Path(sys.executable).with_name("celery"))
CANDIDATE_ZONES = ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris", "Pacific/Auckland", "Asia/Kolkata"]


def midday_zone() -> str:
    """A zone where it is between 02:00 and 22:00 now, so that neither midnight nor the 01:00 tick
    boundary can pass during the test."""
    now = timezone.now()
    return next(z for z in CANDIDATE_ZONES if 2 <= now.astimezone(ZoneInfo(z)).hour < 22)


@contextmanager
def celery_processes(tmp_path: Path, names: tuple[str, ...] = ("worker", "beat"), **environment: str):
    """A worker and a beat (or those `names`) on the test database and broker, with `environment` added
    to theirs; always stopped afterwards."""
    env = subprocess_env(**environment)
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in names}
    commands = {
        "worker": [CELERY, "-A", "warmup_portal", "worker", "--pool=solo", "--loglevel=INFO", "--without-heartbeat",
                   "--without-gossip", "--without-mingle"],
        "beat": [CELERY, "-A", "warmup_portal", "beat", "--loglevel=DEBUG", "--max-interval=1",
                 "-S", "django_celery_beat.schedulers:DatabaseScheduler", f"--pidfile={tmp_path / 'beat.pid'}"],
    }  # fmt: skip
    commands = {name: commands[name] for name in names}
    processes = [
        subprocess.Popen(command, env=env, cwd=BASE_DIR, stdout=logs[name], stderr=subprocess.STDOUT)
        for name, command in commands.items()
    ]
    try:
        yield lambda: "\n".join(f"--- {n}\n" + (tmp_path / f"{n}.log").read_text()[-3000:] for n in commands)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()


def wait_until(condition, timeout: float, logs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s\n{logs()}")


@pytest.fixture
def schedules(redis_client):
    """The periodic tasks as the migration creates them (transactional tests empty the tables)."""
    periodic_migration.create_periodic_tasks(global_apps, None)
    return {task.name: task for task in PeriodicTask.objects.all()}


def test_beat_runs_consolidation_and_the_tick_which_pauses_a_bouncing_plan(schedules, tmp_path):
    tenant = TenantFactory(time_zone=midday_zone())
    today = timezone.now().astimezone(tenant.zone).date()
    yesterday = today - timedelta(days=1)
    plan = WarmupPlanFactory(
        ip=IPFactory(domain__tenant=tenant, status="warming"),
        status=WarmupPlan.Status.WARMING,
        start_date=today - timedelta(days=3),
        window_start_date=today - timedelta(days=3),
        last_ticked_date=yesterday,
    )
    record_stats(plan.ip, {"sent": 200, "delivered": 150, "bounced": 50}, yesterday)
    # Both tasks every 2 seconds instead of nightly; a bulk update sends no signal, hence update_changed.
    every_2s, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name__in=["consolidate-warmup-stats", "advance-warmup-daily"]).update(
        interval=every_2s, crontab=None
    )
    PeriodicTasks.update_changed()

    with celery_processes(tmp_path) as logs:
        wait_until(lambda: WarmupPlan.objects.get(pk=plan.pk).status == WarmupPlan.Status.PAUSED, 90, logs)
        wait_until(lambda: "warmup.consolidate_warmup_stats" in logs() and "succeeded" in logs(), 30, logs)

    stat = DailyStat.objects.get(ip=plan.ip)
    assert (stat.date, stat.sent, stat.delivered, stat.bounced) == (yesterday, 200, 150, 50)
    plan.refresh_from_db()
    assert plan.last_ticked_date == today
    event = plan.events.get(kind="paused")
    assert (event.figures["sent"], event.figures["bounced"], event.figures["bounce_rate"]) == (200, 50, 25.0)


def test_editing_a_crontab_in_place_changes_when_a_running_beat_fires(schedules, tmp_path):
    tenant = TenantFactory(time_zone=midday_zone())
    ip = IPFactory(domain__tenant=tenant)
    yesterday = timezone.now().astimezone(tenant.zone).date() - timedelta(days=1)
    record_stats(ip, {"sent": 42}, yesterday)
    # Only consolidation may consolidate here (the tick would too), and not before the edit.
    PeriodicTask.objects.exclude(name="consolidate-warmup-stats").update(enabled=False)
    PeriodicTasks.update_changed()
    far_month = str((datetime.now().month + 5) % 12 + 1)
    crontab = schedules["consolidate-warmup-stats"].crontab
    crontab.month_of_year = far_month
    crontab.save()

    with celery_processes(tmp_path) as logs:
        wait_until(lambda: "DatabaseScheduler: Schedule changed" in logs() or "Writing entries" in logs(), 30, logs)
        time.sleep(3)
        assert not DailyStat.objects.exists()

        # As the admin does: change the schedule and save it; beat keeps running.
        crontab = CrontabSchedule.objects.get(pk=crontab.pk)
        crontab.minute, crontab.hour, crontab.month_of_year = "*", "*", "*"
        crontab.save()
        wait_until(lambda: DailyStat.objects.filter(ip=ip, date=yesterday, sent=42).exists(), 90, logs)
