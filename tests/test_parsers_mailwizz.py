"""MailWizz campaign webhook parser (open, click)."""

import json

import pytest

from tests.webhooks_support import fixture_bytes
from webhooks.events import EventType, InvalidRecord
from webhooks.parsers.mailwizz import normalise_record, parse_body


def test_open_fixture():
    (event,) = parse_body(fixture_bytes("mailwizz_open.json")).events
    assert event.type == EventType.OPENED
    assert event.occurred_at == 1798102931
    assert event.ip == "" and event.message_refs == ("mw:ef90ab12cd/sub-0101",)
    assert event.recipient_domain == "hotmail.com"
    assert event.counts() == {"opens": 1}


def test_click_fixture_with_sending_ip():
    (event,) = parse_body(fixture_bytes("mailwizz_click.json")).events
    assert (event.type, event.ip) == (EventType.CLICKED, "45.123.10.3")
    assert event.counts() == {"clicks": 1}


def test_date_added_is_the_fallback_time_and_retries_share_a_key():
    payload = json.loads(fixture_bytes("mailwizz_open.json"))
    del payload["timestamp"]
    event = normalise_record(payload)
    assert event.occurred_at == 1798106531  # 2026-12-24 10:02:11 taken as UTC
    assert normalise_record(payload).key == event.key
    later = json.loads(fixture_bytes("mailwizz_open.json"))
    later["timestamp"] += 60
    assert normalise_record(later).key != normalise_record(json.loads(fixture_bytes("mailwizz_open.json"))).key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("event"), "event: missing"),
        (lambda p: p["event"].update(type="bounce"), "event.type: 'bounce' is not open or click"),
        (lambda p: p["campaign"].pop("attributes"), "campaign_uid"),
        (lambda p: p.update(timestamp="yesterday"), "timestamp"),
    ],
)
def test_invalid_payloads_name_the_field(change, message):
    payload = json.loads(fixture_bytes("mailwizz_open.json"))
    change(payload)
    with pytest.raises(InvalidRecord, match=message):
        normalise_record(payload)
