"""Prometheus series of ingestion (PRODUCT.md section 9)."""

from prometheus_client import Counter

WEBHOOK_EVENTS = Counter(
    "warmup_webhook_events",
    "Webhook records by source and outcome (accepted, duplicate, unattributed, ignored, rejected).",
    ["source", "outcome"],
)


def count_outcomes(source: str, **figures: int) -> None:
    """Add one request's figures (outcome=n); zeros are skipped."""
    for outcome, n in figures.items():
        if n:
            WEBHOOK_EVENTS.labels(source=source, outcome=outcome).inc(n)
