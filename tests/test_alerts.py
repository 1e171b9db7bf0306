"""Alerts: recorded always, delivered to a real local HTTP server standing in for the Telegram Bot API."""

import datetime as dt
import logging
import time
import zoneinfo

import pytest
import time_machine
from django.db import transaction

from warmup import alerts, telegram
from warmup.models import Alert, AuditEvent, WarmupPlan

from .factories import AuditEventFactory, DailyStatFactory, DomainFactory, IPFactory, WarmupPlanFactory
from .telegram_support import TOKEN, closed_port

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


@pytest.fixture
def ip(tenant):
    tenant.time_zone = "Europe/Paris"
    tenant.save()
    domain = DomainFactory(tenant=tenant, name="mail2.sos-mail.com")
    return IPFactory(domain=domain, tenant=tenant, address="45.123.10.2")


def pause_text(ip) -> str:
    return alerts.pause_message(
        ip,
        figures=alerts.bounce_figures(
            rate=8.0, threshold=5.0, sent=200, first=dt.date(2026, 12, 22), last=dt.date(2026, 12, 22)
        ),
        from_phase="week_2",
        to_phase="week_1",
        until=dt.datetime(2026, 12, 25, 1, 0, tzinfo=PARIS),
    )


def test_pause_message_names_tenant_ip_domain_decision_and_figures(ip):
    assert pause_text(ip) == (
        "⏸ Paused 45.123.10.2 (mail2.sos-mail.com, SOS-Expat): bounce rate 8.00% > 5.00% over 200 sent "
        "(2026-12-22..2026-12-22); rolled back week_2 -> week_1; resumes 2026-12-25 01:00 Europe/Paris"
    )


def test_it_sends_one_message_per_alert_after_commit(fake_telegram, ip, tenant, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        alert = alerts.raise_alert(
            Alert.Kind.PAUSED, tenant=tenant, ip=ip, message=pause_text(ip), figures={"bounce_rate": 8.0}
        )
        assert fake_telegram.requests == []  # nothing leaves before the transaction commits
    assert len(callbacks) == 1
    assert len(fake_telegram.requests) == 1
    request = fake_telegram.requests[0]
    assert request["path"] == f"/bot{TOKEN}/sendMessage"
    assert request["json"]["chat_id"] == "-1001"
    assert request["json"]["parse_mode"] == "HTML"
    assert "bounce rate 8.00% &gt; 5.00% over 200 sent" in request["json"]["text"]
    assert "45.123.10.2 (mail2.sos-mail.com, SOS-Expat)" in request["json"]["text"]
    alert.refresh_from_db()
    assert alert.delivery == Alert.Delivery.SENT
    assert alert.sent_at is not None
    assert alert.figures == {"bounce_rate": 8.0}


def test_a_rolled_back_transaction_sends_nothing(fake_telegram, tenant, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="will be rolled back")
            raise RuntimeError("tick failed")
    assert callbacks == []
    assert fake_telegram.requests == []
    assert not Alert.objects.exists()


def test_the_tenant_chat_overrides_the_default(fake_telegram, tenant, django_capture_on_commit_callbacks):
    tenant.telegram_chat_id = "-2002"
    tenant.save()
    with django_capture_on_commit_callbacks(execute=True):
        alert = alerts.raise_alert(Alert.Kind.RESUMED, tenant=tenant, message="resumed")
    assert fake_telegram.requests[0]["json"]["chat_id"] == "-2002"
    assert alert.chat_id == "-2002"


def test_text_is_html_escaped(fake_telegram, tenant, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        alerts.raise_alert(Alert.Kind.MANUAL, tenant=tenant, message='<b>bold</b> & "quoted"')
    assert fake_telegram.texts() == ["&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;"]


def test_long_messages_are_cut_under_the_limit_without_breaking_an_entity(
    fake_telegram, tenant, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        alert = alerts.raise_alert(Alert.Kind.MANUAL, tenant=tenant, message="&" * 3000 + "🔥" * 3000)
    (text,) = fake_telegram.texts()
    assert len(text.encode("utf-16-le")) // 2 <= telegram.MAX_MESSAGE_LENGTH
    assert text.endswith(telegram.TRUNCATION_MARK)
    body = text.removesuffix(telegram.TRUNCATION_MARK)
    assert body.replace("&amp;", "") == ""  # whole entities only
    assert len(body) == 5 * ((telegram.MAX_MESSAGE_LENGTH - len(telegram.TRUNCATION_MARK)) // 5)
    assert Alert.objects.get(pk=alert.pk).message == "&" * 3000 + "🔥" * 3000  # the record keeps it whole


def test_render_html_keeps_surrogate_pairs_whole():
    text = telegram.render_html("🔥" * 5000)
    assert len(text.encode("utf-16-le")) // 2 <= telegram.MAX_MESSAGE_LENGTH
    assert text.removesuffix(telegram.TRUNCATION_MARK) == "🔥" * ((4096 - len(telegram.TRUNCATION_MARK)) // 2)


def test_a_429_retry_after_is_honoured(fake_telegram, tenant, django_capture_on_commit_callbacks):
    fake_telegram.script = [
        (429, {"ok": False, "error_code": 429, "description": "Too Many Requests", "parameters": {"retry_after": 1}})
    ]
    with django_capture_on_commit_callbacks(execute=True):
        alert = alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="flood")
    first, second = fake_telegram.requests
    assert second["at"] - first["at"] >= 1.0
    alert.refresh_from_db()
    assert alert.delivery == Alert.Delivery.SENT


def test_a_429_wait_is_bounded(fake_telegram, settings, tenant, django_capture_on_commit_callbacks):
    settings.TELEGRAM_RETRY_AFTER_MAX_SECONDS = 0.2
    fake_telegram.script = [(429, {"ok": False, "description": "Too Many Requests", "parameters": {"retry_after": 60}})]
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="flood")
    assert time.monotonic() - started < 5
    assert len(fake_telegram.requests) == 2


def test_server_errors_are_retried(fake_telegram, tenant, django_capture_on_commit_callbacks):
    fake_telegram.script = [(502, {"ok": False, "description": "Bad Gateway"})] * 2
    with django_capture_on_commit_callbacks(execute=True):
        alert = alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="retry me")
    assert len(fake_telegram.requests) == 3
    alert.refresh_from_db()
    assert alert.delivery == Alert.Delivery.SENT


def test_a_client_error_is_not_retried_and_is_recorded(fake_telegram, tenant, django_capture_on_commit_callbacks):
    fake_telegram.script = [(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"})]
    with django_capture_on_commit_callbacks(execute=True):
        alert = alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="nowhere")
    assert len(fake_telegram.requests) == 1
    alert.refresh_from_db()
    assert alert.delivery == Alert.Delivery.FAILED
    assert "chat not found" in alert.delivery_error


def test_server_down_records_a_failure_and_raises_nothing(
    fake_telegram, settings, tenant, django_capture_on_commit_callbacks
):
    settings.TELEGRAM_API_URL = f"http://127.0.0.1:{closed_port()}"
    settings.TELEGRAM_MAX_ATTEMPTS = 2
    with django_capture_on_commit_callbacks(execute=True):
        alert = alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="unreachable")
    alert.refresh_from_db()
    assert alert.delivery == Alert.Delivery.FAILED
    assert "ConnectionError" in alert.delivery_error
    assert "after 2 attempts" in alert.delivery_error
    assert TOKEN not in alert.delivery_error
    assert alert.sent_at is None


def test_dry_run_records_and_sends_nothing(fake_telegram, settings, tenant, django_capture_on_commit_callbacks):
    settings.WARMUP_DRY_RUN = True
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        alert = alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="dry")
    assert callbacks == []
    assert fake_telegram.requests == []
    assert Alert.objects.get(pk=alert.pk).delivery == Alert.Delivery.DRY_RUN


def test_not_configured_is_logged(fake_telegram, settings, tenant, caplog, django_capture_on_commit_callbacks):
    settings.TELEGRAM_BOT_TOKEN = ""
    with caplog.at_level(logging.WARNING, logger="warmup.alerts"):
        with django_capture_on_commit_callbacks(execute=True):
            alert = alerts.raise_alert(Alert.Kind.PAUSED, tenant=tenant, message="nobody listens")
    assert fake_telegram.requests == []
    assert Alert.objects.get(pk=alert.pk).delivery == Alert.Delivery.NOT_CONFIGURED
    assert "nobody listens" in caplog.text
    assert "TELEGRAM_BOT_TOKEN" in caplog.text


def test_consolidation_failure_and_unattributed_spike_alerts(fake_telegram, tenant, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        failed = alerts.alert_consolidation_failed(RuntimeError("Redis went away"))
        spike = alerts.alert_unattributed_spike(
            tenant,
            count=1500,
            since=dt.datetime(2026, 12, 22, 0, 0, tzinfo=dt.UTC),
            threshold=100,
            examples=["45.9.9.9"],
        )
    assert failed.kind == Alert.Kind.CONSOLIDATION_FAILED and spike.kind == Alert.Kind.UNATTRIBUTED_SPIKE
    consolidation_text, spike_text = fake_telegram.texts()
    assert "Consolidation failed: Redis went away" in consolidation_text
    assert "1,500 since 2026-12-22 00:00 UTC (threshold 100)" in spike_text
    assert "45.9.9.9" in spike_text


# --- Quota overruns -------------------------------------------------------------------------------------


DAY = dt.date(2026, 12, 22)


def warming_plan(ip, *, started: dt.date) -> WarmupPlan:
    plan = WarmupPlanFactory(ip=ip, status=WarmupPlan.Status.WARMING, phase="week_1", start_date=started)
    AuditEventFactory(plan=plan, date=started, kind=AuditEvent.Kind.STARTED, to_phase="week_1", to_status="warming")
    return plan


def test_an_ip_over_110_percent_of_its_quota_raises_one_alert(ip, django_capture_on_commit_callbacks):
    warming_plan(ip, started=DAY - dt.timedelta(days=3))
    DailyStatFactory(ip=ip, date=DAY, sent=56)  # quota 50: 112%
    with django_capture_on_commit_callbacks(execute=True):
        (alert,) = alerts.check_quota_overruns([DAY])
        assert alerts.check_quota_overruns([DAY]) == []  # idempotent
    assert alert.kind == Alert.Kind.QUOTA_OVERRUN and alert.ip == ip
    assert alert.figures == {"date": "2026-12-22", "sent": 56, "quota": 50, "percent_of_quota": 112.0}
    assert "sent 56 on 2026-12-22 against a quota of 50 (112%, limit 110%)" in alert.message


def test_110_percent_is_not_an_overrun(ip):
    warming_plan(ip, started=DAY - dt.timedelta(days=3))
    DailyStatFactory(ip=ip, date=DAY, sent=55)
    assert alerts.check_quota_overruns([DAY]) == []


def test_the_quota_is_the_one_in_force_that_day(ip):
    plan = warming_plan(ip, started=DAY - dt.timedelta(days=8))
    # Advanced to week 2 (quota 200) the next day: the day itself still had quota 50.
    plan.phase = "week_2"
    plan.save()
    AuditEventFactory(
        plan=plan,
        date=DAY + dt.timedelta(days=1),
        kind=AuditEvent.Kind.ADVANCED,
        from_phase="week_1",
        to_phase="week_2",
        from_status="warming",
        to_status="warming",
    )
    DailyStatFactory(ip=ip, date=DAY, sent=120)
    (alert,) = alerts.check_quota_overruns([DAY])
    assert alert.figures["quota"] == 50


def test_paused_and_unstarted_days_are_left_out(ip, tenant):
    plan = warming_plan(ip, started=DAY - dt.timedelta(days=3))
    AuditEventFactory(
        plan=plan, date=DAY, kind=AuditEvent.Kind.PAUSED, from_status="warming", to_status="paused", to_phase="week_1"
    )
    DailyStatFactory(ip=ip, date=DAY, sent=500)
    later = IPFactory(tenant=tenant, domain=ip.domain)
    warming_plan(later, started=DAY + dt.timedelta(days=2))
    DailyStatFactory(ip=later, date=DAY, sent=500)
    assert alerts.check_quota_overruns([DAY]) == []


def test_quota_overrun_check_runs_a_fixed_number_of_queries(tenant, django_assert_max_num_queries):
    domain = DomainFactory(tenant=tenant)
    for _ in range(6):
        ip = IPFactory(tenant=tenant, domain=domain)
        warming_plan(ip, started=DAY - dt.timedelta(days=2))
        DailyStatFactory(ip=ip, date=DAY, sent=40)
    with django_assert_max_num_queries(2):
        assert alerts.check_quota_overruns([DAY]) == []


# --- The engine's tick ------------------------------------------------------------------------------------


def test_a_pause_decided_by_the_tick_sends_exactly_one_message_with_the_figures(
    fake_telegram, ip, redis_client, django_capture_on_commit_callbacks
):
    from warmup import engine

    day = dt.date(2026, 12, 23)
    WarmupPlanFactory(
        ip=ip,
        status=WarmupPlan.Status.WARMING,
        phase="week_2",
        start_date=day - dt.timedelta(days=10),
        last_ticked_date=day - dt.timedelta(days=1),
        window_start_date=day - dt.timedelta(days=3),
    )
    DailyStatFactory(ip=ip, date=day - dt.timedelta(days=1), sent=200, bounced=16)  # 8 %

    with time_machine.travel(dt.datetime(2026, 12, 23, 1, 30, tzinfo=PARIS), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            engine.tick(as_of=day)
            assert fake_telegram.requests == []  # not before the tick's transaction commits
        with django_capture_on_commit_callbacks(execute=True):
            engine.tick(as_of=day)  # nothing new to decide: nothing more sent

    (text,) = fake_telegram.texts()
    assert "45.123.10.2" in text and "mail2.sos-mail.com" in text and "SOS-Expat" in text
    assert "8.00%" in text and "200" in text
    alert = Alert.objects.get(kind=Alert.Kind.PAUSED)
    assert alert.delivery == Alert.Delivery.SENT
    assert alert.figures["bounced"] == 16
