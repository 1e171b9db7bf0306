"""The warmup simulator: the real engine, counter store and consolidation on a throwaway database.

`simulate(scenario)` runs in a child process whose settings point at a fresh SQLite file with the
database counter store (so no Redis key is touched), with alerts in dry-run (none leaves), and a
simulated clock passed to the engine. Nothing persists: the file is deleted afterwards.

Scenario (PRODUCT.md section 7):

    {"start": "2027-01-04", "days": 60, "timezone": "UTC",
     "ips": [{"address": "45.123.10.1", "domain": "mail1.sos-mail.com", "start_day": 1}],
     "traffic": {"utilization": 1.0, "bounce_rate": 1.0, "complaint_rate": 0.01,
                 "open_rate": 20.0, "click_rate": 3.0},
     "events": [{"day": 10, "ip": "45.123.10.1", "bounce_rate": 8.0}],
     "settings": {"WARMUP_PAUSE_HOURS": 48}}
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import zoneinfo
from pathlib import Path
from typing import Any

TRAFFIC_KEYS = ("utilization", "bounce_rate", "complaint_rate", "open_rate", "click_rate")
DEFAULT_TRAFFIC = {"utilization": 1.0, "bounce_rate": 0.0, "complaint_rate": 0.0, "open_rate": 0.0, "click_rate": 0.0}
BASE_DIR = Path(__file__).resolve().parent.parent


class ScenarioError(ValueError):
    """The scenario file is not valid; the message names the field."""


def load_scenario(data: Any) -> dict:
    """Validate a scenario and fill in defaults. Raises ScenarioError naming the field."""
    if not isinstance(data, dict):
        raise ScenarioError("the scenario must be a JSON object")
    try:
        start = dt.date.fromisoformat(str(data["start"]))
    except KeyError:
        raise ScenarioError("start: required (YYYY-MM-DD)") from None
    except ValueError:
        raise ScenarioError(f"start: {data['start']!r} is not a date (YYYY-MM-DD)") from None
    days = data.get("days", 60)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3660:
        raise ScenarioError("days: must be a whole number from 1 to 3660")
    time_zone = data.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScenarioError(f"timezone: unknown time zone {time_zone!r}") from None
    ips = data.get("ips")
    if not isinstance(ips, list) or not ips:
        raise ScenarioError("ips: a non-empty list of {address, domain, start_day} is required")
    for index, ip in enumerate(ips):
        if not isinstance(ip, dict) or "address" not in ip or "domain" not in ip:
            raise ScenarioError(f"ips[{index}]: needs address and domain")
        start_day = ip.setdefault("start_day", 1)
        if not isinstance(start_day, int) or isinstance(start_day, bool) or start_day < 1:
            raise ScenarioError(f"ips[{index}].start_day: must be a whole number >= 1")
    traffic = dict(DEFAULT_TRAFFIC)
    traffic.update(_traffic(data.get("traffic", {}), "traffic"))
    events = data.get("events", [])
    if not isinstance(events, list):
        raise ScenarioError("events: must be a list")
    addresses = {ip["address"] for ip in ips}
    for index, event in enumerate(events):
        where = f"events[{index}]"
        if not isinstance(event, dict) or not isinstance(event.get("day"), int):
            raise ScenarioError(f"{where}: needs a whole-number day")
        if event.get("ip") not in addresses:
            raise ScenarioError(f"{where}.ip: {event.get('ip')!r} is not one of the scenario's ips")
        _traffic({k: v for k, v in event.items() if k not in ("day", "ip")}, where)
    overrides = data.get("settings", {})
    if not isinstance(overrides, dict) or not all(str(k).startswith("WARMUP_") for k in overrides):
        raise ScenarioError("settings: an object of WARMUP_* settings")
    return {
        "start": start.isoformat(),
        "days": days,
        "timezone": time_zone,
        "ips": ips,
        "traffic": traffic,
        "events": events,
        "settings": overrides,
    }


def _traffic(values: Any, where: str) -> dict:
    if not isinstance(values, dict):
        raise ScenarioError(f"{where}: must be an object")
    for key, value in values.items():
        if key not in TRAFFIC_KEYS:
            raise ScenarioError(f"{where}.{key}: unknown (use {', '.join(TRAFFIC_KEYS)})")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ScenarioError(f"{where}.{key}: must be a number >= 0")
    return values


def simulate(scenario: dict) -> dict:
    """Run a validated scenario in a child process on a throwaway database; return the result JSON."""
    with tempfile.TemporaryDirectory(prefix="warmup-sim-") as workdir:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "TEST_DATABASE_NAME")
        }
        env.update(
            DATABASE_URL=f"sqlite:///{workdir}/simulation.sqlite3",
            WARMUP_COUNTER_BACKEND="database",
            WARMUP_DRY_RUN="true",
            TELEGRAM_BOT_TOKEN="",
            CELERY_BROKER_URL="memory://",
            DJANGO_SETTINGS_MODULE="warmup_portal.settings",
        )
        completed = subprocess.run(
            [sys.executable, "-m", "warmup.simulation"],
            input=json.dumps(scenario),
            capture_output=True,
            text=True,
            env=env,
            cwd=BASE_DIR,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"the simulation failed:\n{completed.stderr.strip()[-4000:]}")
        return json.loads(completed.stdout)


def _run_in_child(scenario: dict) -> dict:
    """The simulation proper; runs inside the child process on the throwaway database."""
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    for name, value in scenario["settings"].items():
        setattr(settings, name, value)
    call_command("migrate", verbosity=0, interactive=False)

    from domains.models import Tenant
    from warmup import engine, onboarding, stats
    from warmup.models import AuditEvent, WarmupPlan

    zone = zoneinfo.ZoneInfo(scenario["timezone"])
    first = dt.date.fromisoformat(scenario["start"])
    tick_hour = settings.WARMUP_TICK_HOUR

    def at(day: dt.date, hour: int) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour), tzinfo=zone)

    # The simulated clock is passed to what reads the time (onboarding, the tick and its consolidation):
    # nothing here reads or patches the real clock.
    tenant = Tenant.objects.create(name="Simulation", slug="simulation", time_zone=scenario["timezone"])
    for ip in sorted(scenario["ips"], key=lambda ip: ip["start_day"]):
        onboarding.add_domain_with_ip(
            tenant=tenant,
            domain=ip["domain"],
            ip=ip["address"],
            start=first + dt.timedelta(days=ip["start_day"] - 1),
            force=True,
            now=at(first, 0),
        )
    overrides: dict[tuple[int, str], dict] = {}
    for event in scenario["events"]:
        key = (event["day"], event["ip"])
        overrides.setdefault(key, {}).update({k: v for k, v in event.items() if k not in ("day", "ip")})

    days_out = []
    for number in range(1, scenario["days"] + 1):
        today = first + dt.timedelta(days=number - 1)
        engine.tick(as_of=today, now=at(today, tick_hour))
        ips_out = []
        plans = WarmupPlan.objects.select_related("ip").order_by("ip__address")
        for plan in plans:
            traffic = {**scenario["traffic"], **overrides.get((number, plan.ip.address), {})}
            quota = plan.daily_quota
            sent = math.floor(traffic["utilization"] * quota)
            bounced = round(sent * traffic["bounce_rate"] / 100)
            delivered = sent - bounced
            counts = {
                "sent": sent,
                "delivered": delivered,
                "bounced": bounced,
                "complaints": round(delivered * traffic["complaint_rate"] / 100),
                "opens": round(delivered * traffic["open_rate"] / 100),
                "clicks": round(delivered * traffic["click_rate"] / 100),
            }
            if sent:
                stats.record_stats(plan.ip, counts, day=today)
            ips_out.append(
                {
                    "ip": plan.ip.address,
                    "phase": plan.phase,
                    "status": plan.ip.status,
                    "plan_status": plan.status,
                    "daily_quota": quota,
                    "sent": sent,
                    "delivered": delivered,
                    "bounced": bounced,
                    "complaints": counts["complaints"],
                }
            )
        days_out.append(
            {
                "day": number,
                "date": today.isoformat(),
                "total_daily_capacity": sum(entry["daily_quota"] for entry in ips_out),
                "ips": ips_out,
            }
        )

    events_out = []
    for event in AuditEvent.objects.select_related("plan__ip").order_by("created_at", "id"):
        events_out.append(
            {
                "day": (event.date - first).days + 1,
                "date": event.date.isoformat(),
                "ip": event.plan.ip.address,
                "kind": event.kind,
                "from_phase": event.from_phase,
                "to_phase": event.to_phase,
                "from_status": event.from_status,
                "to_status": event.to_status,
                "reason": event.reason,
            }
        )
    return {"days": days_out, "events": events_out}


def draw_chart(result: dict, path: str) -> None:
    """A PNG of daily quota and sent per IP, with pause markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    addresses = sorted({entry["ip"] for day in result["days"] for entry in day["ips"]})
    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, address in enumerate(addresses):
        colour = colours[index % len(colours)]
        points = [(day["day"], entry) for day in result["days"] for entry in day["ips"] if entry["ip"] == address]
        xs = [day for day, _ in points]
        ax.step(xs, [entry["daily_quota"] for _, entry in points], where="mid", color=colour, label=f"{address} quota")
        ax.plot(
            xs,
            [entry["sent"] for _, entry in points],
            "o",
            markersize=2.5,
            color=colour,
            alpha=0.6,
            label=f"{address} sent",
        )
        pauses = [event["day"] for event in result["events"] if event["ip"] == address and "pause" in event["kind"]]
        for number, day in enumerate(pauses):
            ax.axvline(
                day, color=colour, linestyle="--", linewidth=1, label=f"{address} pause" if number == 0 else None
            )
    ax.set_yscale("symlog", linthresh=100)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("day")
    ax.set_ylabel("messages per day")
    ax.set_title("Warmup simulation: daily quota and sent per IP (dashed: pauses)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


if __name__ == "__main__":
    json.dump(_run_in_child(json.load(sys.stdin)), sys.stdout)
