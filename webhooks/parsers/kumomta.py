"""KumoMTA log records (its log hook helper posts JSON: one object, or an array).

Counting rules (PRODUCT.md section 6): `Delivery` sent + delivered; `Bounce`, `Expiration` sent +
bounced; `OOB` bounced only (asynchronous); `Feedback` complaints; `TransientFailure` deferred (its `response`
kept as the reply the deferral classification reads);
`Reception`, `Delay`, `AdminBounce`, `Rejection` ignored; other types rejected.

The sending IP is `source_address.address` without its port (an IPv6 address comes in brackets),
except when `source_address.protocol` names a proxy: then the proxy's address is not ours and the
egress is named by `egress_source`. Feedback records name the IP in `feedback_report.source_ip`.
"""

from __future__ import annotations

from webhooks.events import (
    EventType,
    Ignored,
    InvalidRecord,
    NormalisedEvent,
    classify_bounce,
    event_key,
    message_refs,
    parse_time,
    recipient_domain,
)
from webhooks.parsers import Batch, add_records, json_records, load_json, object_field, text_field

SOURCE = "kumomta"

# type -> (event type, asynchronous bounce, remembers message references)
RECORD_TYPES: dict[str, tuple[EventType, bool, bool]] = {
    "Delivery": (EventType.DELIVERED, False, True),
    "Bounce": (EventType.BOUNCED, False, True),
    "Expiration": (EventType.BOUNCED, False, False),
    "OOB": (EventType.BOUNCED, True, False),
    "Feedback": (EventType.COMPLAINED, False, False),
    "TransientFailure": (EventType.DEFERRED, False, False),
}
IGNORED_TYPES = frozenset({"Reception", "Delay", "AdminBounce", "Rejection"})
PROXY_PROTOCOLS = ("haproxy", "socks5", "socks", "proxy")


def normalise_record(record: dict) -> NormalisedEvent:
    rtype = text_field(record, "type")
    kind = RECORD_TYPES.get(rtype)
    if kind is None:
        if rtype in IGNORED_TYPES:
            raise Ignored
        if not rtype:
            raise InvalidRecord("type: missing record type")
        raise InvalidRecord(f"type: unknown record type {rtype[:40]!r}")
    event_type, async_bounce, remembers = kind
    occurred_at = parse_time(record.get("timestamp"), "timestamp")

    feedback = object_field(record, "feedback_report")
    recipient = text_field(record, "recipient") or text_field(feedback, "original_rcpto_to")

    ip = ip_field = ""
    source_name = text_field(record, "egress_source").strip()
    if event_type is EventType.COMPLAINED and feedback.get("source_ip"):
        ip, ip_field = text_field(feedback, "source_ip").strip(), "feedback_report.source_ip"
    else:
        source_address = record.get("source_address")
        if isinstance(source_address, str):
            source_address = {"address": source_address}
        if isinstance(source_address, dict):
            protocol = source_address.get("protocol")
            proxied = isinstance(protocol, str) and protocol.strip().lower().startswith(PROXY_PROTOCOLS)
            address = source_address.get("address")
            if isinstance(address, str) and address.strip() and not proxied:
                ip, ip_field = strip_port(address), "source_address.address"

    response = object_field(record, "response")
    status = enhanced_code(response.get("enhanced_code"))
    classification = text_field(record, "bounce_classification")
    bounce_class = classify_bounce("", classification, status) if event_type is EventType.BOUNCED else ""

    headers = {str(k).lower(): v for k, v in object_field(record, "headers").items()}
    refs = message_refs(headers.get("message-id"), headers.get("x-mw-campaign-uid"), headers.get("x-mw-subscriber-uid"))
    message_id = record.get("id")
    event = NormalisedEvent(
        source=SOURCE,
        type=event_type,
        occurred_at=occurred_at,
        # The id is the message's spool id, shared by its TransientFailure and its Delivery: the
        # event is the id with its type, time, attempt and recipient.
        key=event_key(
            SOURCE,
            rtype,
            message_id if isinstance(message_id, str | int) else "",
            occurred_at,
            record.get("num_attempts") if isinstance(record.get("num_attempts"), int) else "",
            recipient,
            text_field(feedback, "feedback_type") if feedback else "",
        ),
        ip=ip,
        ip_field=ip_field,
        source_name=source_name,
        message_refs=refs,
        remembers_refs=remembers,
        recipient_domain=recipient_domain(recipient),
        bounce_class=bounce_class,
        async_bounce=async_bounce,
        raw=record,
    )
    if event_type is EventType.DEFERRED:
        event.smtp_reply = smtp_reply(response, status)
    return event


def smtp_reply(response: dict, status: str) -> str:
    """ "421 4.7.28 Our system has detected ..." from a record's `response` (code, enhanced code, content)."""
    code = response.get("code")
    content = response.get("content")
    parts = [
        str(code) if isinstance(code, int) and not isinstance(code, bool) else "",
        status,
        content.strip() if isinstance(content, str) else "",
    ]
    return " ".join(part for part in parts if part)[:1000]  # the rules read the code and its first words


def strip_port(address: str) -> str:
    """ "45.123.10.4:25" -> "45.123.10.4", "[2001:db8::1]:25" -> "2001:db8::1"; a bare address as is."""
    address = address.strip()
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address


def enhanced_code(value) -> str:
    """ "5.7.9" from {"class": 5, "subject": 7, "detail": 9}; "" when absent or malformed."""
    if not isinstance(value, dict):
        return ""
    parts = [value.get("class"), value.get("subject"), value.get("detail")]
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 1000 for p in parts):
        return ""
    return ".".join(str(p) for p in parts)


def parse_body(body: bytes, content_type: str = "") -> Batch:
    return add_records(Batch(SOURCE), json_records(load_json(body)), normalise_record)
