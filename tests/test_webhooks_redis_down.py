"""With the counter store down, too full to write, or a read-only replica: 503, nothing counted, no dead letter;
after it is back a retry counts once."""

from datetime import date

import pytest
import redis
from django.test import override_settings

from warmup import counters
from webhooks.models import DeadLetter

from .support import OwnRedis, free_port
from .webhooks_support import fixture_bytes, ips, nonzero, read, token, utc_tenant  # noqa: F401

PMTA = "/api/v1/webhooks/powermta/"
MW = "/api/v1/webhooks/mailwizz/"
D23 = date(2026, 12, 23)


def reset_clients() -> None:
    counters._store.cache_clear()


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path, free_port())
    server.start()
    with override_settings(REDIS_URL=server.url, WARMUP_COUNTER_BACKEND="redis"):
        reset_clients()
        yield server
        server.stop()
    reset_clients()


def post(client, token, url, body, content_type):  # noqa: F811
    return client.post(url, data=body, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {token}")


def test_503_while_the_store_is_down_then_a_retry_counts_once(client, token, ips, own_redis):  # noqa: F811
    csv_body = fixture_bytes("powermta_acct.csv")
    ndjson = fixture_bytes("powermta_acct.ndjson")
    assert post(client, token, PMTA, csv_body, "text/csv").json()["accepted"] == 6

    own_redis.stop()
    for url, body, content_type in [
        (PMTA, ndjson, "application/x-ndjson"),
        (PMTA, csv_body, "text/csv"),
        (MW, fixture_bytes("mailwizz_open.json"), "application/json"),  # needs a reference read
    ]:
        response = post(client, token, url, body, content_type)
        assert response.status_code == 503
        assert "nothing counted" in response.json()["error"]
    assert not DeadLetter.objects.exists()

    own_redis.start()
    assert nonzero(read(ips["45.123.10.1"], D23)) == {"sent": 3, "delivered": 2, "bounced": 1, "bounced_hard": 1}
    assert nonzero(read(ips["45.123.10.3"], D23)) == {}  # the refused batch left nothing behind
    assert post(client, token, PMTA, ndjson, "application/x-ndjson").json()["accepted"] == 4
    assert post(client, token, PMTA, ndjson, "application/x-ndjson").json()["duplicates"] == 4
    assert nonzero(read(ips["45.123.10.3"], D23)) == {
        "sent": 2, "delivered": 1, "bounced": 2, "bounced_hard": 2, "complaints": 1,
    }  # fmt: skip


def test_503_while_redis_is_full_then_a_retry_counts_once(client, token, ips, own_redis):  # noqa: F811
    own = redis.Redis.from_url(own_redis.url)
    own.config_set("maxmemory-policy", "noeviction")
    own.config_set("maxmemory", "1")  # below what it holds already: every write is refused
    csv_body = fixture_bytes("powermta_acct.csv")

    response = post(client, token, PMTA, csv_body, "text/csv")
    assert response.status_code == 503
    assert "nothing counted" in response.json()["error"]
    assert response["Retry-After"] == "30"
    assert not DeadLetter.objects.exists()

    own.config_set("maxmemory", "0")
    assert nonzero(read(ips["45.123.10.1"], D23)) == {}
    assert post(client, token, PMTA, csv_body, "text/csv").json()["accepted"] == 6
    assert post(client, token, PMTA, csv_body, "text/csv").json()["duplicates"] == 6
    assert nonzero(read(ips["45.123.10.1"], D23)) == {"sent": 3, "delivered": 2, "bounced": 1, "bounced_hard": 1}


def test_503_while_redis_is_a_replica_then_new_connections_count_a_retry_once(client, token, ips, own_redis):  # noqa: F811
    # A failover demotes the primary the web process is connected to.
    own = redis.Redis.from_url(own_redis.url, client_name="probe")
    ndjson = fixture_bytes("powermta_acct.ndjson")
    assert post(client, token, PMTA, fixture_bytes("powermta_acct.csv"), "text/csv").json()["accepted"] == 6
    portal = {c["id"] for c in own.client_list() if c["name"] != "probe"}
    assert portal  # the portal's pooled connection
    own.replicaof("127.0.0.1", free_port(7390))  # a primary that does not answer: it keeps its data

    response = post(client, token, PMTA, ndjson, "application/x-ndjson")
    assert response.status_code == 503
    assert "nothing counted" in response.json()["error"]
    assert not DeadLetter.objects.exists()
    assert portal.isdisjoint(c["id"] for c in own.client_list())  # dropped: the next command connects anew

    own.replicaof("no", "one")
    assert nonzero(read(ips["45.123.10.3"], D23)) == {}
    assert post(client, token, PMTA, ndjson, "application/x-ndjson").json()["accepted"] == 4
    assert post(client, token, PMTA, ndjson, "application/x-ndjson").json()["duplicates"] == 4
