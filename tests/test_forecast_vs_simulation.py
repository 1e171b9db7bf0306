"""The forecast agrees with the real engine: the same plans, run through simulate_warmup, give the same days."""

import datetime as dt
import json
import zoneinfo

import pytest
import time_machine
from django.core.management import call_command

from domains.models import Tenant
from warmup.forecast import forecast
from warmup.simulation import load_scenario, simulate

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
DAY_ONE = dt.date(2027, 1, 4)
COMPARED_DAYS = 90


@pytest.mark.django_db
def test_the_forecast_from_the_demo_tenant_matches_the_simulated_engine_day_by_day():
    with time_machine.travel(dt.datetime(2027, 1, 4, 9, 0, tzinfo=PARIS), tick=False):
        call_command("seed_demo", verbosity=0)
        tenant = Tenant.objects.get(slug="sos-expat")
        result = forecast(tenant, days=420, add_per_week=1, target_ips=50)

    # The five demo IPs start on days 1, 8, 15, 22, 29; the rotation rule places one addition a week after
    # them, so IP k starts on day 1 + 7 (k - 1). The 50th starts on day 344 and enters week 6 (10,000)
    # on day 379, when 50 x 10,000 = 500,000 is reached.
    assert result["target_ips"] == 50 and result["target_capacity"] == 500_000
    assert result["target_reached_on"] == (DAY_ONE + dt.timedelta(days=378)).isoformat()
    assert result["days"][377]["total_daily_capacity"] == 495_000
    assert len(result["days"]) == 420

    starts = [1 + 7 * k for k in range(50) if 1 + 7 * k <= COMPARED_DAYS]
    scenario = load_scenario(
        {
            "start": DAY_ONE.isoformat(),
            "days": COMPARED_DAYS,
            "timezone": "Europe/Paris",
            "ips": [
                {
                    "address": f"45.123.{10 + n // 250}.{1 + n % 250}",
                    "domain": f"mail{n + 1}.sos-mail.com",
                    "start_day": start,
                }
                for n, start in enumerate(starts)
            ],
            "traffic": {"utilization": 1.0},
        }
    )
    simulated = simulate(scenario)

    for forecast_day, simulated_day in zip(result["days"][:COMPARED_DAYS], simulated["days"], strict=True):
        statuses = [entry["status"] for entry in simulated_day["ips"]]
        expected = {
            "day": simulated_day["day"],
            "date": simulated_day["date"],
            "active": statuses.count("active"),
            "warming": statuses.count("warming"),
            "paused": statuses.count("paused"),
            "scheduled": statuses.count("pending"),
            "total_daily_capacity": simulated_day["total_daily_capacity"],
        }
        # Planned additions beyond the simulated IPs are scheduled in the forecast from day 1.
        expected["scheduled"] += 50 - len(starts)
        assert forecast_day == expected, json.dumps({"forecast": forecast_day, "engine": expected})
