"""Admin changelists with 10,000 IPs and 1,000,000 daily stats, and GET /api/v1/warmup for 1,000 IPs.

Data: 10,000 IPs with plans in varied states (in three tenants of 100, 1,000 and 8,900 IPs), 100 days of
DailyStat per IP generated in SQL (INSERT ... SELECT generate_series), today's counters in the counter
store. Requests go through Django's test Client, logged in as a superuser, in this process (DEBUG off);
the server time is measured around each request (median of several after one warm-up) and the SQL
queries of a request are counted. The API's query count must be the same for 100 and 1,000 IPs.

Targets (PRODUCT.md section 10): changelists <= 15 queries and <= 300 ms a page; the API <= 100 ms,
constant query count. QUICK uses 1,000 IPs x 100 days (100,000 daily stats), the API still 1,000 IPs
(all of them) vs 100.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta

import harness
from harness import QUICK, Figures, log, median

IPS = 1_000 if QUICK else 10_000
DAYS = 100
TENANT_SIZES = {"bench-small": 100, "bench-api": 1_000, "bench-rest": IPS - 1_100}
REPEAT = 3 if QUICK else 7
CHANGELISTS = {
    "admin_ip_changelist": "admin:domains_ip_changelist",
    "admin_plan_changelist": "admin:warmup_warmupplan_changelist",
    "admin_dailystat_changelist": "admin:warmup_dailystat_changelist",
}
spec: dict[str, tuple[str, str]] = {}
for _name in CHANGELISTS:
    spec[f"{_name}_ms"] = ("ms", f"<= 300 ms ({IPS:,} IPs, {IPS * DAYS:,} daily stats)")
    spec[f"{_name}_queries"] = ("queries", "<= 15")
spec["api_warmup_1000_ms"] = ("ms", "<= 100 ms (1,000 IPs)")
spec["api_warmup_query_count"] = ("queries", "same for 100 and 1,000 IPs")
FIGURES = Figures(spec)
STEPS = [50, 200, 500, 1500, 5000, 10000]


def build() -> None:
    from django.db import connection

    from domains.models import IP, Domain, Tenant
    from warmup.models import WarmupPlan

    harness.reset_state()
    rng = random.Random(7)
    started = time.perf_counter()
    index = 0
    for slug, size in TENANT_SIZES.items():
        if size <= 0:
            continue
        tenant = Tenant.objects.create(name=slug.replace("-", " ").title(), slug=slug, time_zone="Europe/Paris")
        today = tenant.today()
        domains = Domain.objects.bulk_create(
            [Domain(tenant=tenant, name=f"mail{index + i}.bench-mail.com", status="warming") for i in range(size)],
            batch_size=5_000,
        )
        kinds = rng.choices(["warming", "paused", "scheduled", "completed"], [60, 10, 10, 20], k=size)
        ip_status = {"warming": "warming", "paused": "paused", "scheduled": "pending", "completed": "active"}
        ips = IP.objects.bulk_create(
            [
                IP(
                    tenant=tenant,
                    domain=d,
                    address=f"10.{(index + i) // 65536}.{((index + i) // 256) % 256}.{(index + i) % 256}",
                    hostname=f"mta{index + i}.bench-mail.com",
                    status=ip_status[k],
                    weight=100 if k == "completed" else 0,
                )
                for i, (d, k) in enumerate(zip(domains, kinds, strict=True))
            ],
            batch_size=5_000,
        )
        plans = []
        for ip, kind in zip(ips, kinds, strict=True):
            phase_index = rng.randrange(6)
            plans.append(
                WarmupPlan(
                    ip=ip,
                    steps=STEPS,
                    phase_days=7,
                    phase="completed" if kind == "completed" else f"week_{phase_index + 1}",
                    status=kind,
                    start_date=today - timedelta(days=DAYS),
                    phase_day_count=rng.randrange(7),
                    last_ticked_date=today,
                    window_start_date=today - timedelta(days=3),
                    completed_on=today - timedelta(days=DAYS - 42) if kind == "completed" else None,
                )
            )
        WarmupPlan.objects.bulk_create(plans, batch_size=5_000)
        index += size
    log(f"{IPS:,} IPs and plans in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    with connection.cursor() as cursor:
        # One statement, in the database: 100 days per IP, figures varied by IP and day, split per provider.
        cursor.execute(
            """
            INSERT INTO warmup_dailystat (ip_id, date, sent, delivered, bounced, bounced_hard, bounced_soft,
                                          bounced_block, deferred, complaints, opens, clicks, unsubscribes,
                                          by_provider, updated_at)
            SELECT ip.id, CURRENT_DATE - g, s, s - b, b, b / 2, b - b / 2, 0, s / 50,
                   CASE WHEN (ip.id + g) %% 17 = 0 THEN 1 ELSE 0 END, s / 5, s / 30, 0,
                   jsonb_build_object(
                       'gmail', jsonb_build_object('sent', s * 4 / 10, 'delivered', s * 4 / 10 - b / 2,
                                                   'bounced', b / 2),
                       'microsoft', jsonb_build_object('sent', s / 4, 'delivered', s / 4 - b / 4, 'bounced', b / 4),
                       'yahoo', jsonb_build_object('sent', s / 5, 'delivered', s / 5 - b / 4, 'bounced', b / 4),
                       'other', jsonb_build_object('sent', s - s * 4 / 10 - s / 4 - s / 5,
                                                   'delivered', s - s * 4 / 10 - s / 4 - s / 5)
                   ), now()
            FROM domains_ip ip
            CROSS JOIN generate_series(1, %s) AS g
            CROSS JOIN LATERAL (SELECT 50 + (ip.id * 7919 + g * 104729) %% 5000 AS s) AS sent
            CROSS JOIN LATERAL (SELECT s * ((ip.id + g) %% 7) / 100 AS b) AS bounced
            """,
            [DAYS],
        )
    harness.analyze()
    log(f"{IPS * DAYS:,} daily stats in {time.perf_counter() - started:.1f} s")
    fill_today()


def fill_today() -> None:
    """Today's live counters for every IP (the changelists and the API show sent today)."""
    from domains.models import IP
    from warmup.counters import Increment, get_store

    try:
        store = get_store()
        rows = list(IP.objects.values_list("pk", "tenant__time_zone"))
        from zoneinfo import ZoneInfo

        from django.utils import timezone

        now = timezone.now()
        increments = [
            Increment(pk, now.astimezone(ZoneInfo(zone)).date(), {"sent": 40, "delivered": 39, "bounced": 1}, "gmail")
            for pk, zone in rows
        ]
        for start in range(0, len(increments), 5_000):
            store.apply(increments[start : start + 5_000])
    except Exception as exc:  # the pages must still be measured without live counters
        log(f"today's counters not filled: {type(exc).__name__}: {exc}")


def timed_get(client, url: str) -> tuple[float, int, int, str]:
    """Median server time (ms) of GET url, its query count, status, and a hint on failure."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up: templates, caches
    if response.status_code != 200:
        return 0.0, 0, response.status_code, response.content[:300].decode(errors="replace")
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - started) * 1000)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    return median(times), len(queries.captured_queries), response.status_code, ""


def body(figures: Figures) -> None:
    harness.setup_django()
    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings
    from django.urls import NoReverseMatch, reverse

    build()
    user = get_user_model().objects.create_superuser("bench-admin", "bench@example.com", "bench-password-1234")
    client = Client()
    client.force_login(user)
    # DEBUG off normally serves collected, hashed static files; the pages are timed without collectstatic.
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(STORAGES=storages):
        for name, url_name in CHANGELISTS.items():
            try:
                url = reverse(url_name)
            except NoReverseMatch:
                figures.error(f"{name}_ms", f"{url_name} is not registered in the admin")
                figures.error(f"{name}_queries", f"{url_name} is not registered in the admin")
                continue
            try:
                with harness.maybe_profile(name):
                    ms, queries, status, hint = timed_get(client, url)
            except Exception as exc:
                figures.error(f"{name}_ms", f"GET {url}: {type(exc).__name__}: {exc}"[:500])
                figures.error(f"{name}_queries", f"GET {url}: {type(exc).__name__}: {exc}"[:500])
                continue
            if status != 200:
                figures.error(f"{name}_ms", f"GET {url} answered {status}: {hint}")
                figures.error(f"{name}_queries", f"GET {url} answered {status}")
                continue
            log(f"{url}: {ms:.0f} ms, {queries} queries")
            figures.emit(f"{name}_ms", round(ms, 1), ok=ms <= 300, url=url)
            figures.emit(f"{name}_queries", queries, ok=queries <= 15, url=url)

        results = {}
        for slug in ("bench-small", "bench-api"):
            url = f"/api/v1/warmup?tenant={slug}"
            try:
                with harness.maybe_profile(f"api-{slug}") if slug == "bench-api" else _Nothing():
                    results[slug] = timed_get(client, url)
            except Exception as exc:
                results[slug] = (0.0, 0, 500, f"{type(exc).__name__}: {exc}"[:500])
            log(f"{url}: {results[slug][0]:.0f} ms, {results[slug][1]} queries (status {results[slug][2]})")
        bad = {slug: r for slug, r in results.items() if r[2] != 200}
        if bad:
            error = "; ".join(f"GET /api/v1/warmup?tenant={s} answered {r[2]}: {r[3]}" for s, r in bad.items())
            figures.error("api_warmup_1000_ms", error)
            figures.error("api_warmup_query_count", error)
            return
        ms, queries = results["bench-api"][0], results["bench-api"][1]
        small_queries = results["bench-small"][1]
        figures.emit(
            "api_warmup_1000_ms",
            round(ms, 1),
            ok=ms <= 100,
            baseline=round(results["bench-small"][0], 1),
            note="baseline = the same request for 100 IPs",
        )
        figures.emit(
            "api_warmup_query_count",
            queries,
            ok=queries == small_queries,
            baseline=small_queries,
            note="baseline = queries for 100 IPs",
        )


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    harness.run_script(FIGURES, body)
