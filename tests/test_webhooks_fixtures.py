"""Acceptance: every sample payload in tests/fixtures gives exactly the counts of its README table."""

from datetime import date

import pytest

from warmup.models import DailyStat
from webhooks.models import DeadLetter

from .webhooks_support import ips, nonzero, poster, read, token, utc_tenant  # noqa: F401

D23, D24 = date(2026, 12, 23), date(2026, 12, 24)

# Posted in an order that respects the attribution note: the NDJSON's `d` record before the open.
ORDER = [
    "powermta_acct.csv",
    "powermta_acct.ndjson",
    "mailwizz_open.json",
    "mailwizz_click.json",
    "kumomta_delivery.json",
    "kumomta_bounce.json",
]

EXPECTED = {
    ("45.123.10.1", D23): {"sent": 3, "delivered": 2, "bounced": 1, "bounced_hard": 1},
    ("45.123.10.2", D23): {"sent": 1, "bounced": 1, "bounced_block": 1, "deferred": 1},
    ("45.123.10.2", D24): {"sent": 1, "delivered": 1},
    ("45.123.10.3", D23): {"sent": 2, "delivered": 1, "bounced": 2, "bounced_hard": 2, "complaints": 1},
    ("45.123.10.3", D24): {"opens": 1, "clicks": 1},
    ("45.123.10.4", D23): {"sent": 2, "delivered": 1, "bounced": 1, "bounced_block": 1, "deferred": 1},
}

EXPECTED_ANSWERS = {
    "powermta_acct.csv": {"accepted": 6, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []},
    "powermta_acct.ndjson": {"accepted": 4, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []},
    "mailwizz_open.json": {"accepted": 1, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []},
    "mailwizz_click.json": {"accepted": 1, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []},
    "kumomta_delivery.json": {"accepted": 1, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []},
    "kumomta_bounce.json": {"accepted": 2, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []},
}


def live_counts(ips):  # noqa: F811
    found = {}
    for address, ip in ips.items():
        for day in (D23, D24):
            counts = nonzero(read(ip, day))
            if counts:
                found[(address, day)] = counts
    return found


def test_every_fixture_gives_the_readme_counts(poster, ips):  # noqa: F811
    for name in ORDER:
        response = poster.post_fixture(name)
        assert response.status_code == 200, (name, response.content)
        assert response.json() == EXPECTED_ANSWERS[name], name
    assert live_counts(ips) == EXPECTED
    assert not DeadLetter.objects.exists()


def test_posting_every_fixture_twice_changes_nothing(poster, ips):  # noqa: F811
    for name in ORDER:
        assert poster.post_fixture(name).status_code == 200
    for name in ORDER:
        response = poster.post_fixture(name)
        assert response.status_code == 200
        answer = response.json()
        assert answer["accepted"] == 0, name
        assert answer["duplicates"] == EXPECTED_ANSWERS[name]["accepted"], name
    assert live_counts(ips) == EXPECTED


def test_providers_of_the_fixtures(poster, ips):  # noqa: F811
    from warmup.counters import get_store

    for name in ORDER:
        poster.post_fixture(name)
    store = get_store()
    fields = store.read_fields(ips["45.123.10.1"].pk, D23)
    assert fields["bounced_hard:yahoo"] == 1
    assert fields["delivered:gmail"] == 1 and fields["delivered:microsoft"] == 1
    assert store.read_fields(ips["45.123.10.2"].pk, D23)["bounced_block:gmail"] == 1
    assert store.read_fields(ips["45.123.10.2"].pk, D24)["delivered:apple"] == 1
    ndjson_ip = store.read_fields(ips["45.123.10.3"].pk, D23)
    assert ndjson_ip["bounced_hard:gmail"] == 1 and ndjson_ip["bounced_hard:microsoft"] == 1
    assert ndjson_ip["complaints:microsoft"] == 1
    assert store.read_fields(ips["45.123.10.4"].pk, D23)["bounced_block:yahoo"] == 1


@pytest.mark.django_db(transaction=False)
def test_consolidated_daily_stats_match_the_readme(poster, ips):  # noqa: F811
    import time_machine

    from warmup.consolidation import consolidate

    for name in ORDER:
        poster.post_fixture(name)
    with time_machine.travel("2026-12-26 12:00:00+00:00", tick=False):
        consolidate()
    rows = {
        (stat.ip.address, stat.date): {name: getattr(stat, name) for name in DailyStat.COUNTERS if getattr(stat, name)}
        for stat in DailyStat.objects.select_related("ip")
    }
    assert rows == EXPECTED
