"""Same-day reaction to throttling: deferral classification, window counters, the periodic suspension check
and the lifting of provider suspensions, through the webhooks and the task."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from domains.models import WebhookToken
from warmup import consolidation, tasks, throttling
from warmup.counters import THROTTLING_COUNTERS, CounterStoreUnavailable, get_store
from warmup.models import Alert, AuditEvent, DailyStat, ProviderSuspension
from warmup.providers import provider_quotas, split_quota, tenant_shares
from webhooks import deferrals
from webhooks.events import EventType
from webhooks.models import DeferralRule
from webhooks.parsers import kumomta, normalised, powermta

from .factories import DomainFactory, IPFactory, TenantFactory, make_member, plan_in_state
from .webhooks_support import Poster

NOW = datetime(2027, 3, 10, 10, 30, tzinfo=UTC)
ADDRESS = "45.123.10.1"
GMAIL_DIAG = (
    "smtp;421-4.7.28 [45.123.10.1] Our system has detected an unusual rate of 421-4.7.28 unsolicited mail "
    "originating from your IP address. To protect our 421-4.7.28 users from spam, mail sent from your IP address "
    "has been temporarily 421-4.7.28 rate limited. - gsmtp"
)
SEED = importlib.import_module("webhooks.migrations.0004_deferral_rules").SEED


@pytest.fixture(params=["redis", "database"])
def backend(request, settings, redis_client):
    settings.WARMUP_COUNTER_BACKEND = request.param
    return request.param


@pytest.fixture
def plan(db):
    tenant = TenantFactory(name="SOS-Expat", slug="sos-expat", time_zone="UTC")
    domain = DomainFactory(tenant=tenant, name="mail1.sos-mail.com")
    return plan_in_state("warming", tenant=tenant, address=ADDRESS, domain=domain)


@pytest.fixture
def poster(client, plan) -> Poster:
    deferrals.invalidate()
    return Poster(client, WebhookToken.issue(plan.ip.tenant, label="test")[1])


def pmta_deferral(
    n: int, at: datetime, *, domain: str = "gmail.com", diag: str = GMAIL_DIAG, status: str = "4.7.28 (rate limited)"
) -> dict:
    return {
        "type": "t",
        "timeLogged": at.strftime("%Y-%m-%d %H:%M:%S+0000"),
        "rcpt": f"user{n}@{domain}",
        "dlvSourceIp": ADDRESS,
        "dsnStatus": status,
        "dsnDiag": diag,
    }


def pmta_delivery(n: int, at: datetime, domain: str = "gmail.com") -> dict:
    return {"type": "d", "timeLogged": at.strftime("%Y-%m-%d %H:%M:%S+0000"), "rcpt": f"ok{n}@{domain}",
            "dlvSourceIp": ADDRESS}  # fmt: skip


def post_powermta(poster: Poster, records: list[dict]) -> None:
    response = poster.post_json("/api/v1/webhooks/powermta/", records)
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == len(records)


@pytest.fixture
def run_check(fake_telegram, django_capture_on_commit_callbacks):
    """The task as beat queues it, run in this process; alerts go to the fake Telegram once committed."""

    def run() -> dict:
        with django_capture_on_commit_callbacks(execute=True):
            return tasks.check_provider_throttling_task.delay().get()

    return run


def thirty_in_an_hour(poster: Poster) -> None:
    with time_machine.travel(NOW, tick=False):
        post_powermta(poster, [pmta_deferral(n, NOW - timedelta(minutes=2 * n)) for n in range(30)])


# --- Suspension --------------------------------------------------------------------------------------------


def test_thirty_gmail_rate_limit_deferrals_in_an_hour_suspend_gmail_for_that_ip(
    run_check, backend, plan, poster, fake_telegram
):
    thirty_in_an_hour(poster)

    with time_machine.travel(NOW + timedelta(minutes=3), tick=False):
        result = run_check()
        quotas = provider_quotas([plan.ip], {plan.ip.pk: 1000})[plan.ip.pk]

    assert result == {"suspended": [[plan.ip.pk, "gmail"]], "lifted": []}
    suspension = ProviderSuspension.objects.get()
    assert (suspension.ip_id, suspension.provider, suspension.reason) == (plan.ip.pk, "gmail", "throttling")
    assert suspension.ends_at == NOW + timedelta(minutes=3, hours=4)
    assert suspension.figures["throttled"] == 30 and suspension.figures["rate_limited"] == 30
    assert suspension.figures["deferrals"] == 30 and suspension.figures["share"] == 100.0
    assert suspension.figures["classification"] == "rate_limited"
    event = AuditEvent.objects.get(plan=plan)
    assert event.kind == AuditEvent.Kind.PROVIDER_SUSPENDED
    assert event.figures["provider"] == "gmail" and event.figures["throttled"] == 30
    assert (event.from_status, event.to_status) == ("warming", "warming")
    alert = Alert.objects.get()
    assert alert.kind == Alert.Kind.PROVIDER_SUSPENDED and alert.ip == plan.ip
    assert len(fake_telegram.texts()) == 1
    assert "Suspended Gmail for 45.123.10.1 (mail1.sos-mail.com, SOS-Expat)" in fake_telegram.texts()[0]
    assert "30 throttling deferrals (rate_limited) of 30 deferrals (100.0%)" in fake_telegram.texts()[0]

    expected = split_quota(1000, tenant_shares([plan.ip.tenant])[plan.ip.tenant.pk])
    assert quotas["gmail"].daily_quota == 0 and quotas["gmail"].suspended_until == suspension.ends_at
    assert quotas["microsoft"].daily_quota == expected["microsoft"] > 0

    # The next run, five minutes later, finds the suspension in force: nothing more.
    with time_machine.travel(NOW + timedelta(minutes=8), tick=False):
        assert run_check() == {"suspended": [], "lifted": []}
    assert ProviderSuspension.objects.count() == 1 and Alert.objects.count() == 1
    assert len(fake_telegram.texts()) == 1


def test_the_same_thirty_deferrals_spread_over_a_day_change_nothing(run_check, backend, plan, poster, fake_telegram):
    with time_machine.travel(NOW, tick=False):
        post_powermta(poster, [pmta_deferral(n, NOW - timedelta(minutes=48 * n)) for n in range(30)])

    with time_machine.travel(NOW + timedelta(minutes=3), tick=False):
        assert run_check() == {"suspended": [], "lifted": []}
    assert not ProviderSuspension.objects.exists() and not Alert.objects.exists()


@pytest.mark.parametrize(
    ("setting", "value", "suspended"),
    [
        ("WARMUP_THROTTLE_DEFERRALS", 31, False),
        ("WARMUP_THROTTLE_DEFERRALS", 20, True),
        ("WARMUP_THROTTLE_SHARE", 25.0, True),  # 30 of the hour's 120 deferrals: 25%
        ("WARMUP_THROTTLE_SHARE", 26.0, False),
    ],
)
def test_the_thresholds_decide(
    run_check, settings, redis_client, plan, poster, fake_telegram, setting, value, suspended
):
    setattr(settings, setting, value)
    thirty_in_an_hour(poster)
    if setting == "WARMUP_THROTTLE_SHARE":  # 90 Gmail "mailbox full" deferrals in the same hour
        full = "smtp;452 4.2.2 The email account that you tried to reach is over quota. - gsmtp"
        with time_machine.travel(NOW, tick=False):
            post_powermta(
                poster,
                [pmta_deferral(500 + n, NOW - timedelta(seconds=30 * n), diag=full, status="4.2.2") for n in range(90)],
            )

    with time_machine.travel(NOW + timedelta(minutes=3), tick=False):
        run_check()

    assert ProviderSuspension.objects.filter(provider="gmail").exists() is suspended
    assert Alert.objects.count() == (1 if suspended else 0)


def test_other_deferrals_count_as_deferrals_but_not_as_throttling(run_check, redis_client, plan, poster, fake_telegram):
    full = "smtp;452 4.2.2 The email account that you tried to reach is over quota. - gsmtp"
    with time_machine.travel(NOW, tick=False):
        post_powermta(
            poster, [pmta_deferral(n, NOW - timedelta(minutes=n), diag=full, status="4.2.2") for n in range(40)]
        )
    with time_machine.travel(NOW + timedelta(minutes=3), tick=False):
        assert run_check()["suspended"] == []


def test_kumomta_transient_failures_are_classified(run_check, backend, plan, poster, fake_telegram):
    records = [
        {
            "type": "TransientFailure",
            "id": f"spool-{n}",
            "timestamp": int((NOW - timedelta(minutes=n)).timestamp()),
            "recipient": f"user{n}@hotmail.com",
            "source_address": {"address": f"{ADDRESS}:25"},
            "num_attempts": 1,
            "response": {
                "code": 451,
                "enhanced_code": {"class": 4, "subject": 7, "detail": 650},
                "content": "The mail server [45.123.10.1] has been temporarily rate limited due to IP reputation. "
                "For e-mail delivery information, see https://aka.ms/postmaster (S775)",
            },
        }
        for n in range(30)
    ]
    with time_machine.travel(NOW, tick=False):
        assert poster.post_json("/api/v1/webhooks/kumomta/", records).json()["accepted"] == 30

    with time_machine.travel(NOW + timedelta(minutes=2), tick=False):
        run_check()

    suspension = ProviderSuspension.objects.get()
    assert suspension.provider == "microsoft"
    assert suspension.figures["reputation"] == 30 and suspension.figures["classification"] == "reputation"


def test_the_events_endpoint_response_is_classified(run_check, redis_client, plan, poster, fake_telegram):
    records = [
        {
            "type": "deferred",
            "ip": ADDRESS,
            "occurred_at": int((NOW - timedelta(minutes=n)).timestamp()),
            "recipient": f"user{n}@yahoo.com",
            "event_id": f"e{n}",
            "response": "421 4.7.0 [TSS04] Messages from 45.123.10.1 temporarily deferred due to unexpected volume "
            "or user complaints - 4.16.55.1",
        }
        for n in range(30)
    ]
    with time_machine.travel(NOW, tick=False):
        assert poster.post_json("/api/v1/webhooks/events/", records).json()["accepted"] == 30
    with time_machine.travel(NOW + timedelta(minutes=2), tick=False):
        run_check()
    assert ProviderSuspension.objects.get().provider == "yahoo"


def test_the_check_makes_a_fixed_number_of_queries(
    redis_client, poster, plan, fake_telegram, django_assert_max_num_queries
):
    yahoo = "421 4.7.0 [TSS04] Messages from 45.123.10.2 temporarily deferred due to unexpected volume"
    second = IPFactory(domain__tenant=plan.ip.tenant, address="45.123.10.2")  # an IP without a plan
    thirty_in_an_hour(poster)
    with time_machine.travel(NOW, tick=False):
        records = [
            pmta_deferral(n, NOW - timedelta(minutes=n), domain="yahoo.com", diag=yahoo, status="4.7.0")
            for n in range(30)
        ]
        records += [{**pmta_deferral(n, NOW - timedelta(minutes=n)), "dlvSourceIp": "45.123.10.2"} for n in range(30)]
        post_powermta(poster, records)

    # The check itself (the alerts' delivery, a task per alert, is not part of it).
    with time_machine.travel(NOW + timedelta(minutes=3), tick=False), django_assert_max_num_queries(11):
        report = throttling.check_provider_throttling()
    suspended = [[s.ip_id, s.provider] for s in report.suspended]

    assert sorted(suspended) == sorted([[plan.ip.pk, "gmail"], [plan.ip.pk, "yahoo"], [second.pk, "gmail"]])
    assert AuditEvent.objects.count() == 2  # the IP without a plan has its suspension and alert only
    assert Alert.objects.filter(kind=Alert.Kind.PROVIDER_SUSPENDED).count() == 3


# --- Lifting -----------------------------------------------------------------------------------------------


def test_a_suspension_is_lifted_once_when_its_time_is_up(run_check, backend, plan, poster, fake_telegram):
    thirty_in_an_hour(poster)
    with time_machine.travel(NOW + timedelta(minutes=3), tick=False):
        run_check()
    suspension = ProviderSuspension.objects.get()

    with time_machine.travel(suspension.ends_at - timedelta(minutes=1), tick=False):
        assert run_check()["lifted"] == []
    with time_machine.travel(suspension.ends_at + timedelta(minutes=2), tick=False):
        assert run_check()["lifted"] == [[plan.ip.pk, "gmail"]]
        quotas = provider_quotas([plan.ip], {plan.ip.pk: 1000})[plan.ip.pk]
    with time_machine.travel(suspension.ends_at + timedelta(minutes=7), tick=False):
        assert run_check() == {"suspended": [], "lifted": []}

    suspension.refresh_from_db()
    assert suspension.lifted_at == suspension.ends_at + timedelta(minutes=2)
    assert quotas["gmail"].daily_quota > 0
    resumed = AuditEvent.objects.get(kind=AuditEvent.Kind.PROVIDER_RESUMED)
    assert resumed.plan == plan and resumed.figures["provider"] == "gmail"
    assert resumed.figures["reason"] == "throttling"
    assert Alert.objects.filter(kind=Alert.Kind.PROVIDER_RESUMED).count() == 1
    assert len(fake_telegram.texts()) == 2
    assert "Resumed Gmail for 45.123.10.1" in fake_telegram.texts()[1]


def test_suspensions_of_any_reason_are_lifted(db, plan, fake_telegram, django_assert_max_num_queries):
    for provider, reason in [("microsoft", "threshold"), ("yahoo", "manual"), ("apple", "threshold")]:
        ProviderSuspension.objects.create(
            ip=plan.ip, provider=provider, reason=reason, starts_at=NOW - timedelta(hours=48), ends_at=NOW
        )
    ProviderSuspension.objects.create(
        ip=plan.ip, provider="gmail", reason="threshold", starts_at=NOW, ends_at=NOW + timedelta(hours=1)
    )
    with time_machine.travel(NOW + timedelta(minutes=1), tick=False), django_assert_max_num_queries(9):
        lifted = throttling.check_provider_throttling().lifted

    assert sorted(s.provider for s in lifted) == ["apple", "microsoft", "yahoo"]
    assert ProviderSuspension.objects.filter(lifted_at__isnull=True).get().provider == "gmail"
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.PROVIDER_RESUMED).count() == 3
    assert Alert.objects.filter(kind=Alert.Kind.PROVIDER_RESUMED).count() == 3


def test_lifting_does_not_wait_for_the_counter_store(db, plan, counter_store_down):
    ProviderSuspension.objects.create(
        ip=plan.ip, provider="gmail", reason="throttling", starts_at=NOW - timedelta(hours=4), ends_at=NOW
    )
    with time_machine.travel(NOW + timedelta(minutes=1), tick=False), pytest.raises(CounterStoreUnavailable):
        throttling.check_provider_throttling()  # the task retries on this
    assert ProviderSuspension.objects.get().lifted_at == NOW + timedelta(minutes=1)
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.PROVIDER_RESUMED).count() == 1


# --- Counting -----------------------------------------------------------------------------------------------


def test_window_counters_expire_on_redis_and_never_reach_the_daily_stats(backend, plan, poster, redis_client):
    thirty_in_an_hour(poster)
    if backend == "redis":
        # One small hash per IP-day and hour of buckets, expiring by itself within three hours.
        windows = sorted(redis_client.scan_iter(match=f"wp:{{ip:{plan.ip.pk}:2027-03-10}}:w*"))
        hour = int(NOW.timestamp()) // 3600
        assert windows == [f"wp:{{ip:{plan.ip.pk}:2027-03-10}}:w{h}".encode() for h in (hour - 1, hour)]
        assert all(0 < redis_client.ttl(key) <= 3 * 3600 for key in windows)
        assert sum(int(v) for key in windows for v in redis_client.hvals(key)) == 60  # 30 deferrals, 30 rate limited
        assert not [f for f in redis_client.hkeys(f"wp:{{ip:{plan.ip.pk}:2027-03-10}}:c") if f.startswith(b"@")]

    with time_machine.travel(NOW + timedelta(days=1), tick=False):
        consolidation.consolidate()

    stat = DailyStat.objects.get(ip=plan.ip)
    assert stat.deferred == 30 and stat.sent == 0
    assert stat.by_provider == {"gmail": {"deferred": 30}}


def test_deliveries_add_nothing_to_the_window(backend, plan, poster, redis_client):
    with time_machine.travel(NOW, tick=False):
        post_powermta(poster, [pmta_delivery(n, NOW - timedelta(seconds=10 * n)) for n in range(300)])
    first, last = throttling.window_buckets(NOW + timedelta(minutes=3))
    assert get_store().window(first, last) == {}
    assert get_store().read(plan.ip.pk, NOW.date())["sent"] == 300
    if backend == "redis":
        assert not list(redis_client.scan_iter(match=f"wp:{{ip:{plan.ip.pk}:*}}:w*"))


def test_deferrals_cost_the_webhook_no_query_once_the_caches_are_warm(
    redis_client, plan, poster, django_assert_num_queries
):
    with time_machine.travel(NOW, tick=False):
        post_powermta(poster, [pmta_deferral(n, NOW - timedelta(minutes=n)) for n in range(5)])  # warms them
        with django_assert_num_queries(0):
            post_powermta(poster, [pmta_deferral(100 + n, NOW - timedelta(minutes=n)) for n in range(30)])


def test_a_retried_batch_adds_nothing_to_the_window(backend, plan, poster):
    thirty_in_an_hour(poster)
    with time_machine.travel(NOW, tick=False):
        # The sender posts half of it again with 15 new deferrals: only the new ones count, window included.
        records = [pmta_deferral(n, NOW - timedelta(minutes=2 * n)) for n in range(15)]
        records += [pmta_deferral(100 + n, NOW - timedelta(minutes=n)) for n in range(15)]
        answer = poster.post_json("/api/v1/webhooks/powermta/", records).json()
    assert (answer["accepted"], answer["duplicates"]) == (15, 15)

    first, last = throttling.window_buckets(NOW + timedelta(minutes=3))
    figures = get_store().window(first, last)[(plan.ip.pk, "gmail")]
    assert (figures.deferrals, figures.rate_limited, figures.reputation) == (45, 45, 0)
    assert get_store().read(plan.ip.pk, NOW.date())["deferred"] == 45


# --- Parsers ------------------------------------------------------------------------------------------------


def test_parsers_carry_the_reply_of_deferrals_only():
    body = (
        "type,timeLogged,rcpt,dlvSourceIp,dsnStatus,dsnDiag\n"
        f't,1798016412,a@gmail.com,{ADDRESS},4.7.28 (rate limited),"{GMAIL_DIAG}"\n'
        f"d,1798016412,b@gmail.com,{ADDRESS},2.0.0 (success),smtp;250 2.0.0 OK\n"
    ).encode()
    deferred, delivered = powermta.parse_body(body, "text/csv").events
    assert deferred.type is EventType.DEFERRED and deferred.smtp_reply.startswith("smtp;421-4.7.28")
    assert deferred.smtp_reply.endswith("4.7.28 (rate limited)")
    assert delivered.smtp_reply == ""
    # The reply is not part of the de-duplication key: records posted before keep their keys.
    without = (
        b"type,timeLogged,rcpt,dlvSourceIp,dsnStatus\n"
        + f"t,1798016412,a@gmail.com,{ADDRESS},4.7.28 (rate limited)\n".encode()
    )
    assert powermta.parse_body(without, "text/csv").events[0].key == deferred.key

    kumo = kumomta.normalise_record(
        {
            "type": "TransientFailure",
            "timestamp": 1798016412,
            "recipient": "a@yahoo.com",
            "response": {"code": 421, "enhanced_code": {"class": 4, "subject": 7, "detail": 0}, "content": "[TSS04]"},
        }
    )
    assert kumo.smtp_reply == "421 4.7.0 [TSS04]"
    event = normalised.normalise_record({"type": "delivered", "occurred_at": 1798016412, "response": "250 OK"})
    assert event.smtp_reply == ""


# --- Rules -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEED, ids=[f"{s['provider']}-{s['order']}" for s in SEED])
def test_the_seeded_rules_classify_their_sample_replies(db, seed):
    deferrals.invalidate()
    assert deferrals.classify(seed["provider"], seed["sample"]) == seed["classification"]
    assert DeferralRule.objects.filter(pattern=seed["pattern"], note__contains="http").exists()


def test_every_throttling_classification_has_its_window_counter():
    assert set(THROTTLING_COUNTERS) == {value.value for value in DeferralRule.THROTTLING} == deferrals.THROTTLING


def test_unknown_replies_and_other_providers_are_other(db):
    deferrals.invalidate()
    assert deferrals.classify("gmail", "452 4.2.2 mailbox full") == "other"
    assert deferrals.classify("apple", SEED[0]["sample"]) == "other"  # a Gmail rule reads Gmail's replies


def test_rules_are_cached_and_an_edit_takes_effect(db, django_assert_num_queries):
    deferrals.invalidate()
    deferrals.classify("gmail", "x")
    with django_assert_num_queries(0):
        deferrals.classify("gmail", "421 4.7.28")
    DeferralRule.objects.create(provider="", pattern=r"mailbox full", classification="rate_limited", order=1)
    assert deferrals.classify("apple", "452 4.2.2 Mailbox FULL") == "rate_limited"


def test_the_admin_rejects_an_invalid_pattern_naming_the_field(client, superuser):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:webhooks_deferralrule_add"),
        {"order": 5, "provider": "gmail", "pattern": "4\\.7\\.(28", "classification": "rate_limited", "enabled": "on"},
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["pattern"]
    assert "Pattern: not a valid regular expression" in errors["pattern"][0]
    assert not DeferralRule.objects.filter(pattern="4\\.7\\.(28").exists()


def test_the_admin_lists_the_rules_for_editing_in_place(client, superuser, django_assert_max_num_queries):
    client.force_login(superuser)
    with django_assert_max_num_queries(8):
        response = client.get(reverse("admin:webhooks_deferralrule_changelist"))
    assert response.status_code == 200
    assert response.content.count(b'name="form-') >= len(SEED)


def test_the_rules_are_the_installations_a_tenant_member_cannot_reach_them(client, plan):
    client.force_login(make_member("alice", plan.ip.tenant))
    assert client.get(reverse("admin:webhooks_deferralrule_changelist")).status_code == 403
    response = client.post(
        reverse("admin:webhooks_deferralrule_add"),
        {"order": 1, "provider": "", "pattern": ".", "classification": "rate_limited", "enabled": "on"},
    )
    assert response.status_code == 403
    assert not DeferralRule.objects.filter(pattern=".").exists()


# --- Schedule ----------------------------------------------------------------------------------------------


def test_the_beat_row_exists_after_migrations(db):
    task = PeriodicTask.objects.get(name="check-provider-throttling")
    assert task.task == "warmup.check_provider_throttling" and task.enabled
    assert (task.crontab.minute, task.crontab.hour) == ("*/5", "*")
    assert json.loads(task.args or "[]") == []
