"""MailWizz campaign webhooks (open and click), JSON: one object, or an array of them.

The payload names no sending IP unless the sender adds `sending_ip`; otherwise the event is
attributed through the (campaign_uid, subscriber_uid) pair that MailWizz stamps on each message as
X-Mw-Campaign-Uid / X-Mw-Subscriber-Uid and that the MTA reported with the delivery.
"""

from __future__ import annotations

from webhooks.events import EventType, InvalidRecord, NormalisedEvent, event_key, message_refs, parse_time
from webhooks.events import recipient_domain as domain_of
from webhooks.parsers import Batch, add_records, json_records, load_json, object_field, text_field

SOURCE = "mailwizz"

EVENT_TYPES = {
    "open": EventType.OPENED,
    "click": EventType.CLICKED,
    "unsubscribe": EventType.UNSUBSCRIBED,
}


def normalise_record(record: dict) -> NormalisedEvent:
    event = object_field(record, "event")
    if not event:
        raise InvalidRecord("event: missing (expected {'type': 'open' or 'click', ...})")
    kind = text_field(event, "type").strip().lower()
    event_type = EVENT_TYPES.get(kind)
    if event_type is None:
        raise InvalidRecord(f"event.type: {kind[:40]!r} is not open or click" if kind else "event.type: missing")

    date_added = text_field(event, "date_added")
    timestamp = record.get("timestamp")
    if timestamp not in (None, ""):
        occurred_at = parse_time(timestamp, "timestamp")
    else:
        occurred_at = parse_time(date_added, "event.date_added")

    campaign = object_field(object_field(record, "campaign"), "attributes")
    subscriber = object_field(object_field(record, "subscriber"), "attributes")
    campaign_uid = text_field(campaign, "campaign_uid").strip()
    subscriber_uid = text_field(subscriber, "subscriber_uid").strip()
    email = text_field(subscriber, "email")
    refs = message_refs("", campaign_uid, subscriber_uid)
    ip = text_field(record, "sending_ip").strip()
    if not ip and not refs:
        raise InvalidRecord(
            "campaign.attributes.campaign_uid / subscriber.attributes.subscriber_uid: missing, and no sending_ip"
        )
    return NormalisedEvent(
        source=SOURCE,
        type=event_type,
        occurred_at=occurred_at,
        # MailWizz re-sends the same payload on failure; two opens of one message differ in time.
        key=event_key(
            SOURCE,
            kind,
            campaign_uid,
            subscriber_uid,
            occurred_at,
            date_added,
            text_field(event, "url"),
            text_field(event, "ip_address"),
            text_field(event, "user_agent"),
        ),
        ip=ip,
        ip_field="sending_ip",
        message_refs=refs,
        recipient_domain=domain_of(email),
        raw=record,
    )


def parse_body(body: bytes, content_type: str = "") -> Batch:
    return add_records(Batch(SOURCE), json_records(load_json(body)), normalise_record)
