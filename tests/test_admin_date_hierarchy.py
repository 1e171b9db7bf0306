"""The daily stats changelist's date hierarchy: Django's drill-down, built from MIN/MAX instead of DISTINCT scans."""

import datetime as dt

import pytest
import time_machine
from django.contrib.admin.templatetags.admin_list import date_hierarchy
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from warmup.admin import BoundedDateHierarchyChangeList

from .factories import DailyStatFactory, IPFactory, TenantFactory, UserFactory

NOW = dt.datetime(2027, 1, 20, 12, 0, tzinfo=dt.UTC)
FIRST_DAY = dt.date(2026, 11, 25)
LAST_DAY = dt.date(2027, 1, 19)
BRAVO_DAY = dt.date(2025, 6, 10)
URL = reverse("admin:warmup_dailystat_changelist")
LEVELS = [
    "",
    "?date__year=2026",
    "?date__year=2026&date__month=12",
    "?date__year=2026&date__month=12&date__day=24",
    "?date__year=2027",  # one month of rows in the year
    "?date__year=2024",  # no rows at all in the year
]


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def tenants(db):
    """Alpha: one IP with a row every day from 2026-11-25 to 2027-01-19; Bravo: one row in June 2025."""
    alpha = TenantFactory(name="Alpha", slug="alpha")
    bravo = TenantFactory(name="Bravo", slug="bravo")
    ip = IPFactory(domain__tenant=alpha)
    for offset in range((LAST_DAY - FIRST_DAY).days + 1):
        DailyStatFactory(ip=ip, date=FIRST_DAY + dt.timedelta(days=offset), sent=100 + offset)
    DailyStatFactory(ip=IPFactory(domain__tenant=bravo), date=BRAVO_DAY, sent=7)
    return alpha, bravo


def member_of(tenant):
    user = UserFactory(username=f"member-{tenant.slug}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="warmup"))
    tenant.members.add(user)
    return user


def hierarchy_sql(captured) -> list[str]:
    return [q["sql"] for q in captured if "DISTINCT" in q["sql"].upper() or "DATE_TRUNC" in q["sql"].upper()]


@pytest.mark.django_db
@pytest.mark.parametrize("query", LEVELS)
def test_every_level_offers_djangos_drilldown_without_a_distinct_scan(
    client, superuser, tenants, query, django_assert_max_num_queries
):
    client.force_login(superuser)
    with django_assert_max_num_queries(15), CaptureQueriesContext(connection) as captured:
        response = client.get(URL + query)
    assert response.status_code == 200
    assert hierarchy_sql(captured.captured_queries) == []
    cl = response.context["cl"]
    assert isinstance(cl, BoundedDateHierarchyChangeList)
    ours = cl.date_hierarchy_drilldown()
    # The rows are contiguous within each level, so the generated periods are exactly the ones Django lists.
    assert ours == date_hierarchy(cl)
    html = response.content.decode()
    assert '<nav class="toplinks">' in html
    for choice in ours["choices"]:
        assert str(choice["title"]) in html
        if "link" in choice:
            assert choice["link"].replace("&", "&amp;") in html


@pytest.mark.django_db
def test_the_levels_offer_the_expected_periods(client, superuser, tenants):
    client.force_login(superuser)

    def titles(query: str) -> list[str]:
        return [str(c["title"]) for c in client.get(URL + query).context["cl"].date_hierarchy_drilldown()["choices"]]

    assert titles("") == ["2025", "2026", "2027"]
    assert titles("?date__year=2026") == ["November 2026", "December 2026"]
    december = titles("?date__year=2026&date__month=12")
    assert len(december) == 31 and december[0] == "December 1" and december[-1] == "December 31"
    assert titles("?date__year=2026&date__month=11") == [f"November {d}" for d in range(25, 31)]
    assert titles("?date__year=2027") == ["January 2027"]
    html = client.get(URL + "?date__year=2026&date__month=12").content.decode()
    assert "?date__day=24&amp;date__month=12&amp;date__year=2026" in html
    assert "&lsaquo; 2026</a>" in html  # back to the year


@pytest.mark.django_db
def test_a_member_is_offered_only_the_periods_of_their_tenants_rows(client, tenants):
    alpha, bravo = tenants
    client.force_login(member_of(alpha))
    with CaptureQueriesContext(connection) as captured:
        html = client.get(URL).content.decode()
    assert hierarchy_sql(captured.captured_queries) == []
    assert "?date__year=2026" in html and "?date__year=2027" in html
    assert "?date__year=2025" not in html  # Bravo's row

    client.force_login(member_of(bravo))
    response = client.get(URL)
    # A single day of rows: Django's starting level is that month's days.
    assert [str(c["title"]) for c in response.context["cl"].date_hierarchy_drilldown()["choices"]] == ["June 10"]


@pytest.mark.django_db
def test_a_period_inside_the_bounds_without_rows_is_offered_and_shows_an_empty_page(client, superuser, tenants):
    DailyStatFactory(ip=IPFactory(domain__tenant=tenants[1]), date=dt.date(2023, 3, 1))
    client.force_login(superuser)
    choices = client.get(URL).context["cl"].date_hierarchy_drilldown()["choices"]
    # Generated between MIN and MAX: 2024 has no row (Django's DISTINCT would leave it out).
    assert [str(c["title"]) for c in choices] == ["2023", "2024", "2025", "2026", "2027"]
    response = client.get(URL + "?date__year=2024")
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []
    drilldown = response.context["cl"].date_hierarchy_drilldown()
    assert drilldown["choices"] == [] and str(drilldown["back"]["title"]) == "All dates"


# --- Drill-down pages: a filtered list is counted up to ESTIMATE_FROM rows only ----------------------------


@pytest.mark.django_db
def test_a_filtered_page_counts_at_most_estimate_from_rows_then_takes_the_planners_estimate(tenants):
    from domains.admin import LargeTablePaginator
    from warmup.models import DailyStat

    alpha, _ = tenants
    rows = DailyStat.objects.filter(ip__tenant=alpha).order_by("-date", "ip_id")  # 56 rows
    small = LargeTablePaginator(rows, 100)
    small.ESTIMATE_FROM = 100
    with CaptureQueriesContext(connection) as captured:
        assert small.count == 56  # fewer than ESTIMATE_FROM: the bounded count is exact
    assert len(captured.captured_queries) == 1 and "LIMIT 100" in captured.captured_queries[0]["sql"]

    big = LargeTablePaginator(rows, 10)
    big.ESTIMATE_FROM = 20
    with CaptureQueriesContext(connection) as captured:
        count = big.count
    sql = [q["sql"] for q in captured.captured_queries]
    assert "LIMIT 20" in sql[0] and sql[1].startswith("EXPLAIN")  # never a COUNT of every matching row
    assert count >= 20
    assert big.num_pages == -(-count // 10)
