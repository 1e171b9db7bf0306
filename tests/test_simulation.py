"""simulate_warmup: the real engine on a throwaway database, with the timelines PRODUCT.md section 5 implies."""

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from domains.models import Tenant
from warmup.models import DailyStat, WarmupPlan
from warmup.simulation import draw_chart

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


# --- Mailbox providers -----------------------------------------------------------------------------


def near(image, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels of the image are within `tolerance` of the colour on each channel."""
    return sum(
        count
        for count, pixel in image.convert("RGB").getcolors(maxcolors=2_000_000)
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
    )


def provider_line(result: dict, address: str, provider: str) -> list[dict]:
    return [entry["providers"][provider] for entry in timeline(result, address)]


@pytest.mark.django_db
def test_microsoft_bouncing_pauses_microsoft_alone_and_gmail_keeps_warming(capsys, tmp_path):
    chart = tmp_path / "providers.png"
    result = run(capsys, SCENARIOS / "microsoft_bounces.json", "--chart", str(chart))
    days = timeline(result, "45.123.10.1")
    microsoft = provider_line(result, "45.123.10.1", "microsoft")
    gmail = provider_line(result, "45.123.10.1", "gmail")

    # Days 12-13 bounce 8% at Microsoft (4 of its 50): the tick of day 14 pauses it for 48 hours.
    assert [day["bounced"] for day in microsoft[11:13]] == [4, 4]
    assert [(day["daily_quota"], day["sent"], day["suspended"]) for day in microsoft[12:16]] == [
        (50, 50, False),
        (0, 0, True),
        (0, 0, True),
        (125, 125, False),
    ]
    assert [(day["daily_quota"], day["sent"]) for day in gmail[13:15]] == [(80, 80), (200, 200)]
    provider_events = [e for e in result["events"] if e["kind"] == "provider_paused"]
    assert [(e["day"], e["provider"], e["from_status"], e["to_status"]) for e in provider_events] == [
        (14, "microsoft", "warming", "warming")
    ]
    assert "bounce rate 8.00% > 5.00% over 100 sent" in provider_events[0]["reason"]
    # The IP itself is never paused and keeps the clean timeline.
    assert all(day["status"] == "warming" for day in days)
    assert [day["daily_quota"] for day in days[:28]] == [50] * 7 + [200] * 7 + [500] * 7 + [1500] * 7
    assert "paused" not in [e["kind"] for e in result["events"]]
    assert days[13]["sent"] == 150  # the plan's 200 less Microsoft's 50

    # The chart carries the provider lines: drawn without them, it differs.
    bare = tmp_path / "bare.png"
    stripped = {
        "days": [
            {**day, "ips": [{k: v for k, v in e.items() if k != "providers"} for e in day["ips"]]}
            for day in result["days"]
        ],
        "events": [{k: v for k, v in e.items() if k != "provider"} for e in result["events"]],
    }
    draw_chart(stripped, str(bare))
    with Image.open(chart) as drawn, Image.open(bare) as without:
        assert drawn.format == without.format == "PNG"
        assert drawn.size == without.size == (1200, 600)
        assert drawn.convert("RGB").tobytes() != without.convert("RGB").tobytes()
        # Gmail's line (#e6194b), anti-aliased: pixels near its colour appear only with the providers.
        assert near(drawn, (0xE6, 0x19, 0x4B)) > 100
        assert near(without, (0xE6, 0x19, 0x4B)) == 0


@pytest.mark.django_db
def test_without_provider_rates_the_totals_keep_the_contract_and_split_across_providers(capsys):
    result = run(capsys, SCENARIOS / "bounce_spike.json")
    for number, entry in enumerate(timeline(result, "45.123.10.1"), start=1):
        providers = entry["providers"]
        bounce_rate = 8.0 if number == 10 else 1.0
        assert entry["sent"] == entry["daily_quota"]  # utilization 1.0, no provider suspended
        assert entry["bounced"] == round(entry["sent"] * bounce_rate / 100)
        for name in ("sent", "bounced", "complaints"):
            assert sum(p[name] for p in providers.values()) == entry[name]
        assert sum(p["daily_quota"] for p in providers.values()) == entry["daily_quota"]
        assert all(p["bounced"] <= p["sent"] for p in providers.values())
    # The default shares (WARMUP_PROVIDER_SHARES 40/25/15/5/15) of week 2's 200.
    day_8 = timeline(result, "45.123.10.1")[7]["providers"]
    assert {p: v["daily_quota"] for p, v in day_8.items()} == {
        "gmail": 80,
        "microsoft": 50,
        "yahoo": 30,
        "apple": 10,
        "other": 30,
    }
    assert not [e for e in result["events"] if "provider" in e]


@pytest.mark.django_db
def test_standing_provider_rates_count_each_provider_with_its_own_rates(capsys, tmp_path):
    path = tmp_path / "yahoo.json"
    path.write_text(
        json.dumps(
            {
                "start": "2027-01-04",
                "days": 6,
                "ips": [{"address": "45.123.10.9", "domain": "mail9.example.com"}],
                "traffic": {
                    "bounce_rate": 1.0,
                    "providers": {"gmail": 60, "yahoo": 40},
                    "provider_rates": {"yahoo": {"bounce_rate": 10.0, "utilization": 0.5}},
                },
            }
        )
    )
    result = run(capsys, path)
    day_1 = timeline(result, "45.123.10.9")[0]
    # 50 a day: gmail 30 at 1% (round(0.3) = 0), yahoo 20 at half utilization (10) and 10% (1).
    assert {
        p: (v["daily_quota"], v["sent"], v["bounced"]) for p, v in day_1["providers"].items() if v["daily_quota"]
    } == {
        "gmail": (30, 30, 0),
        "yahoo": (20, 10, 1),
    }
    assert (day_1["sent"], day_1["bounced"]) == (40, 1)


def test_an_invalid_provider_in_a_scenario_names_the_field(tmp_path):
    path = tmp_path / "bad.json"
    base = {"start": "2027-01-04", "ips": [{"address": "1.2.3.4", "domain": "m.example.com"}]}
    cases = [
        ({"traffic": {"providers": {"hotmail": 10}}}, r"traffic\.providers: unknown provider 'hotmail'"),
        ({"traffic": {"providers": {"gmail": 0}}}, r"traffic\.providers: at least one provider"),
        ({"traffic": {"providers": {"gmail": 120}}}, r"traffic\.providers\.gmail: must be a number from 0 to 100"),
        (
            {"traffic": {"provider_rates": {"microsoft": {"bounce_rate": -1}}}},
            r"traffic\.provider_rates\.microsoft\.bounce_rate: must be a number >= 0",
        ),
        (
            {"events": [{"day": 3, "ip": "1.2.3.4", "provider": "aol", "bounce_rate": 8.0}]},
            r"events\[0\]\.provider: unknown provider 'aol'",
        ),
    ]
    for extra, message in cases:
        path.write_text(json.dumps({**base, **extra}))
        with pytest.raises(CommandError, match=message):
            call_command("simulate_warmup", "--scenario", str(path))


@pytest.mark.django_db
def test_a_microsoft_throttling_burst_suspends_microsoft_for_the_next_day_and_gmail_stays_clean(capsys, tmp_path):
    chart = tmp_path / "throttling.png"
    result = run(capsys, SCENARIOS / "microsoft_throttling.json", "--chart", str(chart))
    days = timeline(result, "45.123.10.1")
    microsoft = provider_line(result, "45.123.10.1", "microsoft")
    gmail = provider_line(result, "45.123.10.1", "gmail")

    # 40 rate-limited deferrals at 10:00 on day 12; the check at 10:05 suspends Microsoft for 24 hours,
    # so day 13's tick (01:00) finds it suspended; the tick of day 14 finds it lifted.
    assert [day["deferrals"] for day in microsoft[10:14]] == [0, 40, 0, 0]
    assert [(day["daily_quota"], day["sent"], day["suspended"]) for day in microsoft[11:14]] == [
        (50, 50, False),
        (0, 0, True),
        (50, 50, False),
    ]
    assert [(day["daily_quota"], day["sent"], day["suspended"]) for day in gmail[11:14]] == [(80, 80, False)] * 3
    provider_events = [(e["day"], e["kind"], e["provider"]) for e in result["events"] if "provider" in e]
    assert provider_events == [(12, "provider_suspended", "microsoft"), (14, "provider_resumed", "microsoft")]
    suspended = next(e for e in result["events"] if e["kind"] == "provider_suspended")
    assert "40 throttling deferrals (rate_limited) of 40 deferrals" in suspended["reason"]
    assert all(day["status"] == "warming" for day in days[:20])
    assert days[12]["sent"] == 150  # the plan's 200 less Microsoft's 50
    with Image.open(chart) as drawn:
        assert drawn.format == "PNG"


@pytest.mark.django_db
def test_the_same_deferrals_spread_over_the_day_suspend_nothing(capsys, tmp_path):
    scenario = json.loads((SCENARIOS / "microsoft_throttling.json").read_text())
    scenario["events"] = [
        {"day": 12, "ip": "45.123.10.1", "provider": "microsoft", "deferrals": 2, "hour": hour} for hour in range(20)
    ]
    path = tmp_path / "spread.json"
    path.write_text(json.dumps(scenario))

    result = run(capsys, path)

    microsoft = provider_line(result, "45.123.10.1", "microsoft")
    assert microsoft[11]["deferrals"] == 40
    assert not any(day["suspended"] for day in microsoft)
    assert not [e for e in result["events"] if "provider" in e]


def test_an_invalid_deferral_burst_names_the_field(tmp_path):
    path = tmp_path / "bad.json"
    base = {"start": "2027-01-04", "ips": [{"address": "1.2.3.4", "domain": "m.example.com"}]}
    burst = {"day": 3, "ip": "1.2.3.4", "provider": "gmail", "deferrals": 30}
    cases = [
        ({**burst, "deferrals": 0}, r"events\[0\]\.deferrals: must be a whole number >= 1"),
        ({k: v for k, v in burst.items() if k != "provider"}, r"events\[0\]\.provider: required with deferrals"),
        ({**burst, "hour": 24}, r"events\[0\]\.hour: must be a whole number from 0 to 23"),
        ({**burst, "classification": "greylisted"}, r"events\[0\]\.classification: one of rate_limited, reputation"),
        ({"day": 3, "ip": "1.2.3.4", "hour": 5}, r"events\[0\]\.hour: only with deferrals"),
    ]
    for event, message in cases:
        path.write_text(json.dumps({**base, "events": [event]}))
        with pytest.raises(CommandError, match=message):
            call_command("simulate_warmup", "--scenario", str(path))
