"""What the two CSV ingestion benches share: the tenant and IPs, the pipeline entry point, the check that
every record was counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date

import datasets
import harness

IP_COUNT = 50
CONTENT_TYPE = "text/csv"


def setup_tenant(ip_count: int = IP_COUNT):
    """Empty state, a UTC tenant with `ip_count` warming IPs (the dataset's), and a webhook token."""
    from domains.models import IP, Domain, Tenant, WebhookToken

    harness.reset_state()
    tenant = Tenant.objects.create(name="Bench", slug="bench", time_zone="UTC")
    addresses = datasets.bench_ips(ip_count)
    domains = Domain.objects.bulk_create(
        [Domain(tenant=tenant, name=f"mail{i + 1}.bench-mail.com", status="warming") for i in range(ip_count)]
    )
    ips = IP.objects.bulk_create(
        [
            IP(tenant=tenant, domain=d, address=a, status="warming", mta_source_name=datasets.vmta_name(i))
            for i, (d, a) in enumerate(zip(domains, addresses, strict=True))
        ]
    )
    _, token = WebhookToken.issue(tenant, label="bench")
    return tenant, token, [ip.pk for ip in ips]


def pipeline() -> Callable[[object, bytes], dict]:
    """The in-process ingestion of one PowerMTA body for a tenant, as the webhook view runs it: the
    tenant's context from the web process's caches (`webhooks.cache`),
    then parse, normalise, attribute, de-duplicate and count; returns the response figures."""
    ingest = harness.need("webhooks.ingest", "ingest")
    parse_body = harness.need("webhooks.parsers.powermta", "parse_body")
    context_for = harness.need("webhooks.cache", "context_for")

    def run(tenant, body):
        return ingest(context_for(tenant), parse_body(body, CONTENT_TYPE)).as_json()

    return run


def counted_totals(ip_ids: list[int], days: set[date]) -> Counter:
    from warmup.counters import get_store

    store = get_store()
    totals: Counter = Counter()
    for ip_id in ip_ids:
        for day in days:
            totals.update({k: v for k, v in store.read(ip_id, day).items() if isinstance(v, int)})
    return totals


def check_counts(expected: Counter, responses: Counter, totals: Counter, records: int) -> list[str]:
    """Problems found: records not all answered for, or counter totals not what the records add."""
    problems = []
    answered = sum(responses[k] for k in ("accepted", "duplicates", "unattributed", "ignored", "rejected"))
    if answered != records:
        problems.append(f"responses account for {answered} of {records} records ({dict(responses)})")
    if responses["accepted"] != records:
        problems.append(
            f"accepted {responses['accepted']} of {records} "
            f"(duplicates {responses['duplicates']}, unattributed {responses['unattributed']}, "
            f"ignored {responses['ignored']}, rejected {responses['rejected']})"
        )
    wrong = {k: (totals.get(k, 0), v) for k, v in expected.items() if totals.get(k, 0) != v}
    if wrong:
        problems.append("counter store (got, expected): " + ", ".join(f"{k} {g}/{e}" for k, (g, e) in wrong.items()))
    return problems


def add_response(total: Counter, response: dict) -> None:
    for key in ("accepted", "duplicates", "unattributed", "ignored"):
        total[key] += int(response.get(key, 0))
    total["rejected"] += len(response.get("rejected", []))
