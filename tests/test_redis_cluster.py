"""The counter store on a real Redis Cluster: three masters started by the test on local ports.

Ingestion through the webhook (a batch spanning IP-days on several nodes, message references, complaints
attributed through them), de-duplication across retries, and consolidation killed at each of its steps
while increments keep arriving: all exact. Also what the cluster's non-atomic steps could lose: an index entry
a killed web process never wrote, a claim killed half-way, and a run with nothing finished.
"""

import random
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from domains.models import WebhookToken
from tests.support import run_script, start_script, subprocess_env
from warmup.consolidation import consolidate
from warmup.counters import INDEX_KEY, Increment, day_tag, get_store, parse_day_key
from warmup.counters.redis import IN_FLIGHT_KEY, WINDOW_INDEX_KEY
from warmup.models import DailyStat, ProviderSuspension
from warmup.throttling import check_provider_throttling

from .factories import DomainFactory, IPFactory, TenantFactory
from .webhooks_support import Poster

pytestmark = pytest.mark.e2e

POWERMTA = "/api/v1/webhooks/powermta/"


def free_cluster_port(taken: set[int]) -> int:
    """A port a cluster node can use: free, and its cluster bus port (10,000 higher, so at most 55,535)
    free too."""
    for port in random.sample(range(20_000, 45_000), 200):
        if taken & {port, port + 10_000}:
            continue
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update({port, port + 10_000})
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_until(condition, timeout: float, what: str, details=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}: {details()}")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    """A Redis Cluster of three masters, no replicas; stopped and removed afterwards."""
    folder = tmp_path_factory.mktemp("redis-cluster")
    taken: set[int] = set()
    ports = [free_cluster_port(taken) for _ in range(3)]
    servers = [
        subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(folder / f"redis-{port}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for port in ports
    ]
    try:
        for port, server in zip(ports, servers, strict=True):
            log = folder / f"redis-{port}.log"
            wait_until(
                lambda port=port: redis.Redis(host="127.0.0.1", port=port).ping(),
                30,
                f"redis-server on {port}",
                lambda server=server, log=log: (
                    f"exit {server.poll()}; {log.read_text()[-800:] if log.exists() else ''}"
                ),
            )
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{port}" for port in ports], "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        for port in ports:
            wait_until(
                lambda port=port: redis.Redis(host="127.0.0.1", port=port).cluster("info")["cluster_state"] == "ok",
                30,
                f"cluster_state:ok on {port}",
            )
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for server in servers:
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)


@pytest.fixture
def on_cluster(settings, cluster_url):
    """The portal's counter store on the cluster, every node emptied."""
    settings.REDIS_URL, settings.REDIS_CLUSTER, settings.WARMUP_COUNTER_BACKEND = cluster_url, True, "redis"
    client = redis.RedisCluster.from_url(cluster_url)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield client
    client.close()


def csv_body(rows: list[str]) -> str:
    return "type,timeLogged,rcpt,dlvSourceIp,header_Message-Id\n" + "".join(row + "\n" for row in rows)


def test_webhooks_count_exactly_across_the_nodes_and_a_retry_counts_nothing_twice(client, db, on_cluster):
    tenant = TenantFactory(time_zone="UTC")
    ips = [IPFactory(domain=DomainFactory(tenant=tenant), address=f"10.1.0.{n}") for n in range(1, 7)]
    poster = Poster(client, WebhookToken.issue(tenant)[1])
    start = int(datetime(2027, 1, 17, 10, tzinfo=UTC).timestamp())
    rows, expected = [], {}
    for n in range(60):
        ip, day = ips[n % 6], n % 3
        at = start + day * 86400 + n
        rows.append(f"d,{at},u{n}@gmail.com,{ip.address},<m{n}@x>")
        key = (ip.pk, datetime.fromtimestamp(at, UTC).date())
        expected[key] = expected.get(key, 0) + 1

    answer = poster.post(POWERMTA, csv_body(rows), "text/csv").json()
    assert (answer["accepted"], answer["duplicates"], answer["unattributed"]) == (60, 0, 0)
    store = get_store()
    assert store.cluster
    assert {key: store.read(*key)["delivered"] for key in expected} == expected
    # Each IP-day's keys on one slot; the IP-days spread over the nodes.
    nodes = {on_cluster.get_node_from_key(day_tag(*key) + ":c").name for key in expected}
    assert len(nodes) >= 2
    for key in expected:
        tag = day_tag(*key)
        assert len({on_cluster.keyslot(tag + suffix) for suffix in (":c", ":d")}) == 1

    # The sender retries the whole body, then posts one overlapping half of it with new records.
    again = poster.post(POWERMTA, csv_body(rows), "text/csv").json()
    assert (again["accepted"], again["duplicates"]) == (0, 60)
    extra = [f"d,{start + 7200 + n},v{n}@gmail.com,{ips[0].address},<n{n}@x>" for n in range(10)]
    half = poster.post(POWERMTA, csv_body(rows[:30] + extra), "text/csv").json()
    assert (half["accepted"], half["duplicates"]) == (10, 30)

    # Complaints carry only the Message-Id: attributed through the references written with the counts.
    complaints = "type,timeLogged,rcpt,header_Message-Id\n" + "".join(
        f"f,{start + 3 * 86400 + n},u{n}@gmail.com,<m{n}@x>\n" for n in range(12)
    )
    answer = poster.post(POWERMTA, complaints, "text/csv").json()
    assert (answer["accepted"], answer["unattributed"]) == (12, 0)
    complaint_day = datetime.fromtimestamp(start + 3 * 86400, UTC).date()
    assert sum(store.read(ip.pk, complaint_day)["complaints"] for ip in ips) == 12
    first_day = datetime.fromtimestamp(start, UTC).date()
    assert store.read(ips[0].pk, first_day)["delivered"] == expected[(ips[0].pk, first_day)] + 10


def test_the_rate_limit_counts_every_request_on_a_cluster_and_refuses_past_it(client, db, on_cluster, settings):
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 3
    tenant = TenantFactory(time_zone="UTC")
    ip = IPFactory(domain=DomainFactory(tenant=tenant), address="10.1.1.1")
    poster = Poster(client, WebhookToken.issue(tenant)[1])
    at = int(time.time())
    counted = csv_body([f"d,{at},u1@gmail.com,{ip.address},<w1@x>"])
    ignored = csv_body([f"r,{at},u2@gmail.com,{ip.address},<w2@x>"])  # nothing to count: a hit all the same

    statuses = [poster.post(POWERMTA, body, "text/csv").status_code for body in (counted, ignored, ignored, counted)]

    assert statuses == [200, 200, 200, 429]
    assert get_store().read(ip.pk, datetime.fromtimestamp(at, UTC).date())["delivered"] == 1  # not the refused one
    windows = list(on_cluster.scan_iter(match=f"wp:rl:{{t{tenant.pk}}}:*", target_nodes=redis.RedisCluster.PRIMARIES))
    assert [int(on_cluster.get(key)) for key in windows] == [4]
    assert 60 < on_cluster.ttl(windows[0]) <= 120


def test_throttling_window_counters_share_the_ip_days_slot_and_suspend_on_a_cluster(client, db, on_cluster):
    tenant = TenantFactory(time_zone="UTC")
    ips = [IPFactory(domain=DomainFactory(tenant=tenant), address=f"10.2.0.{n}") for n in range(1, 7)]
    poster = Poster(client, WebhookToken.issue(tenant)[1])
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [
        f"t,{int(now.timestamp()) - n},u{n}@gmail.com,{ips[n % 6].address},4.7.28,smtp;421-4.7.28 rate limited"
        for n in range(6 * 30)
    ]
    body = "type,timeLogged,rcpt,dlvSourceIp,dsnStatus,dsnDiag\n" + "".join(row + "\n" for row in rows)
    assert poster.post(POWERMTA, body, "text/csv").json()["accepted"] == 180

    windows = [key for key in on_cluster.scan_iter(match="wp:{ip:*}:w*", target_nodes=redis.RedisCluster.PRIMARIES)]
    assert {parse_day_key(key.decode())[0] for key in windows} == {ip.pk for ip in ips}
    for key in windows:  # on their IP-day's slot
        assert on_cluster.keyslot(key) == on_cluster.keyslot(key.decode().partition("}")[0] + "}:c")
    assert on_cluster.zcard(WINDOW_INDEX_KEY) >= 6

    report = check_provider_throttling(now)
    assert sorted(s.ip_id for s in report.suspended) == sorted(ip.pk for ip in ips)
    assert set(ProviderSuspension.objects.values_list("provider", flat=True)) == {"gmail"}


@pytest.mark.django_db(transaction=True)
def test_killed_consolidation_re_run_on_a_cluster_counts_every_increment_exactly_once(on_cluster, tmp_path):
    ips = [IPFactory(domain__tenant=TenantFactory(time_zone="UTC")) for _ in range(4)]
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=2), today - timedelta(days=7)]
    env = subprocess_env(WARMUP_COUNTER_BACKEND="redis", REDIS_CLUSTER="true")
    stops = [tmp_path / f"stop-{ip.pk}" for ip in ips]
    dates = ",".join(map(str, days))
    writers = [
        start_script("apply_increments", str(ip.id), dates, "5", "10", "cluster-", str(stop), env=env)
        for ip, stop in zip(ips, stops, strict=True)
    ]
    steps = ["claimed", "read", "written", "leftovers_forgotten", "committed", "forgotten", "written"]
    try:
        time.sleep(1.0)
        crashes = run_script("consolidate_and_die", *steps, env=env, timeout=180)
    finally:
        for stop in stops:
            stop.touch()
        outputs = [writer.communicate(timeout=60) for writer in writers]
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err[-2000:]
    assert crashes.stdout.split() == [f"{step}={signal.SIGKILL.value}" for step in steps], crashes.stderr[-2000:]

    finished = run_script("consolidate_and_die", "never", env=env)
    assert finished.stdout.split() == ["never=0"], finished.stderr[-2000:]

    for ip, (out, _) in zip(ips, outputs, strict=True):
        made = dict(item.split("=") for item in out.strip().splitlines()[-1].split())
        consolidated = dict(DailyStat.objects.filter(ip=ip).values_list("date", "sent"))
        assert {day: consolidated.get(day, 0) for day in days} == {day: int(made[day.isoformat()]) for day in days}
    assert get_store().in_flight() == []


def test_a_consolidation_with_no_finished_day_succeeds_and_leaves_today(db, on_cluster):
    ip = IPFactory(domain__tenant=TenantFactory(time_zone="UTC"))
    today = datetime.now(UTC).date()
    store = get_store()
    store.apply([Increment(ip.pk, today, {"sent": 3, "delivered": 3}, "gmail")])

    consolidate()  # nothing finished: nothing to claim (an empty claim was refused by the cluster)

    assert not DailyStat.objects.exists()
    assert store.read(ip.pk, today)["sent"] == 3


def test_healthz_names_a_cluster_node_that_may_evict_keys(client, db, on_cluster, settings):
    settings.CELERY_BROKER_URL = "memory://"
    assert client.get("/healthz").json()["counter_store"] == "ok"
    node = on_cluster.get_primaries()[1]
    own = redis.Redis(host=node.host, port=node.port)
    own.config_set("maxmemory", "100mb")
    own.config_set("maxmemory-policy", "volatile-lru")
    try:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["counter_store"].startswith(
            f"error: CounterStoreUnavailable: Redis node {node.name} may evict keys (maxmemory 100.00M, "
            "maxmemory-policy volatile-lru)"
        )
    finally:
        own.config_set("maxmemory", "0")
        own.config_set("maxmemory-policy", "noeviction")
    assert client.get("/healthz").json()["counter_store"] == "ok"


def test_a_retry_puts_back_an_index_entry_a_killed_process_never_wrote(client, db, on_cluster):
    tenant = TenantFactory(time_zone="UTC")
    ip = IPFactory(domain=DomainFactory(tenant=tenant), address="10.2.0.1")
    poster = Poster(client, WebhookToken.issue(tenant)[1])
    yesterday = datetime.now(UTC) - timedelta(days=1)
    body = csv_body([f"d,{int(yesterday.timestamp()) + n},u{n}@gmail.com,{ip.address},<k{n}@x>" for n in range(5)])
    assert poster.post(POWERMTA, body, "text/csv").json()["accepted"] == 5
    # The counts reached their node but the process died before listing the IP-day for consolidation.
    on_cluster.srem(INDEX_KEY, day_tag(ip.pk, yesterday.date()) + ":c")

    again = poster.post(POWERMTA, body, "text/csv").json()  # the sender had no answer: it retries
    assert (again["accepted"], again["duplicates"]) == (0, 5)
    consolidate()

    assert DailyStat.objects.get(ip=ip, date=yesterday.date()).sent == 5


@pytest.mark.django_db(transaction=True)  # batches are forgotten once consolidation's transaction commits
def test_a_claim_killed_between_the_index_and_the_renames_loses_nothing(on_cluster):
    ip = IPFactory(domain__tenant=TenantFactory(time_zone="UTC"))
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    store = get_store()
    store.apply([Increment(ip.pk, yesterday, {"sent": 7, "delivered": 7}, "gmail")])
    # What a run killed inside the cluster's claim leaves: its batch recorded, the index entry dropped, the
    # hash not renamed yet.
    tag = day_tag(ip.pk, yesterday)
    on_cluster.sadd(IN_FLIGHT_KEY, f"{tag}:b:{'0' * 32}")
    on_cluster.srem(INDEX_KEY, tag + ":c")

    consolidate()

    assert DailyStat.objects.get(ip=ip, date=yesterday).sent == 7
    assert store.in_flight() == [] and store.read(ip.pk, yesterday)["sent"] == 0
    consolidate()
    assert DailyStat.objects.get(ip=ip, date=yesterday).sent == 7
