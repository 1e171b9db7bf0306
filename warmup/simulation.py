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

Mailbox providers (README "Simulation"): "traffic" may add "providers" (each IP's split, as weights;
default: the tenant's shares from warmup.providers) and "provider_rates" ({"microsoft": {"bounce_rate":
8.0}}); an event may name a "provider" to scope its overrides to it. Each day an IP sends its provider
quotas (a suspended provider's is 0) x utilization. Without a provider-specific rate that day, the IP's
totals follow the contract's formulas on the sum of its provider quotas (the plan's quota when no
provider is suspended) and are split across the providers for recording; with one, each provider's
counts follow the formulas with its own rates and the totals are their sums.

Deferral bursts: an event with "provider" and "deferrals": N (optional "hour", default 12, and
"classification": "rate_limited" or "reputation") records N throttling deferrals of that provider for the
IP in the 5-minute bucket starting at that hour, through the counter store's window counters; the
throttling check (`warmup.throttling.check_provider_throttling`, every 5 minutes in production) then runs
at 5 past that hour, and before each day's tick. A simulated day sends what the quotas in force at its
tick allow, so a suspension shows in the days whose tick falls inside it.
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
from decimal import Decimal
from pathlib import Path
from typing import Any

TRAFFIC_KEYS = ("utilization", "bounce_rate", "complaint_rate", "open_rate", "click_rate")
DEFAULT_TRAFFIC = {"utilization": 1.0, "bounce_rate": 0.0, "complaint_rate": 0.0, "open_rate": 0.0, "click_rate": 0.0}
BASE_DIR = Path(__file__).resolve().parent.parent


class ScenarioError(ValueError):
    """The scenario file is not valid; the message names the field."""


def load_scenario(data: Any) -> dict:
    """Validate a scenario and fill in defaults. Raises ScenarioError naming the field."""
    from .providers import PROVIDERS

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
    given = data.get("traffic", {})
    if not isinstance(given, dict):
        raise ScenarioError("traffic: must be an object")
    given = dict(given)
    providers = given.pop("providers", None)
    provider_rates = given.pop("provider_rates", {})
    traffic = dict(DEFAULT_TRAFFIC)
    traffic.update(_traffic(given, "traffic"))
    if providers is not None:
        traffic["providers"] = _provider_split(providers, PROVIDERS)
    if not isinstance(provider_rates, dict):
        raise ScenarioError("traffic.provider_rates: must be an object of {provider: {rate: value}}")
    for provider, rates in provider_rates.items():
        _provider_name(provider, "traffic.provider_rates", PROVIDERS)
        _traffic(rates, f"traffic.provider_rates.{provider}")
    traffic["provider_rates"] = provider_rates
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
        if "provider" in event:
            _provider_name(event["provider"], f"{where}.provider", PROVIDERS)
        _deferral_burst(event, where)
        _traffic({k: v for k, v in event.items() if k not in ("day", "ip", "provider", *BURST_KEYS)}, where)
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


BURST_KEYS = ("deferrals", "hour", "classification")
BURST_CLASSIFICATIONS = ("rate_limited", "reputation")


def _deferral_burst(event: dict, where: str) -> None:
    """Check an event's deferral burst (ScenarioError naming the field) and fill in its defaults."""
    if "deferrals" not in event:
        for key in ("hour", "classification"):
            if key in event:
                raise ScenarioError(f"{where}.{key}: only with deferrals")
        return
    count = event["deferrals"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ScenarioError(f"{where}.deferrals: must be a whole number >= 1")
    if "provider" not in event:
        raise ScenarioError(f"{where}.provider: required with deferrals (the provider that throttles)")
    hour = event.setdefault("hour", 12)
    if not isinstance(hour, int) or isinstance(hour, bool) or not 0 <= hour <= 23:
        raise ScenarioError(f"{where}.hour: must be a whole number from 0 to 23")
    if event.setdefault("classification", "rate_limited") not in BURST_CLASSIFICATIONS:
        raise ScenarioError(f"{where}.classification: one of {', '.join(BURST_CLASSIFICATIONS)}")


def _provider_name(name: Any, where: str, providers: tuple[str, ...]) -> None:
    if name not in providers:
        raise ScenarioError(f"{where}: unknown provider {name!r} (use {', '.join(providers)})")


def _provider_split(values: Any, providers: tuple[str, ...]) -> dict:
    where = "traffic.providers"
    if not isinstance(values, dict):
        raise ScenarioError(f"{where}: must be an object of {{provider: share}}")
    for provider, share in values.items():
        _provider_name(provider, where, providers)
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 100:
            raise ScenarioError(f"{where}.{provider}: must be a number from 0 to 100")
    if not any(values.values()):
        raise ScenarioError(f"{where}: at least one provider needs a share above 0")
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
    from warmup.counters import Increment, get_store
    from warmup.counters.interface import THROTTLING_COUNTERS, WINDOW_DEFERRALS, bucket_of, window_counter
    from warmup.models import AuditEvent, ProviderShare, WarmupPlan
    from warmup.providers import PROVIDERS, percentages, provider_quotas, tenant_shares
    from warmup.throttling import check_provider_throttling

    zone = zoneinfo.ZoneInfo(scenario["timezone"])
    first = dt.date.fromisoformat(scenario["start"])
    tick_hour = settings.WARMUP_TICK_HOUR

    def at(day: dt.date, hour: int) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour), tzinfo=zone)

    # The simulated clock is passed to what reads the time (onboarding, the tick and its consolidation):
    # nothing here reads or patches the real clock.
    tenant = Tenant.objects.create(name="Simulation", slug="simulation", time_zone=scenario["timezone"])
    # The split is written as the tenant's table, so that it stays the same all along (the default
    # would otherwise follow the simulated mail of the last 7 days).
    weights = scenario["traffic"].get("providers") or tenant_shares([tenant])[tenant.pk]
    ProviderShare.objects.bulk_create(
        ProviderShare(tenant=tenant, provider=provider, share=Decimal(str(share)))
        for provider, share in percentages(weights).items()
    )
    for ip in sorted(scenario["ips"], key=lambda ip: ip["start_day"]):
        onboarding.add_domain_with_ip(
            tenant=tenant,
            domain=ip["domain"],
            ip=ip["address"],
            start=first + dt.timedelta(days=ip["start_day"] - 1),
            force=True,
            now=at(first, 0),
        )
    overrides: dict[tuple[int, str, str | None], dict] = {}
    bursts: dict[int, list[dict]] = {}
    for event in scenario["events"]:
        key = (event["day"], event["ip"], event.get("provider"))
        rates = {k: v for k, v in event.items() if k not in ("day", "ip", "provider", *BURST_KEYS)}
        if rates or "deferrals" not in event:
            overrides.setdefault(key, {}).update(rates)
        if "deferrals" in event:
            bursts.setdefault(event["day"], []).append(event)
    base = {key: scenario["traffic"][key] for key in TRAFFIC_KEYS}
    standing = scenario["traffic"].get("provider_rates", {})

    days_out = []
    for number in range(1, scenario["days"] + 1):
        today = first + dt.timedelta(days=number - 1)
        now = at(today, tick_hour)
        check_provider_throttling(now)  # lifts what has ended, as the periodic check would have
        engine.tick(as_of=today, now=now)
        ips_out = []
        plans = list(WarmupPlan.objects.select_related("ip__tenant").order_by("ip__address"))
        quotas = provider_quotas([plan.ip for plan in plans], {plan.ip_id: plan.daily_quota for plan in plans}, now)
        for plan in plans:
            address = plan.ip.address
            traffic = {**base, **overrides.get((number, address, None), {})}
            rates = {
                provider: {
                    **base,
                    **standing.get(provider, {}),
                    **overrides.get((number, address, None), {}),
                    **overrides.get((number, address, provider), {}),
                }
                for provider in PROVIDERS
            }
            own_rates = bool(standing) or any((number, address, provider) in overrides for provider in PROVIDERS)
            ip_quotas = quotas[plan.ip_id]
            if own_rates:
                by_provider = {
                    provider: _counts(
                        math.floor(rates[provider]["utilization"] * ip_quotas[provider].daily_quota), rates[provider]
                    )
                    for provider in PROVIDERS
                }
                counts = {name: sum(c[name] for c in by_provider.values()) for name in COUNTED}
            else:
                available = sum(q.daily_quota for q in ip_quotas.values())
                counts = _counts(math.floor(traffic["utilization"] * available), traffic)
                by_provider = _split_counts(counts, {provider: q.daily_quota for provider, q in ip_quotas.items()})
            for provider, provider_counts in by_provider.items():
                if provider_counts["sent"]:
                    stats.record_stats(plan.ip, provider_counts, day=today, provider=provider)
            deferrals = dict.fromkeys(PROVIDERS, 0)
            for burst in bursts.get(number, []):
                if burst["ip"] != address:
                    continue
                moment = at(today, burst["hour"])
                bucket = bucket_of(int(moment.timestamp()))
                count = burst["deferrals"]
                burst_counts = {
                    "deferred": count,
                    window_counter(WINDOW_DEFERRALS, bucket): count,
                    window_counter(THROTTLING_COUNTERS[burst["classification"]], bucket): count,
                }
                get_store().apply([Increment(plan.ip_id, today, burst_counts, burst["provider"])])
                deferrals[burst["provider"]] += count
            ips_out.append(
                {
                    "ip": address,
                    "phase": plan.phase,
                    "status": plan.ip.status,
                    "plan_status": plan.status,
                    "daily_quota": plan.daily_quota,
                    "sent": counts["sent"],
                    "delivered": counts["delivered"],
                    "bounced": counts["bounced"],
                    "complaints": counts["complaints"],
                    "providers": {
                        provider: {
                            "daily_quota": ip_quotas[provider].daily_quota,
                            "sent": by_provider[provider]["sent"],
                            "bounced": by_provider[provider]["bounced"],
                            "complaints": by_provider[provider]["complaints"],
                            "suspended": ip_quotas[provider].suspended_until is not None,
                            "deferrals": deferrals[provider],
                        }
                        for provider in PROVIDERS
                    },
                }
            )
        for hour in sorted({burst["hour"] for burst in bursts.get(number, [])}):
            check_provider_throttling(at(today, hour) + dt.timedelta(minutes=5))
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
        entry = {
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
        if "provider" in event.figures:
            entry["provider"] = event.figures["provider"]
        events_out.append(entry)
    return {"days": days_out, "events": events_out}


# The counts a simulated day records, in the contract's order of computation.
COUNTED = ("sent", "delivered", "bounced", "complaints", "opens", "clicks")


def _counts(sent: int, traffic: dict) -> dict[str, int]:
    """PRODUCT.md section 7: delivered = sent - bounced, bounced = round(sent x bounce_rate / 100), ..."""
    bounced = round(sent * traffic["bounce_rate"] / 100)
    delivered = sent - bounced
    return {
        "sent": sent,
        "delivered": delivered,
        "bounced": bounced,
        "complaints": round(delivered * traffic["complaint_rate"] / 100),
        "opens": round(delivered * traffic["open_rate"] / 100),
        "clicks": round(delivered * traffic["click_rate"] / 100),
    }


def _split_counts(counts: dict[str, int], quotas: dict[str, int]) -> dict[str, dict[str, int]]:
    """An IP's day split across providers: sent by their quotas, bounced by their sent, the rest by
    their delivered (largest remainders, so each part stays within what it is taken from)."""
    from .providers import split_quota

    sent = split_quota(counts["sent"], quotas)
    bounced = split_quota(counts["bounced"], sent)
    delivered = {provider: sent[provider] - bounced[provider] for provider in sent}
    parts = {name: split_quota(counts[name], delivered) for name in ("complaints", "opens", "clicks")}
    return {
        provider: {
            "sent": sent[provider],
            "delivered": delivered[provider],
            "bounced": bounced[provider],
            **{name: parts[name][provider] for name in parts},
        }
        for provider in sent
    }


# Mailbox providers' lines on the chart: one colour each, outside matplotlib's default cycle that the
# IPs use, so that a provider's line is never mistaken for an IP's.
PROVIDER_COLOURS = {
    "gmail": "#e6194b",
    "microsoft": "#008080",
    "yahoo": "#6001d2",
    "apple": "#3c3c3c",
    "other": "#ffb000",
}


def draw_chart(result: dict, path: str) -> None:
    """A PNG of daily quota and sent per IP, with pause markers, and each provider's sent (all IPs
    together) with its provider pause markers."""
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
        # A provider's pause is not the IP's: it is marked on the provider's line below.
        pauses = [
            event["day"]
            for event in result["events"]
            if event["ip"] == address and "pause" in event["kind"] and "provider" not in event
        ]
        for number, day in enumerate(pauses):
            ax.axvline(
                day, color=colour, linestyle="--", linewidth=1, label=f"{address} pause" if number == 0 else None
            )
    _draw_providers(ax, result)
    ax.set_yscale("symlog", linthresh=100)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("day")
    ax.set_ylabel("messages per day")
    ax.set_title("Warmup simulation: daily quota and sent per IP (dashed: pauses), sent per provider (dotted: pauses)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _draw_providers(ax, result: dict) -> None:
    """Each provider's sent per day over the IPs, thin, and a dotted line where it was paused for an IP."""
    providers = [
        p for p in PROVIDER_COLOURS if any(p in e.get("providers", {}) for d in result["days"] for e in d["ips"])
    ]
    xs = [day["day"] for day in result["days"]]
    for provider in providers:
        colour = PROVIDER_COLOURS[provider]
        sent = [
            sum(e.get("providers", {}).get(provider, {}).get("sent", 0) for e in day["ips"]) for day in result["days"]
        ]
        ax.plot(xs, sent, color=colour, linewidth=1.5, label=f"{provider} sent")
        pauses = sorted(
            {
                event["day"]
                for event in result["events"]
                if event.get("provider") == provider and event["kind"] in ("provider_paused", "provider_suspended")
            }
        )
        for number, day in enumerate(pauses):
            ax.axvline(
                day, color=colour, linestyle=":", linewidth=1.2, label=f"{provider} paused" if number == 0 else None
            )


if __name__ == "__main__":
    json.dump(_run_in_child(json.load(sys.stdin)), sys.stdout)
