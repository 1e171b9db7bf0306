"""Fixtures and helpers shared by the webhook tests (tests/test_webhooks_*.py)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from domains.models import WebhookToken
from warmup.counters import get_store

from .factories import DomainFactory, IPFactory, TenantFactory

FIXTURES = Path(__file__).parent / "fixtures"
DEMO_ADDRESSES = [f"45.123.10.{n}" for n in range(1, 6)]

CONTENT_TYPES = {
    ".csv": "text/csv",
    ".ndjson": "application/x-ndjson",
    ".json": "application/json",
}
ENDPOINTS = {
    "powermta_acct": "/api/v1/webhooks/powermta/",
    "kumomta": "/api/v1/webhooks/kumomta/",
    "mailwizz": "/api/v1/webhooks/mailwizz/",
}


def endpoint_for(name: str) -> str:
    for prefix, url in ENDPOINTS.items():
        if name.startswith(prefix):
            return url
    raise ValueError(name)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def demo_ips(tenant, *, source_names: bool = False) -> dict[str, object]:
    """mail1..mail5.sos-mail.com on 45.123.10.1..5 (with vmta-style source names if asked)."""
    ips = {}
    for n, address in enumerate(DEMO_ADDRESSES, start=1):
        domain = DomainFactory(tenant=tenant, name=f"mail{n}.sos-mail.com")
        ips[address] = IPFactory(
            tenant=tenant, domain=domain, address=address, mta_source_name=f"mail{n}-vmta" if source_names else ""
        )
    return ips


def read(ip, day: date) -> dict[str, int]:
    return get_store().read(ip.pk, day)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {name: value for name, value in counts.items() if value}


class Poster:
    """Posts bodies to the webhook endpoints with a tenant's token."""

    def __init__(self, client, token: str):
        self.client = client
        self.token = token

    def post(self, url: str, body: bytes | str, content_type: str = "application/json", **extra):
        if isinstance(body, str):
            body = body.encode()
        headers = {"HTTP_AUTHORIZATION": f"Bearer {self.token}", **extra}
        return self.client.post(url, data=body, content_type=content_type, **headers)

    def post_json(self, url: str, payload, **extra):
        return self.post(url, json.dumps(payload), "application/json", **extra)

    def post_fixture(self, name: str):
        return self.post(endpoint_for(name), fixture_bytes(name), CONTENT_TYPES[Path(name).suffix])


@pytest.fixture
def utc_tenant(db):
    return TenantFactory(name="SOS-Expat", slug="sos-expat", time_zone="UTC")


@pytest.fixture
def ips(utc_tenant):
    return demo_ips(utc_tenant)


@pytest.fixture
def token(utc_tenant) -> str:
    return WebhookToken.issue(utc_tenant, label="test")[1]


@pytest.fixture
def poster(client, token, redis_client) -> Poster:
    return Poster(client, token)
