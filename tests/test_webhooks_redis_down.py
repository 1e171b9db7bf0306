"""With the counter store down: 503, nothing counted, no dead letter; after it is back a retry counts once."""

import socket
import subprocess
import time
from datetime import date

import pytest
import redis
from django.test import override_settings

from warmup import counters
from webhooks.models import DeadLetter

from .webhooks_support import fixture_bytes, ips, nonzero, read, token, utc_tenant  # noqa: F401

PMTA = "/api/v1/webhooks/powermta/"
MW = "/api/v1/webhooks/mailwizz/"
D23 = date(2026, 12, 23)


def free_port(start: int = 6390) -> int:
    for port in range(start, start + 100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port for a test Redis")


class OwnRedis:
    """A redis-server of the test's own, persisting to a temporary directory across restarts."""

    def __init__(self, directory, port: int):
        self.directory, self.port, self.process = directory, port, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the test Redis did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


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
