"""PowerMTA accounting records: CSV with a header line, a JSON object or array, or NDJSON.

Counting rules (PRODUCT.md section 6): `d` sent + delivered, `b` sent + bounced, `rb`/`rs` bounced
only (asynchronous), `f` complaints, `t`/`tq` deferred (with their
reply, `dsnDiag` and `dsnStatus`, for the deferral classification), `r` ignored, anything else rejected.
The event time is `timeLogged`, else `timeQueued`. Columns are found by name (operators choose the
fields and their order); field names are matched without regard to case; a repeated column name keeps
its first occurrence.

This is the hot path of ingestion: a body's fields are read by Apache Arrow's CSV reader where it
reads them as the csv module would (else by csv.reader), by column position, with no per-record regex.
"""

from __future__ import annotations

import csv
import io
import itertools
import operator
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow
from pyarrow import csv as arrow_csv

from webhooks.events import (
    EventType,
    Ignored,
    InvalidRecord,
    NormalisedEvent,
    classify_bounce,
    key_of_text,
    message_refs,
    powermta_time,
    recipient_domain,
    status_code,
)
from webhooks.parsers import (
    Batch,
    Rejection,
    UnparseableBody,
    add_records,
    json_records,
    load_json,
    parse_ndjson,
    text_field,
)

SOURCE = "powermta"

# type -> (event type, asynchronous bounce, remembers message references)
RECORD_TYPES: dict[str, tuple[EventType, bool, bool]] = {
    "d": (EventType.DELIVERED, False, True),
    "b": (EventType.BOUNCED, False, True),
    "rb": (EventType.BOUNCED, True, False),
    "rs": (EventType.BOUNCED, True, False),
    "f": (EventType.COMPLAINED, False, False),
    "t": (EventType.DEFERRED, False, False),
    "tq": (EventType.DEFERRED, False, False),
}
IGNORED_TYPES = frozenset({"r"})
_BOUNCED, _COMPLAINED, _DEFERRED = EventType.BOUNCED, EventType.COMPLAINED, EventType.DEFERRED

# The fields the parser reads, in the order `_event` takes them.
FIELDS = (
    "type",
    "timeLogged",
    "timeQueued",
    "rcpt",
    "orig",
    "dlvSourceIp",
    "repSourceIp",
    "vmta",
    "jobId",
    "header_Message-Id",
    "header_X-Mw-Campaign-Uid",
    "header_X-Mw-Subscriber-Uid",
    "dsnStatus",
    "bounceCat",
    "feedbackType",
    "dsnDiag",
)
_FIELDS_LOWER = tuple(name.lower() for name in FIELDS)

CSV_BATCH_SIZE = 1000


def _event(values: tuple[str, ...], raw: Any, record: int = 0) -> NormalisedEvent:
    """The normalised event of one record, whichever encoding it came in: `values` are the FIELDS."""
    (
        rtype,
        logged,
        queued,
        rcpt,
        orig,
        dlv_ip,
        rep_ip,
        vmta,
        job,
        message_id,
        campaign_uid,
        subscriber_uid,
        dsn_status,
        bounce_cat,
        feedback_type,
        dsn_diag,
    ) = values
    kind = RECORD_TYPES.get(rtype)
    if kind is None:
        rtype = rtype.strip().lower()
        kind = RECORD_TYPES.get(rtype)
        if kind is None:
            if rtype in IGNORED_TYPES:
                raise Ignored
            if not rtype:
                raise InvalidRecord("type: missing record type")
            raise InvalidRecord(f"type: unknown record type {rtype[:20]!r}")
    event_type, async_bounce, remembers = kind

    if logged:
        if logged.isdigit() and logged.isascii():
            occurred_at = int(logged)
            # The key's text of the time is str(occurred_at): the field itself, but for leading zeros.
            stamp = logged if logged[0] != "0" else str(occurred_at)
        else:
            occurred_at = powermta_time(logged, "timeLogged")
            stamp = str(occurred_at)
    elif queued:
        occurred_at = int(queued) if queued.isdigit() and queued.isascii() else powermta_time(queued, "timeQueued")
        stamp = str(occurred_at)
    else:
        raise InvalidRecord("timeLogged: missing (and no timeQueued to fall back on)")
    if not 0 <= occurred_at < 32503680000:
        raise InvalidRecord(f"timeLogged: time {occurred_at} is out of range")

    if event_type is _COMPLAINED and rep_ip:
        ip, ip_field = rep_ip.strip(), "repSourceIp"
    else:
        ip, ip_field = dlv_ip.strip(), "dlvSourceIp"

    bounce_class = classify_bounce(bounce_cat, "", status_code(dsn_status)) if event_type is _BOUNCED else ""

    refs = message_refs(message_id, campaign_uid, subscriber_uid)
    domain = recipient_domain(rcpt)

    # The unit separator cannot occur in a field PowerMTA writes: event_key() of the strings as they are.
    key = key_of_text(
        "\x1f".join(
            (SOURCE, rtype, stamp, queued, rcpt, orig, ip, vmta, job, message_id, dsn_status, bounce_cat,
             feedback_type)
        )
    )  # fmt: skip
    event = NormalisedEvent(
        SOURCE, event_type, occurred_at, key, ip, ip_field, vmta.strip(), refs, remembers, domain, bounce_class,
        async_bounce, raw, record,
    )  # fmt: skip
    if event_type is _DEFERRED:
        # The reply the deferral classification reads: the remote diagnostic ("smtp;421 4.7.28 ...") and
        # the status. Not part of the key: keys of records posted before stay the same.
        event.smtp_reply = f"{dsn_diag.strip()} {dsn_status.strip()}".strip()[:1000]
    return event


def normalise_record(record: dict) -> NormalisedEvent:
    """One record given as a JSON object (or a dead letter's header-to-value object)."""
    lowered = {key.lower(): value for key, value in record.items()}
    values = []
    for name, lower in zip(FIELDS, _FIELDS_LOWER, strict=True):
        value = lowered.get(lower)
        values.append(value if isinstance(value, str) else text_field({name: value}, name))
    return _event(tuple(values), raw=record)


# --- CSV --------------------------------------------------------------------------------------------


class CsvLayout:
    """Column positions of the fields the parser reads, from a header line."""

    def __init__(self, header: list[str]):
        header = [name.strip().lstrip("\ufeff") for name in header]
        first: dict[str, int] = {}
        for position, name in enumerate(header):
            first.setdefault(name.lower(), position)
        if "type" not in first:
            raise UnparseableBody("CSV header has no 'type' column (the first line must be the header)")
        self.header = header
        self.width = len(header)
        # -1 reads the empty sentinel appended to every row when the header lacks a field: that field
        # is empty.
        self.positions = tuple(first.get(name, -1) for name in _FIELDS_LOWER)
        self.sentinel = -1 in self.positions
        # The FIELDS of a row in one C call, in the order _event takes them.
        self.pick = operator.itemgetter(*self.positions)
        self.columns = [(header[position], position) for position in sorted(first.values())]

    def as_dict(self, row: list[str]) -> dict[str, str]:
        return {name: row[position] if position < len(row) else "" for name, position in self.columns}


# A record's `values` (the FIELDS), its `raw` (see `_new_batch`) and its number; `values` is None for a
# row the csv module refuses, `raw` then the reason.
Record = tuple[tuple[str, ...] | None, Any, int]


def iter_csv_batches(lines: Iterable[str], batch_size: int = CSV_BATCH_SIZE) -> Iterator[Batch]:
    """Batches of at most `batch_size` records from CSV lines (a header line first), in constant memory.

    When `lines` is a list (a whole body), an event's `raw` is the index of its record's first line
    rather than the row, which the batch reads again only for a dead letter: the rows then die as soon
    as their event is built.
    """
    indexed = isinstance(lines, list)
    reader = csv.reader(lines)
    layout = read_layout(reader)
    records = _csv_records(reader, layout, indexed)
    while True:
        batch = _fill(_new_batch(layout, lines if indexed else None), itertools.islice(records, batch_size))
        if not batch.records:
            return
        yield batch


def _csv_records(reader, layout: CsvLayout, indexed: bool) -> Iterator[Record]:
    """The records of a csv.reader past the header line: blank rows skipped, short rows padded."""
    width, sentinel, pick = layout.width, layout.sentinel, layout.pick
    number = 0
    while True:
        first_line = reader.line_num  # lines read so far: the index of the next record's first line
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield None, (f"malformed CSV: {exc}", {"line": reader.line_num}), number
            continue
        if not row:
            continue  # a blank line is not a record
        number += 1
        if len(row) < width:
            row.extend([""] * (width - len(row)))
        if sentinel:
            row.append("")
        yield pick(row), first_line if indexed else row, number


def _fill(batch: Batch, records: Iterable[Record]) -> Batch:
    """The batch's events, ignored and rejected records, from `records`."""
    append, rejected = batch.events.append, batch.rejected
    count = 0
    for values, raw, number in records:
        count += 1
        try:
            if values is None:
                rejected.append(Rejection(number, *raw))
                continue
            append(_event(values, raw, number))
        except Ignored:
            batch.ignored += 1
        except InvalidRecord as exc:
            rejected.append(Rejection(number, str(exc), batch.raw_json(raw)))
        except (ValueError, TypeError, OverflowError) as exc:
            rejected.append(Rejection(number, f"unreadable record ({exc})", batch.raw_json(raw)))
    batch.records = count
    return batch


def read_layout(reader) -> CsvLayout:
    """The column layout from the header line (the first line with a non-blank cell)."""
    header = _next_row(reader)
    while header is not None and not any(cell.strip() for cell in header):
        header = _next_row(reader)
    if header is None:
        raise UnparseableBody("empty CSV: expected a header line and records")
    return CsvLayout(header)


def _new_batch(layout: CsvLayout, lines: list[str] | Callable[[], list[str]] | None) -> Batch:
    """An empty batch whose `raw_json` turns an event's `raw` into its record as a header-to-value object:
    `raw` is the row itself, or the index of the record's first line in `lines` (a list, or a function
    that reads them when a record is first needed)."""
    batch = Batch(SOURCE)
    read: list[list[str]] = []

    def raw_json(raw: Any) -> Any:
        if lines is not None and type(raw) is int:  # the index of the record's first line
            if not read:
                read.append(lines() if callable(lines) else lines)
            raw = next(csv.reader(itertools.islice(read[0], raw, None)))
        return layout.as_dict(raw) if isinstance(raw, list) else raw

    batch.raw_json = raw_json
    return batch


def _next_row(reader) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise UnparseableBody(f"malformed CSV header: {exc}") from None


def csv_lines(text: str) -> list[str]:
    """The lines of a body as csv.reader reads them from its text (universal newlines, kept): a record's
    first line is found again by its index for a dead letter."""
    return io.StringIO(text, newline="").readlines()


def parse_csv(text: str, data: bytes | None = None) -> Batch:
    """A whole CSV body as one batch; `data`: the bytes `text` was decoded from, when it was.

    The fields come from Apache Arrow's CSV reader (`arrow_columns`, in C) when it reads the body as the
    csv module does; any other body is read by csv.reader. Both give `_event` the same fields.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    layout = read_layout(reader)
    columns = None
    if reader.line_num == 1:
        if data is None:
            try:
                data = text.encode()
            except UnicodeEncodeError:  # a lone surrogate
                data = b""
        columns = arrow_columns(data, layout)
    if columns is None:
        for batch in iter_csv_batches(csv_lines(text), batch_size=sys.maxsize):
            return batch
        return Batch(SOURCE)  # a header line and no record
    # One line per record after a one-line header: record n is line n, its own `raw`.
    batch = _new_batch(layout, lambda: csv_lines(text))
    return _fill(batch, zip(zip(*columns, strict=True), itertools.count(1), itertools.count(1)))


def arrow_columns(data: bytes, layout: CsvLayout) -> list[list[str]] | None:
    """The FIELDS of every record past the header line, column by column, from Arrow's CSV reader; None
    when it might read the body otherwise than csv.reader reads its decoding. That is, unless `data` is
    valid UTF-8 with one line per record after a one-line header, rows as wide as the header, no line
    longer than the csv module's field size limit, and no NUL or carriage return (the csv module reads
    those its own way). For such a body both give the same fields, quoted commas, doubled and stray
    quotes alike (`tests/test_parsers_powermta.py` compares them on generated lines)."""
    if not data or b"\r" in data or b"\x00" in data:
        return None
    if not _lines_within(data, csv.field_size_limit()):
        return None
    names = [f"c{position}" for position in range(layout.width)]
    wanted = sorted({position for position in layout.positions if position >= 0})
    odd: list = []  # rows whose width is not the header's
    try:
        table = arrow_csv.read_csv(
            pyarrow.py_buffer(data),
            read_options=arrow_csv.ReadOptions(use_threads=False, skip_rows=1, column_names=names),
            parse_options=arrow_csv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=lambda row: odd.append(row) or "skip"
            ),
            convert_options=arrow_csv.ConvertOptions(
                include_columns=[names[position] for position in wanted],
                column_types={names[position]: pyarrow.string() for position in wanted},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pyarrow.ArrowException, ValueError):  # invalid UTF-8, an unterminated quote, no record ...
        return None
    # As many records as lines after the header: no blank line, no record over several lines.
    if odd or table.num_rows != data.count(b"\n") - data.endswith(b"\n"):
        return None
    by_position = {position: table.column(names[position]).to_pylist() for position in wanted}
    empty = [""] * table.num_rows
    return [by_position[position] if position >= 0 else empty for position in layout.positions]


def _lines_within(data: bytes, limit: int) -> bool:
    """Whether no line of `data` is longer than `limit` bytes. Every aligned stretch of limit // 2 bytes
    holding a newline is enough (a longer line would hold a whole stretch), and takes a few searches."""
    half = limit // 2
    if all(data.find(b"\n", start, start + half) >= 0 for start in range(0, len(data) - half + 1, half)):
        return True
    return max(map(len, data.split(b"\n"))) <= limit


# --- Body dispatch ----------------------------------------------------------------------------------

CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain", "text/x-csv", "application/vnd.ms-excel"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})


def parse_body(body: bytes, content_type: str = "") -> Batch:
    """A request body: CSV (text/csv), NDJSON (application/x-ndjson) or JSON; sniffed when unlabelled."""
    if is_csv(body, content_type):
        return parse_csv(decode(body), body)
    if _media_type(content_type) in NDJSON_TYPES:
        return parse_ndjson(body, Batch(SOURCE), normalise_record)
    try:
        document = load_json(body)
    except UnparseableBody:
        # Posting tools sometimes label NDJSON as JSON: several objects, one a line.
        if body.lstrip()[:1] == b"{" and b"\n" in body.strip():
            return parse_ndjson(body, Batch(SOURCE), normalise_record)
        raise
    return add_records(Batch(SOURCE), json_records(document), normalise_record)


def is_csv(body: bytes, content_type: str = "") -> bool:
    """Whether `parse_body` reads the body as CSV: labelled so, or unlabelled and not JSON-looking."""
    media_type = _media_type(content_type)
    if media_type in NDJSON_TYPES:
        return False
    if media_type in CSV_TYPES:
        return True
    return media_type != "application/json" and body.lstrip()[:1] not in (b"{", b"[")


def _media_type(content_type: str) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(body: bytes) -> str:
    # Accounting files are UTF-8 in practice, but remote replies (dsnDiag) can carry stray bytes:
    # replace them rather than refuse the batch.
    return body.decode("utf-8", "replace")
