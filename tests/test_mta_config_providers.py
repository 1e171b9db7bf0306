"""The PowerMTA configuration per mailbox provider: `<domain D>` caps inside each vmta, suspended
providers held at 0, the content hash, and the generators' query counts."""

import datetime as dt
import math
import re

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from warmup.engine import ip_daily_quota
from warmup.kumomta_config import generate_kumomta_config
from warmup.models import ProviderShare, ProviderSuspension
from warmup.mta_config import config_hash, generate_pmta_config

from .factories import DomainFactory, plan_in_state

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)

MICROSOFT = {"outlook.com", "outlook.fr", "hotmail.com", "hotmail.fr", "hotmail.co.uk", "live.com", "live.fr"}
MICROSOFT |= {"msn.com", "passport.com"}
GMAIL = {"gmail.com", "googlemail.com"}

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def parse_domain_caps(text: str) -> dict[str, dict[str, str]]:
    """{vmta: {domain: max-msg-rate}} from the `<domain>` blocks inside each `<virtual-mta>`.

    Checks the nesting and that each block holds exactly one max-msg-rate; `*` is the overall cap.
    """
    caps: dict[str, dict[str, str]] = {}
    vmta = domain = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if opening := re.fullmatch(r"<virtual-mta (\S+)>", line):
            assert vmta is None, f"line {number}: nested vmta"
            vmta = opening.group(1)
            caps[vmta] = {}
        elif line == "</virtual-mta>":
            assert vmta is not None and domain is None, f"line {number}: unbalanced </virtual-mta>"
            vmta = None
        elif opening := re.fullmatch(r"<domain (\S+)>", line):
            assert vmta is not None and domain is None, f"line {number}: <domain> outside a vmta"
            domain = opening.group(1)
            assert domain not in caps[vmta], f"line {number}: {domain} twice in {vmta}"
        elif line == "</domain>":
            assert domain in caps[vmta], f"line {number}: <domain {domain}> without max-msg-rate"
            domain = None
        elif domain is not None:
            key, value = line.split()
            assert key == "max-msg-rate", f"line {number}: unexpected {line!r}"
            assert domain not in caps[vmta], f"line {number}: two rates for {domain}"
            caps[vmta][domain] = value
    assert vmta is None and domain is None
    return caps


def suspend(plan, provider, *, hours=48, reason=ProviderSuspension.Reason.THRESHOLD):
    return ProviderSuspension.objects.create(
        ip=plan.ip,
        provider=provider,
        reason=reason,
        starts_at=NOW - dt.timedelta(hours=1),
        ends_at=NOW + dt.timedelta(hours=hours),
    )


@pytest.fixture
def fleet(tenant):
    domain = DomainFactory(tenant=tenant, name="mail2.sos-mail.com", status="warming")
    return {
        "warming": plan_in_state("warming", domain=domain, address="45.123.10.2", phase="week_3"),
        "active": plan_in_state("completed", domain=domain, address="45.123.10.1"),
        "paused": plan_in_state("paused", domain=domain, address="45.123.10.3", phase="week_2", paused_until=None),
    }


def test_a_warming_ip_caps_each_providers_domains_at_its_share(tenant, fleet):
    caps = parse_domain_caps(generate_pmta_config(tenant))["vmta-45-123-10-2"]

    assert ip_daily_quota(fleet["warming"].ip) == 500
    # WARMUP_PROVIDER_SHARES: gmail 40, microsoft 25, yahoo 15, apple 5 (other 15: only the overall cap).
    assert caps["*"] == "21/h"
    assert {caps[d] for d in GMAIL} == {f"{math.ceil(200 / 24)}/h"} == {"9/h"}
    assert {caps[d] for d in MICROSOFT} == {f"{math.ceil(125 / 24)}/h"}
    assert caps["yahoo.com"] == f"{math.ceil(75 / 24)}/h"
    assert caps["icloud.com"] == f"{math.ceil(25 / 24)}/h"
    assert len(caps) == 1 + 2 + 9 + 8 + 3


def test_a_suspended_provider_is_at_zero_and_the_others_keep_their_share(tenant, fleet):
    suspend(fleet["warming"], "microsoft")

    text = generate_pmta_config(tenant)
    caps = parse_domain_caps(text)["vmta-45-123-10-2"]

    assert {caps[d] for d in MICROSOFT} == {"0"}
    assert {caps[d] for d in GMAIL} == {"9/h"}  # not given Microsoft's share
    assert caps["*"] == "21/h"
    until = (NOW + dt.timedelta(hours=48)).astimezone(tenant.zone).isoformat(timespec="minutes")
    assert f"# microsoft: suspended until {until}, 0 messages" in text  # in the tenant's zone


def test_an_active_ip_is_capped_only_for_its_suspended_provider(tenant, fleet):
    suspend(fleet["active"], "gmail", reason=ProviderSuspension.Reason.THROTTLING)

    caps = parse_domain_caps(generate_pmta_config(tenant))

    assert caps["vmta-45-123-10-1"] == dict.fromkeys(sorted(GMAIL), "0")
    assert caps["vmta-45-123-10-3"] == {}  # paused: in no pool, nothing to cap


def test_a_suspension_that_ended_or_has_not_started_changes_nothing(tenant, fleet):
    before = generate_pmta_config(tenant)
    ProviderSuspension.objects.create(
        ip=fleet["warming"].ip,
        provider="microsoft",
        reason=ProviderSuspension.Reason.MANUAL,
        starts_at=NOW - dt.timedelta(hours=50),
        ends_at=NOW - dt.timedelta(hours=2),
    )

    assert generate_pmta_config(tenant) == before


def test_the_tenants_share_table_sets_the_caps(tenant, fleet):
    for provider, share in {"gmail": 50, "microsoft": 50}.items():
        ProviderShare.objects.create(tenant=tenant, provider=provider, share=share)

    caps = parse_domain_caps(generate_pmta_config(tenant))["vmta-45-123-10-2"]

    assert caps["gmail.com"] == caps["outlook.com"] == f"{math.ceil(250 / 24)}/h"
    assert caps["yahoo.com"] == "0"  # a share of 0 sends nothing there


def test_the_output_stays_sorted_and_deterministic(tenant, fleet):
    suspend(fleet["warming"], "yahoo")
    text = generate_pmta_config(tenant)

    assert text == generate_pmta_config(tenant)
    block = text.split("<virtual-mta vmta-45-123-10-2>")[1].split("</virtual-mta>")[0]
    domains = re.findall(r"<domain (\S+)>", block)
    assert domains[0] == "*"
    providers = re.findall(r"# (apple|gmail|microsoft|yahoo):", block)
    assert providers == sorted(providers)


# --- Content hash -----------------------------------------------------------------------------------


@pytest.mark.parametrize("generate", [generate_pmta_config, generate_kumomta_config])
def test_the_hash_changes_on_a_suspension_and_on_a_phase_change_only(tenant, fleet, generate, frozen_clock):
    first = config_hash(generate(tenant))
    assert re.fullmatch(r"[0-9a-f]{12}", first)

    frozen_clock.shift(dt.timedelta(hours=3))  # a later run: another time stamp in the header
    assert config_hash(generate(tenant)) == first

    suspension = suspend(fleet["warming"], "microsoft")
    suspended = config_hash(generate(tenant))
    assert suspended != first

    suspension.delete()
    assert config_hash(generate(tenant)) == first

    plan = fleet["warming"]
    plan.phase = "week_4"
    plan.save()
    assert config_hash(generate(tenant)) not in (first, suspended)


@pytest.mark.parametrize("generate", [generate_pmta_config, generate_kumomta_config])
def test_each_file_states_its_own_hash_in_its_header(tenant, fleet, generate):
    suspend(fleet["warming"], "gmail")
    text = generate(tenant)

    assert text.splitlines()[2] == (
        f"# Content hash {config_hash(text)}: when the admin's MTA configurations page shows another one, "
        "this file is stale."
    )


def test_the_hash_ignores_comments_and_blank_lines():
    assert config_hash("# a\n<x>\n\n  y 1\n") == config_hash("# b\n<x>\n  y 1\n# c\n")
    assert config_hash("<x>\n  y 1\n") != config_hash("<x>\n  y 2\n")


# --- Query counts ----------------------------------------------------------------------------------


def _queries(generate, tenant) -> int:
    with CaptureQueriesContext(connection) as captured:
        generate(tenant)
    return len(captured)


@pytest.mark.parametrize("generate", [generate_pmta_config, generate_kumomta_config])
def test_the_generators_query_count_does_not_grow_with_the_ips(tenant, generate, django_assert_max_num_queries):
    domain = DomainFactory(tenant=tenant, name="mail9.sos-mail.com", status="warming")
    for n in range(2):
        suspend(plan_in_state("warming", domain=domain, address=f"45.123.11.{n}", phase="week_2"), "gmail")
    few = _queries(generate, tenant)

    for n in range(2, 12):
        address = f"45.123.11.{n}"
        plan = (
            plan_in_state("warming", domain=domain, address=address, phase="week_2")
            if n % 2
            else plan_in_state("completed", domain=domain, address=address)
        )
        suspend(plan, "microsoft")

    with django_assert_max_num_queries(few):
        generate(tenant)
    # The IPs, then the provider split: shares, last 7 days of sent (no share table), suspensions.
    assert few <= 4
