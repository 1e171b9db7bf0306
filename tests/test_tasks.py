"""Tasks, the schedule migration, the stats functions and the commands that call them."""

import importlib
import json
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.apps import apps as global_apps
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask

from tests.factories import DailyStatFactory, IPFactory, TenantFactory, WarmupPlanFactory
from warmup import tasks
from warmup.counters import CounterStoreUnavailable, get_store
from warmup.models import ConsolidationBatch, CounterCell, CounterDedupKey, DailyStat, MessageRef
from warmup.stats import daily_stats, record_stats
from webhooks.models import DeadLetter
from webhooks.tasks import prune_dead_letters_task

NOW = datetime(2027, 3, 10, 22, 30, tzinfo=UTC)  # already 2027-03-11 in Auckland
TODAY = date(2027, 3, 10)

periodic_migration = importlib.import_module("warmup.migrations.0002_periodic_tasks")


@pytest.fixture
def ip(db, redis_client):
    return IPFactory(address="45.123.10.1", domain__tenant=TenantFactory(time_zone="Pacific/Auckland"))


# --- record_stats / daily_stats -----------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_record_stats_counts_today_in_the_tenants_zone_by_default(ip):
    day = record_stats(ip, {"sent": 10, "delivered": 9, "bounced": 1})

    assert day == date(2027, 3, 11)
    assert get_store().read(ip.id, day)["sent"] == 10


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"sent": -1}, "sent: must not be negative"),
        ({"sent": "3"}, "sent: must be a whole number"),
        ({"spam": 1}, "spam"),
    ],
)
def test_record_stats_refuses_bad_counts_naming_the_field(ip, counts, message):
    with pytest.raises(ValueError, match=message):
        record_stats(ip, counts, TODAY)


def test_daily_stats_lists_days_in_range_with_rates(db):
    ip = IPFactory()
    DailyStatFactory(ip=ip, date=date(2027, 3, 1), sent=300, delivered=290, bounced=10, complaints=1, opens=7)
    DailyStatFactory(ip=ip, date=date(2027, 3, 3), sent=0, delivered=0)
    DailyStatFactory(ip=ip, date=date(2027, 2, 20))
    DailyStatFactory(date=date(2027, 3, 2))  # another IP

    rows = daily_stats(ip, date(2027, 3, 1), date(2027, 3, 3))

    assert rows == [
        {"date": "2027-03-01", "sent": 300, "delivered": 290, "bounced": 10, "complaints": 1, "opens": 7,
         "clicks": 0, "bounce_rate": 3.33, "complaint_rate": 0.34},
        {"date": "2027-03-03", "sent": 0, "delivered": 0, "bounced": 0, "complaints": 0, "opens": 0, "clicks": 0,
         "bounce_rate": 0.0, "complaint_rate": 0.0},
    ]  # fmt: skip


# --- Tasks ---------------------------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_record_warmup_stats_task_then_consolidation_puts_the_day_in_daily_stats(
    ip, django_capture_on_commit_callbacks
):
    # Arguments and results go through JSON as they would through the broker.
    arguments = json.loads(json.dumps([ip.id, {"sent": 5, "opens": 2}, "2027-03-09"]))
    result = json.loads(json.dumps(tasks.record_warmup_stats_task.apply(arguments).get()))
    with django_capture_on_commit_callbacks(execute=True):
        report = tasks.consolidate_warmup_stats_task.apply().get()

    assert result == {"success": True, "ip": "45.123.10.1", "date": "2027-03-09"}
    assert report["ip_days"] == 1
    stat = DailyStat.objects.get(ip=ip)
    assert (stat.date, stat.sent, stat.opens) == (date(2027, 3, 9), 5, 2)


def test_record_warmup_stats_task_reports_an_unknown_ip_or_bad_input(ip):
    assert tasks.record_warmup_stats_task(ip.id + 999, {"sent": 1}) == {
        "success": False,
        "error": f"IP #{ip.id + 999} does not exist",
    }
    assert tasks.record_warmup_stats_task(ip.id, {"sent": 1}, "yesterday")["error"].startswith("date:")
    assert tasks.record_warmup_stats_task(ip.id, {"sent": -2})["error"] == "sent: must not be negative"


def test_tasks_have_names_and_retry_on_infrastructure_errors():
    for task, name in [
        (tasks.consolidate_warmup_stats_task, "warmup.consolidate_warmup_stats"),
        (tasks.advance_warmup_task, "warmup.advance_warmup"),
        (tasks.record_warmup_stats_task, "warmup.record_warmup_stats"),
        (tasks.prune_warmup_data_task, "warmup.prune_warmup_data"),
        (tasks.check_provider_throttling_task, "warmup.check_provider_throttling"),
    ]:
        assert task.name == name
        assert CounterStoreUnavailable in task.autoretry_for
        assert task.max_retries == 5 and task.retry_backoff


@time_machine.travel(NOW, tick=False)
def test_advance_warmup_task_runs_the_tick_for_the_given_date(db, redis_client):
    plan = WarmupPlanFactory(start_date=date(2027, 3, 8), ip__domain__tenant=TenantFactory(time_zone="UTC"))

    result = tasks.advance_warmup_task("2027-03-10")

    plan.refresh_from_db()
    assert plan.status == plan.Status.WARMING
    assert plan.last_ticked_date == date(2027, 3, 10)
    assert "2027-03-10" in result["dates"] and result["plans_processed"] == 1


@time_machine.travel(NOW, tick=False)
def test_prune_deletes_only_expired_data(db, settings):
    settings.DEAD_LETTER_RETENTION_DAYS = 90
    tenant = TenantFactory()
    ip = IPFactory(domain__tenant=tenant)
    CounterDedupKey.objects.create(key="old", expires_at=NOW - timedelta(seconds=1))
    CounterDedupKey.objects.create(key="live", expires_at=NOW + timedelta(days=1))
    MessageRef.objects.create(tenant=tenant, ref="<old@x>", ip=ip, expires_at=NOW - timedelta(hours=1))
    MessageRef.objects.create(tenant=tenant, ref="<live@x>", ip=ip, expires_at=NOW + timedelta(hours=1))
    old_letter = DeadLetter.objects.create(tenant=tenant, source="events", reason="invalid", raw={})
    DeadLetter.objects.filter(pk=old_letter.pk).update(received_at=NOW - timedelta(days=91))
    DeadLetter.objects.create(tenant=tenant, source="events", reason="invalid", raw={})
    ConsolidationBatch.objects.create(batch_id="old")
    ConsolidationBatch.objects.filter(batch_id="old").update(consolidated_at=NOW - timedelta(days=31))
    ConsolidationBatch.objects.create(batch_id="recent")
    # Throttling window counters of the database store: kept two days, whatever consolidation did.
    CounterCell.objects.create(ip=ip, date=NOW.date() - timedelta(days=3), field="@d6000000:gmail", value=4)
    CounterCell.objects.create(ip=ip, date=NOW.date() - timedelta(days=1), field="@d6000001:gmail", value=2)
    CounterCell.objects.create(ip=ip, date=NOW.date() - timedelta(days=3), field="sent:gmail", value=9)

    deleted = tasks.prune_warmup_data_task()
    assert DeadLetter.objects.count() == 2  # the ingestion app's own, pruned by its own task
    assert prune_dead_letters_task() == {"dead_letters": 1}

    assert deleted == {"dedup_keys": 1, "consolidation_batches": 1, "message_refs": 1, "window_counters": 1}
    assert sorted(CounterCell.objects.values_list("field", flat=True)) == ["@d6000001:gmail", "sent:gmail"]
    assert list(CounterDedupKey.objects.values_list("key", flat=True)) == ["live"]
    assert list(MessageRef.objects.values_list("ref", flat=True)) == ["<live@x>"]
    assert DeadLetter.objects.count() == 1
    assert list(ConsolidationBatch.objects.values_list("batch_id", flat=True)) == ["recent"]


# --- The schedule migration ------------------------------------------------------------------------------


def test_the_migration_creates_the_periodic_tasks_without_overwriting_edits(db, settings):
    PeriodicTask.objects.filter(name__in=["consolidate-warmup-stats", "advance-warmup-daily"]).delete()
    settings.CELERY_TIMEZONE = "Europe/Paris"

    periodic_migration.create_periodic_tasks(global_apps, None)

    consolidate = PeriodicTask.objects.get(name="consolidate-warmup-stats")
    advance = PeriodicTask.objects.get(name="advance-warmup-daily")
    assert consolidate.task == "warmup.consolidate_warmup_stats"
    assert (consolidate.crontab.minute, consolidate.crontab.hour) == ("30", "0")
    assert str(consolidate.crontab.timezone) == "Europe/Paris"
    assert (advance.task, advance.crontab.minute, advance.crontab.hour) == ("warmup.advance_warmup", "0", "1")
    assert PeriodicTask.objects.filter(name="prune-warmup-data", task="warmup.prune_warmup_data").exists()
    assert PeriodicTask.objects.filter(name="prune-dead-letters", task="webhooks.prune_dead_letters").exists()

    # An operator's edits survive running it again.
    advance.enabled = False
    advance.crontab = type(advance.crontab).objects.create(minute="0", hour="*")
    advance.save()
    periodic_migration.create_periodic_tasks(global_apps, None)
    advance.refresh_from_db()
    assert (advance.enabled, advance.crontab.hour) == (False, "*")

    periodic_migration.delete_periodic_tasks(global_apps, None)
    assert not PeriodicTask.objects.filter(name__in=["consolidate-warmup-stats", "advance-warmup-daily"]).exists()


# --- Commands --------------------------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_record_stats_consolidate_stats_and_ip_stats_commands(ip, capsys, django_capture_on_commit_callbacks):
    call_command("record_stats", "--ip", "45.123.10.1", "--date", "2027-03-09", "--sent", "200", "--bounced", "3")
    with django_capture_on_commit_callbacks(execute=True):
        call_command("consolidate_stats")
    capsys.readouterr()

    call_command("ip_stats", "--ip", "45.123.10.1", "--json")
    rows = json.loads(capsys.readouterr().out)
    call_command("ip_stats", "--ip", "45.123.10.1", "--from", "2027-03-01", "--to", "2027-03-09")
    table = capsys.readouterr().out

    assert rows == [
        {"date": "2027-03-09", "sent": 200, "delivered": 0, "bounced": 3, "complaints": 0, "opens": 0, "clicks": 0,
         "bounce_rate": 1.5, "complaint_rate": 0.0}
    ]  # fmt: skip
    assert "bounce_rate" in table.splitlines()[0]
    assert "2027-03-09" in table and "1.50" in table


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ip", "45.123.10.9", "--sent", "1"], "no IP 45.123.10.9 is known"),
        (["--ip", "not-an-ip", "--sent", "1"], "--ip: 'not-an-ip' is not a valid"),
        (["--ip", "45.123.10.1", "--sent", "-4"], "--sent: -4 is negative"),
        (["--ip", "45.123.10.1", "--sent", "1", "--opens", "x"], "--opens: 'x' is not a whole number"),
        (["--ip", "45.123.10.1", "--sent", "1", "--date", "09/03/2027"], "--date: '09/03/2027' is not a date"),
    ],
)
def test_record_stats_command_refuses_bad_input(ip, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("record_stats", *arguments)


def test_ip_stats_command_refuses_an_inverted_range(ip):
    with pytest.raises(CommandError, match="--from must not be after --to"):
        call_command("ip_stats", "--ip", "45.123.10.1", "--from", "2027-03-09", "--to", "2027-03-01")


# --- A retry after a lost reply --------------------------------------------------------------------------------


class ReplyDroppingProxy:
    """A TCP proxy to the real Redis that loses the reply of the first `drops` scripts: Redis runs the
    script, then the client's connection is cut before the answer reaches it (as when a network or a
    host fails between the two)."""

    def __init__(self, target: tuple[str, int], drops: int):
        import socket
        import threading

        self.target, self.drops, self.dropped = target, drops, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            state = {"script_sent": False}
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    def _upstream(self, client, server, state) -> None:
        while data := self._recv(client):
            if b"EVALSHA" in data.upper() or b"EVAL\r\n" in data.upper():
                state["script_sent"] = True
            server.sendall(data)

    def _downstream(self, server, client, state) -> None:
        import socket

        while data := self._recv(server):
            if state["script_sent"]:
                with self.lock:
                    drop = self.dropped < self.drops
                    self.dropped += drop
                if drop:  # Redis has run the script: its answer is lost with the connection
                    for sock in (client, server):
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the other thread's recv, sends FIN
                        sock.close()
                    return
            client.sendall(data)

    @staticmethod
    def _recv(sock) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        self.listener.close()


def test_a_retried_record_warmup_stats_task_counts_once_when_the_reply_was_lost(ip, settings, redis_client, retries):
    # Every try of the Redis client (the call and its two retries on a new connection) loses its reply,
    # so that the task fails with CounterStoreUnavailable and Celery retries it.
    proxy = ReplyDroppingProxy(("127.0.0.1", 6379), drops=3)
    settings.REDIS_URL = f"redis://127.0.0.1:{proxy.port}/15"
    try:
        result = tasks.record_warmup_stats_task.apply((ip.id, {"sent": 40, "delivered": 38}, "2027-03-09"))
    finally:
        proxy.close()

    assert result.state == "SUCCESS" and result.get()["success"] is True
    counts = get_store().read(ip.id, date(2027, 3, 9))
    assert (counts["sent"], counts["delivered"]) == (40, 38)
    assert proxy.dropped == 3 and len(retries) == 1  # Redis ran the increment 3 times, the task twice
