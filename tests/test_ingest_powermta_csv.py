"""The PowerMTA CSV hot path (`webhooks.powermta_csv`) against the general pipeline it stands in for.

Both run on the same generated bodies, each from an empty counter store and no dead letters: the
answers, every Redis key they write (counts, de-duplication sets, message references) and the dead
letters must be the same. The bodies mix the usual records with everything that leaves the usual path:
other types and cases, missing, zero-padded, foreign-format and out-of-range times, unknown, padded,
absent and malformed IPs, source names, message references only, bounce categories and statuses,
short rows, quoted commas and newlines, blank lines and rows the csv module refuses. Bodies Arrow's CSV
reader can read take that reader, the others csv.reader; Arrow's reading is checked against csv.reader's
field by field at the end.
"""

from __future__ import annotations

import csv
import io

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.models import IP
from warmup.counters import get_store
from webhooks import powermta_csv
from webhooks.cache import context_for
from webhooks.ingest import TenantContext, ingest
from webhooks.models import DeadLetter
from webhooks.parsers.powermta import CsvLayout, _new_batch, parse_csv
from webhooks.powermta_csv import _read, _rows, ingest_csv

from .factories import DomainFactory, IPFactory, TenantFactory

ADDRESSES = ["45.123.10.1", "45.123.10.2", "2001:db8::5"]
HEADER = [
    "type", "timeLogged", "timeQueued", "orig", "rcpt", "dsnStatus", "dsnDiag", "bounceCat", "dlvSourceIp",
    "vmta", "jobId", "repSourceIp", "header_Message-Id", "header_X-Mw-Campaign-Uid",
    "header_X-Mw-Subscriber-Uid", "feedbackType",
]  # fmt: skip

types = st.sampled_from(["d", "d", "d", "b", "rb", "rs", "f", "t", "tq", "r", "D", " b", "x", ""])
times = st.one_of(
    st.integers(1_790_000_000, 1_800_000_000).map(str),
    st.sampled_from(["2026-11-28 13:59:34+0000", "2026-11-28 23:59:59-0500", "2026-11-29 00:00:01+0200"]),
    st.sampled_from(["0001795900416", "", "2026-11-28T10:00:00Z", "yesterday", "99999999999", "-5", "١٢٣"]),
)
ips = st.sampled_from(
    ["45.123.10.1", "45.123.10.1", "45.123.10.2", " 45.123.10.2 ", "2001:DB8::5", "2001:db8::5", "9.9.9.9", "", "x"]
)
texts = st.text(alphabet=st.sampled_from('ab@.<> ,"\n-5é'), max_size=12)
records = st.fixed_dictionaries(
    {
        "type": types,
        "timeLogged": times,
        "timeQueued": st.sampled_from(["", "1795900401", "2026-11-28 13:59:27+0000"]),
        "orig": st.sampled_from(["bounces@mail1.sos-mail.com", ""]),
        "rcpt": st.sampled_from(["u@gmail.com", "v@Outlook.COM>", "w@yahoo.fr ", "nobody", "", "a@b@icloud.com"]),
        "dsnStatus": st.sampled_from(["", "5.1.1 (bad mailbox)", "4.7.0 (deferred)", "5.7.1", "junk"]),
        "dsnDiag": texts,
        "bounceCat": st.sampled_from(["", "bad-mailbox", "spam-related", "Policy-Related ", "other"]),
        "dlvSourceIp": ips,
        "vmta": st.sampled_from(["", "mail1-vmta", "MAIL2-VMTA", "unknown-vmta"]),
        "jobId": st.sampled_from(["", "job-1"]),
        "repSourceIp": ips,
        "header_Message-Id": st.sampled_from(["", "<m1@mail1.sos-mail.com>", " <m2@x> ", "<>", "m3@y"]),
        "header_X-Mw-Campaign-Uid": st.sampled_from(["", "cmp1", " cmp2 "]),
        "header_X-Mw-Subscriber-Uid": st.sampled_from(["", "sub1", " "]),
        "feedbackType": st.sampled_from(["", "abuse"]),
    }
)


def body_of(rows: list[dict], header: list[str], extras: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(name, "") for name in header])
    lines = out.getvalue().splitlines(keepends=True)
    # Odd lines among the records: blank, short, and lines the csv module refuses or reads oddly.
    for position, extra in enumerate(extras):
        lines.insert(min(1 + position * 3, len(lines)), extra)
    return "".join(lines)


@pytest.fixture
def tenant(db, redis_client):
    tenant = TenantFactory(name="SOS-Expat", slug="sos-expat", time_zone="Europe/Paris")
    for n, address in enumerate(ADDRESSES, start=1):
        IPFactory(
            tenant=tenant,
            domain=DomainFactory(tenant=tenant, name=f"mail{n}.sos-mail.com"),
            address=address,
            mta_source_name=f"mail{n}-vmta",
        )
    IPFactory(address="9.9.9.9")  # another tenant's
    return tenant


def state(redis_client) -> dict:
    """Everything the pipeline wrote: Redis keys (with their type's contents) and dead letters."""
    keys = {}
    for key in redis_client.keys("wp:*"):
        kind = redis_client.type(key)
        if kind == b"hash":
            keys[key] = redis_client.hgetall(key)
        elif kind == b"set":
            keys[key] = redis_client.smembers(key)
        else:
            keys[key] = kind
    letters = sorted(
        DeadLetter.objects.values_list("source", "reason", "error", "event_key", "ip_address").order_by("event_key")
    )
    raws = sorted(str(raw) for raw in DeadLetter.objects.values_list("raw", flat=True))
    return {"keys": keys, "letters": letters, "raws": raws}


def reset(redis_client) -> None:
    redis_client.flushdb()
    DeadLetter.objects.all().delete()


def both_paths(tenant, redis_client, text: str) -> tuple[dict, dict, dict]:
    """The general pipeline's answer and what it wrote, then the hot path's answer (its writes are left in
    place), each from an empty counter store and no dead letters."""
    reset(redis_client)
    general = ingest(TenantContext(tenant), parse_csv(text), refuse_foreign=False).as_json()
    expected = state(redis_client)
    reset(redis_client)
    hot = ingest_csv(TenantContext(tenant), text, refuse_foreign=False).as_json()
    return general, expected, hot


@pytest.mark.parametrize("stream_refs", [2, powermta_csv.STREAM_REFS])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(records, max_size=25),
    drop=st.sets(st.sampled_from(HEADER[1:]), max_size=3),
    extras=st.lists(st.sampled_from(["\n", "d,1795900416\n", '"unterminated,\n', 'd,"a"b",x\n', "\r\n"]), max_size=3),
    repeat=st.booleans(),
)
def test_the_hot_path_writes_and_answers_what_the_general_pipeline_does(
    tenant, redis_client, monkeypatch, stream_refs, rows, drop, extras, repeat
):
    # With references sent ahead every 2 (most bodies stream several writes) and as in production.
    monkeypatch.setattr(powermta_csv, "STREAM_REFS", stream_refs)
    header = [name for name in HEADER if name not in drop]
    text = body_of(rows + rows[:2] if repeat else rows, header, extras)

    general, expected, hot = both_paths(tenant, redis_client, text)

    assert hot == general
    assert state(redis_client) == expected


def test_usual_records_take_the_hot_path_without_an_event_object(tenant, redis_client):
    rows = [
        {"type": "d", "timeLogged": "1795900416", "rcpt": "u@gmail.com", "dlvSourceIp": "45.123.10.1",
         "header_Message-Id": "<m1@x>", "header_X-Mw-Campaign-Uid": "c", "header_X-Mw-Subscriber-Uid": "s"},
        {"type": "b", "timeLogged": "2026-11-28 13:59:34+0000", "rcpt": "v@yahoo.fr", "dlvSourceIp": "45.123.10.2",
         "bounceCat": "bad-mailbox", "dsnStatus": "5.1.1 (bad mailbox)"},
        {"type": "r", "timeLogged": "1795900416", "dlvSourceIp": "45.123.10.1"},  # ignored: the general path
        {"type": "d", "timeLogged": "1795900417", "dlvSourceIp": "9.9.9.9"},  # not the tenant's: general
    ]  # fmt: skip
    lines = io.StringIO(body_of(rows, HEADER, []), newline="").readlines()
    reader = csv.reader(lines)
    layout = CsvLayout(next(reader))
    batch = _new_batch(layout, lines)

    read = _read(TenantContext(tenant), *_rows(reader, layout, batch), layout, batch, None)
    groups, remember, fast = read.groups, read.remember, read.count

    assert fast == 2
    assert sum(len(keys) for keys in groups.values()) == 2
    ip1 = IP.objects.get(address="45.123.10.1").pk
    assert remember == {"mid:m1@x": ip1, "mw:c/s": ip1}
    assert [event.ip for event in batch.events] == ["9.9.9.9"]
    assert (batch.records, batch.ignored, batch.rejected) == (4, 1, [])


def test_the_cached_context_of_a_request_counts_the_same(tenant, redis_client):
    text = body_of(
        [{"type": "d", "timeLogged": "1795900416", "rcpt": "u@gmail.com", "dlvSourceIp": "45.123.10.1"}] * 2,
        HEADER,
        [],
    )

    first = ingest_csv(context_for(tenant), text, refuse_foreign=True).as_json()
    again = ingest_csv(context_for(tenant), text, refuse_foreign=True).as_json()

    assert (first["accepted"], first["duplicates"]) == (1, 1)
    assert (again["accepted"], again["duplicates"]) == (0, 2)
    ip1 = IP.objects.get(address="45.123.10.1").pk
    day = TenantContext(tenant).day_of(1795900416)
    assert get_store().read(ip1, day)["delivered"] == 1


def delivered_rows(count: int) -> list[dict]:
    return [
        {"type": "d", "timeLogged": str(1795900416 + n), "rcpt": f"u{n}@gmail.com", "dlvSourceIp": "45.123.10.1",
         "header_Message-Id": f"<m{n}@x>", "header_X-Mw-Campaign-Uid": "c", "header_X-Mw-Subscriber-Uid": f"s{n}"}
        for n in range(count)
    ]  # fmt: skip


def test_references_sent_ahead_are_written_and_the_counts_follow(tenant, redis_client, monkeypatch):
    monkeypatch.setattr(powermta_csv, "STREAM_REFS", 10)
    ctx = TenantContext(tenant)
    redis_client.script_flush()  # the counting script is loaded again on the stream's connection

    result = ingest_csv(ctx, body_of(delivered_rows(25), HEADER, []))

    assert result.as_json()["accepted"] == 25
    ip1 = IP.objects.get(address="45.123.10.1").pk
    refs = ctx.refs.read(tenant.pk, ["mid:m0@x", "mw:c/s24", "mid:m24@x"])
    assert refs == {"mid:m0@x": ip1, "mw:c/s24": ip1, "mid:m24@x": ip1}
    assert get_store().read(ip1, ctx.day_of(1795900416))["delivered"] == 25


def test_redis_lost_while_references_are_sent_ahead_counts_nothing(tenant, redis_client, monkeypatch, tmp_path):
    from tests.test_webhooks_redis_down import OwnRedis, free_port
    from warmup.counters import CounterStoreUnavailable, RedisCounterStore
    from webhooks.attribution import RedisMessageRefs

    server = OwnRedis(tmp_path, free_port())
    server.start()
    client = redis.Redis.from_url(server.url)
    ctx = TenantContext(tenant)
    ctx.store, ctx.refs = RedisCounterStore(client), RedisMessageRefs(client)
    writes = []

    def stop_after_the_first_write(tenant_id, refs):  # the server dies between two writes
        writes.append(len(refs))
        if len(writes) == 2:
            server.stop()
        return RedisMessageRefs.hash_write(ctx.refs, tenant_id, refs)

    monkeypatch.setattr(ctx.refs, "hash_write", stop_after_the_first_write)
    monkeypatch.setattr(powermta_csv, "STREAM_REFS", 10)
    try:
        with pytest.raises(CounterStoreUnavailable):
            ingest_csv(ctx, body_of(delivered_rows(25), HEADER, []))
        server.start()  # its data survived (append-only file): nothing was counted
        assert client.keys("wp:{ip:*") == []
    finally:
        server.stop()


def test_a_pooled_connection_closed_by_a_redis_restart_is_replaced_when_references_are_sent(
    tenant, monkeypatch, tmp_path
):
    from tests.test_webhooks_redis_down import OwnRedis, free_port
    from warmup.counters import RedisCounterStore
    from webhooks.attribution import RedisMessageRefs

    server = OwnRedis(tmp_path, free_port())
    server.start()
    client = redis.Redis.from_url(server.url)
    ctx = TenantContext(tenant)
    ctx.store, ctx.refs = RedisCounterStore(client), RedisMessageRefs(client)
    monkeypatch.setattr(powermta_csv, "STREAM_REFS", 10)
    try:
        rows = delivered_rows(30)
        first = ingest_csv(ctx, body_of(rows[:15], HEADER, []))
        server.stop()  # the pooled connection is now closed at the other end
        server.start()
        again = ingest_csv(ctx, body_of(rows, HEADER, []))

        assert (first.accepted, again.accepted, again.duplicates) == (15, 15, 15)
        ip1 = IP.objects.get(address="45.123.10.1").pk
        assert ctx.refs.read(tenant.pk, ["mid:m29@x"]) == {"mid:m29@x": ip1}
    finally:
        server.stop()


# --- Arrow's CSV reader (`_columns`) against csv.reader ---------------------------------------------

# Fields with quotes, commas and spaces where RFC 4180 allows them and where it does not: stray quotes,
# text after a closing quote, a quote in an unquoted field, doubled quotes, an unterminated field.
odd_fields = st.one_of(
    st.text(alphabet=st.sampled_from("ab é\t'"), max_size=4),
    st.lists(st.sampled_from(["a", ",", '""', " ", "\n"]), max_size=4).map(lambda parts: '"' + "".join(parts) + '"'),
    st.lists(st.sampled_from(['"', "a", " ", '""', ",", "\t", "é"]), max_size=6).map("".join),
    st.lists(st.sampled_from(['"', "a", "\r", "\n", "\x00"]), max_size=3).map("".join),
)
# Mostly as many fields as the header (3), which Arrow reads; other widths it leaves to csv.reader.
odd_lines = st.one_of(st.lists(odd_fields, min_size=3, max_size=3), st.lists(odd_fields, min_size=1, max_size=4)).map(
    ",".join
)


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(odd_lines, max_size=6), final_newline=st.booleans())
def test_whenever_arrow_reads_a_body_it_reads_the_fields_csv_reader_reads(lines, final_newline):
    text = "type,timeLogged,rcpt\n" + "\n".join(lines) + ("\n" if final_newline and lines else "")
    reader = csv.reader(io.StringIO(text, newline=""))
    layout = CsvLayout(next(reader))

    columns = powermta_csv._columns(text, None, layout)

    if columns is not None:
        expected = [layout.pick(powermta_csv._padded(row, layout)) for row in reader if row]
        assert list(zip(*columns, strict=True)) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("type,timeLogged,rcpt\nd,1,a\n\nd,2,b\n", "a blank line"),
        ('type,timeLogged,rcpt\nd,1,"a\nb"\n', "a record over two lines"),
        ("type,timeLogged,rcpt\r\nd,1,a\r\n", "carriage returns"),
        ("type,timeLogged,rcpt\nd,1\n", "a short row"),
        ("type,timeLogged,rcpt\nd,1,a,extra\n", "a long row"),
        ("type,timeLogged,rcpt\nd,1,a\x00\n", "a NUL"),
    ],
)
def test_bodies_arrow_might_read_otherwise_go_to_csv_reader(text, why):
    layout = CsvLayout(next(csv.reader([text.splitlines()[0]])))

    assert powermta_csv._columns(text, None, layout) is None, why


def test_invalid_utf8_goes_to_csv_reader_and_counts_the_same(tenant, redis_client):
    data = body_of(delivered_rows(3), HEADER, []).encode().replace(b"u1@gmail.com", b"u1\xff@gmail.com")
    layout = CsvLayout(HEADER)

    assert powermta_csv._columns(data.decode("utf-8", "replace"), data, layout) is None
    assert powermta_csv.ingest_body(TenantContext(tenant), data, "text/csv").accepted == 3


def test_records_off_the_usual_path_of_an_arrow_read_body_keep_their_rows_and_lines(tenant, redis_client):
    rows = [
        *delivered_rows(2),
        {"type": "r", "timeLogged": "1795900416", "dlvSourceIp": "45.123.10.1"},  # ignored
        {"type": "d", "timeLogged": "1795900417", "rcpt": "x@gmail.com", "dlvSourceIp": "8.8.8.8",
         "dsnDiag": 'smtp;250 2.0.0 OK, "queued"'},  # unknown IP: a dead letter with its row
        {"type": "d", "timeLogged": "yesterday", "dlvSourceIp": "45.123.10.1"},  # rejected
        *delivered_rows(3)[2:],
    ]  # fmt: skip
    text = body_of(rows, HEADER, [])
    assert powermta_csv._columns(text, None, CsvLayout(HEADER)) is not None  # this body is Arrow's

    general, expected, hot = both_paths(tenant, redis_client, text)

    assert hot == general
    assert (hot["accepted"], hot["unattributed"], hot["ignored"], len(hot["rejected"])) == (3, 1, 1, 1)
    assert hot["rejected"][0]["record"] == 5
    assert state(redis_client) == expected
    letter = DeadLetter.objects.get(reason=DeadLetter.Reason.UNKNOWN_IP)
    assert letter.raw["dsnDiag"] == 'smtp;250 2.0.0 OK, "queued"'
