"""The PowerMTA configuration (warmup.mta_config) and the generate_pmta_config command."""

import datetime as dt
import math
import re
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from warmup.mta_config import generate_pmta_config

from .factories import DomainFactory, TenantFactory, plan_in_state

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def parse_pmta(text: str) -> dict:
    """A small parser for the directives the portal writes.

    Returns {"vmtas": {name: {"source": (ip, host), "max_msg_rate": "n/h" or None}},
             "pools": {name: [vmta, ...]}}; comments and blank lines are skipped, nesting is checked.
    `max_msg_rate` is the `<domain *>` cap; the per-provider `<domain D>` blocks are read by
    tests/test_mta_config_providers.py.
    """
    vmtas, pools, stack = {}, {}, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if opening := re.fullmatch(r"<([a-z-]+)\s+(\S+)>", line):
            kind, name = opening.groups()
            stack.append((kind, name))
            if kind == "virtual-mta":
                assert name not in vmtas, f"line {number}: vmta {name} defined twice"
                vmtas[name] = {"source": None, "max_msg_rate": None}
            elif kind == "virtual-mta-pool":
                assert name not in pools, f"line {number}: pool {name} defined twice"
                pools[name] = []
            else:
                assert kind == "domain" and stack[-2][0] == "virtual-mta", f"line {number}: unexpected <{kind}>"
            continue
        if closing := re.fullmatch(r"</([a-z-]+)>", line):
            assert stack and stack.pop()[0] == closing.group(1), f"line {number}: unbalanced </{closing.group(1)}>"
            continue
        key, *values = line.split()
        kind, name = stack[-1] if stack else (None, None)
        if key == "smtp-source-host" and kind == "virtual-mta":
            vmtas[name]["source"] = tuple(values)
        elif key == "max-msg-rate" and kind == "domain":
            if name == "*":
                vmtas[stack[-2][1]]["max_msg_rate"] = values[0]
        elif key == "virtual-mta" and kind == "virtual-mta-pool":
            pools[name].append(values[0])
        else:
            raise AssertionError(f"line {number}: unexpected {line!r} in {kind}")
    assert not stack, f"unclosed {stack}"
    return {"vmtas": vmtas, "pools": pools}


@pytest.fixture
def tenant_ips(tenant):
    one = DomainFactory(tenant=tenant, name="mail1.sos-mail.com", status="active")
    two = DomainFactory(tenant=tenant, name="mail2.sos-mail.com", status="warming")
    three = DomainFactory(tenant=tenant, name="mail3.sos-mail.com", status="warming")
    return {
        "active": plan_in_state("completed", domain=one, address="45.123.10.1", hostname="mta1.sos-mail.com"),
        "warming": plan_in_state("warming", domain=two, address="45.123.10.2", phase="week_3"),
        "warming6": plan_in_state("warming", domain=two, address="2001:db8::2", phase="week_1"),
        "paused": plan_in_state("paused", domain=two, address="45.123.10.3", phase="week_2", paused_until=None),
        "pending": plan_in_state("scheduled", domain=three, address="45.123.10.4", mta_source_name="pmta-four"),
    }


def test_one_vmta_per_ip_with_its_source_host(tenant, tenant_ips):
    config = parse_pmta(generate_pmta_config(tenant))

    assert config["vmtas"] == {
        "vmta-45-123-10-1": {"source": ("45.123.10.1", "mta1.sos-mail.com"), "max_msg_rate": None},
        "vmta-45-123-10-2": {"source": ("45.123.10.2", "mail2.sos-mail.com"), "max_msg_rate": "21/h"},
        "vmta-2001-db8--2": {"source": ("2001:db8::2", "mail2.sos-mail.com"), "max_msg_rate": "3/h"},
        "vmta-45-123-10-3": {"source": ("45.123.10.3", "mail2.sos-mail.com"), "max_msg_rate": None},
        "pmta-four": {"source": ("45.123.10.4", "mail3.sos-mail.com"), "max_msg_rate": None},
    }


def test_a_pool_per_domain_of_the_ips_that_may_send(tenant, tenant_ips):
    config = parse_pmta(generate_pmta_config(tenant))

    assert config["pools"] == {
        "mail1.sos-mail.com": ["vmta-45-123-10-1"],
        "mail2.sos-mail.com": ["vmta-2001-db8--2", "vmta-45-123-10-2"],
    }
    members = {name for names in config["pools"].values() for name in names}
    assert "vmta-45-123-10-3" not in members  # paused: keeps its vmta, gets no traffic
    assert "pmta-four" not in members  # pending
    assert "omitted" in generate_pmta_config(tenant)  # mail3's empty pool is named in a comment


def test_hourly_rates_match_todays_quotas(tenant, tenant_ips):
    from warmup.engine import ip_daily_quota

    config = parse_pmta(generate_pmta_config(tenant))

    for plan in (tenant_ips["warming"], tenant_ips["warming6"]):
        quota = ip_daily_quota(plan.ip)
        assert config["vmtas"][plan.ip.mta_name]["max_msg_rate"] == f"{math.ceil(quota / 24)}/h"
    assert ip_daily_quota(tenant_ips["warming"].ip) == 500


def test_only_the_tenants_ips_appear_and_retired_ones_do_not(tenant, tenant_ips):
    other = TenantFactory(slug="other")
    plan_in_state("completed", domain=DomainFactory(tenant=other, name="other.example.com"), address="192.0.2.9")
    retired = plan_in_state("completed", domain=DomainFactory(tenant=tenant), address="45.123.10.9")
    retired.ip.status = "retired"
    retired.ip.save()

    text = generate_pmta_config(tenant)

    assert "192.0.2.9" not in text and "other.example.com" not in text
    assert "45.123.10.9" not in text


def test_output_is_deterministic_with_a_header(tenant, tenant_ips):
    first = generate_pmta_config(tenant)

    assert first == generate_pmta_config(tenant)
    header = first.splitlines()[:2]
    assert "sos-expat" in header[0]
    assert "2027-02-15T12:00:00+00:00" in header[1]
    names = re.findall(r"^<virtual-mta (\S+)>", first, flags=re.MULTILINE)
    assert names == sorted(names)


def test_command_writes_the_file_atomically(tenant, tenant_ips, tmp_path):
    target = tmp_path / "warmup.conf"
    target.write_text("old")

    call_command("generate_pmta_config", "--tenant", "sos-expat", "--output", str(target), stdout=StringIO())

    assert target.read_text() == generate_pmta_config(tenant)
    assert [path.name for path in tmp_path.iterdir()] == ["warmup.conf"]  # no temporary left behind


def test_command_prints_without_output_and_refuses_bad_input(tenant, tenant_ips, tmp_path):
    out = StringIO()
    call_command("generate_pmta_config", "--tenant", str(tenant.pk), stdout=out)
    assert out.getvalue() == generate_pmta_config(tenant)

    with pytest.raises(CommandError, match="nope"):
        call_command("generate_pmta_config", "--tenant", "nope")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("generate_pmta_config", "--tenant", "sos-expat", "--output", str(tmp_path / "no" / "x.conf"))


def test_dry_run_generates_nothing_and_leaves_the_file_as_it_was(tenant, tenant_ips, tmp_path, settings):
    settings.WARMUP_DRY_RUN = True
    target = tmp_path / "warmup.conf"
    target.write_text("old")

    with pytest.raises(CommandError, match="WARMUP_DRY_RUN is on"):
        call_command("generate_pmta_config", "--tenant", "sos-expat", "--output", str(target))
    assert target.read_text() == "old"
