"""Provider thresholds in the daily tick (README "Providers"): a provider whose own rates trip is paused
for the IP while the plan keeps warming for the others; repeated provider pauses pause the IP."""

import datetime as dt
import io

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from domains.models import IP, Domain
from warmup import engine
from warmup.models import Alert, AuditEvent, DailyStat, ProviderSuspension, WarmupPlan
from warmup.providers import provider_quotas

from .factories import TenantFactory, plan_in_state

START = dt.date(2027, 1, 4)
Plan = WarmupPlan
Kind = AuditEvent.Kind

# The default shares (WARMUP_PROVIDER_SHARES): 40 / 25 / 15 / 5 / 15 of a week_2 quota of 200.
CLEAN = {"gmail": (80, 0), "microsoft": (50, 0), "yahoo": (30, 0), "apple": (10, 0), "other": (30, 0)}
MICROSOFT_BOUNCING = {**CLEAN, "microsoft": (50, 4)}  # 8% at Microsoft, 2% overall


def day_n(n: int) -> dt.date:
    return START + dt.timedelta(days=n - 1)


def at(day: dt.date, hour: int = 1) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def by_provider(figures: dict) -> dict:
    """{provider: (sent, bounced[, complaints])} as a DailyStat's by_provider JSON."""
    result = {}
    for provider, counts in figures.items():
        sent, bounced, complaints = (*counts, 0)[:3]
        result[provider] = {"sent": sent, "delivered": sent - bounced, "bounced": bounced, "complaints": complaints}
    return result


def send(plan: Plan, day: dt.date, figures: dict) -> None:
    """One consolidated day of the IP, per provider, with its totals."""
    providers = by_provider(figures)
    totals = {name: sum(p[name] for p in providers.values()) for name in ("sent", "delivered", "bounced", "complaints")}
    DailyStat.objects.update_or_create(ip=plan.ip, date=day, defaults={**totals, "by_provider": providers})


def tick_on(day: dt.date, **kwargs) -> engine.TickReport:
    """The tick as beat runs it, at half past one in the morning of `day` (the tenants are in UTC)."""
    with time_machine.travel(at(day, 1) + dt.timedelta(minutes=30), tick=False):
        return engine.tick(**kwargs)


def warming(tenant=None, **fields) -> Plan:
    """A plan in week_2 (quota 200), warming since before START and processed up to START."""
    fields = {
        "phase": "week_2",
        "start_date": START - dt.timedelta(days=7),
        "window_start_date": START - dt.timedelta(days=7),
        "last_ticked_date": START,
        **fields,
    }
    return plan_in_state("warming", tenant=tenant or TenantFactory(), today=START, **fields)


def quotas(plan: Plan, moment: dt.datetime) -> dict[str, int]:
    plan = Plan.objects.select_related("ip__tenant").get(pk=plan.pk)
    return {
        p: q.daily_quota
        for p, q in provider_quotas([plan.ip], {plan.ip.pk: plan.daily_quota}, moment)[plan.ip.pk].items()
    }


def suspensions(plan: Plan) -> list[tuple]:
    return [
        (s.provider, s.reason, s.starts_at, s.ends_at)
        for s in ProviderSuspension.objects.filter(ip=plan.ip).order_by("starts_at", "provider")
    ]


@pytest.mark.django_db
def test_only_microsoft_bouncing_pauses_microsoft_for_48_hours_while_the_plan_keeps_warming():
    plan = warming(phase_day_count=4)
    send(plan, day_n(1), MICROSOFT_BOUNCING)
    send(plan, day_n(2), MICROSOFT_BOUNCING)

    tick_on(day_n(2))  # Microsoft's 50 sent of day 1 are below the sample: not judged
    assert suspensions(plan) == []
    tick_on(day_n(3))  # days 1-2: 8 bounced out of 100 sent at Microsoft
    assert suspensions(plan) == [("microsoft", "threshold", at(day_n(3)), at(day_n(5)))]

    plan.refresh_from_db()
    assert (plan.status, plan.phase, plan.phase_day_count, plan.ip.status) == ("warming", "week_2", 6, "warming")
    assert quotas(plan, at(day_n(3), 2)) == {"gmail": 80, "microsoft": 0, "yahoo": 30, "apple": 10, "other": 30}

    # Gmail and the others keep warming: day 3 qualifies without Microsoft and the plan advances.
    send(plan, day_n(3), {**CLEAN, "microsoft": (0, 0)})
    tick_on(day_n(4))
    plan.refresh_from_db()
    assert (plan.status, plan.phase) == ("warming", "week_3")
    assert quotas(plan, at(day_n(4), 2)) == {"gmail": 200, "microsoft": 0, "yahoo": 75, "apple": 25, "other": 75}
    # 48 hours after 01:00 of day 3, Microsoft has its share back.
    assert quotas(plan, at(day_n(5), 1)) == {"gmail": 200, "microsoft": 125, "yahoo": 75, "apple": 25, "other": 75}
    assert [e.kind for e in AuditEvent.objects.filter(plan=plan).order_by("date", "id")] == [
        Kind.PROVIDER_PAUSED,
        Kind.ADVANCED,
    ]


@pytest.mark.django_db
def test_the_provider_pause_records_its_figures_and_sends_one_alert(fake_telegram, django_capture_on_commit_callbacks):
    tenant = TenantFactory(name="SOS-Expat", slug="sos-expat")
    plan = warming(tenant=tenant)
    send(plan, day_n(1), MICROSOFT_BOUNCING)
    send(plan, day_n(2), MICROSOFT_BOUNCING)
    with django_capture_on_commit_callbacks(execute=True):
        tick_on(day_n(3))

    event = AuditEvent.objects.get(plan=plan, kind=Kind.PROVIDER_PAUSED)
    assert (event.from_status, event.to_status, event.from_phase, event.to_phase) == (
        "warming",
        "warming",
        "week_2",
        "week_2",
    )
    assert event.date == day_n(3) and event.created_at == at(day_n(3))
    assert event.figures == {
        "provider": "microsoft",
        "window_from": "2027-01-04",
        "window_to": "2027-01-05",
        "window_days": 2,
        "sent": 100,
        "delivered": 92,
        "bounced": 8,
        "complaints": 0,
        "bounce_rate": 8.0,
        "complaint_rate": 0.0,
        "max_bounce_rate": 5.0,
        "max_spam_rate": 0.1,
        "min_complaints": 2,
        "min_sample": 100,
        "tripped": ["bounce_rate"],
        "pause_hours": 48,
        "suspended_until": "2027-01-08T01:00:00+00:00",
    }
    assert event.reason == "microsoft: bounce rate 8.00% > 5.00% over 100 sent (2027-01-04..2027-01-05)"
    assert ProviderSuspension.objects.get(ip=plan.ip).figures == event.figures

    alert = Alert.objects.get()
    assert (alert.kind, alert.ip, alert.tenant) == (Alert.Kind.PROVIDER_PAUSED, plan.ip, tenant)
    assert plan.ip.address in alert.message and plan.ip.domain.name in alert.message
    assert "SOS-Expat" in alert.message and "Microsoft paused" in alert.message
    assert "bounce rate 8.00% > 5.00% over 100 sent" in alert.message
    assert "until 2027-01-08 01:00 UTC" in alert.message
    assert alert.figures["provider"] == "microsoft"
    alert.refresh_from_db()
    assert alert.delivery == Alert.Delivery.SENT
    [text] = fake_telegram.texts()
    assert f"Microsoft paused for {plan.ip.address}" in text and "bounce rate 8.00% &gt; 5.00%" in text


@pytest.mark.django_db
def test_the_provider_is_not_judged_on_its_days_before_the_suspension_ended():
    plan = warming()
    send(plan, day_n(1), MICROSOFT_BOUNCING)
    send(plan, day_n(2), MICROSOFT_BOUNCING)
    tick_on(day_n(3))
    # The MTA was slow to be told: Microsoft kept bouncing at 20% through the suspension.
    send(plan, day_n(3), {**CLEAN, "microsoft": (50, 10)})
    send(plan, day_n(4), {**CLEAN, "microsoft": (50, 10)})
    tick_on(day_n(4))  # in force: not judged
    tick_on(day_n(5))  # ended at 01:00 of day 5: its window starts on day 5, which is not over yet
    send(plan, day_n(5), CLEAN)
    tick_on(day_n(6))  # day 5 alone: 50 sent at Microsoft, below the sample
    assert len(suspensions(plan)) == 1

    # The days after the end count again: a bad day 6 trips it once the sample is reached.
    send(plan, day_n(6), {**CLEAN, "microsoft": (50, 10)})
    tick_on(day_n(7))
    assert [s[0] for s in suspensions(plan)] == ["microsoft", "microsoft"]
    assert AuditEvent.objects.filter(plan=plan, kind=Kind.PROVIDER_PAUSED).latest("id").figures["window_from"] == (
        day_n(5).isoformat()
    )


@pytest.mark.django_db
def test_the_third_provider_pause_within_14_days_pauses_the_ip(settings):
    settings.WARMUP_PROVIDER_PAUSE_HOURS = 24
    plan = warming()
    for n in range(1, 9):
        send(plan, day_n(n), {**CLEAN, "microsoft": (100, 10)})
    for n in range(2, 6):
        tick_on(day_n(n))
    # Paused at the ticks of days 2 and 4 (24 h each, then judged afresh from the day it ended).
    assert [s[2] for s in suspensions(plan)] == [at(day_n(2)), at(day_n(4))]
    plan.refresh_from_db()
    assert plan.status == "warming"

    tick_on(day_n(6))
    plan.refresh_from_db()
    assert [s[2] for s in suspensions(plan)] == [at(day_n(2)), at(day_n(4)), at(day_n(6))]
    assert (plan.status, plan.phase, plan.paused_until, plan.ip.status) == (
        "paused",
        "week_1",
        at(day_n(8)),
        "paused",
    )
    paused = AuditEvent.objects.get(plan=plan, kind=Kind.PAUSED)
    assert paused.figures["tripped"] == ["provider_pauses"]
    assert paused.figures["provider_pauses"] == 3
    assert paused.figures["provider_pauses_before_ip_pause"] == 3
    assert paused.figures["escalation_days"] == 14
    assert paused.reason == (
        "3 provider pauses in 14 days (Microsoft 2027-01-05, Microsoft 2027-01-07, Microsoft 2027-01-09)"
    )
    kinds = list(Alert.objects.order_by("id").values_list("kind", flat=True))
    assert kinds == ["provider_paused"] * 3 + ["paused"]


@pytest.mark.django_db
def test_provider_pauses_before_the_last_resume_do_not_count_toward_the_escalation():
    plan = warming(window_start_date=day_n(3))  # resumed on day 3
    for n in (1, 2):
        ProviderSuspension.objects.create(
            ip=plan.ip, provider="gmail", reason="threshold", starts_at=at(day_n(n)), ends_at=at(day_n(n + 1))
        )
    send(plan, day_n(3), {**CLEAN, "microsoft": (100, 10)})
    tick_on(day_n(4))
    plan.refresh_from_db()
    assert [s[0] for s in suspensions(plan)] == ["gmail", "gmail", "microsoft"]
    assert plan.status == "warming"


@pytest.mark.django_db
def test_each_provider_needs_its_own_sample():
    judged, small = warming(), warming()
    for n in (1, 2, 3):
        send(judged, day_n(n), {**CLEAN, "microsoft": (34, 5)})  # 102 sent over the window
        send(small, day_n(n), {**CLEAN, "microsoft": (33, 5)})  # 99: never judged, 15% or not
    tick_on(day_n(4))
    assert [s[0] for s in suspensions(judged)] == ["microsoft"]
    assert suspensions(small) == []


@pytest.mark.django_db
def test_a_provider_complaint_rate_needs_the_minimum_complaints():
    once, twice = warming(), warming()
    # 0.5% at Gmail either way; overall (1 or 2 complaints over about 2,200 delivered) under 0.1%.
    send(once, day_n(1), {**CLEAN, "gmail": (200, 0, 1), "other": (2000, 0)})
    send(twice, day_n(1), {**CLEAN, "gmail": (400, 0, 2), "other": (2000, 0)})
    tick_on(day_n(2))
    assert suspensions(once) == []
    assert [s[0] for s in suspensions(twice)] == ["gmail"]
    event = AuditEvent.objects.get(plan=twice, kind=Kind.PROVIDER_PAUSED)
    assert event.figures["tripped"] == ["complaint_rate"] and event.figures["complaint_rate"] == 0.5


@pytest.mark.django_db
def test_the_overall_rates_are_judged_first_and_pause_the_ip_alone():
    plan = warming()
    send(plan, day_n(1), {provider: (sent, sent // 10) for provider, (sent, _) in CLEAN.items()})
    tick_on(day_n(2))
    plan.refresh_from_db()
    assert plan.status == "paused"
    assert suspensions(plan) == []
    assert list(AuditEvent.objects.filter(plan=plan).values_list("kind", flat=True)) == [Kind.PAUSED]


@pytest.mark.django_db
def test_a_catch_up_sees_the_suspensions_it_decided_on_its_earlier_days(settings):
    settings.WARMUP_PROVIDER_PAUSE_HOURS = 24
    daily, caught_up = warming(), warming()
    for n in range(1, 7):
        for plan in (daily, caught_up):
            send(plan, day_n(n), {**CLEAN, "microsoft": (100, 10)})
    for n in range(2, 6):
        tick_on(day_n(n), tenants=[daily.ip.tenant])
    tick_on(day_n(5), tenants=[caught_up.ip.tenant])
    assert [s[2:] for s in suspensions(caught_up)] == [s[2:] for s in suspensions(daily)]
    assert len(suspensions(daily)) == 2


@pytest.mark.django_db
def test_advance_warmup_reports_the_provider_pause():
    plan = warming()
    send(plan, day_n(1), MICROSOFT_BOUNCING)
    send(plan, day_n(2), MICROSOFT_BOUNCING)
    out = io.StringIO()
    with time_machine.travel(at(day_n(3), 2), tick=False):
        call_command("advance_warmup", stdout=out)
    assert (
        f"2027-01-06 {plan.ip.address} {plan.ip.domain.name}: provider paused: "
        "microsoft: bounce rate 8.00% > 5.00% over 100 sent (2027-01-04..2027-01-05)"
    ) in out.getvalue()
    assert [s[0] for s in suspensions(plan)] == ["microsoft"]


def build(n: int, tenant) -> list[Plan]:
    """n warming plans in bulk, every third one with Microsoft bouncing; all have provider figures."""
    domains = Domain.objects.bulk_create(
        [Domain(tenant=tenant, name=f"p{i}.{tenant.slug}.example.com") for i in range(n)]
    )
    ips = IP.objects.bulk_create(
        [
            IP(tenant=tenant, domain=d, address=f"10.{tenant.pk % 250}.{i // 250}.{i % 250}", status="warming")
            for i, d in enumerate(domains)
        ]
    )
    plans = Plan.objects.bulk_create(
        [
            Plan(
                ip=ip,
                steps=[50, 200, 500, 1500, 5000, 10000],
                status=Plan.Status.WARMING,
                phase="week_2",
                start_date=START - dt.timedelta(days=7),
                window_start_date=START - dt.timedelta(days=7),
                last_ticked_date=START,
            )
            for ip in ips
        ]
    )
    stats = []
    for i, ip in enumerate(ips):
        figures = {**CLEAN, "microsoft": (100, 10)} if i % 3 == 0 else CLEAN
        providers = by_provider(figures)
        totals = {k: sum(p[k] for p in providers.values()) for k in ("sent", "delivered", "bounced", "complaints")}
        stats += [DailyStat(ip=ip, date=day, by_provider=providers, **totals) for day in (day_n(1), day_n(2))]
    # Earlier suspensions of other providers, ended and in force, for the tick to load.
    ProviderSuspension.objects.bulk_create(
        [
            ProviderSuspension(
                ip=ip, provider="yahoo", reason="throttling", starts_at=at(day_n(1)), ends_at=at(day_n(4))
            )
            for ip in ips[1::3]
        ]
    )
    DailyStat.objects.bulk_create(stats)
    return plans


@pytest.mark.django_db
def test_the_tick_query_count_with_provider_data_does_not_grow_with_the_plans(django_assert_max_num_queries):
    counts = []
    for n in (10, 100):
        tenant = TenantFactory()
        build(n, tenant)
        with django_assert_max_num_queries(12), CaptureQueriesContext(connection) as queries:
            report = tick_on(day_n(3), tenants=[tenant])
        assert report.plans_processed == n
        assert ProviderSuspension.objects.filter(ip__tenant=tenant, reason="threshold").count() == len(range(0, n, 3))
        assert Alert.objects.filter(tenant=tenant, kind=Alert.Kind.PROVIDER_PAUSED).count() == len(range(0, n, 3))
        counts.append(len(queries))
    assert counts[0] == counts[1]


@pytest.mark.django_db
def test_a_microsoft_pause_decided_by_the_tick_reaches_both_mta_configurations():
    """Issue acceptance, end to end: only Microsoft bounces at 8%; the tick pauses it for the IP; the
    generated PowerMTA and KumoMTA configurations hold Microsoft at 0 and Gmail at its share."""
    from warmup.kumomta_config import generate_kumomta_config
    from warmup.mta_config import generate_pmta_config

    from .test_kumomta_config import sources
    from .test_mta_config_providers import parse_domain_caps

    plan = warming()
    send(plan, day_n(1), MICROSOFT_BOUNCING)
    send(plan, day_n(2), MICROSOFT_BOUNCING)
    tick_on(day_n(3))
    plan.refresh_from_db()
    assert plan.status == "warming"
    vmta = plan.ip.mta_name

    with time_machine.travel(at(day_n(3), 2), tick=False):
        pmta = parse_domain_caps(generate_pmta_config(plan.ip.tenant))[vmta]
        kumo = sources(generate_kumomta_config(plan.ip.tenant))

    # The week-2 quota of 200: Gmail's 40% is 80 a day, ceil(80 / 24) = 4 an hour.
    assert pmta["*"] == "9/h"
    assert {pmta[domain] for domain in ("gmail.com", "googlemail.com")} == {"4/h"}
    assert {pmta[domain] for domain in ("outlook.com", "hotmail.com", "live.com")} == {"0"}
    assert kumo["gmail.com"][vmta]["max_message_rate"] == "4/h"
    # KumoMTA refuses a rate of 0: the suspended pair gets its smallest rate and no selection of the source.
    assert kumo["outlook.com"][vmta] == {"max_message_rate": "1/d", "source_selection_rate": "1/d"}

    # Once the 48 hours are over, Microsoft is back at its share in both.
    with time_machine.travel(at(day_n(5), 2), tick=False):
        pmta = parse_domain_caps(generate_pmta_config(plan.ip.tenant))[vmta]
        kumo = sources(generate_kumomta_config(plan.ip.tenant))
    assert pmta["outlook.com"] != "0" and kumo["outlook.com"][vmta]["max_message_rate"].endswith("/h")
