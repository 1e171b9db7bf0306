"""Webhook endpoints: attribution, tenant days, providers, dead letters and their re-processing, bad input."""

import json
from datetime import date

import pytest
from django.test import override_settings

from domains.models import WebhookToken
from warmup.models import MessageRef
from webhooks.ingest import reprocess_dead_letters
from webhooks.metrics import WEBHOOK_EVENTS
from webhooks.models import DeadLetter

from .factories import DomainFactory, IPFactory, TenantFactory
from .webhooks_support import (  # noqa: F401
    Poster,
    fixture_bytes,
    ips,
    nonzero,
    poster,
    read,
    token,
    utc_tenant,
)

PMTA = "/api/v1/webhooks/powermta/"
KUMO = "/api/v1/webhooks/kumomta/"
MW = "/api/v1/webhooks/mailwizz/"
EVENTS = "/api/v1/webhooks/events/"
HEADER = "type,timeLogged,rcpt,dsnStatus,bounceCat,dlvSourceIp,vmta,header_Message-Id\n"
D23 = date(2026, 12, 23)


def csv(*rows):
    return HEADER + "".join(row + "\n" for row in rows)


# --- Attribution -------------------------------------------------------------------------------------


def test_a_complaint_is_attributed_through_the_message_id_of_an_earlier_delivery(poster, ips):  # noqa: F811
    assert poster.post(PMTA, csv("d,1798016412,a@gmail.com,2.0.0,,45.123.10.1,,<m1@x>"), "text/csv").status_code == 200
    response = poster.post(
        PMTA, csv("f,1798020000,a@gmail.com,,,,,<m1@x>", "rb,1798023600,a@gmail.com,5.1.1,,,,<m1@x>"), "text/csv"
    )
    assert response.json()["accepted"] == 2, response.content
    assert nonzero(read(ips["45.123.10.1"], D23)) == {
        "sent": 1, "delivered": 1, "complaints": 1, "bounced": 1, "bounced_hard": 1,
    }  # fmt: skip


def test_references_resolve_within_one_batch_whatever_the_order(poster, ips):  # noqa: F811
    body = csv("f,1798020000,a@gmail.com,,,,,<m2@x>", "d,1798016412,a@gmail.com,2.0.0,,45.123.10.2,,<m2@x>")
    assert poster.post(PMTA, body, "text/csv").json()["accepted"] == 2
    assert read(ips["45.123.10.2"], D23)["complaints"] == 1


def test_a_mailwizz_open_is_attributed_through_the_campaign_and_subscriber_pair(poster, ips):  # noqa: F811
    poster.post(PMTA, fixture_bytes("powermta_acct.ndjson"), "application/x-ndjson")
    response = poster.post(MW, fixture_bytes("mailwizz_open.json"))
    assert response.json()["accepted"] == 1
    assert read(ips["45.123.10.3"], date(2026, 12, 24))["opens"] == 1


def test_a_mailwizz_open_before_any_delivery_is_kept_as_a_dead_letter(poster, ips):  # noqa: F811
    response = poster.post(MW, fixture_bytes("mailwizz_open.json"))
    assert response.json()["unattributed"] == 1
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.source) == ("unattributed", "mailwizz")
    assert letter.raw["campaign"]["attributes"]["campaign_uid"] == "ef90ab12cd"
    # The delivery report arrives; re-processing counts the open once.
    poster.post(PMTA, fixture_bytes("powermta_acct.ndjson"), "application/x-ndjson")
    assert reprocess_dead_letters(DeadLetter.objects.all()) == (1, 0)
    assert reprocess_dead_letters(DeadLetter.objects.all()) == (0, 0)
    assert read(ips["45.123.10.3"], date(2026, 12, 24))["opens"] == 1


def test_the_mta_source_name_attributes_records_without_an_ip(poster, utc_tenant):  # noqa: F811
    ip = IPFactory(tenant=utc_tenant, domain=DomainFactory(tenant=utc_tenant), mta_source_name="mail7-vmta")
    response = poster.post(PMTA, csv("d,1798016412,a@gmail.com,2.0.0,,,mail7-vmta,"), "text/csv")
    assert response.json()["accepted"] == 1
    assert read(ip, D23)["delivered"] == 1


def test_kumomta_behind_a_proxy_is_attributed_by_egress_source(poster, utc_tenant):  # noqa: F811
    ip = IPFactory(tenant=utc_tenant, domain=DomainFactory(tenant=utc_tenant), mta_source_name="mail4")
    record = json.loads(fixture_bytes("kumomta_delivery.json"))
    record["source_address"] = {"address": "10.0.0.9:3128", "protocol": "haproxy"}
    assert poster.post_json(KUMO, record).json()["accepted"] == 1
    assert read(ip, D23)["delivered"] == 1


def test_ipv6_addresses_are_matched_in_any_spelling(poster, utc_tenant):  # noqa: F811
    ip = IPFactory(tenant=utc_tenant, domain=DomainFactory(tenant=utc_tenant), address="2001:db8::4")
    record = json.loads(fixture_bytes("kumomta_delivery.json"))
    record["source_address"] = {"address": "[2001:DB8:0::4]:25", "protocol": "tcp"}
    assert poster.post_json(KUMO, record).json()["accepted"] == 1
    assert read(ip, D23)["sent"] == 1


@pytest.mark.parametrize(
    ("recipient", "provider"),
    [("a@gmail.com", "gmail"), ("a@hotmail.fr", "microsoft"), ("a@yahoo.fr", "yahoo"), ("a@icloud.com", "apple"),
     ("a@orange.fr", "other"), ("a@GMAIL.COM", "gmail")],
)  # fmt: skip
def test_each_provider(poster, ips, recipient, provider):  # noqa: F811
    from warmup.counters import get_store

    event = {"type": "delivered", "ip": "45.123.10.1", "occurred_at": 1798016412, "recipient": recipient}
    assert poster.post_json(EVENTS, event).json()["accepted"] == 1
    assert get_store().read_fields(ips["45.123.10.1"].pk, D23) == {f"sent:{provider}": 1, f"delivered:{provider}": 1}


# --- Tenant days -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "moment", "day"),
    [
        ("Europe/Paris", "2026-12-23T22:59:59Z", date(2026, 12, 23)),
        ("Europe/Paris", "2026-12-23T23:00:00Z", date(2026, 12, 24)),  # midnight in Paris
        ("Europe/Paris", "2027-03-27T22:59:59Z", date(2027, 3, 27)),  # last night of CET
        ("Europe/Paris", "2027-03-27T23:00:00Z", date(2027, 3, 28)),
        ("Europe/Paris", "2027-03-28T21:59:59Z", date(2027, 3, 28)),  # first evening of CEST
        ("Europe/Paris", "2027-03-28T22:00:00Z", date(2027, 3, 29)),
        ("America/New_York", "2027-11-07T03:59:59Z", date(2027, 11, 6)),  # EDT, DST ends that night
        ("America/New_York", "2027-11-07T04:00:00Z", date(2027, 11, 7)),
        ("America/New_York", "2027-11-08T04:59:59Z", date(2027, 11, 7)),
        ("America/New_York", "2027-11-08T05:00:00Z", date(2027, 11, 8)),
        ("Asia/Kolkata", "2026-12-23T18:29:59Z", date(2026, 12, 23)),  # +05:30: a half-hour offset
        ("Asia/Kolkata", "2026-12-23T18:30:00Z", date(2026, 12, 24)),
        ("Asia/Kathmandu", "2026-12-23T18:14:59Z", date(2026, 12, 23)),  # +05:45
        ("Asia/Kathmandu", "2026-12-23T18:15:00Z", date(2026, 12, 24)),
    ],
)
def test_events_count_on_the_tenants_date(db, client, redis_client, zone, moment, day):
    tenant = TenantFactory(slug="zoned", time_zone=zone)
    ip = IPFactory(tenant=tenant, domain=DomainFactory(tenant=tenant), address="45.123.10.9")
    sender = Poster(client, WebhookToken.issue(tenant)[1])
    event = {"type": "delivered", "ip": "45.123.10.9", "occurred_at": moment, "recipient": "a@gmail.com"}
    assert sender.post_json(EVENTS, event).json()["accepted"] == 1
    assert read(ip, day)["sent"] == 1


def test_the_day_cache_gives_each_event_its_own_day_within_one_batch(db, client, redis_client):
    tenant = TenantFactory(slug="paris", time_zone="Europe/Paris")
    ip = IPFactory(tenant=tenant, domain=DomainFactory(tenant=tenant), address="45.123.10.9")
    sender = Poster(client, WebhookToken.issue(tenant)[1])
    # 22:59:59Z and 23:00:00Z on 2026-12-23: both sides of midnight in Paris, in one quarter hour of UTC.
    body = csv("d,1798066799,a@gmail.com,,,45.123.10.9,,", "d,1798066800,b@gmail.com,,,45.123.10.9,,")
    assert sender.post(PMTA, body, "text/csv").json()["accepted"] == 2
    assert read(ip, D23)["sent"] == 1 and read(ip, date(2026, 12, 24))["sent"] == 1


# --- Dead letters ------------------------------------------------------------------------------------


def test_an_unknown_ip_is_kept_once_and_counted_after_the_ip_is_added(poster, utc_tenant, ips):  # noqa: F811
    body = csv("d,1798016412,a@gmail.com,2.0.0,,45.123.10.77,,<m7@x>")
    assert poster.post(PMTA, body, "text/csv").json() == {
        "accepted": 0, "duplicates": 0, "unattributed": 1, "ignored": 0, "rejected": [],
    }  # fmt: skip
    assert poster.post(PMTA, body, "text/csv").json()["duplicates"] == 1
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.ip_address, letter.source) == ("unknown_ip", "45.123.10.77", "powermta")
    assert letter.raw["dlvSourceIp"] == "45.123.10.77" and letter.raw["header_Message-Id"] == "<m7@x>"

    assert reprocess_dead_letters(DeadLetter.objects.all()) == (0, 1)  # still unknown
    ip = IPFactory(tenant=utc_tenant, domain=DomainFactory(tenant=utc_tenant), address="45.123.10.77")
    assert reprocess_dead_letters(DeadLetter.objects.all()) == (1, 0)
    assert reprocess_dead_letters(DeadLetter.objects.all()) == (0, 0)
    assert nonzero(read(ip, D23)) == {"sent": 1, "delivered": 1}
    assert DeadLetter.objects.get().processed_at is not None
    # The sender re-posting it later changes nothing either.
    assert poster.post(PMTA, body, "text/csv").json()["duplicates"] == 1
    assert read(ip, D23)["sent"] == 1


def test_an_event_re_posted_after_its_ip_appeared_is_not_counted_again_by_reprocessing(
    poster,  # noqa: F811
    utc_tenant,  # noqa: F811
):
    body = json.dumps({"type": "delivered", "ip": "45.123.10.78", "occurred_at": 1798016412})
    poster.post(EVENTS, body)
    ip = IPFactory(tenant=utc_tenant, domain=DomainFactory(tenant=utc_tenant), address="45.123.10.78")
    assert poster.post(EVENTS, body).json()["accepted"] == 1
    assert reprocess_dead_letters(DeadLetter.objects.all()) == (1, 0)  # resolved: already counted
    assert read(ip, D23)["sent"] == 1


def test_an_event_with_nothing_to_attribute_it_is_unattributed(poster, ips):  # noqa: F811
    response = poster.post(PMTA, csv("f,1798020000,a@gmail.com,,,,,"), "text/csv")
    assert response.json()["unattributed"] == 1
    assert DeadLetter.objects.get().reason == "unattributed"


def test_invalid_records_are_rejected_and_kept_and_the_rest_counts(poster, ips):  # noqa: F811
    body = csv(
        "d,1798016412,a@gmail.com,2.0.0,,45.123.10.1,,",
        "x,1798016412,a@gmail.com,2.0.0,,45.123.10.1,,",  # unknown record type
        "d,1798016413,a@gmail.com,2.0.0,,999.1.1.1,,",  # invalid IP
        "d,later,a@gmail.com,2.0.0,,45.123.10.1,,",  # bad time
        "r,1798016412,a@gmail.com,,,45.123.10.1,,",  # received: not counted
        'd,1798016414,"b@gmail.com,2.0.0,,45.123.10.1,,',  # unbalanced quote: the rest is one field, no IP
    )
    answer = poster.post(PMTA, body, "text/csv").json()
    assert answer["accepted"] == 1 and answer["ignored"] == 1 and answer["unattributed"] == 1
    assert [entry["record"] for entry in answer["rejected"]] == [2, 3, 4]
    assert answer["rejected"][0]["error"] == "type: unknown record type 'x'"
    assert answer["rejected"][1]["error"] == "dlvSourceIp: '999.1.1.1' is not an IP address"
    assert DeadLetter.objects.filter(reason="invalid").count() == 3
    # Posting the same batch again keeps no second copy.
    poster.post(PMTA, body, "text/csv")
    assert DeadLetter.objects.count() == 4
    assert read(ips["45.123.10.1"], D23)["sent"] == 1


def test_nul_bytes_and_lone_surrogates_are_kept_safely(poster, ips):  # noqa: F811
    body = '[{"type": "zz\\u0000", "timestamp": 1}, {"type": "Delivery\\ud800", "timestamp": 1}]'
    answer = poster.post(KUMO, body).json()
    assert len(answer["rejected"]) == 2
    assert DeadLetter.objects.count() == 2


# --- Answers to bad requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body", "content_type", "error"),
    [
        (PMTA, b"", "text/csv", "empty CSV"),
        (PMTA, b"a,b\n1,2\n", "text/csv", "no 'type' column"),
        (PMTA, b"{not json", "application/json", "not valid JSON"),
        (PMTA, b"12", "application/json", "JSON body is a number"),
        (KUMO, b"<xml/>", "application/json", "not valid JSON"),
        (KUMO, b'"Delivery"', "application/json", "JSON body is a string"),
        (MW, b"event=open", "application/x-www-form-urlencoded", "not valid JSON"),
        (MW, b"", "application/json", "empty body"),
        (EVENTS, b"null", "application/json", "JSON body is a null"),
        (EVENTS, b"[" * 100000, "application/json", ""),
    ],
)
def test_an_unreadable_body_is_a_400_naming_the_problem(poster, ips, url, body, content_type, error):  # noqa: F811
    response = poster.post(url, body, content_type)
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert not DeadLetter.objects.exists()


def test_a_body_over_the_limit_is_a_413(poster, ips):  # noqa: F811
    body = b"type,timeLogged\n" + b"d,1798016412\n" * (20 * 1024 * 1024 // 13)
    response = poster.post(PMTA, body, "text/csv")
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    assert nonzero(read(ips["45.123.10.1"], D23)) == {}


@override_settings(WEBHOOK_MAX_BODY_BYTES=200)
def test_the_limit_is_a_setting(poster, ips):  # noqa: F811
    assert poster.post(PMTA, csv("d,1798016412,a@gmail.com,,,45.123.10.1,,"), "text/csv").status_code == 200
    assert poster.post(PMTA, csv(*["d,1798016412,a@gmail.com,,,45.123.10.1,,"] * 4), "text/csv").status_code == 413


def test_only_post_is_allowed(client, token):  # noqa: F811
    response = client.get(PMTA, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 405 and response["Allow"] == "POST"


def test_a_batch_of_a_thousand_records_costs_a_constant_number_of_queries(
    poster,  # noqa: F811
    ips,  # noqa: F811
    django_assert_max_num_queries,
):
    rows = [f"d,{1798016412 + n},r{n}@gmail.com,2.0.0,,45.123.10.{n % 5 + 1},,<q{n}@x>" for n in range(1000)]
    with django_assert_max_num_queries(3):
        answer = poster.post(PMTA, csv(*rows), "text/csv").json()
    assert answer["accepted"] == 1000
    assert sum(read(ip, D23)["sent"] for ip in ips.values()) == 1000


def test_outcomes_are_counted_for_metrics(poster, ips):  # noqa: F811
    def value(outcome):
        return WEBHOOK_EVENTS.labels(source="powermta", outcome=outcome)._value.get()

    before = {o: value(o) for o in ("accepted", "duplicate", "unattributed", "ignored", "rejected")}
    body = csv(
        "d,1798016412,a@gmail.com,,,45.123.10.1,,",
        "d,1798016412,a@gmail.com,,,45.123.10.1,,",
        "d,1798016412,a@gmail.com,,,45.123.10.99,,",
        "r,1798016412,a@gmail.com,,,45.123.10.1,,",
        "q,1798016412,a@gmail.com,,,45.123.10.1,,",
    )
    poster.post(PMTA, body, "text/csv")
    after = {o: value(o) - before[o] for o in before}
    assert after == {"accepted": 1, "duplicate": 1, "unattributed": 1, "ignored": 1, "rejected": 1}


# --- The database counter store (embedded default) -----------------------------------------------


@override_settings(WARMUP_COUNTER_BACKEND="database")
def test_fixtures_and_references_with_the_database_store(poster, ips):  # noqa: F811
    for name in ("powermta_acct.ndjson", "mailwizz_open.json", "mailwizz_click.json"):
        assert poster.post_fixture(name).status_code == 200
    assert MessageRef.objects.filter(ref="mw:ef90ab12cd/sub-0101").exists()
    assert nonzero(read(ips["45.123.10.3"], date(2026, 12, 24))) == {"opens": 1, "clicks": 1}
    assert nonzero(read(ips["45.123.10.3"], D23)) == {
        "sent": 2, "delivered": 1, "bounced": 2, "bounced_hard": 2, "complaints": 1,
    }  # fmt: skip
    assert poster.post_fixture("powermta_acct.ndjson").json()["duplicates"] == 4
