"""The benchmark harness's own parts: the dataset generator, the figure lines, the baseline app.

The benches themselves run with `make bench`; these tests keep their instruments honest.
"""

import csv
import http.client
import io
import json
import os
import socket
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from django.conf import settings

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import datasets  # noqa: E402
import harness  # noqa: E402

DAY = date(2026, 12, 24)


def test_same_seed_gives_the_same_bytes_and_another_seed_other_bytes():
    first = datasets.generate_batch(200, seed=3, batch_index=1, day=DAY)
    again = datasets.generate_batch(200, seed=3, batch_index=1, day=DAY)
    other = datasets.generate_batch(200, seed=4, batch_index=1, day=DAY)
    assert first.body == again.body
    assert first.body != other.body


def test_batches_are_realistic_powermta_accounting_csv():
    batch = datasets.generate_batch(2000, seed=7, day=DAY, ips=datasets.bench_ips(50))
    rows = list(csv.DictReader(io.StringIO(batch.body.decode())))
    header = batch.body.decode().splitlines()[0].split(",")
    # The columns PowerMTA's accounting file carries (as in the shared fixture), then extra headers.
    assert {
        "type",
        "timeLogged",
        "timeQueued",
        "orig",
        "rcpt",
        "dsnAction",
        "dsnStatus",
        "dsnDiag",
        "bounceCat",
        "dlvSourceIp",
        "vmta",
        "header_Message-Id",
        "header_X-Mw-Campaign-Uid",
        "header_X-Mw-Subscriber-Uid",
    } <= set(header)
    assert {"header_Subject", "header_From", "header_List-Unsubscribe"} <= set(header)
    assert len(rows) == 2000
    types = Counter(row["type"] for row in rows)
    assert types == batch.types
    assert types["d"] > 1500 and all(types[t] > 0 for t in ("b", "t", "f", "rb"))
    assert len({row["dlvSourceIp"] or row["repSourceIp"] for row in rows}) == 50
    domains = {row["rcpt"].rsplit("@", 1)[1] for row in rows}
    assert {"gmail.com", "yahoo.fr", "icloud.com"} <= domains and any("outlook" in d or "hotmail" in d for d in domains)
    assert any("," in row["dsnDiag"] for row in rows)  # quoted diagnostics survive the round trip
    assert all(row["repSourceIp"] for row in rows if row["type"] == "f")
    assert len({row["header_Message-Id"] for row in rows}) == 2000


def test_expected_counts_follow_the_counting_rules():
    types = Counter({"d": 10, "b": 3, "t": 4, "f": 2, "rb": 1})
    assert datasets.expected_counts(types) == {
        "sent": 13,
        "delivered": 10,
        "bounced": 4,
        "deferred": 4,
        "complaints": 2,
    }


def test_csv_reader_pass_counts_data_records_not_the_header():
    bodies = [datasets.generate_batch(300, seed=1, batch_index=i, day=DAY).body for i in range(3)]
    rows, seconds = datasets.csv_reader_pass(bodies)
    assert rows == 900
    assert seconds > 0


def test_figures_report_every_promised_figure(capsys):
    figures = harness.Figures({"a_s": ("s", "<= 5 s"), "b_ratio": ("x", ">= 0.5")})

    def body(figs):
        figs.emit("a_s", 1.5, ok=True)
        raise harness.MissingPart("warmup.thing is missing")

    harness.run_script(figures, body)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"bench": "a_s", "value": 1.5, "unit": "s", "target": "<= 5 s", "baseline": None, "ok": True}
    assert lines[1]["bench"] == "b_ratio"
    assert lines[1]["ok"] is False
    assert lines[1]["error"] == "warmup.thing is missing"


def test_bench_environment_never_points_at_the_test_services(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/warmup_portal")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/15")
    env = harness.bench_environment()
    assert env["DATABASE_URL"] == "postgres://postgres@127.0.0.1:5432/warmup_bench"
    assert env["REDIS_URL"] == f"redis://127.0.0.1:6379/{harness.BENCH_REDIS_DB}"
    assert env["DEBUG"] == "false" and env["SECRET_KEY"] and env["SECURE_SSL_REDIRECT"] == "false"


@pytest.mark.e2e
def test_baseline_app_counts_one_event_in_redis(redis_client):
    """The baseline view, served by gunicorn as in the bench, counts what it is sent (HINCRBY)."""
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "baseline_app.settings",
            "PYTHONPATH": str(BENCH),
            "REDIS_URL": settings.REDIS_URL,
            "SECRET_KEY": "test-baseline",
            "ALLOWED_HOSTS": "127.0.0.1",
        }
    )
    with harness.gunicorn("baseline_app.wsgi:application", env=env, log_name="test-baseline") as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):
            conn.request("POST", "/api/v1/webhooks/events/", json.dumps({"type": "delivered", "ip": "198.18.0.1"}))
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["accepted"] == 1
        conn.request("POST", "/api/v1/webhooks/events/", b"not json")
        response = conn.getresponse()
        assert response.status == 400
        response.read()
    assert redis_client.hgetall("bench:baseline:198.18.0.1") == {b"delivered": b"3"}


def test_the_load_benches_see_which_process_holds_each_connection():
    # A run in which one gunicorn worker holds every connection measures one core; the load benches
    # take it again (harness.on_one_worker). Here this process holds both ends of two connections.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    accepted = [server.accept()[0] for _ in clients]
    try:
        assert harness.connections_by_worker(port) == {os.getpid(): 2}
        assert harness.on_one_worker(port)
        for sock in accepted:
            sock.close()
        assert harness.connections_by_worker(port) == {}
        assert not harness.on_one_worker(port)
    finally:
        for sock in [*clients, *accepted, server]:
            sock.close()
