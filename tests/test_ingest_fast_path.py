"""The counting pipeline's own parts: grouped counting with references in the same round trip, the daily
reference hashes, the minute cache of PowerMTA times, and the garbage-collector pause."""

import gc
from datetime import UTC, date, datetime, timedelta

import pytest
import redis
import time_machine
from hypothesis import example, given
from hypothesis import strategies as st
from redis.crc import key_slot
from xxhash import xxh3_128_digest

from tests.factories import IPFactory
from warmup.counters import Increment, RedisCounterStore, References, day_tag
from warmup_portal.collector import gc_paused
from webhooks.events import InvalidRecord, event_key, parse_time, powermta_time
from webhooks.ingest import TenantContext, ingest
from webhooks.parsers.powermta import parse_body

DAY = date(2027, 3, 10)
NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def ip(db):
    return IPFactory()


def test_apply_answers_per_increment_with_keyed_unkeyed_and_uneven_keys_in_one_group(redis_client, ip):
    store = RedisCounterStore(redis_client)
    store.apply([Increment(ip.id, DAY, {"sent": 1}, "gmail", "seen-before")])

    flags = store.apply(
        [
            Increment(ip.id, DAY, {"sent": 1}, "gmail", "a"),
            Increment(ip.id, DAY, {"sent": 1}, "gmail"),  # no key: always counted
            Increment(ip.id, DAY, {"sent": 1}, "gmail", "seen-before"),
            Increment(ip.id, DAY, {"sent": 1}, "gmail", "a"),  # twice in the batch
            Increment(ip.id, DAY, {"sent": 1}, "gmail", "longer-key"),
            Increment(ip.id, DAY, {"sent": 1}, "gmail", ""),  # an empty key is a key like another
            Increment(ip.id, DAY, {"sent": 1}, "gmail", ""),
        ]
    )

    assert flags == [True, True, False, False, True, True, False]
    assert store.read(ip.id, DAY)["sent"] == 1 + 4
    assert redis_client.hgetall(day_tag(ip.id, DAY) + ":c") == {b"sent:gmail": b"5"}


def test_fixed_width_keys_find_their_duplicates_by_position(redis_client, ip):
    store = RedisCounterStore(redis_client)
    keys = [f"{n:032x}" for n in range(6)]
    store.apply(
        [Increment(ip.id, DAY, {"opens": 1}, "yahoo", keys[2]), Increment(ip.id, DAY, {"opens": 1}, "yahoo", keys[5])]
    )

    flags = store.apply([Increment(ip.id, DAY, {"opens": 1}, "yahoo", key) for key in keys])

    assert flags == [True, True, False, True, True, False]
    assert store.read(ip.id, DAY)["opens"] == 6


def test_count_grouped_sums_groups_and_writes_the_references_in_the_same_call(redis_client, ip, settings):
    store = RedisCounterStore(redis_client)
    bounced = (("bounced", 1), ("bounced_hard", 1), ("sent", 1))
    groups = {
        (ip.id, DAY, "gmail", (("delivered", 1), ("sent", 1))): ["k1", "k2", "k1"],
        (ip.id, DAY, "gmail", bounced): ["k3"],
        (ip.id, DAY + timedelta(days=1), "other", (("deferred", 1),)): ["k4"],
    }
    also = References(1, {"mid:a@b": 7, "mw:c/s": 7})

    assert store.count_grouped(groups, also) == 4
    assert store.count_grouped(groups, also) == 0  # a replay counts nothing
    assert store.read_fields(ip.id, DAY) == {
        "sent:gmail": 3, "delivered:gmail": 2, "bounced:gmail": 1, "bounced_hard:gmail": 1,
    }  # fmt: skip
    assert store.read(ip.id, DAY + timedelta(days=1))["deferred"] == 1
    assert store.read_refs(1, ["mid:a@b", "mw:c/s"]) == {"mid:a@b": 7, "mw:c/s": 7}
    days = settings.WEBHOOK_MESSAGE_REF_TTL_DAYS + 1
    assert days * 86400 - 60 < redis_client.ttl(store._refs_bucket(1)) <= days * 86400
    assert {m.decode() for m in redis_client.smembers("wp:index:ipdays")} == {
        day_tag(ip.id, DAY) + ":c",
        day_tag(ip.id, DAY + timedelta(days=1)) + ":c",
    }


def test_every_key_is_remembered_as_16_bytes(redis_client, ip):
    store = RedisCounterStore(redis_client)
    digest = event_key("powermta", "d", "1795900416", "", "u@gmail.com", None, "45.123.10.1")
    shouting = "ABCDEF" + "0" * 26  # hex, but not a digest as `event_key` writes them: hashed
    sent = (("sent", 1),)

    assert store.count_grouped({(ip.id, DAY, "gmail", sent): [digest]}) == 1
    assert store.count_grouped({(ip.id, DAY, "gmail", sent): [digest, shouting, shouting.lower()]}) == 2

    assert redis_client.smembers(day_tag(ip.id, DAY) + ":d") == {
        bytes.fromhex(digest),
        xxh3_128_digest(shouting.encode()),
        bytes.fromhex(shouting),
    }
    assert store.apply([Increment(ip.id, DAY, {"sent": 1}, "gmail", key) for key in (shouting.lower(), digest)]) == [
        False, False
    ]  # fmt: skip
    assert store.read(ip.id, DAY)["sent"] == 3


def test_keys_of_any_text_and_length_in_one_ip_day_find_their_duplicates(redis_client, ip):
    store = RedisCounterStore(redis_client)
    keys = ["événement", "\ud800-lone", "", "a" * 40, f"{7:032x}", "z"]
    assert store.apply([Increment(ip.id, DAY, {"sent": 1}, "other", key) for key in keys[::2]]) == [True] * 3

    flags = store.apply([Increment(ip.id, DAY, {"sent": 1}, "other", key) for key in keys])

    assert flags == [False, True, False, True, False, True]
    assert store.read(ip.id, DAY)["sent"] == 6


def test_single_events_survive_a_dropped_connection_and_a_flushed_script_cache(redis_client, ip):
    # The portal's client (redis-py's retry makes the connection again; its Script loads the script again).
    store = RedisCounterStore()
    one = [Increment(ip.id, DAY, {"sent": 1}, "gmail", f"{n:032x}") for n in range(3)]
    assert store.apply(one[:1]) == [True]

    for conn in store.client.connection_pool._available_connections:  # Redis drops the pool's connections
        host, port = conn._sock.getsockname()[:2]
        assert redis_client.client_kill_filter(addr=f"{host}:{port}") == 1
    assert store.apply(one[1:2]) == [True]
    redis_client.script_flush()
    assert store.apply(one[2:]) == [True]

    assert [store.apply([increment]) for increment in one] == [[False]] * 3
    assert store.apply(one) == [False] * 3
    assert store.read(ip.id, DAY)["sent"] == 3


def test_count_grouped_refuses_an_unknown_counter_and_counts_nothing(redis_client, ip):
    store = RedisCounterStore(redis_client)
    groups = {(ip.id, DAY, "gmail", (("sent", 1),)): ["k1"], (ip.id, DAY, "gmail", (("sends", 1),)): ["k2"]}

    with pytest.raises(ValueError, match="unknown counter 'sends'"):
        store.count_grouped(groups)

    assert store.read(ip.id, DAY)["sent"] == 0


def test_references_are_found_for_the_retention_and_then_forgotten(redis_client, settings):
    settings.WEBHOOK_MESSAGE_REF_TTL_DAYS = 30
    refs = RedisCounterStore(redis_client)
    with time_machine.travel(NOW, tick=False):
        refs.write_refs(5, {"mid:x@y": 11, "mw:c/s": 12})
        assert refs.read_refs(5, ["mid:x@y", "mw:c/s", "mid:other"]) == {"mid:x@y": 11, "mw:c/s": 12}
        assert refs.read_refs(6, ["mid:x@y"]) == {}  # another tenant's
    with time_machine.travel(NOW + timedelta(days=30, hours=11), tick=False):  # the last day it is kept
        assert refs.read_refs(5, ["mid:x@y"]) == {"mid:x@y": 11}
    with time_machine.travel(NOW + timedelta(days=31), tick=False):
        assert refs.read_refs(5, ["mid:x@y"]) == {}
    assert 30 * 86400 < redis_client.ttl(f"wp:refs:{{t5}}:{NOW.date()}") <= 31 * 86400


@time_machine.travel(NOW, tick=False)
def test_the_newest_reference_wins(redis_client):
    refs = RedisCounterStore(redis_client)
    with time_machine.travel(NOW - timedelta(days=2), tick=False):
        refs.write_refs(5, {"mid:x@y": 1})
    refs.write_refs(5, {"mid:x@y": 2})

    assert refs.read_refs(5, ["mid:x@y", "mid:old@y"]) == {"mid:x@y": 2}


@time_machine.travel(NOW, tick=False)
def test_a_csv_body_counts_and_remembers_its_references_in_one_round_trip(redis_client, ip, settings, monkeypatch):
    settings.WARMUP_COUNTER_BACKEND = "redis"
    ip.address, ip.mta_source_name = "45.123.10.1", ""
    ip.save()
    body = (
        b"type,timeLogged,rcpt,dlvSourceIp,header_Message-Id,header_X-Mw-Campaign-Uid,header_X-Mw-Subscriber-Uid\n"
        b"d,1804680000,a@gmail.com,45.123.10.1,<m1@x>,camp,sub1\n"
        b"d,1804680001,b@yahoo.fr,45.123.10.1,<m2@x>,,\n"
        b"b,1804680002,c@gmail.com,45.123.10.1,<m3@x>,,\n"
    )
    ctx = TenantContext(ip.tenant)
    ctx.store.ping()  # the connection is open before the count
    packets = []
    send = redis.connection.AbstractConnection.send_packed_command
    monkeypatch.setattr(
        redis.connection.AbstractConnection,
        "send_packed_command",
        lambda conn, command, check_health=True: packets.append(command) or send(conn, command, check_health),
    )

    result = ingest(ctx, parse_body(body, "text/csv"))

    assert (result.accepted, result.duplicates) == (3, 0)
    assert len(packets) == 1  # one script call writes the references and the counts: one packet, one wait
    sent = b"".join(packets[0])
    assert sent.startswith(b"*") and b"EVALSHA" in sent and b"HSET" not in sent
    assert b"mid:m1@x\x1f" in sent  # the references travel as one argument
    day = ctx.day_of(1804680000)
    assert RedisCounterStore(redis_client).read_fields(ip.id, day) == {
        "sent:gmail": 2, "delivered:gmail": 1, "bounced:gmail": 1, "bounced_soft:gmail": 1,
        "sent:yahoo": 1, "delivered:yahoo": 1,
    }  # fmt: skip
    known = ctx.store.read_refs(ip.tenant_id, ["mid:m1@x", "mw:camp/sub1", "mid:m2@x", "mid:m3@x"])
    assert known == {"mid:m1@x": ip.id, "mw:camp/sub1": ip.id, "mid:m2@x": ip.id, "mid:m3@x": ip.id}
    assert ingest(TenantContext(ip.tenant), parse_body(body, "text/csv")).duplicates == 3


def test_powermta_times_of_a_minute_seen_before_read_only_their_seconds():
    first = powermta_time("2026-11-27 13:59:34+0200", "timeLogged")
    assert first == parse_time("2026-11-27T13:59:34+02:00", "timeLogged")
    assert powermta_time("2026-11-27 13:59:07+0200", "timeLogged") == first - 27
    assert powermta_time("2026-11-27 13:59:07-0200", "timeLogged") == first - 27 + 4 * 3600
    with pytest.raises(InvalidRecord, match="timeLogged"):
        powermta_time("2026-11-27 13:59:6x+0200", "timeLogged")
    with pytest.raises(InvalidRecord, match="timeQueued"):
        powermta_time("2026-11-27 13:59:60+0200", "timeQueued")


def _time_or_error(parse, text: str):
    try:
        return parse(text, "timeLogged")
    except InvalidRecord as exc:
        return str(exc)


# PowerMTA's form with any of its characters changed: digits, separators, zones, spaces at either end.
_ALMOST_POWERMTA = st.builds(
    lambda chars, changes: "".join(changes.get(i, c) for i, c in enumerate(chars)),
    st.sampled_from(
        ["2026-11-27 13:59:34+0200", "2016-05-29 01:10:51-0530", "1999-12-31 23:59:59+0000", "20260101T000000+0200    "]
    ),
    st.dictionaries(st.integers(0, 23), st.sampled_from(list("0123456789 :+-TZ.x,")), max_size=6),
)


@given(_ALMOST_POWERMTA)
@example("2026-11-27 13:59:60+0200")
@example(" 2026-11-27 13:59:34+02 ")
@example("2026-11-27 24:00:00+0200")
@example("2016-05-29 01+10:51.0530")  # ISO reads "+10:51.0530" as the zone: 51 is no second there
def test_powermta_time_reads_any_text_as_parse_time_does(text):
    # Twice: the first may fill the minute cache, the second reads it.
    expected = _time_or_error(parse_time, text)
    assert _time_or_error(powermta_time, text) == expected
    assert _time_or_error(powermta_time, text) == expected


def test_gc_paused_restores_the_collector_as_it_found_it():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested (or another thread's): leaves it to the outer one
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError
    assert gc.isenabled()


@time_machine.travel(NOW, tick=False)
def test_references_of_any_text_go_through_the_counting_script_and_are_found_again(redis_client, ip):
    refs = RedisCounterStore(redis_client)
    odd = {
        "mid:é@x": 1,
        "mid:\ud800@x": 2,
        "mid:tab\there": 3,
        "mid:" + "x" * 300: 4,
        "mid:plain@x": 5,
        "mid:a\x1fb": 6,
    }
    store = RedisCounterStore(redis_client)

    store.count_grouped({(ip.id, DAY, "other", (("sent", 1),)): ["k"]}, References(5, odd))

    assert refs.read_refs(5, list(odd)) == odd


@time_machine.travel(NOW, tick=False)
def test_references_of_several_ips_in_one_call_keep_each_its_own_ip(redis_client, ip):
    # The script receives the references grouped by IP, each IP id once: interleaved IPs, an IP with a
    # single reference and an empty reference (which names nothing) must not shift one onto another; an
    # id past a double's shortest text (10**15) is written as its digits.
    store = RedisCounterStore(redis_client)
    refs = {f"mid:m{n}@x": 100 + n % 3 for n in range(10)} | {"mw:c/s": 7, "": 8, "mid:last@x": 100}
    refs["mid:big@x"] = 10**15 + 1

    store.count_grouped({(ip.id, DAY, "other", (("sent", 1),)): ["k"]}, References(5, refs))

    named = [ref for ref in refs if ref]
    assert store.read_refs(5, named) == {ref: refs[ref] for ref in named}
    assert store.read(ip.id, DAY)["sent"] == 1


def test_a_csv_events_raw_record_is_read_again_from_its_lines():
    body = (
        b"type,timeLogged,dlvSourceIp,dsnDiag\r\n"
        b"\r\n"
        b'd,1804680000,45.123.10.1,"two\r\nlines, and a comma"\r\n'
        b"\n"
        b"t,1804680001,45.123.10.2\r\n"  # a short row
        b"b,1804680002,45.123.10.3,last\r"
    )
    batch = parse_body(body, "text/csv")

    assert [batch.raw_json(event.raw) for event in batch.events] == [
        {"type": "d", "timeLogged": "1804680000", "dlvSourceIp": "45.123.10.1", "dsnDiag": "two\r\nlines, and a comma"},
        {"type": "t", "timeLogged": "1804680001", "dlvSourceIp": "45.123.10.2", "dsnDiag": ""},
        {"type": "b", "timeLogged": "1804680002", "dlvSourceIp": "45.123.10.3", "dsnDiag": "last"},
    ]
    assert [event.record for event in batch.events] == [1, 2, 3]


def test_the_cluster_path_writes_the_same_per_slot(redis_client, ip, monkeypatch):
    # A single node standing in for a cluster: the store then makes one script call per hash slot.
    store = RedisCounterStore(redis_client)
    monkeypatch.setattr(store, "cluster", True)
    monkeypatch.setattr(store.client, "keyslot", lambda key: key_slot(key.encode()), raising=False)
    other_day = DAY + timedelta(days=3)
    increments = [
        Increment(ip.id, DAY, {"sent": 1}, "gmail", "a"),
        Increment(ip.id, other_day, {"sent": 2}, "gmail", "b"),
        Increment(ip.id, DAY, {"sent": 1}, "gmail", "a"),
    ]

    assert store.apply(increments) == [True, True, False]
    groups = {(ip.id, DAY, "gmail", (("sent", 1),)): ["a", "c"]}
    assert store.count_grouped(groups, References(9, {"mid:f": ip.id})) == 1
    assert store.read(ip.id, DAY)["sent"] == 2 and store.read(ip.id, other_day)["sent"] == 2
    assert store.read_refs(9, ["mid:f"]) == {"mid:f": ip.id}
    assert {m.decode() for m in redis_client.smembers("wp:index:ipdays")} == {
        day_tag(ip.id, DAY) + ":c",
        day_tag(ip.id, other_day) + ":c",
    }


def test_event_keys_stay_what_they_were():
    # A key remembered for WEBHOOK_DEDUP_TTL_DAYS must come out the same after an upgrade, or a re-posted
    # event is counted twice: the key of a known record is pinned here (XXH3-128 of the fields joined by
    # the unit separator, None as "").
    assert event_key("powermta", "d", "1795900416", "", "u@gmail.com", None, "45.123.10.1") == (
        "77d1bc0b7a6049f0c6240c39fadbbcee"
    )
    body = b"type,timeLogged,rcpt,dlvSourceIp\nd,1795900416,u@gmail.com,45.123.10.1\n"
    (event,) = parse_body(body, "text/csv").events
    assert event.key == event_key("powermta", "d", "1795900416", "", "u@gmail.com", "", "45.123.10.1", *[""] * 6)
