"""The PowerMTA CSV hot path: parse, normalise, attribute and group a body in one pass per record.

A PowerMTA accounting body is the bulk of what the portal ingests (PRODUCT.md section 10 measures it
against a bare `csv.reader` pass). The general pipeline builds a `NormalisedEvent` per record
(`webhooks.parsers.powermta._event`), then attributes and groups the events (`webhooks.ingest`); here
the usual record (a known type, a readable time, an IP the tenant has) goes straight from its CSV row
to its counter group, its de-duplication key and its message references, with no object of its own.

Every other record (an `r` or unknown type, an absent or unreadable time, an IP the tenant's map does
not hold, a short row in a header missing columns ...) takes the general path record by record: the
same `_event` and `count_events`, so rejections, dead letters, source names and references behave as
they always did. The two paths give the same key, day, provider and counts for a record, which
`tests/test_ingest_powermta_csv.py` checks against the general pipeline on generated bodies.

The columns come from Apache Arrow's CSV reader (`_columns`), in C, when it reads the body as the csv
module would: one line per record after a one-line header, every row as wide as the header, valid
UTF-8, no NUL or carriage return (the csv module reads those its own way). For such a body both
readers give the same fields (quoted commas, doubled quotes and stray quotes alike;
`tests/test_ingest_powermta_csv.py` checks it on generated lines). Any other body is read by
`csv.reader`, as before.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow
from pyarrow import csv as arrow_csv
from xxhash import xxh3_128_hexdigest

from warmup.counters import GroupKey, StreamedWrites
from warmup_portal.collector import gc_paused
from webhooks.attribution import RedisMessageRefs
from webhooks.events import (
    POWERMTA_MINUTES,
    REF_STRIP,
    SECONDS,
    EventType,
    Ignored,
    InvalidRecord,
    classify_bounce,
    count_items,
    powermta_time,
)
from webhooks.ingest import Attributed, IngestResult, TenantContext, count_events, finish, ingest
from webhooks.parsers import Batch, Rejection
from webhooks.parsers.powermta import (
    RECORD_TYPES,
    SOURCE,
    CsvLayout,
    _event,
    _new_batch,
    csv_lines,
    decode,
    is_csv,
    parse_body,
    read_layout,
)

# Record type -> (counts, remembers references) for the types whose counts depend on nothing else.
_PLAIN_TYPES = {
    rtype: (count_items(event_type, "", async_bounce), remembers)
    for rtype, (event_type, async_bounce, remembers) in RECORD_TYPES.items()
    if event_type is not EventType.BOUNCED
}
# Bounce types -> (asynchronous, remembers references): their counts depend on the bounce class.
_BOUNCE_TYPES = {
    rtype: (async_bounce, remembers)
    for rtype, (event_type, async_bounce, remembers) in RECORD_TYPES.items()
    if event_type is EventType.BOUNCED
}
_COMPLAINT_TYPES = frozenset(
    rtype for rtype, (event_type, _, _) in RECORD_TYPES.items() if event_type is EventType.COMPLAINED
)
# References a body sends ahead of its counts at a time: a few hundred records' worth, so that Redis
# stores them while the rest of the body is read.
STREAM_REFS = 512
_LATEST = 32503680000  # the first second of the year 3000: later times are rejected (`_event`)


def ingest_body(
    ctx: TenantContext, body: bytes, content_type: str = "", *, refuse_foreign: bool = False
) -> IngestResult:
    """A PowerMTA webhook body, whichever its encoding: CSV here, JSON and NDJSON by the general path."""
    if is_csv(body, content_type):
        return ingest_csv(ctx, decode(body), refuse_foreign=refuse_foreign, data=body)
    return ingest(ctx, parse_body(body, content_type), refuse_foreign=refuse_foreign)


def ingest_csv(
    ctx: TenantContext, text: str, *, refuse_foreign: bool = False, data: bytes | None = None
) -> IngestResult:
    """Count a PowerMTA CSV body (a header line, then records) for the context's tenant.

    The same outcome as `ingest(ctx, parse_csv(text))`, for less work per record. `data`: the body's
    bytes, when `text` is their decoding. Raises UnparseableBody for a body without a usable header, and
    what `ingest` raises.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    layout = read_layout(reader)
    lines: list[str] = []  # `csv_lines(text)`, read when a record needs them
    batch = _new_batch(layout, lines)
    # With Redis, the message references go out while the body is still read (`StreamedWrites`).
    stream = ctx.store.stream_hash_writes() if isinstance(ctx.refs, RedisMessageRefs) else None
    try:
        with gc_paused():
            records, row_of = _records(text, data, reader, layout, batch, lines)
            attributed = _read(ctx, records, row_of, layout, batch, stream)
        counted = count_events(ctx, batch.events, refuse_foreign=refuse_foreign, prepared=attributed)
    finally:
        if stream is not None:
            stream.close()
    return finish(ctx, batch, counted)


def _records(
    text: str, data: bytes | None, reader: Any, layout: CsvLayout, batch: Batch, lines: list[str]
) -> tuple[Iterator[tuple], Callable[[int], tuple[list[str], int]]]:
    """The body's records as `_read` takes them, from Arrow's columns when `_columns` reads the body,
    else from `reader` (past the header); `lines` is filled with the body's lines when a record needs them."""
    columns = _columns(text, data, layout) if reader.line_num == 1 else None
    if columns is None:
        lines.extend(csv_lines(text))
        return _rows(reader, layout, batch)

    def row_of(number: int) -> tuple[list[str], int]:
        # One line per record after a one-line header: record `number` is line `number`.
        if not lines:
            lines.extend(csv_lines(text))
        return _padded(next(csv.reader([lines[number]])), layout), number

    return zip(*columns, strict=True), row_of


def _columns(text: str, data: bytes | None, layout: CsvLayout) -> list[list[str]] | None:
    """The fields `_read` takes of each record (`layout.positions`), column by column, from Arrow's CSV
    reader; None when it might read the body otherwise than csv.reader (see the module docstring)."""
    if "\r" in text or "\x00" in text:
        return None
    if data is None:
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate
            return None
    names = [f"c{position}" for position in range(layout.width)]
    wanted = sorted({position for position in layout.positions if position >= 0})
    short: list = []  # rows whose width is not the header's
    try:
        table = arrow_csv.read_csv(
            pyarrow.py_buffer(data),
            read_options=arrow_csv.ReadOptions(use_threads=False, skip_rows=1, column_names=names),
            parse_options=arrow_csv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=lambda row: short.append(row) or "skip"
            ),
            convert_options=arrow_csv.ConvertOptions(
                # `text` is `data` decoded with replacement: without a replacement character, every
                # byte of `data` was valid UTF-8 already, and need not be checked again.
                check_utf8="\ufffd" in text,
                include_columns=[names[position] for position in wanted],
                column_types={names[position]: pyarrow.string() for position in wanted},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pyarrow.ArrowException, ValueError):  # invalid UTF-8, an unterminated quote, no record ...
        return None
    # As many records as lines after the header: no blank line, no record over several lines.
    if short or table.num_rows != text.count("\n") - text.endswith("\n"):
        return None
    by_position = {position: table.column(names[position]).to_pylist() for position in wanted}
    empty = [""] * table.num_rows
    return [by_position[position] if position >= 0 else empty for position in layout.positions]


def _padded(row: list[str], layout: CsvLayout) -> list[str]:
    """A row as wide as the header, and the empty sentinel that `layout.pick` reads for absent fields."""
    if len(row) < layout.width:
        row.extend([""] * (layout.width - len(row)))
    if layout.sentinel:
        row.append("")
    return row


# What `_rows` gives for a row the csv module refuses (its rejection is recorded already).
_MALFORMED: Any = object()


def _rows(reader: Any, layout: CsvLayout, batch: Batch) -> tuple[Iterator[tuple], Callable]:
    """The records of a csv.reader as `_read` takes them (`layout.pick` of each non-blank row, in order;
    _MALFORMED for a row the csv module refuses), and the full row of the latest one with its first line."""
    current: list = [None, 0]  # the latest record's row and the index of its first line
    pick, rejected = layout.pick, batch.rejected

    def records() -> Iterator[tuple]:
        number = 0
        line = reader.line_num  # lines read before the next record: the index of its first line
        while True:
            try:
                for row in reader:
                    first_line, line = line, reader.line_num
                    if not row:
                        continue  # a blank line is not a record
                    number += 1
                    current[0], current[1] = _padded(row, layout), first_line
                    yield pick(row)
                return
            except csv.Error as exc:
                number += 1
                line = reader.line_num
                rejected.append(Rejection(number, f"malformed CSV: {exc}", {"line": reader.line_num}))
                yield _MALFORMED

    return records(), lambda number: (current[0], current[1])


def _read(
    ctx: TenantContext,
    records: Iterator[tuple],
    row_of: Callable[[int], tuple[list[str], int]],
    layout: CsvLayout,
    batch: Batch,
    stream: StreamedWrites | None,
) -> Attributed:
    """Read every record (`records`: the fields `layout.pick` takes of each; `row_of(number)`: the full
    row of record `number`, the latest one read, and the index of its first line): the usual ones into
    an `Attributed`, the others into `batch` (events for the general path, rejections, ignored records).
    Every STREAM_REFS references, those not sent yet go out on `stream`."""
    pick = layout.pick
    by_address = ctx.attributor.by_address
    day_of, days = ctx.day_of, ctx.day_of.cached
    provider_of, providers = ctx.provider, ctx.providers
    groups: dict[GroupKey, list[str | None]] = {}
    remember: dict[str, int] = {}
    streamed: dict[str, int] = {}
    flush_at = STREAM_REFS if stream is not None else sys.maxsize
    tenant_id = ctx.tenant.pk
    bounce_counts: dict[tuple[str, str, bool], tuple[tuple[str, int], ...]] = {}
    events, rejected = batch.events, batch.rejected
    by_written_domain: dict[str, str] = {}  # a recipient's domain as written -> its provider
    minutes, seconds = POWERMTA_MINUTES, SECONDS

    # References of the records off the usual path: a later usual record naming one of them is noted
    # in `refs_after`, so that the reference goes to the last record naming it, as in the general path.
    watched: set[str] = set()
    refs_after: dict[str, int] = {}

    def general(number: int) -> None:
        """A record off the usual path, as `iter_csv_batches` reads it."""
        row, first_line = row_of(number)
        try:
            event = _event(pick(row), first_line, number)
            events.append(event)
            if event.remembers_refs:
                watched.update(event.message_refs)
        except Ignored:
            batch.ignored += 1
        except InvalidRecord as exc:
            rejected.append(Rejection(number, str(exc), layout.as_dict(row)))
        except (ValueError, TypeError, OverflowError) as exc:
            rejected.append(Rejection(number, f"unreadable record ({exc})", layout.as_dict(row)))

    number = 0
    for number, picked in enumerate(records, 1):
        if picked is _MALFORMED:
            continue
        (rtype, logged, queued, rcpt, orig, dlv_ip, rep_ip, vmta, job, message_id, campaign_uid,
         subscriber_uid, dsn_status, bounce_cat, feedback_type) = picked  # fmt: skip

        kind = _PLAIN_TYPES.get(rtype)
        if kind is not None:
            counts, remembers = kind
        else:
            bounce = _BOUNCE_TYPES.get(rtype)
            if bounce is None:
                general(number)  # `r`, a type in another case, an unknown type
                continue
            async_bounce, remembers = bounce
            code = dsn_status.split(" ", 1)[0].strip() if dsn_status else ""  # status_code()
            counts = bounce_counts.get((bounce_cat, code, async_bounce))
            if counts is None:
                bounce_class = classify_bounce(bounce_cat, "", code)
                counts = count_items(EventType.BOUNCED, bounce_class, async_bounce)
                bounce_counts[(bounce_cat, code, async_bounce)] = counts

        # The event time and its text in the key, as `_event` has them.
        if logged.isdigit() and logged.isascii() and logged[0] != "0":
            at, stamp = int(logged), logged
        elif logged and not logged.isdigit():
            # powermta_time's first step inlined: a minute already seen needs only its seconds read.
            minute = minutes.get(logged[:16] + logged[19:])
            if minute is not None and logged[16] == ":" and (second := seconds.get(logged[17:19])) is not None:
                at = minute + second
            else:
                try:
                    at = powermta_time(logged, "timeLogged")
                except (ValueError, TypeError, OverflowError):  # InvalidRecord among them
                    general(number)
                    continue
            stamp = str(at)
        else:
            general(number)  # no time (timeQueued instead), or leading zeros
            continue
        if not 0 <= at < _LATEST:
            general(number)
            continue

        ip = rep_ip.strip() if rep_ip and rtype in _COMPLAINT_TYPES else dlv_ip.strip()
        ip_id = by_address.get(ip)
        if ip_id is None:
            general(number)  # no IP, or one the map does not hold as written
            continue

        if remembers:
            if message_id:
                mid = message_id.strip(REF_STRIP)
                if mid:
                    remember["mid:" + mid] = ip_id
                    if watched and "mid:" + mid in watched:
                        refs_after["mid:" + mid] = number
            if campaign_uid and subscriber_uid:
                campaign, subscriber = campaign_uid.strip(), subscriber_uid.strip()
                if campaign and subscriber:
                    remember["mw:" + campaign + "/" + subscriber] = ip_id
                    if watched and "mw:" + campaign + "/" + subscriber in watched:
                        refs_after["mw:" + campaign + "/" + subscriber] = number
            if len(remember) >= flush_at:
                stream.send(ctx.refs.hash_write(tenant_id, remember))
                streamed.update(remember)
                remember.clear()
        at_sign = rcpt.rfind("@")
        written = rcpt[at_sign + 1 :] if at_sign >= 0 else ""
        provider = by_written_domain.get(written)
        if provider is None:
            domain = written.strip().strip(">").lower()
            provider = by_written_domain[written] = providers.get(domain) or provider_of(domain)
        key = xxh3_128_hexdigest(
            "\x1f".join(
                (SOURCE, rtype, stamp, queued, rcpt, orig, ip, vmta, job, message_id, dsn_status,
                 bounce_cat, feedback_type)
            ).encode("utf-8", "surrogatepass")
        )  # fmt: skip
        group = (ip_id, days.get(at // 900) or day_of(at), provider, counts)
        keys = groups.get(group)
        if keys is None:
            keys = groups[group] = []
        keys.append(key)
    if remember and stream is not None:  # the rest now: Redis stores them while the groups are encoded
        stream.send(ctx.refs.hash_write(tenant_id, remember))
        streamed.update(remember)
        remember.clear()
    batch.records = number
    fast = sum(map(len, groups.values()))  # every key in `groups` is a usual record's
    return Attributed(groups, fast, remember, streamed, stream, refs_after)
