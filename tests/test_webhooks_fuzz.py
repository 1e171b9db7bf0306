"""No 5xx under fuzzed input: arbitrary bytes and JSON posted to every endpoint get a documented answer."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.models import WebhookToken
from webhooks.parsers.powermta import FIELDS

from .webhooks_support import demo_ips

ENDPOINTS = ["powermta", "kumomta", "mailwizz", "events"]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
KEYS = list(FIELDS) + [
    "timestamp", "id", "recipient", "source_address", "egress_source", "feedback_report", "response",
    "bounce_classification", "headers", "num_attempts", "event", "campaign", "subscriber", "sending_ip", "ip",
    "occurred_at", "event_id", "message_id", "bounce_class", "async",
]  # fmt: skip
TYPES = ["d", "b", "rb", "f", "t", "r", "Delivery", "Bounce", "Feedback", "OOB", "delivered", "bounced", "open"]
shaped_records = st.dictionaries(
    st.sampled_from(KEYS),
    st.sampled_from(TYPES) | st.sampled_from(["45.123.10.1", "45.123.10.1:0", "[::1]:25", "1798016412"]) | json_values,
    max_size=10,
).map(lambda record: {"type": record.pop("type", "d"), **record})


@pytest.fixture
def setup(db, client, redis_client):
    from .factories import TenantFactory

    tenant = TenantFactory(slug="fuzz")
    demo_ips(tenant)
    return client, WebhookToken.issue(tenant)[1]


def check(response):
    assert response.status_code in (200, 400, 413), response.content[:300]
    answer = response.json()
    if response.status_code == 200:
        assert set(answer) == {"accepted", "duplicates", "unattributed", "ignored", "rejected"}
    else:
        assert answer["error"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_arbitrary_bytes(setup, endpoint):
    client, token = setup

    @FUZZ
    @given(
        body=st.binary(max_size=300),
        content_type=st.sampled_from(["application/json", "text/csv", "application/x-ndjson", ""]),
    )
    def run(body, content_type):
        check(client.post(f"/api/v1/webhooks/{endpoint}/?token={token}", data=body, content_type=content_type))

    run()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_arbitrary_json(setup, endpoint):
    client, token = setup

    @FUZZ
    @given(document=json_values | st.lists(shaped_records, max_size=5) | shaped_records)
    def run(document):
        body = json.dumps(document)
        check(client.post(f"/api/v1/webhooks/{endpoint}/?token={token}", data=body, content_type="application/json"))

    run()


def test_arbitrary_powermta_csv(setup):
    client, token = setup
    cell = st.sampled_from(TYPES + ["45.123.10.1", "1798016412", "2026-12-24 09:14:03+0100", ""]) | st.text(max_size=15)

    @FUZZ
    @given(
        header=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=8),
        rows=st.lists(st.lists(cell, max_size=9), max_size=6),
    )
    def run(header, rows):
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["type", *header])
        writer.writerows(rows)
        check(client.post(f"/api/v1/webhooks/powermta/?token={token}", data=out.getvalue(), content_type="text/csv"))

    run()


PARSERS = ["powermta", "kumomta", "mailwizz", "normalised"]
CONTENT_TYPES = ["", "text/csv", "application/json", "application/x-ndjson", "text/plain; charset=latin-1"]


@pytest.mark.parametrize("source", PARSERS)
def test_each_parser_reads_arbitrary_bytes_or_says_why_not(source):
    """No exception but UnparseableBody escapes a parser, and every record is an event, ignored or rejected."""
    import importlib

    from webhooks.parsers import UnparseableBody

    parser = importlib.import_module(f"webhooks.parsers.{source}")

    @FUZZ
    @given(
        body=st.binary(max_size=2000)
        | st.text(max_size=500).map(str.encode)
        | st.lists(shaped_records, max_size=4).map(lambda records: json.dumps(records).encode()),
        content_type=st.sampled_from(CONTENT_TYPES),
    )
    def run(body, content_type):
        try:
            batch = parser.parse_body(body, content_type)
        except UnparseableBody as exc:
            assert str(exc)
            return
        assert len(batch.events) + len(batch.rejected) + batch.ignored == batch.records
        for rejection in batch.rejected:
            assert rejection.record >= 1 and rejection.error
        for event in batch.events:
            assert event.key and isinstance(event.occurred_at, int | float)

    run()
