"""Consolidation of N IPs x 1 day: 20,000 IPs created in bulk; yesterday's counters of the first N of them
filled through the counter store's `apply()` in big batches (3 providers per IP), then
`warmup.consolidation.consolidate()` timed. Afterwards each of the N IPs must have its DailyStat row with
exactly the counts filled.

Targets (PRODUCT.md section 10): 10,000 IPs <= 5 s; 20,000 IPs <= 2.2 x the 10,000 figure. The two sizes
are measured in turn, run by run, on the same inventory, and the ratio is the median of each run's pair:
the machine's speed drifts over a bench, and medians taken minutes apart made the ratio drift with it.
QUICK uses 2,000 and 4,000 IPs and scales the time target linearly.
"""

from __future__ import annotations

import time
from datetime import timedelta

import harness
from harness import QUICK, RUNS, Figures, log, median

SMALL, LARGE = (2_000, 4_000) if QUICK else (10_000, 20_000)
TIME_TARGET = 5.0 * SMALL / 10_000
FIGURES = Figures(
    {
        "consolidation_10k_s": ("s", f"<= {TIME_TARGET:g} s at {SMALL:,} IPs x 1 day"),
        "consolidation_20k_ratio": ("x the 10k figure", f"<= 2.2 ({LARGE:,} vs {SMALL:,} IPs)"),
    }
)
APPLY_BATCH = 5_000
PROVIDERS = {"gmail": 5, "microsoft": 3, "other": 2}  # sent per provider and IP


def create_ips(count: int):
    from domains.models import IP, Domain, Tenant

    harness.reset_state()
    tenant = Tenant.objects.create(name="Bench", slug="bench", time_zone="UTC")
    domains = Domain.objects.bulk_create(
        [Domain(tenant=tenant, name=f"mail{i}.bench-mail.com", status="warming") for i in range(count)],
        batch_size=5_000,
    )
    ips = IP.objects.bulk_create(
        [
            IP(tenant=tenant, domain=d, address=f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", status="warming")
            for i, d in enumerate(domains)
        ],
        batch_size=5_000,
    )
    harness.analyze()
    return tenant, [ip.pk for ip in ips]


def fill(ip_ids: list[int], day) -> int:
    """Yesterday's counters of every IP through the store; the total sent."""
    from warmup.counters import Increment, get_store

    store = get_store()
    increments = [
        Increment(
            ip_id, day, {"sent": sent, "delivered": sent - 1, "bounced": 1, "bounced_hard": 1, "opens": 1}, provider
        )
        for ip_id in ip_ids
        for provider, sent in PROVIDERS.items()
    ]
    for start in range(0, len(increments), APPLY_BATCH):
        store.apply(increments[start : start + APPLY_BATCH])
    return len(ip_ids) * sum(PROVIDERS.values())


def measure(ip_ids: list[int], yesterday, count: int, run: int) -> tuple[float, list[str]]:
    """Seconds of consolidate() for the first `count` IPs' counters; problems found."""
    from django.db import connection
    from django.db.models import Count, Sum

    from warmup.consolidation import consolidate
    from warmup.models import DailyStat

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE warmup_dailystat, warmup_consolidationbatch")
    harness.flush_redis()
    started = time.perf_counter()
    sent = fill(ip_ids[:count], yesterday)
    log(f"{count:,} IPs: counters filled in {time.perf_counter() - started:.1f} s")
    with harness.maybe_profile(f"consolidation-{count}") if run == 0 else _Nothing():
        started = time.perf_counter()
        consolidate()
        seconds = time.perf_counter() - started
    got = DailyStat.objects.filter(date=yesterday).aggregate(rows=Count("id"), sent=Sum("sent"))
    log(f"{count:,} IPs: consolidate() {seconds:.2f} s, {got['rows']} rows")
    if got["rows"] != count or got["sent"] != sent:
        return seconds, [
            f"{count} IPs: DailyStat holds {got['rows']} rows / {got['sent']} sent, expected {count} / {sent}"
        ]
    return seconds, []


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def body(figures: Figures) -> None:
    harness.setup_django()
    harness.need("warmup.counters", "get_store", "Increment")
    harness.need("warmup.consolidation", "consolidate")
    tenant, ip_ids = create_ips(LARGE)
    yesterday = tenant.today() - timedelta(days=1)
    small_runs, large_runs, problems = [], [], []
    for run in range(RUNS):
        for count, runs in ((SMALL, small_runs), (LARGE, large_runs)):
            seconds, problems = measure(ip_ids, yesterday, count, run)
            runs.append(seconds)
            if problems:
                break
        if problems:
            break
    small = median(small_runs)
    extra = {"ips": SMALL, "runs": [round(t, 3) for t in small_runs]}
    if problems and len(large_runs) == 0:
        figures.emit("consolidation_10k_s", round(small, 3), ok=False, error="; ".join(problems), **extra)
        figures.error_rest("not measured: " + "; ".join(problems))
        return
    figures.emit("consolidation_10k_s", round(small, 3), ok=small <= TIME_TARGET and not problems, **extra)
    ratios = [large / small for small, large in zip(small_runs, large_runs, strict=False)]
    ratio = median(ratios)
    extra = {
        "ips": LARGE,
        "seconds": round(median(large_runs), 3),
        "runs": [round(t, 3) for t in large_runs],
        "ratio_runs": [round(r, 3) for r in ratios],
    }
    if problems:
        extra["error"] = "; ".join(problems)
    figures.emit(
        "consolidation_20k_ratio", round(ratio, 3), ok=ratio <= 2.2 and not problems, baseline=round(small, 3), **extra
    )


if __name__ == "__main__":
    harness.run_script(FIGURES, body)
