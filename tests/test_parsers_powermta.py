"""PowerMTA accounting parser: record types, time forms, bounce classes, CSV quirks, JSON and NDJSON."""

import csv
import io
import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.events import BounceClass, EventType
from webhooks.parsers import UnparseableBody
from webhooks.parsers.powermta import (
    arrow_columns,
    csv_lines,
    iter_csv_batches,
    normalise_record,
    parse_body,
    parse_csv,
    read_layout,
)

HEADER = "type,timeLogged,timeQueued,rcpt,dsnStatus,bounceCat,dlvSourceIp,vmta,header_Message-Id\n"


def csv_body(*rows: str, header: str = HEADER) -> bytes:
    return (header + "\n".join(rows) + "\n").encode()


@pytest.mark.parametrize(
    ("rtype", "event_type", "async_bounce"),
    [
        ("d", EventType.DELIVERED, False),
        ("b", EventType.BOUNCED, False),
        ("rb", EventType.BOUNCED, True),
        ("rs", EventType.BOUNCED, True),
        ("f", EventType.COMPLAINED, False),
        ("t", EventType.DEFERRED, False),
        ("tq", EventType.DEFERRED, False),
    ],
)
def test_each_counted_record_type(rtype, event_type, async_bounce):
    batch = parse_body(csv_body(f"{rtype},1798016412,,a@gmail.com,5.1.1,,45.123.10.1,,"), "text/csv")
    (event,) = batch.events
    assert (event.type, event.async_bounce) == (event_type, async_bounce)
    assert event.record == 1


def test_received_records_are_ignored_and_unknown_types_rejected():
    batch = parse_body(csv_body("r,1798016412,,a@gmail.com,,,,,", "zz,1798016412,,a@gmail.com,,,45.123.10.1,,"))
    assert batch.ignored == 1 and not batch.events
    assert [(r.record, r.error) for r in batch.rejected] == [(2, "type: unknown record type 'zz'")]
    assert batch.rejected[0].raw["type"] == "zz"


@pytest.mark.parametrize(
    ("logged", "expected"),
    [
        ("1798016412", 1798016412),
        ("2026-12-24 09:14:03+0100", 1798100043),
        ("2026-12-24T08:14:03Z", 1798100043),
        ("2026-12-24T09:14:03+01:00", 1798100043),
        ("2026-12-24 08:14:03", 1798100043),  # no zone: UTC
    ],
)
def test_time_forms(logged, expected):
    (event,) = parse_body(csv_body(f"d,{logged},,a@gmail.com,,,45.123.10.1,,")).events
    assert event.occurred_at == expected


def test_time_queued_is_the_fallback_and_a_record_without_time_is_rejected():
    batch = parse_body(
        csv_body("b,,1798016400,a@gmail.com,5.1.1,,45.123.10.1,,", "d,,,a@gmail.com,,,45.123.10.1,,", "d,soon,,a,,,,,")
    )
    assert [e.occurred_at for e in batch.events] == [1798016400]
    assert [r.record for r in batch.rejected] == [2, 3]
    assert "timeLogged" in batch.rejected[0].error and "timeLogged" in batch.rejected[1].error


@pytest.mark.parametrize(
    ("status", "category", "expected"),
    [
        ("5.1.1 (bad destination mailbox address)", "", BounceClass.HARD),
        ("5.1.2 (bad destination system: no such domain)", "", BounceClass.HARD),
        ("5.2.1", "", BounceClass.HARD),
        ("5.2.2 (mailbox full)", "", BounceClass.SOFT),
        ("5.7.26 (delivery not authorized)", "", BounceClass.BLOCK),
        ("4.4.7", "", BounceClass.SOFT),
        ("", "", BounceClass.SOFT),
        ("5.7.1", "bad-mailbox", BounceClass.HARD),  # bounceCat wins over the status code
        ("5.1.1", "policy-related", BounceClass.BLOCK),
        ("5.1.1", "quota-issues", BounceClass.SOFT),
        ("5.1.1", "spam-related", BounceClass.BLOCK),
        ("", "bad-domain", BounceClass.HARD),
        ("", "inactive-mailbox", BounceClass.HARD),
        ("", "virus-related", BounceClass.BLOCK),
        ("", "content-related", BounceClass.BLOCK),
        ("", "message-expired", BounceClass.SOFT),
    ],
)
def test_bounce_classes(status, category, expected):
    (event,) = parse_body(csv_body(f'b,1798016412,,a@gmail.com,"{status}",{category},45.123.10.1,,')).events
    assert event.bounce_class == expected
    assert event.counts() == {"sent": 1, "bounced": 1, f"bounced_{expected}": 1}


def test_quoted_fields_with_commas_quotes_and_newlines_repeated_columns_and_header_columns():
    header = "type,rcvSourceIp,timeLogged,rcvSourceIp,rcpt,dsnDiag,dlvSourceIp," + ",".join(
        f"header_X-Extra-{n}" for n in range(40)
    )
    row = 'd,10.0.0.1,1798016412,10.0.0.2,a@gmail.com,"smtp;550 a, ""quoted""\nsecond line",45.123.10.1' + "," * 40
    batch = parse_body(f"{header}\n{row}\n{row.replace('a@', 'b@')}\n".encode(), "text/csv")
    assert [e.recipient_domain for e in batch.events] == ["gmail.com", "gmail.com"]
    assert [e.record for e in batch.events] == [1, 2]
    assert not batch.rejected


def test_column_order_varies_and_short_rows_are_padded():
    header = "dlvSourceIp,rcpt,type,timeQueued,bounceCat\n"
    batch = parse_body(f"{header}45.123.10.2,x@yahoo.fr,b,1798016400,bad-mailbox\n45.123.10.2,y@yahoo.fr,d\n".encode())
    assert batch.events[0].ip == "45.123.10.2" and batch.events[0].bounce_class == BounceClass.HARD
    assert [r.record for r in batch.rejected] == [2]  # no time at all


def test_blank_lines_are_not_records_and_header_only_is_empty():
    batch = parse_body(csv_body("", "d,1798016412,,a@gmail.com,,,45.123.10.1,,", ""))
    assert batch.records == 1 and len(batch.events) == 1
    assert parse_body(HEADER.encode(), "text/csv").records == 0


def test_empty_csv_and_a_header_without_type_are_unparseable():
    with pytest.raises(UnparseableBody, match="empty CSV"):
        parse_body(b"", "text/csv")
    with pytest.raises(UnparseableBody, match="no 'type' column"):
        parse_body(b"a,b\n1,2\n", "text/csv")


def test_an_oversized_field_is_one_rejected_record_and_the_rest_counts():
    big = '"' + "x" * 200_000 + '"'
    batch = parse_body(csv_body(f"d,1798016412,,{big},,,45.123.10.1,,", "d,1798016413,,a@gmail.com,,,45.123.10.1,,"))
    assert len(batch.events) == 1 and batch.events[0].record == 2
    assert batch.rejected[0].record == 1 and "malformed CSV" in batch.rejected[0].error


def test_json_object_array_and_ndjson_give_the_same_event_as_csv():
    record = {
        "type": "b",
        "timeLogged": "1798016420",
        "rcpt": "nobody@yahoo.fr",
        "dsnStatus": "5.1.1 (bad destination mailbox address)",
        "bounceCat": "bad-mailbox",
        "dlvSourceIp": "45.123.10.1",
        "vmta": "mail1-vmta",
        "header_Message-Id": "<a3@x>",
    }
    from_csv = parse_body(csv_body("b,1798016420,,nobody@yahoo.fr,5.1.1 (bad destination mailbox address),"
                                   "bad-mailbox,45.123.10.1,mail1-vmta,<a3@x>")).events[0]  # fmt: skip
    from_object = parse_body(json.dumps(record).encode(), "application/json").events[0]
    from_array = parse_body(json.dumps([record, record]).encode(), "application/json").events
    from_ndjson = parse_body((json.dumps(record) + "\n" + json.dumps(record)).encode(), "application/x-ndjson").events
    assert from_csv.key == from_object.key == from_array[0].key == from_ndjson[1].key
    assert from_object.message_refs == ("mid:a3@x",) and from_object.source_name == "mail1-vmta"


def test_ndjson_labelled_as_json_is_read_as_ndjson():
    line = json.dumps({"type": "d", "timeLogged": "1798016412", "dlvSourceIp": "45.123.10.1"})
    assert len(parse_body(f"{line}\n{line}\n".encode(), "application/json").events) == 2


def test_ndjson_bad_lines_are_rejected_records():
    line = json.dumps({"type": "d", "timeLogged": "1798016412", "dlvSourceIp": "45.123.10.1"})
    batch = parse_body(f"{line}\nnot json\n[1]\n".encode(), "application/x-ndjson")
    assert len(batch.events) == 1
    assert [r.record for r in batch.rejected] == [2, 3]
    assert batch.rejected[0].error.startswith("not valid JSON: ")
    assert (batch.rejected[1].error, batch.rejected[1].raw) == ("record is a JSON array, expected an object", [1])


@pytest.mark.parametrize("body", [b"not json", b"{", b""])
def test_ndjson_without_a_readable_line_is_unparseable(body):
    with pytest.raises(UnparseableBody):
        parse_body(body, "application/x-ndjson")


@pytest.mark.parametrize("body", [b'"text"', b"42", b"null", b"true"])
def test_json_of_the_wrong_type_is_unparseable(body):
    with pytest.raises(UnparseableBody, match="expected an object or an array"):
        parse_body(body, "application/json")


def test_json_values_of_the_wrong_type_name_the_field():
    batch = parse_body(json.dumps([{"type": "d", "timeLogged": {"a": 1}}, ["x"]]).encode(), "application/json")
    assert [r.error for r in batch.rejected] == [
        "timeLogged: expected text, got a JSON object",
        "record is a JSON array, expected an object",
    ]


def test_numbers_are_accepted_as_times_and_field_names_ignore_case():
    event = normalise_record({"Type": "d", "TimeLogged": 1798016412, "DlvSourceIp": "45.123.10.1"})
    assert (event.occurred_at, event.ip) == (1798016412, "45.123.10.1")


def test_complaints_take_rep_source_ip():
    event = normalise_record({"type": "f", "timeLogged": "1798020000", "repSourceIp": "45.123.10.3"})
    assert (event.ip, event.ip_field, event.type) == ("45.123.10.3", "repSourceIp", EventType.COMPLAINED)


def test_streaming_batches_of_a_thousand_records_number_records_across_batches():
    rows = (f"d,{1798016412 + n},,a{n}@gmail.com,,,45.123.10.1,," for n in range(2500))
    lines = iter([HEADER, *(row + "\n" for row in rows)])
    batches = list(iter_csv_batches(lines, batch_size=1000))
    assert [len(b.events) for b in batches] == [1000, 1000, 500]
    assert batches[2].events[-1].record == 2500


def test_keys_identify_events_not_messages():
    first = parse_body(csv_body("t,1798016430,1798016400,a@gmail.com,4.2.1,,45.123.10.1,,<m1@x>")).events[0]
    retry = parse_body(csv_body("t,1798016930,1798016400,a@gmail.com,4.2.1,,45.123.10.1,,<m1@x>")).events[0]
    delivered = parse_body(csv_body("d,1798017430,1798016400,a@gmail.com,2.0.0,,45.123.10.1,,<m1@x>")).events[0]
    assert len({first.key, retry.key, delivered.key}) == 3
    again = parse_body(csv_body("t,1798016430,1798016400,a@gmail.com,4.2.1,,45.123.10.1,,<m1@x>")).events[0]
    assert again.key == first.key


# --- The two readers of a CSV body --------------------------------------------------------------------

_CELL = st.text(alphabet=st.sampled_from('ab1@. ,"\t\n;<>é'), max_size=8)


def _read_both(text: str):
    """The batch of a body read by Arrow (None when Arrow does not take it) and by csv.reader."""
    layout = read_layout(csv.reader(io.StringIO(text, newline="")))
    arrow = parse_csv(text, text.encode()) if arrow_columns(text.encode(), layout) is not None else None
    (by_csv,) = iter_csv_batches(csv_lines(text), batch_size=sys.maxsize)
    return arrow, by_csv


def _outcome(batch):
    events = [
        (e.type, e.occurred_at, e.key, e.ip, e.source_name, e.message_refs, e.recipient_domain, e.bounce_class,
         e.record, e.smtp_reply, batch.raw_json(e.raw))
        for e in batch.events
    ]  # fmt: skip
    return events, [(r.record, r.error, r.raw) for r in batch.rejected], batch.ignored, batch.records


@settings(max_examples=1000, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["d", "b", "t", "f", "rb", "r", "x", " d", '"d"']),
            st.sampled_from(["1798016412", "2026-12-04 10:11:12+0000", "", "x", "01798016412"]),
            _CELL,
            st.sampled_from(["45.123.10.1", " 45.123.10.1", "", "10.0.0.300"]),
            _CELL,
            _CELL,
        ),
        min_size=1,
        max_size=6,
    ),
    quote=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_arrow_and_csv_reader_read_a_body_alike(rows, quote):
    """Whatever the quoting, a body Arrow takes gives the events, rejections and raw records csv.reader's gives."""

    def cell(value: str, quoted: bool) -> str:
        # Unquoted cells keep their stray quotes: a quote inside a field, or one that opens it.
        if quoted or any(c in value for c in ",\n"):
            return '"' + value.replace('"', '""') + '"'
        return value

    header = "type,timeLogged,rcpt,dlvSourceIp,dsnDiag,header_Message-Id\n"
    text = header + "".join(",".join(cell(v, q) for v, q in zip(row, quote, strict=True)) + "\n" for row in rows)
    arrow, by_csv = _read_both(text)
    if arrow is not None:
        assert _outcome(arrow) == _outcome(by_csv)


@pytest.mark.parametrize(
    "line",
    [
        'd,1798016412,a"b@gmail.com,45.123.10.1,"smtp;421 a, ""b""",<m@x>',  # a stray and doubled quotes
        'd,1798016412,"a"b@gmail.com,45.123.10.1,x"",<m@x>',  # text after a closing quote, a trailing pair
        'd,1798016412, "a@gmail.com",45.123.10.1,"",""',  # a space before a quote, empty quoted fields
        'd,1798016412,a@gmail.com,45.123.10.1,"é ; \t",<m@x>',
    ],
)
def test_arrow_reads_odd_quoting_as_csv_reader_does(line):
    text = "type,timeLogged,rcpt,dlvSourceIp,dsnDiag,header_Message-Id\n" + line + "\n"
    arrow, by_csv = _read_both(text)
    assert arrow is not None  # Arrow takes these bodies
    assert _outcome(arrow) == _outcome(by_csv)


@pytest.mark.parametrize(
    "body",
    [
        b"type,timeLogged,dlvSourceIp\nd,1798016412,45.123.10.1\r\nd,1798016413,45.123.10.1\r\n",  # CR
        b"type,timeLogged,dlvSourceIp\nd,1798016412,45.123.10.1\n\nd,1798016413,45.123.10.1\n",  # a blank line
        b"type,timeLogged,dlvSourceIp\nd,1798016412\nd,1798016413,45.123.10.1,extra\n",  # rows of other widths
        b'type,timeLogged,dsnDiag,dlvSourceIp\nd,1798016412,"two\nlines",45.123.10.1\n',  # a record over two lines
        b"type,timeLogged,dlvSourceIp\nd,1798016412,45.123.10.1\xff\n",  # not UTF-8
        b"type,timeLogged,dlvSourceIp\nd,1798016412,45.123.10.1\x00\n",  # NUL
        b'"type",timeLogged,\n"dlvSourceIp"\nd,1798016412,45.123.10.1\n',  # a header over two lines
    ],
)
def test_bodies_arrow_might_read_otherwise_go_to_csv_reader(body):
    text = body.decode("utf-8", "replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    layout = read_layout(reader)
    assert reader.line_num > 1 or arrow_columns(body, layout) is None
    by_csv = next(iter_csv_batches(csv_lines(text), batch_size=sys.maxsize), None)
    assert _outcome(parse_body(body, "text/csv")) == _outcome(by_csv)


def test_a_long_line_goes_to_csv_reader_and_a_long_body_of_short_lines_to_arrow():
    line = "d,1798016412,a@gmail.com,45.123.10.1\n"
    header = "type,timeLogged,rcpt,dlvSourceIp\n"
    layout = read_layout(csv.reader([header]))
    many = (header + line * 10_000).encode()  # 380 KB, over the csv module's field size limit
    assert len(many) > csv.field_size_limit() and arrow_columns(many, layout) is not None
    assert len(parse_body(many, "text/csv").events) == 10_000
    long_line = (header + line.replace("a@", "a" * (csv.field_size_limit() + 1) + "@")).encode()
    assert arrow_columns(long_line, layout) is None
