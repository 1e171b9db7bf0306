"""The portal's own normalised event, for senders it has no parser for (PRODUCT.md section 6).

    {"type": "delivered", "ip": "45.123.10.1", "occurred_at": "2026-12-23T09:00:12Z" (or Unix seconds),
     "recipient": "anna@gmail.com", "event_id": "...", "message_id": "...", "bounce_class": "hard",
     "async": false, "source_name": "...", "response": "421 4.7.28 ..."}

Only `type` and `occurred_at` are required; without `ip` the event is attributed by `source_name`
(an IP's MTA source name) or by `message_id` (a Message-Id an earlier delivered/bounced event named).
`response`, optional, is a deferral's SMTP reply (code, enhanced code and text), which the deferral
classification reads; other types ignore it.
"""

from __future__ import annotations

from webhooks.events import (
    BounceClass,
    EventType,
    InvalidRecord,
    NormalisedEvent,
    event_key,
    message_refs,
    parse_time,
    recipient_domain,
)
from webhooks.parsers import Batch, add_records, json_records, load_json, text_field

SOURCE = "events"

_TYPES = {t.value: t for t in EventType}
_CLASSES = {c.value for c in BounceClass}


def normalise_record(record: dict) -> NormalisedEvent:
    kind = text_field(record, "type").strip().lower()
    event_type = _TYPES.get(kind)
    if event_type is None:
        expected = ", ".join(_TYPES)
        raise InvalidRecord(f"type: {kind[:40]!r} is not one of {expected}" if kind else f"type: missing ({expected})")
    occurred_at = parse_time(record.get("occurred_at"), "occurred_at")

    bounce_class = text_field(record, "bounce_class").strip().lower()
    if bounce_class and bounce_class not in _CLASSES:
        raise InvalidRecord(f"bounce_class: {bounce_class[:20]!r} is not hard, soft or block")
    async_bounce = record.get("async", False)
    if async_bounce is None:
        async_bounce = False
    if not isinstance(async_bounce, bool):
        raise InvalidRecord("async: expected true or false")
    if event_type is EventType.BOUNCED:
        bounce_class = bounce_class or BounceClass.SOFT
    else:
        bounce_class, async_bounce = "", False

    ip = text_field(record, "ip").strip()
    recipient = text_field(record, "recipient")
    event_id = text_field(record, "event_id")
    message_id = text_field(record, "message_id")
    source_name = text_field(record, "source_name").strip()
    response = text_field(record, "response").strip() if event_type is EventType.DEFERRED else ""
    return NormalisedEvent(
        source=SOURCE,
        type=event_type,
        occurred_at=occurred_at,
        key=event_key(
            SOURCE, kind, occurred_at, ip, source_name, recipient, event_id, message_id, bounce_class, async_bounce
        ),
        ip=ip,
        ip_field="ip",
        source_name=source_name,
        message_refs=message_refs(message_id),
        remembers_refs=event_type is EventType.DELIVERED or (event_type is EventType.BOUNCED and not async_bounce),
        recipient_domain=recipient_domain(recipient),
        bounce_class=bounce_class,
        async_bounce=async_bounce,
        raw=record,
        smtp_reply=response[:1000],
    )


def parse_body(body: bytes, content_type: str = "") -> Batch:
    return add_records(Batch(SOURCE), json_records(load_json(body)), normalise_record)
