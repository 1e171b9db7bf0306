"""One parser per sender: each turns a request body into a Batch of normalised events.

Parsers are pure functions of the bytes they are given (no database, no tenant): the pipeline
(`webhooks.ingest`) attributes and counts what they produce. A body that cannot be read at all raises
`UnparseableBody` (the endpoint answers 400); a bad record inside a readable body is a `Rejection`
and the rest of the batch still counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from webhooks.events import Ignored, InvalidRecord, NormalisedEvent


class UnparseableBody(ValueError):
    """The body as a whole cannot be read; the message names the problem."""


@dataclass(slots=True)
class Rejection:
    record: int  # data records numbered from 1 (a CSV header is not a record)
    error: str
    raw: Any


@dataclass(slots=True)
class Batch:
    """What a parser read: events to attribute and count, records it ignored and records it rejected."""

    source: str
    events: list[NormalisedEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    ignored: int = 0
    records: int = 0
    # Turns an event's `raw` into the JSON kept in a dead letter (CSV rows become header-to-value objects).
    raw_json: Callable[[Any], Any] = field(default=lambda raw: raw)


def add_records(batch: Batch, records: Iterable[Any], normalise: Callable[[dict], NormalisedEvent]) -> Batch:
    """Normalise decoded JSON records into the batch, one outcome per record."""
    for record in records:
        batch.records += 1
        add_one(batch, record, normalise)
    return batch


def add_one(batch: Batch, record: Any, normalise: Callable[[dict], NormalisedEvent]) -> None:
    """Normalise one decoded record (numbered `batch.records`): an event, an ignored record or a rejection."""
    if not isinstance(record, dict):
        batch.rejected.append(
            Rejection(batch.records, f"record is a JSON {json_type(record)}, expected an object", record)
        )
        return
    try:
        event = normalise(record)
    except Ignored:
        batch.ignored += 1
    except InvalidRecord as exc:
        batch.rejected.append(Rejection(batch.records, str(exc), record))
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
        # A shape no rule anticipated: reject this record, keep the batch.
        batch.rejected.append(Rejection(batch.records, f"unreadable record ({exc.__class__.__name__}: {exc})", record))
    else:
        event.record = batch.records
        batch.events.append(event)


def load_json(body: bytes) -> Any:
    """The decoded JSON document, or UnparseableBody naming the problem."""
    if not body.strip():
        raise UnparseableBody("empty body: expected JSON")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UnparseableBody(f"body is not valid JSON: {exc}"[:300]) from None


def json_records(document: Any) -> list:
    """The records of a JSON document that must be an object or an array of objects."""
    if isinstance(document, dict):
        return [document]
    if isinstance(document, list):
        return document
    raise UnparseableBody(f"JSON body is a {json_type(document)}: expected an object or an array of objects")


def parse_ndjson(body: bytes, batch: Batch, normalise: Callable[[dict], NormalisedEvent]) -> Batch:
    """One JSON object a line; a bad line is a rejected record, a body with no readable line is a 400."""
    readable = False
    for line in body.splitlines():
        if not line.strip():
            continue
        batch.records += 1
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            text = line[:500].decode("utf-8", "replace")
            batch.rejected.append(Rejection(batch.records, f"not valid JSON: {exc}"[:300], {"line": text}))
            continue
        readable = True
        add_one(batch, record, normalise)
    if not readable:
        raise UnparseableBody("body is not valid JSON or NDJSON (no line holds a JSON value)")
    return batch


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def text_field(record: dict, name: str) -> str:
    """A field expected to hold text (numbers are accepted as their text, null as empty)."""
    value = record.get(name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise InvalidRecord(f"{name}: expected text, got a boolean")
    if isinstance(value, int | float):
        return str(value)
    raise InvalidRecord(f"{name}: expected text, got a JSON {json_type(value)}")


def object_field(record: dict, name: str) -> dict:
    """A field expected to hold an object (missing or null: empty)."""
    value = record.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRecord(f"{name}: expected an object, got a JSON {json_type(value)}")
    return value
