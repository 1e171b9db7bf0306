"""The KumoMTA shaping file (warmup.kumomta_config), its command, its API endpoint, and the admin page
"MTA configurations" that shows both MTA configurations with their content hashes."""

import datetime as dt
import math
import tomllib
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from warmup.kumomta_config import HELD_RATE, generate_kumomta_config
from warmup.models import ProviderSuspension
from warmup.mta_config import config_hash, generate_pmta_config

from .factories import DomainFactory, TenantFactory, UserFactory, make_member, plan_in_state
from .test_mta_config_providers import GMAIL, MICROSOFT, parse_domain_caps

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def suspend(plan, provider):
    return ProviderSuspension.objects.create(
        ip=plan.ip,
        provider=provider,
        reason=ProviderSuspension.Reason.THRESHOLD,
        starts_at=NOW - dt.timedelta(hours=1),
        ends_at=NOW + dt.timedelta(hours=47),
    )


@pytest.fixture
def fleet(tenant):
    domain = DomainFactory(tenant=tenant, name="mail2.sos-mail.com", status="warming")
    return {
        "warming": plan_in_state("warming", domain=domain, address="45.123.10.2", phase="week_3"),
        "named": plan_in_state("warming", domain=domain, address="45.123.10.5", phase="week_1", mta_source_name="ip-5"),
        "active": plan_in_state("completed", domain=domain, address="45.123.10.1"),
        "paused": plan_in_state("paused", domain=domain, address="45.123.10.3", phase="week_2", paused_until=None),
    }


def sources(text: str) -> dict[str, dict[str, dict]]:
    """{domain: {source: settings}} of the parsed TOML, checking every domain turns MX rollup off."""
    parsed = tomllib.loads(text)
    result = {}
    for domain, section in parsed.items():
        assert section["mx_rollup"] is False, domain
        assert set(section) == {"mx_rollup", "sources"}, domain
        result[domain] = section["sources"]
    return result


# --- The file ---------------------------------------------------------------------------------------


def test_each_warming_source_is_limited_per_provider_domain(tenant, fleet, settings):
    parsed = sources(generate_kumomta_config(tenant))

    assert set(parsed) == {domain for domains in settings.WARMUP_PROVIDER_DOMAINS.values() for domain in domains}
    assert GMAIL | MICROSOFT < set(parsed)
    # The source is the IP's MTA source name, else the vmta name PowerMTA gets.
    assert set(parsed["gmail.com"]) == {"vmta-45-123-10-2", "ip-5"}
    assert parsed["gmail.com"]["vmta-45-123-10-2"] == {"max_message_rate": f"{math.ceil(200 / 24)}/h"}
    assert parsed["outlook.com"]["vmta-45-123-10-2"] == {"max_message_rate": f"{math.ceil(125 / 24)}/h"}
    assert parsed["gmail.com"]["ip-5"] == {"max_message_rate": f"{math.ceil(50 * 0.4 / 24)}/h"}


def test_a_suspended_provider_is_held_and_the_others_keep_their_rate(tenant, fleet):
    suspend(fleet["warming"], "microsoft")

    text = generate_kumomta_config(tenant)
    parsed = sources(text)

    for domain in MICROSOFT:
        assert parsed[domain]["vmta-45-123-10-2"] == {
            "max_message_rate": HELD_RATE,
            "source_selection_rate": HELD_RATE,
        }
        assert parsed[domain]["ip-5"]["max_message_rate"] == "1/h"  # another IP: not suspended
    assert {parsed[d]["vmta-45-123-10-2"]["max_message_rate"] for d in GMAIL} == {"9/h"}
    assert "# 45.123.10.2 microsoft: suspended until" in text and "0 messages" in text


def test_both_mtas_are_told_the_same(tenant, fleet):
    """The acceptance: Microsoft at 0 for the suspended IP, Gmail at its share, in both configurations."""
    suspend(fleet["warming"], "microsoft")

    pmta = parse_domain_caps(generate_pmta_config(tenant))["vmta-45-123-10-2"]
    kumo = sources(generate_kumomta_config(tenant))

    for domain in GMAIL:
        assert pmta[domain] == kumo[domain]["vmta-45-123-10-2"]["max_message_rate"] == "9/h"
    for domain in MICROSOFT:
        assert pmta[domain] == "0"
        assert kumo[domain]["vmta-45-123-10-2"]["max_message_rate"] == HELD_RATE


def test_an_active_source_appears_only_for_its_suspended_provider(tenant, fleet):
    suspend(fleet["active"], "gmail")

    parsed = sources(generate_kumomta_config(tenant))

    assert {domain for domain, by_source in parsed.items() if "vmta-45-123-10-1" in by_source} == GMAIL
    assert all("vmta-45-123-10-3" not in by_source for by_source in parsed.values())  # paused


def test_a_tenant_without_caps_gets_a_valid_empty_file(tenant):
    plan_in_state("completed", tenant=tenant, address="45.123.10.1")
    other = TenantFactory(slug="other")
    plan_in_state("warming", tenant=other, address="192.0.2.9", phase="week_2")

    text = generate_kumomta_config(tenant)

    assert tomllib.loads(text) == {}
    assert "192-0-2-9" not in text


def test_output_is_deterministic_and_sorted(tenant, fleet):
    text = generate_kumomta_config(tenant)

    assert text == generate_kumomta_config(tenant)
    assert "2027-02-15T12:00:00+00:00" in text.splitlines()[1]
    headers = [line for line in text.splitlines() if line.startswith("[") and ".sources." not in line]
    assert headers == sorted(headers)


# --- Command ----------------------------------------------------------------------------------------


def test_command_prints_or_writes_the_file(tenant, fleet, tmp_path):
    out = StringIO()
    call_command("generate_kumomta_config", "--tenant", "sos-expat", stdout=out)
    assert out.getvalue() == generate_kumomta_config(tenant)

    target = tmp_path / "warmup_shaping.toml"
    target.write_text("old")
    out = StringIO()
    call_command("generate_kumomta_config", "--tenant", str(tenant.pk), "--output", str(target), stdout=out)
    assert target.read_text() == generate_kumomta_config(tenant)
    assert f"written to {target} (content hash {config_hash(target.read_text())})" in out.getvalue()
    assert [path.name for path in tmp_path.iterdir()] == ["warmup_shaping.toml"]


def test_command_refuses_bad_input_and_dry_run(tenant, fleet, tmp_path, settings):
    with pytest.raises(CommandError, match="nope"):
        call_command("generate_kumomta_config", "--tenant", "nope")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("generate_kumomta_config", "--tenant", "sos-expat", "--output", str(tmp_path / "no" / "x.toml"))

    settings.WARMUP_DRY_RUN = True
    target = tmp_path / "x.toml"
    target.write_text("old")
    with pytest.raises(CommandError, match="WARMUP_DRY_RUN is on"):
        call_command("generate_kumomta_config", "--tenant", "sos-expat", "--output", str(target))
    assert target.read_text() == "old"


# --- API --------------------------------------------------------------------------------------------


@pytest.fixture
def member(tenant):
    user = UserFactory(username="alice")
    tenant.members.add(user)
    return user


def test_api_answers_plain_text_for_the_callers_tenant(member, tenant, fleet):
    other = TenantFactory(slug="other")
    plan_in_state("warming", tenant=other, address="192.0.2.9", phase="week_2")
    client = APIClient()
    client.force_authenticate(member)

    response = client.get("/api/v1/kumomta-config", HTTP_ACCEPT="text/plain")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == generate_kumomta_config(tenant)
    assert client.get("/api/v1/kumomta-config?tenant=other").status_code == 404  # not among the member's
    assert client.get("/api/v1/kumomta-config?tenant=unknown").status_code == 404


def test_api_needs_authentication_and_refuses_dry_run(member, tenant, settings):
    assert APIClient().get("/api/v1/kumomta-config").status_code == 401

    settings.WARMUP_DRY_RUN = True
    client = APIClient()
    client.force_authenticate(member)
    response = client.get("/api/v1/kumomta-config")
    assert response.status_code == 409
    assert "WARMUP_DRY_RUN" in response.json()["detail"]


# --- Admin page -------------------------------------------------------------------------------------


def admin_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_page_shows_both_configurations_and_their_hashes(tenant, fleet):
    client = admin_client(make_member("operator", tenant))
    url = reverse("admin:warmup_mta_configs")

    response = client.get(url)

    assert response.status_code == 200
    html = response.content.decode()
    pmta, kumo = generate_pmta_config(tenant), generate_kumomta_config(tenant)
    assert config_hash(pmta) in html and config_hash(kumo) in html
    assert "&lt;virtual-mta vmta-45-123-10-2&gt;" in html
    assert "[&quot;gmail.com&quot;.sources.&quot;vmta-45-123-10-2&quot;]" in html
    assert "/api/v1/kumomta-config?tenant=sos-expat" in html

    # A suspension makes the configurations stale: the page shows new hashes.
    suspend(fleet["warming"], "microsoft")
    html = client.get(url).content.decode()
    assert config_hash(pmta) not in html and config_hash(kumo) not in html
    assert config_hash(generate_pmta_config(tenant)) in html


def test_admin_page_is_linked_from_the_index(tenant):
    client = admin_client(make_member("operator", tenant))

    assert reverse("admin:warmup_mta_configs") in client.get(reverse("admin:index")).content.decode()


def test_staff_of_another_tenant_cannot_see_it(tenant, fleet):
    other = TenantFactory(slug="other", name="Other")
    plan_in_state("warming", tenant=other, address="192.0.2.9", phase="week_2")
    client = admin_client(make_member("stranger", other))
    url = reverse("admin:warmup_mta_configs")

    assert client.get(url + "?tenant=sos-expat").status_code == 404
    html = client.get(url).content.decode()
    assert "vmta-192-0-2-9" in html
    assert "45.123.10.2" not in html and "SOS-Expat" not in html


def test_admin_page_in_dry_run_says_why_there_is_nothing(tenant, fleet, settings):
    settings.WARMUP_DRY_RUN = True
    client = admin_client(make_member("operator", tenant))

    html = client.get(reverse("admin:warmup_mta_configs")).content.decode()

    assert html.count("WARMUP_DRY_RUN is on") == 2
    assert "&lt;virtual-mta" not in html


def test_admin_page_query_count_does_not_grow_with_the_ips(tenant, django_assert_max_num_queries):
    client = admin_client(make_member("operator", tenant))
    url = reverse("admin:warmup_mta_configs")
    domain = DomainFactory(tenant=tenant, name="mail9.sos-mail.com", status="warming")
    plan_in_state("warming", domain=domain, address="45.123.11.1", phase="week_2")
    client.get(url)  # warm the session and the content types
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    for n in range(2, 12):
        suspend(plan_in_state("warming", domain=domain, address=f"45.123.11.{n}", phase="week_2"), "gmail")

    with django_assert_max_num_queries(len(few)):
        assert client.get(url).status_code == 200


def test_admin_page_lets_a_superuser_pick_any_tenant_and_tells_a_user_without_one(tenant, fleet, superuser):
    other = TenantFactory(slug="other", name="Other")
    plan_in_state("warming", tenant=other, address="192.0.2.9", phase="week_2")
    url = reverse("admin:warmup_mta_configs")
    root = admin_client(superuser)

    html = root.get(url + "?tenant=sos-expat").content.decode()
    assert "vmta-45-123-10-2" in html and 'href="?tenant=other"' in html
    assert "vmta-192-0-2-9" in root.get(url + "?tenant=other").content.decode()

    html = admin_client(make_member("newcomer")).get(url).content.decode()
    assert "You belong to no tenant yet" in html
