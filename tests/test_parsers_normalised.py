"""The portal's own normalised event (events/ endpoint)."""

import pytest

from webhooks.events import BounceClass, EventType, InvalidRecord
from webhooks.parsers.normalised import normalise_record


@pytest.mark.parametrize(
    ("event", "counts"),
    [
        ({"type": "delivered"}, {"sent": 1, "delivered": 1}),
        ({"type": "bounced", "bounce_class": "hard"}, {"sent": 1, "bounced": 1, "bounced_hard": 1}),
        ({"type": "bounced", "bounce_class": "block", "async": True}, {"bounced": 1, "bounced_block": 1}),
        ({"type": "bounced"}, {"sent": 1, "bounced": 1, "bounced_soft": 1}),
        ({"type": "deferred"}, {"deferred": 1}),
        ({"type": "complained"}, {"complaints": 1}),
        ({"type": "opened"}, {"opens": 1}),
        ({"type": "clicked"}, {"clicks": 1}),
        ({"type": "unsubscribed"}, {"unsubscribes": 1}),
    ],
)
def test_counting_rules(event, counts):
    assert normalise_record({"ip": "45.123.10.1", "occurred_at": 1798016412, **event}).counts() == counts


def test_iso_and_unix_times_and_fields():
    event = normalise_record(
        {"type": "delivered", "ip": "45.123.10.1", "occurred_at": "2026-12-23T09:00:12Z", "recipient": "anna@gmail.com",
         "message_id": "<m@x>"}
    )  # fmt: skip
    assert event.occurred_at == 1798016412 and event.recipient_domain == "gmail.com"
    assert normalise_record({"type": "delivered", "occurred_at": "1798016412"}).occurred_at == 1798016412
    assert event.message_refs == ("mid:m@x",) and event.remembers_refs
    assert event.type == EventType.DELIVERED and event.bounce_class == ""
    assert normalise_record({"type": "bounced", "occurred_at": "1798016412", "bounce_class": "HARD"}).bounce_class == (
        BounceClass.HARD
    )


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "sent", "occurred_at": 1}, "type: 'sent' is not one of"),
        ({"occurred_at": 1}, "type: missing"),
        ({"type": "delivered"}, "occurred_at: missing"),
        ({"type": "delivered", "occurred_at": "tomorrow"}, "occurred_at"),
        ({"type": "delivered", "occurred_at": -5}, "out of range"),
        ({"type": "bounced", "occurred_at": 1, "bounce_class": "medium"}, "bounce_class"),
        ({"type": "bounced", "occurred_at": 1, "async": "yes"}, "async"),
        ({"type": "delivered", "occurred_at": 1, "ip": ["x"]}, "ip: expected text"),
    ],
)
def test_invalid_events_name_the_field(event, message):
    with pytest.raises(InvalidRecord, match=message):
        normalise_record(event)
