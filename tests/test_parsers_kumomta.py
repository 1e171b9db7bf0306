"""KumoMTA log record parser: record types, source address forms, proxies, classification, keys."""

import json

import pytest

from webhooks.events import BounceClass, Ignored, InvalidRecord
from webhooks.parsers import UnparseableBody
from webhooks.parsers.kumomta import normalise_record, parse_body, strip_port


def record(**fields):
    base = {
        "type": "Delivery",
        "id": "1d98076abbbc11ed940250ebf67f93bd",
        "recipient": "t.petit@gmail.com",
        "timestamp": 1798016600,
        "num_attempts": 0,
        "response": {"code": 250, "enhanced_code": {"class": 2, "subject": 0, "detail": 0}, "content": "OK"},
        "source_address": {"address": "45.123.10.4:0", "protocol": "tcp"},
        "egress_source": "mail4",
        "bounce_classification": "Uncategorized",
        "headers": {},
    }
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("rtype", "counts"),
    [
        ("Delivery", {"sent": 1, "delivered": 1}),
        ("Bounce", {"sent": 1, "bounced": 1, "bounced_soft": 1}),
        ("Expiration", {"sent": 1, "bounced": 1, "bounced_soft": 1}),
        ("OOB", {"bounced": 1, "bounced_soft": 1}),
        ("Feedback", {"complaints": 1}),
        ("TransientFailure", {"deferred": 1}),
    ],
)
def test_counted_record_types(rtype, counts):
    assert normalise_record(record(type=rtype, response={"code": 400})).counts() == counts


@pytest.mark.parametrize("rtype", ["Reception", "Delay", "AdminBounce", "Rejection"])
def test_uncounted_record_types_are_ignored(rtype):
    with pytest.raises(Ignored):
        normalise_record(record(type=rtype))


def test_unknown_and_missing_types_are_invalid():
    with pytest.raises(InvalidRecord, match="unknown record type 'Wat'"):
        normalise_record(record(type="Wat"))
    with pytest.raises(InvalidRecord, match="type: missing"):
        normalise_record(record(type=None))


@pytest.mark.parametrize(
    ("address", "expected"),
    [("45.123.10.4:0", "45.123.10.4"), ("[2001:db8::4]:25", "2001:db8::4"), ("45.123.10.4", "45.123.10.4"),
     ("2001:db8::4", "2001:db8::4")],
)  # fmt: skip
def test_source_address_forms(address, expected):
    assert strip_port(address) == expected
    assert normalise_record(record(source_address={"address": address})).ip == expected


@pytest.mark.parametrize("protocol", ["haproxy", "socks5", "HAProxy"])
def test_a_proxy_address_is_not_the_sending_ip_egress_source_is_used(protocol):
    event = normalise_record(record(source_address={"address": "10.9.9.9:1234", "protocol": protocol}))
    assert (event.ip, event.source_name) == ("", "mail4")


def test_feedback_takes_the_ip_the_report_names():
    event = normalise_record(
        record(
            type="Feedback",
            recipient=None,
            feedback_report={"feedback_type": "abuse", "source_ip": "45.123.10.4", "original_rcpto_to": "a@yahoo.com"},
        )
    )
    assert (event.ip, event.ip_field, event.recipient_domain) == (
        "45.123.10.4",
        "feedback_report.source_ip",
        "yahoo.com",
    )


@pytest.mark.parametrize(
    ("classification", "enhanced", "expected"),
    [
        ("PolicyRelated", {"class": 5, "subject": 1, "detail": 1}, BounceClass.BLOCK),  # classification wins
        ("InvalidRecipient", None, BounceClass.HARD),
        ("BadDomain", None, BounceClass.HARD),
        ("InactiveMailbox", None, BounceClass.HARD),
        ("SpamBlock", None, BounceClass.BLOCK),
        ("SpamContent", None, BounceClass.BLOCK),
        ("QuotaIssues", None, BounceClass.SOFT),
        ("Uncategorized", {"class": 5, "subject": 1, "detail": 1}, BounceClass.HARD),  # falls to the code
        ("Uncategorized", {"class": 5, "subject": 7, "detail": 9}, BounceClass.BLOCK),
        ("Uncategorized", None, BounceClass.SOFT),
    ],
)
def test_bounce_classification_precedence(classification, enhanced, expected):
    event = normalise_record(
        record(type="Bounce", bounce_classification=classification, response={"code": 550, "enhanced_code": enhanced})
    )
    assert event.bounce_class == expected


def test_the_spool_id_is_only_part_of_the_key():
    deferral = normalise_record(record(type="TransientFailure", num_attempts=1, timestamp=1798016590))
    delivery = normalise_record(record(type="Delivery", num_attempts=1, timestamp=1798016600))
    assert deferral.key != delivery.key
    assert normalise_record(record()).key == normalise_record(record()).key


def test_delivery_headers_give_message_references():
    event = normalise_record(
        record(headers={"Message-ID": "<k1@mail4>", "X-Mw-Campaign-Uid": "c1", "X-Mw-Subscriber-Uid": "s1"})
    )
    assert event.message_refs == ("mid:k1@mail4", "mw:c1/s1") and event.remembers_refs


def test_bodies_object_array_and_bad_records():
    one = json.dumps(record()).encode()
    assert len(parse_body(one).events) == 1
    batch = parse_body(json.dumps([record(), {"type": "Delivery"}, 3]).encode())
    assert len(batch.events) == 1
    assert [(r.record, r.error) for r in batch.rejected] == [
        (2, "timestamp: missing time"),
        (3, "record is a JSON number, expected an object"),
    ]
    with pytest.raises(UnparseableBody):
        parse_body(b"[1, 2")
    with pytest.raises(UnparseableBody):
        parse_body(b'"Delivery"')
