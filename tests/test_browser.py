"""The admin in a real browser: log in, add a domain with its IP, and see the dashboard's and a plan's charts.

Runs the portal on pytest-django's live server (static files served by django.contrib.staticfiles) over
the test PostgreSQL and Redis, filled by `seed_demo --history`, and drives Debian's Chromium through
Playwright (tests/browser_support.py). The charts are checked on their pixels, not only in the DOM, and
no page may log a JavaScript error or fail to load a resource (the favicon included). A few layout facts
at the 1400 px viewport are measured too (the IP list fits, the dashboard's cards share a row). Screenshots
of every page are written to tests/artifacts/browser/ for a person to look at.
"""

import datetime as dt
import re
from pathlib import Path

import pytest
import time_machine
from django.core.management import call_command
from django.urls import reverse
from playwright.sync_api import expect

from domains.models import IP
from warmup.models import DailyStat, WarmupPlan

from .browser_support import assert_chart_drawn, canvas_reports, chromium_session
from .factories import UserFactory

# A fixed morning in the demo tenant's zone (Europe/Paris), after the 01:00 tick; the clock keeps ticking
# so that the live server and the browser see time pass normally.
NOW = dt.datetime(2027, 3, 15, 9, 30, tzinfo=dt.UTC)
PASSWORD = "correct horse battery staple"
NEW_DOMAIN, NEW_IP = "mail6.sos-mail.com", "45.123.10.6"
CHART_JS = Path(__file__).resolve().parent.parent / "static" / "vendor" / "chartjs" / "chart.umd.min.js"


@pytest.fixture
def demo(transactional_db, redis_client, settings):
    """The demo tenant with five weeks of history, and a superuser to log in with."""
    with time_machine.travel(NOW, tick=True):
        call_command("seed_demo", "--history", verbosity=0)
        UserFactory(username="root", is_superuser=True, password=PASSWORD)
        yield WarmupPlan.objects.select_related("ip").get(ip__address="45.123.10.1")


@pytest.mark.e2e
def test_admin_in_chromium_adds_a_domain_and_draws_the_charts(demo, live_server):
    plan_path = reverse("admin:warmup_warmupplan_change", args=[demo.pk])
    assert DailyStat.objects.filter(ip=demo.ip).count() == 35  # the history the plan's charts draw

    with chromium_session(live_server.url) as session:
        page = session.page

        # Log in.
        page.goto(session.url(reverse("admin:login")))
        page.fill("#id_username", "root")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        expect(page.locator("#warmup-portal-links")).to_be_visible()
        session.screenshot("01-index")

        # "Add domain with IP", reached from the index as a person would.
        page.locator("#warmup-portal-links").get_by_role("link", name="Add domain with IP").click()
        expect(page.locator("#add-domain-form")).to_be_visible()
        page.select_option("#id_tenant", label="SOS-Expat")
        page.fill("#id_domain", NEW_DOMAIN)
        page.fill("#id_ip", NEW_IP)
        page.fill("#id_hostname", NEW_DOMAIN)
        page.fill("#id_mta_source_name", "mail6-vmta")
        session.screenshot("02-add-domain-filled")
        page.click("#add-domain-form input[type=submit]")
        success = page.locator("ul.messagelist li.success")
        expect(success).to_contain_text(f"Added {NEW_DOMAIN} with {NEW_IP}; its warmup")
        # The rotation rule: the fifth demo IP started a week ago, so the sixth may start today.
        expect(success).to_contain_text("(start date 2027-03-15)")
        new_plan_url = page.url
        # Started today: nothing consolidated yet, which the page says, and today's quota is still drawn.
        expect(page.locator(".wp-no-stats")).to_contain_text("No consolidated day yet")
        new_plan_charts = canvas_reports(session)
        session.screenshot("03-added-plan")

        # The new IP in the IP list, with its domain and tenant.
        page.goto(session.url(reverse("admin:domains_ip_changelist")))
        row = page.locator("#result_list tbody tr", has_text=NEW_IP)
        expect(row).to_have_count(1)
        expect(row).to_contain_text(NEW_DOMAIN)
        expect(row).to_contain_text("SOS-Expat")
        expect(page.locator("#result_list tbody tr")).to_have_count(6)
        ip_list = page.evaluate(LAYOUT_OF_IP_LIST_JS)
        session.screenshot("04-ip-list")

        # The dashboard: its cards and the capacity chart.
        page.goto(session.url(reverse("admin:warmup_dashboard")))
        expect(page.locator("#wp-capacity-now .wp-card-value")).not_to_have_text("0")
        dashboard = canvas_reports(session)
        card_tops = page.locator(".wp-card").evaluate_all("(cards) => cards.map((c) => c.getBoundingClientRect().top)")
        session.screenshot("05-dashboard")

        # The first demo plan: its volume and rates charts.
        page.goto(session.url(plan_path))
        expect(page.locator("fieldset.wp-charts")).to_be_visible()
        plan_charts = canvas_reports(session)
        heading_widths = page.locator("fieldset.module > h2").evaluate_all(
            "(headings) => headings.map((h) => Math.round(h.getBoundingClientRect().width))"
        )
        favicon = page.locator("link[rel=icon]").get_attribute("href")
        favicon_status = page.request.get(session.url(favicon)).status
        session.screenshot("06-plan")

    assert [report["id"] for report in dashboard] == ["wp-history-chart", "wp-capacity-chart"]
    assert [report["id"] for report in plan_charts] == ["wp-plan-volume-chart", "wp-plan-rates-chart"]
    assert [report["id"] for report in new_plan_charts] == ["wp-plan-volume-chart"]
    for report in dashboard + plan_charts + new_plan_charts:
        assert_chart_drawn(report)
    for report in dashboard:
        assert set(report["drawn"]) == {d["label"] for d in report["datasets"]}, report  # sent; forecast
    assert new_plan_charts[0]["labels"] == 1 and "Daily quota" in new_plan_charts[0]["drawn"], new_plan_charts
    volume, rates = plan_charts
    assert {"Daily quota", "Sent"} <= set(volume["drawn"]), volume
    assert {"Bounce rate %", "Complaint rate %"} <= set(rates["drawn"]), rates
    assert volume["labels"] == rates["labels"] == 36  # the 35 days of history and today
    assert not session.problems, "\n".join(session.problems)

    # Layout at 1400 px: the IP list fits its area with the selection counter beside the reason box, the six
    # dashboard cards share one row, the charts' heading bar is as wide as the other fieldsets'.
    assert ip_list["table_width"] <= ip_list["area_width"], ip_list
    assert abs(ip_list["counter_top"] - ip_list["reason_top"]) < 10, ip_list
    assert len(card_tops) == 6 and len(set(card_tops)) == 1, card_tops
    assert len(heading_widths) >= 3 and len(set(heading_widths)) == 1, heading_widths
    assert favicon.endswith(".svg") and favicon_status == 200, (favicon, favicon_status)

    # What the browser did, in the database.
    ip = IP.objects.select_related("domain", "tenant", "plan").get(address=NEW_IP)
    assert (ip.domain.name, ip.tenant.slug, ip.mta_source_name) == (NEW_DOMAIN, "sos-expat", "mail6-vmta")
    assert re.search(rf"/warmup/warmupplan/{ip.plan.pk}/change/$", new_plan_url), new_plan_url


# Runs in the IP list: the table's width against its scrolling area, and where the action bar put things.
LAYOUT_OF_IP_LIST_JS = """() => {
  const box = (selector) => document.querySelector(selector).getBoundingClientRect();
  return {
    table_width: document.querySelector("#result_list").scrollWidth,
    area_width: document.querySelector("#changelist-form .results").clientWidth,
    counter_top: box("#changelist .actions .action-counter").top,
    reason_top: box("#changelist .actions input[name=reason]").top,
  };
}"""


# Charts the check must refuse, drawn by the same Chart.js in the same browser: (case, datasets).
REFUSED_CHARTS = [
    ("no figures", [{"label": "Sent", "data": [None, None, None], "borderColor": "#79aec8"}]),
    ("hidden line", [{"label": "Sent", "data": [5, 7, 9], "borderColor": "#79aec8", "hidden": True}]),
    ("no dataset", []),
]


@pytest.mark.e2e
def test_the_chart_check_refuses_charts_that_show_nothing():
    page_html = "".join(
        f'<div style="width:600px"><canvas id="case-{n}" data-wp-chart="x"></canvas></div>' for n in range(4)
    )
    charts = [*REFUSED_CHARTS, ("drawn", [{"label": "Sent", "data": [5, 7, 9], "borderColor": "#79aec8"}])]
    with chromium_session("http://localhost/") as session:
        session.page.set_content(f"<html><body>{page_html}</body></html>")
        session.page.add_script_tag(path=str(CHART_JS))
        session.page.evaluate(
            """(charts) => charts.forEach(([, datasets], n) => new Chart(document.getElementById("case-" + n), {
                 type: "line", options: {animation: false, responsive: false},
                 data: {labels: ["d1", "d2", "d3"], datasets: datasets}}))""",
            charts,
        )
        reports = canvas_reports(session)
    assert not session.problems, session.problems
    *refused, drawn = reports
    assert_chart_drawn(drawn)
    for (case, _), report in zip(REFUSED_CHARTS, refused, strict=True):
        with pytest.raises(AssertionError):
            assert_chart_drawn(report)
        assert report["has_chart"], case
