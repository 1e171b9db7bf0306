"""The daily tick over N plans: `warmup.engine.tick(as_of=D)` timed, its SQL queries counted.

Plans in varied states, each with one date to process (last ticked D-1): warming in every phase with
DailyStat rows for the judged days D-1..D-3 (most clean and qualifying, some with a bounce or complaint
rate over the threshold, so that pauses, rollbacks, audit events and alerts happen; every day split per
mailbox provider in `by_provider`, and one clean IP in 25 bouncing at 8 % at Microsoft alone, so that
provider pauses happen too), paused ones whose
pause ends at D's tick, scheduled ones starting on D, and completed ones. The same mix at a small and a
large size: the query count must not grow with the number of plans.

Targets (PRODUCT.md section 10): 10,000 plans <= 10 s; query count independent of the number of plans.
QUICK uses 500 and 2,000 plans and scales the time target linearly.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from datetime import time as dtime

import harness
from harness import QUICK, RUNS, Figures, log, median

SMALL, LARGE = (500, 2_000) if QUICK else (1_000, 10_000)
TIME_TARGET = 10.0 * LARGE / 10_000
FIGURES = Figures(
    {
        "tick_10k_s": ("s", f"<= {TIME_TARGET:g} s at {LARGE:,} plans"),
        "tick_query_count": ("queries", f"same at {SMALL:,} and {LARGE:,} plans"),
    }
)
STEPS = [50, 200, 500, 1500, 5000, 10000]


def build(count: int, seed: int = 7):
    """`count` plans in the mix described above; the date D to tick."""
    from domains.models import IP, Domain, Tenant
    from warmup.models import DailyStat, WarmupPlan
    from warmup.providers import default_shares, split_quota

    harness.reset_state()
    rng = random.Random(seed)
    tenant = Tenant.objects.create(name="Bench", slug="bench", time_zone="UTC")
    day = tenant.today()
    tick_at = datetime.combine(day, dtime(1), tzinfo=tenant.zone)
    domains = Domain.objects.bulk_create(
        [Domain(tenant=tenant, name=f"mail{i}.bench-mail.com", status="warming") for i in range(count)],
        batch_size=5_000,
    )
    kinds = rng.choices(["warming", "paused", "scheduled", "completed"], [70, 10, 10, 10], k=count)
    ip_status = {"warming": "warming", "paused": "paused", "scheduled": "pending", "completed": "active"}
    ips = IP.objects.bulk_create(
        [
            IP(
                tenant=tenant,
                domain=d,
                address=f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}",
                status=ip_status[kind],
                weight=100 if kind == "completed" else 0,
            )
            for i, (d, kind) in enumerate(zip(domains, kinds, strict=True))
        ],
        batch_size=5_000,
    )
    shares = default_shares()
    plans, stats = [], []
    for index, (ip, kind) in enumerate(zip(ips, kinds, strict=True)):
        phase_index = rng.randrange(6)
        day_count = rng.randrange(7)
        started = day - timedelta(days=phase_index * 7 + day_count + 1)
        plan = WarmupPlan(
            ip=ip,
            steps=STEPS,
            phase_days=7,
            phase=f"week_{phase_index + 1}",
            status=kind,
            start_date=started,
            phase_day_count=day_count,
            last_ticked_date=day - timedelta(days=1),
            window_start_date=started,
        )
        if kind == "scheduled":
            plan.start_date, plan.last_ticked_date, plan.window_start_date = day, None, None
            plan.phase, plan.phase_day_count = "week_1", 0
        elif kind == "paused":
            plan.paused_until = tick_at if rng.random() < 0.6 else tick_at + timedelta(days=1)
            plan.pause_reason = "bounce rate over threshold"
            plan.auto_pause_count = 1
        elif kind == "completed":
            plan.phase, plan.completed_on = "completed", started + timedelta(days=42)
        plans.append(plan)
        if kind in ("warming", "completed"):
            quota = STEPS[phase_index] if kind == "warming" else STEPS[-1]
            bad = rng.random() < 0.04
            for back in (1, 2, 3):
                sent = int(quota * rng.uniform(0.6, 1.0))
                bounced = int(sent * (0.08 if bad else 0.01))
                complaints = int(sent * 0.002) if rng.random() < 0.02 else 0
                # Derived without drawing from rng, so the mix above stays what it was.
                by_provider = {}
                for provider, part in split_quota(sent, shares).items():
                    rate = 0.08 if provider == "microsoft" and not bad and index % 25 == 0 else 0.01
                    lost = int(part * (0.08 if bad else rate))
                    by_provider[provider] = {"sent": part, "delivered": part - lost, "bounced": lost}
                stats.append(
                    DailyStat(
                        ip=ip,
                        date=day - timedelta(days=back),
                        sent=sent,
                        delivered=sent - bounced,
                        bounced=bounced,
                        bounced_hard=bounced,
                        complaints=complaints,
                        opens=sent // 5,
                        clicks=sent // 30,
                        by_provider=by_provider,
                    )
                )
    WarmupPlan.objects.bulk_create(plans, batch_size=5_000)
    DailyStat.objects.bulk_create(stats, batch_size=5_000)
    harness.analyze()
    harness.flush_redis()
    return day


def run_once(count: int, profile: bool = False) -> tuple[float, list[dict], object]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from warmup.engine import tick

    day = build(count)
    with (
        harness.maybe_profile(f"tick-{count}") if profile else _Nothing(),
        CaptureQueriesContext(connection) as queries,
    ):
        started = time.perf_counter()
        report = tick(as_of=day)
        seconds = time.perf_counter() - started
    return seconds, queries.captured_queries, report


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def body(figures: Figures) -> None:
    harness.setup_django()
    harness.need("warmup.engine", "tick")
    _, captured, report = run_once(SMALL)
    small_queries = len(captured)
    processed_small = getattr(report, "plans_processed", None)
    log(f"{SMALL:,} plans: {small_queries} queries, {processed_small} processed")
    times, large_queries, processed = [], None, None
    for run in range(RUNS):
        seconds, captured, report = run_once(LARGE, profile=run == 0)
        large_queries = len(captured)
        processed = getattr(report, "plans_processed", None)
        times.append(seconds)
        log(f"{LARGE:,} plans: tick {seconds:.2f} s, {large_queries} queries, {processed} processed")
    problems = []
    if processed is not None and processed < LARGE * 0.85:  # all but the plans waiting on a later pause end
        problems.append(f"only {processed} of {LARGE} plans processed")
    seconds = median(times)
    extra = {"plans": LARGE, "runs": [round(t, 3) for t in times], "plans_processed": processed}
    if problems:
        extra["error"] = "; ".join(problems)
    figures.emit("tick_10k_s", round(seconds, 3), ok=seconds <= TIME_TARGET and not problems, **extra)
    figures.emit(
        "tick_query_count",
        large_queries,
        ok=large_queries == small_queries,
        baseline=small_queries,
        note=f"baseline = queries at {SMALL:,} plans",
        most_repeated=harness.query_summary(captured),
    )


if __name__ == "__main__":
    harness.run_script(FIGURES, body)
