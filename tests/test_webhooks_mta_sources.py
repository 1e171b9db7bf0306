"""MTA sources: one installation-level token for an MTA that posts one accounting stream for several tenants.

Each event is credited to the listed tenant that has its IP; what names no IP of theirs (another,
unlisted tenant's included) is kept as a dead letter of the source's home tenant; the answer is one for
the whole body.
"""

import datetime as dt

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from domains.models import MTASource, WebhookToken
from warmup.counters import get_store
from webhooks.models import DeadLetter

from .factories import DomainFactory, IPFactory, TenantFactory, make_member
from .webhooks_support import Poster

NOW = dt.datetime(2027, 1, 20, 12, 0, tzinfo=dt.UTC)
DAY = NOW.date()
POWERMTA = "/api/v1/webhooks/powermta/"
HEADER = "type,timeLogged,rcpt,dlvSourceIp,header_Message-Id\n"


@pytest.fixture
def world(db, redis_client):
    tenants = {
        slug: TenantFactory(slug=slug, name=slug.title(), time_zone="UTC") for slug in ("alpha", "bravo", "charlie")
    }
    ips = {
        slug: IPFactory(domain=DomainFactory(tenant=tenant), address=f"10.0.{n}.1")
        for n, (slug, tenant) in enumerate(tenants.items(), start=1)
    }
    source = MTASource.objects.create(name="pmta-shared", home_tenant=tenants["alpha"])
    source.tenants.set([tenants["alpha"], tenants["bravo"]])
    return tenants, ips, source


def body(*rows: str) -> str:
    return HEADER + "".join(row + "\n" for row in rows)


def sent(ip) -> int:
    return get_store().read(ip.pk, DAY)["sent"]


@time_machine.travel(NOW, tick=False)
def test_an_mta_source_credits_each_listed_tenants_ip_and_keeps_the_rest_for_its_home_tenant(client, world):
    tenants, ips, source = world
    _, token = WebhookToken.issue(mta_source=source)
    poster = Poster(client, token)
    when = int(NOW.timestamp()) - 3600
    payload = body(
        f"d,{when},a@gmail.com,10.0.1.1,<a1@x>",  # alpha's
        f"d,{when + 1},b@gmail.com,10.0.2.1,<b1@x>",  # bravo's
        f"d,{when + 2},c@gmail.com,10.0.3.1,<c1@x>",  # charlie's: not listed
        f"d,{when + 3},d@gmail.com,203.0.113.9,<d1@x>",  # nobody's
        f"x,{when + 4},e@gmail.com,10.0.2.1,<e1@x>",  # an unknown record type
    )

    answer = poster.post(POWERMTA, payload, "text/csv").json()

    assert (answer["accepted"], answer["unattributed"], answer["duplicates"]) == (2, 2, 0)
    assert [entry["record"] for entry in answer["rejected"]] == [5]
    assert (sent(ips["alpha"]), sent(ips["bravo"]), sent(ips["charlie"])) == (1, 1, 0)
    letters = DeadLetter.objects.order_by("ip_address")
    assert {(letter.tenant.slug, letter.reason) for letter in letters} == {
        ("alpha", "unknown_ip"),
        ("alpha", "invalid"),
    }
    assert sorted(str(letter.ip_address) for letter in letters if letter.reason == "unknown_ip") == [
        "10.0.3.1",
        "203.0.113.9",
    ]
    # Bravo's delivery reports attribute bravo's later complaints, through bravo's references.
    complaint = f"type,timeLogged,rcpt,header_Message-Id\nf,{when + 60},b@gmail.com,<b1@x>\n"
    assert poster.post(POWERMTA, complaint, "text/csv").json()["unattributed"] == 1  # refs-only: home tenant's
    bravo_token = WebhookToken.issue(tenants["bravo"])[1]
    assert Poster(client, bravo_token).post(POWERMTA, complaint, "text/csv").json()["accepted"] == 1

    again = poster.post(POWERMTA, payload, "text/csv").json()
    assert (again["accepted"], again["duplicates"], again["unattributed"]) == (0, 4, 0)
    assert (sent(ips["alpha"]), sent(ips["bravo"])) == (1, 1)


@time_machine.travel(NOW, tick=False)
def test_a_revoked_mta_source_token_is_refused(client, world):
    _, _, source = world
    stored, token = WebhookToken.issue(mta_source=source)
    poster = Poster(client, token)
    row = body(f"d,{int(NOW.timestamp())},a@gmail.com,10.0.1.1,")
    assert poster.post(POWERMTA, row, "text/csv").status_code == 200
    stored.revoked_at = timezone.now()
    stored.save()
    response = poster.post(POWERMTA, row, "text/csv")
    assert response.status_code == 401 and response.json() == {"error": "invalid webhook token"}


@time_machine.travel(NOW, tick=False)
def test_an_mta_source_has_its_own_rate_limit_window(client, world, settings):
    tenants, _, source = world
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 1
    poster = Poster(client, WebhookToken.issue(mta_source=source)[1])
    row = body(f"d,{int(NOW.timestamp())},a@gmail.com,10.0.2.1,")
    assert poster.post(POWERMTA, row, "text/csv").status_code == 200  # one hit, whatever the tenants
    assert poster.post(POWERMTA, row, "text/csv").status_code == 429
    bravo = Poster(client, WebhookToken.issue(tenants["bravo"])[1])
    assert bravo.post(POWERMTA, row, "text/csv").status_code == 200  # bravo's own window is untouched


def test_the_webhook_token_command_issues_an_mta_source_token(world, capsys):
    _, _, source = world
    call_command("webhook_token", "--mta-source", "pmta-shared", "--label", "shared-1")
    token = capsys.readouterr().out.strip()
    assert WebhookToken.objects.get(token_hash=WebhookToken.hash(token)).mta_source == source
    with pytest.raises(CommandError, match="no MTA source named 'nope'"):
        call_command("webhook_token", "--mta-source", "nope")
    with pytest.raises(CommandError):
        call_command("webhook_token", "--mta-source", "pmta-shared", "--tenant", "alpha")  # one owner only


def test_mta_sources_are_for_superusers_only_in_the_admin(client, world, superuser):
    tenants, _, source = world
    changelist = reverse("admin:domains_mtasource_changelist")
    client.force_login(make_member("alice", tenants["alpha"]))
    assert client.get(changelist).status_code == 403
    client.force_login(superuser)
    page = client.get(changelist)
    assert page.status_code == 200 and "pmta-shared" in page.content.decode()
    response = client.post(changelist, {"action": "rotate_webhook_token", "_selected_action": [source.pk]}, follow=True)
    assert any("New webhook token for pmta-shared" in str(m) for m in response.context["messages"])
    assert WebhookToken.objects.filter(mta_source=source, revoked_at__isnull=True).count() == 1
