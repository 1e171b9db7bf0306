"""Tenant isolation across every surface: each API endpoint, each webhook endpoint, and every model the
admin registers (changelist, change, delete and history pages).

Tenant "alpha" has the member alice; tenant "bravo" is another brand on the same installation. Alice must
get 404 (or the admin's "does not exist" redirect) for every bravo object, must never see one in a list,
and her webhook token must never credit a bravo IP, whichever way an event names it.
"""

import datetime as dt
import json

import pytest
import time_machine
from django.contrib import admin
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from domains.admin import tenant_path_for
from domains.models import IP, Domain, WebhookToken
from warmup.counters import get_store
from warmup.engine import ACTIONS
from warmup.models import AuditEvent, ProviderShare, ProviderSuspension, WarmupPlan
from webhooks.models import DeadLetter

from .factories import (
    AlertFactory,
    AuditEventFactory,
    DailyStatFactory,
    DeadLetterFactory,
    DomainFactory,
    TenantFactory,
    make_member,
    plan_in_state,
)

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2027, 1, 20, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
ALPHA_IP, BRAVO_IP = "10.0.0.1", "20.0.0.1"


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def populate(slug: str, address: str) -> dict:
    """A tenant with one object of every tenant-scoped model (and a webhook token)."""
    tenant = TenantFactory(slug=slug, name=slug.title())
    domain = DomainFactory(tenant=tenant, name=f"mail1.{slug}.example.com", status="warming")
    plan = plan_in_state("warming", domain=domain, address=address, phase="week_2", mta_source_name=f"{slug}-vmta")
    DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=1), sent=200)
    AuditEventFactory(plan=plan, date=TODAY - dt.timedelta(days=10))
    AlertFactory(ip=plan.ip, message=f"{address} of {slug} paused")
    DeadLetterFactory(tenant=tenant, event_key=f"{slug}-letter", raw={"type": "delivered", "ip": "192.0.2.9"})
    ProviderShare.objects.create(tenant=tenant, provider="gmail", share=60)
    ProviderSuspension.objects.create(
        ip=plan.ip, provider="microsoft", reason="threshold", starts_at=NOW, ends_at=NOW + dt.timedelta(hours=48)
    )
    token = WebhookToken.issue(tenant, label=f"{slug} sender")[1]
    return {"tenant": tenant, "plan": plan, "ip": plan.ip, "token": token}


@pytest.fixture
def world(redis_client):
    alpha, bravo = populate("alpha", ALPHA_IP), populate("bravo", BRAVO_IP)
    alice = make_member("alice", alpha["tenant"])
    return {"alpha": alpha, "bravo": bravo, "alice": alice}


# --- Admin: every registered model ----------------------------------------------------------------------

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)


def objects_of(model, tenant) -> list:
    path = tenant_path_for(model)
    lookup = {"pk": tenant.pk} if path == "" else {path: tenant}
    return list(model._default_manager.filter(**lookup))


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def test_the_walk_covers_every_tenant_scoped_model_with_objects_of_both_tenants(world):
    scoped = [model for model in REGISTERED if tenant_path_for(model) is not None]
    assert {m._meta.label for m in scoped} >= {"domains.Tenant", "domains.Domain", "domains.IP", "warmup.WarmupPlan",
                                                "warmup.DailyStat", "warmup.AuditEvent", "warmup.Alert",
                                                "webhooks.DeadLetter"}  # fmt: skip
    for model in scoped:
        assert objects_of(model, world["alpha"]["tenant"]), model
        assert objects_of(model, world["bravo"]["tenant"]), model


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_a_changelist_shows_a_member_only_their_tenants_objects(client, world, model):
    client.force_login(world["alice"])
    response = client.get(admin_url(model, "changelist"))
    html = response.content.decode()
    if tenant_path_for(model) is None:
        # Data of no tenant (schedules, users, periodic tasks): its own permissions decide.
        assert response.status_code in (200, 403)
        assert "bravo" not in html.lower() and BRAVO_IP not in html
        return
    assert response.status_code == 200
    for obj in objects_of(model, world["alpha"]["tenant"]):
        assert admin_url(model, "change", obj.pk) in html
    for obj in objects_of(model, world["bravo"]["tenant"]):
        assert admin_url(model, "change", obj.pk) not in html
    assert "bravo" not in html.lower() and BRAVO_IP not in html


@pytest.mark.parametrize(
    "model", [m for m in REGISTERED if tenant_path_for(m) is not None], ids=lambda model: model._meta.label
)
@pytest.mark.parametrize("view", ["change", "delete", "history"])
def test_another_tenants_object_pages_do_not_exist_for_a_member(client, world, model, view):
    client.force_login(world["alice"])
    for obj in objects_of(model, world["bravo"]["tenant"]):
        response = client.get(admin_url(model, view, obj.pk))
        # The admin's answer for an object outside the queryset: back to the index ("does not exist").
        assert response.status_code in (302, 403, 404), (view, obj)
        if response.status_code == 302:
            assert response["Location"] == reverse("admin:index")
        assert BRAVO_IP not in response.content.decode()
    # The member's own objects do open (this walk would otherwise prove nothing).
    own = objects_of(model, world["alpha"]["tenant"])[0]
    assert client.get(admin_url(model, "change", own.pk)).status_code == 200


def test_a_member_cannot_delete_or_edit_another_tenants_objects_by_posting(client, world):
    client.force_login(world["alice"])
    bravo_ip = world["bravo"]["ip"]
    client.post(admin_url(IP, "delete", bravo_ip.pk), {"post": "yes"})
    client.post(admin_url(Domain, "change", bravo_ip.domain_id), {"name": "stolen.example.com", "status": "retired"})
    client.post(admin_url(IP, "changelist"), {"action": "delete_selected", "_selected_action": [bravo_ip.pk],
                                               "post": "yes"})  # fmt: skip
    assert IP.objects.filter(pk=bravo_ip.pk).exists()
    assert Domain.objects.get(pk=bravo_ip.domain_id).name == "mail1.bravo.example.com"


# --- API ---------------------------------------------------------------------------------------------------


@pytest.fixture
def api(world):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=world['alice']).key}")
    return client


FOREIGN_REQUESTS = [
    ("get", "/api/v1/warmup?tenant=bravo", None),
    ("get", f"/api/v1/ips/{BRAVO_IP}/stats", None),
    ("post", f"/api/v1/ips/{BRAVO_IP}/stats", {"sent": 5}),
    *[("post", f"/api/v1/plans/{BRAVO_IP}/{action}", {"reason": "not mine"}) for action in ACTIONS],
    ("get", "/api/v1/forecast?tenant=bravo", None),
    ("get", "/api/v1/pmta-config?tenant=bravo", None),
]


@pytest.mark.parametrize(("method", "url", "body"), FOREIGN_REQUESTS, ids=[f"{m} {u}" for m, u, _ in FOREIGN_REQUESTS])
def test_every_api_endpoint_answers_404_for_another_tenants_objects(api, world, method, url, body):
    bravo = world["bravo"]
    response = getattr(api, method)(url, body, format="json") if body is not None else getattr(api, method)(url)
    assert response.status_code == 404, response.content
    assert BRAVO_IP not in response.content.decode().replace(f"No IP {BRAVO_IP}", "").replace(
        f"plan for IP {BRAVO_IP}", ""
    )
    plan = WarmupPlan.objects.get(pk=bravo["plan"].pk)
    assert (plan.status, plan.phase) == ("warming", "week_2")
    assert not AuditEvent.objects.filter(plan=plan, actor__isnull=False).exists()
    assert get_store().read(bravo["ip"].pk, TODAY)["sent"] == 0


def test_adding_a_domain_to_another_tenant_is_refused_as_an_unknown_tenant(api, world):
    for tenant in ("bravo", str(world["bravo"]["tenant"].pk)):
        response = api.post(
            "/api/v1/domains", {"tenant": tenant, "domain": "mail9.bravo.example.com", "ip": "20.0.0.9"}, format="json"
        )
        assert response.status_code == 400
        assert list(response.json()) == ["tenant"]
    assert not Domain.objects.filter(name="mail9.bravo.example.com").exists()


def test_lists_and_documents_show_only_the_callers_tenants(api, world):
    listed = api.get("/api/v1/warmup").json()
    assert [entry["ip"] for entry in listed["ips"]] == [ALPHA_IP]
    assert listed["total_daily_capacity"] == 200
    config = api.get("/api/v1/pmta-config").content.decode()
    assert ALPHA_IP in config and BRAVO_IP not in config and "bravo" not in config
    assert api.get("/api/v1/forecast?days=7").json()["tenant"] == "alpha"
    stats = api.get(f"/api/v1/ips/{ALPHA_IP}/stats").json()
    assert [row["sent"] for row in stats] == [200]


def test_the_schema_and_docs_reveal_no_tenant_data(api, world):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").content.decode()
    assert "bravo" not in schema and BRAVO_IP not in schema


# --- Webhooks ------------------------------------------------------------------------------------------------

PMTA_HEADER = "type,timeLogged,rcpt,dsnStatus,bounceCat,dlvSourceIp,vmta,header_Message-Id\n"
WHEN = int(dt.datetime(2027, 1, 20, 9, 0, tzinfo=dt.UTC).timestamp())


def kumomta_delivery(address: str) -> dict:
    return {"type": "Delivery", "id": "spool-1", "recipient": "t.petit@gmail.com", "timestamp": WHEN,
            "num_attempts": 0, "response": {"code": 250, "content": "OK"},
            "source_address": {"address": f"{address}:0", "protocol": "tcp"}, "egress_source": "",
            "bounce_classification": "Uncategorized", "feedback_report": None}  # fmt: skip


def mailwizz_open(address: str) -> dict:
    return {"event": {"type": "open", "date_added": "2027-01-20 09:00:00"}, "timestamp": WHEN, "sending_ip": address,
            "subscriber": {"attributes": {"subscriber_uid": "sub-1", "email": "a@gmail.com"}},
            "campaign": {"attributes": {"campaign_uid": "cmp-1"}}}  # fmt: skip


# Each endpoint, with a body naming the other tenant's IP directly.
WEBHOOK_BODIES = {
    "powermta": ("text/csv", (PMTA_HEADER + f"d,{WHEN},a@gmail.com,2.0.0,,{BRAVO_IP},,<m1@x>\n").encode()),
    "kumomta": ("application/json", json.dumps(kumomta_delivery(BRAVO_IP)).encode()),
    "mailwizz": ("application/json", json.dumps(mailwizz_open(BRAVO_IP)).encode()),
    "events": (
        "application/json",
        json.dumps({"type": "delivered", "ip": BRAVO_IP, "occurred_at": WHEN, "recipient": "a@gmail.com"}).encode(),
    ),  # fmt: skip
}


def post(client, endpoint: str, token: str, content_type: str, body: bytes):
    return client.post(
        f"/api/v1/webhooks/{endpoint}/", data=body, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def live(ip) -> dict:
    return {name: value for name, value in get_store().read(ip.pk, TODAY).items() if value}


@pytest.mark.parametrize("endpoint", sorted(WEBHOOK_BODIES))
def test_a_tenants_webhook_token_never_credits_another_tenants_ip(client, world, endpoint):
    content_type, body = WEBHOOK_BODIES[endpoint]
    response = post(client, endpoint, world["alpha"]["token"], content_type, body)
    # Kept as alpha's dead letter, answered exactly as an address no tenant has: nothing says it is bravo's.
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": 0, "duplicates": 0, "unattributed": 1, "ignored": 0, "rejected": []}
    assert live(world["bravo"]["ip"]) == {} and live(world["alpha"]["ip"]) == {}
    letter = DeadLetter.objects.filter(tenant=world["alpha"]["tenant"]).latest("id")
    assert letter.reason == DeadLetter.Reason.UNKNOWN_IP and "bravo" not in letter.error.lower()
    assert letter.error.endswith(f"{BRAVO_IP} is not an IP of this tenant")  # as for an address nobody has

    # The same body with the right tenant's token is counted for that tenant.
    assert post(client, endpoint, world["bravo"]["token"], content_type, body).json()["accepted"] == 1
    assert live(world["bravo"]["ip"])


def test_another_tenants_mta_source_name_and_message_references_do_not_attribute(client, world):
    # Bravo's delivery report, with its vmta and Message-Id, is counted for bravo.
    delivery = PMTA_HEADER + f"d,{WHEN},a@gmail.com,2.0.0,,{BRAVO_IP},bravo-vmta,<shared@x>\n"
    assert post(client, "powermta", world["bravo"]["token"], "text/csv", delivery.encode()).json()["accepted"] == 1
    before = live(world["bravo"]["ip"])

    # Alpha's sender naming bravo's vmta, or bravo's message, credits nobody.
    by_name = PMTA_HEADER + f"d,{WHEN},b@gmail.com,2.0.0,,,bravo-vmta,\n"
    by_reference = PMTA_HEADER + f"f,{WHEN},a@gmail.com,,,,,<shared@x>\n"
    for body in (by_name, by_reference):
        answer = post(client, "powermta", world["alpha"]["token"], "text/csv", body.encode()).json()
        assert (answer["accepted"], answer["unattributed"]) == (0, 1)
    assert live(world["bravo"]["ip"]) == before
    assert live(world["alpha"]["ip"]) == {}


def test_a_tenants_token_does_not_reprocess_into_another_tenant(client, world):
    """A dead letter kept for alpha stays alpha's even after bravo's IP exists under that address."""
    from webhooks.ingest import TenantContext, ingest, reprocess_dead_letters
    from webhooks.parsers import normalised

    _, body = WEBHOOK_BODIES["events"]
    # Kept for alpha as an IP it does not know (as a backfill, or before bravo's IP existed, would).
    ingest(TenantContext(world["alpha"]["tenant"]), normalised.parse_body(body, "application/json"))

    letter = DeadLetter.objects.exclude(event_key="alpha-letter").get(tenant=world["alpha"]["tenant"])
    assert letter.reason == "unknown_ip"
    assert reprocess_dead_letters([letter]) == (0, 1)
    assert live(world["bravo"]["ip"]) == {}
