"""The inventory commands: add_tenant, add_domain, advance_warmup, seed_demo, ensure_admin."""

import datetime as dt
import io
import re

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError
from django.db import connections

from domains.models import IP, Domain, Tenant
from warmup.models import DailyStat, WarmupPlan

Plan = WarmupPlan
NOW = dt.datetime(2027, 1, 4, 10, 0, tzinfo=dt.UTC)
TODAY = NOW.date()


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def counts() -> tuple[int, int, int]:
    return Domain.objects.count(), IP.objects.count(), Plan.objects.count()


# --- add_tenant -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_add_tenant_creates_a_tenant_with_a_slug_from_its_name():
    output = run("add_tenant", "--name", "SOS Expat", "--timezone", "Europe/Paris")
    tenant = Tenant.objects.get()
    assert (tenant.name, tenant.slug, tenant.time_zone) == ("SOS Expat", "sos-expat", "Europe/Paris")
    assert "Created tenant SOS Expat (slug sos-expat, zone Europe/Paris" in output
    run("add_tenant", "--name", "Other", "--slug", "other-brand")
    assert Tenant.objects.get(slug="other-brand").time_zone == "UTC"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--name", "X", "--timezone", "Mars/Olympus"], "time_zone: Unknown time zone 'Mars/Olympus'"),
        (["--name", "SOS-Expat"], "name: A tenant named 'SOS-Expat' already exists."),
        (["--name", "New", "--slug", "sos-expat"], "slug: The slug 'sos-expat' is already taken"),
        (["--name", "Bad", "--slug", "not a slug"], "slug:"),
    ],
)
def test_add_tenant_refuses_bad_input(tenant, args, text):
    with pytest.raises(CommandError, match=re.escape(text)):
        run("add_tenant", *args)
    assert Tenant.objects.count() == 1


# --- add_domain -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_add_domain_starts_the_first_and_queues_the_second_a_week_later(tenant):
    output = run("add_domain", "--tenant", "sos-expat", "--domain", "mail1.sos-mail.com", "--ip", "45.123.10.1")
    assert "Added mail1.sos-mail.com on 45.123.10.1 for sos-expat: warmup warming since 2027-01-04" in output
    output = run(
        "add_domain",
        "--tenant",
        str(tenant.pk),
        "--domain",
        "mail2.sos-mail.com",
        "--ip",
        "45.123.10.2",
        "--hostname",
        "mta2.sos-mail.com",
    )
    assert "scheduled to start on 2027-01-11" in output
    plan = Plan.objects.get(ip__address="45.123.10.2")
    assert (plan.status, plan.start_date, plan.ip.hostname) == ("scheduled", dt.date(2027, 1, 11), "mta2.sos-mail.com")


@pytest.mark.django_db
def test_add_domain_refuses_a_start_breaking_the_rule_unless_forced(tenant):
    run("add_domain", "--tenant", "sos-expat", "--domain", "mail1.sos-mail.com", "--ip", "45.123.10.1")
    args = [
        "add_domain",
        "--tenant",
        "sos-expat",
        "--domain",
        "mail2.sos-mail.com",
        "--ip",
        "45.123.10.2",
        "--start",
        "2027-01-06",
    ]
    with pytest.raises(CommandError) as caught:
        run(*args)
    message = str(caught.value)
    assert message.startswith("start: Starting on 2027-01-06 breaks the rotation rule")
    assert "mail1.sos-mail.com (45.123.10.1)" in message
    assert "earliest allowed date is 2027-01-11" in message
    assert counts() == (1, 1, 1)
    output = run(*args, "--force")
    assert "scheduled to start on 2027-01-06" in output
    assert counts() == (2, 2, 2)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--tenant", "sos-expat", "--domain", "mail9.sos-mail.com", "--ip", "999.1.1.1"], "ip: '999.1.1.1' is not"),
        (["--tenant", "sos-expat", "--domain", "mail1.sos-mail.com", "--ip", "45.123.10.9"], "domain: The domain"),
        (["--tenant", "sos-expat", "--domain", "mail9.sos-mail.com", "--ip", "45.123.10.1"], "ip: The IP 45.123"),
        (["--tenant", "ghost", "--domain", "mail9.sos-mail.com", "--ip", "45.123.10.9"], "tenant: No tenant"),
        (
            ["--tenant", "sos-expat", "--domain", "mail9.sos-mail.com", "--ip", "45.123.10.9", "--start", "tomorrow"],
            "--start: 'tomorrow' is not a date",
        ),
    ],
)
def test_add_domain_refuses_invalid_input_and_creates_nothing(tenant, args, text):
    run("add_domain", "--tenant", "sos-expat", "--domain", "mail1.sos-mail.com", "--ip", "45.123.10.1")
    with pytest.raises(CommandError, match=re.escape(text)):
        run("add_domain", *args)
    assert counts() == (1, 1, 1)


@pytest.mark.django_db
def test_add_domain_exits_non_zero_with_the_message_on_stderr(tenant, capsys, monkeypatch):
    # run_from_argv closes the connections when done; the test's own must stay open.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    with pytest.raises(SystemExit) as caught:
        execute_from_command_line(
            ["manage.py", "add_domain", "--tenant", "sos-expat", "--domain", "x.sos-mail.com", "--ip", "nope"]
        )
    assert caught.value.code == 1
    assert "ip: 'nope' is not a valid IPv4 or IPv6 address" in capsys.readouterr().err
    assert counts() == (0, 0, 0)


# --- advance_warmup -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_advance_warmup_prints_what_changed(tenant):
    run("add_domain", "--tenant", "sos-expat", "--domain", "mail1.sos-mail.com", "--ip", "45.123.10.1")
    plan = Plan.objects.get()
    for offset in range(7):
        DailyStat.objects.create(ip=plan.ip, date=TODAY + dt.timedelta(days=offset), sent=50, delivered=50)
    output = run("advance_warmup", "--date", "2027-01-11")
    assert "2027-01-11 45.123.10.1 mail1.sos-mail.com: advanced week_1 -> week_2" in output
    assert "Processed 1 plan(s) for 2027-01-05..2027-01-11: 1 change." in output
    assert "Nothing to do" in run("advance_warmup", "--date", "2027-01-11")
    with pytest.raises(CommandError, match="--date: '11/01/2027' is not a date"):
        run("advance_warmup", "--date", "11/01/2027")


@pytest.mark.django_db
def test_advance_warmup_defaults_to_today(tenant):
    run(
        "add_domain",
        "--tenant",
        "sos-expat",
        "--domain",
        "mail1.sos-mail.com",
        "--ip",
        "45.123.10.1",
        "--start",
        "2027-01-01",
    )
    output = run("advance_warmup")
    assert "Processed 1 plan(s) for 2027-01-02..2027-01-04: 0 changes." in output
    assert Plan.objects.get().last_ticked_date == TODAY


# --- seed_demo ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_seed_demo_creates_five_ips_started_a_week_apart():
    run("seed_demo")
    tenant = Tenant.objects.get(slug="sos-expat")
    assert (tenant.name, tenant.time_zone) == ("SOS-Expat", "Europe/Paris")
    plans = list(Plan.objects.select_related("ip__domain").order_by("ip__address"))
    assert [(p.ip.address, p.ip.domain.name, p.ip.hostname, p.ip.mta_source_name) for p in plans] == [
        (f"45.123.10.{n}", f"mail{n}.sos-mail.com", f"mail{n}.sos-mail.com", f"mail{n}-vmta") for n in range(1, 6)
    ]
    assert [p.start_date for p in plans] == [TODAY + dt.timedelta(days=7 * n) for n in range(5)]
    assert [p.status for p in plans] == ["warming"] + ["scheduled"] * 4


@pytest.mark.django_db
def test_seed_demo_with_history_simulates_five_weeks_and_is_idempotent():
    output = run("seed_demo", "--history")
    assert "35 day(s) of history simulated" in output
    plans = list(Plan.objects.select_related("ip").order_by("ip__address"))
    first_start = TODAY - dt.timedelta(days=35)
    assert [p.start_date for p in plans] == [first_start + dt.timedelta(days=7 * n) for n in range(5)]
    # Clean full-quota days: each plan is exactly where the timeline puts it today.
    assert [(p.status, p.phase, p.last_ticked_date) for p in plans] == [
        ("warming", f"week_{6 - n}", TODAY) for n in range(5)
    ]
    first = plans[0]
    stats = DailyStat.objects.filter(ip=first.ip).order_by("date")
    assert stats.count() == 35
    assert [s.sent for s in stats[:8]] == [50] * 7 + [200]
    day = stats[20]
    assert 0.5 <= day.bounced * 100 / day.sent <= 1.5
    assert day.opens > 0 and day.clicks > 0
    assert sum(v["sent"] for v in day.by_provider.values()) == day.sent
    before = (DailyStat.objects.count(), counts(), [(p.phase, p.phase_day_count) for p in plans])

    output = run("seed_demo", "--history")
    assert "already there; 0 domain(s) and IP(s) added, 0 day(s)" in output
    plans = list(Plan.objects.order_by("ip__address"))
    assert (DailyStat.objects.count(), counts(), [(p.phase, p.phase_day_count) for p in plans]) == before


# --- ensure_admin ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ensure_admin_creates_the_superuser_once_and_prints_the_password_once(settings):
    output = run("ensure_admin")
    password = re.search(r"with password: (\S+)", output).group(1)
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password(password)
    output = run("ensure_admin")
    assert "already exists" in output
    assert password not in output
    admin.refresh_from_db()
    assert admin.check_password(password)
