"""Webhook authentication: tokens (three places), revocation, tenant isolation, signatures."""

import time

import pytest
import time_machine

from domains.models import WebhookToken
from webhooks.auth import sign
from webhooks.models import DeadLetter

from .factories import TenantFactory
from .webhooks_support import fixture_bytes, ips, nonzero, read, token, utc_tenant  # noqa: F401

URL = "/api/v1/webhooks/powermta/"
NOW = "2026-12-23 12:00:00+00:00"
CSV = fixture_bytes("powermta_acct.csv")


def nothing_counted(ips):  # noqa: F811
    from datetime import date

    return all(not nonzero(read(ip, date(2026, 12, d))) for ip in ips.values() for d in (23, 24))


@pytest.fixture
def post(client, redis_client):
    def post(body=CSV, **headers):
        return client.post(URL, data=body, content_type="text/csv", **headers)

    return post


def test_no_token_is_refused(post, ips):  # noqa: F811
    response = post()
    assert response.status_code == 401
    assert "missing webhook token" in response.json()["error"]
    assert nothing_counted(ips) and not DeadLetter.objects.exists()


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"HTTP_AUTHORIZATION": "Bearer wpt_not-a-token"}, "invalid webhook token"),
        ({"HTTP_X_WEBHOOK_TOKEN": "wpt_not-a-token"}, "invalid webhook token"),
        ({"HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz"}, "missing webhook token"),
    ],
)
def test_a_wrong_token_is_refused_without_naming_tenants(post, ips, headers, error):  # noqa: F811
    response = post(**headers)
    assert response.status_code == 401
    assert response.json()["error"].startswith(error)
    assert "sos" not in response.content.decode().lower()
    assert nothing_counted(ips)


def test_a_revoked_token_is_refused(post, ips, utc_tenant, token):  # noqa: F811
    WebhookToken.issue(utc_tenant, rotate=True)
    assert post(HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    assert nothing_counted(ips)


@pytest.mark.parametrize("where", ["bearer", "header", "query"])
def test_the_token_is_accepted_in_each_place(client, redis_client, ips, token, where):  # noqa: F811
    url, headers = URL, {}
    if where == "bearer":
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    elif where == "header":
        headers["HTTP_X_WEBHOOK_TOKEN"] = token
    else:
        url = f"{URL}?token={token}"
    response = client.post(url, data=CSV, content_type="text/csv", **headers)
    assert response.status_code == 200
    assert response.json()["accepted"] == 6


def test_another_tenants_token_keeps_the_records_as_its_own_dead_letters(post, ips):  # noqa: F811
    other = TenantFactory(slug="other")
    _, other_token = WebhookToken.issue(other)
    response = post(HTTP_AUTHORIZATION=f"Bearer {other_token}")
    assert response.status_code == 200  # 401 is for missing or wrong credentials only
    assert response.json()["unattributed"] == 6 and response.json()["accepted"] == 0
    assert nothing_counted(ips)
    assert set(DeadLetter.objects.values_list("tenant__slug", "reason").distinct()) == {("other", "unknown_ip")}


def test_an_ip_no_tenant_has_is_kept_as_a_dead_letter_not_refused(post, token):  # noqa: F811
    response = post(CSV.replace(b"45.123.10.", b"198.51.100."), HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert response.json()["unattributed"] == 6
    assert set(DeadLetter.objects.values_list("reason", flat=True)) == {"unknown_ip"}


@pytest.fixture
def signed_tenant(utc_tenant):  # noqa: F811
    utc_tenant.webhook_signing_secret = "s3cret"
    utc_tenant.save()
    return utc_tenant


def signature(timestamp, body=CSV, secret="s3cret"):
    return f"t={timestamp},v1={sign(secret, timestamp, body).decode()}"


@time_machine.travel(NOW, tick=False)
def test_a_valid_signature_is_accepted_even_among_old_ones(post, ips, signed_tenant, token):  # noqa: F811
    now = int(time.time())
    header = f"t={now},v1={'0' * 64},v1={sign('s3cret', now, CSV).decode()}"
    response = post(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_X_WARMUP_SIGNATURE=header)
    assert response.status_code == 200 and response.json()["accepted"] == 6


@time_machine.travel(NOW, tick=False)
@pytest.mark.parametrize(
    ("make_header", "message"),
    [
        (lambda now: "", "missing X-Warmup-Signature"),
        (lambda now: signature(now, secret="wrong"), "does not match"),
        (lambda now: signature(now, body=b"other body"), "does not match"),
        (lambda now: signature(now - 301), "tolerance"),
        (lambda now: signature(now + 301), "tolerance"),
        (lambda now: "v1=abc", "malformed"),
        (lambda now: "t=soon,v1=abc", "malformed"),
    ],
)
def test_bad_or_stale_signatures_are_refused(post, ips, signed_tenant, token, make_header, message):  # noqa: F811
    now = int(time.time())
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if make_header(now):
        headers["HTTP_X_WARMUP_SIGNATURE"] = make_header(now)
    response = post(**headers)
    assert response.status_code == 401
    assert message in response.json()["error"]
    assert nothing_counted(ips) and not DeadLetter.objects.exists()


@time_machine.travel(NOW, tick=False)
def test_a_signature_at_the_edge_of_the_tolerance_is_accepted(post, ips, signed_tenant, token):  # noqa: F811
    now = int(time.time())
    response = post(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_X_WARMUP_SIGNATURE=signature(now - 300))
    assert response.status_code == 200
