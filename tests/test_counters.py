"""The counter store's contract: both backends pass the same tests against the real Redis and PostgreSQL."""

from datetime import UTC, date, datetime, timedelta

import pytest
import redis
import time_machine
from django.test import override_settings
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from tests.factories import IPFactory
from tests.support import start_script, subprocess_env
from warmup.counters import (
    PROVIDERS,
    CounterStoreUnavailable,
    DatabaseCounterStore,
    Increment,
    RedisCounterStore,
    day_tag,
    dedup_digest,
)
from warmup.models import CounterDedupKey
from webhooks.events import provider_for

DAY = date(2027, 3, 10)
NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["redis", "database"])
def backend(request):
    return request.param


@pytest.fixture
def store(backend, request):
    if backend == "redis":
        return RedisCounterStore(request.getfixturevalue("redis_client"))
    request.getfixturevalue("db")
    return DatabaseCounterStore()


@pytest.fixture
def ip(db):
    return IPFactory()


def test_it_counts_per_provider_and_totals_over_providers(store, ip):
    result = store.apply(
        [
            Increment(ip.id, DAY, {"sent": 1, "delivered": 1}, "gmail"),
            Increment(ip.id, DAY, {"sent": 2, "bounced": 1, "bounced_hard": 1}, "yahoo"),
            Increment(ip.id, DAY + timedelta(days=1), {"sent": 5}),
        ]
    )

    assert result == [True, True, True]
    figures = store.read(ip.id, DAY)
    assert figures["sent"] == 3
    assert figures["delivered"] == 1
    assert figures["bounced"] == figures["bounced_hard"] == 1
    assert figures["opens"] == 0
    assert store.read(ip.id, DAY + timedelta(days=1))["sent"] == 5


def test_it_counts_an_event_once_by_its_dedup_key(store, ip):
    first = store.apply(
        [
            Increment(ip.id, DAY, {"sent": 1}, "gmail", "event-1"),
            Increment(ip.id, DAY, {"sent": 1}, "gmail", "event-1"),  # the same event twice in a batch
            Increment(ip.id, DAY, {"opens": 1}, "gmail", "event-2"),
            Increment(ip.id, DAY, {"sent": 1}),  # no key: always counted
        ]
    )
    again = store.apply(
        [
            Increment(ip.id, DAY, {"sent": 1}, "gmail", "event-1"),
            Increment(ip.id, DAY, {"opens": 1}, "gmail", "event-2"),
            Increment(ip.id, DAY, {"sent": 1}),
        ]
    )

    assert first == [True, False, True, True]
    assert again == [False, False, True]
    assert store.read(ip.id, DAY)["sent"] == 3
    assert store.read(ip.id, DAY)["opens"] == 1


def test_a_single_event_is_counted_once_and_listed_for_consolidation(store, ip):
    # One event with a key: the Redis store's lean script (a JSON webhook's usual body).
    event = Increment(ip.id, DAY, {"sent": 1, "delivered": 1}, "gmail", "single-1")

    assert store.apply([event]) == [True]
    assert store.apply([event]) == [False]
    assert store.apply([Increment(ip.id, DAY, {"complaints": 1}, "gmail", "single-2")]) == [True]

    figures = store.read(ip.id, DAY)
    assert (figures["sent"], figures["delivered"], figures["complaints"]) == (1, 1, 1)
    if isinstance(store, RedisCounterStore):
        assert store.pending_ip_days() == [(ip.id, DAY)]


def test_large_batches_count_each_key_once_within_and_across_calls(store, ip):
    # Over 4,000 keys of one IP-day: the Redis script checks them in slices of 4,000, so a repeat may
    # fall in the same slice as its first occurrence or in a later one.
    keys = [f"{n:032x}" for n in range(9000)]
    repeats = [keys[5], keys[3999], keys[4000], keys[8999]]  # the same slice, the slice's edges, the last
    batch = [Increment(ip.id, DAY, {"sent": 1}, "gmail", key) for key in keys + repeats]
    batch.insert(2, Increment(ip.id, DAY, {"sent": 1}, "yahoo", "short-key"))  # another width, another group
    batch.insert(3, Increment(ip.id, DAY, {"sent": 1}, "yahoo", "short-key"))

    first = store.apply(batch)
    again = store.apply(batch[:10] + [Increment(ip.id, DAY, {"sent": 1}, "gmail", "a-new-key")])

    assert first.count(True) == 9000 + 1
    assert [position for position, counted in enumerate(first) if not counted] == [3, *range(9002, 9006)]
    assert again == [False] * 10 + [True]
    assert store.read(ip.id, DAY)["sent"] == 9002


@time_machine.travel(NOW, tick=False)
@override_settings(WEBHOOK_DEDUP_TTL_DAYS=3)
def test_dedup_keys_are_remembered_for_the_configured_days(backend, request, ip):
    store = RedisCounterStore(request.getfixturevalue("redis_client")) if backend == "redis" else DatabaseCounterStore()

    store.apply([Increment(ip.id, DAY, {"sent": 1}, "other", "event-ttl")])

    if backend == "redis":
        dedup_set = f"{day_tag(ip.id, DAY)}:d"
        assert store.client.sismember(dedup_set, dedup_digest("event-ttl"))
        ttl = store.client.ttl(dedup_set)
        assert 3 * 86400 - 5 <= ttl <= 3 * 86400
    else:
        assert CounterDedupKey.objects.get(key=dedup_digest("event-ttl").hex()).expires_at == NOW + timedelta(days=3)


def test_sent_by_provider_reads_several_ip_days_and_zero_for_absent_ones(store, ip):
    other = IPFactory()
    store.apply(
        [
            Increment(ip.id, DAY, {"sent": 4, "delivered": 4}, "gmail"),
            Increment(ip.id, DAY, {"sent": 3}, "microsoft"),
            Increment(other.id, DAY, {"sent": 2}),
            Increment(ip.id, DAY - timedelta(days=1), {"opens": 9}),
        ]
    )

    sent = store.sent_by_provider(
        [(ip.id, DAY), (other.id, DAY), (ip.id, DAY - timedelta(days=1)), (other.id, DAY + timedelta(1))]
    )

    nothing = dict.fromkeys(PROVIDERS, 0)
    assert sent == {
        (ip.id, DAY): {**nothing, "gmail": 4, "microsoft": 3},
        (other.id, DAY): {**nothing, "other": 2},
        (ip.id, DAY - timedelta(days=1)): nothing,
        (other.id, DAY + timedelta(1)): nothing,
    }


@pytest.mark.parametrize(
    ("increment", "message"),
    [
        (Increment(1, DAY, {"sends": 1}), "unknown counter 'sends'"),
        (Increment(1, DAY, {"sent": -1}), "sent must be a non-negative whole number"),
        (Increment(1, DAY, {"sent": 1}, "hotmail"), "unknown provider 'hotmail'"),
    ],
)
def test_a_bad_increment_is_refused_and_nothing_of_the_batch_is_counted(store, ip, increment, message):
    good = Increment(ip.id, DAY, {"sent": 1})
    bad = Increment(ip.id, increment.day, increment.counts, increment.provider)

    with pytest.raises(ValueError, match=message):
        store.apply([good, bad])

    assert store.read(ip.id, DAY)["sent"] == 0


def test_an_empty_batch_is_a_no_op(store):
    assert store.apply([]) == []
    assert store.sent_by_provider([]) == {}


def test_an_unreachable_redis_raises_counter_store_unavailable():
    closed = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = RedisCounterStore(closed)

    with pytest.raises(CounterStoreUnavailable):
        store.apply([Increment(1, DAY, {"sent": 1})])
    with pytest.raises(CounterStoreUnavailable):
        store.ping()


def test_ping_succeeds_on_a_reachable_store(store):
    store.ping()


def test_redis_keys_of_an_ip_day_share_one_cluster_slot(redis_client, ip):
    store = RedisCounterStore(redis_client)
    store.apply([Increment(ip.id, DAY, {"sent": 1}, "gmail", "abc")])

    keys = sorted(k.decode() for k in redis_client.keys(f"wp:{{ip:{ip.id}:*"))
    assert keys == [f"wp:{{ip:{ip.id}:2027-03-10}}:c", f"wp:{{ip:{ip.id}:2027-03-10}}:d"]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert redis_client.hgetall(keys[0]) == {b"sent:gmail": b"1"}
    assert redis_client.smembers(keys[1]) == {dedup_digest("abc")}


@pytest.mark.django_db(transaction=True)
def test_concurrent_processes_sum_exactly(backend, request):
    if backend == "redis":
        request.getfixturevalue("redis_client")
    ip = IPFactory()
    days = f"{DAY},{DAY + timedelta(days=1)}"
    env = subprocess_env(WARMUP_COUNTER_BACKEND=backend)
    # Three writers at once; the same prefix makes their keyed events collide (each counted once).
    procs = [start_script("apply_increments", str(ip.id), days, "15", "20", "shared-", env=env) for _ in range(3)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]

    reported = {}
    for out, _ in outputs:
        for item in out.strip().splitlines()[-1].split():
            day, count = item.split("=")
            reported[day] = reported.get(day, 0) + int(count)
    store = RedisCounterStore() if backend == "redis" else DatabaseCounterStore()
    stored = {day.isoformat(): store.read(ip.id, day)["sent"] for day in (DAY, DAY + timedelta(days=1))}
    assert stored == reported
    # 15 batches x 20 increments per process: half unkeyed (counted by all three), half keyed (once).
    assert sum(stored.values()) == 3 * 150 + 150


def test_provider_for_maps_recipient_domains():
    assert provider_for("gmail.com") == "gmail"
    assert provider_for("Hotmail.FR.") == "microsoft"
    assert provider_for("yahoo.co.uk") == "yahoo"
    assert provider_for("icloud.com") == "apple"
    assert provider_for("example.org") == "other"
    with override_settings(WARMUP_PROVIDER_DOMAINS={"gmail": ["corp.example"]}):
        assert provider_for("corp.example") == "gmail"
        assert provider_for("gmail.com") == "other"
