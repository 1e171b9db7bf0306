"""simulate_warmup: the real engine on a throwaway database, with the timelines PRODUCT.md section 5 implies."""

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from domains.models import Tenant
from warmup.models import DailyStat, WarmupPlan

SCENARIOS = Path(__file__).resolve().parent.parent / "warmup" / "scenarios"


def run(capsys, scenario: Path, *extra: str) -> dict:
    call_command("simulate_warmup", "--scenario", str(scenario), "--json", *extra)
    return json.loads(capsys.readouterr().out)


def timeline(result: dict, address: str) -> list[dict]:
    return [next(entry for entry in day["ips"] if entry["ip"] == address) for day in result["days"]]


@pytest.mark.django_db
def test_clean_ramp_follows_the_six_week_timeline_and_goes_active_on_day_43(capsys):
    result = run(capsys, SCENARIOS / "clean_ramp.json")
    days = timeline(result, "45.123.10.1")

    expected = [50] * 7 + [200] * 7 + [500] * 7 + [1500] * 7 + [5000] * 7 + [10000] * 7
    assert [day["daily_quota"] for day in days[:42]] == expected
    assert all(day["status"] == "warming" for day in days[:42])
    assert days[42]["status"] == "active" and days[42]["phase"] == "completed"
    assert days[42]["daily_quota"] == 10000
    assert [day["sent"] for day in days[:8]] == [50] * 7 + [200]
    completed = [event for event in result["events"] if event["kind"] == "completed"]
    assert [event["day"] for event in completed] == [43]
    assert result["days"][0] == {**result["days"][0], "day": 1, "date": "2027-01-04", "total_daily_capacity": 50}


@pytest.mark.django_db
def test_bounce_spike_pauses_rolls_back_and_resumes_after_48_hours(capsys):
    result = run(capsys, SCENARIOS / "bounce_spike.json")
    days = timeline(result, "45.123.10.1")

    # Day 10 (week 2, 200 sent) bounces 8%: the tick of day 11 pauses and rolls back to week 1.
    assert days[9]["bounced"] == 16 and days[9]["daily_quota"] == 200
    assert [(day["status"], day["daily_quota"]) for day in days[10:12]] == [("paused", 0), ("paused", 0)]
    assert days[10]["phase"] == "week_1"
    # 48 hours after 01:00 of day 11 is the tick of day 13: resumed at the rolled-back phase.
    assert (days[12]["status"], days[12]["phase"], days[12]["daily_quota"]) == ("warming", "week_1", 50)
    # Week 1 again for seven qualifying days (13-19), then week 2 from day 20.
    assert [day["daily_quota"] for day in days[12:20]] == [50] * 7 + [200]
    kinds = [(event["day"], event["kind"], event["from_phase"], event["to_phase"]) for event in result["events"]]
    assert (11, "paused", "week_2", "week_1") in kinds
    assert (13, "resumed", "week_1", "week_1") in kinds


@pytest.mark.django_db
def test_complaint_burst_pauses_once_two_complaints_are_in_the_window(capsys):
    result = run(capsys, SCENARIOS / "complaint_burst.json")
    days = timeline(result, "45.123.10.1")
    assert days[19]["complaints"] >= 2
    assert days[20]["status"] == "paused"
    assert [event["day"] for event in result["events"] if event["kind"] == "paused"] == [21]


@pytest.mark.django_db
def test_five_ips_added_weekly_reach_fifty_thousand_a_day(capsys):
    result = run(capsys, SCENARIOS / "five_ips_weekly.json")
    last = result["days"][-1]
    assert [entry["status"] for entry in last["ips"]] == ["active"] * 5
    assert last["total_daily_capacity"] == 50000
    # Each IP is pending until its start day.
    assert timeline(result, "45.123.10.5")[27]["status"] == "pending"
    assert timeline(result, "45.123.10.5")[28]["status"] == "warming"


@pytest.mark.django_db
def test_the_simulation_leaves_nothing_behind_and_draws_a_chart(capsys, tmp_path):
    chart = tmp_path / "chart.png"
    run(capsys, SCENARIOS / "bounce_spike.json", "--chart", str(chart))
    assert not Tenant.objects.exists() and not WarmupPlan.objects.exists() and not DailyStat.objects.exists()
    with Image.open(chart) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 600)
        # Not a blank canvas: the quota line and pause marker put many colours on it.
        assert len(image.convert("RGB").getcolors(maxcolors=100000) or []) > 20


def test_an_invalid_scenario_names_the_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"start": "2027-01-04", "ips": [{"address": "1.2.3.4"}]}))
    with pytest.raises(CommandError, match=r"ips\[0\]: needs address and domain"):
        call_command("simulate_warmup", "--scenario", str(path))
    path.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("simulate_warmup", "--scenario", str(path))


@pytest.mark.django_db
def test_the_simulator_needs_no_test_clock(capsys, tmp_path, monkeypatch):
    # Production installs requirements.txt only: a time_machine that cannot be imported must not matter,
    # since the simulator passes its clock to the engine instead of patching the real one.
    (tmp_path / "time_machine.py").write_text("raise ImportError('time_machine is a test-only package')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run(capsys, SCENARIOS / "bounce_spike.json")
    days = timeline(result, "45.123.10.1")
    assert [day["status"] for day in days[9:13]] == ["warming", "paused", "paused", "warming"]
    assert "time-machine" not in (SCENARIOS.parent.parent / "requirements.txt").read_text()
