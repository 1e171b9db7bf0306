"""The admin: every changelist and change page, query counts, tenant isolation, actions, forms, tokens."""

import datetime as dt
import itertools
import re

import pytest
import time_machine
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from domains.models import IP, Domain, WebhookToken
from warmup.counters import Increment, get_store
from warmup.models import AuditEvent, WarmupPlan, WarmupSchedule
from webhooks.models import DeadLetter

from .factories import (
    AlertFactory,
    AuditEventFactory,
    DailyStatFactory,
    DeadLetterFactory,
    UserFactory,
    WarmupPlanFactory,
    make_member,
)

NOW = dt.datetime(2027, 1, 20, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
QUERY_BUDGET = 15


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture(autouse=True)
def clean_counters(redis_client):
    """Each test starts with an empty counter store (its own Redis database)."""
    return redis_client


@pytest.fixture
def member(tenant_a):
    return make_member("alice", tenant_a)


_addresses = itertools.count(1)


def next_address(tenant) -> str:
    """A fresh address, 10.x for Alpha and 20.x for Bravo (so that a page can be searched for them)."""
    n = next(_addresses)
    first = {"alpha": 10, "bravo": 20}.get(tenant.slug, 30)
    return f"{first}.0.{n // 250}.{n % 250 + 1}"


def populate(tenant, count: int, *, prefix: str) -> list[WarmupPlan]:
    """`count` warming IPs of the tenant, each with a plan, yesterday's stats, an audit event, an alert."""
    plans = []
    for i in range(count):
        plan = WarmupPlanFactory(
            ip__domain__tenant=tenant,
            ip__domain__name=f"mail{i}.{prefix}.example.com",
            ip__address=next_address(tenant),
            ip__status=IP.Status.WARMING,
            status=WarmupPlan.Status.WARMING,
            phase=WarmupPlan.Phase.WEEK_2,
            start_date=TODAY - dt.timedelta(days=10),
            last_ticked_date=TODAY,
        )
        DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=1), sent=200, bounced=4, complaints=0)
        AuditEventFactory(plan=plan, date=TODAY - dt.timedelta(days=10), created_at=NOW - dt.timedelta(days=10))
        AlertFactory(ip=plan.ip)
        DeadLetterFactory(tenant=tenant, event_key=f"{prefix}-{i}")
        plans.append(plan)
    return plans


def changelist_urls() -> list[str]:
    return [
        reverse("admin:domains_tenant_changelist"),
        reverse("admin:domains_domain_changelist"),
        reverse("admin:domains_ip_changelist"),
        reverse("admin:warmup_warmupplan_changelist"),
        reverse("admin:warmup_dailystat_changelist"),
        reverse("admin:warmup_auditevent_changelist"),
        reverse("admin:warmup_alert_changelist"),
        reverse("admin:warmup_warmupschedule_changelist"),
        reverse("admin:webhooks_deadletter_changelist"),
        reverse("admin:django_celery_beat_periodictask_changelist"),
    ]


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- Pages load, with bounded and constant query counts -----------------------------------------------


@pytest.mark.django_db
def test_every_changelist_loads_for_a_superuser_with_a_bounded_query_count(
    client, superuser, tenant_a, django_assert_max_num_queries
):
    populate(tenant_a, 3, prefix="a")
    WarmupSchedule.default()
    client.force_login(superuser)
    for url in changelist_urls():
        with django_assert_max_num_queries(QUERY_BUDGET):
            response = client.get(url)
        assert response.status_code == 200, url


def _query_counts(client, urls) -> dict[str, int]:
    counts = {}
    for url in urls:
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url)
        assert response.status_code == 200, url
        counts[url] = len(ctx.captured_queries)
    return counts


@pytest.mark.django_db
@pytest.mark.parametrize("as_member", [False, True], ids=["superuser", "member"])
def test_changelist_query_counts_do_not_grow_with_the_rows(client, superuser, tenant_a, as_member):
    user = make_member("alice", tenant_a) if as_member else superuser
    client.force_login(user)
    urls = [u for u in changelist_urls() if "celery" not in u and "schedule" not in u]
    populate(tenant_a, 3, prefix="a")
    few = _query_counts(client, urls)
    populate(tenant_a, 27, prefix="b")
    many = _query_counts(client, urls)
    assert many == few
    assert max(many.values()) <= QUERY_BUDGET


@pytest.mark.django_db
def test_every_change_page_loads(client, superuser, tenant_a):
    (plan,) = populate(tenant_a, 1, prefix="a")
    ip = plan.ip
    client.force_login(superuser)
    pages = [
        reverse("admin:domains_tenant_change", args=[tenant_a.pk]),
        reverse("admin:domains_domain_change", args=[ip.domain_id]),
        reverse("admin:domains_ip_change", args=[ip.pk]),
        reverse("admin:warmup_warmupplan_change", args=[plan.pk]),
        reverse("admin:warmup_dailystat_change", args=[ip.daily_stats.get().pk]),
        reverse("admin:warmup_auditevent_change", args=[plan.events.get().pk]),
        reverse("admin:warmup_alert_change", args=[ip.alerts.get().pk]),
        reverse("admin:warmup_warmupschedule_change", args=[WarmupSchedule.default().pk]),
        reverse("admin:webhooks_deadletter_change", args=[DeadLetter.objects.get().pk]),
        reverse("admin:warmup_add_domain"),
        reverse("admin:warmup_dashboard"),
        reverse("admin:index"),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url


@pytest.mark.django_db
def test_index_and_domain_list_link_the_add_domain_page_and_the_dashboard(client, member):
    client.force_login(member)
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:warmup_dashboard") in index
    assert reverse("admin:warmup_add_domain") in index
    domains = client.get(reverse("admin:domains_domain_changelist")).content.decode()
    assert reverse("admin:warmup_add_domain") in domains


# --- The IP list's figures ------------------------------------------------------------------------------


def ip_row(html: str, address: str) -> str:
    match = re.search(r"<tr[^>]*>(?:(?!</tr>).)*" + re.escape(address) + r"(?:(?!</tr>).)*</tr>", html, re.S)
    assert match, f"no row for {address}"
    return match.group(0)


def cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]


@pytest.mark.django_db
def test_ip_list_shows_quota_live_sent_remaining_and_last_day_rates(client, superuser, tenant_a):
    (plan,) = populate(tenant_a, 1, prefix="a")
    ip = plan.ip
    DailyStatFactory(ip=ip, date=TODAY - dt.timedelta(days=2), sent=100, bounced=50)  # older: not shown
    get_store().apply([Increment(ip_id=ip.pk, day=TODAY, counts={"sent": 35, "delivered": 35})])
    client.force_login(superuser)
    row = cells(ip_row(client.get(reverse("admin:domains_ip_changelist")).content.decode(), ip.address))
    # address, domain, tenant, status, phase, quota, sent today, remaining, bounce %, complaint %, weight
    assert row[1:] == [
        ip.address,
        ip.domain.name,
        "Alpha",
        "Warming",
        "Week 2",
        "200",
        "35",
        "165",
        "2.00%",
        "0.00%",
        "0",
    ]


@pytest.mark.django_db
def test_ip_list_highlights_rates_over_the_thresholds(client, superuser, tenant_a):
    (plan,) = populate(tenant_a, 1, prefix="a")
    stat = plan.ip.daily_stats.get()
    stat.bounced, stat.delivered, stat.complaints = 20, 180, 1
    stat.save()
    client.force_login(superuser)
    row = ip_row(client.get(reverse("admin:domains_ip_changelist")).content.decode(), plan.ip.address)
    assert '<span class="wp-over" title="above the 5.0% threshold">10.00%</span>' in row
    assert '<span class="wp-over" title="above the 0.1% threshold">0.56%</span>' in row


@pytest.mark.django_db
def test_ip_list_says_unavailable_when_the_counter_store_is_down(client, superuser, tenant_a, counter_store_down):
    (plan,) = populate(tenant_a, 1, prefix="a")
    client.force_login(superuser)
    response = client.get(reverse("admin:domains_ip_changelist"))
    assert response.status_code == 200
    row = cells(ip_row(response.content.decode(), plan.ip.address))
    assert row[7:9] == ["unavailable", "unavailable"]


@pytest.mark.django_db
def test_ip_list_filters_by_tenant_status_and_phase_and_searches(client, superuser, tenant_a, tenant_b):
    a_plans = populate(tenant_a, 2, prefix="a")
    b_plans = populate(tenant_b, 1, prefix="b")
    a_plans[1].phase = WarmupPlan.Phase.WEEK_4
    a_plans[1].save()
    client.force_login(superuser)
    url = reverse("admin:domains_ip_changelist")

    def listed(query: str) -> set[str]:
        response = client.get(url + query)
        assert response.status_code == 200
        return {ip.address for ip in response.context["cl"].result_list}

    a_ips = {p.ip.address for p in a_plans}
    assert listed(f"?tenant={tenant_a.pk}") == a_ips
    assert listed("?phase=week_4") == {a_plans[1].ip.address}
    assert listed("?status=warming") == a_ips | {b_plans[0].ip.address}
    assert listed("?status=active") == set()
    assert listed(f"?q={b_plans[0].ip.domain.name}") == {b_plans[0].ip.address}


# --- Tenant isolation ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_member_never_sees_another_tenants_objects_in_lists(client, member, tenant_a, tenant_b):
    populate(tenant_a, 2, prefix="alpha")
    populate(tenant_b, 2, prefix="bravo")
    client.force_login(member)
    for url in changelist_urls():
        if "celery" in url or "schedule" in url:
            continue
        html = client.get(url).content.decode()
        assert "bravo" not in html.lower(), url
        assert "20.0.0." not in html, url
    # The tenant filter offers only the member's tenants.
    html = client.get(reverse("admin:domains_ip_changelist")).content.decode()
    assert f"?tenant={tenant_a.pk}" in html and f"?tenant={tenant_b.pk}" not in html


@pytest.mark.django_db
def test_a_member_cannot_open_another_tenants_change_pages(client, member, tenant_b):
    (plan,) = populate(tenant_b, 1, prefix="bravo")
    ip = plan.ip
    client.force_login(member)
    pages = [
        reverse("admin:domains_tenant_change", args=[tenant_b.pk]),
        reverse("admin:domains_domain_change", args=[ip.domain_id]),
        reverse("admin:domains_ip_change", args=[ip.pk]),
        reverse("admin:warmup_warmupplan_change", args=[plan.pk]),
        reverse("admin:warmup_dailystat_change", args=[ip.daily_stats.get().pk]),
        reverse("admin:warmup_auditevent_change", args=[plan.events.get().pk]),
        reverse("admin:warmup_alert_change", args=[ip.alerts.get().pk]),
        reverse("admin:webhooks_deadletter_change", args=[DeadLetter.objects.get().pk]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code in (302, 404), url
        if response.status_code == 302:
            assert response["Location"] == reverse("admin:index")
    response = client.post(reverse("admin:domains_tenant_rotate_token", args=[tenant_b.pk]))
    assert response.status_code == 404
    assert not WebhookToken.objects.filter(tenant=tenant_b).exists()


@pytest.mark.django_db
def test_a_member_gets_only_their_tenants_in_choices_and_autocomplete(client, member, tenant_a, tenant_b):
    (a_plan,) = populate(tenant_a, 1, prefix="alpha")
    (b_plan,) = populate(tenant_b, 1, prefix="bravo")
    client.force_login(member)

    response = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "domains", "model_name": "ip", "field_name": "domain", "term": "mail"},
    )
    assert response.status_code == 200
    assert [r["text"] for r in response.json()["results"]] == [a_plan.ip.domain.name]

    add_ip = client.get(reverse("admin:domains_ip_add"))
    tenant_choices = add_ip.context["adminform"].form.fields["tenant"].queryset
    assert list(tenant_choices) == [tenant_a]

    add_domain = client.get(reverse("admin:warmup_add_domain"))
    assert list(add_domain.context["form"].fields["tenant"].queryset) == [tenant_a]

    # Another tenant's domain given by id (the autocomplete widget posts ids) is refused, not saved.
    response = client.post(
        reverse("admin:domains_ip_add"),
        {
            "tenant": tenant_a.pk,
            "domain": b_plan.ip.domain_id,
            "address": "10.9.9.9",
            "hostname": "",
            "mta_source_name": "",
            "status": IP.Status.PENDING,
            "weight": 0,
        },
    )
    assert response.status_code == 200
    assert "domain" in response.context["adminform"].form.errors
    assert not IP.objects.filter(address="10.9.9.9").exists()


@pytest.mark.django_db
def test_a_member_actions_never_touch_another_tenants_plans(client, member, tenant_b):
    (b_plan,) = populate(tenant_b, 1, prefix="bravo")
    client.force_login(member)
    client.post(
        reverse("admin:warmup_warmupplan_changelist"),
        {"action": "cancel_plans", "_selected_action": [b_plan.pk], "index": 0},
    )
    b_plan.refresh_from_db()
    assert b_plan.status == WarmupPlan.Status.WARMING


# --- Add domain with IP ----------------------------------------------------------------------------------


def add_domain(client, **fields):
    data = {
        "domain": "mail9.alpha.example.com",
        "ip": "10.9.9.9",
        "hostname": "",
        "mta_source_name": "",
        "start": "",
        **fields,
    }
    return client.post(reverse("admin:warmup_add_domain"), {k: v for k, v in data.items() if v is not None})


@pytest.mark.django_db
def test_add_domain_creates_domain_ip_and_plan_together(client, member, tenant_a):
    client.force_login(member)
    response = add_domain(
        client, tenant=tenant_a.pk, start=TODAY.isoformat(), hostname="mta9.alpha.example.com", mta_source_name="vmta-9"
    )
    ip = IP.objects.get(address="10.9.9.9")
    assert ip.tenant == tenant_a and ip.domain.name == "mail9.alpha.example.com"
    assert (ip.hostname, ip.mta_source_name) == ("mta9.alpha.example.com", "vmta-9")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:warmup_warmupplan_change", args=[ip.plan.pk])
    assert ip.plan.status == WarmupPlan.Status.WARMING  # starts today
    assert ip.plan.events.get().actor == member
    assert "Added mail9.alpha.example.com with 10.9.9.9" in messages_of(response)[0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"ip": "10.9.9.300"}, "ip", "not a valid IPv4 or IPv6 address"),
        ({"domain": "mail0.alpha.example.com"}, "domain", "already exists"),
        ({"ip": "existing"}, "ip", "already exists"),
        ({"tenant": 999999}, "tenant", "Select a valid choice"),
        ({"tenant": "other"}, "tenant", "Select a valid choice"),
        ({"start": "2027-13-01"}, "start", "Enter a valid date"),
    ],
    ids=["bad-ip", "duplicate-domain", "duplicate-ip", "unknown-tenant", "another-tenant", "bad-date"],
)
def test_add_domain_refuses_bad_input_on_the_field_and_creates_nothing(
    client, member, tenant_a, tenant_b, fields, field, message
):
    (plan,) = populate(tenant_a, 1, prefix="alpha")
    client.force_login(member)
    before = (Domain.objects.count(), IP.objects.count(), WarmupPlan.objects.count())
    if fields.get("tenant") == "other":
        fields = {**fields, "tenant": tenant_b.pk}
    if fields.get("ip") == "existing":
        fields = {**fields, "ip": plan.ip.address}
    response = add_domain(client, **{"tenant": tenant_a.pk, **fields})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field]), errors
    assert (Domain.objects.count(), IP.objects.count(), WarmupPlan.objects.count()) == before
    assert "errorlist" in response.content.decode()


@pytest.mark.django_db
def test_add_domain_refuses_a_start_date_that_breaks_the_rotation_rule_unless_forced(client, member, tenant_a):
    populate(tenant_a, 1, prefix="alpha")  # started 10 days ago
    WarmupPlanFactory(ip__domain__tenant=tenant_a, start_date=TODAY + dt.timedelta(days=2))
    client.force_login(member)
    start = (TODAY + dt.timedelta(days=3)).isoformat()
    response = add_domain(client, tenant=tenant_a.pk, start=start)
    assert response.status_code == 200
    assert "rotation rule" in " ".join(response.context["form"].errors["start"])
    assert not IP.objects.filter(address="10.9.9.9").exists()
    response = add_domain(client, tenant=tenant_a.pk, start=start, force="on")
    assert response.status_code == 302
    assert IP.objects.get(address="10.9.9.9").plan.start_date.isoformat() == start


@pytest.mark.django_db
def test_add_domain_needs_the_add_permissions(client, tenant_a):
    user = UserFactory(username="viewer", is_staff=True)
    tenant_a.members.add(user)
    client.force_login(user)
    assert client.get(reverse("admin:warmup_add_domain")).status_code == 403


# --- Actions ---------------------------------------------------------------------------------------------


def run_action(client, url: str, action: str, ids, **extra):
    return client.post(url, {"action": action, "_selected_action": list(ids), "index": 0, **extra}, follow=True)


@pytest.mark.django_db
def test_pause_action_needs_a_reason_then_pauses_and_reports_the_count(client, member, tenant_a):
    plans = populate(tenant_a, 2, prefix="alpha")
    client.force_login(member)
    url = reverse("admin:warmup_warmupplan_changelist")
    response = run_action(client, url, "pause_plans", [p.pk for p in plans])
    assert any("Type a reason" in m for m in messages_of(response))
    assert WarmupPlan.objects.filter(status=WarmupPlan.Status.PAUSED).count() == 0

    response = run_action(client, url, "pause_plans", [p.pk for p in plans], reason="seed list check")
    assert "2 plans paused." in messages_of(response)
    for plan in plans:
        plan.refresh_from_db()
        assert plan.status == WarmupPlan.Status.PAUSED and plan.needs_attention
        event = plan.events.get(kind=AuditEvent.Kind.MANUAL_PAUSE)
        assert event.actor == member and event.reason == "seed list check"


@pytest.mark.django_db
def test_actions_report_refusals_with_the_reason(client, member, tenant_a):
    plans = populate(tenant_a, 2, prefix="alpha")
    plans[0].status = WarmupPlan.Status.PAUSED
    plans[0].save()
    client.force_login(member)
    response = run_action(client, reverse("admin:warmup_warmupplan_changelist"), "resume_plans", [p.pk for p in plans])
    got = messages_of(response)
    assert "1 plan resumed." in got
    assert any(m.startswith("1 plan was not resumed: " + plans[1].ip.address) for m in got), got


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("advance_plans", ("week_3", "warming")),
        ("rollback_plans", ("week_1", "warming")),
        ("complete_plans", ("completed", "completed")),
        ("cancel_plans", ("week_2", "cancelled")),
    ],
)
def test_plan_actions_change_state(client, member, tenant_a, action, expected):
    (plan,) = populate(tenant_a, 1, prefix="alpha")
    client.force_login(member)
    response = run_action(client, reverse("admin:warmup_warmupplan_changelist"), action, [plan.pk])
    assert any(m.startswith("1 plan ") for m in messages_of(response))
    plan.refresh_from_db()
    assert (plan.phase, plan.status) == expected


@pytest.mark.django_db
def test_ip_actions_act_on_the_ips_plans(client, member, tenant_a):
    plans = populate(tenant_a, 3, prefix="alpha")
    client.force_login(member)
    response = run_action(client, reverse("admin:domains_ip_changelist"), "advance_plans", [p.ip.pk for p in plans[:2]])
    assert "2 plans advanced." in messages_of(response)
    assert [WarmupPlan.objects.get(pk=p.pk).phase for p in plans] == ["week_3", "week_3", "week_2"]


@pytest.mark.django_db
def test_reprocess_action_counts_dead_letters_whose_ip_is_now_known(client, member, tenant_a):
    (plan,) = populate(tenant_a, 1, prefix="alpha")
    letter = DeadLetterFactory(
        tenant=tenant_a,
        raw={
            "type": "delivered",
            "ip": plan.ip.address,
            "occurred_at": "2027-01-20T09:00:00Z",
            "recipient": "anna@gmail.com",
            "event_id": "late-1",
        },
        event_key="late-1",
    )
    unknown = DeadLetterFactory(
        tenant=tenant_a,
        raw={
            "type": "delivered",
            "ip": "192.0.2.77",
            "occurred_at": "2027-01-20T09:00:00Z",
            "recipient": "bob@gmail.com",
            "event_id": "late-2",
        },
        event_key="late-2",
    )
    client.force_login(member)
    response = run_action(client, reverse("admin:webhooks_deadletter_changelist"), "reprocess", [letter.pk, unknown.pk])
    assert "1 dead letter counted; 1 still pending." in messages_of(response)
    letter.refresh_from_db()
    unknown.refresh_from_db()
    assert letter.processed_at is not None and unknown.processed_at is None
    assert get_store().read(plan.ip.pk, TODAY)["sent"] == 1


# --- Tenants and tokens ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_token_rotation_action_shows_the_new_token_once_and_revokes_the_old(client, superuser, tenant_a):
    old, _ = WebhookToken.issue(tenant_a)
    client.force_login(superuser)
    url = reverse("admin:domains_tenant_changelist")
    response = run_action(client, url, "rotate_webhook_token", [tenant_a.pk])
    shown = [m for m in messages_of(response) if "New webhook token for Alpha" in m]
    assert len(shown) == 1
    token = re.search(r"(wpt_\S+)$", shown[0]).group(1)
    fresh = WebhookToken.objects.get(token_hash=WebhookToken.hash(token))
    assert fresh.tenant == tenant_a and fresh.revoked_at is None
    old.refresh_from_db()
    assert old.revoked_at is not None
    assert token in response.content.decode()
    assert token not in client.get(url).content.decode()  # shown once


@pytest.mark.django_db
def test_token_rotation_button_on_the_change_page(client, member, tenant_a):
    client.force_login(member)
    change_url = reverse("admin:domains_tenant_change", args=[tenant_a.pk])
    rotate_url = reverse("admin:domains_tenant_rotate_token", args=[tenant_a.pk])
    assert rotate_url in client.get(change_url).content.decode()
    assert client.get(rotate_url).status_code == 405
    response = client.post(rotate_url, follow=True)
    assert response.redirect_chain == [(change_url, 302)]
    token = re.search(r"(wpt_[A-Za-z0-9_-]+)", response.content.decode()).group(1)
    assert WebhookToken.objects.active().get(tenant=tenant_a).token_hash == WebhookToken.hash(token)
    # The inline lists the token by its prefix only.
    page = client.get(change_url).content.decode()
    assert token not in page and token[:12] in page


@pytest.mark.django_db
def test_a_member_cannot_grant_membership(client, member, tenant_a):
    client.force_login(member)
    form = client.get(reverse("admin:domains_tenant_change", args=[tenant_a.pk])).context["adminform"].form
    assert "members" not in form.fields
    assert client.get(reverse("admin:domains_tenant_add")).status_code == 403


# --- Schedules -------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("steps", "error"),
    [
        ("50, abc", "'abc' is not a whole number"),
        ("", "This field is required."),
        ("500, 200", "A ramp only goes up"),
        ("0, 10", "positive whole numbers"),
        ("1, 2, 3, 4, 5, 6, 7", "At most 6 steps"),
    ],
)
def test_schedule_steps_are_validated(client, superuser, steps, error):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:warmup_warmupschedule_add"), {"name": "Slow", "steps": steps, "phase_days": 7}
    )
    assert response.status_code == 200
    assert error in " ".join(response.context["adminform"].form.errors["steps"])
    assert not WarmupSchedule.objects.filter(name="Slow").exists()


@pytest.mark.django_db
def test_schedule_steps_are_saved_as_a_list(client, superuser):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:warmup_warmupschedule_add"), {"name": "Slow", "steps": "25, 100, 400", "phase_days": 10}
    )
    assert response.status_code == 302
    schedule = WarmupSchedule.objects.get(name="Slow")
    assert (schedule.steps, schedule.phase_days) == ([25, 100, 400], 10)
    page = client.get(reverse("admin:warmup_warmupschedule_change", args=[schedule.pk])).content.decode()
    assert 'value="25, 100, 400"' in page


# --- Daily stats and the cheap paginator -----------------------------------------------------------------


@pytest.mark.django_db
def test_daily_stats_list_highlights_figures_over_the_thresholds(client, superuser, tenant_a):
    (plan,) = populate(tenant_a, 1, prefix="alpha")
    DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=3), sent=100, bounced=6, complaints=0)
    client.force_login(superuser)
    html = client.get(reverse("admin:warmup_dailystat_changelist")).content.decode()
    assert html.count('class="wp-over"') == 1
    assert ">6.00%</span>" in html


@pytest.mark.django_db
def test_daily_stats_are_viewable_but_never_added_or_edited_by_hand(client, member, tenant_a):
    (plan,) = populate(tenant_a, 1, prefix="alpha")
    stat = plan.ip.daily_stats.get()
    client.force_login(member)  # holds every permission of the warmup app, add and change included

    changelist = client.get(reverse("admin:warmup_dailystat_changelist")).content.decode()
    assert reverse("admin:warmup_dailystat_add") not in changelist
    assert client.get(reverse("admin:warmup_dailystat_add")).status_code == 403

    url = reverse("admin:warmup_dailystat_change", args=[stat.pk])
    page = client.get(url)
    assert page.status_code == 200
    assert 'name="sent"' not in page.content.decode()  # figures shown, not editable
    assert page.context["has_change_permission"] is False
    client.post(url, {"ip": plan.ip.pk, "date": stat.date.isoformat(), "sent": 999999})
    stat.refresh_from_db()
    assert stat.sent == 200


@pytest.mark.django_db
def test_large_table_paginator_estimates_unfiltered_tables_from_pg_class(tenant_a):
    from domains.admin import LargeTablePaginator
    from warmup.models import DailyStat

    populate(tenant_a, 2, prefix="alpha")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE warmup_dailystat")
        # What the planner would hold for a big table, without writing a million rows.
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'warmup_dailystat'")
        assert cursor.fetchone()[0] == 2
    paginator = LargeTablePaginator(DailyStat.objects.all(), 100)
    paginator.ESTIMATE_FROM = 1
    with CaptureQueriesContext(connection) as ctx:
        assert paginator.count == 2
    assert "pg_class" in ctx.captured_queries[0]["sql"] and "COUNT" not in ctx.captured_queries[-1]["sql"].upper()
    filtered = LargeTablePaginator(DailyStat.objects.filter(ip__tenant=tenant_a, sent__gt=1000), 100)
    filtered.ESTIMATE_FROM = 1
    assert filtered.count == 0  # filtered: a real count
