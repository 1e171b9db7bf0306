"""Adding a domain with its IP (warmup.onboarding): validation, the rotation rule, starting at once."""

import datetime as dt

import pytest
import time_machine
from django.core.exceptions import ValidationError

from domains.models import IP, Domain
from warmup import engine
from warmup.models import AuditEvent, DailyStat, WarmupPlan, WarmupSchedule
from warmup.onboarding import add_domain_with_ip, earliest_start, resolve_tenant

from .factories import TenantFactory, UserFactory

Plan = WarmupPlan
TODAY = dt.date(2027, 1, 4)


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(dt.datetime(2027, 1, 4, 10, 0, tzinfo=dt.UTC), tick=False):
        yield


def add(tenant, n, **kwargs) -> Plan:
    return add_domain_with_ip(tenant=tenant, domain=f"mail{n}.sos-mail.com", ip=f"45.123.10.{n}", **kwargs)


def counts() -> tuple[int, int, int]:
    return Domain.objects.count(), IP.objects.count(), Plan.objects.count()


@pytest.mark.django_db
def test_a_first_domain_starts_today_with_a_copy_of_the_default_schedule(tenant):
    user = UserFactory(username="ops")
    plan = add(tenant, 1, hostname="MTA1.sos-mail.com.", mta_source_name="mail1-vmta", user=user)
    plan = Plan.objects.select_related("ip__domain").get(pk=plan.pk)
    assert plan.status == Plan.Status.WARMING
    assert plan.phase == Plan.Phase.WEEK_1
    assert plan.start_date == TODAY
    assert plan.last_ticked_date == TODAY
    assert plan.window_start_date == TODAY
    assert plan.steps == [50, 200, 500, 1500, 5000, 10000]
    assert plan.schedule == WarmupSchedule.default()
    assert plan.ip.status == IP.Status.WARMING
    assert plan.ip.weight == 0
    assert plan.ip.hostname == "mta1.sos-mail.com"
    assert plan.ip.mta_source_name == "mail1-vmta"
    assert plan.ip.domain.status == Domain.Status.WARMING
    assert engine.ip_daily_quota(plan.ip) == 50
    [event] = AuditEvent.objects.filter(plan=plan)
    assert (event.kind, event.date, event.actor) == ("started", TODAY, user)


@pytest.mark.django_db
def test_editing_the_schedule_later_does_not_change_the_plan(tenant):
    plan = add(tenant, 1)
    schedule = WarmupSchedule.default()
    schedule.steps = [10, 20]
    schedule.save()
    plan.refresh_from_db()
    assert plan.steps == [50, 200, 500, 1500, 5000, 10000]


@pytest.mark.django_db
def test_a_second_domain_in_the_same_week_is_queued_a_week_later(tenant):
    add(tenant, 1)
    second = add(tenant, 2)
    third = add(tenant, 3)
    assert (second.status, second.start_date) == (Plan.Status.SCHEDULED, TODAY + dt.timedelta(days=7))
    assert third.start_date == TODAY + dt.timedelta(days=14)
    second.ip.refresh_from_db()
    assert second.ip.status == IP.Status.PENDING
    assert second.ip.domain.status == Domain.Status.PENDING
    assert second.last_ticked_date is None
    assert not AuditEvent.objects.filter(plan=second).exists()


@pytest.mark.django_db
def test_an_explicit_start_that_breaks_the_rule_is_refused_with_the_conflict_and_the_earliest_date(tenant):
    add(tenant, 1)
    before = counts()
    with pytest.raises(ValidationError) as caught:
        add(tenant, 2, start=TODAY + dt.timedelta(days=3))
    [message] = caught.value.message_dict["start"]
    assert "rotation rule" in message
    assert "mail1.sos-mail.com (45.123.10.1) starting 2027-01-04" in message
    assert "earliest allowed date is 2027-01-11" in message
    assert counts() == before


@pytest.mark.django_db
def test_force_accepts_a_start_that_breaks_the_rule(tenant):
    add(tenant, 1)
    plan = add(tenant, 2, start=TODAY, force=True)
    assert plan.status == Plan.Status.WARMING


@pytest.mark.django_db
def test_an_explicit_start_that_respects_the_rule_is_kept(tenant):
    add(tenant, 1)
    plan = add(tenant, 2, start=TODAY + dt.timedelta(days=9))
    assert (plan.status, plan.start_date) == (Plan.Status.SCHEDULED, TODAY + dt.timedelta(days=9))


@pytest.mark.django_db
def test_a_start_in_the_past_starts_at_once_and_the_tick_catches_up(tenant):
    start = TODAY - dt.timedelta(days=10)
    plan = add(tenant, 1, start=start)
    assert plan.status == Plan.Status.WARMING
    assert plan.last_ticked_date == start
    for offset in range(10):
        sent = 60 if offset < 7 else 200  # each day's quota is met (50 in week 1, 200 in week 2)
        DailyStat.objects.create(ip=plan.ip, date=start + dt.timedelta(days=offset), sent=sent, delivered=sent)
    report = engine.tick()
    plan.refresh_from_db()
    assert report.dates[0] == start + dt.timedelta(days=1)
    assert report.dates[-1] == TODAY
    assert (plan.phase, plan.phase_day_count, plan.last_ticked_date) == ("week_2", 3, TODAY)


@pytest.mark.django_db
def test_the_rule_allows_more_starts_per_week_when_configured(tenant, settings):
    settings.WARMUP_MAX_NEW_IPS_PER_WEEK = 2
    assert add(tenant, 1).start_date == TODAY
    assert add(tenant, 2).start_date == TODAY
    assert add(tenant, 3).start_date == TODAY + dt.timedelta(days=7)


@pytest.mark.django_db
def test_earliest_start_fits_between_plans_and_ignores_cancelled_ones(tenant):
    add(tenant, 1)
    add(tenant, 2, start=TODAY + dt.timedelta(days=10))
    assert earliest_start(tenant, TODAY) == TODAY + dt.timedelta(days=17)
    Plan.objects.filter(ip__address="45.123.10.2").update(status=Plan.Status.CANCELLED)
    assert earliest_start(tenant, TODAY) == TODAY + dt.timedelta(days=7)
    # Other tenants' plans do not count.
    assert earliest_start(TenantFactory(), TODAY) == TODAY


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"ip": "45.123.10.300"}, "ip", "not a valid IPv4 or IPv6 address"),
        ({"ip": ""}, "ip", "not a valid"),
        ({"domain": "not a domain"}, "domain", "not a valid domain name"),
        ({"domain": "-bad.example.com"}, "domain", "label '-bad'"),
        ({"domain": "localhost"}, "domain", "not a valid domain name"),
        ({"domain": "mail1.sos-mail.com"}, "domain", "mail1.sos-mail.com already exists"),
        ({"domain": "MAIL1.sos-mail.com."}, "domain", "mail1.sos-mail.com already exists"),
        ({"ip": "45.123.10.1"}, "ip", "45.123.10.1 already exists (domain mail1.sos-mail.com)"),
        ({"hostname": "bad_host.example.com"}, "hostname", "not a valid host name"),
        ({"mta_source_name": "mail1-vmta"}, "mta_source_name", "already used"),
        ({"tenant": "nobody"}, "tenant", "No tenant with slug or id 'nobody'"),
    ],
)
def test_invalid_input_names_the_field_and_creates_nothing(tenant, kwargs, field, text):
    add(tenant, 1, mta_source_name="mail1-vmta")
    before = counts()
    arguments = {"tenant": tenant, "domain": "mail9.sos-mail.com", "ip": "45.123.10.9", **kwargs}
    with pytest.raises(ValidationError) as caught:
        add_domain_with_ip(**arguments)
    assert field in caught.value.message_dict
    assert text in " ".join(caught.value.message_dict[field])
    assert counts() == before


@pytest.mark.django_db
def test_an_ipv6_address_is_stored_in_canonical_form_and_duplicates_are_caught(tenant):
    plan = add_domain_with_ip(tenant=tenant, domain="v6.sos-mail.com", ip="2001:DB8:0:0::1")
    assert plan.ip.address == "2001:db8::1"
    with pytest.raises(ValidationError) as caught:
        add_domain_with_ip(tenant=tenant, domain="v6b.sos-mail.com", ip="2001:db8::0:1", force=True)
    assert "already exists" in caught.value.message_dict["ip"][0]


@pytest.mark.django_db
def test_resolve_tenant_by_slug_or_id(tenant):
    assert resolve_tenant("sos-expat") == tenant
    assert resolve_tenant(str(tenant.pk)) == tenant
    with pytest.raises(ValidationError):
        resolve_tenant("999999")
