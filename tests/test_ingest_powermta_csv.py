"""PowerMTA CSV bodies through the one ingestion pipeline (parse, attribute, count), on the real Redis.

Generated bodies mix the usual records with everything off the usual path: other types and cases,
missing, zero-padded, foreign-format and out-of-range times, unknown, padded, absent and malformed IPs,
another tenant's IP, source names, message references only, bounce categories and statuses, short rows,
quoted commas and newlines, blank lines and rows the csv module refuses. Every record gets exactly one
outcome, and a body posted again counts nothing twice.
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
from webhooks.cache import context_for
from webhooks.ingest import TenantContext, ingest
from webhooks.models import DeadLetter
from webhooks.parsers.powermta import parse_csv

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


def ingest_csv(ctx: TenantContext, text: str):
    return ingest(ctx, parse_csv(text))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(records, max_size=25),
    drop=st.sets(st.sampled_from(HEADER[1:]), max_size=3),
    extras=st.lists(st.sampled_from(["\n", "d,1795900416\n", '"unterminated,\n', 'd,"a"b",x\n', "\r\n"]), max_size=3),
)
def test_every_record_gets_one_outcome_and_a_second_post_counts_nothing(tenant, redis_client, rows, drop, extras):
    redis_client.flushdb()
    DeadLetter.objects.all().delete()
    text = body_of(rows, [name for name in HEADER if name not in drop], extras)
    records = sum(1 for row in csv.reader(io.StringIO(text, newline="")) if row) - 1 if text.strip() else 0

    first = ingest_csv(TenantContext(tenant), text).as_json()
    again = ingest_csv(TenantContext(tenant), text).as_json()

    outcomes = first["accepted"] + first["duplicates"] + first["unattributed"] + first["ignored"]
    assert outcomes + len(first["rejected"]) <= records  # a line the csv module joins to the next is one record
    assert again["accepted"] == again["unattributed"] == 0
    assert again["duplicates"] == first["accepted"] + first["duplicates"] + first["unattributed"]
    assert again["rejected"] == first["rejected"] and again["ignored"] == first["ignored"]
    letters = DeadLetter.objects.filter(reason__in=["unknown_ip", "unattributed"]).count()
    assert letters == first["unattributed"]


def test_another_tenants_ip_is_an_unknown_ip_of_this_tenant_and_the_rest_counts(tenant, redis_client):
    rows = [
        {"type": "d", "timeLogged": "1795900416", "rcpt": "u@gmail.com", "dlvSourceIp": "45.123.10.1"},
        {"type": "d", "timeLogged": "1795900417", "rcpt": "u@gmail.com", "dlvSourceIp": "9.9.9.9"},
    ]
    result = ingest_csv(TenantContext(tenant), body_of(rows, HEADER, [])).as_json()

    assert (result["accepted"], result["unattributed"]) == (1, 1)
    (letter,) = DeadLetter.objects.all()
    assert (letter.tenant, letter.reason, letter.error) == (
        tenant,
        "unknown_ip",
        "dlvSourceIp: 9.9.9.9 is not an IP of this tenant",
    )
    assert get_store().read(IP.objects.get(address="9.9.9.9").pk, TenantContext(tenant).day_of(1795900417))["sent"] == 0


def test_the_cached_context_of_a_request_counts_the_same(tenant, redis_client):
    text = body_of(
        [{"type": "d", "timeLogged": "1795900416", "rcpt": "u@gmail.com", "dlvSourceIp": "45.123.10.1"}] * 2,
        HEADER,
        [],
    )

    first = ingest_csv(context_for(tenant), text).as_json()
    again = ingest_csv(context_for(tenant), text).as_json()

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


def test_references_are_written_with_the_counts_even_after_the_scripts_were_flushed(tenant, redis_client):
    ctx = TenantContext(tenant)
    redis_client.script_flush()  # the counting script is loaded again inside the pipeline

    result = ingest_csv(ctx, body_of(delivered_rows(25), HEADER, []))

    assert result.as_json()["accepted"] == 25
    ip1 = IP.objects.get(address="45.123.10.1").pk
    refs = ctx.store.read_refs(tenant.pk, ["mid:m0@x", "mw:c/s24", "mid:m24@x"])
    assert refs == {"mid:m0@x": ip1, "mw:c/s24": ip1, "mid:m24@x": ip1}
    assert get_store().read(ip1, ctx.day_of(1795900416))["delivered"] == 25


def test_a_pooled_connection_closed_by_a_redis_restart_is_replaced_when_references_are_sent(tenant, tmp_path):
    from tests.test_webhooks_redis_down import OwnRedis, free_port
    from warmup.counters import RedisCounterStore

    server = OwnRedis(tmp_path, free_port())
    server.start()
    client = redis.Redis.from_url(server.url)
    ctx = TenantContext(tenant)
    ctx.store = RedisCounterStore(client)
    try:
        rows = delivered_rows(30)
        first = ingest_csv(ctx, body_of(rows[:15], HEADER, []))
        server.stop()  # the pooled connection is now closed at the other end
        server.start()
        again = ingest_csv(ctx, body_of(rows, HEADER, []))

        assert (first.accepted, again.accepted, again.duplicates) == (15, 15, 15)
        ip1 = IP.objects.get(address="45.123.10.1").pk
        assert ctx.store.read_refs(tenant.pk, ["mid:m29@x"]) == {"mid:m29@x": ip1}
    finally:
        server.stop()
